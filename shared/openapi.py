"""The OpenAPI 3 document of the HTTP API (served at `GET /api/openapi.json`).

Why written here rather than generated from the handlers: the Functions programming model has no
schema reflection; instead `ROUTES` below is the single list of routes and operations, which
`functions/api.py` registers and a test checks against `function_app.app.get_functions()`. The run spec
schema is pydantic's own (`shared.runspec`), so the document and the validator cannot disagree.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from shared.run_states import STATES

__all__ = ["API_VERSION", "ROUTES", "document"]

API_VERSION = "1.0.0"

# Route template (as registered with the Functions host, under the `api` prefix; the dashboard's
# files are registered as the catch-all "ui/{*path}") -> the HTTP methods it implements ->
# operationId. Every other method on a registered route answers 405.
ROUTES: dict[str, dict[str, str]] = {
    "runs": {"GET": "listRuns", "POST": "startRun"},
    "runs/{id}": {"GET": "getRun", "DELETE": "deleteRun"},
    "runs/{id}/logs": {"GET": "getRunLogs"},
    "runs/{id}/callback-secret": {"POST": "issueCallbackSecret"},
    "runs/{id}/metrics": {"GET": "getRunMetrics"},
    "runs/{id}/resubmit": {"POST": "resubmitRun"},
    "clusters": {"GET": "listClusters"},
    "clusters/{name}": {"DELETE": "deleteCluster"},
    "health": {"GET": "health"},
    "health/deep": {"GET": "healthDeep"},
    "openapi.json": {"GET": "openapi"},
    "ui": {"GET": "dashboard"},
    "ui/{path}": {"GET": "dashboardFile"},
}
ANONYMOUS_ROUTES = frozenset({"health", "openapi.json", "ui", "ui/{path}"})
# What a route registers with the host: every method, so that the handler answers 405 in our shape.
ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

RUN_STATES = list(STATES)  # the registry's (shared.run_states), in the order a run passes through
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
CLUSTER_NAME_PATTERN = r"^[-\w_]{1,64}$"
_STATE = "(" + "|".join(RUN_STATES) + ")"
_STATE_LIST = f"^{_STATE}(,{_STATE})*$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "Malformed JSON, an invalid run spec or query parameter (details name the field)",
        401: "Missing or wrong function key",
        404: "No such run or cluster",
        405: "Method not allowed on this route",
        409: "Conflict with the current state (in use, already finished, idempotency key reused)",
        413: "Request body over 1 MiB",
        415: "Request body is not JSON",
        422: "Idempotency-Key reused with a different request body (IdempotencyKeyReused), or the run "
        "failed before its job existed, e.g. files the spec needs are not in the dataset (MissingFiles, "
        "NothingToStage, DatasetNotStaged); Location names the failed run when there is one",
        500: "Internal error (no stack trace; see the function logs)",
        502: "Batch AI or storage answered with an error",
        503: "A dependency is unreachable or unavailable",
    }
    return {str(s): _error(text[s]) for s in statuses}


_ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "Run id",
    "schema": {"type": "string", "pattern": RUN_ID_PATTERN, "maxLength": 100},
}
_CLUSTER_PARAM = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "Cluster name (in the configured Batch AI workspace)",
    "schema": {"type": "string", "pattern": CLUSTER_NAME_PATTERN},
}


def _bool_query(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string", "enum": ["true", "false"]},
    }


def _runspec_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """(RunSpec schema, the component schemas it references), from pydantic's JSON schema."""
    from shared.runspec import RunSpec

    schema = RunSpec.model_json_schema(ref_template="#/components/schemas/{model}", mode="validation")
    defs = schema.pop("$defs", {})
    return schema, defs


