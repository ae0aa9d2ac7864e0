"""The HTTP API's domain: parse requests, call the pipeline, shape responses. No azure.functions here.

`handle(route, request)` is the one entry point `functions/api.py` calls with a plain `ApiRequest`; it
dispatches on `shared.openapi.ROUTES` (a method a route does not implement is 405), and turns every
failure into the one error shape of `shared.api_messages`: validation problems are 400 with `details` naming
each field, an unknown run 404, a conflict 409, Azure's own errors 502, an unreachable dependency 503,
anything else 500 without a stack trace (the trace goes to the log).

Idempotency: `POST /api/runs` with an `Idempotency-Key` returns the run that key started when the
request is the same (same dataset, staging prefix and effective spec): 202 again, with
`Idempotent-Replayed: true`. The same key with a different request is 422 `IdempotencyKeyReused`
(a client bug, not a state conflict: retrying cannot succeed).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit, urlunsplit

from shared.api_messages import ApiError, ApiRequest, ApiResponse, json_body
from shared.compute_port import lead_log_name
from shared.jsontypes import JsonObject
from shared.openapi import CLUSTER_NAME_PATTERN, ROUTES, RUN_ID_PATTERN, RUN_STATES

if TYPE_CHECKING:  # for annotations only: the modules are imported at first use (cheap cold start)
    from shared.compute_port import ClusterStatus, ComputeBackend, JobNames, OutputItem
    from shared.registry import ClusterLedger, RunRecord, RunRegistry
    from shared.runspec import RunSpec
    from shared.settings import Settings

__all__ = ["handle"]

log = logging.getLogger(__name__)

START_FIELDS = ("dataset", "stage_from_prefix", "spec")
MAX_IDEMPOTENCY_KEY = 200
DEFAULT_PAGE = 100
DEFAULT_TAIL = 100
MAX_TAIL = 10_000
LOG_READ_LIMIT = 4 * 1024 * 1024  # bytes of a log file read (from its end) to find the tail
HEALTH_TIMEOUT = 20.0
# One deep health probe per this many seconds per instance, whatever the request rate.
HEALTH_CACHE_SECONDS = 30.0
# A probe answers fast or fails: one retry, short timeouts (azure-core takes these per call).
PROBE_OPTIONS: JsonObject = {"retry_total": 1, "connection_timeout": 5, "read_timeout": 10}
# Storage's own retry policy waits 15 s before its first retry: no retry for a probe.
STORAGE_PROBE_OPTIONS: JsonObject = {**PROBE_OPTIONS, "retry_total": 0}
_RUN_ID = re.compile(RUN_ID_PATTERN)
_CLUSTER = re.compile(CLUSTER_NAME_PATTERN)


# --- dispatch ---------------------------------------------------------------------------------------


def handle(route: str, request: ApiRequest) -> ApiResponse:
    """Answer one request on `route` (a template of `ROUTES`); never raises."""
    operations = ROUTES.get(route)
    if operations is None:
        return ApiError(404, "NotFound", f"no route {route!r}").response()
    operation = operations.get(request.method.upper())
    try:
        if operation is None:
            allowed = ", ".join(sorted(operations))
            raise ApiError(
                405,
                "MethodNotAllowed",
                f"{request.method.upper()} is not allowed on /api/{route}; allowed: {allowed}",
                headers={"Allow": allowed},
            )
        return _OPERATIONS[operation](request)
    except ApiError as exc:
        return exc.response()
    except Exception as exc:
        return _unexpected(exc, operation or "unknown").response()


def _unexpected(exc: Exception, operation: str) -> ApiError:
    """Map an exception from the pipeline or an SDK to an API error (never leaking a trace)."""
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    from shared.compute_port import ComputeError
    from shared.registry import ConcurrencyError, RegistryError, RunNotFound
    from shared.settings import SettingsError

    if isinstance(exc, RunNotFound):
        return ApiError(404, "RunNotFound", str(exc))
    if isinstance(exc, ComputeError):
        log.warning("%s: %s failed: %s %s", operation, exc.operation, exc.code, exc.message)
        if exc.http_status != 502:
            return ApiError(exc.http_status, exc.code, exc.message)
        return ApiError(502, exc.code, f"Batch AI answered {exc.status or ''} {exc.code}: {exc.message}")
    if isinstance(exc, SettingsError):
        log.error("%s: invalid app settings: %s", operation, exc)
        return ApiError(500, "InvalidSettings", str(exc))
    if isinstance(exc, ConcurrencyError):
        return ApiError(409, "Conflict", str(exc))
    if isinstance(exc, RegistryError):
        return ApiError(400, "InvalidRequest", str(exc))
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        log.warning("%s: dependency unreachable: %s", operation, exc)
        return ApiError(503, "ServiceUnavailable", f"a dependency is unreachable: {_short(exc)}")
    if isinstance(exc, HttpResponseError):
        code = getattr(getattr(exc, "error", None), "code", None) or exc.reason or "Error"
        log.warning("%s: upstream error %s %s: %s", operation, exc.status_code, code, _short(exc))
        return ApiError(502, "UpstreamError", f"Azure answered {exc.status_code} {code}: {_short(exc)}")
    log.exception("%s failed", operation)
    return ApiError(500, "InternalError", f"internal error ({type(exc).__name__}); see the function logs")


def _short(exc: BaseException, limit: int = 500) -> str:
    text = str(getattr(exc, "message", None) or exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first[:limit]


# --- shared helpers -----------------------------------------------------------------------------------


def _settings() -> Settings:
    from shared.settings import get_settings

    return get_settings()


def _registry() -> RunRegistry:
    """The pipeline's registry (built once per process from the settings, table created once)."""
    from shared import services

    return services.get_services().registry


