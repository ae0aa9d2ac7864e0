"""GET /api/health/deep when things are wrong: plain messages per check, never a stack trace nor
upstream text; GET /api/health is liveness only; the deep checks are cached.

Azure itself answers Batch AI requests with NoRegisteredProviderFound since the service's retirement;
a small stand-in ARM endpoint answers the way Azure does, to show that the health check says so."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared import runs_api
from shared.api_messages import ApiRequest
from shared.sdk_clients import reset_clients
from shared.settings import local_stack_values, reset_settings

RETIRED = {
    "error": {
        "code": "NoRegisteredProviderFound",
        "message": "No registered resource provider found for location 'eastus' and API version "
        "'2018-05-01' for type 'locations/usages'. The supported api-versions are '2015-01-01'.",
    }
}


class RetiredArm(BaseHTTPRequestHandler):
    """Azure Resource Manager after Batch AI's retirement: resource groups work, Microsoft.BatchAI not."""

    def do_GET(self) -> None:
        if "/providers/Microsoft.BatchAI/" in self.path:
            status, body = 400, RETIRED
        else:
            status, body = 200, {"id": self.path.split("?")[0], "name": "rg", "location": "eastus",
                                 "properties": {"provisioningState": "Succeeded"}}  # fmt: skip
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def retired_arm() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), RetiredArm)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def configure(monkeypatch: pytest.MonkeyPatch, **overrides: str) -> None:
    # Storage on a port nothing listens on: unreachable, quickly.
    dead = "http://127.0.0.1:9"
    values = local_stack_values(
        STORAGE_CONNECTION_STRING="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey=a2V5;BlobEndpoint={dead}/devstoreaccount1;TableEndpoint={dead}/devstoreaccount1;"
        f"QueueEndpoint={dead}/devstoreaccount1;FileEndpoint={dead}/devstoreaccount1;",
        **overrides,
    )
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    reset_settings()
    reset_clients()


@pytest.fixture(autouse=True)
def forget_settings() -> Iterator[None]:
    runs_api.reset_health_cache()
    yield
    reset_settings()
    reset_clients()
    runs_api.reset_health_cache()


def health() -> tuple[int, dict]:
    response = runs_api.handle("health/deep", ApiRequest.build("GET", "http://h/api/health/deep"))
    return response.status, response.body


def test_batchai_retirement_is_a_clear_message(monkeypatch: pytest.MonkeyPatch, retired_arm: str) -> None:
    configure(monkeypatch, ARM_ENDPOINT=retired_arm)
    status, body = health()
    assert status == 503 and body["status"] == "unavailable"
    checks = body["checks"]
    assert checks["settings"]["ok"] and checks["arm"]["ok"]
    assert not checks["batchai"]["ok"]
    message = checks["batchai"]["message"]
    assert "retired" in message and "Microsoft.BatchAI" in message and "NoRegisteredProviderFound" in message
    assert not checks["storage"]["ok"] and "Traceback" not in json.dumps(body)
    # Plain messages: no upstream text, no account, group, region or endpoint.
    text = json.dumps(body)
    assert "No registered resource provider" not in text and "eastus" not in text
    assert "devstoreaccount1" not in text and retired_arm not in text and "127.0.0.1" not in text


def test_invalid_settings_name_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    configure(monkeypatch, AZURE_SUBSCRIPTION_ID="not-a-guid")
    status, body = health()
    assert status == 503
    assert not body["checks"]["settings"]["ok"]
    assert "AZURE_SUBSCRIPTION_ID" in body["checks"]["settings"]["message"]


class CountingArm(RetiredArm):
    """The stand-in ARM, counting the requests it answers."""

    count = 0
    lock = threading.Lock()

    def do_GET(self) -> None:
        with CountingArm.lock:
            CountingArm.count += 1
        super().do_GET()


def test_anonymous_health_is_liveness_only_and_names_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), CountingArm)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        configure(monkeypatch, ARM_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}")
        CountingArm.count = 0
        for _ in range(20):
            response = runs_api.handle("health", ApiRequest.build("GET", "http://h/api/health"))
            assert response.status == 200 and response.body == {"status": "ok"}
        assert CountingArm.count == 0
    finally:
        server.shutdown()
        server.server_close()


def test_a_flood_of_deep_health_requests_costs_one_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """40 concurrent deep health requests: one probe (2 ARM requests: the resource group and the
    Batch AI usages), every request answered from it."""
    from concurrent.futures import ThreadPoolExecutor

    server = ThreadingHTTPServer(("127.0.0.1", 0), CountingArm)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        configure(monkeypatch, ARM_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}")
        CountingArm.count = 0
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: health(), range(40)))
        assert {status for status, _ in answers} == {503}  # storage is unreachable here
        assert all(body["checks"]["arm"]["ok"] for _, body in answers)
        assert CountingArm.count == 2
    finally:
        server.shutdown()
        server.server_close()
