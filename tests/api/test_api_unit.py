"""The API's request parsing, error shapes and routing, without a host (plain `ApiRequest` values)."""

from __future__ import annotations

import json

import pytest

from shared import runs_api
from shared.api_messages import MAX_BODY_BYTES, ApiError, ApiRequest, json_body
from shared.openapi import ROUTES
from shared.settings import local_stack_values

# The local stack's app settings in the environment, read afresh by each test (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("app_settings")


def post(body: bytes | str, content_type: str | None = "application/json", **headers: str) -> ApiRequest:
    if content_type:
        headers["Content-Type"] = content_type
    raw = body.encode() if isinstance(body, str) else body
    return ApiRequest.build("POST", "http://127.0.0.1:7071/api/runs", headers=headers, body=raw)


def error_of(response: runs_api.ApiResponse) -> dict:
    assert set(response.body) == {"error"}
    return response.body["error"]


@pytest.mark.parametrize(
    ("request_", "status", "code"),
    [
        (post("{"), 400, "InvalidJson"),
        (post(""), 400, "InvalidJson"),
        (post("[1, 2]"), 400, "InvalidJson"),
        (post(b"\xff\xfe"), 400, "InvalidJson"),
        (post("{}", content_type="text/plain"), 415, "UnsupportedMediaType"),
        (post("{}", content_type=None), 415, "UnsupportedMediaType"),
        (post(b"{" + b" " * MAX_BODY_BYTES + b"}"), 413, "PayloadTooLarge"),
    ],
)
def test_body_errors(request_: ApiRequest, status: int, code: str) -> None:
    with pytest.raises(ApiError) as caught:
        json_body(request_)
    assert (caught.value.status, caught.value.code) == (status, code)


def test_json_content_type_with_charset_is_accepted() -> None:
    assert json_body(post('{"a": 1}', content_type="application/json; charset=utf-8")) == {"a": 1}


def test_declared_content_length_over_the_limit_is_413_without_reading() -> None:
    request = post("{}", **{"Content-Length": str(MAX_BODY_BYTES + 1)})
    response = runs_api.handle("runs", request)
    assert response.status == 413 and error_of(response)["code"] == "PayloadTooLarge"


def test_deeply_nested_json_is_a_400_not_a_crash() -> None:
    response = runs_api.handle("runs", post("[" * 100_000 + "]" * 100_000))
    assert response.status == 400


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "dataset"),
        ({"dataset": 5}, "dataset"),
        ({"dataset": "../etc"}, "dataset"),
        ({"dataset": "mnist", "colour": "red"}, "colour"),
        ({"dataset": "mnist", "spec": []}, "spec"),
        ({"dataset": "mnist", "spec": {"node_count": 0}}, "spec.node_count"),
        ({"dataset": "mnist", "spec": {"vm_size": "STANDARD_HUGE"}}, "spec.vm_size"),
        ({"dataset": "mnist", "spec": {"toolkit": "fortran"}}, "spec.toolkit"),
        ({"dataset": "mnist", "spec": {"script": "../x.py"}}, "spec.script"),
        ({"dataset": "mnist", "spec": {"unknown": 1}}, "spec.unknown"),
        ({"dataset": "mnist", "spec": {"callback_url": "http://example.com/hook"}}, "spec.callback_url"),
        (
            {
                "dataset": "mnist",
                "spec": {
                    "secret_environment_variables": {
                        "KV": {"key_vault_secret_url": "https://kv1.vault.azure.net/secrets/x"}
                    }
                },
            },
            "spec.secret_environment_variables.KV.key_vault_resource_id",
        ),
        ({"dataset": "mnist", "stage_from_prefix": "a/../../b"}, "stage_from_prefix"),
        ({"dataset": "mnist", "stage_from_prefix": ""}, "stage_from_prefix"),
        ({"dataset": "mnist", "stage_from_prefix": 42}, "stage_from_prefix"),
        ({"dataset": "mnist", "stage_from_prefix": "_uploads/mnist"}, "stage_from_prefix"),
    ],
)
def test_invalid_start_request_is_400_naming_the_field(body: dict, field: str) -> None:
    response = runs_api.handle("runs", post(json.dumps(body)))
    assert response.status == 400, response.body
    error = error_of(response)
    assert error["code"] == "InvalidRequest"
    assert field in [d["field"] for d in error["details"]]
    assert field in error["message"]


@pytest.mark.parametrize(
    "url",
    [
        "https://10.0.0.5/hook",
        "https://192.168.1.1/hook",
        "https://169.254.169.254/metadata/instance",
        "https://[fd00::1]/hook",
        "https://[fe80::1]/hook",
        "https://100.100.100.200/latest/meta-data",
        "https://metadata.google.internal/x",
        "https://0.0.0.0/hook",
    ],
)
def test_private_link_local_and_metadata_callbacks_are_refused(url: str) -> None:
    response = runs_api.handle("runs", post(json.dumps({"dataset": "mnist", "spec": {"callback_url": url}})))
    assert response.status == 400, response.body
    assert [d["field"] for d in error_of(response)["details"]] == ["spec.callback_url"]


def test_valid_request_parses_with_quickstart_defaults() -> None:
    dataset, spec, prefix = runs_api.parse_start_request(
        {
            "dataset": "mnist",
            "stage_from_prefix": "uploads/mnist",
            "spec": {"callback_url": "http://127.0.0.1:9/x"},
        }
    )
    assert (dataset, prefix) == ("mnist", "uploads/mnist")
    assert spec.script == "ConvNet_MNIST.py" and spec.vm_size == "STANDARD_NC6"


