"""Callbacks: HMAC signature, retries with backoff, and refused URLs (SSRF guard)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.callbacks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    CallbackError,
    check_callback_url,
    deliver,
    sign,
    verify,
)

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
    result = deliver(
        url, {"id": "r1", "state": "succeeded"}, secret=SECRET, allow_loopback_http=True, delivery_id="d-1"
    )
    assert result.delivered and result.attempts == 1 and result.status == 200
    headers, body = state.requests[0]
    assert json.loads(body) == {"id": "r1", "state": "succeeded"}
    signature = headers[SIGNATURE_HEADER]
    assert verify(body, signature, SECRET, url=url) == "d-1" == headers[DELIVERY_HEADER]
    assert not verify(body + b" ", signature, SECRET, url=url)
    assert not verify(body, signature, "another-secret-0123456789", url=url)
    old = sign(body, SECRET, url=url, delivery_id="d-1", timestamp=1)
    assert not verify(body, old, SECRET, url=url)  # too old: no replays


def test_a_signature_covers_the_url_and_the_delivery_id(receiver) -> None:
    """Replayed to another receiver (another URL, even one differing only in its query) or with
    another delivery id, a signature does not verify."""
    state, url = receiver
    assert deliver(url, {"id": "r1"}, secret=SECRET, allow_loopback_http=True, delivery_id="d-1").delivered
    headers, body = state.requests[0]
    signature = headers[SIGNATURE_HEADER]
    assert verify(body, signature, SECRET, url=url) == "d-1"
    assert not verify(body, signature, SECRET, url=url.replace("token=abc", "token=abd"))
    assert not verify(body, signature, SECRET, url="https://other.example/hook")
    assert not verify(body, signature.replace("id=d-1", "id=d-2"), SECRET, url=url)


def test_each_run_has_its_own_secret_and_its_url_is_sealed() -> None:
    """Per-run secrets come from the app's key and a salt: two runs' secrets differ, neither is the
    key, and the salt alone (what the registry keeps) does not give it. The full URL is sealed:
    the record shows it redacted, and only the key opens it."""
    from shared.callbacks import open_callback, redact_url, run_secret, seal_callback

    url = "https://93.184.216.34/hook?token=s3cret&x=1"
    one, two = seal_callback(url, SECRET), seal_callback(url, SECRET)
    assert run_secret(SECRET, one["salt"]) != run_secret(SECRET, two["salt"])
    assert SECRET not in run_secret(SECRET, one["salt"])
    assert run_secret("another-key-0123456789", one["salt"]) != run_secret(SECRET, one["salt"])
    assert "s3cret" not in json.dumps(one)
    assert redact_url(url) == "https://93.184.216.34/hook?token=REDACTED&x=REDACTED"
    assert open_callback(redact_url(url), one, SECRET) == url
    with pytest.raises(CallbackError, match="cannot be opened"):
        open_callback(redact_url(url), one, "another-key-0123456789")
    plain = seal_callback("https://93.184.216.34/hook", SECRET)
    assert "url" not in plain and open_callback("https://93.184.216.34/hook", plain, SECRET).endswith("/hook")
    with pytest.raises(CallbackError, match="CALLBACK_SIGNING_SECRET"):
        seal_callback(url, None)


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
    from tests.pipeline.conftest import Pipeline

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
    from tests.pipeline.conftest import Pipeline

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


class TricklingServer:
    """A callback receiver that answers one byte every ``interval`` seconds and never finishes its
    headers: each read succeeds well within any per-read timeout."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.stop = threading.Event()
        self.connections = 0
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            self.connections += 1
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        data = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100_000
        with conn:
            for byte in data:
                if self.stop.wait(self.interval):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


def test_a_trickling_response_is_cut_at_the_delivery_deadline() -> None:
    server = TricklingServer(interval=0.5)
    try:
        result = deliver(
            server.url, {"id": "r1"}, secret=SECRET, allow_loopback_http=True, deadline_seconds=2,
            timeout_seconds=5, attempts=3,
        )  # fmt: skip
    finally:
        server.close()
    assert not result.delivered and not result.refused
    assert "deadline" in (result.error or "")


