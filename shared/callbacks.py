"""Run-summary callbacks: a signed POST to the URL a run spec names, retried with backoff.

Signature: header ``X-Callback-Signature: t=<unix seconds>,sha256=<hex>`` where the hex is
HMAC-SHA256 over ``b"<t>." + body`` with CALLBACK_SIGNING_SECRET; a receiver recomputes it (see
``verify``) and rejects old timestamps, so a captured callback cannot be replayed later.

Safety (server-side request forgery): only https URLs (plain http only to loopback hosts when
CALLBACK_ALLOW_LOOPBACK_HTTP is set, for the local stack); the host's addresses are resolved and
each must be globally routable (``_address_refused``): private, shared (100.64.0.0/10), link-local,
loopback (unless allowed), multicast, reserved, special-purpose and cloud metadata addresses
(169.254.169.254, Azure's 168.63.129.16, fd00:ec2::254) are refused, and so is an IPv6 address
whose embedded IPv4 address (IPv4-mapped or -compatible, 6to4, Teredo, NAT64, ISATAP) is one of
them; redirects are not followed.
``check_callback_url`` gives the early, clear error; ``deliver`` then checks again, at connect
time, the address each connection actually reached (the same policy, and plain http only to a
loopback peer), and closes it before the TLS handshake or any byte of the request: the name is
resolved again to connect, and a hostile DNS server could answer a public address for the check
and a private or metadata one for the connection (DNS rebinding). Environment proxies are ignored
(a proxy would resolve the name itself, out of reach of the check).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import random
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Callback-Signature"
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "168.63.129.16", "fd00:ec2::254", "100.100.100.200")
)
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class CallbackError(ValueError):
    """A callback URL that must not be called (scheme, address); the message says why."""


class CallbackUnresolvable(CallbackError):
    """The callback host's name does not resolve now: refused at request time, but a delivery tries
    again on a later pass (DNS failures can be transient)."""


@dataclass(frozen=True)
class DeliveryResult:
    delivered: bool
    attempts: int
    status: int | None = None
    error: str | None = None
    refused: bool = False  # the URL or the address it reached is not allowed: retrying cannot help

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": "delivered" if self.delivered else "failed",
            "attempts": self.attempts,
            "http_status": self.status,
            "error": self.error,
        }


def sign(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The signature header value for ``body``."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},sha256={mac}"


def verify(body: bytes, header: str, secret: str, *, tolerance_seconds: int = 300) -> bool:
    """True when ``header`` is a valid, recent signature of ``body`` (for receivers and tests)."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        ts = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs(time.time() - ts) > tolerance_seconds:
        return False
    expected = sign(body, secret, ts).split("sha256=", 1)[1]
    return hmac.compare_digest(expected, parts.get("sha256", ""))


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Beyond what ``ipaddress``'s ``is_global`` knows (Python 3.11): IETF protocol assignments, the
# deprecated 6to4 relay anycast, and NAT64's local-use prefix (RFC 8215), none of them a public host.
_NOT_GLOBAL = tuple(
    ipaddress.ip_network(n) for n in ("192.0.0.0/24", "192.88.99.0/24", "64:ff9b:1::/48", "::/96")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix: the IPv4 is the last 32 bits
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d


def embedded_ipv4(addr: IPAddress) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries and would deliver to: IPv4-mapped and -compatible,
    6to4 (2002::/16), Teredo (server and client), NAT64 (64:ff9b::/96) and ISATAP interface ids.
    Empty for an IPv4 address or a plain IPv6 one."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return []
    found: list[ipaddress.IPv4Address] = []
    if addr.ipv4_mapped is not None:
        found.append(addr.ipv4_mapped)
    if addr.sixtofour is not None:
        found.append(addr.sixtofour)
    if addr.teredo is not None:
        found.extend(addr.teredo)
    low32 = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr in _NAT64 or (addr in _IPV4_COMPATIBLE and int(addr) > 1):
        found.append(low32)
    if (int(addr) >> 32) & 0xFDFFFFFF == 0x00005EFE:  # ISATAP: interface id [02]00:5efe:a.b.c.d
        found.append(low32)
    return found


def _plain(addr: IPAddress) -> IPAddress:
    """The address a connection reaches: an IPv4-mapped IPv6 address is its IPv4 address."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _one_address_refused(addr: IPAddress, allow_loopback: bool) -> str | None:
    if addr in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if addr.is_loopback:
        return None if allow_loopback else "a loopback address"
    if addr.is_link_local:
        return "a link-local address"
    if addr.is_private:
        return "a private address"
    if addr.is_multicast or addr.is_reserved or addr.is_unspecified:
        return "a reserved, multicast or unspecified address"
    if not addr.is_global or any(addr in net for net in _NOT_GLOBAL if net.version == addr.version):
        return "not a globally routable address"
    return None


def _address_refused(addr: IPAddress, allow_loopback: bool) -> str | None:
    """Why ``addr`` must not be called, or None: it must be globally routable (loopback only when
    allowed), and so must every IPv4 address it embeds (a 6to4, Teredo, NAT64 or IPv4-compatible
    form of a private or shared address such as 100.64.0.0/10 reaches that address)."""
    addr = _plain(addr)
    inner = embedded_ipv4(addr)
    for embedded in inner:
        why = _one_address_refused(embedded, allow_loopback)
        if why:
            return f"{why} (embedded in {addr})"
    if inner:
        # The wrapper prefixes themselves (Teredo's 2001::/32, NAT64's) are not "global" to Python:
        # what a wrapped address reaches is the IPv4 it carries, checked above.
        return None
    return _one_address_refused(addr, allow_loopback)


def check_callback_url(url: str, *, allow_loopback_http: bool = False, resolve: bool = True) -> None:
    """Raise CallbackError unless ``url`` may be called: https (or loopback http when allowed) to a
    public address. ``resolve`` looks the host name up and checks every address it has."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        raise CallbackError("callback URL is malformed") from None
    host = parts.hostname
    if parts.scheme not in ("https", "http") or not host:
        raise CallbackError("callback URL must be an absolute https URL")
    if parts.username or parts.password:
        raise CallbackError("callback URL must not carry credentials")
    addresses: list[Any] = []
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        if host.lower() == "localhost" or host.lower().endswith(".localhost"):
            addresses = [ipaddress.ip_address("127.0.0.1")]
        elif resolve:
            try:
                infos = socket.getaddrinfo(host, parts.port or 443, proto=socket.IPPROTO_TCP)
            except OSError as exc:
                raise CallbackUnresolvable(
                    f"callback host {host!r} does not resolve: {exc.strerror or exc}"
                ) from None
            addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    is_loopback = bool(addresses) and all(_plain(a).is_loopback for a in addresses)
    if parts.scheme == "http" and not (allow_loopback_http and is_loopback):
        raise CallbackError(
            "callback URL must be https (plain http only to loopback hosts with CALLBACK_ALLOW_LOOPBACK_HTTP)"
        )
    for addr in addresses:
        why = _address_refused(addr, allow_loopback_http)
        if why:
            raise CallbackError(f"callback host {host!r} is {why}; refused")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is returned as the response (and counts as a failure)


def _peer_refused(sock: socket.socket, allow_loopback: bool, plain_http: bool) -> str | None:
    """Why the address ``sock`` is connected to must not be called (None when it may)."""
    try:
        addr = ipaddress.ip_address(str(sock.getpeername()[0]).split("%")[0])
    except ValueError:
        return "an address that cannot be checked"
    why = _address_refused(addr, allow_loopback)
    if why is None and plain_http and not _plain(addr).is_loopback:
        why = "a non-loopback address over plain http"
    return why


def _guarded_connect(host: str, allow_loopback: bool, plain_http: bool) -> Callable[..., socket.socket]:
    """A stand-in for ``socket.create_connection`` that checks the peer it connected to and closes the
    socket (raising CallbackError) when refused, before anything is sent on it."""

    def create_connection(
        address: tuple[str, int], timeout: Any, source_address: Any = None
    ) -> socket.socket:
        sock = socket.create_connection(address, timeout, source_address)
        try:
            why = _peer_refused(sock, allow_loopback, plain_http)
        except BaseException:
            sock.close()
            raise
        if why:
            sock.close()
            raise CallbackError(f"callback host {host!r} connected to {why}; refused")
        return sock

    return create_connection


class _GuardedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, allow_loopback: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _guarded_connect(self.host, allow_loopback, plain_http=True)


class _GuardedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, allow_loopback: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # HTTPSConnection.connect calls this (via HTTPConnection.connect) before the TLS handshake
        self._create_connection = _guarded_connect(self.host, allow_loopback, plain_http=False)


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, allow_loopback: bool) -> None:
        super().__init__()
        self._allow_loopback = allow_loopback

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        guarded = functools.partial(_GuardedHTTPConnection, allow_loopback=self._allow_loopback)
        return super().do_open(guarded, req, **kwargs)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, allow_loopback: bool) -> None:
        super().__init__()
        self._allow_loopback = allow_loopback

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        guarded = functools.partial(_GuardedHTTPSConnection, allow_loopback=self._allow_loopback)
        return super().do_open(guarded, req, **kwargs)


