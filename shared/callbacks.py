"""Run-summary callbacks: a signed POST to the URL a run spec names, retried with backoff.

Signature: header ``X-Callback-Signature: t=<unix seconds>,id=<delivery id>,v2=<hex>`` where the
hex is HMAC-SHA256 over ``v2.<t>.<id>.<url>.`` + body with the run's own secret (``run_secret``,
derived from CALLBACK_SIGNING_SECRET and a salt kept on the run; given to whoever starts the run,
once). A receiver recomputes it (``verify``), rejects old timestamps and ids it has seen: a
callback cannot be replayed later, replayed to another receiver (URL), or forged by another run's
receiver (secret). The delivery id is also in ``X-Callback-Delivery``.

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

import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:  # annotations only
    from shared.settings import Settings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Callback-Signature"
DELIVERY_HEADER = "X-Callback-Delivery"
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "168.63.129.16", "fd00:ec2::254", "100.100.100.200")
)
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# One delivery's hard bound (attempts, reads and backoff together) and the largest response head
# (status line and headers) read: a receiver can slow a delivery down only this much, never stall it.
DELIVERY_DEADLINE_SECONDS = 20.0
MAX_RESPONSE_HEAD_BYTES = 16 * 1024


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


def sign(body: bytes, secret: str, *, url: str, delivery_id: str, timestamp: int | None = None) -> str:
    """The signature header value of one delivery: ``t=<unix seconds>,id=<delivery id>,v2=<hex>``,
    the hex being HMAC-SHA256 with the run's secret over ``v2.<t>.<id>.<url>.`` + body. The URL
    (the full one the POST goes to, query included) binds a signature to its receiver, the
    delivery id lets a receiver refuse a replay within the timestamp's tolerance."""
    ts = int(time.time()) if timestamp is None else timestamp
    if "," in delivery_id or "=" in delivery_id:
        raise ValueError("a delivery id has no ',' or '='")
    return f"t={ts},id={delivery_id},v2={_mac(body, secret, url, delivery_id, ts)}"


def _mac(body: bytes, secret: str, url: str, delivery_id: str, ts: int) -> str:
    message = f"v2.{ts}.{delivery_id}.{url}.".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify(body: bytes, header: str, secret: str, *, url: str, tolerance_seconds: int = 300) -> str | None:
    """The delivery id when ``header`` is a valid, recent signature of ``body`` sent to ``url``
    with ``secret`` (the run's own), else None. A receiver keeps the ids it has seen for
    ``tolerance_seconds`` and answers 2xx without acting on a repeated one (retries of one delivery
    keep their id)."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        ts = int(parts["t"])
        delivery_id = parts["id"]
    except (ValueError, KeyError):
        return None
    if abs(time.time() - ts) > tolerance_seconds or not delivery_id:
        return None
    expected = _mac(body, secret, url, delivery_id, ts)
    return delivery_id if hmac.compare_digest(expected, parts.get("v2", "")) else None


# --- per-run secrets and the sealed URL ------------------------------------------------------------------
# Each run's callbacks are signed with a secret of its own, derived from the app's signing key
# (CALLBACK_SIGNING_SECRET) and a random salt kept on the run: the registry never holds a secret,
# only the salt, and without the key the salt is worth nothing. The full callback URL (its query
# often carries the receiver's token) is kept sealed on the run with a key derived the same way
# (AES-256-GCM, the salt as associated data); the record and API show it with query values replaced.
REDACTED = "REDACTED"


def redact_url(url: str | None) -> str | None:
    """``url`` with every query value replaced by REDACTED and no fragment (names kept, so a
    reader sees which parameters there are)."""
    if not url:
        return url
    parts = urlsplit(url)
    if not parts.query and not parts.fragment:
        return url
    query = "&".join(
        f"{pair.split('=', 1)[0]}={REDACTED}" if pair else pair for pair in parts.query.split("&")
    )
    return parts._replace(query=query, fragment="").geturl()


def _key(signing_key: str, label: str) -> bytes:
    return hmac.new(signing_key.encode(), label.encode(), hashlib.sha256).digest()


def run_secret(signing_key: str, salt: str) -> str:
    """The run's callback secret (64 hex characters): what its receiver verifies with."""
    return hmac.new(_key(signing_key, "callback-run-secret:v2"), salt.encode(), hashlib.sha256).hexdigest()


