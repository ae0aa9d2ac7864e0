"""The run registry: every training run's record in Azure Table storage, and its state machine.

Why Table storage: ETags give optimistic concurrency for free, so every state change is a
compare-and-swap (``MatchConditions.IfNotModified``); two functions racing on one run never both
win, and a replayed trigger (triggers are at-least-once) finds the state already moved and changes
nothing twice.

Layout (one table, default name ``runs``):

- ``PartitionKey=<run id>, RowKey="run"``: the run itself (state, times, job, cluster, exit code,
  errors, stdout tail, callback, ...). Large JSON fields (the effective spec, errors, the
  manifest's file list) are stored in chunks of at most ``CHUNK_CHARS`` characters
  (``spec_0``, ``spec_1``, ...) because a property holds at most 64 KiB (32 Ki UTF-16 chars); the
  entity as a whole stays well under the 1 MiB limit because each JSON field is capped at
  ``MAX_JSON_CHARS`` and the stdout tail at ``MAX_STDOUT_TAIL_CHARS``.
- ``PartitionKey=<run id>, RowKey="file~<sha256 of name>"``: one entity per staged file (name, size,
  MD5, blob ETag), so a dataset of thousands of files never approaches the entity limit; key by
  hash because blob names may hold characters Table keys forbid and may be longer than 1 KiB.
- ``PartitionKey=<run id>, RowKey="out~<sha256 of dir/name>"``: one entity per output file
  (directory id, name, size, download URL).
- ``PartitionKey=<run id>, RowKey="copy~<sha256 of name and blob ETag>"``: a copy claim
  (``claim_file_copy``): the delivery copying that blob version into the run's snapshot; while one
  is live and unfinished the run is not submitted (``copies_in_flight``).
- ``PartitionKey=<run id>, RowKey="metrics"``: the run's metrics series and how far its stdout has
  been read (``shared.metrics.MetricsState`` as chunked JSON), written by the monitor with an ETag
  match; the run entity keeps the latest value of each metric (``metrics``) and the read offset.
- ``PartitionKey="~dataset", RowKey=<sha256 of dataset>``: the dataset's current staging run
  (``claim_staging_run``): created with ``create_entity`` / swapped with an ETag match, so twenty
  blobs of one dataset arriving at once make exactly one run.
- ``PartitionKey="~idem", RowKey=<sha256 of key>``: idempotency keys of started runs.
- ``PartitionKey="~monitor", RowKey="clusters"``: when a monitor pass last listed the clusters.
- ``PartitionKey="~cluster", RowKey=<sha256 of cluster name>``: the cluster's node-time ledger
  (``ClusterLedger``), written by the monitor with an ETag match once per pass: overlapping passes
  never count the same minutes twice, and exactly one releases an idle cluster's nodes.

Run ids sort by creation time (``YYYYMMDD-HHMMSS-<8 hex>``), so paging lists runs oldest first.
``times`` maps each state entered to its ISO time, read back in chronological order. A finished run
whose callback is still owed has ``callback_pending`` (queried by ``iter_pending_callbacks``).
Logs carry run id, dataset and state; a record never holds a secret: callers store the spec as
``RunSpec.to_json_dict()`` shows it, secret values masked.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.data.tables import TableClient, UpdateMode

from shared.run_states import (
    ACTIVE_STATES as ACTIVE_STATES,
)
from shared.run_states import (
    CANCELLED as CANCELLED,
)
from shared.run_states import (
    FAILED as FAILED,
)
from shared.run_states import (
    PROVISIONING as PROVISIONING,
)
from shared.run_states import (
    QUEUED as QUEUED,
)
from shared.run_states import (
    RUNNING as RUNNING,
)
from shared.run_states import (
    STAGING as STAGING,
)
from shared.run_states import (
    STATES as STATES,
)
from shared.run_states import (
    SUBMITTED_STATES as SUBMITTED_STATES,
)
from shared.run_states import (
    SUCCEEDED as SUCCEEDED,
)
from shared.run_states import (
    TERMINAL_STATES as TERMINAL_STATES,
)
from shared.times import parse_time as parse_time
from shared.times import utcnow as utcnow

log = logging.getLogger(__name__)

# --- states (declared in shared.run_states; imported from here too) ---------------------------------

# The explicit table of allowed transitions. Forward skips are allowed because the monitor polls:
# a job can go from queued to succeeded between two polls. A cluster that finishes resizing and then
# needs to resize again (auto-scale) may take a queued run back to provisioning. Terminal states
# have no way out.
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    STAGING: frozenset({PROVISIONING, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED}),
    PROVISIONING: frozenset({QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED}),
    QUEUED: frozenset({PROVISIONING, RUNNING, SUCCEEDED, FAILED, CANCELLED}),
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}

# --- limits ----------------------------------------------------------------------------------------
CHUNK_CHARS = 30_000  # 60 KB in UTF-16: under the 64 KiB property limit
MAX_JSON_CHARS = 256_000  # per JSON field (spec, errors, expected files): keeps the entity < 1 MiB
MAX_STDOUT_TAIL_CHARS = 16_000
MAX_ERRORS = 50
MAX_ERROR_MESSAGE_CHARS = 4_000
RUN_ROW = "run"
METRICS_ROW = "metrics"
FILE_PREFIX = "file~"
WANT_PREFIX = "want~"
OUTPUT_PREFIX = "out~"
COPY_PREFIX = "copy~"  # one per (file, blob version) a delivery copies into the run's snapshot
# A copy claim's holder renews it while it copies; one not renewed for COPY_CLAIM_STALE_SECONDS is
# taken as its holder's death (a host killed mid-copy), and a waiting delivery takes the copy over.
COPY_CLAIM_RENEW_SECONDS = 4.0
COPY_CLAIM_STALE_SECONDS = 20.0
DATASET_PARTITION = "~dataset"
IDEMPOTENCY_PARTITION = "~idem"
CLUSTER_PARTITION = "~cluster"
MONITOR_PARTITION = "~monitor"  # RowKey "clusters": when a monitor pass last listed the clusters
MAX_LEDGER_RUNS = 200  # runs whose node time one cluster's ledger follows at once
CAS_ATTEMPTS = 20
# A run's file lists (what it requires, what it staged) are one entity per file; their names together
# may hold at most this many UTF-8 bytes, and a run over it fails at once with FileListTooLarge.
MAX_FILE_LIST_BYTES = 8 * 1024 * 1024
MAX_FILE_LIST_FILES = 100_000

# Fields of RunRecord stored as chunked JSON, and plain scalar fields stored as they are.
_JSON_FIELDS = ("spec", "errors", "callback", "metrics", "callback_seal", "node_minutes", "sweep")
_SCALAR_FIELDS = (
    "dataset",
    "state",
    "created_at",
    "updated_at",
    "job_id",
    "job_name",
    "experiment",
    "workspace",
    "resource_group",
    "cluster",
    "cluster_id",
    "exit_code",
    "stdout_tail",
    "callback_url",
    "idempotency_key",
    "source",
    "stage_from_prefix",
    "manifest_etag",
    "staging_deadline",
    "submitted_at",
    "callback_pending",
    "metrics_offset",
    "want_version",
    "want_count",
    "dataset_key",
    "snapshot",
    "parent_id",
)


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (bad input, limits); the message says why."""


class RunNotFound(RegistryError, KeyError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} not found")
        self.run_id = run_id

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class TransitionRejected(RegistryError):
    """The run is not in a state this transition starts from (someone else moved it first, or the
    transition is not in ``ALLOWED_TRANSITIONS``). ``current`` is the record as it is now."""

    def __init__(self, message: str, current: RunRecord) -> None:
        super().__init__(message)
        self.current = current