def _base_url(request: ApiRequest) -> str:
    """`scheme://host/api` of this request (for Location and run URLs)."""
    parts = urlsplit(request.url)
    path = parts.path
    index = path.lower().find("/api/")
    prefix = path[:index] + "/api" if index >= 0 else "/api"
    return urlunsplit((parts.scheme or "http", parts.netloc, prefix, "", ""))


def _run_url(request: ApiRequest, run_id: str) -> str:
    return f"{_base_url(request)}/runs/{run_id}"


def _run_id(request: ApiRequest) -> str:
    run_id = request.route_params.get("id", "")
    if not _RUN_ID.match(run_id):
        raise ApiError(404, "RunNotFound", f"run {run_id[:100]!r} not found")
    return run_id


def _flag(request: ApiRequest, name: str) -> bool:
    value = request.params.get(name)
    if value is None or value == "":
        return False
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise _invalid(name, f"expected true or false, got {value[:50]!r}")


def _int_param(request: ApiRequest, name: str, default: int, low: int, high: int) -> int:
    value = request.params.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise _invalid(name, f"expected an integer, got {value[:50]!r}") from None
    if not low <= number <= high:
        raise _invalid(name, f"expected {low}-{high}, got {number}")
    return number


def _invalid(field: str, message: str, code: str = "InvalidRequest") -> ApiError:
    return ApiError(400, code, f"{field}: {message}", details=[{"field": field, "message": message}])


def _summary(record: RunRecord, request: ApiRequest) -> JsonObject:
    return {
        "id": record.run_id,
        "dataset": record.dataset,
        "state": record.state,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "times": dict(record.times),
        "cluster": record.cluster,
        "experiment": record.experiment,
        "job_name": record.job_name,
        "job_id": record.job_id,
        "exit_code": record.exit_code,
        "source": record.source,
        "url": _run_url(request, record.run_id),
        "metrics": record.metrics,
        "parent_id": record.parent_id,
        "sweep": record.sweep,
    }


def _full(record: RunRecord, request: ApiRequest) -> JsonObject:
    data = record.to_dict()
    data.pop("etag", None)
    data["url"] = _run_url(request, record.run_id)
    return data


# --- POST /api/runs -----------------------------------------------------------------------------------


def parse_start_request(body: JsonObject) -> tuple[str, RunSpec, str | None]:
    """(dataset, RunSpec, stage_from_prefix) from a start-run body; ApiError(400) naming each bad field."""
    from shared.staging import StagingError, check_dataset_name, check_stage_prefix

    problems: list[dict[str, str]] = []
    for key in body:
        if key not in START_FIELDS:
            problems.append({"field": key, "message": f"unknown field; expected {', '.join(START_FIELDS)}"})
    dataset = body.get("dataset")
    if not isinstance(dataset, str):
        problems.append({"field": "dataset", "message": "required: the dataset name (a string)"})
    else:
        try:
            check_dataset_name(dataset)
        except StagingError as exc:
            problems.append({"field": "dataset", "message": str(exc)})
    prefix = body.get("stage_from_prefix")
    if prefix is not None:
        try:
            check_stage_prefix(prefix)
        except StagingError as exc:
            problems.append({"field": "stage_from_prefix", "message": str(exc)})
    raw_spec = body.get("spec", {})
    spec = None
    if not isinstance(raw_spec, dict):
        problems.append({"field": "spec", "message": "expected a JSON object (the run spec)"})
    else:
        spec, spec_problems = _parse_spec(raw_spec)
        problems.extend(spec_problems)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ApiError(400, "InvalidRequest", f"{first['field']}: {first['message']}{more}", details=problems)
    # No problem reported: the dataset is a valid name (a str) and the spec parsed (not None).
    return cast(str, dataset), cast("RunSpec", spec), prefix.strip("/") if prefix else None