def seal_callback(url: str, signing_key: str | None) -> dict[str, Any]:
    """What a run keeps of its callback besides the redacted URL: the salt of its secret and, when
    the URL has a query, the full URL sealed. Without a signing key a URL with a query is refused
    (the run spec says so first: ``SpecContext.callback_query_allowed``)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    salt = secrets.token_urlsafe(24)
    seal: dict[str, Any] = {"salt": salt}
    if redact_url(url) == url:
        return seal
    if not signing_key:
        raise CallbackError(
            "a callback URL with a query string needs CALLBACK_SIGNING_SECRET to keep it sealed"
        )
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(_key(signing_key, "callback-url-seal:v2")).encrypt(nonce, url.encode(), salt.encode())
    seal["url"] = base64.urlsafe_b64encode(nonce + sealed).decode()
    return seal


def open_callback(stored_url: str, seal: dict[str, Any] | None, signing_key: str | None) -> str:
    """The full URL to deliver to: the sealed one when there is one, else the stored one (it had
    no query to hide). Raises CallbackError when the seal cannot be opened (another key)."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not seal or not seal.get("url"):
        return stored_url
    if not signing_key:
        raise CallbackError("the callback URL is sealed and CALLBACK_SIGNING_SECRET is not set")
    try:
        data = base64.urlsafe_b64decode(seal["url"])
        key = _key(signing_key, "callback-url-seal:v2")
        return AESGCM(key).decrypt(data[:12], data[12:], str(seal["salt"]).encode()).decode()
    except (InvalidTag, ValueError, KeyError):
        raise CallbackError(
            "the sealed callback URL cannot be opened (CALLBACK_SIGNING_SECRET changed?)"
        ) from None


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Beyond what ``ipaddress``'s ``is_global`` knows (Python 3.11): IETF protocol assignments, the
# deprecated 6to4 relay anycast, and NAT64's local-use prefix (RFC 8215), none of them a public host.
_NOT_GLOBAL = tuple(
    ipaddress.ip_network(n) for n in ("192.0.0.0/24", "192.88.99.0/24", "64:ff9b:1::/48", "::/96")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix: the IPv4 is the last 32 bits
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d


def record_fields(settings: Settings, callback_url: str | None, *, issued: bool) -> dict[str, Any]:
    """A run's callback as the registry keeps it: the URL with its query redacted, and the seal (the
    salt of the run's own secret, the full URL encrypted). ``issued``: the run's secret goes to the
    starting request (HTTP) and may not be issued again."""
    if not callback_url:
        return {"callback_url": None, "callback_seal": None}
    key = settings.callback_signing_secret
    seal = seal_callback(callback_url, key.get_secret_value() if key else None)
    seal["issued"] = issued
    return {"callback_url": redact_url(callback_url), "callback_seal": seal}


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


def resolve_within(host: str, port: int, timeout: float | None) -> list[Any]:
    """``socket.getaddrinfo`` (TCP) that gives up after ``timeout`` seconds: a hostile name server
    can make a lookup last as long as the system resolver's own timeouts allow, which a delivery's
    deadline must not wait out. The lookup goes on in a daemon thread and its answer is dropped."""
    if timeout is None:
        return socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    infos: list[list[Any]] = []  # the lookup's answer, once it came
    errors: list[OSError] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            infos.append(socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP))
        except OSError as exc:
            errors.append(exc)
        finally:
            done.set()

    threading.Thread(target=lookup, daemon=True, name="callback-dns").start()
    if not done.wait(max(0.0, timeout)):
        raise DeliveryTimeout(f"the lookup of {host!r} did not finish before the delivery deadline")
    if errors:
        raise errors[0]
    return infos[0]