class FileListTooLarge(RegistryError):
    """A run's file list is over the documented limit (MAX_FILE_LIST_BYTES of names, or
    MAX_FILE_LIST_FILES files): the run fails at once with this error (code ``FileListTooLarge``)."""

    code = "FileListTooLarge"


def check_file_list(names: Iterable[str], what: str = "the run's file list") -> None:
    """FileListTooLarge when ``names`` exceed the limits a run's file lists are stored under."""
    count = total = 0
    for name in names:
        count += 1
        total += len(name.encode("utf-8"))
    if count > MAX_FILE_LIST_FILES or total > MAX_FILE_LIST_BYTES:
        raise FileListTooLarge(
            f"{what} has {count} files whose names take {total} bytes; a run takes at most "
            f"{MAX_FILE_LIST_FILES} files and {MAX_FILE_LIST_BYTES} bytes of names: split the dataset, "
            "or list the files it needs in run.json's 'files'"
        )


class ConcurrencyError(RegistryError):
    """Too many concurrent writers: the compare-and-swap kept losing."""


@dataclass(frozen=True)
class StagedFile:
    name: str  # relative path inside the dataset
    size: int
    md5: str | None = None  # base64, as Azure reports Content-MD5
    etag: str | None = None  # the source blob's ETag when it was staged
    staged_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class OutputFile:
    directory_id: str  # "stdouterr", "MODEL", or a declared output directory id
    name: str
    size: int | None = None
    download_url: str | None = None
    is_directory: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunError:
    """One entry of a run's ``errors``: what went wrong (``code``, ``message``) and when. Stored as
    ``{"code", "message", "time", **details}``; ``details`` carries what some errors add (the blob a
    staging error names, a spec's field errors, a cluster's own errors, missing files)."""

    code: str
    message: str
    time: str = field(default_factory=utcnow)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "time": self.time, **self.details}


@dataclass
class RunRecord:
    """One run as the registry holds it. ``times`` maps each state entered to its ISO time."""

    run_id: str
    dataset: str
    state: str = STAGING
    spec: dict[str, Any] | None = None
    times: dict[str, str] = field(default_factory=dict)
    created_at: str | None = None
    updated_at: str | None = None
    job_id: str | None = None  # full ARM resource id of the Batch AI job
    job_name: str | None = None
    experiment: str | None = None
    workspace: str | None = None
    resource_group: str | None = None
    cluster: str | None = None  # cluster name
    cluster_id: str | None = None  # full ARM resource id of the cluster
    exit_code: int | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    expected_files: list[str] | None = None  # what the manifest requires (None: not known yet)
    stdout_tail: str | None = None
    callback_url: str | None = None  # query values redacted (shared.callbacks.redact_url)
    callback: dict[str, Any] | None = None  # delivery status: {"status", "attempts", "time", ...}
    # The salt of the run's callback secret and the full URL sealed (shared.callbacks.seal_callback):
    # never returned by the API.
    callback_seal: dict[str, Any] | None = None
    idempotency_key: str | None = None
    source: str | None = None  # "blob" (ingest) or "api"
    stage_from_prefix: str | None = None
    manifest_etag: str | None = None  # ETag of the run.json blob this run's spec came from
    staging_deadline: str | None = None
    submitted_at: str | None = None  # when the job was created in Batch AI
    callback_pending: bool | None = None  # a terminal run whose callback is not delivered yet
    # The latest value of each metric ({name: {"x", "value", "time"}}; the series are apart, see
    # ``get_metrics``) and how many stdout bytes the monitor has read for them.
    metrics: dict[str, Any] | None = None
    metrics_offset: int | None = None
    # The share directory holding the run's snapshot (``_snapshots/<run id>``: its job's input, which
    # nothing changes once the job is submitted); None for runs recorded before snapshots, which
    # read the dataset's shared directory.
    snapshot: str | None = None
    # Where expected_files is stored: the version of its entities (``want~<version>~...``) and their
    # count. Bookkeeping of the registry, not shown by the API.
    want_version: str | None = None
    want_count: int | None = None
    # The dataset's identity where it meets the share (Azure Files ignores case): ``dataset_key()``.
    dataset_key: str | None = None
    # Node-minutes its cluster was allocated while the run was active (``active``) and after it
    # ended until the nodes were released or another run started (``after``), from the node counts
    # the monitor reads each pass (shared.monitor, "node time"); ``cluster`` names the cluster.
    node_minutes: dict[str, Any] | None = None
    # Sweeps (shared.sweep_runs): a trial names its parent run; ``sweep`` is, on a parent, its trial
    # count and, once finished, the best trial; on a trial, its index and parameters.
    parent_id: str | None = None
    sweep: dict[str, Any] | None = None
    staged_files: list[StagedFile] = field(default_factory=list)
    output_files: list[OutputFile] = field(default_factory=list)
    etag: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def staged(self, name: str) -> StagedFile | None:
        return next((f for f in self.staged_files if f.name == name), None)

    def snapshot_summary(self) -> dict[str, Any] | None:
        """Where the run's snapshot is and what it holds (count and bytes of ``staged_files``)."""
        if self.snapshot is None:
            return None
        return {
            "path": self.snapshot,
            "file_count": len(self.staged_files),
            "total_bytes": sum(int(f.size) for f in self.staged_files),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (what the HTTP API returns), without the callback's seal: ``snapshot``
        says where the run's input is and how much it holds; ``staged_files`` lists it (path, size,
        MD5, source blob ETag). The callback URL's query is redacted even in a record written before
        URLs were stored redacted."""
        from shared.callbacks import redact_url

        out = dataclasses.asdict(self)
        out["id"] = out.pop("run_id")
        out.pop("callback_seal", None)
        out.pop("want_version", None)
        out.pop("want_count", None)
        out.pop("dataset_key", None)
        out["callback_url"] = redact_url(out.get("callback_url"))
        if isinstance(out.get("spec"), dict) and out["spec"].get("callback_url"):
            out["spec"]["callback_url"] = redact_url(out["spec"]["callback_url"])
        out["snapshot"] = self.snapshot_summary()
        return out

    def log_extra(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "dataset": self.dataset, "state": self.state}


# --- helpers ---------------------------------------------------------------------------------------
@dataclass
class ClusterLedger:
    """A cluster's node time as the monitor samples it, one entity per cluster.

    ``node_minutes`` adds up, pass after pass, the nodes seen at the previous pass times the time
    since it (``nodes``, ``sampled_at``). ``busy_until`` is the last time the cluster was known in
    use: a pass that saw an active run on it or a running node, or the end of its last run;
    ``released_at`` when the monitor last released its nodes. ``active_marks`` maps each active run
    on the cluster to ``node_minutes`` when it was first seen active, ``after_marks`` each run that
    ended since to ``node_minutes`` at its end (its node time "after" accrues until the nodes are
    released or another run starts)."""

    name: str
    sampled_at: str | None = None
    nodes: int = 0
    node_minutes: float = 0.0
    busy_until: str | None = None
    released_at: str | None = None
    active_marks: dict[str, float] = field(default_factory=dict)
    after_marks: dict[str, float] = field(default_factory=dict)
    etag: str | None = None

    def to_entity(self) -> dict[str, Any]:
        entity: dict[str, Any] = {
            "PartitionKey": CLUSTER_PARTITION,
            "RowKey": _key_hash(self.name),
            "name": self.name,
            "nodes": int(self.nodes),
            "node_minutes": float(self.node_minutes),
            "marks": json.dumps(
                {
                    "active": dict(list(self.active_marks.items())[-MAX_LEDGER_RUNS:]),
                    "after": dict(list(self.after_marks.items())[-MAX_LEDGER_RUNS:]),
                },
                separators=(",", ":"),
            ),
        }
        for name in ("sampled_at", "busy_until", "released_at"):
            if getattr(self, name) is not None:
                entity[name] = getattr(self, name)
        return entity

    @classmethod
    def from_entity(cls, entity: Any) -> ClusterLedger:
        marks = json.loads(entity.get("marks") or "{}")
        return cls(
            name=entity["name"],
            sampled_at=entity.get("sampled_at"),
            nodes=int(getattr(entity.get("nodes"), "value", entity.get("nodes")) or 0),
            node_minutes=float(entity.get("node_minutes") or 0.0),
            busy_until=entity.get("busy_until"),
            released_at=entity.get("released_at"),
            active_marks=dict(marks.get("active") or {}),
            after_marks=dict(marks.get("after") or {}),
            etag=entity.metadata.get("etag") if hasattr(entity, "metadata") else None,
        )


def _modified_meanwhile(exc: HttpResponseError) -> bool:
    """A conditional write lost its race: the entity changed since it was read (412)."""
    return isinstance(exc, ResourceModifiedError) or exc.status_code == 412


def dataset_key(dataset: str) -> str:
    """A dataset's identity where it meets the file share: Azure Files compares names ignoring case."""
    return dataset.casefold()


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


