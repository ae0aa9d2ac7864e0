"""The WSGI application: admin endpoints, fault injection, authentication and api-version checks in
front of the routing table.

Admin endpoints (no authentication; loopback tooling, never faulted, never counted):
- `GET /_emulator/health`
- `GET /_emulator/settings`, `POST /_emulator/settings` (JSON, any of provisioning_delay,
  operation_delay, retry_after: seconds; node_failure_rate: fraction; changes them at runtime)
- `GET /_emulator/faults`, `POST /_emulator/faults` (JSON FaultSettings: rate_429, rate_500, rate_drop,
  latency_ms, retry_after, seed; omitted fields reset to 0/defaults), `DELETE /_emulator/faults`
- `GET /_emulator/requests[?since=SEQ]` (counts by ARM operation id and status, recent requests),
  `DELETE /_emulator/requests` (reset the counts)
- `GET /_emulator/clusters`: each cluster's node allocation over time (nodes now, node-seconds held
  since creation, the history of node count changes)
- `GET /_emulator/files/<name>?p=..&se=..&sig=..`: output file downloads (listOutputFiles' downloadUrl)
"""

from __future__ import annotations

import contextlib
import hmac
import json
import socket
import traceback
import uuid
from typing import Any

from werkzeug.wrappers import Request, Response

from infra.local.arm import urls
from infra.local.arm.azureml import urls as azureml_urls
from infra.local.arm.azureml.models import AzureMLBackend
from infra.local.arm.azureml.responses import AzureMLResponses
from infra.local.arm.batchai.backend import Backend
from infra.local.arm.batchai.models import BATCHAI_API_VERSION
from infra.local.arm.errors import ArmError, method_not_allowed
from infra.local.arm.faults import FaultInjector, FaultSettings, RequestLog
from infra.local.arm.legacy import VERSIONS as LEGACY_VERSIONS
from infra.local.arm.responses import ArmRequest, ArmResponses, error_response, json_response
from infra.local.arm.storage import API_VERSIONS as STORAGE_API_VERSIONS

# What azure-mgmt-resource sends for resource groups (26.0.0: 2025-04-01) and the versions before it.
RESOURCES_API_VERSIONS = frozenset(
    {
        "2025-04-01",
        "2025-03-01",
        "2024-11-01",
        "2024-07-01",
        "2024-03-01",
        "2023-07-01",
        "2022-09-01",
        "2021-04-01",
        "2021-01-01",
        "2020-10-01",
        "2020-06-01",
        "2019-10-01",
        "2019-08-01",
        "2019-07-01",
        "2019-05-10",
        "2019-05-01",
        "2019-03-01",
        "2018-05-01",
        "2018-02-01",
        "2017-05-10",
        "2016-09-01",
    }
)
BATCHAI_API_VERSIONS = frozenset({BATCHAI_API_VERSION, *LEGACY_VERSIONS})
# Which api-versions each provider accepts (a path under /providers/<name> is that provider's).
PROVIDER_API_VERSIONS = {
    "Microsoft.BatchAI": BATCHAI_API_VERSIONS,
    "Microsoft.Storage": STORAGE_API_VERSIONS,
    "Microsoft.Resources": RESOURCES_API_VERSIONS,
}
# azure-core retries a dropped connection only for idempotent methods; a drop drawn for POST/PATCH
# is answered 503 instead (which every Azure SDK retries), so injected faults stay absorbable.
DROPPABLE_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE"})