def test_response_headers_are_capped() -> None:
    """A receiver that sends endless headers fast is cut at the head cap, not read for ever."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]

        def flood() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                with __import__("contextlib").suppress(OSError):
                    conn.sendall(b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"b" * 1_000_000)

        threading.Thread(target=flood, daemon=True).start()
        result = deliver(
            f"http://127.0.0.1:{port}/hook", {}, secret=SECRET, allow_loopback_http=True, attempts=1
        )
    assert not result.delivered and "exceed" in (result.error or "")


@pytest.mark.e2e
def test_a_trickling_callback_server_does_not_stall_other_runs(pipeline, monkeypatch) -> None:
    """A finished run's receiver trickles a byte at a time and never finishes; meanwhile another
    run's job runs and finishes. Monitor passes follow one another as the timer runs them (never
    overlapping): the other run still reaches `succeeded`, and the trickling delivery is cut at its
    deadline and counted."""
    import time
    import uuid

    from shared import monitor
    from shared.ingest import ingest_blob
    from shared.registry import TERMINAL_STATES
    from tests.pipeline.conftest import QUICKSTART_FILES, QUICKSTART_MANIFEST

    monkeypatch.setattr(monitor, "CALLBACK_DEADLINE_SECONDS", 2.0)
    monkeypatch.setattr(monitor, "CALLBACK_PASS_BUDGET_SECONDS", 3.0)
    p = pipeline
    server = TricklingServer(interval=1.0)
    stop = threading.Event()
    try:
        slow = p.registry.create(
            f"slow-{uuid.uuid4().hex[:8]}", state="succeeded", callback_url=server.url, callback_pending=True
        )
        ds = f"busy-{uuid.uuid4().hex[:8]}"
        other = [ingest_blob(n, p.services) for n in p.upload(ds, QUICKSTART_FILES, QUICKSTART_MANIFEST)]
        other_id = other[-1].run_id

        def timer() -> None:  # one pass after another, as the host runs the timer
            while not stop.is_set():
                monitor.run_monitor(p.services)
                stop.wait(0.3)

        threading.Thread(target=timer, daemon=True).start()
        deadline = time.monotonic() + 90
        while (rec := p.registry.get(other_id)).state not in TERMINAL_STATES:
            assert time.monotonic() < deadline, f"the other run stalled in {rec.state}"
            time.sleep(0.5)
        assert rec.state == "succeeded", rec.errors
        assert server.connections >= 1  # the slow receiver was being called all along
        callback = p.registry.get(slow.run_id).callback or {}
        assert callback.get("passes", 0) >= 1
    finally:
        stop.set()
        server.close()


@pytest.mark.e2e
def test_a_delivery_counts_when_claimed(local_stack) -> None:
    """A pass counts when it claims the delivery, so deliveries whose workers never come back (a
    killed host, a hung socket) are given up after MAX_CALLBACK_PASSES claims, without a POST."""
    import uuid

    from shared import monitor
    from tests.pipeline.conftest import Pipeline

    local_stack.ensure("azurite")
    p = Pipeline(local_stack)
    rec = p.registry.create(
        f"cb-{uuid.uuid4().hex[:8]}",
        state="failed",
        callback_url="http://127.0.0.1:9/hook",
        callback_pending=True,
    )

    def expire(r) -> None:  # the claimed pass died: its claim runs out
        r.callback = {**(r.callback or {}), "claimed_until": "2000-01-01T00:00:00.000Z"}

    for n in range(1, monitor.MAX_CALLBACK_PASSES + 1):
        claimed = monitor._claim_callback(p.services, rec.run_id, f"token-{n}")
        assert claimed is not None and claimed.callback["passes"] == n
        p.registry.update(rec.run_id, expire)
    assert monitor._deliver_one(p.services, rec.run_id) == (rec.run_id, "failed")
    after = p.registry.get(rec.run_id)
    assert not after.callback_pending and after.callback["status"] == "failed"
    assert after.callback["passes"] == monitor.MAX_CALLBACK_PASSES


def test_a_record_written_before_redaction_is_shown_redacted() -> None:
    """A run recorded with the full URL (before URLs were stored redacted) is still shown redacted,
    in its callback_url and its spec, and never with its seal."""
    from shared.registry import RunRecord

    url = "https://93.184.216.34/hook?token=s3cret"
    rec = RunRecord(
        "r1", "ds", spec={"callback_url": url}, callback_url=url, callback_seal={"salt": "x", "url": "y"}
    )
    shown = rec.to_dict()
    assert "s3cret" not in json.dumps(shown) and "callback_seal" not in shown
    assert (
        shown["callback_url"] == shown["spec"]["callback_url"] == "https://93.184.216.34/hook?token=REDACTED"
    )


def test_a_slow_name_lookup_is_cut_at_the_delivery_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name server that does not answer holds a delivery no longer than its deadline, at the
    check's lookup and at the connection's alike: the delivery is over while the lookup still hangs."""
    real_getaddrinfo = socket.getaddrinfo
    release = threading.Event()
    lookups: list[str] = []
    slow_at = {1}  # which lookup (1: the check's, 2: the connection's) hangs

    def hanging_getaddrinfo(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host != "slow-dns.test":
            return real_getaddrinfo(host, port, *args, **kwargs)
        lookups.append(host)
        if len(lookups) in slow_at:
            release.wait(60)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("93.184.216.34", int(port)))]

    monkeypatch.setattr(socket, "getaddrinfo", hanging_getaddrinfo)
    try:
        for hanging in (1, 2):
            lookups.clear()
            slow_at = {hanging}
            result = deliver("https://slow-dns.test/hook", {}, secret=SECRET, deadline_seconds=1.0)
            assert not release.is_set() and len(lookups) == hanging  # the hanging lookup is not over
            assert not result.delivered and not result.refused and "deadline" in (result.error or ""), result
    finally:
        release.set()


def test_an_interim_answer_is_followed_by_the_final_one() -> None:
    """A receiver that first answers `100 Continue` (or 103) is judged by its final answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]

        def answer() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
                )

        threading.Thread(target=answer, daemon=True).start()
        result = deliver(
            f"http://127.0.0.1:{port}/hook", {}, secret=SECRET, allow_loopback_http=True, attempts=1
        )
    assert result.delivered and result.status == 204, result