SNAPSHOT_ROOT = "_snapshots"  # not a dataset name: those start with a letter or digit


def snapshot_dir(run_id: str) -> str:
    """The share directory holding run ``run_id``'s snapshot: its job's input, and only its."""
    if not run_id or not all(c.isascii() and (c.isalnum() or c == "-") for c in run_id) or len(run_id) > 80:
        raise RegistryError(f"run id {run_id!r} cannot name a snapshot directory")
    return f"{SNAPSHOT_ROOT}/{run_id}"


def _key_hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:48]


def _copy_row(name: str, etag: str | None) -> str:
    """The RowKey of the copy claim on blob version ``etag`` of ``name``."""
    return COPY_PREFIX + _key_hash(f"{name}\n{etag or ''}")


def _encode_token(token: Any) -> str | None:
    if not token:
        return None
    return base64.urlsafe_b64encode(json.dumps(token, sort_keys=True).encode()).decode().rstrip("=")


def _decode_token(token: str | None) -> Any:
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()).decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise RegistryError(f"continuation token {token[:40]!r} is malformed") from exc
    if not isinstance(value, dict):
        raise RegistryError(f"continuation token {token[:40]!r} is malformed")
    return value


def _odata_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _chunks(name: str, text: str) -> dict[str, str]:
    if len(text) > MAX_JSON_CHARS:
        raise RegistryError(
            f"run field {name!r} is {len(text)} characters of JSON; the registry keeps at most "
            f"{MAX_JSON_CHARS} (Table storage entities are limited to 1 MiB)"
        )
    parts = [text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)] or [""]
    out = {f"{name}_{i}": part for i, part in enumerate(parts)}
    out[f"{name}_n"] = len(parts)  # type: ignore[assignment]
    return out


def _unchunk(entity: dict[str, Any], name: str) -> Any:
    count = entity.get(f"{name}_n")
    if not count:
        return None
    text = "".join(entity.get(f"{name}_{i}", "") for i in range(int(count)))
    return json.loads(text) if text else None


def _bound_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    bounded = []
    for err in errors[-MAX_ERRORS:]:
        err = dict(err)
        if isinstance(err.get("message"), str) and len(err["message"]) > MAX_ERROR_MESSAGE_CHARS:
            err["message"] = err["message"][:MAX_ERROR_MESSAGE_CHARS] + "..."
        bounded.append(err)
    return bounded


def _to_entity(rec: RunRecord) -> dict[str, Any]:
    entity: dict[str, Any] = {"PartitionKey": rec.run_id, "RowKey": RUN_ROW}
    for name in _SCALAR_FIELDS:
        value = getattr(rec, name)
        if name == "stdout_tail" and value is not None and len(value) > MAX_STDOUT_TAIL_CHARS:
            value = value[-MAX_STDOUT_TAIL_CHARS:]
        if value is not None:
            entity[name] = value
    for state, when in rec.times.items():
        entity[f"t_{state}"] = when
    for name in _JSON_FIELDS:
        value = getattr(rec, name)
        if name == "errors":
            value = _bound_errors(value or [])
        if value is not None:
            entity.update(_chunks(name, json.dumps(value, separators=(",", ":"), sort_keys=True)))
    return entity


def _from_entity(entity: dict[str, Any]) -> RunRecord:
    kwargs: dict[str, Any] = {name: entity.get(name) for name in _SCALAR_FIELDS}
    for name in _JSON_FIELDS:
        kwargs[name] = _unchunk(entity, name)
    # Records written before file lists were entities hold expected_files inline: read it; the next
    # write moves it to entities (no want_version yet).
    kwargs["expected_files"] = _unchunk(entity, "expected_files") if kwargs["want_version"] is None else None
    kwargs["errors"] = kwargs["errors"] or []
    for name in ("exit_code", "metrics_offset", "want_count"):
        if kwargs[name] is not None:  # an Int64 property comes back as an EntityProperty
            kwargs[name] = int(getattr(kwargs[name], "value", kwargs[name]))
    times = {k[2:]: v for k, v in entity.items() if k.startswith("t_") and k[2:] in STATES}
    times = dict(sorted(times.items(), key=lambda kv: (kv[1], STATES.index(kv[0]))))  # chronological
    rec = RunRecord(run_id=entity["PartitionKey"], times=times, **kwargs)
    rec.etag = entity.metadata.get("etag") if hasattr(entity, "metadata") else None
    return rec


def _want_entities(run_id: str, version: str, names: list[str]) -> list[dict[str, Any]]:
    return [
        {"PartitionKey": run_id, "RowKey": f"{WANT_PREFIX}{version}~{_key_hash(name)}", "name": name, "i": i}
        for i, name in enumerate(names)
    ]


def _file_entity(run_id: str, f: StagedFile) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": run_id,
        "RowKey": FILE_PREFIX + _key_hash(f.name),
        "name": f.name,
    }
    entity["size"] = int(f.size)
    for key in ("md5", "etag", "staged_at"):
        value = getattr(f, key)
        if value is not None:
            entity[key] = value
    return entity


def _output_entity(run_id: str, o: OutputFile) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": run_id,
        "RowKey": OUTPUT_PREFIX + _key_hash(f"{o.directory_id}/{o.name}"),
        "directory_id": o.directory_id,
        "name": o.name,
        "is_directory": bool(o.is_directory),
    }
    if o.size is not None:
        entity["size"] = int(o.size)
    if o.download_url is not None:
        if len(o.download_url) > CHUNK_CHARS:
            raise RegistryError(f"download URL of output {o.name!r} is too long to record")
        entity["download_url"] = o.download_url
    return entity


# --- the registry ----------------------------------------------------------------------------------
TRANSIENT_ATTEMPTS = 4  # tries of one table call whose connection failed (0.1, 0.2, 0.4 s apart)
_PAGED_CALLS = frozenset({"query_entities", "list_entities"})  # GETs: azure-core retries their pages


