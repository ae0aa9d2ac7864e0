"""Callbacks: HMAC signature, retries with backoff, and refused URLs (SSRF guard)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.callbacks import SIGNATURE_HEADER, CallbackError, check_callback_url, deliver, sign, verify

SECRET = "test-signing-secret-0123456789"


class Receiver:
    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append((dict(self.headers), body))
            status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/hook?token=abc"
    finally:
        server.shutdown()
        server.server_close()


def test_signed_delivery(receiver) -> None:
    state, url = receiver
    result = deliver(url, {"id": "r1", "state": "succeeded"}, secret=SECRET, allow_loopback_http=True)
    assert result.delivered and result.attempts == 1 and result.status == 200
    headers, body = state.requests[0]
    assert json.loads(body) == {"id": "r1", "state": "succeeded"}
    assert verify(body, headers[SIGNATURE_HEADER], SECRET)
    assert not verify(body + b" ", headers[SIGNATURE_HEADER], SECRET)
    assert not verify(body, headers[SIGNATURE_HEADER], "another-secret-0123456789")
    assert not verify(body, sign(body, SECRET, timestamp=1), SECRET)  # too old: no replays


def test_retries_with_backoff_then_gives_up(receiver) -> None:
    state, url = receiver
    state.statuses = [500, 503]
    ok = deliver(url, {"a": 1}, secret=SECRET, allow_loopback_http=True, backoff_seconds=0.01)
    assert ok.delivered and ok.attempts == 3
    state.statuses = [500] * 10
    failed = deliver(url, {"a": 1}, secret=SECRET, allow_loopback_http=True, attempts=3, backoff_seconds=0.01)
    assert not failed.delivered and failed.attempts == 3 and failed.status == 500
    state.statuses = [404]
    not_found = deliver(url, {"a": 1}, secret=SECRET, allow_loopback_http=True, backoff_seconds=0.01)
    assert not not_found.delivered and not_found.attempts == 1  # a 4xx is not retried


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://93.184.216.34/x", "must be https"),
        ("ftp://93.184.216.34/x", "https"),
        ("https://10.1.2.3/x", "private"),
        ("https://192.168.0.10/x", "private"),
        ("https://169.254.169.254/metadata", "metadata"),
        ("https://168.63.129.16/", "metadata"),
        ("https://[fe80::1]/", "link-local"),
        ("https://127.0.0.1/", "loopback"),
        ("https://[::ffff:10.0.0.1]/", "private"),
        ("https://user:pw@93.184.216.34/", "credentials"),
        ("https://0.0.0.0/", "private"),
        ("not a url", "https"),
    ],
)
def test_refused_urls(url: str, message: str) -> None:
    with pytest.raises(CallbackError, match=message):
        check_callback_url(url)
    result = deliver(url, {}, secret=SECRET)
    assert not result.delivered and result.attempts == 0 and result.refused


@pytest.mark.parametrize(
    "address",
    [
        "100.64.0.1",  # shared address space (carrier-grade NAT): neither private nor reserved to Python
        "100.127.255.254",
        "198.18.0.1",  # benchmarking
        "192.0.0.8",  # IETF protocol assignments
        "[2002:a00:1::1]",  # 6to4 of 10.0.0.1
        "[2002:6440:1::1]",  # 6to4 of 100.64.0.1
        "[2002:a9fe:a9fe::1]",  # 6to4 of the metadata address
        "[2001:0:4136:e378:8000:63bf:f5ff:fffe]",  # Teredo whose client is 10.0.0.1
        "[64:ff9b::a00:1]",  # NAT64 of 10.0.0.1
        "[64:ff9b::a9fe:a9fe]",  # NAT64 of the metadata address
        "[64:ff9b:1::5db8:d822]",  # NAT64 local-use prefix
        "[::a00:1]",  # IPv4-compatible 10.0.0.1
        "[::ffff:100.64.0.1]",  # IPv4-mapped shared address
        "[2606:4700::200:5efe:a00:1]",  # ISATAP interface id carrying 10.0.0.1
        "[2001:db8::1]",  # documentation
    ],
)
def test_addresses_that_are_not_globally_routable_are_refused(address: str) -> None:
    with pytest.raises(CallbackError, match="refused"):
        check_callback_url(f"https://{address}/hook")


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "[2606:4700::1]", "[2002:5db8:d822::1]", "[64:ff9b::5db8:d822]"]
)
def test_globally_routable_addresses_and_their_wrapped_forms_are_allowed(address: str) -> None:
    check_callback_url(f"https://{address}/hook")


def test_an_unresolvable_host_is_not_sent_now_but_not_refused_for_good() -> None:
    """A name that does not resolve (here: the reserved .invalid TLD) is refused at request time,
    but a delivery only fails for this pass: DNS failures can be transient, so it is not `refused`."""
    url = "https://callback.invalid/hook"
    with pytest.raises(CallbackError, match="does not resolve"):
        check_callback_url(url)
    result = deliver(url, {}, secret=SECRET)
    assert not result.delivered and not result.refused and "does not resolve" in (result.error or "")


def test_allowed_urls() -> None:
    check_callback_url("https://93.184.216.34/hook")
    check_callback_url("http://127.0.0.1:8080/hook", allow_loopback_http=True)
    with pytest.raises(CallbackError, match="https"):
        check_callback_url("http://127.0.0.1:8080/hook")


def test_dns_rebinding_is_refused_at_connect_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The name answers a public address when checked and loopback when connected to (DNS
    rebinding): the connection is refused at once, before the TLS handshake or any request byte."""
    real_getaddrinfo = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding_getaddrinfo(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host != "rebind.test":
            return real_getaddrinfo(host, port, *args, **kwargs)
        lookups.append(host)
        address = "93.184.216.34" if len(lookups) == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port)))]

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        monkeypatch.setattr(socket, "getaddrinfo", rebinding_getaddrinfo)
        result = deliver(
            f"https://rebind.test:{port}/hook?token=abc",
            {"id": "r1"},
            secret=SECRET,
            allow_loopback_http=False,
            attempts=3,
            backoff_seconds=0.01,
            timeout_seconds=2,
        )
        monkeypatch.undo()
        assert len(lookups) >= 2  # checked as public, connected as loopback
        assert not result.delivered and result.attempts == 1 and result.status is None and result.refused
        assert result.error and "refused" in result.error and "loopback" in result.error
        received = b""
        listener.settimeout(0.5)
        while True:  # every connection that reached the listener: nothing was sent on any of them
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                break
            with conn:
                conn.settimeout(2)
                received += conn.recv(65536)
        assert received == b""