def check_callback_url(
    url: str, *, allow_loopback_http: bool = False, resolve: bool = True, resolve_timeout: float | None = None
) -> None:
    """Raise CallbackError unless ``url`` may be called: https (or loopback http when allowed) to a
    public address. ``resolve`` looks the host name up (within ``resolve_timeout`` seconds when
    given, else DeliveryTimeout) and checks every address it has."""
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
                infos = resolve_within(host, parts.port or 443, resolve_timeout)
            except DeliveryTimeout:
                raise
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


class DeliveryTimeout(OSError):
    """The delivery's hard deadline passed (however slowly the server was still sending)."""


def _post_once(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    deadline: float,
    allow_loopback: bool,
    timeout_seconds: float,
) -> tuple[int, dict[str, str]]:
    """POST ``body`` and read the response's status line and headers (never its body), all before
    ``deadline`` (a ``time.monotonic()`` value): every socket operation waits at most the time left,
    and a watchdog shuts the socket down at the deadline, so a server that trickles a byte every few
    seconds (each read succeeding within a per-read timeout) cannot hold the delivery past it. The
    head is capped at MAX_RESPONSE_HEAD_BYTES. Redirects are answers like any other (not followed).
    Raises CallbackError (the connect-time address check), DeliveryTimeout or OSError."""
    parts = urlsplit(url)
    plain_http = parts.scheme == "http"
    host = parts.hostname or ""
    port = parts.port or (80 if plain_http else 443)

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeliveryTimeout("no complete answer before the delivery deadline")
        return min(remaining, timeout_seconds)

    raw = _connect(host, port, deadline, allow_loopback, plain_http, left)
    watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _shutdown, (raw,))
    watchdog.daemon = True
    watchdog.start()
    sock: socket.socket = raw
    try:
        if not plain_http:
            raw.settimeout(left())
            sock = ssl.create_default_context().wrap_socket(raw, server_hostname=host)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"POST {target} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines += ["Connection: close", "", ""]
        sock.settimeout(left())
        sock.sendall("\r\n".join(lines).encode("latin-1") + body)
        received = b""  # every head counts towards the cap, interim (1xx) ones included
        start = 0
        while True:
            while b"\r\n\r\n" not in received[start:]:
                if len(received) > MAX_RESPONSE_HEAD_BYTES:
                    raise OSError(f"response headers exceed {MAX_RESPONSE_HEAD_BYTES} bytes")
                sock.settimeout(left())
                chunk = sock.recv(4096)
                if not chunk:
                    left()  # a socket the watchdog shut down reads as closed: say it was the deadline
                    raise OSError("connection closed before the response headers")
                received += chunk
            end = received.index(b"\r\n\r\n", start)
            if end > MAX_RESPONSE_HEAD_BYTES:
                raise OSError(f"response headers exceed {MAX_RESPONSE_HEAD_BYTES} bytes")
            status_line, *header_lines = received[start:end].decode("latin-1").split("\r\n")
            version, _, rest = status_line.partition(" ")
            code = rest[:3]
            if not version.startswith("HTTP/") or not code.isdigit():
                raise OSError("malformed response status line")
            if not code.startswith("1"):
                break
            start = end + 4  # an interim answer (100 Continue, 103 Early Hints): the final one follows
        response_headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            response_headers[name.strip().lower()] = value.strip()
        return int(code), response_headers
    except OSError:
        if time.monotonic() >= deadline:
            raise DeliveryTimeout("no complete answer before the delivery deadline") from None
        raise
    finally:
        watchdog.cancel()
        sock.close()
        raw.close()