class ArmEmulator:
    """`token`: the one bearer token accepted (the stack's `ARM_EMULATOR_TOKEN`); None accepts any
    non-empty token (in-process tests only: `python -m infra.local.arm` always sets one)."""

    def __init__(
        self, backend: Backend, faults: FaultInjector | None = None, token: str | None = None
    ) -> None:
        self.backend = backend
        self.token = token
        self.responses = ArmResponses(backend)
        self.azureml = AzureMLBackend(backend)  # Microsoft.MachineLearningServices, in its own folder
        self.azureml_responses = AzureMLResponses(self.azureml)
        self.faults = faults or FaultInjector()
        self.log = RequestLog()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.path.startswith("/_emulator/"):
            response = self.admin(request)
            return response(environ, start_response)
        response = self.arm(request, environ)
        if response is None:  # connection dropped on purpose
            start_response("500 Internal Server Error", [("Content-Length", "0")])
            return []
        return response(environ, start_response)

    # --- ARM requests ----------------------------------------------------------------------------
    def arm(self, request: Request, environ: dict[str, Any]) -> Response | None:
        method, path = request.method.upper(), request.path
        router = azureml_urls if azureml_urls.owns(path) else urls
        try:
            route = router.match(method, path)
        except LookupError:
            route = None
            not_allowed = True
        else:
            not_allowed = False
        operation = route[1] if route else "Unknown"
        fault = self.faults.draw()
        if fault == "drop" and method not in DROPPABLE_METHODS:
            fault = "503"
        if fault == "drop":
            self.log.record(method, path, operation, "dropped", fault)
            sock = environ.get("werkzeug.socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                return None
            fault = "500"
        if fault:
            response = self._fault_response(fault)
            self.log.record(method, path, operation, response.status_code, fault)
            return response
        response = self._arm_response(request, route, not_allowed)
        # ARM's tracing headers: the client's correlation id echoed, a fresh request id.
        request_id = str(uuid.uuid4())
        response.headers["x-ms-request-id"] = request_id
        response.headers["x-ms-correlation-request-id"] = request.headers.get(
            "x-ms-correlation-request-id", request.headers.get("x-ms-client-request-id", request_id)
        )
        self.log.record(method, path, operation, response.status_code, None)
        return response

    def _fault_response(self, fault: str) -> Response:
        if fault == "429":
            retry_after = self.faults.settings.retry_after
            return error_response(
                ArmError(
                    "TooManyRequests",
                    f"The request was throttled (injected fault); retry after {retry_after} seconds.",
                ),
                {"Retry-After": str(retry_after)},
            )
        if fault == "503":
            return error_response(
                ArmError("ServiceUnavailable", "The service is unavailable (injected fault).")
            )
        return error_response(ArmError("InternalServerError", "Internal server error (injected fault)."))

    def _arm_response(
        self, request: Request, route: tuple[str, str, dict[str, str]] | None, not_allowed: bool
    ) -> Response:
        try:
            auth = request.headers.get("Authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise ArmError(
                    "AuthenticationFailed",
                    "Authentication failed. The 'Authorization' header is missing."
                    if not auth
                    else "Authentication failed. The 'Authorization' header must be 'Bearer <token>'.",
                )
            if self.token is not None and not hmac.compare_digest(
                token.strip().encode(), self.token.encode()
            ):
                raise ArmError(
                    "InvalidAuthenticationToken",
                    "The access token is invalid: the local ARM emulator accepts only its stack's token "
                    "(LOCAL_ARM_TOKEN in .local/stack.env).",
                )
            if azureml_urls.owns(request.path):
                return self._azureml_response(request, route, not_allowed)
            lowered = request.path.lower()
            kind = next(
                (name for name in PROVIDER_API_VERSIONS if f"/providers/{name.lower()}" in lowered), ""
            )
            kind = kind or "Microsoft.Resources"
            supported = PROVIDER_API_VERSIONS[kind]
            version = request.args.get("api-version")
            if not version:
                raise ArmError(
                    "MissingApiVersionParameter",
                    "The api-version query parameter (?api-version=) is required for all requests.",
                    target="api-version",
                )
            if version not in supported:
                raise ArmError(
                    "InvalidApiVersionParameter",
                    f"The api-version '{version}' is invalid. The supported versions for {kind} are "
                    f"'{', '.join(sorted(supported, reverse=True))}'.",
                    target="api-version",
                )
            if not_allowed:
                raise method_not_allowed(request.method, request.path)
            if route is None:
                raise ArmError(
                    "InvalidResourceType",
                    f"No Batch AI, storage account or resource group operation at {request.path}.",
                )
            handler, _, params = route
            arm_request = ArmRequest(
                request.method.upper(), request.path, request.args, request.get_data(), request.host_url
            )
            return self.responses.dispatch(arm_request, handler, params)
        except ArmError as error:
            headers = (
                {"WWW-Authenticate": 'Bearer authorization_uri="http://127.0.0.1/", error="invalid_token"'}
                if error.status == 401
                else {}
            )
            return error_response(error, headers)
        except Exception:
            traceback.print_exc()
            return error_response(ArmError("InternalServerError", "The ARM emulator failed; see its log."))

    def _azureml_response(
        self, request: Request, route: tuple[str, str, dict[str, str]] | None, not_allowed: bool
    ) -> Response:
        if not_allowed:
            raise method_not_allowed(request.method, request.path)
        if route is None:
            raise ArmError(
                "InvalidResourceType",
                f"No Microsoft.MachineLearningServices operation at {request.path}.",
            )  # fmt: skip
        handler, operation, params = route
        arm_request = ArmRequest(
            request.method.upper(), request.path, request.args, request.get_data(), request.host_url
        )
        return self.azureml_responses.dispatch(arm_request, handler, operation, params)

    # --- admin -----------------------------------------------------------------------------------
    def admin(self, request: Request) -> Response:
        path, method = request.path.rstrip("/"), request.method.upper()
        if path == "/_emulator/health":
            return json_response(200, {"status": "ok"})
        if path == "/_emulator/settings":
            return self.settings(request)
        if path == "/_emulator/faults":
            if method == "GET":
                return json_response(200, self.faults.as_json())
            if method == "DELETE":
                self.faults.configure(FaultSettings())
                return json_response(200, self.faults.as_json())
            if method == "POST":
                try:
                    data = json.loads(request.get_data() or b"{}")
                    if not isinstance(data, dict):
                        raise ValueError("the body must be a JSON object")
                    self.faults.configure(FaultSettings.from_json(data))
                except (ValueError, TypeError) as exc:
                    return json_response(
                        400, {"error": {"code": "InvalidFaultSettings", "message": str(exc)}}
                    )
                return json_response(200, self.faults.as_json())
        if path == "/_emulator/requests":
            if method == "DELETE":
                self.log.reset()
                return json_response(200, self.log.as_json())
            try:
                since = int(request.args.get("since", "0"))
            except ValueError:
                return json_response(
                    400,
                    {"error": {"code": "InvalidQueryParameterValue", "message": "since must be an integer"}},
                )
            return json_response(200, self.log.as_json(since))
        if path == "/_emulator/clusters" and method == "GET":
            return json_response(200, {"clusters": self.backend.cluster_allocations()})
        if path.startswith("/_emulator/files/") and method in ("GET", "HEAD"):
            return self.responses.download(request)
        return json_response(
            404, {"error": {"code": "NotFound", "message": f"No admin endpoint {method} {path}."}}
        )

    def settings(self, request: Request) -> Response:
        config = self.backend.config
        if request.method.upper() == "POST":
            try:
                data = json.loads(request.get_data() or b"{}")
                if not isinstance(data, dict):
                    raise ValueError("the body must be a JSON object")
                unknown = set(data) - set(TUNABLE_SETTINGS)
                if unknown:
                    raise ValueError(f"unknown setting(s) {sorted(unknown)}; known: {list(TUNABLE_SETTINGS)}")
                for name, value in data.items():
                    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                        raise ValueError(f"{name} must be a non-negative number of seconds, not {value!r}")
                    if name == "node_failure_rate" and value > 1:
                        raise ValueError("node_failure_rate must be a fraction from 0 to 1")
                    if name == "retry_after" and not isinstance(value, int):
                        raise ValueError(
                            "retry_after must be whole seconds: SDKs parse Retry-After as an integer"
                        )
            except ValueError as exc:
                return json_response(400, {"error": {"code": "InvalidSettings", "message": str(exc)}})
            with self.backend.lock:
                for name, value in data.items():
                    setattr(config, name, value)
        return json_response(200, {name: getattr(config, name) for name in TUNABLE_SETTINGS})


TUNABLE_SETTINGS = ("provisioning_delay", "operation_delay", "retry_after", "node_failure_rate")
