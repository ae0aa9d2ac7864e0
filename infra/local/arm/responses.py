"""Request parsing and response shaping for the ARM emulator: one handler per ARM operation.

Handlers validate request bodies against the published spec (`specvalidator`) plus the rules the spec
can't express (one toolkit per job, one scale mode per cluster, ...), call the backend, and shape ARM's
answers: 200/201 with the resource, 202 with `Azure-AsyncOperation`, `Location` and `Retry-After` for
long-running operations, 204 for deleting what isn't there, `{"error": {...}}` bodies for failures.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestedRangeNotSatisfiable
from werkzeug.wrappers import Request, Response
from werkzeug.wsgi import wrap_file

from infra.local.arm.batchai.backend import Backend
from infra.local.arm.batchai.models import BATCHAI_API_VERSION, TOOLKIT_SETTINGS
from infra.local.arm.common import now_iso, parse_duration
from infra.local.arm.errors import ArmError
from infra.local.arm.legacy import VERSIONS as LEGACY_VERSIONS
from infra.local.arm.legacy import LegacyBatchAI
from infra.local.arm.legacy_responses import LegacyResponses
from infra.local.arm.specvalidator import validate
from infra.local.arm.storage import StorageAccounts

NAME_RULES = {
    "rg": (re.compile(r"^[-\w\.\(\)]{1,90}$"), "resourceGroupName"),
    "ws": (re.compile(r"^[-\w]{1,64}$"), "workspaceName"),
    "exp": (re.compile(r"^[-\w]{1,64}$"), "experimentName"),
    "job": (re.compile(r"^[-\w]{1,64}$"), "jobName"),
    "cluster": (re.compile(r"^[-\w]{1,64}$"), "clusterName"),
    "fs": (re.compile(r"^[-\w]{1,64}$"), "fileServerName"),
}
# Provider-level handlers every Batch AI api-version has.
VERSION_NEUTRAL = frozenset({"list_operations", "list_usages", "operation_status", "operation_result"})
ENV_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The SAS version of the download URLs (the service's own ListOutputFiles example signs with it).
SAS_VERSION = "2016-05-31"


@dataclass
class ArmRequest:
    method: str
    path: str
    args: MultiDict
    data: bytes
    host_url: str  # "http://127.0.0.1:10005/"

    def json(self) -> Any:
        if not self.data.strip():
            return None
        try:
            return json.loads(self.data)
        except ValueError as exc:
            raise ArmError("InvalidRequestContent", f"The request body is not valid JSON: {exc}") from exc

    @property
    def base(self) -> str:
        return self.host_url.rstrip("/")


def json_response(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Response:
    if body is None:
        return Response(b"", status=status, headers=headers or {})
    return Response(json.dumps(body), status=status, headers=headers or {}, content_type="application/json")


def error_response(error: ArmError, headers: dict[str, str] | None = None) -> Response:
    return json_response(error.status, error.body(), {"x-ms-failure-cause": "gateway", **(headers or {})})


class ArmResponses(LegacyResponses):
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.storage = StorageAccounts(backend.config)
        self.legacy = LegacyBatchAI(backend)

    def dispatch(self, req: ArmRequest, handler: str, params: dict[str, str]) -> Response:
        for key, value in params.items():
            rule = NAME_RULES.get(key)
            if rule and not rule[0].match(value):
                raise ArmError(
                    "InvalidResourceName",
                    f"{rule[1]} '{value}' is invalid: it must match {rule[0].pattern}.",
                    target=rule[1],
                )
        self._check_version(req, handler)
        response = getattr(self, handler)(req, **params)
        if req.method != "GET" and self.backend.dirty:
            self.backend.persist()  # what a request changed is on disk before it is answered
        return response

    def _check_version(self, req: ArmRequest, handler: str) -> None:
        """Workspaces exist from 2018-05-01 on; resource-group-level clusters, jobs and file servers
        only before it. A path of the other generation is not a resource type of that version."""
        if "/providers/microsoft.batchai/" not in req.path.lower() or handler in VERSION_NEUTRAL:
            return
        version = req.args.get("api-version", "")
        if handler.startswith("legacy_") == (version in LEGACY_VERSIONS):
            return
        legacy = handler.startswith("legacy_")
        kind = handler.split("_", 2)[-1].split("_")[0] if legacy else "workspaces"
        supported = sorted(LEGACY_VERSIONS) if legacy else [BATCHAI_API_VERSION]
        raise ArmError(
            "NoRegisteredProviderFound",
            f"No registered resource provider found for location '{self.backend.config.location}' and "
            f"API version '{version}' for type '{kind}'. The supported api-versions for this path are "
            f"'{', '.join(supported)}'.",
        )

    # --- helpers ---------------------------------------------------------------------------------
    def _body(self, req: ArmRequest, definition: str) -> dict[str, Any]:
        body = req.json()
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ArmError("InvalidRequestContent", f"The request body must be a JSON object ({definition}).")
        errors = validate(definition, body)
        if errors:
            first = errors[0]
            raise ArmError(
                "InvalidRequestContent",
                f"The request content is not a valid {definition}: {first.path}: {first.message}",
                target=first.path,
                details=[
                    {"code": "InvalidRequestContent", "target": e.path, "message": e.message} for e in errors
                ],
            )
        return body

    def _accepted(self, req: ArmRequest, sub: str, op_id: str) -> Response:
        location = self.backend.config.location
        root = f"{req.base}/subscriptions/{sub}/providers/Microsoft.BatchAI/locations/{location}"
        query = f"?api-version={req.args.get('api-version') or BATCHAI_API_VERSION}"
        headers = {
            "Azure-AsyncOperation": f"{root}/operationstatuses/{op_id}{query}",
            "Location": f"{root}/operationresults/{op_id}{query}",
            "Retry-After": _seconds(self.backend.config.retry_after),
        }
        return json_response(202, None, headers)

    def _created(self, req: ArmRequest, sub: str, result: tuple[str | None, dict[str, Any]]) -> Response:
        op_id, body = result
        if op_id is None:  # the same PUT again: nothing to do, answer with the resource
            return json_response(200, body)
        return self._accepted(req, sub, op_id)

    def _deleted(self, req: ArmRequest, sub: str, op_id: str | None) -> Response:
        if op_id is None:
            return json_response(204)
        return self._accepted(req, sub, op_id)

    def _page(self, req: ArmRequest, items: list[dict[str, Any]]) -> Response:
        raw = req.args.get("maxresults", "1000")
        try:
            max_results = int(raw)
        except ValueError:
            max_results = 0
        if not 1 <= max_results <= 1000:
            raise ArmError(
                "InvalidQueryParameterValue",
                f"maxresults must be an integer from 1 to 1000, not '{raw}'.",
                target="maxresults",
            )
        try:
            skip = max(0, int(req.args.get("$skiptoken", "0")))
        except ValueError as exc:
            raise ArmError(
                "InvalidQueryParameterValue", "$skiptoken is not valid.", target="$skiptoken"
            ) from exc
        body: dict[str, Any] = {"value": items[skip : skip + max_results]}
        if skip + max_results < len(items):
            args = [(k, v) for k, v in req.args.items(multi=True) if k != "$skiptoken"]
            args.append(("$skiptoken", str(skip + max_results)))
            body["nextLink"] = f"{req.base}{req.path}?{urlencode(args)}"
        return json_response(200, body)

    # --- Microsoft.Storage -----------------------------------------------------------------------
    def list_storage_accounts(self, req: ArmRequest, sub: str, rg: str | None = None) -> Response:
        return json_response(200, {"value": self.storage.list(sub, rg)})

    def get_storage_account(self, req: ArmRequest, sub: str, rg: str, account: str) -> Response:
        return json_response(200, self.storage.get(sub, rg, account))

    def list_storage_keys(self, req: ArmRequest, sub: str, rg: str, account: str) -> Response:
        return json_response(200, self.storage.list_keys(sub, rg, account))

    # --- resource groups -------------------------------------------------------------------------
    def list_groups(self, req: ArmRequest, sub: str) -> Response:
        return self._page(req, self.backend.list_groups(sub))

    def put_group(self, req: ArmRequest, sub: str, rg: str) -> Response:
        body = req.json()
        if not isinstance(body, dict) or not isinstance(body.get("location"), str) or not body["location"]:
            raise ArmError(
                "LocationRequired",
                "The location property is required for this definition.",
                target="location",
            )
        if (
            "tags" in body
            and body["tags"] is not None
            and not (
                isinstance(body["tags"], dict) and all(isinstance(v, str) for v in body["tags"].values())
            )
        ):
            raise ArmError("InvalidRequestContent", "tags must be an object of string values.", target="tags")
        status, group = self.backend.put_group(sub, rg, body)
        return json_response(status, group)

    def get_group(self, req: ArmRequest, sub: str, rg: str) -> Response:
        return json_response(200, self.backend.get_group(sub, rg))

    def head_group(self, req: ArmRequest, sub: str, rg: str) -> Response:
        try:
            self.backend.get_group(sub, rg)
        except ArmError:
            return json_response(404)
        return json_response(204)

    def delete_group(self, req: ArmRequest, sub: str, rg: str) -> Response:
        op_id = self.backend.delete_group(sub, rg)
        if op_id is None:
            raise ArmError("ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")
        location = (
            f"{req.base}/subscriptions/{sub}/operationresults/{op_id}?api-version={req.args['api-version']}"
        )
        return json_response(
            202, None, {"Location": location, "Retry-After": _seconds(self.backend.config.retry_after)}
        )

    def group_operation_result(self, req: ArmRequest, sub: str, op: str) -> Response:
        operation = self.backend.operation(op)
        if operation["status"] == "InProgress":
            return json_response(
                202,
                None,
                {
                    "Location": f"{req.base}{req.path}?{urlencode(list(req.args.items()))}",
                    "Retry-After": _seconds(self.backend.config.retry_after),
                },
            )
        return json_response(200)

    # --- long-running operation status -----------------------------------------------------------
    def operation_status(self, req: ArmRequest, sub: str, location: str, op: str) -> Response:
        operation = self.backend.operation(op)
        body: dict[str, Any] = {
            "id": f"{req.path}",
            "name": op,
            "status": operation["status"],
            "startTime": operation["startTime"],
        }
        if operation.get("endTime"):
            body["endTime"] = operation["endTime"]
        if operation.get("error"):
            body["error"] = operation["error"]
        headers = (
            {"Retry-After": _seconds(self.backend.config.retry_after)}
            if operation["status"] == "InProgress"
            else {}
        )
        return json_response(200, body, headers)

    def operation_result(self, req: ArmRequest, sub: str, location: str, op: str) -> Response:
        operation = self.backend.operation(op)
        if operation["status"] == "InProgress":
            return json_response(
                202,
                None,
                {
                    "Location": f"{req.base}{req.path}?{urlencode(list(req.args.items()))}",
                    "Retry-After": _seconds(self.backend.config.retry_after),
                },
            )
        if operation["status"] == "Failed":
            error = operation.get("error") or {"code": "OperationFailed", "message": "The operation failed."}
            return json_response(500, {"error": error})
        meta = operation["meta"]
        if meta["kind"] == "create":
            with self.backend.lock:
                record = self.backend.state[meta["collection"]].get(meta["resource"])
                if record:
                    return json_response(200, self.backend.render(meta["collection"], record))
        if meta["kind"] == "delete":
            return json_response(204)
        return json_response(200)

    # --- provider level --------------------------------------------------------------------------
    def list_operations(self, req: ArmRequest) -> Response:
        ops = []
        for resource, label in (
            ("workspaces", "Workspaces"),
            ("workspaces/experiments", "Experiments"),
            ("workspaces/experiments/jobs", "Jobs"),
            ("workspaces/clusters", "Clusters"),
            ("workspaces/fileservers", "File Servers"),
        ):
            actions = [("read", "List or get"), ("write", "Create or update"), ("delete", "Delete")]
            if resource.endswith("jobs"):
                actions += [
                    ("terminate/action", "Terminate"),
                    ("listoutputfiles/action", "List output files of"),
                    ("remoteLoginInformation/action", "List remote login information of"),
                ]
            if resource.endswith("clusters"):
                actions.append(("remoteLoginInformation/action", "List remote login information of"))
            for action, verb in actions:
                ops.append(
                    {
                        "name": f"Microsoft.BatchAI/{resource}/{action}",
                        "display": {
                            "provider": "Microsoft Batch AI",
                            "resource": f"Batch AI {label}",
                            "operation": f"{verb} Batch AI {label.lower()}",
                            "description": f"{verb} Batch AI {label.lower()}",
                        },
                        "origin": "user,system",
                        "properties": {},
                    }
                )
        return self._page(req, ops)

    def list_usages(self, req: ArmRequest, sub: str, location: str) -> Response:
        return self._page(req, self.backend.usages(sub))

    # --- workspaces ------------------------------------------------------------------------------
    def list_workspaces(self, req: ArmRequest, sub: str, rg: str | None = None) -> Response:
        return self._page(req, self.backend.list_workspaces(sub, rg))

    def create_workspace(self, req: ArmRequest, sub: str, rg: str, ws: str) -> Response:
        body = self._body(req, "WorkspaceCreateParameters")
        return self._created(req, sub, self.backend.create_workspace(sub, rg, ws, body))

    def update_workspace(self, req: ArmRequest, sub: str, rg: str, ws: str) -> Response:
        body = self._body(req, "WorkspaceUpdateParameters")
        return json_response(200, self.backend.update_workspace(sub, rg, ws, body))

    def get_workspace(self, req: ArmRequest, sub: str, rg: str, ws: str) -> Response:
        return json_response(200, self.backend.get_workspace(sub, rg, ws))

    def delete_workspace(self, req: ArmRequest, sub: str, rg: str, ws: str) -> Response:
        return self._deleted(req, sub, self.backend.delete_workspace(sub, rg, ws))

    # --- experiments -----------------------------------------------------------------------------
    def list_experiments(self, req: ArmRequest, sub: str, rg: str, ws: str) -> Response:
        return self._page(req, self.backend.list_experiments(sub, rg, ws))

    def create_experiment(self, req: ArmRequest, sub: str, rg: str, ws: str, exp: str) -> Response:
        return self._created(req, sub, self.backend.create_experiment(sub, rg, ws, exp))

    def get_experiment(self, req: ArmRequest, sub: str, rg: str, ws: str, exp: str) -> Response:
        return json_response(200, self.backend.get_experiment(sub, rg, ws, exp))

    def delete_experiment(self, req: ArmRequest, sub: str, rg: str, ws: str, exp: str) -> Response:
        return self._deleted(req, sub, self.backend.delete_experiment(sub, rg, ws, exp))

    # --- file servers ----------------------------------------------------------------------------
    def list_file_servers(self, req: ArmRequest, sub: str, rg: str, ws: str) -> Response:
        return self._page(req, self.backend.list_file_servers(sub, rg, ws))

    def create_file_server(self, req: ArmRequest, sub: str, rg: str, ws: str, fs: str) -> Response:
        body = self._body(req, "FileServerCreateParameters")
        props = body.get("properties") or {}
        ssh = (props.get("sshConfiguration") or {}).get("userAccountSettings") or {}
        if not ssh.get("adminUserPassword") and not ssh.get("adminUserSshPublicKey"):
            raise ArmError(
                "InvalidRequestContent",
                "properties.sshConfiguration.userAccountSettings: adminUserPassword or "
                "adminUserSshPublicKey must be given.",
                target="properties.sshConfiguration.userAccountSettings",
            )
        props.setdefault("dataDisks", {}).setdefault("cachingType", "none")
        return self._created(req, sub, self.backend.create_file_server(sub, rg, ws, fs, body))

    def get_file_server(self, req: ArmRequest, sub: str, rg: str, ws: str, fs: str) -> Response:
        return json_response(200, self.backend.get_file_server(sub, rg, ws, fs))

    def delete_file_server(self, req: ArmRequest, sub: str, rg: str, ws: str, fs: str) -> Response:
        return self._deleted(req, sub, self.backend.delete_file_server(sub, rg, ws, fs))

    # --- clusters --------------------------------------------------------------------------------
    def list_clusters(self, req: ArmRequest, sub: str, rg: str, ws: str) -> Response:
        return self._page(req, self.backend.list_clusters(sub, rg, ws))

    def create_cluster(self, req: ArmRequest, sub: str, rg: str, ws: str, cluster: str) -> Response:
        body = self._body(req, "ClusterCreateParameters")
        props = body.get("properties") or {}
        _check_scale(props.get("scaleSettings"), "properties.scaleSettings")
        account = props["userAccountSettings"]
        if not account.get("adminUserPassword") and not account.get("adminUserSshPublicKey"):
            raise ArmError(
                "InvalidRequestContent",
                "properties.userAccountSettings: adminUserPassword or adminUserSshPublicKey must be given.",
                target="properties.userAccountSettings",
            )
        return self._created(req, sub, self.backend.create_cluster(sub, rg, ws, cluster, body))

    def update_cluster(self, req: ArmRequest, sub: str, rg: str, ws: str, cluster: str) -> Response:
        body = self._body(req, "ClusterUpdateParameters")
        scale = (body.get("properties") or {}).get("scaleSettings")
        if scale is not None:
            _check_scale(scale, "properties.scaleSettings")
        return json_response(200, self.backend.update_cluster(sub, rg, ws, cluster, body))

    def get_cluster(self, req: ArmRequest, sub: str, rg: str, ws: str, cluster: str) -> Response:
        return json_response(200, self.backend.get_cluster(sub, rg, ws, cluster))

    def delete_cluster(self, req: ArmRequest, sub: str, rg: str, ws: str, cluster: str) -> Response:
        return self._deleted(req, sub, self.backend.delete_cluster(sub, rg, ws, cluster))

    def cluster_remote_logins(self, req: ArmRequest, sub: str, rg: str, ws: str, cluster: str) -> Response:
        return self._page(req, self.backend.cluster_remote_logins(sub, rg, ws, cluster))

    # --- jobs ------------------------------------------------------------------------------------
    def list_jobs(self, req: ArmRequest, sub: str, rg: str, ws: str, exp: str) -> Response:
        return self._page(req, self.backend.list_jobs(sub, rg, ws, exp))

    def create_job(self, req: ArmRequest, sub: str, rg: str, ws: str, exp: str, job: str) -> Response:
        body = self._body(req, "JobCreateParameters")
        _check_job(body["properties"])
        return self._created(req, sub, self.backend.create_job(sub, rg, ws, exp, job, body))

    def get_job(self, req: ArmRequest, sub: str, rg: str, ws: str, exp: str, job: str) -> Response:
        return json_response(200, self.backend.get_job(sub, rg, ws, exp, job))

    def delete_job(self, req: ArmRequest, sub: str, rg: str, ws: str, exp: str, job: str) -> Response:
        return self._deleted(req, sub, self.backend.delete_job(sub, rg, ws, exp, job))

    def terminate_job(self, req: ArmRequest, sub: str, rg: str, ws: str, exp: str, job: str) -> Response:
        return self._accepted(req, sub, self.backend.terminate_job(sub, rg, ws, exp, job))

    def job_remote_logins(self, req: ArmRequest, sub: str, rg: str, ws: str, exp: str, job: str) -> Response:
        return self._page(req, self.backend.job_remote_logins(sub, rg, ws, exp, job))

    def list_output_files(self, req: ArmRequest, sub: str, rg: str, ws: str, exp: str, job: str) -> Response:
        directory_id = req.args.get("outputdirectoryid")
        if not directory_id:
            raise ArmError(
                "MissingRequiredQueryParameter",
                "The query parameter outputdirectoryid is required.",
                target="outputdirectoryid",
            )
        raw_expiry = req.args.get("linkexpiryinminutes", "60")
        try:
            expiry_minutes = int(raw_expiry)
        except ValueError:
            expiry_minutes = 0
        if not 5 <= expiry_minutes <= 600:
            raise ArmError(
                "InvalidQueryParameterValue",
                f"linkexpiryinminutes must be an integer from 5 to 600, not '{raw_expiry}'.",
                target="linkexpiryinminutes",
            )
        sub_dir = req.args.get("directory", ".")
        parts = [p for p in sub_dir.replace("\\", "/").split("/") if p not in ("", ".")]
        if any(p == ".." for p in parts):
            raise ArmError(
                "InvalidQueryParameterValue", "directory must not contain '..'.", target="directory"
            )
        root = self.backend.job_output_dir(sub, rg, ws, exp, job, directory_id)
        items: list[dict[str, Any]] = []
        if root is not None:
            base = root.joinpath(*parts)
            if base.is_dir():
                expires = time.time() + expiry_minutes * 60
                for entry in sorted(base.iterdir(), key=lambda p: p.name):
                    if entry.is_dir():
                        items.append({"name": entry.name, "fileType": "directory"})
                    elif entry.is_file():
                        stat = entry.stat()
                        relative = "/".join([*parts, entry.name])
                        url = self.share_sas_url(entry, expires) or self.download_url(
                            req, [sub, rg, ws, exp, job, directory_id, relative], expires
                        )
                        items.append(
                            {
                                "name": entry.name,
                                "fileType": "file",
                                "downloadUrl": url,
                                "properties": {
                                    "lastModified": now_iso(stat.st_mtime).split(".")[0] + "Z",
                                    "contentLength": stat.st_size,
                                },
                            }
                        )
        return self._page(req, items)

    # --- downloads -------------------------------------------------------------------------------
    def share_sas_url(self, path: Path, expires: float) -> str | None:
        """A read-only service SAS URL of the Files emulator for an output file that lies in a share
        (`<files-root>/<account>/<share>/...`), as the service answers with Azure Files SAS URLs of the
        mounted share; None for a file outside every share or of an account without a known key."""
        files_root = Path(self.backend.config.files_root).resolve()
        try:
            relative = path.resolve().relative_to(files_root).parts
        except ValueError:
            return None
        if len(relative) < 3:
            return None
        account, share, *rest = relative
        key = self.backend.config.storage_keys.get(account)
        if key is None:
            return None
        endpoint = urlsplit(self.backend.config.files_endpoint)
        file_path = "/".join(rest)
        expiry = datetime.fromtimestamp(int(expires), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        # Service SAS string to sign (2015-04-05 and later): sp, st, se, canonicalized resource, si,
        # sip, spr, sv, then the five response-header overrides (all empty here).
        fields = ["rl", "", expiry, f"/file/{account}/{share}/{file_path}", "", "", "", SAS_VERSION]
        string_to_sign = "\n".join(fields + [""] * 5)
        sig = base64.b64encode(hmac.new(key, string_to_sign.encode(), hashlib.sha256).digest()).decode()
        query = urlencode({"sv": SAS_VERSION, "sr": "f", "sig": sig, "se": expiry, "sp": "rl"})
        return f"{endpoint.scheme}://{endpoint.netloc}/{quote(account)}/{quote(share)}/{quote(file_path)}?{query}"

    def _sign(self, token: str, expires: int) -> str:
        message = f"{token}\n{expires}".encode()
        return hmac.new(self.backend.secret.encode(), message, hashlib.sha256).hexdigest()

    def download_url(self, req: ArmRequest, locator: list[str], expires: float) -> str:
        """A read-only link on this emulator to an output file outside every share (a job's temp
        directory): it names the job, output directory and relative path, never a path on this
        machine, and is signed and expires like a SAS link."""
        token = base64.urlsafe_b64encode(json.dumps(locator).encode()).decode().rstrip("=")
        se = int(expires)
        query = urlencode(
            {
                "t": token,
                "se": datetime.fromtimestamp(se, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "sp": "r",
                "sig": self._sign(token, se),
            }
        )
        name = locator[-1].rsplit("/", 1)[-1]
        return f"{req.base}/_emulator/files/{quote(name)}?{query}"

    def _download_path(self, locator: Any) -> Path | None:
        if not (isinstance(locator, list) and len(locator) == 7 and all(isinstance(p, str) for p in locator)):
            return None
        *job_ref, directory_id, relative = locator
        try:
            root = self.backend.job_output_dir(*job_ref, directory_id)
        except ArmError:
            return None  # the job (or its workspace) is gone
        if root is None:
            return None
        parts = [p for p in relative.split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            return None
        return root.joinpath(*parts)

    def download(self, request: Request) -> Response:
        """Serve a download link's file; honours ``Range`` (206 with Content-Range, 416 past the
        end) as Azure Files does for SAS links, so log tails read only the end of a log."""
        args = request.args
        try:
            token = args["t"]
            locator = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            se = int(datetime.strptime(args["se"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())
            sig = args["sig"]
        except (KeyError, ValueError) as exc:
            return _storage_error(400, "InvalidQueryParameterValue", f"The download link is malformed: {exc}")
        if not hmac.compare_digest(sig, self._sign(token, se)):
            return _storage_error(403, "AuthenticationFailed", "Signature did not match the download link.")
        if time.time() > se:
            return _storage_error(
                403, "AuthenticationFailed", "Signed expiry time has passed: the link expired."
            )
        path = self._download_path(locator)
        if path is None or not path.is_file():
            return _storage_error(404, "ResourceNotFound", "The specified resource does not exist.")
        size = path.stat().st_size
        wanted = request.range
        if wanted and wanted.units == "bytes" and len(wanted.ranges) == 1 and size:
            start, _ = wanted.ranges[0]
            if start < 0 and -start > size:
                # RFC 9110 14.1.2: a suffix longer than the file selects all of it (werkzeug says 416).
                request.environ["HTTP_RANGE"] = "bytes=0-"
        response = Response(
            wrap_file(request.environ, path.open("rb"), buffer_size=1 << 16),
            status=200,
            content_type="application/octet-stream",
            direct_passthrough=True,
        )
        response.headers["Content-Length"] = str(size)
        try:
            return response.make_conditional(request.environ, accept_ranges=True, complete_length=size)
        except RequestedRangeNotSatisfiable:
            response.close()
            error = _storage_error(
                416, "InvalidRange", "The range specified is invalid for the current size of the resource."
            )
            error.headers["Content-Range"] = f"bytes */{size}"
            return error


def _seconds(value: float) -> str:
    return str(int(value))


def _storage_error(status: int, code: str, message: str) -> Response:
    xml = (
        f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
        f"<Message>{message}</Message></Error>"
    )
    return Response(xml, status=status, content_type="application/xml", headers={"x-ms-error-code": code})


def _check_scale(scale: dict[str, Any] | None, where: str) -> None:
    if not scale or ("manual" in scale) == ("autoScale" in scale):
        raise ArmError(
            "InvalidRequestContent",
            f"{where}: exactly one of manual or autoScale must be specified.",
            target=where,
        )
    if "manual" in scale and scale["manual"]["targetNodeCount"] < 0:
        raise ArmError(
            "InvalidRequestContent",
            f"{where}.manual.targetNodeCount must not be negative.",
            target=f"{where}.manual.targetNodeCount",
        )
    if "autoScale" in scale:
        auto = scale["autoScale"]
        if not 0 <= auto["minimumNodeCount"] <= auto["maximumNodeCount"]:
            raise ArmError(
                "InvalidRequestContent",
                f"{where}.autoScale: need 0 <= minimumNodeCount <= maximumNodeCount.",
                target=f"{where}.autoScale.minimumNodeCount",
            )


def _check_job(props: dict[str, Any]) -> None:
    given = [name for name in TOOLKIT_SETTINGS if props.get(name)]
    if len(given) != 1:
        raise ArmError(
            "InvalidRequestContent",
            "properties: exactly one toolkit settings object must be given (one of "
            f"{', '.join(TOOLKIT_SETTINGS)}); got {', '.join(given) or 'none'}.",
            target="properties",
        )
    if int(props.get("nodeCount", 1)) < 1:
        raise ArmError(
            "InvalidRequestContent",
            "properties.nodeCount must be at least 1.",
            target="properties.nodeCount",
        )
    if not re.match(
        r"(?i)^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.BatchAI/workspaces?/[^/]+"
        r"/clusters/[^/]+$",
        props["cluster"]["id"],
    ):
        raise ArmError(
            "InvalidRequestContent",
            "properties.cluster.id must be a Batch AI cluster resource id "
            "(/subscriptions/../resourceGroups/../providers/Microsoft.BatchAI/workspaces/../clusters/..).",
            target="properties.cluster.id",
        )
    for kind in ("inputDirectories", "outputDirectories"):
        seen: set[str] = set()
        for i, directory in enumerate(props.get(kind) or []):
            if not ENV_ID.match(directory["id"]) or directory["id"].lower() == "stdouterr":
                raise ArmError(
                    "InvalidRequestContent",
                    f"properties.{kind}[{i}].id '{directory['id']}' must be a valid environment "
                    "variable name part (letters, digits, underscore) and not 'stdouterr'.",
                    target=f"properties.{kind}[{i}].id",
                )
            if directory["id"].upper() in seen:
                raise ArmError(
                    "InvalidRequestContent",
                    f"properties.{kind}[{i}].id '{directory['id']}' is used twice.",
                    target=f"properties.{kind}[{i}].id",
                )
            seen.add(directory["id"].upper())
    wall = (props.get("constraints") or {}).get("maxWallClockTime")
    if wall is not None:
        try:
            parse_duration(wall)
        except ValueError as exc:
            raise ArmError(
                "InvalidRequestContent",
                f"properties.constraints.maxWallClockTime: {exc}",
                target="properties.constraints.maxWallClockTime",
            ) from exc
    if "stdOutErrPathPrefix" not in props:
        raise ArmError(
            "InvalidRequestContent",
            "properties.stdOutErrPathPrefix is required.",
            target="properties.stdOutErrPathPrefix",
        )