def _schemas() -> dict[str, Any]:
    runspec, runspec_defs = _runspec_schema()
    file_schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "size": {"type": ["integer", "null"]},
            "md5": {"type": ["string", "null"]},
        },
    }
    output_schema = {
        "type": "object",
        "properties": {
            "directory_id": {"type": "string"},
            "name": {"type": "string"},
            "size": {"type": ["integer", "null"]},
            "download_url": {"type": ["string", "null"]},
            "is_directory": {"type": "boolean"},
        },
    }
    run_summary: dict[str, Any] = {
        "type": "object",
        "required": ["id", "dataset", "state"],
        "properties": {
            "id": {"type": "string"},
            "dataset": {"type": "string"},
            "state": {"type": "string", "enum": RUN_STATES},
            "created_at": {"type": ["string", "null"]},
            "updated_at": {"type": ["string", "null"]},
            "times": {"type": "object", "additionalProperties": {"type": "string"}},
            "cluster": {"type": ["string", "null"]},
            "experiment": {"type": ["string", "null"]},
            "job_name": {"type": ["string", "null"]},
            "job_id": {"type": ["string", "null"]},
            "exit_code": {"type": ["integer", "null"]},
            "source": {"type": ["string", "null"]},
            "url": {"type": "string", "description": "This run's URL in the API"},
            "metrics": {
                "type": ["object", "null"],
                "description": "The latest value of each metric the job printed (GET .../metrics has "
                "the series); null before the first",
                "additionalProperties": _ref("MetricPoint"),
            },
            "parent_id": {
                "type": ["string", "null"],
                "description": "A sweep's trial: its parent run (GET /runs?parent= lists them)",
            },
            "sweep": {
                "type": ["object", "null"],
                "description": "A sweep's parent: role 'parent', trials, primary_metric, goal and, once "
                "it succeeded, best {trial, parameters, metric {name, value}}; after a resubmit, attempts "
                "{index: round} and resubmits [{round, time, reran {index: run id}, started, state_before, "
                "best_before}]; a trial: role 'trial', index, parameters and, for a re-run, attempt and "
                "rerun_of (the run id it re-runs)",
            },
        },
    }
    run = copy.deepcopy(run_summary)
    run["properties"].update(
        {
            "spec": {"type": ["object", "null"], "description": "The effective run spec"},
            "errors": {"type": "array", "items": {"type": "object"}},
            "node_minutes": {
                "type": ["object", "null"],
                "description": "Node-minutes its cluster was allocated while the run was active and "
                "after it ended (until the nodes were released or another run started), from the node "
                "counts the monitor reads each pass; null before the run ends",
                "properties": {
                    "cluster": {"type": "string"},
                    "active": {"type": "number"},
                    "after": {"type": "number"},
                },
            },
            "snapshot": {
                "type": ["object", "null"],
                "description": "The run's own immutable input: the share directory its job reads, and "
                "the count and total bytes of the files in it (listed in staged_files)",
                "properties": {
                    "path": {"type": "string"},
                    "file_count": {"type": "integer"},
                    "total_bytes": {"type": "integer"},
                },
            },
            "staged_files": {
                "type": "array",
                "items": _ref("StagedFile"),
                "description": "Every file of the snapshot: relative path, size, MD5, source blob ETag",
            },
            "output_files": {"type": "array", "items": _ref("OutputFile")},
            "expected_files": {"type": ["array", "null"], "items": {"type": "string"}},
            "stdout_tail": {"type": ["string", "null"]},
            "callback_url": {
                "type": ["string", "null"],
                "description": "The callback URL with its query values replaced by REDACTED",
            },
            "callback": {"type": ["object", "null"]},
            "stage_from_prefix": {"type": ["string", "null"]},
            "idempotency_key": {"type": ["string", "null"]},
            "metrics_offset": {
                "type": ["integer", "null"],
                "description": "How many bytes of the job's stdout have been read for metrics",
            },
            "leaderboard": {
                "type": "array",
                "description": "A sweep's parent only: its trials, best final primary metric first",
                "items": _ref("LeaderboardRow"),
            },
        }
    )
    started = copy.deepcopy(run)
    started["properties"]["callback_secret"] = {
        "type": "string",
        "description": "This run's own callback signing secret (HMAC-SHA256 key of its "
        "X-Callback-Signature): only in the answer to the request that started the run and its "
        "idempotent replays; with a callback_url and CALLBACK_SIGNING_SECRET set",
    }
    teardown = copy.deepcopy(run)
    teardown["properties"].update(
        {
            "job_deleted": {"type": "boolean", "description": "The run's job was terminated and deleted"},
            "cluster_deleted": {"type": "boolean", "description": "With cluster=true: the cluster is going"},
            "message": {"type": "string"},
        }
    )
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "details": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["field", "message"],
                                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                            },
                        },
                    },
                }
            },
        },
        "StartRunRequest": {
            "type": "object",
            "required": ["dataset"],
            "additionalProperties": False,
            "properties": {
                "dataset": {
                    "type": "string",
                    "description": "Dataset name (its blob prefix); each run trains on its own snapshot of "
                    "it on the file share",
                },
                "stage_from_prefix": {
                    "type": "string",
                    "description": "Blob prefix in the training container to stage into the run's "
                    "snapshot first; omit to snapshot the dataset's latest snapshot on the share",
                },
                "spec": {
                    **_ref("RunSpec"),
                    "description": "The run spec (same schema as a dataset's run.json); omitted "
                    "fields take the quickstart's defaults",
                },
            },
        },
        "RunSpec": runspec,
        "StagedFile": file_schema,
        "OutputFile": output_schema,
        "RunSummary": run_summary,
        "LeaderboardRow": {
            "type": "object",
            "required": ["id", "index", "parameters", "state", "early_terminated", "metric"],
            "properties": {
                "id": {"type": "string"},
                "index": {"type": "integer"},
                "parameters": {"type": "object"},
                "state": {"type": "string", "enum": RUN_STATES},
                "early_terminated": {"type": "boolean", "description": "Stopped by the sweep's policy"},
                "metric": {"type": ["number", "null"], "description": "The primary metric's final value"},
                "duration_seconds": {"type": ["number", "null"]},
                "attempt": {
                    "type": "integer",
                    "description": "0: the trial's first run; K: its re-run by the sweep's resubmit round K",
                },
            },
        },
        "Run": run,
        "StartedRun": started,
        "Teardown": teardown,
        "RunList": {
            "type": "object",
            "required": ["runs"],
            "properties": {
                "runs": {"type": "array", "items": _ref("RunSummary")},
                "continuation": {
                    "type": ["string", "null"],
                    "description": "Pass as ?continuation= for the next page; null on the last page",
                },
            },
        },
        "RunLogs": {
            "type": "object",
            "required": ["id", "state", "tail", "stdout", "stderr"],
            "properties": {
                "id": {"type": "string"},
                "state": {"type": "string"},
                "tail": {"type": "integer"},
                "stdout": {"type": "string"},
                "stderr": {"type": "string"},
                "source": {"type": "string", "enum": ["job", "record", "none"]},
            },
        },
        "MetricPoint": {
            "type": "object",
            "required": ["x", "value", "time"],
            "properties": {
                "x": {"type": "number", "description": "The record's epoch, else its step, else its order"},
                "value": {"type": "number"},
                "time": {"type": "string", "description": "When the monitor read the record (UTC)"},
            },
        },
        "RunMetrics": {
            "type": "object",
            "required": ["id", "state", "metrics"],
            "properties": {
                "id": {"type": "string"},
                "state": {"type": "string", "enum": RUN_STATES},
                "metrics": {
                    "type": "object",
                    "description": "Metric name -> its points, oldest first (older points thinned "
                    "past 250 per metric; the last one always kept)",
                    "additionalProperties": {"type": "array", "items": _ref("MetricPoint")},
                },
            },
        },
        "Cluster": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "id": {"type": ["string", "null"]},
                "vm_size": {"type": ["string", "null"]},
                "vm_priority": {"type": ["string", "null"]},
                "allocation_state": {"type": ["string", "null"]},
                "provisioning_state": {"type": ["string", "null"]},
                "current_node_count": {"type": ["integer", "null"]},
                "node_state_counts": {"type": ["object", "null"]},
                "creation_time": {"type": ["string", "null"]},
                "errors": {"type": "array", "items": {"type": "object"}},
                "active_runs": {"type": "array", "items": {"type": "string"}},
                "nodes": {"type": "integer", "description": "Nodes allocated now, whatever their state"},
                "idle_since": {
                    "type": ["string", "null"],
                    "description": "When its last run ended (or it was last seen in use, or was "
                    "created); null while an active run uses it or a node runs a job",
                },
                "idle_minutes": {
                    "type": ["number", "null"],
                    "description": "How long it has been idle; the monitor releases its nodes once "
                    "this reaches CLUSTER_IDLE_MINUTES",
                },
                "node_minutes": {
                    "type": ["number", "null"],
                    "description": "Node-minutes allocated since the monitor first saw it",
                },
                "nodes_released_at": {
                    "type": ["string", "null"],
                    "description": "When the monitor last released its nodes for being idle",
                },
            },
        },
        "ClusterList": {
            "type": "object",
            "required": ["clusters"],
            "properties": {"clusters": {"type": "array", "items": _ref("Cluster")}},
        },
        "ClusterDeleting": {
            "type": "object",
            "required": ["name", "deleting"],
            "properties": {
                "name": {"type": "string"},
                "deleting": {"type": "boolean"},
                "cancelled_runs": {"type": "array", "items": {"type": "string"}},
            },
        },
        "Liveness": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string", "enum": ["ok"]}},
        },
        "Health": {
            "type": "object",
            "required": ["status", "checks"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "degraded", "unavailable"]},
                "checks": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["ok"],
                        "properties": {"ok": {"type": "boolean"}, "message": {"type": "string"}},
                    },
                },
            },
        },
    }
    for name, definition in runspec_defs.items():
        schemas.setdefault(name, definition)
    return schemas