def _parse_spec(raw: JsonObject) -> tuple[RunSpec | None, list[dict[str, str]]]:
    """The RunSpec (validated with the app's VM allow-list and callback setting), or the problems."""
    from shared import runspec

    try:
        spec = runspec.parse_run_spec(raw, runspec.SpecContext.from_settings(_settings()))
    except runspec.RunSpecError as exc:
        return None, [
            {"field": "spec" if e["field"] == "(root)" else f"spec.{e['field']}", "message": e["message"]}
            for e in exc.errors
        ]
    problems = []
    if spec.callback_url:
        message = _callback_problem(spec.callback_url)
        if message:
            problems.append({"field": "spec.callback_url", "message": message})
    return spec, problems


def _callback_problem(url: str) -> str | None:
    """Why this callback URL is refused (not https, private or metadata address), or None."""
    from shared import callbacks

    allow_loopback = _settings().callback_allow_loopback_http
    try:
        callbacks.check_callback_url(url, allow_loopback_http=allow_loopback, resolve=True)
    except callbacks.CallbackError as exc:
        return str(exc)
    return None


def _same_request(record: RunRecord, dataset: str, spec: RunSpec, prefix: str | None) -> bool:
    """Is this the request that made `record`? Compares dataset, prefix and the effective spec (secret
    values are never stored, so two requests differing only in a secret's value count as the same)."""
    if record.dataset != dataset or (record.stage_from_prefix or None) != prefix:
        return False
    return record.spec is None or record.spec == spec.to_json_dict()


def _idempotency_key(request: ApiRequest) -> str | None:
    """The request's Idempotency-Key, stripped (None without one); 400 when empty or too long."""
    key = request.header("idempotency-key")
    if key is not None and not (0 < len(key.strip()) <= MAX_IDEMPOTENCY_KEY):
        raise ApiError(
            400,
            "InvalidIdempotencyKey",
            f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} characters",
            details=[{"field": "Idempotency-Key", "message": f"1-{MAX_IDEMPOTENCY_KEY} characters"}],
        )
    return key.strip() if key else None


def start_run(request: ApiRequest) -> ApiResponse:
    key = _idempotency_key(request)
    body = json_body(request)
    dataset, spec, prefix = parse_start_request(body)

    if key:
        existing = _registry().find_by_idempotency_key(key)
        if existing is not None:
            return _replay_or_conflict(request, existing, dataset, spec, prefix)
    from shared import run_starts

    try:
        record = run_starts.start_run(
            dataset, spec, stage_from_prefix=prefix, idempotency_key=key, background=True
        )
    except Exception as exc:
        raise _start_error(exc) from None
    if key and record.idempotency_key == key and not _same_request(record, dataset, spec, prefix):
        # Another request with this key won the race with a different body.
        return _replay_or_conflict(request, record, dataset, spec, prefix)
    log.info("run %s started on dataset %s over HTTP", record.run_id, dataset, extra=record.log_extra())
    return _accepted(request, record)


def resubmit_run(request: ApiRequest) -> ApiResponse:
    """POST /api/runs/{id}/resubmit: body `{"overrides": {<run spec fields>}}` (optional)."""
    run_id = _run_id(request)
    key = _idempotency_key(request)
    body = json_body(request) if request.body.strip() else {}
    if not isinstance(body, dict):
        raise _invalid("(root)", "expected a JSON object")
    unknown = sorted(set(body) - {"overrides"})
    if unknown:
        raise _invalid(unknown[0], "unknown field")
    overrides = body.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise _invalid("overrides", "expected an object of run spec fields")
    from shared import resubmit

    try:
        record = resubmit.resubmit_run(run_id, overrides, idempotency_key=key)
    except resubmit.ResubmitRefused as exc:
        raise ApiError(409, exc.code, str(exc)) from None
    except Exception as exc:
        raise _start_error(exc) from None
    log.info("run %s resubmitted as %s over HTTP", run_id, record.run_id, extra=record.log_extra())
    return _accepted(request, record)


