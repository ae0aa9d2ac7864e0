"""ComputeError: ARM error answers (including Batch AI's retirement) become one exception type with
the ARM code, through the real SDK over real HTTP to a tiny in-process server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared import sdk_clients
from shared.batchai_sdk import BatchAISdk, ComputeError
from shared.settings import Settings, local_stack_values

ANSWERS: dict[str, tuple[int, dict]] = {}
SEEN: list[dict[str, str]] = []


class Handler(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        SEEN.append(
            {"method": self.command, "path": self.path, "auth": self.headers.get("Authorization", "")}
        )
        status, body = ANSWERS.get(self.command, (500, {"error": {"code": "Unexpected", "message": "?"}}))
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_PUT = do_DELETE = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def compute_for(endpoint: str) -> BatchAISdk:
    from azure.mgmt.batchai import BatchAI

    settings = Settings.from_env(local_stack_values(ARM_ENDPOINT=endpoint))
    batchai = BatchAI(
        sdk_clients.credential(settings),
        settings.subscription_id,
        base_url=endpoint,
        per_call_policies=[sdk_clients.make_loopback_http_policy()],
        retry_total=0,  # the translation is under test, not azure-core's backoff
    )
    return BatchAISdk(settings, batchai=batchai)


def test_retired_provider_becomes_a_clear_message(endpoint: str) -> None:
    ANSWERS["GET"] = (
        400,
        {
            "error": {
                "code": "NoRegisteredProviderFound",
                "message": "No registered resource provider found for location 'eastus' and API version "
                "'2018-05-01' for type 'workspaces'. The supported api-versions are ''.",
            }
        },
    )
    with pytest.raises(ComputeError) as info:
        compute_for(endpoint).get_cluster("c1")
    error = info.value
    assert error.code == "BatchAIUnavailable" and error.status == 400
    assert "retired" in error.message and "2019-03-31" in error.message and "ARM_ENDPOINT" in error.message
    assert "NoRegisteredProviderFound" in error.message
    assert SEEN[-1]["auth"] == "Bearer local-dev-token"  # the static dev token, over http to loopback
    assert SEEN[-1]["path"].startswith(
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/batchaiquickstart/providers"
        "/Microsoft.BatchAI/workspaces/batchai-workspace/clusters/c1?api-version=2018-05-01"
    )


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (409, "Conflict", False),
        (429, "TooManyRequests", True),
        (503, "ServiceUnavailable", True),
        (403, "AuthorizationFailed", False),
    ],
)
def test_arm_errors_carry_code_message_and_status(
    endpoint: str, status: int, code: str, retryable: bool
) -> None:
    ANSWERS["PUT"] = (status, {"error": {"code": code, "message": f"the {code} message"}})
    from shared import batchai_requests
    from shared.runspec import SpecContext, parse_run_spec

    compute = compute_for(endpoint)
    spec = parse_run_spec({}, SpecContext.from_settings(compute.settings))
    ANSWERS["GET"] = (404, {"error": {"code": "ResourceNotFound", "message": "no cluster"}})
    with pytest.raises(ComputeError) as info:
        compute.ensure_cluster("c1", batchai_requests.cluster_parameters(spec, compute.settings))
    error = info.value
    assert (error.code, error.status, error.retryable) == (code, status, retryable)
    assert error.message == f"the {code} message"
    assert "create cluster c1" in str(error)


def test_not_found_reads_as_none(endpoint: str) -> None:
    ANSWERS["GET"] = (404, {"error": {"code": "ResourceNotFound", "message": "gone"}})
    compute = compute_for(endpoint)
    assert compute.get_cluster("c1") is None
    assert compute.get_job("e", "j") is None
    ANSWERS["DELETE"] = (404, {"error": {"code": "ResourceNotFound", "message": "gone"}})
    assert compute.delete_job("e", "j") is False