class _TransientRetryingTable:
    """The registry's table client, each call tried again (bounded) when its connection failed.

    Why: azure-core retries a connection reset only for GET, PUT, DELETE and HEAD; an insert or a
    batch (POST) or a merge (PATCH) whose kept-alive connection the server reset raises, and an
    HTTP start answered 503 for it. Every registry call is safe to repeat: an insert that did take
    effect answers 409 the second time, which each caller reads back and recognises as its own (a
    run by its id, an idempotency key by its run id, a copy claim by its token, a dataset pointer by
    its run id); upserts, batches of upserts and deletes are idempotent; a conditional update that
    did take effect answers 412 and its compare-and-swap reads the entity again."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._table, name)
        if name.startswith("_") or name in _PAGED_CALLS or not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            for attempt in range(TRANSIENT_ATTEMPTS):
                try:
                    return attr(*args, **kwargs)
                except (ServiceRequestError, ServiceResponseError) as exc:
                    if attempt == TRANSIENT_ATTEMPTS - 1:
                        raise
                    log.warning("run registry: %s failed (%s); trying again", name, str(exc).splitlines()[0])
                    time.sleep(0.1 * 2**attempt)
            raise AssertionError("unreachable")

        return call


class RunRegistry:
    """Run records in one Azure Table. Thread-safe (the SDK client is), safe across processes."""

    #: How long a request waits for the run of an idempotency key another request holds before it
    #: takes the key over (its holder died between writing the key and the run).
    #: Long enough for the holder to claim its folder and write its run under a burst of requests.
    idempotency_wait_seconds = 30.0
    #: How long a claim keeps trying to swap a dataset's pointer while concurrent claims win (each
    #: round has a winner, so a burst of N claims needs about N rounds; a fixed count ran out).
    claim_seconds = 30.0

    def __init__(self, table: TableClient | str, table_name: str = "runs", *, create_table: bool = True):
        """``table``: a ``TableClient``, or a storage connection string (then ``table_name`` names
        the table). The table is created on first use when ``create_table``."""
        client = (
            table
            if isinstance(table, TableClient)
            else TableClient.from_connection_string(table, table_name=table_name)
        )
        self.table: Any = _TransientRetryingTable(client)
        self._create_table = create_table
        self._table_ready = not create_table

    # --- plumbing --------------------------------------------------------------------------------
    def _ensure_table(self) -> None:
        if self._table_ready:
            return
        with contextlib.suppress(ResourceExistsError):
            self.table.create_table()
        self._table_ready = True

    def _get_run_entity(self, run_id: str) -> Any:
        self._ensure_table()
        try:
            return self.table.get_entity(partition_key=run_id, row_key=RUN_ROW)
        except ResourceNotFoundError:
            raise RunNotFound(run_id) from None

    # --- reads -----------------------------------------------------------------------------------
    def get(self, run_id: str, *, with_files: bool = True) -> RunRecord:
        """The full record: the run entity plus its staged and output file entities."""
        if not run_id or any(c in run_id for c in "/\\#?'") or len(run_id) > 200:
            raise RunNotFound(run_id)
        self._ensure_table()
        if not with_files:
            return _from_entity(self._get_run_entity(run_id))
        rec: RunRecord | None = None
        staged: list[StagedFile] = []
        outputs: list[OutputFile] = []
        wanted: dict[str, list[tuple[int, str]]] = {}
        query = f"PartitionKey eq {_odata_str(run_id)} and RowKey ne {_odata_str(METRICS_ROW)}"
        for entity in self.table.query_entities(query):
            row = entity["RowKey"]
            if row == RUN_ROW:
                rec = _from_entity(entity)
            elif row.startswith(WANT_PREFIX):
                version = row[len(WANT_PREFIX) :].split("~", 1)[0]
                wanted.setdefault(version, []).append((int(entity.get("i", 0)), entity["name"]))
            elif row.startswith(FILE_PREFIX):
                staged.append(
                    StagedFile(
                        name=entity["name"],
                        size=int(entity.get("size", 0)),
                        md5=entity.get("md5"),
                        etag=entity.get("etag"),
                        staged_at=entity.get("staged_at"),
                    )
                )
            elif row.startswith(OUTPUT_PREFIX):
                outputs.append(
                    OutputFile(
                        directory_id=entity["directory_id"],
                        name=entity["name"],
                        size=int(entity["size"]) if entity.get("size") is not None else None,
                        download_url=entity.get("download_url"),
                        is_directory=bool(entity.get("is_directory", False)),
                    )
                )
        if rec is None:
            raise RunNotFound(run_id)
        if rec.want_version is not None:
            rec.expected_files = [name for _, name in sorted(wanted.get(rec.want_version, []))]
        rec.staged_files = sorted(staged, key=lambda f: f.name)
        rec.output_files = sorted(outputs, key=lambda o: (o.directory_id, o.name))
        return rec

    def list_runs(
        self,
        state: str | Iterable[str] | None = None,
        dataset: str | None = None,
        page_size: int = 100,
        continuation: str | None = None,
        parent: str | None = None,
    ) -> tuple[list[RunRecord], str | None]:
        """One page of runs (oldest first), filtered by state(s), dataset and parent run (a sweep's
        trials); records come without
        their staged/output file lists (use ``get`` for those). Returns ``(records, next_token)``;
        ``next_token`` is None on the last page."""
        if not 1 <= page_size <= 1000:
            raise RegistryError(f"page_size must be between 1 and 1000, got {page_size}")
        states = [state] if isinstance(state, str) else list(state or [])
        for s in states:
            if s not in STATES:
                raise RegistryError(f"unknown state {s!r}; states are {', '.join(STATES)}")
        self._ensure_table()
        query = f"RowKey eq {_odata_str(RUN_ROW)}"
        if states:
            query += " and (" + " or ".join(f"state eq {_odata_str(s)}" for s in states) + ")"
        if dataset is not None:
            query += f" and dataset eq {_odata_str(dataset)}"
        if parent is not None:
            query += f" and parent_id eq {_odata_str(parent)}"
        pages = self.table.query_entities(query, results_per_page=page_size).by_page(
            continuation_token=_decode_token(continuation)
        )
        # A filtered query may return an empty page with a continuation: follow it until rows come.
        records: list[RunRecord] = []
        token: Any = None
        for page in pages:
            records = [_from_entity(e) for e in page]
            token = pages.continuation_token
            if records or not token:
                break
        return records, _encode_token(token)

    def iter_runs_of_dataset(self, dataset: str) -> Iterator[RunRecord]:
        """Every run of ``dataset`` under any spelling of its name that differs only in case (as the
        share sees it), plus runs recorded before ``dataset_key`` existed under this exact spelling."""
        seen: set[str] = set()
        query = f"RowKey eq {_odata_str(RUN_ROW)} and dataset_key eq {_odata_str(dataset_key(dataset))}"
        self._ensure_table()
        for entity in self.table.query_entities(query, results_per_page=500):
            rec = _from_entity(entity)
            seen.add(rec.run_id)
            yield rec
        for rec in self.iter_runs(dataset=dataset):
            if rec.run_id not in seen:
                yield rec

    def iter_runs(
        self, state: str | Iterable[str] | None = None, dataset: str | None = None, page_size: int = 500
    ) -> Iterator[RunRecord]:
        """Every run matching the filters, page by page (without file lists)."""
        token: str | None = None
        while True:
            records, token = self.list_runs(state, dataset, page_size, token)
            yield from records
            if not token:
                return

    def find_by_idempotency_key(self, key: str) -> RunRecord | None:
        self._ensure_table()
        try:
            entity = self.table.get_entity(IDEMPOTENCY_PARTITION, _key_hash(key))
        except ResourceNotFoundError:
            return None
        try:
            return self.get(entity["run_id"])
        except RunNotFound:
            return None

    # --- writes ----------------------------------------------------------------------------------
    def create(
        self,
        dataset: str,
        *,
        run_id: str | None = None,
        state: str = STAGING,
        spec: dict[str, Any] | None = None,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
        source: str | None = None,
        key_reserved: bool = False,
        **fields: Any,
    ) -> RunRecord:
        """Insert a new run. With an ``idempotency_key`` already used, returns that key's run
        unchanged instead (the caller compares specs if it cares). With a ``run_id`` that exists,
        returns the existing run (creation is idempotent per id). ``key_reserved``: the caller
        reserved the key for ``run_id`` already (``reserve_idempotency_key``)."""
        if not dataset:
            raise RegistryError("a run needs a dataset name")
        if state not in STATES:
            raise RegistryError(f"unknown state {state!r}")
        self._ensure_table()
        run_id = run_id or new_run_id()
        if idempotency_key and not key_reserved:
            try:
                self.table.create_entity(
                    {
                        "PartitionKey": IDEMPOTENCY_PARTITION,
                        "RowKey": _key_hash(idempotency_key),
                        "run_id": run_id,
                    }
                )
            except ResourceExistsError:
                existing = self._claim_idempotency_key(idempotency_key, run_id)
                if existing is not None:
                    return existing
        now = utcnow()
        rec = RunRecord(
            run_id=run_id,
            dataset=dataset,
            state=state,
            spec=spec,
            times={state: now},
            created_at=now,
            updated_at=now,
            callback_url=callback_url,
            idempotency_key=idempotency_key,
            source=source,
            snapshot=snapshot_dir(run_id),
            dataset_key=dataset_key(dataset),
        )
        for key, value in fields.items():
            if key not in {f.name for f in dataclasses.fields(RunRecord)} or key in {"etag", "run_id"}:
                raise RegistryError(f"unknown run field {key!r}")
            setattr(rec, key, value)
        if rec.expected_files is not None:
            self._write_wanted(rec)
        entity = _to_entity(rec)
        try:
            meta = self.table.create_entity(entity)
        except ResourceExistsError:
            existing = self.get(run_id)  # created by another caller, or this one's insert tried again
            if rec.staged_files and not existing.staged_files:
                self.add_staged_files(run_id, rec.staged_files)
                existing.staged_files = list(rec.staged_files)
            return existing
        rec.etag = meta.get("etag")
        if rec.staged_files:
            self.add_staged_files(run_id, rec.staged_files)
        log.info("run %s created for dataset %s in state %s", run_id, dataset, state, extra=rec.log_extra())
        return rec

    def reserve_idempotency_key(self, key: str, run_id: str) -> RunRecord | None:
        """Make ``key`` name ``run_id`` before that run exists: None when this caller now holds the
        key (it creates the run), else the key's run made by another request (waited for). Requests
        repeating one key at once thus make exactly one run, and only its holder stages it."""
        self._ensure_table()
        entity = {"PartitionKey": IDEMPOTENCY_PARTITION, "RowKey": _key_hash(key), "run_id": run_id}
        try:
            self.table.create_entity(entity)
            return None
        except ResourceExistsError:
            return self._claim_idempotency_key(key, run_id)

    def point_idempotency_key(self, key: str, run_id: str) -> None:
        """Make a key this caller holds name another run (the run it adopted instead of creating)."""
        entity = {"PartitionKey": IDEMPOTENCY_PARTITION, "RowKey": _key_hash(key), "run_id": run_id}
        self.table.upsert_entity(entity, mode=UpdateMode.REPLACE)

    def _claim_idempotency_key(self, key: str, run_id: str) -> RunRecord | None:
        """The key is taken: wait a moment for its holder's run and return it. When none appears,
        the holder died between writing the key and the run: take the key over for ``run_id`` by
        compare-and-swap on the key's ETag (of requests taking it over at once, exactly one wins;
        the others wait for its run) and return None."""
        held_by: str | None = None
        deadline = 0.0
        while True:
            entity = {"PartitionKey": IDEMPOTENCY_PARTITION, "RowKey": _key_hash(key), "run_id": run_id}
            try:
                current = self.table.get_entity(IDEMPOTENCY_PARTITION, _key_hash(key))
            except ResourceNotFoundError:
                try:
                    self.table.create_entity(entity)
                    return None
                except ResourceExistsError:
                    continue
            holder: str = current["run_id"]
            if holder == run_id:
                return None  # this caller's own insert, whose answer was lost and which it tried again
            if holder != held_by:  # a new holder: give it the whole wait
                held_by, deadline = holder, time.monotonic() + self.idempotency_wait_seconds
            with contextlib.suppress(RunNotFound):
                return self.get(holder)
            if time.monotonic() >= deadline:
                try:
                    self.table.update_entity(
                        entity,
                        mode=UpdateMode.REPLACE,
                        etag=current.metadata["etag"],
                        match_condition=MatchConditions.IfNotModified,
                    )
                    return None
                except HttpResponseError as exc:
                    if not (_modified_meanwhile(exc)):
                        raise
                    continue  # another request took it over first: wait for its run
            # A burst of requests repeating one key all wait here: poll gently, out of step.
            time.sleep(0.2 + secrets.randbelow(200) / 1000)

    def transition(
        self,
        run_id: str,
        to_state: str,
        expected_from: str | Iterable[str] | None = None,
        *,
        current: RunRecord | None = None,
        guard: Callable[[RunRecord], Any] | None = None,
        error: RunError | None = None,
        at: str | None = None,
        earlier_times: dict[str, str] | None = None,
        **changes: Any,
    ) -> RunRecord:
        """Move a run to ``to_state`` if it is now in ``expected_from`` (default: any state the
        transition table allows), applying ``changes`` (run fields) in the same write. A
        compare-and-swap on the ETag: of two racing callers exactly one wins; the other (and every
        replay) gets ``TransitionRejected`` with the record as it now is. ``current``: the run as
        the caller last read or wrote it (with its ETag), tried first without reading it again (see
        ``_cas``). ``guard(run)``: called on the run as written against, first; it may raise to
        abort (a condition beyond the state).

        What entering a state also does is done here, not by callers: the state's time is recorded
        (``at``, default now; ``earlier_times``: states passed between two polls, never
        overwriting), ``error`` is appended to the run's errors, and entering a terminal state marks
        a run with a callback as owing it (``callback_pending``, delivered by the monitor)."""
        if to_state not in STATES:
            raise RegistryError(f"unknown state {to_state!r}; states are {', '.join(STATES)}")
        expected = (
            {expected_from}
            if isinstance(expected_from, str)
            else set(expected_from)
            if expected_from is not None
            else {s for s, targets in ALLOWED_TRANSITIONS.items() if to_state in targets}
        )
        if "state" in changes:
            raise RegistryError("change the state with transition's to_state, not a field")

        def mutate(rec: RunRecord) -> None:
            if guard is not None:
                guard(rec)
            if rec.state not in expected or to_state not in ALLOWED_TRANSITIONS[rec.state]:
                why = "is not allowed" if to_state not in ALLOWED_TRANSITIONS[rec.state] else "not expected"
                raise TransitionRejected(
                    f"run {rec.run_id} is {rec.state}; {rec.state} -> {to_state} {why}"
                    f" (expected from {', '.join(sorted(expected))})",
                    rec,
                )
            _apply(rec, changes, error)
            if earlier_times:
                rec.times = {**earlier_times, **rec.times}
            rec.state = to_state
            rec.times[to_state] = at or utcnow()
            if to_state in TERMINAL_STATES and rec.callback_url:
                rec.callback_pending = True

        rec = self._cas(run_id, mutate, current)
        log.info("run %s -> %s", run_id, to_state, extra=rec.log_extra())
        return rec

    def fail(
        self,
        run_id: str,
        error: RunError,
        expected_from: str | Iterable[str] = ACTIVE_STATES,
        *,
        current: RunRecord | None = None,
        guard: Callable[[RunRecord], Any] | None = None,
        **changes: Any,
    ) -> RunRecord:
        """Fail a run with ``error``: the one way a run fails (``transition`` to ``failed``, so its
        callback is owed and the error recorded in the same write)."""
        return self.transition(
            run_id, FAILED, expected_from, current=current, guard=guard, error=error, **changes
        )

    def reopen(
        self,
        run_id: str,
        *,
        current: RunRecord | None = None,
        guard: Callable[[RunRecord], Any] | None = None,
        **changes: Any,
    ) -> RunRecord:
        """Take a finished sweep parent back to ``running`` (resubmitting its failed trials, see
        ``shared.sweep_runs.resubmit``): the one way out of a terminal state, and only for a run
        whose ``sweep`` says it is a parent; an ordinary run is resubmitted as a new run instead.
        A compare-and-swap like ``transition``: of two callers exactly one wins, the other gets
        ``TransitionRejected``. The finished states' times are dropped from ``times`` (the caller
        keeps them in the sweep's history); ``callback`` and ``callback_pending`` are reset, so the
        parent's next finish sends its callback again."""
        if "state" in changes:
            raise RegistryError("reopen() sets the state itself")

        def mutate(rec: RunRecord) -> None:
            if guard is not None:
                guard(rec)
            if rec.state not in TERMINAL_STATES or (rec.sweep or {}).get("role") != "parent" or rec.parent_id:
                raise TransitionRejected(
                    f"run {rec.run_id} is {rec.state}; only a finished sweep parent can be reopened", rec
                )
            _apply(rec, changes)
            rec.state = RUNNING
            rec.times = {s: t for s, t in rec.times.items() if s not in TERMINAL_STATES}
            rec.times[RUNNING] = utcnow()
            rec.callback = None
            rec.callback_pending = False

        rec = self._cas(run_id, mutate, current)
        log.info("run %s reopened -> %s", run_id, RUNNING, extra=rec.log_extra())
        return rec

    def update(
        self,
        run_id: str,
        mutate: Callable[[RunRecord], Any] | None = None,
        *,
        expected_state: str | Iterable[str] | None = None,
        current: RunRecord | None = None,
        error: RunError | None = None,
        **changes: Any,
    ) -> RunRecord:
        """Change fields of a run (not its state) with compare-and-swap retries: read, apply
        ``changes``, append ``error`` and/or call ``mutate(record)`` (which edits the record in
        place; it may raise to abort, and is called again on each retry), write with the ETag,
        repeat on a lost race. With ``expected_state``, a run in another state raises ``TransitionRejected``.
        ``current``: the run as the caller last read or wrote it (with its ETag), tried first
        without reading it again (see ``_cas``)."""
        if "state" in changes:
            raise RegistryError("change the state with transition(), not update()")
        expected = {expected_state} if isinstance(expected_state, str) else set(expected_state or [])

        def apply(rec: RunRecord) -> None:
            if expected and rec.state not in expected:
                raise TransitionRejected(
                    f"run {rec.run_id} is {rec.state}, expected {', '.join(sorted(expected))}", rec
                )
            before = rec.state
            _apply(rec, changes, error)
            if mutate is not None:
                mutate(rec)
            if rec.state != before:
                raise RegistryError("update() must not change the state; use transition()")

        return self._cas(run_id, apply, current)

    def _cas(
        self, run_id: str, mutate: Callable[[RunRecord], None], current: RunRecord | None = None
    ) -> RunRecord:
        """Read the run, ``mutate`` it, write it with the ETag read (If-Match); on a lost race read
        again and repeat. With ``current`` (a record of this run carrying the ETag of its last read
        or write) the first attempt mutates a copy of it and writes with that ETag, saving the read:
        the If-Match makes a stale copy lose (412) exactly as a stale read would, and a copy whose
        state ``mutate`` rejects is read again before anything is concluded from it."""
        known = current if current is not None and current.run_id == run_id and current.etag else None
        for attempt in range(CAS_ATTEMPTS):
            if known is not None:
                rec = copy.deepcopy(known)
                etag = known.etag
                known = None
                before = copy.copy(rec.expected_files)
                try:
                    mutate(rec)
                except Exception:
                    continue  # judged on a possibly stale copy: read the run and decide on that
            else:
                entity = self._get_run_entity(run_id)
                rec = _from_entity(entity)
                etag = entity.metadata["etag"]
                before = copy.copy(rec.expected_files)
                mutate(rec)
            if rec.expected_files is not None and (rec.expected_files != before or rec.want_version is None):
                self._write_wanted(rec)  # its entities first: the row then names their version
            rec.updated_at = utcnow()
            try:
                meta = self.table.update_entity(
                    _to_entity(rec),
                    mode=UpdateMode.REPLACE,
                    etag=etag,
                    match_condition=MatchConditions.IfNotModified,
                )
            except ResourceNotFoundError:
                raise RunNotFound(run_id) from None
            except ResourceModifiedError:
                if attempt == 0 and current is not None:
                    continue  # the copy was stale: read the run now, no back-off needed yet
                time.sleep(min(0.02 * (attempt + 1), 0.3) * (0.5 + secrets.randbelow(100) / 100))
                continue
            except HttpResponseError as exc:
                if exc.status_code == 412:
                    continue
                raise
            rec.etag = meta.get("etag")
            return rec
        raise ConcurrencyError(f"run {run_id}: gave up after {CAS_ATTEMPTS} concurrent-update conflicts")

    def _write_wanted(self, rec: RunRecord) -> None:
        """Store ``rec.expected_files`` as entities of a new version and point ``rec`` at it (the
        caller writes the run row). Entities of a version no row names are never read."""
        names = list(rec.expected_files or [])
        check_file_list(names, "the run's list of required files")
        self._ensure_table()
        version = secrets.token_hex(6)
        batch = [
            ("upsert", e, {"mode": UpdateMode.REPLACE}) for e in _want_entities(rec.run_id, version, names)
        ]
        for i in range(0, len(batch), 100):  # a transaction holds at most 100 operations
            self.table.submit_transaction(batch[i : i + 100])
        rec.want_version, rec.want_count = version, len(names)

    def add_staged_files(self, run_id: str, files: Iterable[StagedFile]) -> None:
        """Record staged files (upsert by name: staging a changed file again replaces its entry)."""
        self._ensure_table()
        batch = [("upsert", _file_entity(run_id, f), {"mode": UpdateMode.REPLACE}) for f in files]
        for i in range(0, len(batch), 100):  # a transaction holds at most 100 operations
            self.table.submit_transaction(batch[i : i + 100])

    def claim_file_copy(
        self, run_id: str, name: str, etag: str | None, *, stale_seconds: float = COPY_CLAIM_STALE_SECONDS
    ) -> str | None:
        """Claim the copy of blob version ``etag`` of ``name`` into the run's snapshot: the claim's
        token when this caller copies it, else None. A create-only entity (Table insert fails when it
        exists), so of duplicate deliveries of one blob version exactly one copies; the others wait
        for its record. A claim not renewed for ``stale_seconds`` (its holder died mid-copy; a live
        holder renews it, see ``renewing_file_copies``) is taken over by compare-and-swap.

        Claiming (or taking over) also writes the run entity, in one entity group transaction with
        an ETag match on the run as read staging: a submitter that read the run before this claim
        loses its compare-and-swap and reads the claims again (``copies_in_flight``), so no copy
        lands in the snapshot of a submitted run. Raises ``TransitionRejected`` when the run is not
        staging any more (nothing may be copied into its snapshot)."""
        self._ensure_table()
        row = _copy_row(name, etag)
        token = secrets.token_hex(8)
        entity = {
            "PartitionKey": run_id,
            "RowKey": row,
            "name": name,
            "claimed_at": time.time(),
            "token": token,
        }
        for _ in range(CAS_ATTEMPTS):
            run = self._get_run_entity(run_id)
            try:
                current = self.table.get_entity(run_id, row)
            except ResourceNotFoundError:
                current = None
            if current is not None:
                if current.get("token") == token:
                    return token  # this caller's claim took effect; the answer was lost and it tried again
                if time.time() - float(current.get("claimed_at", 0)) < stale_seconds:
                    return None
            rec = _from_entity(run)
            if rec.state != STAGING:
                raise TransitionRejected(
                    f"run {run_id} is {rec.state}: nothing more is copied into its snapshot", rec
                )
            entity["claimed_at"] = time.time()
            claim_op: tuple[Any, ...] = (
                ("create", entity)
                if current is None
                else (
                    "update",
                    entity,
                    {
                        "mode": UpdateMode.REPLACE,
                        "etag": current.metadata["etag"],
                        "match_condition": MatchConditions.IfNotModified,
                    },
                )
            )
            run_op = (
                "update",
                {"PartitionKey": run_id, "RowKey": RUN_ROW, "updated_at": utcnow()},
                {
                    "mode": UpdateMode.MERGE,
                    "etag": run.metadata["etag"],
                    "match_condition": MatchConditions.IfNotModified,
                },
            )
            try:
                self.table.submit_transaction([claim_op, run_op])
                return token
            except HttpResponseError as exc:
                if exc.status_code not in (404, 409, 412) and not isinstance(
                    exc, ResourceExistsError | ResourceModifiedError | ResourceNotFoundError
                ):
                    raise
                # The run or the claim changed since read (another claim, a submission, a takeover):
                # read both again and decide on what they are now.
                time.sleep(secrets.randbelow(50) / 1000)
        raise ConcurrencyError(f"run {run_id}: claiming {name}'s copy gave up after {CAS_ATTEMPTS} conflicts")

    def copies_in_flight(self, run_id: str, *, stale_seconds: float = COPY_CLAIM_STALE_SECONDS) -> list[str]:
        """Names of the files a delivery is copying into the run's snapshot now: a copy claim not
        finished (``finish_file_copy``), whose file version is not recorded among the run's staged
        files either (its holder may not have finished it yet), and whose holder is alive (renewed
        within ``stale_seconds``; a stale one's holder died, and a takeover or the staging timeout
        decides). The run must not be submitted while there is one. Read the run (its ETag) before
        calling this: a claim made after that read changes the run's ETag (``claim_file_copy``)."""
        self._ensure_table()
        query = (
            f"PartitionKey eq {_odata_str(run_id)} and RowKey ge {_odata_str(COPY_PREFIX)}"
            f" and RowKey lt {_odata_str(FILE_PREFIX + '~')}"
        )
        claims: dict[str, tuple[str, float]] = {}
        recorded: set[str] = set()
        for entity in self.table.query_entities(query):
            row = entity["RowKey"]
            if row.startswith(COPY_PREFIX) and not entity.get("done"):
                claims[row] = (entity.get("name", ""), float(entity.get("claimed_at", 0)))
            elif row.startswith(FILE_PREFIX):
                recorded.add(_copy_row(entity["name"], entity.get("etag")))
        now = time.time()
        return sorted(
            name for row, (name, at) in claims.items() if row not in recorded and now - at < stale_seconds
        )

    def renew_file_copy(self, run_id: str, name: str, etag: str | None, token: str) -> bool:
        """Mark this caller's copy claim alive now; False when it is not this caller's any more
        (released, or taken over by a delivery that took its holder for dead)."""
        row = _copy_row(name, etag)
        try:
            current = self.table.get_entity(run_id, row)
            if current.get("token") != token:
                return False
            self.table.update_entity(
                {"PartitionKey": run_id, "RowKey": row, "claimed_at": time.time()},
                mode=UpdateMode.MERGE,
                etag=current.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
            return True
        except ResourceNotFoundError:
            return False
        except HttpResponseError as exc:
            if _modified_meanwhile(exc):
                return False
            raise

    @contextlib.contextmanager
    def renewing_file_copies(
        self,
        run_id: str,
        claims: Iterable[tuple[str, str | None, str]],
        *,
        every: float = COPY_CLAIM_RENEW_SECONDS,
    ) -> Iterator[None]:
        """Renew the caller's copy claims ``(name, etag, token)`` every ``every`` seconds while the
        block copies, so waiting deliveries know the holder is alive (a long copy of a large blob
        outlives COPY_CLAIM_STALE_SECONDS) and take over quickly when it is not. A failed renewal
        is tried again at the next beat."""
        held = list(claims)
        stop = threading.Event()

        def beat() -> None:
            while held and not stop.wait(every):
                for claim in list(held):
                    try:
                        if not self.renew_file_copy(run_id, *claim):
                            held.remove(claim)
                    except (HttpResponseError, ServiceRequestError) as exc:
                        log.warning("run %s: copy claim of %s not renewed: %s", run_id, claim[0], exc)

        thread = threading.Thread(target=beat, name=f"copy-claims-{run_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def finish_file_copy(self, run_id: str, name: str, etag: str | None, token: str) -> None:
        """Mark this caller's copy claim done once its file is recorded (``add_staged_files``): it
        then keeps the run from being submitted no more, even after a newer version of the file
        replaced that record. A claim taken over meanwhile is the new holder's to finish."""
        row = _copy_row(name, etag)
        for _ in range(CAS_ATTEMPTS):
            try:
                current = self.table.get_entity(run_id, row)
                if current.get("token") != token:
                    return
                self.table.update_entity(
                    {"PartitionKey": run_id, "RowKey": row, "done": True},
                    mode=UpdateMode.MERGE,
                    etag=current.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
                return
            except ResourceNotFoundError:
                return
            except HttpResponseError as exc:
                if not _modified_meanwhile(exc):
                    raise
                # renewed or taken over meanwhile: read it again

    def release_file_copy(self, run_id: str, name: str, etag: str | None) -> None:
        """Give up a copy claim (the copy failed): the trigger's retry or a waiting delivery copies."""
        with contextlib.suppress(ResourceNotFoundError):
            self.table.delete_entity(run_id, _copy_row(name, etag))

    def remove_staged_files(self, run_id: str, names: Iterable[str]) -> None:
        """Forget staged files (a file taken out of a snapshot again); a missing entry is fine."""
        self._ensure_table()
        for name in names:
            with contextlib.suppress(ResourceNotFoundError):
                self.table.delete_entity(run_id, FILE_PREFIX + _key_hash(name))

    def set_output_files(self, run_id: str, outputs: Iterable[OutputFile]) -> None:
        """Record the run's output files (upserts: replays write the same entities again)."""
        self._ensure_table()
        batch = [("upsert", _output_entity(run_id, o), {"mode": UpdateMode.REPLACE}) for o in outputs]
        for i in range(0, len(batch), 100):
            self.table.submit_transaction(batch[i : i + 100])

    def get_metrics(self, run_id: str) -> tuple[str | None, str | None]:
        """(the run's stored metrics state as JSON, its ETag), or (None, None) before the first."""
        self._ensure_table()
        try:
            entity = self.table.get_entity(partition_key=run_id, row_key=METRICS_ROW)
        except ResourceNotFoundError:
            return None, None
        count = int(entity.get("n", 0))
        return "".join(entity.get(f"s_{i}", "") for i in range(count)), entity.metadata["etag"]

    def put_metrics(self, run_id: str, state_json: str, etag: str | None) -> bool:
        """Store the run's metrics state if it is still the one read with ``etag`` (None: there was
        none). False when another writer got there first: of two overlapping monitor passes that
        parsed the same stdout bytes, exactly one records them."""
        if len(state_json) > 450_000:  # UTF-16 bytes under the entity's 1 MiB
            raise RegistryError(f"run {run_id}: metrics state of {len(state_json)} characters is too large")
        parts = [state_json[i : i + CHUNK_CHARS] for i in range(0, len(state_json), CHUNK_CHARS)]
        entity: dict[str, Any] = {"PartitionKey": run_id, "RowKey": METRICS_ROW, "n": len(parts)}
        entity.update({f"s_{i}": part for i, part in enumerate(parts)})
        self._ensure_table()
        try:
            if etag is None:
                self.table.create_entity(entity)
            else:
                self.table.update_entity(
                    entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
                )
        except (ResourceExistsError, ResourceModifiedError):
            return False
        except HttpResponseError as exc:
            if exc.status_code in (409, 412):
                return False
            raise
        return True

    def iter_pending_callbacks(self, page_size: int = 200) -> Iterator[RunRecord]:
        """Finished runs whose callback has not been delivered yet (``callback_pending``)."""
        self._ensure_table()
        query = f"RowKey eq {_odata_str(RUN_ROW)} and callback_pending eq true"
        for entity in self.table.query_entities(query, results_per_page=page_size):
            yield _from_entity(entity)

    # --- clusters' node time ----------------------------------------------------------------------
    def cluster_ledgers(self) -> dict[str, ClusterLedger]:
        """Every cluster's node-time ledger by cluster name (one query)."""
        self._ensure_table()
        query = f"PartitionKey eq {_odata_str(CLUSTER_PARTITION)}"
        ledgers = [ClusterLedger.from_entity(e) for e in self.table.query_entities(query)]
        return {ledger.name: ledger for ledger in ledgers}

    def put_cluster_ledger(self, ledger: ClusterLedger) -> bool:
        """Store the ledger if it is still the one read (``etag``; None: there was none). False when
        another writer (an overlapping monitor pass) got there first: its write counts, ours not."""
        self._ensure_table()
        try:
            if ledger.etag is None:
                meta = self.table.create_entity(ledger.to_entity())
            else:
                meta = self.table.update_entity(
                    ledger.to_entity(),
                    mode=UpdateMode.REPLACE,
                    etag=ledger.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
        except (ResourceExistsError, ResourceModifiedError):
            return False
        except HttpResponseError as exc:
            if exc.status_code in (409, 412):
                return False
            raise
        ledger.etag = meta.get("etag")
        return True

    def clusters_listed_at(self) -> str | None:
        """When a monitor pass last listed the workspace's clusters (None: never)."""
        self._ensure_table()
        try:
            at: str | None = self.table.get_entity(MONITOR_PARTITION, "clusters").get("at")
            return at
        except ResourceNotFoundError:
            return None

    def set_clusters_listed_at(self, when: str) -> None:
        self._ensure_table()
        self.table.upsert_entity({"PartitionKey": MONITOR_PARTITION, "RowKey": "clusters", "at": when})

    def delete_cluster_ledger(self, ledger: ClusterLedger) -> bool:
        """Remove the ledger of a cluster that is gone, if it is still the one read (``etag``)."""
        self._ensure_table()
        try:
            self.table.delete_entity(
                CLUSTER_PARTITION,
                _key_hash(ledger.name),
                etag=ledger.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
        except HttpResponseError as exc:
            if exc.status_code in (404, 409, 412):
                return False
            raise
        return True

    # --- the dataset's current staging run -------------------------------------------------------
    def current_run_id(self, dataset: str) -> tuple[str | None, str | None]:
        """(run id, pointer ETag) of the dataset's latest ingest run, or (None, None)."""
        self._ensure_table()
        try:
            entity = self.table.get_entity(DATASET_PARTITION, _key_hash(dataset))
        except ResourceNotFoundError:
            return None, None
        return entity["run_id"], entity.metadata["etag"]

    def claim_staging_run(
        self,
        dataset: str,
        *,
        reuse: Callable[[RunRecord], bool] | None = None,
        seen: tuple[str | None, str | None, RunRecord | None] | None = None,
        run_dataset: str | None = None,
        run_id: str | None = None,
        **create_fields: Any,
    ) -> tuple[RunRecord, bool]:
        """The dataset's run that is collecting uploads, created if there is none: ``(run, created)``.

        The dataset's pointer entity names its latest ingest run. If that run is still ``staging``
        (and ``reuse(run)`` agrees, when given) it is returned. Otherwise a new run id is swapped
        into the pointer by compare-and-swap (create when absent, ETag match when present), and
        the winner's run entity is created; concurrent callers all end with the same run. The
        pointer is written before the run entity, so a caller that sees a pointer whose run does
        not exist yet creates it with the same id (creation is idempotent per id).

        ``seen``: ``(run id, pointer ETag, run or None)`` as the caller just read them
        (``current_run_id``, then ``get``): the first attempt decides on them instead of reading them
        again. Stale values cost nothing in correctness: the pointer swap is conditional on that ETag
        and a lost swap reads everything again.

        ``run_dataset``: the dataset of a run this call creates, when it is not ``dataset`` (a run
        started over HTTP that stages the folder ``dataset`` into another dataset's directory).
        ``run_id``: the id of a run this call creates (one its caller reserved an idempotency key for).

        Concurrent claims retry with a random back-off for up to ``claim_seconds``: every round has a
        winner, so a burst of requests on one folder all get through."""
        create_fields.setdefault("source", "blob")
        wanted_id = run_id
        deadline = time.monotonic() + self.claim_seconds
        attempt = 0
        while attempt < CAS_ATTEMPTS or time.monotonic() < deadline:
            attempt += 1
            known: RunRecord | None = None
            if seen is not None:
                run_id, pointer_etag, known = seen
                seen = None
            else:
                run_id, pointer_etag = self.current_run_id(dataset)
            if run_id is not None:
                rec = known if known is not None and known.run_id == run_id else self._pointed_run(run_id)
                if rec is None and create_fields["source"] == "blob":
                    # The pointer's writer died before creating its run: create it. (A run started
                    # over HTTP is never created for another request: its fields are that request's.)
                    return self.create(run_dataset or dataset, run_id=run_id, **create_fields), False
                if rec is not None and rec.state == STAGING and (reuse is None or reuse(rec)):
                    return rec, False
            new_id = wanted_id or new_run_id()
            pointer = {"PartitionKey": DATASET_PARTITION, "RowKey": _key_hash(dataset), "run_id": new_id}
            pointer["dataset"] = dataset
            try:
                if pointer_etag is None:
                    meta = self.table.create_entity(pointer)
                else:
                    meta = self.table.update_entity(
                        pointer,
                        mode=UpdateMode.REPLACE,
                        etag=pointer_etag,
                        match_condition=MatchConditions.IfNotModified,
                    )
            except (ResourceExistsError, ResourceModifiedError):
                # Lost to a concurrent claim: back off a random moment, growing with the attempts.
                time.sleep(min(0.01 * attempt, 0.2) * (0.5 + secrets.randbelow(100) / 100))
                continue
            rec = self.create(run_dataset or dataset, run_id=new_id, **create_fields)
            if rec.run_id != new_id:
                # The idempotency key's run, made by an earlier request: new_id will never exist,
                # so the pointer goes back to that run (unless the pointer moved on meanwhile).
                with contextlib.suppress(ResourceModifiedError):
                    self.table.update_entity(
                        {**pointer, "run_id": rec.run_id},
                        mode=UpdateMode.REPLACE,
                        etag=meta["etag"],
                        match_condition=MatchConditions.IfNotModified,
                    )
                return rec, False
            return rec, True
        raise ConcurrencyError(
            f"dataset {dataset!r}: could not claim a staging run (too many concurrent changes for "
            f"{self.claim_seconds:.0f} s); retry the request with the same Idempotency-Key"
        )

    def _pointed_run(self, run_id: str, wait_seconds: float = 2.0) -> RunRecord | None:
        """The run a dataset pointer names. Its writer swaps the pointer, then creates the run: a
        run not there yet is waited for a moment, so another caller does not create it with its own
        fields (a trigger's run where an HTTP start's should be). None: its writer died."""
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                return self.get(run_id)
            except RunNotFound:
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.05)


def _apply(rec: RunRecord, changes: dict[str, Any], error: RunError | None = None) -> None:
    allowed = {f.name for f in dataclasses.fields(RunRecord)} - {
        "run_id",
        "etag",
        "state",
        "staged_files",
        "output_files",
    }
    for key, value in changes.items():
        if key not in allowed:
            raise RegistryError(f"unknown or read-only run field {key!r}")
        setattr(rec, key, value)
    if error is not None:
        rec.errors = [*rec.errors, error.to_json()]