def _accepted(request: ApiRequest, record: RunRecord, headers: dict[str, str] | None = None) -> ApiResponse:
    """202 with the run, or 422 when it failed before its job was created (the dataset lacks files
    it needs, nothing under the prefix, SubmitFailed...): the client's request cannot run as it is.
    The code is the error that failed it (the last). Location names the run either way."""
    url = _run_url(request, record.run_id)
    headers = {"Location": url, **(headers or {})}
    if record.state == "failed" and not record.submitted_at:
        last = (record.errors or [{}])[-1]
        raise ApiError(
            422,
            str(last.get("code") or "RunFailedToStart"),
            f"run {record.run_id} could not start: {last.get('message') or 'see the run record'}",
            details=[{"field": "dataset", "message": str(e.get("message", ""))} for e in record.errors[:20]],
            headers=headers,
        )
    body = _full(record, request)
    secret = _callback_secret(record)
    if secret:
        body["callback_secret"] = secret
    return ApiResponse(202, body, headers=headers)


def _callback_secret(record: RunRecord) -> str | None:
    """The run's own callback signing secret, for the response that started it (and a replay of that
    request): derived from CALLBACK_SIGNING_SECRET and the run's salt, never stored, never in GET."""
    from shared import callbacks

    key = _settings().callback_signing_secret
    salt = (record.callback_seal or {}).get("salt")
    if not key or not salt or not record.callback_url:
        return None
    return callbacks.run_secret(key.get_secret_value(), str(salt))


def _replay_or_conflict(
    request: ApiRequest, record: RunRecord, dataset: str, spec: RunSpec, prefix: str | None
) -> ApiResponse:
    if not _same_request(record, dataset, spec, prefix):
        raise ApiError(
            422,
            "IdempotencyKeyReused",
            f"Idempotency-Key was already used for run {record.run_id} with a different request body; "
            "use a new key for a different request",
        )
    return _accepted(request, record, {"Idempotent-Replayed": "true"})


def _start_error(exc: Exception) -> Exception:
    """run_starts.start_run's refusals as API errors; anything else goes on to `_unexpected`."""
    from shared.runspec import RunSpecError
    from shared.staging import StagingError

    if isinstance(exc, StagingError):
        return ApiError(exc.http_status, exc.code, str(exc))  # 422, 400 or 502: shared.errors
    code = getattr(exc, "error_code", None) or getattr(getattr(exc, "error", None), "code", None)
    if code == "ContainerNotFound":  # staging from a prefix of a training container not created yet
        return ApiError(422, "NothingToStage", f"nothing to stage: {_short(exc)}")
    if isinstance(exc, RunSpecError):
        details = [{"field": f"spec.{e['field']}", "message": e["message"]} for e in exc.errors]
        return ApiError(400, "InvalidRequest", str(exc), details=details)
    return exc


# --- GET /api/runs ------------------------------------------------------------------------------------


def list_runs(request: ApiRequest) -> ApiResponse:
    from shared.registry import RegistryError

    states: list[str] = []
    raw_state = request.params.get("state")
    if raw_state:
        states = [s.strip().lower() for s in raw_state.split(",") if s.strip()]
        unknown = [s for s in states if s not in RUN_STATES]
        if unknown:
            raise _invalid("state", f"unknown state {unknown[0]!r}; states are {', '.join(RUN_STATES)}")
    dataset = request.params.get("dataset") or None
    parent = request.params.get("parent") or None
    limit = _int_param(request, "limit", DEFAULT_PAGE, 1, 1000)
    continuation = request.params.get("continuation") or None
    try:
        records, token = _registry().list_runs(states or None, dataset, limit, continuation, parent=parent)
    except RegistryError as exc:
        field = "continuation" if "continuation" in str(exc) else "query"
        raise _invalid(field, str(exc)) from None
    return ApiResponse(200, {"runs": [_summary(r, request) for r in records], "continuation": token})


# --- GET /api/runs/{id} -------------------------------------------------------------------------------


