"""HTTP triggers over real HTTP through the host process: routes and constraints, keys, status and
headers as the handler set them, 500 without a trace, 413 before the handler runs."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from .conftest import FUNCTIONS_KEY, HostProcess, only

pytestmark = pytest.mark.e2e

HTTP_FUNCTIONS = ("item_by_id", "item_by_name", "by_key", "echo", "secure", "admin_ping", "boom",
                  "async_double", "plain")  # fmt: skip
BODY_LIMIT = 1024 * 1024


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostProcess]:
    settings = {**only(*HTTP_FUNCTIONS), "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT": str(BODY_LIMIT)}
    process = HostProcess(Path(tmp_path_factory.mktemp("http-host")), settings).start()
    yield process
    assert process.stop() == 0


def test_start_lists_functions_with_urls(host: HostProcess) -> None:
    log = host.log()
    assert f"item_by_id: [GET] {host.url}/api/items/{{id:int}}" in log
    assert f"echo: [POST,PUT] {host.url}/api/echo" in log
    assert "tick: disabled" in log


@pytest.mark.parametrize(
    ("path", "status", "expected"),
    [
        ("/api/items/42", 200, {"by": "id", "params": {"id": "42"}}),
        ("/api/items/abc", 200, {"by": "name", "params": {"name": "abc"}}),
        ("/api/ITEMS/7", 200, {"by": "id", "params": {"id": "7"}}),
        ("/api/items/4x2", 404, None),
        ("/api/items/99999999999", 404, None),  # :int is a 32-bit integer
        ("/api/keys/5c4f6b0e-8a3e-4f0e-9a55-1a2b3c4d5e6f", 200,
         {"method": "GET", "params": {"key": "5c4f6b0e-8a3e-4f0e-9a55-1a2b3c4d5e6f"}}),
        ("/api/keys/5c4f6b0e-8a3e-4f0e-9a55-1a2b3c4d5e6f/extra", 200,
         {"method": "GET", "params": {"key": "5c4f6b0e-8a3e-4f0e-9a55-1a2b3c4d5e6f", "part": "extra"}}),
        ("/api/keys/not-a-guid", 404, None),
        ("/api/async/21", 200, {"double": 42}),
        ("/items/42", 404, None),  # outside the route prefix
    ],
)  # fmt: skip
def test_route_templates_and_constraints(host: HostProcess, path: str, status: int, expected: object) -> None:
    response = requests.get(host.url + path, timeout=10)
    assert response.status_code == status
    if expected is not None:
        assert response.json() == expected


def test_methods_are_enforced(host: HostProcess) -> None:
    key = "5c4f6b0e-8a3e-4f0e-9a55-1a2b3c4d5e6f"
    assert requests.delete(f"{host.url}/api/keys/{key}", timeout=10).json()["method"] == "DELETE"
    assert requests.post(f"{host.url}/api/keys/{key}", timeout=10).status_code == 404
    assert requests.get(f"{host.url}/api/echo", timeout=10).status_code == 404


def test_request_and_response_pass_through(host: HostProcess) -> None:
    body = uuid.uuid4().bytes * 1000
    response = requests.put(
        f"{host.url}/api/echo?run=7&name=x", data=body, headers={"X-Test": "yes"}, timeout=10
    )
    assert response.status_code == 201
    assert response.headers["X-Handler"] == "echo"
    assert response.headers["Content-Type"] == "application/json"
    assert response.raw.headers.getlist("Set-Cookie") == ["a=1", "b=2"]
    echoed = response.json()
    assert echoed["method"] == "PUT"
    assert echoed["query"] == {"run": "7", "name": "x"}
    assert echoed["x_test"] == "yes"
    assert echoed["length"] == len(body)
    assert echoed["url"] == f"{host.url}/api/echo?run=7&name=x"
    plain = requests.get(f"{host.url}/api/plain", timeout=10)
    assert (plain.status_code, plain.text) == (200, "just a string")
    assert plain.headers["Content-Type"] == "text/plain; charset=utf-8"


def test_function_and_admin_levels_need_the_key(host: HostProcess) -> None:
    assert requests.get(f"{host.url}/api/secure", timeout=10).status_code == 401
    wrong = requests.get(f"{host.url}/api/secure", headers={"x-functions-key": "nope"}, timeout=10)
    assert wrong.status_code == 401
    by_header = requests.get(f"{host.url}/api/secure", headers={"x-functions-key": FUNCTIONS_KEY}, timeout=10)
    assert (by_header.status_code, by_header.text) == (200, "secret")
    by_query = requests.get(f"{host.url}/api/secure", params={"code": FUNCTIONS_KEY}, timeout=10)
    assert by_query.status_code == 200
    assert requests.get(f"{host.url}/api/admin/ping", timeout=10).status_code == 401
    admin = requests.get(f"{host.url}/api/admin/ping", headers={"x-functions-key": FUNCTIONS_KEY}, timeout=10)
    assert admin.text == "pong"
    assert requests.get(f"{host.url}/api/items/1", timeout=10).status_code == 200  # anonymous


def test_handler_exception_is_500_without_trace(host: HostProcess) -> None:
    response = requests.get(f"{host.url}/api/boom", timeout=10)
    assert response.status_code == 500
    assert b"boom-marker" not in response.content and b"Traceback" not in response.content
    log = host.log()
    assert "RuntimeError: boom-marker" in log
    assert "Executed 'Functions.boom' (Failed, Id=" in log


def _raw_request(host: HostProcess, head: bytes, body_chunks: int = 0) -> bytes:
    with socket.create_connection(("127.0.0.1", host.port), timeout=10) as sock:
        sock.sendall(head)
        try:
            for _ in range(body_chunks):
                chunk = b"x" * 65536
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except OSError:
            pass  # the host may stop reading and answer before the client is done sending
        received = b""
        while b"\r\n\r\n" not in received:
            data = sock.recv(4096)
            if not data:
                break
            received += data
        return received


def test_body_over_the_limit_is_413_before_the_handler(host: HostProcess) -> None:
    executed = host.log().count("Executing 'Functions.echo'")
    declared = _raw_request(
        host, b"POST /api/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % (BODY_LIMIT + 1)
    )
    assert declared.startswith(b"HTTP/1.1 413")
    # A chunked body has no Content-Length: the host counts while it reads and stops at the limit.
    chunked = _raw_request(
        host,
        b"POST /api/echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n",
        body_chunks=20,
    )
    assert chunked.startswith(b"HTTP/1.1 413")
    assert host.log().count("Executing 'Functions.echo'") == executed
    at_limit = requests.post(f"{host.url}/api/echo", data=b"y" * BODY_LIMIT, timeout=10)
    assert at_limit.json()["length"] == BODY_LIMIT


def test_time_limits_function_timeout_and_the_http_cutoff(host_factory) -> None:
    """host.json functionTimeout abandons an invocation and fails it; an HTTP answer later than the
    front end's limit (230 s in Azure; 1 s here) is a 502 while the function runs on."""
    settings = {
        **only("sleepy"),
        "AzureFunctionsJobHost__functionTimeout": "00:00:03",
        "FUNCHOST_HTTP_RESPONSE_LIMIT": "1",
        "FUNCHOST_SHUTDOWN_TIMEOUT": "0.5",
    }
    host = host_factory(settings).start()
    assert requests.get(f"{host.url}/api/sleep/0.1", timeout=10).status_code == 200
    cut = requests.get(f"{host.url}/api/sleep/2", timeout=10)
    assert (cut.status_code, cut.text) == (502, "Bad Gateway")
    host.wait_for(  # it ran on to its end
        lambda: host.log().count("Executed 'Functions.sleepy' (Succeeded") == 2, what="the cut-off call's end"
    )

    started = time.monotonic()
    late = requests.get(f"{host.url}/api/sleep/6", timeout=20)
    assert late.status_code == 502 and time.monotonic() - started < 5
    host.wait_for(lambda: "Timeout value of 00:00:03 exceeded by function 'Functions.sleepy'" in host.log())
    assert "Executed 'Functions.sleepy' (Failed" in host.log()
    assert host.stop() == 1  # the abandoned invocation still sleeps past the shutdown timeout
    # functionTimeout shorter than the cutoff: the caller gets the failed invocation's 500 at it.
    strict = host_factory({**only("sleepy"), "AzureFunctionsJobHost__functionTimeout": "00:00:01"}).start()
    started = time.monotonic()
    assert requests.get(f"{strict.url}/api/sleep/4", timeout=20).status_code == 500
    assert time.monotonic() - started < 3
    assert "Timeout value of 00:00:01 exceeded by function 'Functions.sleepy'" in strict.log()
