"""Batch AI's backend: the store of resource groups and Batch AI resources, its persistence, and the
clock that advances their state progressions.

Each resource is a model (`models.py`) over its persisted record; the backend keeps the records
(`state`: collection -> lower-cased resource id -> record, as `state.json` holds them), saves them, and
does what involves more than one resource: scheduling queued jobs onto clusters' idle nodes, what a
resize does to the jobs on the nodes it takes, cascading deletes, node setup (mounting volumes), and
starting jobs' processes through the job runner, which reports back through callbacks.

`tick()` (a background thread) advances time: due operations complete, clusters' nodes move
(`Cluster.resize`, node setup, `Cluster.settle`), queued jobs start, jobs past their wall clock stop.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from infra.local.arm import blobfs
from infra.local.arm.batchai.models import (
    CLUSTER_ID,
    MODELS,
    Cluster,
    Experiment,
    FileServer,
    Job,
    Operation,
    Resource,
    ResourceGroup,
    Workspace,
    workspace_id,
)
from infra.local.arm.batchai.mounts import VolumeMounts
from infra.local.arm.blobfs import BlobMount
from infra.local.arm.common import (
    SECRET_PLACEHOLDER,
    Config,
    clone,
    resource_key,
    without_secret_values,
)
from infra.local.arm.errors import (
    ArmError,
    cluster_deleted,
    job_terminated,
    resource_error,
    restarted_before_start,
    restarted_while_running,
)
from infra.local.arm.jobrunner import JobCallbacks, JobRunner, NodeBlobMounts

# Seconds between saves of what the clock changed (allocation, job states); accepted requests are saved
# before they are answered (Backend.persist), launched pids are logged at once.
SAVE_INTERVAL = 0.5
# vCPUs per VM size family, for usages; unknown sizes count as 6.
VM_CORES = {"standard_nc6": 6, "standard_nc12": 12, "standard_nc24": 24, "standard_d1": 1, "standard_d2": 2}
# Collections of a workspace's children, in the order a delete removes them.
WORKSPACE_CHILDREN = ("jobs", "experiments", "clusters", "fileServers")


class Backend:
    """All state, behind one lock. `responses.py` calls the public methods; `tick()` advances time."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.lock = threading.RLock()
        self.state: dict[str, dict[str, Any]] = {
            "resourceGroups": {},
            "workspaces": {},
            "experiments": {},
            "clusters": {},
            "fileServers": {},
            "jobs": {},
            "operations": {},
        }
        self.secret = ""
        self.dirty = False
        self.node_random = random.Random(config.node_failure_seed)
        self.mounts = VolumeMounts(config, self._file_server_export)
        self.runner = JobRunner(
            JobCallbacks(
                exited=self.job_process_exited,
                launched=self._job_process_launched,
                mount_volumes=self.mounts.mount_volumes,
            ),
            python=config.job_python,
        )
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.state_file = config.data_dir / "state.json"
        # One line per launched process ("<job uuid> <pid>"), appended at launch: cheap, and a crash
        # between two state saves still leaves what the next start needs to stop orphans.
        self.pid_log = config.data_dir / "pids.log"
        self._save_lock = threading.Lock()
        self._last_save = 0.0
        self._started_saves = 0
        self._finished_saves = 0
        self._pending_ops: set[str] = set()
        self._last_prune = 0.0
        self._load()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the store -------------------------------------------------------------------------------
    def clusters(self) -> Iterator[Cluster]:
        return (Cluster(record) for record in self.state["clusters"].values())

    def jobs(self) -> Iterator[Job]:
        return (Job(record) for record in self.state["jobs"].values())

    def _job(self, key: str) -> Job | None:
        record = self.state["jobs"].get(key)
        return Job(record) if record is not None else None

    def _cluster(self, key: str) -> Cluster | None:
        record = self.state["clusters"].get(key)
        return Cluster(record) if record is not None else None

    def _add(self, resource: Resource) -> None:
        self.state[resource.collection][resource.key] = resource.record
        self.dirty = True

    def render(self, collection: str, record: dict[str, Any]) -> dict[str, Any]:
        """A record's body as the wire shows it."""
        return MODELS[collection](record).render()

    # --- persistence -----------------------------------------------------------------------------
    def _load(self) -> None:
        if self.state_file.exists():
            saved = json.loads(self.state_file.read_text())
            self.state.update(saved["state"])
            self.secret = saved.get("secret", "")
            self._recover_after_restart()
        if not self.secret:
            self.secret = secrets.token_hex(32)
        self._pending_ops = {k for k, op in self.state["operations"].items() if Operation(op).in_progress}
        self.save()
        self.pid_log.unlink(missing_ok=True)

    def _recover_after_restart(self) -> None:
        """Jobs that were running when the emulator stopped can't be reattached: stop what is left of
        their processes and report them failed; free their nodes."""
        logged: dict[str, list[int]] = {}
        if self.pid_log.exists():
            for line in self.pid_log.read_text().splitlines():
                job_uuid, _, pid = line.partition(" ")
                if pid.isdigit():
                    logged.setdefault(job_uuid, []).append(int(pid))
        for job in list(self.jobs()):
            launched = job.meta.get("uuid", "") in logged  # started, maybe after the last save
            if job.state in ("running", "terminating") or (launched and job.state == "queued"):
                pids = {*job.meta.get("pids", []), *logged.get(job.meta.get("uuid", ""), [])}
                self.runner.kill_orphans({**job.meta, "pids": sorted(pids)})
                self._finish_job(job, exit_code=None, errors=[restarted_while_running()])
        now = time.time()
        for cluster in self.clusters():
            for node in cluster.nodes:
                if node["state"] == "running" and not node.get("job"):
                    node["state"] = "idle"
                node.pop("mounting", None)  # a node setup cut short by the stop is done again
                for mount in node.get("blobfs") or []:
                    # Keys are not in the state file: the stack's own accounts' keys are known again.
                    if mount.get("accountKey") == SECRET_PLACEHOLDER:
                        keys = self.config.storage_accounts.get(mount.get("account", ""))
                        mount["accountKey"] = keys[0] if keys else None
            self._update_node_counts(cluster, now)
        # Inline secrets live in memory only: a job that has not started loses them with the restart.
        for job in list(self.jobs()):
            if job.state == "queued" and SECRET_PLACEHOLDER in job.meta.get("secrets", {}).values():
                self._finish_job(job, exit_code=None, errors=[restarted_before_start()])

    def save(self) -> None:
        with self._save_lock:
            self._save_locked()

    def persist(self) -> None:
        """Return once the caller's changes are on disk (an accepted ARM request survives a crash).
        Group commit: a save that started after the changes were made covers every request waiting."""
        needed = self._started_saves + 1
        with self._save_lock:
            if self._finished_saves >= needed:
                return
            self._save_locked()

    def _save_locked(self) -> None:
        """Write the whole state (compact JSON: it is rewritten often). Serialised under the state lock,
        written outside it; callers hold `_save_lock`, so an older snapshot never replaces a newer one."""
        with self.lock:
            data = json.dumps(
                {"state": without_secret_values(self.state), "secret": self.secret},
                separators=(",", ":"),
                check_circular=False,
            )
            self.dirty = False
            self._last_save = time.monotonic()
            self._started_saves += 1
            generation = self._started_saves
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(data)
        os.replace(tmp, self.state_file)
        self._finished_saves = generation

    def _job_process_launched(self, key: str, job_uuid: str, pid: int) -> None:
        """The job runner started a process of the job: its pid is kept (state file, and at once in the
        pid log) so that a start after a crash can stop it."""
        with self.lock:
            job = self.state["jobs"].get(key)
            if job is not None:
                job["meta"].setdefault("pids", []).append(pid)
                self.dirty = True
        with self.pid_log.open("a") as log:
            log.write(f"{job_uuid} {pid}\n")

    # --- background progression ------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="arm-tick", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop ticking and stop every running job (it will be reported failed after a restart)."""
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        self.runner.shutdown()
        self.save()

    def _loop(self) -> None:
        while not self._stop.wait(self.config.tick_interval):
            try:
                self.tick()
            except Exception:  # keep the clock running; the error is in the log
                import traceback

                traceback.print_exc()

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.lock:
            for op_id in list(self._pending_ops):
                record = self.state["operations"].get(op_id)
                if record is None or not Operation(record).in_progress:
                    self._pending_ops.discard(op_id)
                elif Operation(record).due(now):
                    self._complete_operation(op_id, now)
            if now - self._last_prune > 60:  # finished operations are kept for an hour
                self._last_prune = now
                for op_id, record in list(self.state["operations"].items()):
                    if Operation(record).expired(now):
                        del self.state["operations"][op_id]
                        self.dirty = True
            for key in list(self.state["clusters"]):
                if key in self.state["clusters"]:
                    self._advance_cluster(key, now)
            self._schedule_jobs(now)
            self._enforce_wall_clock(now)
            save_due = self.dirty and time.monotonic() - self._last_save >= SAVE_INTERVAL
        if save_due:  # changes are saved at most every SAVE_INTERVAL, outside the tick's lock
            self.save()

    # --- operations ------------------------------------------------------------------------------
    def new_operation(
        self, kind: str, resource_id: str, subscription: str, delay: float | None = None, **extra: Any
    ) -> str:
        op_id = str(uuid.uuid4())
        now = time.time()
        done_at = now + (self.config.operation_delay if delay is None else delay)
        self.state["operations"][op_id] = Operation.new(
            kind, resource_id, subscription, done_at, now, **extra
        )
        self._pending_ops.add(op_id)
        self.dirty = True
        return op_id

    def operation(self, op_id: str) -> dict[str, Any]:
        with self.lock:
            op = self.state["operations"].get(op_id)
            if not op:
                raise ArmError("OperationNotFound", f"Operation {op_id} was not found.")
            return clone(op)

    def _complete_operation(self, op_id: str, now: float) -> None:
        op = Operation(self.state["operations"][op_id])
        kind, key = op.meta["kind"], op.meta["resource"]
        collection = op.meta.get("collection")
        if kind == "create":
            record = self.state[collection].get(key)
            if record and record["body"]["properties"].get("provisioningState") == "creating":
                MODELS[collection](record).set_provisioning("succeeded", now)
                self.dirty = True
        elif kind == "delete":
            if collection == "resourceGroups":
                self._delete_group_now(key)
            else:
                self._delete_now(collection, key)
        elif kind == "terminate":
            job = self._job(key)
            if job and job.state == "terminating":
                return  # still waiting for the processes to exit
        op.complete(now)
        self.dirty = True

    # --- resource groups -------------------------------------------------------------------------
    def group_id(self, sub: str, rg: str) -> str:
        return f"/subscriptions/{sub}/resourceGroups/{rg}"

    def require_group(self, sub: str, rg: str) -> dict[str, Any]:
        group = self.state["resourceGroups"].get(resource_key(self.group_id(sub, rg)))
        if not group or ResourceGroup(group).deleting:
            raise ArmError("ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")
        return group

    def put_group(self, sub: str, rg: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            key = resource_key(self.group_id(sub, rg))
            existing = self.state["resourceGroups"].get(key)
            if existing:
                group = ResourceGroup(existing)
                group.update(rg, body)
                self.dirty = True
                return 200, group.render()
            record = ResourceGroup.new(sub, rg, body)
            self.state["resourceGroups"][key] = record
            self.dirty = True
            return 201, ResourceGroup(record).render()

    def get_group(self, sub: str, rg: str) -> dict[str, Any]:
        with self.lock:
            return ResourceGroup(self.require_group(sub, rg)).render()

    def list_groups(self, sub: str) -> list[dict[str, Any]]:
        with self.lock:
            return [
                ResourceGroup(g).render()
                for g in self.state["resourceGroups"].values()
                if g["meta"]["subscription"].lower() == sub.lower()
            ]

    def delete_group(self, sub: str, rg: str) -> str | None:
        with self.lock:
            key = resource_key(self.group_id(sub, rg))
            group = self.state["resourceGroups"].get(key)
            if not group:
                return None
            ResourceGroup(group).begin_delete()
            # Stop the group's jobs now; the resources vanish when the operation completes.
            prefix = key + "/"
            for job_key in self.state["jobs"]:
                if job_key.startswith(prefix):
                    self.runner.kill(job_key)
            return self.new_operation("delete", key, sub, collection="resourceGroups")

    def _delete_group_now(self, key: str) -> None:
        prefix = key + "/"
        for collection in (*WORKSPACE_CHILDREN, "workspaces"):
            for child in [k for k in self.state[collection] if k.startswith(prefix)]:
                self._delete_now(collection, child)
        self.state["resourceGroups"].pop(key, None)
        self.dirty = True

    # --- Batch AI: common ------------------------------------------------------------------------
    def _ids(self, sub: str, rg: str, ws: str) -> str:
        return workspace_id(sub, rg, ws)

    def _get(self, model: type[Resource], resource_id: str) -> Any:
        record = self.state[model.collection].get(resource_key(resource_id))
        if not record:
            name = resource_id.rstrip("/").rsplit("/", 1)[-1]
            raise ArmError("ResourceNotFound", f"The {model.kind} '{name}' was not found ({resource_id}).")
        return model(record)

    def _child(self, model: type[Resource], sub: str, rg: str, ws: str, path: str) -> Any:
        """The workspace's resource at `<workspace id>/<path>`; 404 for it, its workspace or group."""
        self.require_workspace(sub, rg, ws)
        return self._get(model, f"{self._ids(sub, rg, ws)}/{path}")

    def _list_children(self, model: type[Resource], sub: str, rg: str, ws: str, path: str) -> list[dict]:
        self.require_workspace(sub, rg, ws)
        return self._list(model, f"{self._ids(sub, rg, ws)}/{path}")

    def _delete_child(self, model: type[Resource], sub: str, rg: str, ws: str, path: str) -> str | None:
        self.require_workspace(sub, rg, ws)
        return self._begin_delete(model, f"{self._ids(sub, rg, ws)}/{path}", sub)

    def _delete_now(self, collection: str, key: str) -> None:
        record = self.state[collection].pop(key, None)
        if record is None:
            return
        if collection == "jobs":
            self.runner.kill(key)
            self._release_nodes(key)
        elif collection == "clusters":
            for job in list(self.jobs()):
                if job.cluster_key == key:
                    self.runner.kill(job.key)
                    if job.active:
                        self._finish_job(job, exit_code=None, errors=[cluster_deleted()])
            node_root = record["meta"].get("node_root")
            if node_root:
                shutil.rmtree(node_root, ignore_errors=True)
        elif collection in ("workspaces", "experiments"):
            prefix = key + "/"
            for child_collection in WORKSPACE_CHILDREN:
                for child in [k for k in self.state[child_collection] if k.startswith(prefix)]:
                    self._delete_now(child_collection, child)
        self.dirty = True

    def _begin_delete(self, model: type[Resource], resource_id: str, sub: str) -> str | None:
        key = resource_key(resource_id)
        record = self.state[model.collection].get(key)
        if not record:
            return None
        model(record).set_provisioning("deleting")
        self.dirty = True
        if model is Job:
            self.runner.kill(key)
        return self.new_operation("delete", key, sub, collection=model.collection)

    def _list(self, model: type[Resource], parent_id: str) -> list[dict[str, Any]]:
        prefix = resource_key(parent_id) + "/"
        children = [
            r
            for k, r in self.state[model.collection].items()
            if k.startswith(prefix) and "/" not in k[len(prefix) :]
        ]
        return [model(r).render() for r in sorted(children, key=lambda r: r["body"]["id"])]

    # --- workspaces ------------------------------------------------------------------------------
    def create_workspace(self, sub: str, rg: str, ws: str, body: dict[str, Any]) -> tuple[str | None, dict]:
        with self.lock:
            self.require_group(sub, rg)
            rid = self._ids(sub, rg, ws)
            existing = self.state["workspaces"].get(resource_key(rid))
            if existing:
                existing["body"]["tags"] = body.get("tags") or existing["body"].get("tags", {})
                self.dirty = True
                return None, Workspace(existing).render()
            workspace = Workspace.create(rid, body)
            self._add(workspace)
            op = self.new_operation("create", rid, sub, collection="workspaces")
            return op, workspace.render()

    def update_workspace(self, sub: str, rg: str, ws: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.require_group(sub, rg)
            workspace = self._get(Workspace, self._ids(sub, rg, ws))
            if "tags" in body:
                workspace.body["tags"] = body["tags"] or {}
            self.dirty = True
            return workspace.render()

    def get_workspace(self, sub: str, rg: str, ws: str) -> dict[str, Any]:
        with self.lock:
            self.require_group(sub, rg)
            return self._get(Workspace, self._ids(sub, rg, ws)).render()

    def require_workspace(self, sub: str, rg: str, ws: str) -> None:
        self.require_group(sub, rg)
        self._get(Workspace, self._ids(sub, rg, ws))

    def list_workspaces(self, sub: str, rg: str | None) -> list[dict[str, Any]]:
        with self.lock:
            if rg is not None:
                self.require_group(sub, rg)
            prefix = f"/subscriptions/{sub}/" + (f"resourcegroups/{rg}/" if rg else "")
            return [
                Workspace(r).render()
                for k, r in sorted(self.state["workspaces"].items())
                if k.startswith(prefix.lower())
            ]

    def delete_workspace(self, sub: str, rg: str, ws: str) -> str | None:
        with self.lock:
            self.require_group(sub, rg)
            return self._begin_delete(Workspace, self._ids(sub, rg, ws), sub)

    # --- experiments -----------------------------------------------------------------------------
    def create_experiment(self, sub: str, rg: str, ws: str, exp: str) -> tuple[str | None, dict]:
        with self.lock:
            self.require_workspace(sub, rg, ws)
            rid = f"{self._ids(sub, rg, ws)}/experiments/{exp}"
            existing = self.state["experiments"].get(resource_key(rid))
            if existing:
                return None, Experiment(existing).render()
            experiment = Experiment.create(rid)
            self._add(experiment)
            return self.new_operation("create", rid, sub, collection="experiments"), experiment.render()

    def get_experiment(self, sub: str, rg: str, ws: str, exp: str) -> dict[str, Any]:
        with self.lock:
            return self._child(Experiment, sub, rg, ws, f"experiments/{exp}").render()

    def list_experiments(self, sub: str, rg: str, ws: str) -> list[dict[str, Any]]:
        with self.lock:
            return self._list_children(Experiment, sub, rg, ws, "experiments")

    def delete_experiment(self, sub: str, rg: str, ws: str, exp: str) -> str | None:
        with self.lock:
            return self._delete_child(Experiment, sub, rg, ws, f"experiments/{exp}")

    # --- file servers ----------------------------------------------------------------------------
    def create_file_server(
        self, sub: str, rg: str, ws: str, name: str, body: dict[str, Any]
    ) -> tuple[str | None, dict]:
        with self.lock:
            self.require_workspace(sub, rg, ws)
            rid = f"{self._ids(sub, rg, ws)}/fileServers/{name}"
            existing = self.state["fileServers"].get(resource_key(rid))
            if existing:
                if existing["meta"].get("request") == body:
                    return None, FileServer(existing).render()
                raise ArmError(
                    "FileServerAlreadyExists",
                    f"File server '{name}' already exists with different properties; delete it first.",
                )
            export_dir = self.config.data_dir / "fileservers" / rg / ws / name
            export_dir.mkdir(parents=True, exist_ok=True)
            server = FileServer.create(rid, sub, rg, body, export_dir)
            self._add(server)
            return self.new_operation("create", rid, sub, collection="fileServers"), server.render()

    def get_file_server(self, sub: str, rg: str, ws: str, name: str) -> dict[str, Any]:
        with self.lock:
            return self._child(FileServer, sub, rg, ws, f"fileServers/{name}").render()

    def list_file_servers(self, sub: str, rg: str, ws: str) -> list[dict[str, Any]]:
        with self.lock:
            return self._list_children(FileServer, sub, rg, ws, "fileServers")

    def delete_file_server(self, sub: str, rg: str, ws: str, name: str) -> str | None:
        with self.lock:
            return self._delete_child(FileServer, sub, rg, ws, f"fileServers/{name}")

    # --- clusters --------------------------------------------------------------------------------
    def create_cluster(
        self, sub: str, rg: str, ws: str, name: str, body: dict[str, Any]
    ) -> tuple[str | None, dict]:
        with self.lock:
            self.require_workspace(sub, rg, ws)
            rid = f"{self._ids(sub, rg, ws)}/clusters/{name}"
            existing = self.state["clusters"].get(resource_key(rid))
            if existing:
                if existing["meta"]["request"] == body:
                    return None, Cluster(existing).render()
                raise ArmError(
                    "ClusterAlreadyExists",
                    f"Cluster '{name}' already exists with different properties; change its scale "
                    "settings with PATCH (Clusters_Update) or delete it first.",
                )
            now = time.time()
            node_root = self.config.data_dir / "nodes" / rg / ws / name
            cluster = Cluster.create(rid, sub, rg, body, node_root, now)
            self._add(cluster)
            scale = cluster.props["scaleSettings"]
            manual = scale.get("manual")
            target = (
                manual["targetNodeCount"] if manual is not None else scale["autoScale"]["initialNodeCount"]
            )
            self._resize(cluster, target, now)
            self._update_node_counts(cluster, time.time())
            op = self.new_operation("create", rid, sub, collection="clusters")
            return op, cluster.render()

    def update_cluster(self, sub: str, rg: str, ws: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            cluster = self._child(Cluster, sub, rg, ws, f"clusters/{name}")
            scale = (body.get("properties") or {}).get("scaleSettings")
            if scale:
                cluster.set_scale(scale)
                self.dirty = True
                self._advance_cluster(cluster.key, time.time())
            return cluster.render()

    def get_cluster(self, sub: str, rg: str, ws: str, name: str) -> dict[str, Any]:
        with self.lock:
            return self._child(Cluster, sub, rg, ws, f"clusters/{name}").render()

    def list_clusters(self, sub: str, rg: str, ws: str) -> list[dict[str, Any]]:
        with self.lock:
            return self._list_children(Cluster, sub, rg, ws, "clusters")

    def delete_cluster(self, sub: str, rg: str, ws: str, name: str) -> str | None:
        with self.lock:
            return self._delete_child(Cluster, sub, rg, ws, f"clusters/{name}")

    def cluster_remote_logins(self, sub: str, rg: str, ws: str, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return self._child(Cluster, sub, rg, ws, f"clusters/{name}").remote_logins()

    def cluster_allocations(self) -> list[dict[str, Any]]:
        """Each cluster's node allocation over time (the admin endpoint ``/_emulator/clusters``)."""
        with self.lock:
            now = time.time()
            return [cluster.allocation_report(now) for cluster in self.clusters()]

    # --- cluster progression ---------------------------------------------------------------------
    def _demand(self, cluster_key: str) -> int:
        """Nodes the cluster's queued and running jobs want (what auto-scale follows)."""
        return sum(job.node_count for job in self.jobs() if job.cluster_key == cluster_key and job.active)

    def _target_nodes(self, cluster: Cluster) -> int:
        auto = "autoScale" in cluster.props["scaleSettings"]
        return cluster.target_nodes(self._demand(cluster.key) if auto else 0)

    def _resize(self, cluster: Cluster, target: int, now: float) -> None:
        """Start adding or removing nodes to reach `target`; the jobs on nodes that leave are stopped,
        to be queued again or failed as the cluster's deallocation option says."""
        changed, evicted = cluster.resize(target, now, self.config.provisioning_delay)
        for job_key, option in evicted:
            job = self._job(job_key)
            if job:
                self.runner.kill(job_key)
                job.evicted(option)
        if changed:
            self.dirty = True

    def _advance_cluster(self, key: str, now: float) -> None:
        cluster = Cluster(self.state["clusters"][key])
        if cluster.deleting:
            return
        before = cluster.fingerprint()
        for node in cluster.nodes_ready(now):
            self._prepare_node(cluster, node)
        for node_id in cluster.remove_departed(now):
            shutil.rmtree(cluster.node_root / node_id, ignore_errors=True)
        if cluster.provisioned or cluster.nodes:
            target = self._target_nodes(cluster)
            if len(cluster.live_nodes) != target:
                self._resize(cluster, target, now)
        cluster.settle(now)
        self._update_node_counts(cluster, time.time())
        if cluster.fingerprint() != before:
            self.dirty = True

    def _update_node_counts(self, cluster: Cluster, now: float) -> None:
        if cluster.update_node_counts(now):
            self.dirty = True

    # --- node setup ------------------------------------------------------------------------------
    def _prepare_node(self, cluster: Cluster, node: dict[str, Any]) -> None:
        """Node setup: mount the cluster's volumes (symlinks to their local directories)."""
        mount_root = cluster.node_root / node["id"] / "mounts"
        mount_root.mkdir(parents=True, exist_ok=True)
        blob_mounts: list[BlobMount] = []
        errors = self.mounts.mount_volumes(
            cluster.meta["node_setup"].get("mountVolumes") or {}, mount_root, blob_mounts
        )
        if self.config.node_failure_rate and self.node_random.random() < self.config.node_failure_rate:
            errors.append(
                resource_error(
                    "NodeSetupFailed",
                    "Node setup failed and the node is unusable (injected node failure).",
                    [],
                )
            )
        if blob_mounts and not errors:
            # Reading containers takes as long as they are big: off the lock, so that nothing else
            # waits; the node stays `preparing` meanwhile.
            node["mounting"] = True
            threading.Thread(
                target=self._mount_node_containers,
                args=(cluster.id, node["id"], blob_mounts),
                name=f"blobfs-{node['id']}",
                daemon=True,
            ).start()
            return
        cluster.finish_node_setup(node, errors)

    def _file_server_export(self, file_server_id: str) -> Path | None:
        """The directory a file server exports (for mounts that name it); None if it does not exist."""
        server = self.state["fileServers"].get(resource_key(file_server_id))
        return Path(server["meta"]["export_dir"]) if server else None

    def _mount_node_containers(self, cluster_id: str, node_id: str, mounts: list[BlobMount]) -> None:
        errors = []
        for mount in mounts:
            try:
                blobfs.pull(mount)
            except blobfs.MountError as exc:
                errors.append(exc.error)
            except Exception as exc:  # never leave the node preparing for good
                errors.append(blobfs.MountError(mount, f"unexpected failure: {exc!r}").error)
        with self.lock:
            cluster = self._cluster(resource_key(cluster_id))
            node = cluster.node(node_id) if cluster else None
            if cluster is None or node is None or not node.pop("mounting", False):
                return  # the cluster or node went away meanwhile
            node["blobfs"] = [mount.to_json() for mount in mounts]
            cluster.finish_node_setup(node, errors)
            self._update_node_counts(cluster, time.time())
            self.dirty = True

    # --- jobs ------------------------------------------------------------------------------------
    def job_id(self, sub: str, rg: str, ws: str, exp: str, job: str) -> str:
        return f"{self._ids(sub, rg, ws)}/experiments/{exp}/jobs/{job}"

    def create_job(
        self, sub: str, rg: str, ws: str, exp: str, name: str, body: dict[str, Any]
    ) -> tuple[str | None, dict]:
        with self.lock:
            self._child(Experiment, sub, rg, ws, f"experiments/{exp}")
            rid = self.job_id(sub, rg, ws, exp, name)
            existing = self.state["jobs"].get(resource_key(rid))
            if existing:
                if existing["meta"]["request"] == body:
                    return None, Job(existing).render()
                raise ArmError(
                    "JobAlreadyExists",
                    f"Job '{name}' already exists with different properties; jobs cannot be changed, "
                    "delete it first or use another name.",
                )
            cluster_id = body["properties"]["cluster"]["id"]
            m = CLUSTER_ID.match(cluster_id)
            canonical = f"{self._ids(*m.groups()[:3])}/clusters/{m.group(4)}" if m else cluster_id
            cluster = self._cluster(resource_key(canonical))
            if not cluster:
                raise ArmError(
                    "InvalidClusterReference",
                    f"properties.cluster.id: cluster '{cluster_id}' does not exist.",
                    target="properties.cluster.id",
                )
            segment = f"{sub}/{rg}/workspaces/{ws}/experiments/{exp}/jobs/{name}/{Job.new_uuid()}"
            job = Job.create(rid, body, cluster.id, segment, time.time())
            self._add(job)
            op = self.new_operation("create", rid, sub, collection="jobs")
            return op, job.render()

    def get_job(self, sub: str, rg: str, ws: str, exp: str, name: str) -> dict[str, Any]:
        with self.lock:
            return self._child(Job, sub, rg, ws, f"experiments/{exp}/jobs/{name}").render()

    def list_jobs(self, sub: str, rg: str, ws: str, exp: str) -> list[dict[str, Any]]:
        with self.lock:
            self._child(Experiment, sub, rg, ws, f"experiments/{exp}")
            return self._list_children(Job, sub, rg, ws, f"experiments/{exp}/jobs")

    def delete_job(self, sub: str, rg: str, ws: str, exp: str, name: str) -> str | None:
        with self.lock:
            return self._delete_child(Job, sub, rg, ws, f"experiments/{exp}/jobs/{name}")

    def terminate_job(self, sub: str, rg: str, ws: str, exp: str, name: str) -> str:
        with self.lock:
            self.require_workspace(sub, rg, ws)
            rid = self.job_id(sub, rg, ws, exp, name)
            job = self._get(Job, rid)
            if job.state == "queued":
                self._finish_job(job, None, [job_terminated()])
            elif job.state in ("running", "terminating"):
                job.terminate([job_terminated()])
                self.runner.kill(job.key)
            self.dirty = True
            return self.new_operation("terminate", rid, sub, collection="jobs")

    def job_remote_logins(self, sub: str, rg: str, ws: str, exp: str, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return self._child(Job, sub, rg, ws, f"experiments/{exp}/jobs/{name}").remote_logins()

    def job_output_dir(
        self, sub: str, rg: str, ws: str, exp: str, name: str, directory_id: str
    ) -> Path | None:
        """The local directory behind an output directory id (`stdouterr` or a declared id); None when
        the job has not resolved its paths yet (still queued)."""
        with self.lock:
            job = self._child(Job, sub, rg, ws, f"experiments/{exp}/jobs/{name}")
            return job.output_dir(directory_id)

    # --- job progression -------------------------------------------------------------------------
    def _schedule_jobs(self, now: float) -> None:
        # Only clusters with an idle node can start anything: most ticks end here.
        free = {cluster.key for cluster in self.clusters() if cluster.provisioned and cluster.idle_nodes()}
        if not free:
            return
        queued = [
            job
            for job in self.jobs()
            if job.state == "queued"
            and job.props.get("provisioningState") == "succeeded"
            and job.cluster_key in free
        ]
        queued.sort(key=Job.schedule_order)
        for job in queued:
            cluster = self._cluster(job.cluster_key)
            if not cluster or not cluster.provisioned:
                continue
            idle = cluster.idle_nodes()
            if len(idle) < job.node_count:
                continue
            chosen = idle[: job.node_count]
            for node in chosen:
                node["state"] = "running"
                node["job"] = job.key
            job.start([n["id"] for n in chosen], now)
            self._update_node_counts(cluster, time.time())
            self.dirty = True
            node_dir = cluster.node_root / chosen[0]["id"]
            try:
                job.meta["paths"] = self.runner.start(
                    job.key, job.record, node_dir / "mounts", node_dir, self._node_blob_mounts(chosen[0])
                )
            except Exception as exc:  # a launch failure is a failed job, as on the service
                self._finish_job(job, None, [resource_error("JobLaunchFailed", str(exc))])

    def _node_blob_mounts(self, node: dict[str, Any]) -> NodeBlobMounts:
        """The node's container mounts, for the job runner's write-back at the job's end."""

        def read() -> list[BlobMount]:
            with self.lock:
                return [BlobMount.from_json(m) for m in node.get("blobfs") or []]

        def written(mounts: list[BlobMount]) -> None:
            with self.lock:
                node["blobfs"] = [m.to_json() for m in mounts]
                self.dirty = True

        return NodeBlobMounts(read, written)

    def _enforce_wall_clock(self, now: float) -> None:
        for job in self.jobs():
            if job.over_wall_clock(now):
                job.terminate([job.wall_clock_error()], now)
                self.runner.kill(job.key)
                self.dirty = True

    def _release_nodes(self, key: str) -> None:
        now = time.time()
        for cluster in self.clusters():
            if cluster.release(key):
                self._update_node_counts(cluster, now)
                self.dirty = True

    def job_process_exited(self, key: str, exit_code: int | None, errors: list[dict[str, Any]]) -> None:
        """The job runner's callback: every process of the job has exited."""
        with self.lock:
            job = self._job(key)
            if not job:
                return
            if job.meta.pop("requeue", False):
                job.requeue()
                self._release_nodes(key)
                self.dirty = True
                return
            forced = job.meta.get("forced_errors")
            self._finish_job(job, exit_code, (forced or []) + errors)
            now = time.time()
            for record in self.state["operations"].values():
                op = Operation(record)
                if op.in_progress and op.meta["resource"] == key:
                    op.hasten(now)

    def _finish_job(self, job: Job, exit_code: int | None, errors: list[dict[str, Any]]) -> None:
        job.finish(exit_code, errors)
        self._release_nodes(job.key)
        self.dirty = True

    # --- usages ----------------------------------------------------------------------------------
    def usages(self, sub: str) -> list[dict[str, Any]]:
        with self.lock:
            clusters = [
                c for k, c in self.state["clusters"].items() if k.startswith(f"/subscriptions/{sub.lower()}/")
            ]
            dedicated = low = 0
            for c in clusters:
                cores = VM_CORES.get(c["body"]["properties"]["vmSize"].lower(), 6) * len(c["meta"]["nodes"])
                if c["body"]["properties"].get("vmPriority") == "lowpriority":
                    low += cores
                else:
                    dedicated += cores

            def usage(name: str, value: int, limit: int) -> dict[str, Any]:
                return {
                    "unit": "Count",
                    "currentValue": value,
                    "limit": limit,
                    "name": {"value": name, "localizedValue": name},
                }

            return [
                usage("Clusters", len(clusters), 20),
                usage("Total Cluster Dedicated Regional vCPUs", dedicated, 600),
                usage("Total Cluster LowPriority Regional vCPUs", low, 150),
            ]