def get_run(request: ApiRequest) -> ApiResponse:
    record = _registry().get(_run_id(request))
    data = _full(record, request)
    fresh = _fresh_outputs(record)
    if fresh is not None:
        data["output_files"] = fresh
        data["output_urls_fresh"] = True
    else:
        data["output_urls_fresh"] = False
    from shared import sweep_runs

    if sweep_runs.is_parent(record):
        data["leaderboard"] = sweep_runs.leaderboard(_registry(), record)
    return ApiResponse(200, data)


def _compute() -> ComputeBackend:
    """The app's compute backend (built once per process with the other services)."""
    from shared import services

    return services.get_services().cloud


def _job_ref(record: RunRecord) -> JobNames | None:
    """The names of the run's job (shared.compute_port.JobNames), or None before it is submitted."""
    if not (record.job_name and record.experiment):
        return None
    return _compute().job_ref(record.experiment, record.job_name)


def _fresh_outputs(record: RunRecord) -> list[JsonObject] | None:
    """The run's output files listed again now, with download URLs, as the monitor lists them (the
    registry keeps names and sizes only: the URLs are signed and expire); None when the job is not
    there to ask (not submitted yet, or deleted by cleanup)."""
    from shared import monitor, services
    from shared.compute_port import ComputeError

    ref = _job_ref(record)
    if ref is None or not record.output_files:
        return None
    svc = services.get_services()
    try:
        listed = monitor.collect_outputs(svc, record, ref)
    except ComputeError as exc:
        log.info("run %s: output files not listable (%s); no download URLs", record.run_id, exc.code)
        return None
    if not listed:
        return None
    current = {(o.directory_id, o.name): o for o in listed}
    out = []
    for recorded in record.output_files:
        data = recorded.to_dict()
        now = current.get((recorded.directory_id, recorded.name))
        if now is not None:
            data["download_url"] = now.download_url
            data["size"] = now.size if now.size is not None else data["size"]
        out.append(data)
    return out


# --- POST /api/runs/{id}/callback-secret -------------------------------------------------------------


class _AlreadyIssued(Exception):
    pass


def issue_callback_secret(request: ApiRequest) -> ApiResponse:
    """The run's callback secret, once (compare-and-swap on the run's seal): for a run started by an
    upload, whose start had no caller to answer. A run started over HTTP had it in its 202."""
    run_id = _run_id(request)
    registry = _registry()
    record = registry.get(run_id)
    if not record.callback_url or not (record.callback_seal or {}).get("salt"):
        raise ApiError(409, "NoCallbackSecret", f"run {run_id} has no callback, so no callback secret")
    if _settings().callback_signing_secret is None:
        raise ApiError(409, "NoCallbackSecret", "callbacks are unsigned: CALLBACK_SIGNING_SECRET is not set")

    def issue(rec: RunRecord) -> None:
        if (rec.callback_seal or {}).get("issued"):
            raise _AlreadyIssued
        rec.callback_seal = {**(rec.callback_seal or {}), "issued": True}

    try:
        issued = registry.update(run_id, issue)
    except _AlreadyIssued:
        raise ApiError(
            409,
            "CallbackSecretIssued",
            f"the callback secret of run {run_id} was already issued (at its start or by an earlier "
            "request); it is never given twice",
        ) from None
    log.info("run %s: callback secret issued over HTTP", run_id, extra=issued.log_extra())
    return ApiResponse(200, {"id": run_id, "callback_secret": _callback_secret(issued)})


# --- GET /api/runs/{id}/logs --------------------------------------------------------------------------


def get_logs(request: ApiRequest) -> ApiResponse:
    tail = _int_param(request, "tail", DEFAULT_TAIL, 1, MAX_TAIL)
    record = _registry().get(_run_id(request))
    stdout, stderr, source = _read_logs(record, tail)
    return ApiResponse(
        200,
        {"id": record.run_id, "state": record.state, "tail": tail, "stdout": stdout, "stderr": stderr,
         "source": source},
    )  # fmt: skip


def _read_logs(record: RunRecord, tail: int) -> tuple[str, str, str]:
    ref = _job_ref(record)
    if ref is not None:
        files = {f.name: f for f in _compute().list_output_files(ref, "stdouterr")}
        if files:
            try:
                out = _tail_of_file(files.get(lead_log_name(files, "stdout") or ""), tail)
                err = _tail_of_file(files.get(lead_log_name(files, "stderr") or ""), tail)
            except OSError as exc:  # urllib's URLError/HTTPError, timeouts
                raise ApiError(
                    502, "LogDownloadFailed", f"reading the job's log failed: {_short(exc)}"
                ) from None
            return out, err, "job"
    if record.stdout_tail:
        return _last_lines(record.stdout_tail, tail), "", "record"
    return "", "", "none"