def _operations() -> dict[str, Any]:
    security_note = "Requires a function key (x-functions-key header or code query parameter)."
    return {
        "/runs": {
            "get": {
                "operationId": "listRuns",
                "summary": "List runs, oldest first, filtered by state and dataset, one page at a time",
                "description": security_note,
                "parameters": [
                    {
                        "name": "state",
                        "in": "query",
                        "required": False,
                        "description": "Only runs in this state (comma-separated for several)",
                        "schema": {"type": "string", "pattern": _STATE_LIST},
                    },
                    {"name": "dataset", "in": "query", "required": False, "schema": {"type": "string"}},
                    {
                        "name": "parent",
                        "in": "query",
                        "required": False,
                        "description": "Only the trials of this sweep (its parent run's id)",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "Page size, 1-1000 (default 100)",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                    {
                        "name": "continuation",
                        "in": "query",
                        "required": False,
                        "description": "The previous page's continuation (opaque; a malformed one is 400)",
                        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$", "maxLength": 4000},
                    },
                ],
                "responses": {"200": _json(_ref("RunList"), "A page of runs"), **_errors(400, 401, 405, 500)},
            },
            "post": {
                "operationId": "startRun",
                "summary": "Start a run on a dataset (already staged, or a blob prefix to stage first)",
                "description": security_note
                + " With an Idempotency-Key header, the same key and body give the same run (202 with"
                " the existing run); the same key with a different body is 422.",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("StartRunRequest")}},
                },
                "responses": {
                    "202": {
                        **_json(_ref("StartedRun"), "Accepted: the run record; poll its Location"),
                        "headers": {
                            "Location": {"description": "The run's URL", "schema": {"type": "string"}},
                            "Idempotent-Replayed": {
                                "description": "true when the Idempotency-Key's earlier run is returned",
                                "schema": {"type": "string", "enum": ["true"]},
                            },
                        },
                    },
                    **_errors(400, 401, 405, 409, 413, 415, 422, 500, 502, 503),
                },
            },
        },
        "/runs/{id}": {
            "parameters": [_ID_PARAM],
            "get": {
                "operationId": "getRun",
                "summary": "The full run record, with fresh output download URLs",
                "description": security_note,
                "responses": {
                    "200": _json(_ref("Run"), "The run"),
                    **_errors(400, 401, 404, 405, 500),
                },
            },
            "delete": {
                "operationId": "deleteRun",
                "summary": "Tear a run down: terminate and delete its job; the run ends cancelled",
                "description": security_note
                + " With cluster=true its cluster is deleted too when no other active run uses it."
                " A run already finished keeps its state; its job is still deleted.",
                "parameters": [_bool_query("cluster", "Also delete the run's cluster when unused")],
                "responses": {
                    "200": _json(_ref("Teardown"), "Torn down: the run as it is now, and what was done"),
                    **_errors(400, 401, 404, 405, 409, 500, 502),
                },
            },
        },
        "/runs/{id}/logs": {
            "parameters": [_ID_PARAM],
            "get": {
                "operationId": "getRunLogs",
                "summary": "The last lines of the run's stdout and stderr",
                "description": security_note,
                "parameters": [
                    {
                        "name": "tail",
                        "in": "query",
                        "required": False,
                        "description": "How many lines from the end (1-10000, default 100)",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 10000},
                    }
                ],
                "responses": {
                    "200": _json(_ref("RunLogs"), "The log tails"),
                    **_errors(400, 401, 404, 405, 500, 502),
                },
            },
        },
        "/runs/{id}/callback-secret": {
            "parameters": [_ID_PARAM],
            "post": {
                "operationId": "issueCallbackSecret",
                "summary": "Issue the run's own callback signing secret, once: for runs started by an "
                "upload (an HTTP start gets it in its 202). A second request is 409 "
                "CallbackSecretIssued; a run with no callback (or an app without "
                "CALLBACK_SIGNING_SECRET) is 409 NoCallbackSecret",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["id", "callback_secret"],
                            "properties": {"id": {"type": "string"}, "callback_secret": {"type": "string"}},
                        },
                        "The secret (64 hex characters); it is never given again",
                    ),
                    **_errors(400, 401, 404, 405, 409, 500),
                },
            },
        },
        "/runs/{id}/metrics": {
            "parameters": [_ID_PARAM],
            "get": {
                "operationId": "getRunMetrics",
                "summary": "The run's metrics series: each JSON-object line of its stdout is a record "
                "(numeric fields are values; epoch, else step, else the order is x)",
                "description": security_note
                + " Read by the monitor while the job runs, so the series grow pass by pass; see "
                "docs/run-spec.md for the convention.",
                "responses": {
                    "200": _json(_ref("RunMetrics"), "The series"),
                    **_errors(401, 404, 405, 500),
                },
            },
        },
        "/runs/{id}/resubmit": {
            "parameters": [_ID_PARAM],
            "post": {
                "operationId": "resubmitRun",
                "summary": "Start a new run with a finished run's spec (top-level fields replaced by "
                "overrides) on the same snapshot; for a sweep's parent, run its failed and cancelled "
                "trials again; 409 when the snapshot was cleaned up, the run is not finished, its "
                "inline secrets are needed, or it is a sweep's trial",
                "description": security_note
                + " With an Idempotency-Key header, the same key gives the same run. A sweep's parent"
                " is not copied: its failed and cancelled trials (not those its policy stopped early)"
                " get new attempts `<trial id>-rK` with the same parameters on the same snapshot, the"
                " parent goes back to `running` and is the answer, and it finishes again naming the best"
                " over the current attempts (its callback fires again); overrides are refused"
                " (409 SweepOverridesUnsupported), and 409 NothingToResubmit when no trial failed.",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                    }
                ],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "overrides": {
                                        "type": "object",
                                        "description": "Run spec fields that replace the run's",
                                    }
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "202": {
                        **_json(
                            _ref("StartedRun"),
                            "Accepted: the new run (a sweep: its parent); poll its Location",
                        ),
                        "headers": {
                            "Location": {"description": "The new run's URL", "schema": {"type": "string"}}
                        },
                    },
                    **_errors(400, 401, 404, 405, 409, 413, 415, 422, 500, 502, 503),
                },
            },
        },
        "/clusters": {
            "get": {
                "operationId": "listClusters",
                "summary": "Clusters of the workspace, with the active runs using each",
                "description": security_note,
                "responses": {
                    "200": _json(_ref("ClusterList"), "The clusters"),
                    **_errors(401, 405, 500, 502),
                },
            }
        },
        "/clusters/{name}": {
            "parameters": [_CLUSTER_PARAM],
            "delete": {
                "operationId": "deleteCluster",
                "summary": "Delete a cluster; 409 while active runs use it unless force=true",
                "description": security_note
                + " With force=true the active runs using it are cancelled first. Deletion is"
                " long-running: 202, and the cluster shows provisioning state 'deleting' until gone.",
                "parameters": [_bool_query("force", "Delete even while active runs use it")],
                "responses": {
                    "202": _json(_ref("ClusterDeleting"), "Deletion started"),
                    **_errors(400, 401, 404, 405, 409, 500, 502),
                },
            },
        },
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Liveness (anonymous): the app answers. No dependency is called and nothing "
                "about the deployment is named; the checks are GET /health/deep",
                "security": [],
                "responses": {
                    "200": _json(_ref("Liveness"), "The app answers"),
                    **_errors(405),
                },
            }
        },
        "/health/deep": {
            "get": {
                "operationId": "healthDeep",
                "summary": "Settings valid, storage and ARM reachable, the compute service available "
                "(function key). Cached for 30 s: a flood of requests costs one probe per 30 s per "
                "instance; `age_seconds` says how old the answer is. Messages are plain: no upstream text",
                "responses": {
                    "200": _json(_ref("Health"), "Every check passed"),
                    "503": _json(_ref("Health"), "A check failed; its message says which"),
                    **_errors(401, 405),
                },
            }
        },
        "/ui": {
            "get": {
                "operationId": "dashboard",
                "summary": "The dashboard page (anonymous; it holds no data: it asks for the function "
                "key, or takes ?code=, and calls this API with it)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    **_errors(405),
                },
            }
        },
        "/ui/{path}": {
            "parameters": [
                {
                    "name": "path",
                    "in": "path",
                    "required": True,
                    "description": "A file of the dashboard (script, style sheet, vendored library)",
                    "schema": {"type": "string"},
                }
            ],
            "get": {
                "operationId": "dashboardFile",
                "summary": "A file of the dashboard page (anonymous)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The file",
                        "content": {
                            "text/html": {"schema": {"type": "string"}},
                            "text/javascript": {"schema": {"type": "string"}},
                            "text/css": {"schema": {"type": "string"}},
                            "text/plain": {"schema": {"type": "string"}},
                        },
                    },
                    **_errors(404, 405),
                },
            },
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document (anonymous)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The OpenAPI 3 document",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **_errors(405),
                },
            }
        },
    }


@functools.lru_cache(maxsize=1)
def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Batch AI training runs",
            "version": API_VERSION,
            "description": "Start, watch and tear down Azure Batch AI training runs; list and delete "
            'clusters. Errors are {"error": {"code", "message", "details"}}.',
        },
        "servers": [{"url": "/api"}],
        "security": [{"functionKey": []}, {"functionKeyQuery": []}],
        "paths": _operations(),
        "components": {
            "securitySchemes": {
                "functionKey": {"type": "apiKey", "in": "header", "name": "x-functions-key"},
                "functionKeyQuery": {"type": "apiKey", "in": "query", "name": "code"},
            },
            "schemas": _schemas(),
        },
    }


def document(server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI document; `server_url` (e.g. "https://app.azurewebsites.net/api") replaces "/api"."""
    doc = copy.deepcopy(_document())
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
