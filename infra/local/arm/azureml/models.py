"""In-memory state of the Microsoft.MachineLearningServices provider, one model class per resource.

Why its own store: Azure ML's resources (workspaces, computes, datastores, environment versions,
jobs) share nothing with Batch AI's but the resource groups (read from the Batch AI backend, which
owns Microsoft.Resources) and the node runtime (``infra.local.arm.jobrunner``). Slow cloud operations
are explicit state progressions advanced by ``AzureMLBackend.advance`` (called by a ticker thread
and before every read):

- compute: ``Creating`` -> ``Succeeded`` after the operation delay; ``AmlCompute`` nodes move
  ``preparing`` -> ``idle`` after the provisioning delay, are added up to ``maxNodeCount`` while jobs
  wait, and removed down to ``minNodeCount`` once idle for ``nodeIdleTimeBeforeScaleDown``;
  ``allocationState`` is ``Resizing`` while the node count moves or a node prepares.
- job: ``NotStarted`` -> ``Queued`` -> ``Preparing`` (nodes reserved) -> ``Running`` (local
  processes) -> ``Finalizing`` (outputs and logs uploaded to the workspace's blob storage) ->
  ``Completed`` | ``Failed``; cancel: ``CancelRequested`` -> ``Canceled``.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra.local.arm.common import now_iso, parse_duration, resource_key
from infra.local.arm.errors import ArmError, resource_error

if TYPE_CHECKING:
    from infra.local.arm.batchai.backend import Backend

PROVIDER = "Microsoft.MachineLearningServices"
API_VERSION = "2024-10-01"
PAGE_SIZE = 100  # jobs per page of Jobs_List (nextLink carries $skipToken)
ARTIFACT_CONTAINER = "azureml"  # where Azure ML keeps a job's logs: ExperimentRun/dcid.<job>/...
TERMINAL_JOB_STATES = frozenset({"Completed", "Failed", "Canceled", "NotResponding"})
NODE_STATES = ("preparing", "running", "idle", "unusable", "leaving", "preempted")
_DATASTORE_URI = re.compile(r"^azureml://datastores/(?P<ds>[^/]+)/paths/(?P<path>.*)$")
_EXPR = re.compile(r"\$\{\{\s*(inputs|outputs)\.(\w+)\s*\}\}")


# Distributions whose processes Azure ML logs one file each (`std_log_process_<rank>.txt`); a
# TensorFlow distribution's are named per node and role (`std_log_node_<i>_worker.txt`), not emulated.
PER_PROCESS_LOG_DISTRIBUTIONS = frozenset({"PyTorch", "Mpi"})


def log_blob_name(job: str, name: str = "std_log.txt") -> str:
    """Where Azure ML writes a command job's log `name` (by default the one combined stdout/stderr of
    a single-process job) in the artifact container."""
    return f"ExperimentRun/dcid.{job}/user_logs/{name}"


def process_log_name(rank: int, count: int) -> str:
    """The log of process `rank` of `count`: the rank zero-padded to the width of the highest rank, as
    Azure ML names them (`std_log_process_0.txt` of 2 processes, `std_log_process_01.txt` of 16)."""
    return f"std_log_process_{rank:0{len(str(max(count - 1, 0)))}d}.txt"


def workspace_child(rid: str, name: str, rtype: str, props: dict[str, Any], created: float) -> dict[str, Any]:
    """The body of a resource in a workspace (datastore, environment version, job): ARM's envelope
    with the `systemData` Azure ML adds."""
    return {
        "id": rid,
        "name": name,
        "type": rtype,
        "properties": props,
        "systemData": {"createdAt": now_iso(created), "createdBy": "emulator", "createdByType": "User"},
    }


@dataclass
class Workspace:
    id: str
    name: str
    location: str
    storage_account: str  # account name of properties.storageAccount
    body: dict[str, Any]
    guid: str = field(default_factory=lambda: str(uuid.uuid4()))

    def render(self) -> dict[str, Any]:
        props = {
            **self.body.get("properties", {}),
            "provisioningState": "Succeeded",
            "workspaceId": self.guid,
        }
        props.setdefault(
            "storageAccount",
            f"/subscriptions/x/resourceGroups/x/providers/Microsoft.Storage/storageAccounts/{self.storage_account}",
        )
        return {
            "id": self.id,
            "name": self.name,
            "type": f"{PROVIDER}/workspaces",
            "location": self.location,
            "properties": props,
        }


@dataclass
class Node:
    state: str
    since: float
    job: str | None = None


@dataclass
class Compute:
    id: str
    name: str
    location: str
    body: dict[str, Any]  # the request's properties (computeType, properties)
    created: float
    ready_at: float
    nodes: list[Node] = field(default_factory=list)
    idle_since: float = 0.0
    deleting: bool = False
    transition: float = 0.0

    @property
    def aml(self) -> dict[str, Any]:
        return self.body.get("properties") or {}

    @property
    def scale(self) -> dict[str, Any]:
        return self.aml.get("scaleSettings") or {}

    @property
    def min_nodes(self) -> int:
        return int(self.scale.get("minNodeCount") or 0)

    @property
    def max_nodes(self) -> int:
        return int(self.scale.get("maxNodeCount", 1))

    @property
    def idle_timeout(self) -> float:
        return parse_duration(self.scale.get("nodeIdleTimeBeforeScaleDown") or "PT2M")

    def provisioning_state(self, now: float) -> str:
        if self.deleting:
            return "Deleting"
        return "Succeeded" if now >= self.ready_at else "Creating"

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(NODE_STATES, 0)
        for node in self.nodes:
            counts[node.state] += 1
        return counts

    def allocation_state(self, target: int) -> str:
        preparing = any(n.state == "preparing" for n in self.nodes)
        return "Resizing" if preparing or len(self.nodes) != target else "Steady"

    def render(self, now: float, target: int) -> dict[str, Any]:
        counts = self.counts()
        props: dict[str, Any] = {
            **{k: v for k, v in self.aml.items() if k in ("vmSize", "vmPriority", "scaleSettings", "osType")},
            "allocationState": self.allocation_state(target),
            "allocationStateTransitionTime": now_iso(self.transition or self.created),
            "errors": None,
            "currentNodeCount": len(self.nodes),
            "targetNodeCount": target,
            "nodeStateCounts": {f"{state}NodeCount": counts[state] for state in NODE_STATES},
        }
        return {
            "id": self.id,
            "name": self.name,
            "type": f"{PROVIDER}/workspaces/computes",
            "location": self.location,
            "properties": {
                "computeType": "AmlCompute",
                "provisioningState": self.provisioning_state(now),
                "createdOn": now_iso(self.created),
                "modifiedOn": now_iso(self.created),
                "properties": props,
            },
        }


@dataclass
class Datastore:
    id: str
    name: str
    body: dict[str, Any]
    created: float

    def render(self) -> dict[str, Any]:
        props = {k: v for k, v in self.body.get("properties", {}).items() if k != "credentials"}
        credentials = self.body.get("properties", {}).get("credentials") or {"credentialsType": "None"}
        answered: dict[str, Any] = {"credentialsType": credentials.get("credentialsType", "None")}
        if "secrets" in credentials:  # the secrets' type only: their values are never answered
            answered["secrets"] = {"secretsType": credentials["secrets"].get("secretsType")}
        props["credentials"] = answered
        props.setdefault("isDefault", False)
        return workspace_child(self.id, self.name, f"{PROVIDER}/workspaces/datastores", props, self.created)

    def root(self, files_root: Path, data_dir: Path) -> Path | None:
        """The local directory the datastore's data lives in (an Azure File share of the Files
        emulator), or None when it is a blob container (read through Azurite instead)."""
        props = self.body.get("properties", {})
        if props.get("datastoreType") == "AzureFile":
            return files_root / props["accountName"] / props["fileShareName"]
        return None


@dataclass
class EnvironmentVersion:
    id: str
    name: str
    version: str
    body: dict[str, Any]
    created: float

    def render(self) -> dict[str, Any]:
        props = dict(self.body.get("properties", {}))
        props.setdefault("osType", "Linux")
        props["provisioningState"] = "Succeeded"
        props.setdefault("isArchived", False)
        return workspace_child(
            self.id, self.version, f"{PROVIDER}/workspaces/environments/versions", props, self.created
        )


@dataclass
class Job:
    id: str
    name: str
    workspace_key: str
    body: dict[str, Any]
    created: float
    status: str = "NotStarted"
    status_since: float = 0.0
    compute_key: str | None = None
    key: str = field(default_factory=lambda: str(uuid.uuid4()))  # the job runner's key
    exit_code: int | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    deleting: bool = False
    paths: dict[str, Any] = field(default_factory=dict)

    @property
    def props(self) -> dict[str, Any]:
        return self.body.get("properties", {})

    @property
    def instance_count(self) -> int:
        return int((self.props.get("resources") or {}).get("instanceCount") or 1)

    @property
    def distribution_type(self) -> str | None:
        return (self.props.get("distribution") or {}).get("distributionType")

    @property
    def processes_per_instance(self) -> int:
        return int((self.props.get("distribution") or {}).get("processCountPerInstance") or 1)

    @property
    def process_count(self) -> int:
        """How many processes the job runs: a TensorFlow distribution's workers, else the instances
        times the distribution's processes per instance."""
        if self.distribution_type == "TensorFlow":
            return int((self.props.get("distribution") or {}).get("workerCount") or self.instance_count)
        return self.instance_count * self.processes_per_instance

    @property
    def process_logs(self) -> list[str]:
        """The job's per-process log names, rank order (empty: one `std_log.txt` for the job). A
        single-process job keeps `std_log.txt`, distribution or not."""
        count = self.process_count
        if self.distribution_type not in PER_PROCESS_LOG_DISTRIBUTIONS or count < 2:
            return []
        return [process_log_name(rank, count) for rank in range(count)]

    def render(self) -> dict[str, Any]:
        props = dict(self.props)
        props["status"] = self.status
        props.setdefault("experimentName", "Default")
        props.setdefault("displayName", self.name)
        props["services"] = {
            "Studio": {"jobServiceType": "Studio", "endpoint": f"https://ml.azure.com/runs/{self.name}"}
        }
        props.pop("secretsConfiguration", None)
        return workspace_child(self.id, self.name, f"{PROVIDER}/workspaces/jobs", props, self.created)