def _build_opener(allow_loopback: bool) -> urllib.request.OpenerDirector:
    # Instances of subclasses replace build_opener's default HTTP, HTTPS and proxy handlers.
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        _NoRedirect,
        _GuardedHTTPHandler(allow_loopback),
        _GuardedHTTPSHandler(allow_loopback),
    )


_openers = {allow: _build_opener(allow) for allow in (False, True)}


def deliver(
    url: str,
    payload: dict[str, Any],
    *,
    secret: str | None,
    allow_loopback_http: bool = False,
    attempts: int = 5,
    backoff_seconds: float = 0.5,
    timeout_seconds: float = 10.0,
    run_id: str | None = None,
) -> DeliveryResult:
    """POST ``payload`` as JSON to ``url``, signed when ``secret`` is set; retry connection errors,
    408/429/5xx with exponential backoff (honouring Retry-After up to 30 s). Never raises for a
    failed delivery: the result says what happened. The URL's query is never logged."""
    safe_url = urlsplit(url)._replace(query="", fragment="").geturl()
    try:
        check_callback_url(url, allow_loopback_http=allow_loopback_http)
    except CallbackUnresolvable as exc:
        log.warning("callback for run %s not sent: %s", run_id, exc, extra={"run_id": run_id})
        return DeliveryResult(False, 0, None, str(exc))
    except CallbackError as exc:
        log.warning("callback for run %s refused: %s", run_id, exc, extra={"run_id": run_id})
        return DeliveryResult(False, 0, None, str(exc), refused=True)
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str).encode()
    status: int | None = None
    error: str | None = None
    for attempt in range(1, attempts + 1):
        headers = {"Content-Type": "application/json", "User-Agent": "batchai-serverless-callback/1"}
        if secret:
            headers[SIGNATURE_HEADER] = sign(body, secret)
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        retry_after: float | None = None
        try:
            with _openers[bool(allow_loopback_http)].open(request, timeout=timeout_seconds) as response:
                status = response.status
        except CallbackError as exc:  # the connect-time check: the host now resolves somewhere refused
            log.warning(
                "callback for run %s to %s refused at connect time: %s",
                run_id,
                safe_url,
                exc,
                extra={"run_id": run_id},
            )
            return DeliveryResult(False, attempt, None, str(exc), refused=True)
        except urllib.error.HTTPError as exc:
            status = exc.code
            error = f"HTTP {exc.code}"
            header = exc.headers.get("Retry-After") if exc.headers else None
            if header and header.isdigit():
                retry_after = min(float(header), 30.0)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            status = None
            error = f"connection failed: {getattr(exc, 'reason', exc)}"
        if status is not None and 200 <= status < 300:
            log.info(
                "callback for run %s delivered to %s (HTTP %s)",
                run_id,
                safe_url,
                status,
                extra={"run_id": run_id},
            )
            return DeliveryResult(True, attempt, status)
        if status is not None and status not in RETRYABLE_STATUS:
            error = error or f"HTTP {status}"
            break
        if attempt < attempts:
            delay = retry_after if retry_after is not None else backoff_seconds * 2 ** (attempt - 1)
            time.sleep(delay * (0.75 + random.random() / 2))
    log.warning(
        "callback for run %s to %s failed after %d attempt(s): %s",
        run_id,
        safe_url,
        attempt,
        error,
        extra={"run_id": run_id},
    )
    return DeliveryResult(False, attempt, status, error)