def _connect(
    host: str,
    port: int,
    deadline: float,
    allow_loopback: bool,
    plain_http: bool,
    left: Callable[[], float],
) -> socket.socket:
    """Resolve ``host`` within the deadline and connect to its addresses in turn, each connection's
    peer checked before it is used (``_guarded_connect``)."""
    connect = _guarded_connect(host, allow_loopback, plain_http)
    infos = resolve_within(host, port, deadline - time.monotonic())
    last: OSError = OSError(f"callback host {host!r} has no address")
    for info in infos:
        try:
            return connect((str(info[4][0]).split("%")[0], port), left())
        except CallbackError:
            raise
        except DeliveryTimeout:
            raise
        except OSError as exc:
            last = exc
    raise last


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def deliver(
    url: str,
    payload: dict[str, Any],
    *,
    secret: str | None,
    allow_loopback_http: bool = False,
    attempts: int = 5,
    backoff_seconds: float = 0.5,
    timeout_seconds: float = 10.0,
    deadline_seconds: float = DELIVERY_DEADLINE_SECONDS,
    run_id: str | None = None,
    delivery_id: str | None = None,
) -> DeliveryResult:
    """POST ``payload`` as JSON to ``url``, signed with ``secret`` (the run's) when set, under
    ``delivery_id`` (kept by every attempt: receivers dedupe on it); retry connection errors,
    408/429/5xx with exponential backoff (honouring Retry-After up to 30 s), all of it within
    ``deadline_seconds`` from the call: attempts, reads and waits between them together (a hard
    bound, however slowly the server answers). Never raises for a failed delivery: the result says
    what happened. The URL's query is never logged."""
    deadline = time.monotonic() + deadline_seconds
    safe_url = urlsplit(url)._replace(query="", fragment="").geturl()
    try:
        check_callback_url(
            url, allow_loopback_http=allow_loopback_http, resolve_timeout=deadline - time.monotonic()
        )
    except DeliveryTimeout as exc:
        log.warning("callback for run %s not sent: %s", run_id, exc, extra={"run_id": run_id})
        return DeliveryResult(False, 0, None, str(exc))
    except CallbackUnresolvable as exc:
        log.warning("callback for run %s not sent: %s", run_id, exc, extra={"run_id": run_id})
        return DeliveryResult(False, 0, None, str(exc))
    except CallbackError as exc:
        log.warning("callback for run %s refused: %s", run_id, exc, extra={"run_id": run_id})
        return DeliveryResult(False, 0, None, str(exc), refused=True)
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str).encode()
    delivery_id = delivery_id or secrets.token_urlsafe(16)
    status: int | None = None
    error: str | None = f"no attempt within the {deadline_seconds:g} s delivery deadline"
    attempt = 0
    while attempt < attempts and time.monotonic() < deadline:
        attempt += 1
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "batchai-serverless-callback/2",
            DELIVERY_HEADER: delivery_id,
        }
        if secret:
            headers[SIGNATURE_HEADER] = sign(body, secret, url=url, delivery_id=delivery_id)
        retry_after: float | None = None
        try:
            status, response_headers = _post_once(
                url,
                body,
                headers,
                deadline=deadline,
                allow_loopback=bool(allow_loopback_http),
                timeout_seconds=timeout_seconds,
            )
            error = None if 200 <= status < 300 else f"HTTP {status}"
            header = response_headers.get("retry-after", "")
            if header.isdigit():
                retry_after = min(float(header), 30.0)
        except CallbackError as exc:  # the connect-time check: the host now resolves somewhere refused
            log.warning(
                "callback for run %s to %s refused at connect time: %s",
                run_id,
                safe_url,
                exc,
                extra={"run_id": run_id},
            )
            return DeliveryResult(False, attempt, None, str(exc), refused=True)
        except DeliveryTimeout:
            status, error = None, f"no complete answer within the {deadline_seconds:g} s delivery deadline"
            break
        except (OSError, ValueError) as exc:  # ssl.SSLError and socket timeouts are OSErrors
            status = None
            error = f"connection failed: {exc}"
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
            break
        if attempt < attempts:
            delay = retry_after if retry_after is not None else backoff_seconds * 2 ** (attempt - 1)
            time.sleep(max(0.0, min(delay * (0.75 + random.random() / 2), deadline - time.monotonic())))
    log.warning(
        "callback for run %s to %s failed after %d attempt(s): %s",
        run_id,
        safe_url,
        attempt,
        error,
        extra={"run_id": run_id},
    )
    return DeliveryResult(False, attempt, status, error)