def test_idempotency_key_too_long_is_400() -> None:
    response = runs_api.handle("runs", post('{"dataset": "mnist"}', **{"Idempotency-Key": "k" * 201}))
    assert response.status == 400 and error_of(response)["code"] == "InvalidIdempotencyKey"


@pytest.mark.parametrize(
    ("route", "method"),
    [("runs", "PUT"), ("runs/{id}", "POST"), ("health", "DELETE"), ("clusters/{name}", "GET"),
     ("openapi.json", "PATCH")],
)  # fmt: skip
def test_unimplemented_method_is_405_with_allow(route: str, method: str) -> None:
    response = runs_api.handle(
        route, ApiRequest.build(method, "http://h/api/x", route_params={"id": "x", "name": "c"})
    )
    assert response.status == 405
    assert error_of(response)["code"] == "MethodNotAllowed"
    assert response.headers["Allow"] == ", ".join(sorted(ROUTES[route]))


@pytest.mark.parametrize(
    ("params", "field"),
    [({"state": "sleeping"}, "state"), ({"limit": "0"}, "limit"), ({"limit": "x"}, "limit"),
     ({"limit": "1001"}, "limit")],
)  # fmt: skip
def test_bad_list_query_is_400_naming_the_parameter(params: dict, field: str) -> None:
    response = runs_api.handle("runs", ApiRequest.build("GET", "http://h/api/runs", params=params))
    assert response.status == 400
    assert error_of(response)["details"][0]["field"] == field


def test_bad_flag_and_tail_are_400() -> None:
    request = ApiRequest.build(
        "GET", "http://h/api/runs/r/logs", route_params={"id": "r"}, params={"tail": "-3"}
    )
    response = runs_api.handle("runs/{id}/logs", request)
    assert response.status == 400 and error_of(response)["details"][0]["field"] == "tail"


def test_malformed_run_id_is_404_without_touching_storage() -> None:
    response = runs_api.handle(
        "runs/{id}", ApiRequest.build("GET", "http://h/api/runs/x", route_params={"id": "a'b"})
    )
    assert response.status == 404 and error_of(response)["code"] == "RunNotFound"


def test_openapi_document_lists_every_route_and_server_of_the_request() -> None:
    response = runs_api.handle(
        "openapi.json", ApiRequest.build("GET", "https://app.example/api/openapi.json")
    )
    doc = response.body
    assert response.status == 200 and doc["openapi"].startswith("3.")
    assert doc["servers"] == [{"url": "https://app.example/api"}]
    assert set(doc["paths"]) == {"/" + route for route in ROUTES}
    for route, operations in ROUTES.items():
        documented = {m.upper() for m in doc["paths"]["/" + route] if m != "parameters"}
        assert documented == set(operations)


def test_retirement_error_is_recognised() -> None:
    from azure.core.exceptions import HttpResponseError

    class Response:
        status_code = 400
        reason = "Bad Request"
        headers: dict = {}
        content_type = "application/json"

        def text(self, encoding: str | None = None) -> str:
            return json.dumps({"error": {"code": "NoRegisteredProviderFound", "message":
                "No registered resource provider found for location 'eastus' and API version '2018-05-01' "
                "for type 'workspaces'. The supported api-versions are ..."}})  # fmt: skip

        def body(self) -> bytes:
            return self.text().encode()

    from shared.batchai_sdk import BatchAISdk
    from shared.compute_port import ComputeError
    from shared.settings import Settings

    exc = HttpResponseError(response=Response())
    with (
        pytest.raises(ComputeError) as raised,
        BatchAISdk(Settings.from_env(local_stack_values()))._arm("probe"),
    ):
        raise exc
    assert raised.value.code == "BatchAIUnavailable"
    message = raised.value.message
    assert "retired" in message and "Microsoft.BatchAI" in message


def test_a_clusters_nodes_and_idle_time_as_get_clusters_shows_them() -> None:
    from datetime import UTC, datetime, timedelta

    from shared.compute_port import ClusterStatus
    from shared.registry import ClusterLedger

    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    idle = ClusterStatus("c1", "/c1", current_node_count=1, node_state_counts={"idle_node_count": 1})
    ledger = ClusterLedger("c1", node_minutes=42.123, busy_until="2026-01-01T11:45:00.000Z")
    shown = runs_api._cluster_json(idle, {}, ledger, now)
    assert shown["nodes"] == 1 and shown["idle_minutes"] == 15.0 and shown["node_minutes"] == 42.12
    assert shown["idle_since"] == "2026-01-01T11:45:00+00:00"
    # In use (an active run, or a node running a job): not idle.
    assert runs_api._cluster_json(idle, {"c1": ["r1"]}, ledger, now)["idle_minutes"] is None
    running = ClusterStatus("c1", "/c1", current_node_count=1, node_state_counts={"running_node_count": 1})
    assert runs_api._cluster_json(running, {}, ledger, now)["idle_since"] is None
    # Never seen by the monitor yet: idle since its creation, no node time known.
    fresh = ClusterStatus("c2", "/c2", current_node_count=0, created_at=now - timedelta(minutes=3))
    shown = runs_api._cluster_json(fresh, {}, None, now)
    assert shown["idle_minutes"] == 3.0 and shown["node_minutes"] is None and shown["nodes"] == 0