def _tail_of_file(item: OutputItem | None, lines: int) -> str:
    """The last `lines` lines of an output file (shared.compute_port.OutputItem) or ""."""
    return "" if item is None else _tail_of_url(item.download_url, lines, size=item.size)


def _tail_of_url(url: str | None, lines: int, *, size: int | None = None) -> str:
    """The last `lines` lines of a download URL, reading at most LOG_READ_LIMIT bytes of its end
    (a Range request: the rest of the file never travels)."""
    if not url:
        return ""
    from shared.logtail import read_tail

    data = read_tail(url, LOG_READ_LIMIT, size=size)
    return _last_lines(data.decode("utf-8", errors="replace"), lines)


def _last_lines(text: str, lines: int) -> str:
    parts = text.splitlines(keepends=True)
    return "".join(parts[-lines:])


# --- GET /api/runs/{id}/metrics -----------------------------------------------------------------------


def get_metrics(request: ApiRequest) -> ApiResponse:
    from shared.metrics import MetricsState, point_json

    registry = _registry()
    record = registry.get(_run_id(request), with_files=False)
    text, _ = registry.get_metrics(record.run_id)
    series = MetricsState.from_json(text).series
    body = {name: [point_json(p) for p in points] for name, points in series.items()}
    return ApiResponse(200, {"id": record.run_id, "state": record.state, "metrics": body})


# --- DELETE /api/runs/{id} ----------------------------------------------------------------------------


def delete_run(request: ApiRequest) -> ApiResponse:
    """Terminate and delete the run's job and mark it cancelled (a finished run keeps its state); with
    cluster=true also delete its cluster unless another active run uses it. Answers the run record
    with `job_deleted`, `cluster_deleted` (with cluster=true) and a `message`."""
    from shared import cancellation

    run_id = _run_id(request)
    with_cluster = _flag(request, "cluster")
    before = _registry().get(run_id)  # 404 before any side effect
    record = cancellation.cancel_run(run_id, delete_cluster=with_cluster)
    body = _full(record, request)
    body["job_deleted"] = bool(before.job_name)
    notes = [f"job {before.job_name} terminated and deleted" if before.job_name else "the run had no job"]
    if with_cluster:
        body["cluster_deleted"] = _cluster_going(record.cluster)
        if record.cluster and not body["cluster_deleted"]:
            notes.append(f"cluster {record.cluster} kept: other active runs use it")
        elif record.cluster:
            notes.append(f"cluster {record.cluster} deleting")
    body["message"] = "; ".join(notes)
    return ApiResponse(200, body)


def _cluster_going(name: str | None) -> bool:
    """Is the cluster gone or being deleted?"""
    if not name:
        return False
    cluster = _compute().get_cluster(name)
    return cluster is None or cluster.provisioning_state == "deleting"


# --- clusters ---------------------------------------------------------------------------------------


def _active_runs_by_cluster() -> dict[str, list[str]]:
    from shared.registry import ACTIVE_STATES

    users: dict[str, list[str]] = {}
    for record in _registry().iter_runs(state=sorted(ACTIVE_STATES)):
        if record.cluster:
            users.setdefault(record.cluster, []).append(record.run_id)
    return users


def _idle_json(
    cluster: ClusterStatus, users: list[str], ledger: ClusterLedger | None, now: datetime
) -> JsonObject:
    """Nodes, idle time and node time of a cluster: from the node counts listed now and the ledger
    the monitor keeps (``shared.node_time``). Idle: no active run uses it and no node runs a job;
    since the end of its last run (or the last pass that saw it in use, or its creation)."""
    from shared.registry import parse_time

    idle_since = None
    if not users and not cluster.running_nodes:
        idle_since = parse_time(ledger.busy_until if ledger is not None else None) or cluster.created_at
    return {
        "nodes": cluster.allocated_nodes,
        "idle_since": idle_since.isoformat() if idle_since else None,
        "idle_minutes": round(max((now - idle_since).total_seconds(), 0) / 60, 2) if idle_since else None,
        "node_minutes": round(ledger.node_minutes, 2) if ledger is not None else None,
        "nodes_released_at": ledger.released_at if ledger is not None else None,
    }


