"""Log tails by HTTP Range: GET /logs and the monitor's stdout tail read only the end of a log file."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared import monitor, runs_api
from shared.logtail import read_tail
from shared.registry import OutputFile

pytestmark = pytest.mark.e2e

LOG = b"".join(b"line %07d of a long training log\n" % i for i in range(400_000))  # about 13 MiB


class LogServer:
    def __init__(self) -> None:
        self.body = LOG
        self.honour_range = True
        self.ranges: list[str | None] = []
        self.sent = 0


@pytest.fixture
def log_server() -> Iterator[tuple[LogServer, str]]:
    state = LogServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            wanted = self.headers.get("Range")
            state.ranges.append(wanted)
            body, status = state.body, 200
            found = re.fullmatch(r"bytes=-(\d+)", wanted or "")
            start = re.fullmatch(r"bytes=(\d+)-", wanted or "")  # absolute: Azure Blob storage's form
            if state.honour_range and (found or start):
                if not body or (start and int(start.group(1)) >= len(body)):
                    self.send_response(416)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = body[-int(found.group(1)) :] if found else body[int(start.group(1)) :]
                status = 206
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # Counted before writing: the client can finish reading before this thread runs again.
            state.sent += len(body)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/stdout.txt"
    finally:
        server.shutdown()
        server.server_close()


def test_logs_endpoint_reads_only_the_end_of_the_log(log_server) -> None:
    state, url = log_server
    assert len(LOG) > 2 * runs_api.LOG_READ_LIMIT
    tail = runs_api._tail_of_url(url, 3)
    assert tail == b"".join(LOG.splitlines(keepends=True)[-3:]).decode()
    assert state.ranges == [f"bytes=-{runs_api.LOG_READ_LIMIT}"]
    assert state.sent <= runs_api.LOG_READ_LIMIT


def test_monitor_stdout_tail_reads_only_the_end_of_the_log(log_server) -> None:
    state, url = log_server
    outputs = [OutputFile("stdouterr", "stdout.txt", len(LOG), url)]
    assert monitor.stdout_tail(outputs, 1000) == LOG[-1000:].decode()
    assert state.sent == 1000
    assert state.ranges == [f"bytes={len(LOG) - 1000}-"]  # the size is known: an absolute range


def test_a_server_that_ignores_range_gives_the_same_tail(log_server) -> None:
    state, url = log_server
    state.honour_range = False
    assert read_tail(url, 1000) == LOG[-1000:]
    assert read_tail(url, len(LOG) * 2) == LOG
    state.body = b"short\n"
    assert read_tail(url, 1000) == b"short\n"


def test_an_empty_log_is_an_empty_tail(log_server) -> None:
    state, url = log_server
    state.body = b""
    assert read_tail(url, 1000) == b""
    assert runs_api._tail_of_url(url, 5) == ""
    state.honour_range = False
    assert read_tail(url, 1000) == b""
