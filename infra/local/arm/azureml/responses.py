"""Request parsing and response shaping for Microsoft.MachineLearningServices 2024-10-01.

Every request body is validated against Microsoft's published definitions (``spec/``, checked by
its own ``check.py``) and refused with 400 naming the field; every response body this emulator
sends is validated too, and a response that breaks the definitions is a 500 naming the field (so a
divergence is loud, never silent). Long-running operations answer as Azure ML does: compute PUT 201
with ``Azure-AsyncOperation``; compute DELETE, job DELETE and cancel 202 with ``Location`` (and
``Azure-AsyncOperation`` for computes) and ``Retry-After``.
"""

from __future__ import annotations

import importlib.util
import json
import re
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

from werkzeug.wrappers import Response

from infra.local.arm.azureml.models import API_VERSION, PAGE_SIZE, AzureMLBackend
from infra.local.arm.errors import ArmError
from infra.local.arm.responses import ArmRequest, json_response

SPEC_DIR = Path(__file__).with_name("spec")
# Azure's rule for AmlCompute names (not in the definitions; Azure answers 400 for others).
COMPUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,14}[A-Za-z0-9]$")
UNVALIDATED = frozenset({"Workspaces_CreateOrUpdate", "OperationStatus_Get", "OperationResult_Get"})


@cache
def spec_set() -> Any:
    """The checker's SpecSet over this provider's definitions (imported from the spec folder)."""
    module_spec = importlib.util.spec_from_file_location("azureml_spec_check", SPEC_DIR / "check.py")
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.SpecSet(SPEC_DIR)


