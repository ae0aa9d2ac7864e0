"""Refuse requests whose `Host` is not a loopback name, in front of every local service.

Why: binding to 127.0.0.1 does not keep a web page out. A page on `rebind.attacker.example` can make
that name resolve to 127.0.0.1 (DNS rebinding); the browser then sends its requests to the local
stack with `Host: rebind.attacker.example:<port>`, and the page reads the answers as same-origin.
Local clients (SDKs, the CLI, the host) always name the service by a loopback address or
`localhost`, so any other Host value is refused before routing, authentication or any handler runs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

# What a local client puts in Host; `*.localhost` resolves to loopback by RFC 6761 and browsers
# never let a page rebind it.
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
STATUS = "421 Misdirected Request"


def host_name(host_header: str) -> str:
    """The name part of a Host header value: `[::1]:80` -> `::1`, `Name:80` -> `name`."""
    value = host_header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value[1:]
    if value.count(":") > 1:  # a bare IPv6 address (not valid in Host, but not a name either)
        return value
    return value.partition(":")[0].rstrip(".")


def is_loopback_host(host_header: str | None) -> bool:
    """True for `localhost`, `*.localhost`, 127.0.0.0/8 and ::1, with or without a port."""
    if not host_header:
        return False
    name = host_name(host_header)
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class LoopbackHostOnly:
    """WSGI middleware: 421 for a request whose Host is missing or not loopback; the wrapped
    application never sees it."""

    def __init__(self, app: Callable[..., Iterable[bytes]], service: str) -> None:
        self.app = app
        self.service = service

    def __getattr__(self, name: str) -> Any:  # the wrapped app's attributes (tests reach into them)
        return getattr(self.app, name)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        host = environ.get("HTTP_HOST")
        if is_loopback_host(host):
            return self.app(environ, start_response)
        body = (
            f"{self.service} answers only requests addressed to a loopback name (127.0.0.1, [::1] or "
            f"localhost); Host {host!r} is refused (DNS rebinding protection).\n"
        ).encode()
        start_response(
            STATUS, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
        )
        return [body]