def _cluster_json(
    cluster: ClusterStatus,
    users: dict[str, list[str]],
    ledger: ClusterLedger | None = None,
    now: datetime | None = None,
) -> JsonObject:
    """A shared.compute_port.ClusterStatus as the API shows it."""
    return {
        "name": cluster.name,
        "id": cluster.id,
        "vm_size": cluster.vm_size,
        "vm_priority": cluster.vm_priority,
        "allocation_state": cluster.allocation_state,
        "provisioning_state": cluster.provisioning_state,
        "current_node_count": cluster.current_node_count,
        "node_state_counts": cluster.node_state_counts,
        "scale_settings": cluster.scale_settings,
        "creation_time": cluster.created_at.isoformat() if cluster.created_at else None,
        "errors": [e.as_dict() for e in cluster.errors],
        "active_runs": users.get(cluster.name or "", []),
        **_idle_json(cluster, users.get(cluster.name or "", []), ledger, now or datetime.now(UTC)),
    }


def list_clusters(request: ApiRequest) -> ApiResponse:
    clusters = _compute().list_clusters().values()  # none before the workspace exists
    users = _active_runs_by_cluster()
    ledgers = _registry().cluster_ledgers() if clusters else {}
    now = datetime.now(UTC)
    return ApiResponse(
        200, {"clusters": [_cluster_json(c, users, ledgers.get(c.name), now) for c in clusters]}
    )


def delete_cluster(request: ApiRequest) -> ApiResponse:
    """409 while active runs use the cluster; with force=true those runs are cancelled first (they
    could not finish without it). Deletion is long-running: 202, the cluster is then 'deleting'."""
    from shared import cancellation

    name = request.route_params.get("name", "")
    if not _CLUSTER.match(name):
        raise ApiError(404, "ClusterNotFound", f"cluster {name[:100]!r} not found")
    force = _flag(request, "force")
    compute = _compute()
    cluster = compute.get_cluster(name)
    if cluster is None:
        raise ApiError(
            404, "ClusterNotFound", f"cluster {name!r} not found in workspace {_settings().workspace}"
        )
    users = _active_runs_by_cluster().get(name, [])
    if users and not force:
        raise ApiError(
            409,
            "ClusterInUse",
            f"cluster {name!r} is used by active run(s) {', '.join(users)}; "
            "cancel them first or pass force=true",
        )
    cancelled = []
    for run_id in users:
        cancellation.cancel_run(run_id, delete_cluster=False)
        cancelled.append(run_id)
    compute.delete_cluster(name)
    log.info("cluster %s deletion requested over HTTP (force=%s, cancelled runs %s)", name, force, cancelled)
    return ApiResponse(202, {"name": name, "deleting": True, "cancelled_runs": cancelled})


# --- GET /api/health ----------------------------------------------------------------------------------


def health(request: ApiRequest) -> ApiResponse:
    """Liveness, for anyone: the app answers. It calls no dependency (an anonymous flood costs no
    storage or ARM request and cannot throttle the pipeline) and names nothing of the deployment."""
    return ApiResponse(200, {"status": "ok"}, headers={"Cache-Control": "no-store"})


_deep_lock = threading.Lock()
_deep_cache: tuple[float, int, JsonObject] | None = None  # (monotonic time, status, body)


def health_deep(request: ApiRequest) -> ApiResponse:
    """The checks, behind the function key: settings, storage, ARM and the compute service. One
    probe per HEALTH_CACHE_SECONDS per instance, however many requests (they wait for the probe
    under way and share its answer); messages are plain, never upstream text."""
    global _deep_cache
    with _deep_lock:
        now = time.monotonic()
        if _deep_cache is None or now - _deep_cache[0] >= HEALTH_CACHE_SECONDS:
            status, body = _deep_checks()
            _deep_cache = (time.monotonic(), status, body)
        taken, status, body = _deep_cache
    return ApiResponse(status, {**body, "age_seconds": round(time.monotonic() - taken, 1)})


def reset_health_cache() -> None:
    """Forget the cached deep health answer (tests, settings changes)."""
    global _deep_cache
    with _deep_lock:
        _deep_cache = None