class AzureMLResponses:
    def __init__(self, backend: AzureMLBackend) -> None:
        self.backend = backend
        self._checked_jobs: set[str] = set()

    def dispatch(self, req: ArmRequest, handler: str, operation: str, params: dict[str, str]) -> Response:
        version = req.args.get("api-version")
        if version != API_VERSION:
            raise ArmError(
                "InvalidApiVersionParameter",
                f"The api-version '{version}' is invalid. The supported versions for "
                f"Microsoft.MachineLearningServices are '{API_VERSION}'.",
                target="api-version",
            )
        ws = params.get("ws")
        if ws is not None and not re.match(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{2,32}$", ws):
            raise ArmError("InvalidResourceName", f"workspaceName '{ws}' is invalid.", target="workspaceName")
        self.backend.advance()
        status, body, headers = getattr(self, handler)(req, **params)
        if req.method != "GET":
            self.backend.save()  # what a request changed is on disk before it is answered
        if operation not in UNVALIDATED:
            unchecked, keys = self._unchecked(operation, body)
            errors = spec_set().validate_response(operation, status, unchecked)
            if errors:
                raise ArmError("InternalServerError", f"emulator response breaks {operation}: {errors[0]}")
            if len(self._checked_jobs) > 50_000:
                self._checked_jobs.clear()
            self._checked_jobs.update(keys)  # only what passed
        return json_response(status, body, headers)

    def _unchecked(self, operation: str, body: Any) -> tuple[Any, list[str]]:
        """What of a response still needs checking: a page of Jobs_List without the job bodies this
        emulator already answered, checked, in exactly that form (a 1,000-job workspace is listed on
        every monitor pass; each job body is checked once per distinct body, not once per pass)."""
        if operation != "Jobs_List" or not isinstance(body, dict):
            return body, []
        fresh, keys = [], []
        for item in body.get("value", []):
            key = json.dumps(item, sort_keys=True)
            if key not in self._checked_jobs:
                fresh.append(item)
                keys.append(key)
        return {**body, "value": fresh}, keys

    # --- helpers ---------------------------------------------------------------------------------
    def _body(self, req: ArmRequest, operation: str) -> dict[str, Any]:
        body = req.json()
        if not isinstance(body, dict):
            raise ArmError("BadRequest", f"The request body of {operation} must be a JSON object.")
        if operation not in UNVALIDATED:
            errors = spec_set().validate_request(operation, body)
            if errors:
                raise ArmError("BadRequest", f"The request is not a valid {operation} body: {errors[0]}")
        return body

    def _operation_urls(self, req: ArmRequest, sub: str, kind: str, op_id: str) -> dict[str, str]:
        location = self.backend.config.location
        root = (
            f"{req.base}/subscriptions/{sub}/providers/Microsoft.MachineLearningServices/locations/{location}"
        )
        query = f"?api-version={API_VERSION}"
        return {
            "Azure-AsyncOperation": f"{root}/{kind}OperationsStatus/{op_id}{query}",
            "Location": f"{root}/{kind}OperationResults/{op_id}{query}",
            "Retry-After": str(self.backend.config.retry_after),
        }

    # --- workspaces ------------------------------------------------------------------------------
    def get_workspace(self, req: ArmRequest, sub: str, rg: str, ws: str) -> tuple[int, Any, dict]:
        return 200, self.backend.get_workspace(sub, rg, ws).render(), {}

    def put_workspace(self, req: ArmRequest, sub: str, rg: str, ws: str) -> tuple[int, Any, dict]:
        status, workspace = self.backend.put_workspace(
            sub, rg, ws, self._body(req, "Workspaces_CreateOrUpdate")
        )
        return status, workspace.render(), {}

    # --- computes --------------------------------------------------------------------------------
    def list_computes(self, req: ArmRequest, sub: str, rg: str, ws: str) -> tuple[int, Any, dict]:
        import time

        now = time.time()
        items = [
            c.render(now, self.backend.target_nodes(k, c))
            for k, c in ((c.id.lower(), c) for c in self.backend.list_computes(sub, rg, ws))
        ]
        return 200, {"value": items}, {}

    def _compute_body(self, sub: str, rg: str, ws: str, name: str) -> dict[str, Any]:
        import time

        compute = self.backend.get_compute(sub, rg, ws, name)
        return compute.render(time.time(), self.backend.target_nodes(compute.id.lower(), compute))

    def get_compute(self, req: ArmRequest, sub: str, rg: str, ws: str, name: str) -> tuple[int, Any, dict]:
        return 200, self._compute_body(sub, rg, ws, name), {}

    def put_compute(self, req: ArmRequest, sub: str, rg: str, ws: str, name: str) -> tuple[int, Any, dict]:
        if not COMPUTE_NAME.match(name):
            raise ArmError(
                "BadRequest",
                f"Compute name '{name}' is invalid: 2-16 letters, digits and '-', "
                "starting with a letter and ending with a letter or digit.",
                target="computeName",
            )
        body = self._body(req, "Compute_CreateOrUpdate")
        status, _, op_id = self.backend.put_compute(sub, rg, ws, name, body)
        headers = self._operation_urls(req, sub, "compute", op_id)
        headers.pop("Location")
        return status, self._compute_body(sub, rg, ws, name), headers

    def patch_compute(self, req: ArmRequest, sub: str, rg: str, ws: str, name: str) -> tuple[int, Any, dict]:
        self.backend.patch_compute(sub, rg, ws, name, self._body(req, "Compute_Update"))
        return 200, self._compute_body(sub, rg, ws, name), {}

    def delete_compute(self, req: ArmRequest, sub: str, rg: str, ws: str, name: str) -> tuple[int, Any, dict]:
        if req.args.get("underlyingResourceAction") not in ("Delete", "Detach"):
            raise ArmError(
                "BadRequest",
                "underlyingResourceAction must be 'Delete' or 'Detach'.",
                target="underlyingResourceAction",
            )
        op_id = self.backend.delete_compute(sub, rg, ws, name)
        if op_id is None:
            return 204, None, {}
        return 202, None, self._operation_urls(req, sub, "compute", op_id)

    # --- datastores, environments ------------------------------------------------------------------
    def get_datastore(self, req: ArmRequest, sub: str, rg: str, ws: str, name: str) -> tuple[int, Any, dict]:
        return 200, self.backend.get_datastore(sub, rg, ws, name).render(), {}

    def put_datastore(self, req: ArmRequest, sub: str, rg: str, ws: str, name: str) -> tuple[int, Any, dict]:
        status, store = self.backend.put_datastore(
            sub, rg, ws, name, self._body(req, "Datastores_CreateOrUpdate")
        )
        return status, store.render(), {}

    def delete_datastore(
        self, req: ArmRequest, sub: str, rg: str, ws: str, name: str
    ) -> tuple[int, Any, dict]:
        return (200 if self.backend.delete_datastore(sub, rg, ws, name) else 204), None, {}

    def get_environment(
        self, req: ArmRequest, sub: str, rg: str, ws: str, name: str, version: str
    ) -> tuple[int, Any, dict]:
        return 200, self.backend.get_environment(sub, rg, ws, name, version).render(), {}

    def put_environment(
        self, req: ArmRequest, sub: str, rg: str, ws: str, name: str, version: str
    ) -> tuple[int, Any, dict]:
        body = self._body(req, "EnvironmentVersions_CreateOrUpdate")
        status, env = self.backend.put_environment(sub, rg, ws, name, version, body)
        return status, env.render(), {}

    def delete_environment(
        self, req: ArmRequest, sub: str, rg: str, ws: str, name: str, version: str
    ) -> tuple[int, Any, dict]:
        return (200 if self.backend.delete_environment(sub, rg, ws, name, version) else 204), None, {}

    # --- jobs --------------------------------------------------------------------------------------
    def list_jobs(self, req: ArmRequest, sub: str, rg: str, ws: str) -> tuple[int, Any, dict]:
        """Oldest first, PAGE_SIZE a page; ``$skipToken`` is the offset; ``jobType`` filters."""
        jobs = self.backend.list_jobs(sub, rg, ws)
        job_type = req.args.get("jobType")
        if job_type:
            jobs = [j for j in jobs if (j.props.get("jobType") or "").lower() == job_type.lower()]
        token = req.args.get("$skipToken") or "0"
        if not token.isdigit():
            raise ArmError("BadRequest", f"Invalid $skipToken {token!r}.", target="$skipToken")
        start = int(token)
        page = jobs[start : start + PAGE_SIZE]
        body: dict[str, Any] = {"value": [j.render() for j in page]}
        if start + PAGE_SIZE < len(jobs):
            path = quote(req.path)
            extra = f"&jobType={quote(job_type)}" if job_type else ""
            body["nextLink"] = (
                f"{req.base}{path}?api-version={API_VERSION}&$skipToken={start + PAGE_SIZE}{extra}"
            )
        return 200, body, {}

    def get_job(self, req: ArmRequest, sub: str, rg: str, ws: str, name: str) -> tuple[int, Any, dict]:
        return 200, self.backend.get_job(sub, rg, ws, name).render(), {}

    def put_job(self, req: ArmRequest, sub: str, rg: str, ws: str, name: str) -> tuple[int, Any, dict]:
        body = self._body(req, "Jobs_CreateOrUpdate")
        if (body.get("properties") or {}).get("jobType") != "Command":
            raise ArmError(
                "UserError",
                "Only Command jobs are supported by this emulator.",
                target="properties.jobType",
            )
        status, job = self.backend.put_job(sub, rg, ws, name, body)
        return status, job.render(), {}

    def delete_job(self, req: ArmRequest, sub: str, rg: str, ws: str, name: str) -> tuple[int, Any, dict]:
        op_id = self.backend.delete_job(sub, rg, ws, name)
        if op_id is None:
            return 204, None, {}
        headers = self._operation_urls(req, sub, "mfe", op_id)
        headers.pop("Azure-AsyncOperation")
        return 202, None, headers

    def cancel_job(self, req: ArmRequest, sub: str, rg: str, ws: str, name: str) -> tuple[int, Any, dict]:
        op_id = self.backend.cancel_job(sub, rg, ws, name)
        headers = self._operation_urls(req, sub, "mfe", op_id)
        headers.pop("Azure-AsyncOperation")
        return 202, None, headers

    # --- long-running operations -----------------------------------------------------------------
    def _operation(self, op: str) -> Any:
        found = self.backend.operations.get(op)
        if found is None:
            raise ArmError("ResourceNotFound", f"Operation {op} not found.")
        return found

    def operation_status(
        self, req: ArmRequest, sub: str, location: str, kind: str, op: str
    ) -> tuple[int, Any, dict]:
        found = self._operation(op)
        return 200, {"status": found.status}, {}

    def operation_result(
        self, req: ArmRequest, sub: str, location: str, kind: str, op: str
    ) -> tuple[int, Any, dict]:
        found = self._operation(op)
        if found.status == "InProgress":
            return (
                202,
                None,
                {
                    "Location": req.base + req.path + f"?api-version={API_VERSION}",
                    "Retry-After": str(self.backend.config.retry_after),
                },
            )
        return 200, None, {}