@pytest.mark.e2e
def test_overlapping_passes_deliver_a_callback_once(local_stack) -> None:
    """Two monitor passes that overlap both see the run's callback pending: the delivery is claimed
    by compare-and-swap before the POST, so exactly one of them posts."""
    import time
    import uuid

    from shared import monitor

    from .conftest import Pipeline

    local_stack.ensure("azurite")
    p = Pipeline(local_stack, CALLBACK_ALLOW_LOOPBACK_HTTP="true")
    posts: list[bytes] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                posts.append(body)
            time.sleep(0.5)  # a slow receiver: the other pass has long read the run by now
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        rec = p.registry.create(
            f"cb-{uuid.uuid4().hex[:8]}",
            state="succeeded",
            callback_url=f"http://127.0.0.1:{server.server_address[1]}/hook",
            callback_pending=True,
        )
        barrier = threading.Barrier(2)

        def deliver() -> tuple[str, str | None]:
            barrier.wait()
            return monitor._deliver_one(p.services, rec.run_id)

        threads = [threading.Thread(target=lambda: results.append(deliver())) for _ in range(2)]
        results: list[tuple[str, str | None]] = []
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        server.shutdown()
        server.server_close()
    assert len(posts) == 1, posts
    assert sorted(status or "" for _, status in results) == ["", "delivered"]
    after = p.registry.get(rec.run_id)
    assert not after.callback_pending and after.callback["status"] == "delivered"
    assert monitor.run_monitor(p.services).callbacks == {}  # nothing left to deliver


def test_a_refused_callback_is_not_tried_again(local_stack) -> None:
    """A callback whose URL is refused (here: a loopback host without CALLBACK_ALLOW_LOOPBACK_HTTP)
    ends after one monitor pass: no later pass tries it again."""
    import uuid

    from shared import monitor

    from .conftest import Pipeline

    local_stack.ensure("azurite")
    p = Pipeline(local_stack, CALLBACK_ALLOW_LOOPBACK_HTTP="false")
    rec = p.registry.create(
        f"cb-{uuid.uuid4().hex[:8]}",
        state="failed",
        callback_url="https://127.0.0.1:9/hook",
        callback_pending=True,
    )
    assert monitor._deliver_one(p.services, rec.run_id) == (rec.run_id, "failed")
    after = p.registry.get(rec.run_id)
    assert not after.callback_pending
    assert after.callback["passes"] == 1 and "loopback" in after.callback["error"]