@dataclass
class Operation:
    id: str
    done_at: float
    kind: str  # "compute" or "mfe": the path segment of the status URL
    on_done: Any = None
    status: str = "InProgress"


class AzureMLBackend:
    """The provider's store, clock and state progressions."""

    def __init__(self, main: Backend) -> None:
        self.main = main  # resource groups, config, the files root
        self.config = main.config
        self.lock = threading.RLock()
        self.workspaces: dict[str, Workspace] = {}
        self.computes: dict[str, Compute] = {}
        self.datastores: dict[str, Datastore] = {}
        self.environments: dict[str, EnvironmentVersion] = {}
        self.jobs: dict[str, Job] = {}
        self.operations: dict[str, Operation] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        from infra.local.arm.azureml.runner import AzureMLJobs

        self.runner = AzureMLJobs(self)
        self.state_file = Path(self.config.data_dir) / "azureml-state.json"
        self._save_lock = threading.Lock()
        self._load()

    # --- persistence -------------------------------------------------------------------------------
    def save(self) -> None:
        """Write the provider's resources (no secret value: datastore secrets keep their type only),
        so an accepted request survives an emulator restart as Batch AI's state does."""
        with self.lock:

            def store(items: dict[str, Any]) -> dict[str, Any]:
                return {key: asdict(item) for key, item in items.items()}

            datastores = store(self.datastores)
            for item in datastores.values():
                secrets = ((item["body"].get("properties") or {}).get("credentials") or {}).get("secrets")
                if isinstance(secrets, dict):
                    for name in list(secrets):
                        if name != "secretsType":
                            secrets[name] = None
            data = json.dumps(
                {
                    "workspaces": store(self.workspaces),
                    "computes": store(self.computes),
                    "datastores": datastores,
                    "environments": store(self.environments),
                    "jobs": store(self.jobs),
                }
            )
        with self._save_lock:
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(data)
            tmp.replace(self.state_file)

    def _load(self) -> None:
        """Read the saved resources. A job that was preparing, running or finalizing when the emulator
        stopped has lost its processes: it fails, saying so, and its nodes are idle again; deletions
        that were in progress are done."""
        if not self.state_file.exists():
            return
        saved = json.loads(self.state_file.read_text())
        self.workspaces = {k: Workspace(**v) for k, v in saved.get("workspaces", {}).items()}
        self.computes = {
            k: Compute(**{**v, "nodes": [Node(**n) for n in v.get("nodes", [])]})
            for k, v in saved.get("computes", {}).items()
            if not v.get("deleting")
        }
        self.datastores = {k: Datastore(**v) for k, v in saved.get("datastores", {}).items()}
        self.environments = {k: EnvironmentVersion(**v) for k, v in saved.get("environments", {}).items()}
        self.jobs = {k: Job(**v) for k, v in saved.get("jobs", {}).items() if not v.get("deleting")}
        for compute in self.computes.values():
            for node in compute.nodes:
                if node.state == "running":
                    node.state, node.job = "idle", None
        for job in self.jobs.values():
            if job.status in ("Preparing", "Running", "Finalizing", "CancelRequested"):
                cancelled = job.status == "CancelRequested"
                if not cancelled:
                    job.errors.append(
                        resource_error("EmulatorRestarted", "the emulator restarted while the job ran")
                    )
                self._set_status(job, "Canceled" if cancelled else "Failed")

    # --- clock -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="azureml-clock", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.runner.shutdown()
        with contextlib.suppress(OSError):
            self.save()

    def _loop(self) -> None:
        while not self._stop.wait(self.config.tick_interval * 2):
            with contextlib.suppress(Exception):
                self.advance()

    def advance(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.lock:
            for op in list(self.operations.values()):
                if op.status == "InProgress" and now >= op.done_at:
                    op.status = "Succeeded"
                    if op.on_done is not None:
                        op.on_done()
            for key, compute in list(self.computes.items()):
                self._advance_compute(key, compute, now)
            for job in list(self.jobs.values()):
                self._advance_job(job, now)

    def new_operation(self, kind: str, on_done: Any = None, delay: float | None = None) -> str:
        op_id = str(uuid.uuid4())
        wait = self.config.operation_delay if delay is None else delay
        self.operations[op_id] = Operation(op_id, time.time() + wait, kind, on_done)
        return op_id

    # --- ids -------------------------------------------------------------------------------------
    @staticmethod
    def workspace_id(sub: str, rg: str, ws: str) -> str:
        return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{PROVIDER}/workspaces/{ws}"

    def require_workspace(self, sub: str, rg: str, ws: str) -> Workspace:
        self.main.require_group(sub, rg)
        found = self.workspaces.get(resource_key(self.workspace_id(sub, rg, ws)))
        if found is None:
            raise ArmError(
                "ResourceNotFound",
                f"The Resource '{PROVIDER}/workspaces/{ws}' under resource group '{rg}' was not found.",
            )
        return found

    def _child_key(self, sub: str, rg: str, ws: str, path: str) -> str:
        """The store key of `<workspace id>/<path>` (a compute, datastore, environment version or job);
        404 when the workspace or its group does not exist."""
        return resource_key(f"{self.require_workspace(sub, rg, ws).id}/{path}")

    def _find(
        self, store: dict[str, Any], sub: str, rg: str, ws: str, path: str, what: str, code: str = "UserError"
    ) -> Any:
        """The resource at `<workspace id>/<path>`, or 404 naming `what` (Azure ML's `UserError` for
        everything but computes)."""
        found = store.get(self._child_key(sub, rg, ws, path))
        if found is None:
            raise ArmError(code, f"{what} not found in workspace {ws}.", status=404)
        return found

    def _begin_delete(
        self, store: dict[str, Any], key: str, kind: str, stop: Callable[[Any], None] | None = None
    ) -> str | None:
        """A compute's or job's delete: it shows `deleting` until the operation completes and removes
        it; None when there is nothing to delete."""
        found = store.get(key)
        if found is None:
            return None
        found.deleting = True
        if stop is not None:
            stop(found)
        return self.new_operation(kind, on_done=lambda: store.pop(key, None))

    # --- workspaces ------------------------------------------------------------------------------
    def put_workspace(self, sub: str, rg: str, ws: str, body: dict[str, Any]) -> tuple[int, Workspace]:
        with self.lock:
            self.main.require_group(sub, rg)
            wid = self.workspace_id(sub, rg, ws)
            key = resource_key(wid)
            storage = (body.get("properties") or {}).get("storageAccount") or ""
            account = storage.rstrip("/").rsplit("/", 1)[-1] or next(
                iter(self.config.storage_keys), "devstoreaccount1"
            )
            existing = self.workspaces.get(key)
            workspace = Workspace(wid, ws, body.get("location") or self.config.location, account, body)
            if existing is not None:
                workspace.guid = existing.guid
            self.workspaces[key] = workspace
            # Azure ML registers the workspace's default blob datastore and its artifact store.
            blob = f"{wid}/datastores/workspaceblobstore"
            self.datastores.setdefault(
                resource_key(blob),
                Datastore(
                    blob,
                    "workspaceblobstore",
                    {
                        "properties": {
                            "datastoreType": "AzureBlob",
                            "accountName": account,
                            "containerName": f"azureml-blobstore-{workspace.guid}",
                            "isDefault": True,
                            "credentials": {
                                "credentialsType": "AccountKey",
                                "secrets": {"secretsType": "AccountKey"},
                            },
                        }
                    },
                    time.time(),
                ),
            )
            return (200 if existing else 201), workspace

    def get_workspace(self, sub: str, rg: str, ws: str) -> Workspace:
        with self.lock:
            return self.require_workspace(sub, rg, ws)

    # --- computes --------------------------------------------------------------------------------
    def put_compute(
        self, sub: str, rg: str, ws: str, name: str, body: dict[str, Any]
    ) -> tuple[int, Compute, str]:
        with self.lock:
            workspace = self.require_workspace(sub, rg, ws)
            props = body.get("properties") or {}
            if props.get("computeType") != "AmlCompute":
                raise ArmError(
                    "BadRequest",
                    f"computeType {props.get('computeType')!r} is not supported "
                    "by this emulator: only AmlCompute",
                    target="properties.computeType",
                )
            cid = f"{workspace.id}/computes/{name}"
            key = resource_key(cid)
            existing = self.computes.get(key)
            now = time.time()
            if existing is not None:
                if existing.deleting:
                    raise ArmError("Conflict", f"Compute {name} is being deleted.")
                existing.body = props
                return 200, existing, self.new_operation("compute", delay=0)
            compute = Compute(
                cid,
                name,
                body.get("location") or workspace.location,
                props,
                now,
                now + self.config.operation_delay,
                transition=now,
            )
            self.computes[key] = compute
            return 201, compute, self.new_operation("compute")

    def patch_compute(self, sub: str, rg: str, ws: str, name: str, body: dict[str, Any]) -> Compute:
        with self.lock:
            compute = self.get_compute(sub, rg, ws, name)
            scale = ((body.get("properties") or {}).get("properties") or {}).get("scaleSettings")
            if scale:
                compute.body.setdefault("properties", {})["scaleSettings"] = scale
            return compute

    def get_compute(self, sub: str, rg: str, ws: str, name: str) -> Compute:
        with self.lock:
            return self._find(
                self.computes, sub, rg, ws, f"computes/{name}", f"Compute {name}", "ResourceNotFound"
            )

    def list_computes(self, sub: str, rg: str, ws: str) -> list[Compute]:
        with self.lock:
            workspace = self.require_workspace(sub, rg, ws)
            prefix = resource_key(workspace.id) + "/computes/"
            return [c for k, c in sorted(self.computes.items()) if k.startswith(prefix)]

    def delete_compute(self, sub: str, rg: str, ws: str, name: str) -> str | None:
        with self.lock:
            return self._begin_delete(
                self.computes, self._child_key(sub, rg, ws, f"computes/{name}"), "compute"
            )

    def target_nodes(self, key: str, compute: Compute) -> int:
        wanted = sum(
            j.instance_count
            for j in self.jobs.values()
            if j.compute_key == key and j.status in ("Queued", "Preparing", "Running", "Finalizing")
        )
        if (
            wanted == 0
            and compute.nodes
            and compute.idle_since
            and time.time() - compute.idle_since < compute.idle_timeout
        ):
            return max(len(compute.nodes), compute.min_nodes)  # idle nodes stay until the timeout
        return max(compute.min_nodes, min(compute.max_nodes, wanted))

    def _advance_compute(self, key: str, compute: Compute, now: float) -> None:
        if compute.provisioning_state(now) != "Succeeded":
            return
        for node in compute.nodes:
            if node.state == "preparing" and now - node.since >= self.config.provisioning_delay:
                node.state, node.since = "idle", now
                compute.transition = now
        busy = any(n.state == "running" for n in compute.nodes)
        if busy:
            compute.idle_since = 0.0
        elif not compute.idle_since:
            compute.idle_since = now
        target = self.target_nodes(key, compute)
        while len(compute.nodes) < target:
            compute.nodes.append(Node("preparing", now))
            compute.transition = now
        if len(compute.nodes) > target:
            idle = [n for n in compute.nodes if n.state in ("idle", "preparing")]
            for node in idle[: len(compute.nodes) - target]:
                compute.nodes.remove(node)
                compute.transition = now

    # --- datastores, environments ----------------------------------------------------------------
    def put_datastore(
        self, sub: str, rg: str, ws: str, name: str, body: dict[str, Any]
    ) -> tuple[int, Datastore]:
        with self.lock:
            workspace = self.require_workspace(sub, rg, ws)
            did = f"{workspace.id}/datastores/{name}"
            existing = self.datastores.get(resource_key(did))
            store = Datastore(did, name, body, existing.created if existing else time.time())
            self.datastores[resource_key(did)] = store
            return (200 if existing else 201), store

    def get_datastore(self, sub: str, rg: str, ws: str, name: str) -> Datastore:
        with self.lock:
            return self._find(self.datastores, sub, rg, ws, f"datastores/{name}", f"Datastore {name}")

    def delete_datastore(self, sub: str, rg: str, ws: str, name: str) -> bool:
        with self.lock:
            return self.datastores.pop(self._child_key(sub, rg, ws, f"datastores/{name}"), None) is not None

    def put_environment(
        self, sub: str, rg: str, ws: str, name: str, version: str, body: dict[str, Any]
    ) -> tuple[int, EnvironmentVersion]:
        with self.lock:
            workspace = self.require_workspace(sub, rg, ws)
            eid = f"{workspace.id}/environments/{name}/versions/{version}"
            existing = self.environments.get(resource_key(eid))
            if existing is not None and existing.body.get("properties", {}).get("image") != body.get(
                "properties", {}
            ).get("image"):
                raise ArmError(
                    "UserError",
                    f"Environment {name}:{version} exists with another image; versions are immutable.",
                    status=409,
                )
            env = EnvironmentVersion(eid, name, version, body, existing.created if existing else time.time())
            self.environments[resource_key(eid)] = env
            return (200 if existing else 201), env

    def get_environment(self, sub: str, rg: str, ws: str, name: str, version: str) -> EnvironmentVersion:
        with self.lock:
            path = f"environments/{name}/versions/{version}"
            return self._find(self.environments, sub, rg, ws, path, f"Environment {name}:{version}")

    def delete_environment(self, sub: str, rg: str, ws: str, name: str, version: str) -> bool:
        with self.lock:
            key = self._child_key(sub, rg, ws, f"environments/{name}/versions/{version}")
            return self.environments.pop(key, None) is not None

    # --- jobs ------------------------------------------------------------------------------------
    def put_job(self, sub: str, rg: str, ws: str, name: str, body: dict[str, Any]) -> tuple[int, Job]:
        with self.lock:
            workspace = self.require_workspace(sub, rg, ws)
            jid = f"{workspace.id}/jobs/{name}"
            key = resource_key(jid)
            existing = self.jobs.get(key)
            if existing is not None:
                if existing.deleting:
                    raise ArmError("UserError", f"Job {name} is being deleted.", status=409)
                return 200, existing  # a job's definition cannot change; a replay gets it back
            props = body.get("properties") or {}
            compute_id = props.get("computeId") or ""
            compute_key = resource_key(compute_id)
            if compute_key not in self.computes:
                raise ArmError(
                    "UserError",
                    f"Compute {compute_id!r} of job {name} does not exist in the workspace.",
                    target="properties.computeId",
                )
            env_key = resource_key(props.get("environmentId") or "")
            if env_key not in self.environments:
                raise ArmError(
                    "UserError",
                    f"Environment {props.get('environmentId')!r} of job {name} does not exist.",
                    target="properties.environmentId",
                )
            for input_name, spec in (props.get("inputs") or {}).items():
                if (
                    spec.get("jobInputType") in ("uri_folder", "uri_file")
                    and self.resolve_uri(workspace, spec.get("uri", "")) is None
                ):
                    raise ArmError(
                        "UserError",
                        f"Input {input_name}: {spec.get('uri')!r} is not a datastore "
                        "URI of this workspace (azureml://datastores/<name>/paths/<path>).",
                        target=f"properties.inputs.{input_name}.uri",
                    )
            now = time.time()
            job = Job(
                jid, name, resource_key(workspace.id), body, now, status_since=now, compute_key=compute_key
            )
            self.jobs[key] = job
            return 201, job

    def get_job(self, sub: str, rg: str, ws: str, name: str) -> Job:
        with self.lock:
            return self._find(self.jobs, sub, rg, ws, f"jobs/{name}", f"Job {name}")

    def list_jobs(self, sub: str, rg: str, ws: str) -> list[Job]:
        with self.lock:
            workspace = self.require_workspace(sub, rg, ws)
            wkey = resource_key(workspace.id)
            return sorted(
                (j for j in self.jobs.values() if j.workspace_key == wkey and not j.deleting),
                key=lambda j: (j.created, j.name),
            )

    def cancel_job(self, sub: str, rg: str, ws: str, name: str) -> str:
        with self.lock:
            job = self.get_job(sub, rg, ws, name)
            if job.status not in TERMINAL_JOB_STATES:
                self._set_status(job, "CancelRequested")
                self.runner.kill(job)
                if job.status == "CancelRequested" and not self.runner.running(job):
                    self._release(job)
                    self._set_status(job, "Canceled")
            return self.new_operation("mfe")

    def delete_job(self, sub: str, rg: str, ws: str, name: str) -> str | None:
        with self.lock:
            return self._begin_delete(
                self.jobs, self._child_key(sub, rg, ws, f"jobs/{name}"), "mfe", self._stop_job
            )

    def _stop_job(self, job: Job) -> None:
        self.runner.kill(job)
        self._release(job)

    def _set_status(self, job: Job, status: str) -> None:
        job.status, job.status_since = status, time.time()

    def _release(self, job: Job) -> None:
        compute = self.computes.get(job.compute_key or "")
        if compute is None:
            return
        for node in compute.nodes:
            if node.job == job.key:
                node.state, node.job, node.since = "idle", None, time.time()

    def _advance_job(self, job: Job, now: float) -> None:
        if job.deleting:
            return
        if job.status == "NotStarted":
            self._set_status(job, "Queued")
        elif job.status == "Queued":
            compute = self.computes.get(job.compute_key or "")
            if compute is None:
                job.errors.append(resource_error("ComputeNotFound", "the job's compute was deleted"))
                self._set_status(job, "Failed")
                return
            idle = [n for n in compute.nodes if n.state == "idle"]
            if len(idle) >= job.instance_count:
                for node in idle[: job.instance_count]:
                    node.state, node.job, node.since = "running", job.key, now
                self._set_status(job, "Preparing")
        elif job.status == "Preparing":
            self._set_status(job, "Running")
            try:
                self.runner.start(job)
            except Exception as exc:  # the job fails with the reason; the clock goes on
                job.errors.append(resource_error("JobLaunchFailed", f"{type(exc).__name__}: {exc}"))
                self._release(job)
                self._set_status(job, "Failed")

    def job_exited(self, job: Job, exit_code: int | None, errors: list[dict[str, Any]]) -> None:
        """The job runner's report: the processes ended; upload, then the final state."""
        with self.lock:
            if job.deleting:
                return
            job.exit_code = exit_code
            job.errors.extend(errors)
            cancelled = job.status == "CancelRequested"
            self._set_status(job, "Finalizing")
        self.runner.upload(job)
        with self.lock:
            self._release(job)
            final = (
                "Canceled" if cancelled else ("Completed" if exit_code == 0 and not job.errors else "Failed")
            )
            self._set_status(job, final)
        with contextlib.suppress(OSError):
            self.save()

    # --- data --------------------------------------------------------------------------------------
    def resolve_uri(self, workspace: Workspace, uri: str) -> Path | None:
        """``azureml://datastores/<name>/paths/<path>`` on an Azure File datastore to the Files
        emulator's directory; None for anything else (or a path that climbs out)."""
        m = _DATASTORE_URI.match(uri)
        if not m:
            return None
        store = self.datastores.get(resource_key(f"{workspace.id}/datastores/{m['ds']}"))
        if store is None:
            return None
        root = store.root(Path(self.config.files_root), Path(self.config.data_dir))
        parts = [p for p in m["path"].split("/") if p]
        if root is None or any(p in (".", "..") for p in parts):
            return None
        return root.joinpath(*parts)

    def blob_location(self, workspace: Workspace, uri: str) -> tuple[str, str, str] | None:
        """(account, container, prefix) of an ``azureml://datastores/<blob datastore>/paths/...``."""
        m = _DATASTORE_URI.match(uri)
        if not m:
            return None
        store = self.datastores.get(resource_key(f"{workspace.id}/datastores/{m['ds']}"))
        props = (store.body.get("properties") or {}) if store else {}
        if props.get("datastoreType") != "AzureBlob":
            return None
        return props["accountName"], props["containerName"], m["path"].strip("/")


def substitute(command: str, values: dict[str, dict[str, str]]) -> str:
    """Replace ``${{inputs.X}}`` / ``${{outputs.X}}`` with the job's local paths, as Azure ML does."""

    def repl(m: re.Match[str]) -> str:
        found = values[m.group(1)].get(m.group(2))
        return m.group(0) if found is None else found

    return _EXPR.sub(repl, command)