def _deep_checks() -> tuple[int, JsonObject]:
    checks: dict[str, JsonObject] = {}
    try:
        settings = _settings()
    except Exception as exc:  # SettingsError names each setting, never a value
        log.warning("health: invalid app settings: %s", exc)
        checks["settings"] = {"ok": False, "message": str(exc)}
        return 503, {"status": "unavailable", "checks": checks}
    checks["settings"] = {"ok": True, "message": "app settings are valid"}
    backend = _compute()  # the check is named after the backend ("batchai", "azureml")
    probes: dict[str, Callable[[], object]] = {
        "storage": lambda: _probe_storage(settings),
        "arm": lambda: _probe_arm(settings),
        backend.name: backend.health,
    }
    plain_ok = {
        "storage": "blob and table storage reachable",
        "arm": "ARM reachable",
        backend.name: f"{backend.name} answers",
    }
    pool = ThreadPoolExecutor(max_workers=len(probes))
    try:
        futures = {name: pool.submit(probe) for name, probe in probes.items()}
        for name, future in futures.items():
            try:
                future.result(timeout=HEALTH_TIMEOUT)
                checks[name] = {"ok": True, "message": plain_ok[name]}
            except FutureTimeout:
                checks[name] = {"ok": False, "message": f"no answer within {HEALTH_TIMEOUT:.0f} s"}
            except Exception as exc:
                log.warning("health: %s check failed: %s", name, exc)  # the detail, for the operator
                checks[name] = {"ok": False, "message": _probe_error(name, exc)}
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    ok = all(c["ok"] for c in checks.values())
    return (200 if ok else 503), {"status": "ok" if ok else "unavailable", "checks": checks}


def _probe_storage(settings: Settings) -> None:
    from shared import sdk_clients

    blobs = sdk_clients.blob_service(settings).list_containers(results_per_page=1, **STORAGE_PROBE_OPTIONS)
    next(iter(blobs.by_page()), None)
    tables = sdk_clients.table_service(settings).list_tables(results_per_page=1, **STORAGE_PROBE_OPTIONS)
    next(iter(tables.by_page()), None)


def _probe_arm(settings: Settings) -> None:
    from azure.core.exceptions import ResourceNotFoundError

    from shared import sdk_clients

    with contextlib.suppress(ResourceNotFoundError):  # not created yet: made on the first run
        sdk_clients.resource_client(settings).resource_groups.get(settings.resource_group, **PROBE_OPTIONS)


_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}$")


def _probe_error(name: str, exc: Exception) -> str:
    """A plain message for a failed check: what kind of failure, an HTTP status, and an error code
    only when it is one of the service's identifiers; never the upstream message (which can name
    accounts, groups, regions or echo request text). The full error is in the function log."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

    from shared.compute_port import ComputeError

    if isinstance(exc, ComputeError):
        if exc.code == "ServiceUnavailable":
            return "unreachable"
        if exc.public_message:  # e.g. a retired service: the backend's own plain explanation
            return f"{name} is not available: {exc.public_message}"
        if exc.code == "AuthenticationFailed":
            return "authentication failed"
        code = exc.code if _IDENTIFIER.match(exc.code or "") else "an error"
        return f"answered {code}" + (f" (HTTP {exc.status})" if exc.status else "")
    if isinstance(exc, ClientAuthenticationError):
        return "authentication failed"
    if isinstance(exc, ServiceRequestError):
        return "unreachable"
    if isinstance(exc, HttpResponseError):
        code = getattr(getattr(exc, "error", None), "code", None) or ""
        return f"answered HTTP {exc.status_code}" + (f" {code}" if _IDENTIFIER.match(code) else "")
    return f"failed ({type(exc).__name__})"


# --- GET /api/openapi.json ----------------------------------------------------------------------------


def openapi(request: ApiRequest) -> ApiResponse:
    from shared.openapi import document

    return ApiResponse(200, document(_base_url(request) if request.url else None))


_OPERATIONS: dict[str, Callable[[ApiRequest], ApiResponse]] = {
    "listRuns": list_runs,
    "startRun": start_run,
    "resubmitRun": resubmit_run,
    "getRun": get_run,
    "deleteRun": delete_run,
    "getRunLogs": get_logs,
    "issueCallbackSecret": issue_callback_secret,
    "getRunMetrics": get_metrics,
    "listClusters": list_clusters,
    "deleteCluster": delete_cluster,
    "health": health,
    "healthDeep": health_deep,
    "openapi": openapi,
    "dashboard": lambda request: _dashboard(request),
    "dashboardFile": lambda request: _dashboard(request),
}


def _dashboard(request: ApiRequest) -> ApiResponse:
    from shared import dashboard

    return dashboard.serve(request)


def operations() -> Iterable[str]:
    return _OPERATIONS.keys()
