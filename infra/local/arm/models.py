"""The ARM emulator's backend: resource groups and Batch AI resources, their state progressions, and
persistence.

Everything the wire shows lives in each record's `body` (the ARM JSON shape); what only the emulator
needs (nodes, job process ids, resolved paths, operation deadlines) lives in `meta`. Records are keyed
by lower-cased resource id because ARM ids are case-insensitive.

Slow operations are explicit state progressions advanced by `tick()` (called by a background thread):
- long-running operation: InProgress until `done_at`, then its completion runs (resource becomes
  `succeeded`, or is removed for deletes) and it reports Succeeded;
- cluster allocation: `resizing` while nodes are added (`preparing` for the provisioning delay, then
  `idle`, or `unusable` when a mount fails) or removed (`leaving`), then `steady`;
- jobs: `queued` until `nodeCount` idle nodes exist on a steady-or-resizing cluster, then `running`
  (processes started by the job runner), then `succeeded`/`failed` when they exit.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import pickle
import random
import re
import secrets
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from infra.local.arm import blobfs
from infra.local.arm.blobfs import BlobMount, account_endpoint
from infra.local.arm.errors import (
    ArmError,
    cluster_deleted,
    job_failed,
    job_terminated,
    restarted_before_start,
    restarted_while_running,
)
from infra.local.arm.jobrunner import JobCallbacks, JobRunner, NodeBlobMounts

BATCHAI_API_VERSION = "2018-05-01"
PROVIDER = "Microsoft.BatchAI"
OPERATION_RETENTION = 3600.0
# Seconds between saves of what the clock changed (allocation, job states); accepted requests are saved
# before they are answered (Backend.persist), launched pids are logged at once.
SAVE_INTERVAL = 0.5
NODE_STATES = ("idle", "running", "preparing", "leaving", "unusable")
ALLOCATION_HISTORY = 200  # node count changes kept per cluster for /_emulator/clusters
PRIORITY_ORDER = {"high": 0, "normal": 1, "low": 2}
# vCPUs per VM size family, for usages; unknown sizes count as 6.
VM_CORES = {"standard_nc6": 6, "standard_nc12": 12, "standard_nc24": 24, "standard_d1": 1, "standard_d2": 2}


# A cluster reference; the service also accepted the singular "workspace" (as in its PutJob example).
CLUSTER_ID = re.compile(
    r"(?i)^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.BatchAI/workspaces?/([^/]+)"
    r"/clusters/([^/]+)$"
)


@dataclass
class Config:
    data_dir: Path
    files_root: Path
    files_endpoint: str = "http://127.0.0.1:10004/devstoreaccount1"
    provisioning_delay: float = 5.0  # seconds a cluster spends resizing (nodes preparing)
    operation_delay: float = 0.5  # seconds a long-running operation stays InProgress
    retry_after: int = 1  # Retry-After (whole seconds: SDKs parse it as an integer) on 202 answers
    job_python: str = ""  # interpreter for python toolkits; default: the emulator's own
    location: str = "eastus"
    tick_interval: float = 0.1
    node_failure_rate: float = 0.0  # fraction of new nodes that fail setup and become unusable
    node_failure_seed: int | None = None
    # Account name -> keys (base64) of the storage accounts the local stack serves: Microsoft.Storage
    # shows them, and download URLs of outputs in a share are SAS URLs signed with the first key.
    storage_accounts: dict[str, list[str]] = field(default_factory=dict)
    storage_resource_group: str = "local-storage"
    # Service -> endpoint URL of the local stack (blob, queue, table, file), for the accounts' endpoints.
    storage_endpoints: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def storage_keys(self) -> dict[str, bytes]:
        """Account name -> its first key, decoded: what SAS signatures are computed with."""
        return {name: base64.b64decode(keys[0]) for name, keys in self.storage_accounts.items() if keys}


def now_iso(ts: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_duration(value: str) -> float:
    """ISO 8601 duration (`P7D`, `PT1H30M`, `PT0.5S`) or .NET TimeSpan (`7.00:00:00`) in seconds."""
    m = re.fullmatch(
        r"P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
        r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?",
        value.strip(),
    )
    if m and value.strip() not in ("P", "PT"):
        parts = {k: float(v) if v else 0.0 for k, v in m.groupdict().items()}
        return parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]
    m = re.fullmatch(r"(?:(\d+)\.)?(\d+):(\d+):(\d+(?:\.\d+)?)", value.strip())
    if m:
        days, hours, minutes, seconds = m.groups()
        return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    raise ValueError(f"not a duration: {value!r}")


def resource_key(resource_id: str) -> str:
    return resource_id.rstrip("/").lower()


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
        self.runner = JobRunner(
            JobCallbacks(
                exited=self.job_process_exited,
                launched=self._job_process_launched,
                mount_volumes=self.mount_volumes,
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

    # --- persistence -----------------------------------------------------------------------------
    def _load(self) -> None:
        if self.state_file.exists():
            saved = json.loads(self.state_file.read_text())
            self.state.update(saved["state"])
            self.secret = saved.get("secret", "")
            self._recover_after_restart()
        if not self.secret:
            self.secret = secrets.token_hex(32)
        self._pending_ops = {k for k, op in self.state["operations"].items() if op["status"] == "InProgress"}
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
        for key, job in self.state["jobs"].items():
            props = job["body"]["properties"]
            launched = job["meta"].get("uuid", "") in logged  # started, maybe after the last save
            if props.get("executionState") in ("running", "terminating") or (
                launched and props.get("executionState") == "queued"
            ):
                pids = {*job["meta"].get("pids", []), *logged.get(job["meta"].get("uuid", ""), [])}
                self.runner.kill_orphans({**job["meta"], "pids": sorted(pids)})
                self._finish_job(
                    key,
                    exit_code=None,
                    errors=[restarted_while_running()],
                )
        for cluster in self.state["clusters"].values():
            for node in cluster["meta"]["nodes"]:
                if node["state"] == "running" and not node.get("job"):
                    node["state"] = "idle"
                node.pop("mounting", None)  # a node setup cut short by the stop is done again
                for mount in node.get("blobfs") or []:
                    # Keys are not in the state file: the stack's own accounts' keys are known again.
                    if mount.get("accountKey") == SECRET_PLACEHOLDER:
                        keys = self.config.storage_accounts.get(mount.get("account", ""))
                        mount["accountKey"] = keys[0] if keys else None
            self._update_node_counts(cluster)
        # Inline secrets live in memory only: a job that has not started loses them with the restart.
        for key, job in self.state["jobs"].items():
            props = job["body"]["properties"]
            if (
                props.get("executionState") == "queued"
                and SECRET_PLACEHOLDER in job["meta"].get("secrets", {}).values()
            ):
                self._finish_job(
                    key,
                    exit_code=None,
                    errors=[restarted_before_start()],
                )

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
                op = self.state["operations"].get(op_id)
                if op is None or op["status"] != "InProgress":
                    self._pending_ops.discard(op_id)
                elif now >= op["meta"]["done_at"]:
                    self._complete_operation(op_id, now)
            if now - self._last_prune > 60:  # finished operations are kept for an hour
                self._last_prune = now
                for op_id, op in list(self.state["operations"].items()):
                    if (
                        op["status"] != "InProgress"
                        and now - op["meta"].get("ended_at", now) > OPERATION_RETENTION
                    ):
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
        self.state["operations"][op_id] = {
            "status": "InProgress",
            "startTime": now_iso(now),
            "subscription": subscription,
            "meta": {
                "kind": kind,
                "resource": resource_key(resource_id),
                "done_at": now + (self.config.operation_delay if delay is None else delay),
                **extra,
            },
        }
        self._pending_ops.add(op_id)
        self.dirty = True
        return op_id

    def operation(self, op_id: str) -> dict[str, Any]:
        with self.lock:
            op = self.state["operations"].get(op_id)
            if not op:
                raise ArmError("OperationNotFound", f"Operation {op_id} was not found.")
            return _clone(op)

    def _complete_operation(self, op_id: str, now: float) -> None:
        op = self.state["operations"][op_id]
        meta = op["meta"]
        kind, key = meta["kind"], meta["resource"]
        collection = meta.get("collection")
        if kind == "create":
            record = self.state[collection].get(key)
            if record and record["body"]["properties"].get("provisioningState") == "creating":
                self._set_provisioning(record, "succeeded", now)
        elif kind == "delete":
            if collection == "resourceGroups":
                self._delete_group_now(key)
            else:
                self._delete_now(collection, key)
        elif kind == "terminate":
            job = self.state["jobs"].get(key)
            if job and job["body"]["properties"].get("executionState") == "terminating":
                return  # still waiting for the processes to exit
        op["status"] = "Succeeded"
        op["endTime"] = now_iso(now)
        meta["ended_at"] = now
        self.dirty = True

    def _set_provisioning(self, record: dict[str, Any], state: str, now: float | None = None) -> None:
        props = record["body"]["properties"]
        props["provisioningState"] = state
        props["provisioningStateTransitionTime"] = now_iso(now)
        self.dirty = True

    # --- resource groups -------------------------------------------------------------------------
    def group_id(self, sub: str, rg: str) -> str:
        return f"/subscriptions/{sub}/resourceGroups/{rg}"

    def require_group(self, sub: str, rg: str) -> dict[str, Any]:
        group = self.state["resourceGroups"].get(resource_key(self.group_id(sub, rg)))
        if not group or group["body"]["properties"]["provisioningState"] == "Deleting":
            raise ArmError("ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")
        return group

    def put_group(self, sub: str, rg: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            key = resource_key(self.group_id(sub, rg))
            existing = self.state["resourceGroups"].get(key)
            if existing and existing["body"]["properties"]["provisioningState"] == "Deleting":
                raise ArmError(
                    "ResourceGroupBeingDeleted", f"The resource group '{rg}' is in deprovisioning state."
                )
            if existing:
                if body.get("location", "").lower() != existing["body"]["location"].lower():
                    raise ArmError(
                        "InvalidResourceGroupLocation",
                        f"Invalid resource group location '{body.get('location')}'. The Resource group "
                        f"already exists in location '{existing['body']['location']}'.",
                    )
                existing["body"]["tags"] = body.get("tags") or {}
                self.dirty = True
                return 200, _clone(existing["body"])
            group_body = {
                "id": self.group_id(sub, rg),
                "name": rg,
                "type": "Microsoft.Resources/resourceGroups",
                "location": body["location"],
                "tags": body.get("tags") or {},
                "properties": {"provisioningState": "Succeeded"},
            }
            if body.get("managedBy"):
                group_body["managedBy"] = body["managedBy"]
            self.state["resourceGroups"][key] = {"body": group_body, "meta": {"subscription": sub}}
            self.dirty = True
            return 201, _clone(group_body)

    def get_group(self, sub: str, rg: str) -> dict[str, Any]:
        with self.lock:
            return _clone(self.require_group(sub, rg)["body"])

    def list_groups(self, sub: str) -> list[dict[str, Any]]:
        with self.lock:
            return [
                _clone(g["body"])
                for g in self.state["resourceGroups"].values()
                if g["meta"]["subscription"].lower() == sub.lower()
            ]

    def delete_group(self, sub: str, rg: str) -> str | None:
        with self.lock:
            key = resource_key(self.group_id(sub, rg))
            group = self.state["resourceGroups"].get(key)
            if not group:
                return None
            group["body"]["properties"]["provisioningState"] = "Deleting"
            # Stop the group's jobs now; the resources vanish when the operation completes.
            prefix = key + "/"
            for job_key, job in self.state["jobs"].items():
                if job_key.startswith(prefix):
                    self._kill_job(job_key, job)
            return self.new_operation("delete", key, sub, collection="resourceGroups")

    def _delete_group_now(self, key: str) -> None:
        prefix = key + "/"
        for collection in ("jobs", "experiments", "clusters", "fileServers", "workspaces"):
            for child in [k for k in self.state[collection] if k.startswith(prefix)]:
                self._delete_now(collection, child)
        self.state["resourceGroups"].pop(key, None)
        self.dirty = True

    # --- Batch AI: common ------------------------------------------------------------------------
    def _ids(self, sub: str, rg: str, ws: str) -> str:
        return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{PROVIDER}/workspaces/{ws}"

    def _get_record(self, collection: str, resource_id: str, kind: str) -> dict[str, Any]:
        record = self.state[collection].get(resource_key(resource_id))
        if not record:
            name = resource_id.rstrip("/").rsplit("/", 1)[-1]
            raise ArmError("ResourceNotFound", f"The {kind} '{name}' was not found ({resource_id}).")
        return record

    def _new_record(
        self, collection: str, resource_id: str, rtype: str, properties: dict[str, Any], **top: Any
    ) -> dict[str, Any]:
        now = now_iso()
        name = resource_id.rsplit("/", 1)[-1]
        body = {"id": resource_id, "name": name, "type": rtype, **top, "properties": properties}
        properties.setdefault("creationTime", now)
        properties["provisioningState"] = "creating"
        properties["provisioningStateTransitionTime"] = now
        record = {"body": body, "meta": {}}
        self.state[collection][resource_key(resource_id)] = record
        self.dirty = True
        return record

    def _delete_now(self, collection: str, key: str) -> None:
        record = self.state[collection].pop(key, None)
        if record is None:
            return
        if collection == "jobs":
            self._kill_job(key, record)
            self._release_nodes(key)
        elif collection == "clusters":
            for job_key, job in list(self.state["jobs"].items()):
                if resource_key(job["body"]["properties"]["cluster"]["id"]) == key:
                    self._kill_job(job_key, job)
                    if job["body"]["properties"].get("executionState") in (
                        "queued",
                        "running",
                        "terminating",
                    ):
                        self._finish_job(
                            job_key,
                            exit_code=None,
                            errors=[cluster_deleted()],
                        )
            node_root = record["meta"].get("node_root")
            if node_root:
                shutil.rmtree(node_root, ignore_errors=True)
        elif collection in ("workspaces", "experiments"):
            prefix = key + "/"
            for child_collection in ("jobs", "experiments", "clusters", "fileServers"):
                for child in [k for k in self.state[child_collection] if k.startswith(prefix)]:
                    self._delete_now(child_collection, child)
        self.dirty = True

    def _begin_delete(self, collection: str, resource_id: str, sub: str) -> str | None:
        key = resource_key(resource_id)
        record = self.state[collection].get(key)
        if not record:
            return None
        self._set_provisioning(record, "deleting")
        if collection == "jobs":
            self._kill_job(key, record)
        return self.new_operation("delete", key, sub, collection=collection)

    def _list(self, collection: str, parent_id: str) -> list[dict[str, Any]]:
        prefix = resource_key(parent_id) + "/"
        children = [
            r
            for k, r in self.state[collection].items()
            if k.startswith(prefix) and "/" not in k[len(prefix) :]
        ]
        return _clone(sorted((r["body"] for r in children), key=lambda body: body["id"]))

    # --- workspaces ------------------------------------------------------------------------------
    def create_workspace(self, sub: str, rg: str, ws: str, body: dict[str, Any]) -> tuple[str | None, dict]:
        with self.lock:
            self.require_group(sub, rg)
            rid = self._ids(sub, rg, ws)
            existing = self.state["workspaces"].get(resource_key(rid))
            if existing:
                existing["body"]["tags"] = body.get("tags") or existing["body"].get("tags", {})
                self.dirty = True
                return None, _clone(existing["body"])
            record = self._new_record(
                "workspaces",
                rid,
                f"{PROVIDER}/workspaces",
                {},
                location=body["location"],
                tags=body.get("tags") or {},
            )
            op = self.new_operation("create", rid, sub, collection="workspaces")
            return op, _clone(record["body"])

    def update_workspace(self, sub: str, rg: str, ws: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.require_group(sub, rg)
            record = self._get_record("workspaces", self._ids(sub, rg, ws), "workspace")
            if "tags" in body:
                record["body"]["tags"] = body["tags"] or {}
            self.dirty = True
            return _clone(record["body"])

    def get_workspace(self, sub: str, rg: str, ws: str) -> dict[str, Any]:
        with self.lock:
            self.require_group(sub, rg)
            return _clone(self._get_record("workspaces", self._ids(sub, rg, ws), "workspace")["body"])

    def require_workspace(self, sub: str, rg: str, ws: str) -> None:
        self.require_group(sub, rg)
        self._get_record("workspaces", self._ids(sub, rg, ws), "workspace")

    def list_workspaces(self, sub: str, rg: str | None) -> list[dict[str, Any]]:
        with self.lock:
            if rg is not None:
                self.require_group(sub, rg)
            prefix = f"/subscriptions/{sub}/" + (f"resourcegroups/{rg}/" if rg else "")
            return [
                _clone(r["body"])
                for k, r in sorted(self.state["workspaces"].items())
                if k.startswith(prefix.lower())
            ]

    def delete_workspace(self, sub: str, rg: str, ws: str) -> str | None:
        with self.lock:
            self.require_group(sub, rg)
            return self._begin_delete("workspaces", self._ids(sub, rg, ws), sub)

    # --- experiments -----------------------------------------------------------------------------
    def create_experiment(self, sub: str, rg: str, ws: str, exp: str) -> tuple[str | None, dict]:
        with self.lock:
            self.require_workspace(sub, rg, ws)
            rid = f"{self._ids(sub, rg, ws)}/experiments/{exp}"
            existing = self.state["experiments"].get(resource_key(rid))
            if existing:
                return None, _clone(existing["body"])
            record = self._new_record("experiments", rid, f"{PROVIDER}/workspaces/experiments", {})
            return self.new_operation("create", rid, sub, collection="experiments"), _clone(record["body"])

    def get_experiment(self, sub: str, rg: str, ws: str, exp: str) -> dict[str, Any]:
        with self.lock:
            self.require_workspace(sub, rg, ws)
            rid = f"{self._ids(sub, rg, ws)}/experiments/{exp}"
            return _clone(self._get_record("experiments", rid, "experiment")["body"])

    def list_experiments(self, sub: str, rg: str, ws: str) -> list[dict[str, Any]]:
        with self.lock:
            self.require_workspace(sub, rg, ws)
            return self._list("experiments", self._ids(sub, rg, ws) + "/experiments")

    def delete_experiment(self, sub: str, rg: str, ws: str, exp: str) -> str | None:
        with self.lock:
            self.require_workspace(sub, rg, ws)
            return self._begin_delete("experiments", f"{self._ids(sub, rg, ws)}/experiments/{exp}", sub)

    # --- file servers (a plain directory stands in for the NFS server's disks) --------------------
    def create_file_server(
        self, sub: str, rg: str, ws: str, name: str, body: dict[str, Any]
    ) -> tuple[str | None, dict]:
        with self.lock:
            self.require_workspace(sub, rg, ws)
            rid = f"{self._ids(sub, rg, ws)}/fileServers/{name}"
            existing = self.state["fileServers"].get(resource_key(rid))
            if existing:
                if existing["meta"].get("request") == body:
                    return None, _clone(existing["body"])
                raise ArmError(
                    "FileServerAlreadyExists",
                    f"File server '{name}' already exists with different properties; delete it first.",
                )
            props = _clone(body["properties"])
            ssh = props.get("sshConfiguration", {}).get("userAccountSettings", {})
            ssh.pop("adminUserPassword", None)
            export_dir = self.config.data_dir / "fileservers" / rg / ws / name
            export_dir.mkdir(parents=True, exist_ok=True)
            props["mountSettings"] = {
                "mountPoint": "/data",
                "fileServerPublicIP": "127.0.0.1",
                "fileServerInternalIP": "127.0.0.1",
            }
            props.setdefault(
                "subnet",
                {
                    "id": f"/subscriptions/{sub}/resourceGroups/{rg}/providers/"
                    f"Microsoft.Network/virtualNetworks/{name}vnet/subnets/Subnet-1"
                },
            )
            record = self._new_record("fileServers", rid, f"{PROVIDER}/workspaces/fileservers", props)
            record["meta"]["export_dir"] = str(export_dir)
            record["meta"]["request"] = _clone(body)
            return self.new_operation("create", rid, sub, collection="fileServers"), _clone(record["body"])

    def get_file_server(self, sub: str, rg: str, ws: str, name: str) -> dict[str, Any]:
        with self.lock:
            self.require_workspace(sub, rg, ws)
            rid = f"{self._ids(sub, rg, ws)}/fileServers/{name}"
            return _clone(self._get_record("fileServers", rid, "file server")["body"])

    def list_file_servers(self, sub: str, rg: str, ws: str) -> list[dict[str, Any]]:
        with self.lock:
            self.require_workspace(sub, rg, ws)
            return self._list("fileServers", self._ids(sub, rg, ws) + "/fileServers")

    def delete_file_server(self, sub: str, rg: str, ws: str, name: str) -> str | None:
        with self.lock:
            self.require_workspace(sub, rg, ws)
            return self._begin_delete("fileServers", f"{self._ids(sub, rg, ws)}/fileServers/{name}", sub)

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
                    return None, self._cluster_body(existing)
                raise ArmError(
                    "ClusterAlreadyExists",
                    f"Cluster '{name}' already exists with different properties; change its scale "
                    "settings with PATCH (Clusters_Update) or delete it first.",
                )
            req = body["properties"]
            props: dict[str, Any] = {
                "vmSize": req["vmSize"],
                "vmPriority": req.get("vmPriority", "dedicated"),
                "scaleSettings": _clone(req.get("scaleSettings") or {"manual": {"targetNodeCount": 0}}),
                "virtualMachineConfiguration": _clone(
                    req.get("virtualMachineConfiguration")
                    or {
                        "imageReference": {
                            "publisher": "Canonical",
                            "offer": "UbuntuServer",
                            "sku": "16.04-LTS",
                            "version": "latest",
                        }
                    }
                ),
                "userAccountSettings": {"adminUserName": req["userAccountSettings"]["adminUserName"]},
            }
            manual = props["scaleSettings"].get("manual")
            if manual is not None:
                manual.setdefault("nodeDeallocationOption", "requeue")
            auto = props["scaleSettings"].get("autoScale")
            if auto is not None:
                auto.setdefault("initialNodeCount", 0)
            if req.get("nodeSetup"):
                props["nodeSetup"] = _redact_node_setup(req["nodeSetup"])
            props["subnet"] = _clone(
                req.get("subnet")
                or {
                    "id": f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network/"
                    f"virtualNetworks/{name}vnet/subnets/Subnet-1"
                }
            )
            record = self._new_record("clusters", rid, f"{PROVIDER}/workspaces/clusters", props)
            now = time.time()
            props["allocationState"] = "steady"
            props["allocationStateTransitionTime"] = now_iso(now)
            props["errors"] = []
            record["meta"] = {
                "request": _clone(body),
                "node_setup": _clone(req.get("nodeSetup") or {}),
                "nodes": [],
                "node_root": str(self.config.data_dir / "nodes" / rg / ws / name),
                "node_seq": 0,
            }
            target = manual["targetNodeCount"] if manual is not None else auto["initialNodeCount"]
            self._resize(record, target, now)
            self._update_node_counts(record)
            op = self.new_operation("create", rid, sub, collection="clusters")
            return op, self._cluster_body(record)

    def _cluster_body(self, record: dict[str, Any]) -> dict[str, Any]:
        body = _clone(record["body"])
        if not body["properties"].get("errors"):
            body["properties"].pop("errors", None)
        return body

    def update_cluster(self, sub: str, rg: str, ws: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.require_workspace(sub, rg, ws)
            record = self._get_record("clusters", f"{self._ids(sub, rg, ws)}/clusters/{name}", "cluster")
            scale = (body.get("properties") or {}).get("scaleSettings")
            if scale:
                scale = _clone(scale)
                if "manual" in scale:
                    scale["manual"].setdefault("nodeDeallocationOption", "requeue")
                if "autoScale" in scale:
                    scale["autoScale"].setdefault("initialNodeCount", 0)
                record["body"]["properties"]["scaleSettings"] = scale
                self.dirty = True
                self._advance_cluster(resource_key(record["body"]["id"]), time.time())
            return self._cluster_body(record)

    def get_cluster(self, sub: str, rg: str, ws: str, name: str) -> dict[str, Any]:
        with self.lock:
            self.require_workspace(sub, rg, ws)
            rid = f"{self._ids(sub, rg, ws)}/clusters/{name}"
            return self._cluster_body(self._get_record("clusters", rid, "cluster"))

    def list_clusters(self, sub: str, rg: str, ws: str) -> list[dict[str, Any]]:
        with self.lock:
            self.require_workspace(sub, rg, ws)
            bodies = self._list("clusters", self._ids(sub, rg, ws) + "/clusters")
            for body in bodies:
                if not body["properties"].get("errors"):
                    body["properties"].pop("errors", None)
            return bodies

    def delete_cluster(self, sub: str, rg: str, ws: str, name: str) -> str | None:
        with self.lock:
            self.require_workspace(sub, rg, ws)
            return self._begin_delete("clusters", f"{self._ids(sub, rg, ws)}/clusters/{name}", sub)

    def cluster_remote_logins(self, sub: str, rg: str, ws: str, name: str) -> list[dict[str, Any]]:
        with self.lock:
            self.require_workspace(sub, rg, ws)
            record = self._get_record("clusters", f"{self._ids(sub, rg, ws)}/clusters/{name}", "cluster")
            return [
                {"nodeId": n["id"], "ipAddress": "127.0.0.1", "port": 50000 + i}
                for i, n in enumerate(record["meta"]["nodes"])
                if n["state"] != "leaving"
            ]

    # --- cluster progression ---------------------------------------------------------------------
    def _target_nodes(self, record: dict[str, Any]) -> int:
        scale = record["body"]["properties"]["scaleSettings"]
        if "manual" in scale:
            return int(scale["manual"].get("targetNodeCount", 0))
        auto = scale["autoScale"]
        key = resource_key(record["body"]["id"])
        demand = 0
        for job in self.state["jobs"].values():
            props = job["body"]["properties"]
            if resource_key(props["cluster"]["id"]) == key and props.get("executionState") in (
                "queued",
                "running",
                "terminating",
            ):
                demand += int(props.get("nodeCount", 1))
        if not record["meta"].get("initial_done"):
            demand = max(demand, int(auto.get("initialNodeCount", 0)))
        return max(int(auto["minimumNodeCount"]), min(int(auto["maximumNodeCount"]), demand))

    def _resize(self, record: dict[str, Any], target: int, now: float) -> None:
        """Start adding or removing nodes to reach `target`."""
        meta, props = record["meta"], record["body"]["properties"]
        nodes = [n for n in meta["nodes"] if n["state"] != "leaving"]
        delay = self.config.provisioning_delay
        changed = False
        if len(nodes) < target:
            for _ in range(target - len(nodes)):
                meta["node_seq"] += 1
                stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dt%H%M%Sz")
                digest = hashlib.sha1(props.get("creationTime", "").encode() + record["body"]["id"].encode())
                node_id = f"tvm-{int(digest.hexdigest()[:8], 16)}_{meta['node_seq']}-{stamp}"
                meta["nodes"].append(
                    {"id": node_id, "state": "preparing", "ready_at": now + delay, "job": None}
                )
            changed = True
        elif len(nodes) > target:
            surplus = len(nodes) - target
            option = props["scaleSettings"].get("manual", {}).get("nodeDeallocationOption", "requeue")
            order = sorted(
                nodes, key=lambda n: {"unusable": 0, "preparing": 1, "idle": 2, "running": 3}[n["state"]]
            )
            for node in order:
                if surplus == 0:
                    break
                if node["state"] == "running":
                    if option == "waitforjobcompletion" or "autoScale" in props["scaleSettings"]:
                        continue
                    job_key = node["job"]
                    job = self.state["jobs"].get(job_key)
                    if job:
                        self._kill_job(job_key, job)
                        if option == "requeue":
                            job["meta"]["requeue"] = True
                        else:
                            job["meta"]["forced_errors"] = [
                                {
                                    "code": "JobTerminatedByClusterResize",
                                    "message": "The cluster was resized with nodeDeallocationOption "
                                    "'terminate' while the job was running.",
                                }
                            ]
                node["state"] = "leaving"
                node["leave_at"] = now + delay / 2
                node["job"] = None
                surplus -= 1
                changed = True
        if changed:
            props["allocationState"] = "resizing"
            props["allocationStateTransitionTime"] = now_iso(now)
            self.dirty = True

    def _advance_cluster(self, key: str, now: float) -> None:
        record = self.state["clusters"][key]
        props, meta = record["body"]["properties"], record["meta"]
        if props.get("provisioningState") == "deleting":
            return
        before = json.dumps([props, meta["nodes"]], sort_keys=True)
        for node in list(meta["nodes"]):
            if node["state"] == "preparing" and now >= node["ready_at"] and not node.get("mounting"):
                self._prepare_node(record, node)
            elif node["state"] == "leaving" and now >= node.get("leave_at", 0):
                meta["nodes"].remove(node)
                shutil.rmtree(Path(meta["node_root"]) / node["id"], ignore_errors=True)
        if props.get("provisioningState") == "succeeded" or meta["nodes"]:
            target = self._target_nodes(record)
            live = [n for n in meta["nodes"] if n["state"] != "leaving"]
            if len(live) != target:
                self._resize(record, target, now)
        busy = any(n["state"] in ("preparing", "leaving") for n in meta["nodes"])
        if not busy and props["allocationState"] == "resizing":
            props["allocationState"] = "steady"
            props["allocationStateTransitionTime"] = now_iso(now)
            meta["initial_done"] = True
        if not busy:
            meta["initial_done"] = True
        self._update_node_counts(record)
        if json.dumps([props, meta["nodes"]], sort_keys=True) != before:
            self.dirty = True

    def _prepare_node(self, record: dict[str, Any], node: dict[str, Any]) -> None:
        """Node setup: mount the cluster's volumes (symlinks to their local directories)."""
        mount_root = Path(record["meta"]["node_root"]) / node["id"] / "mounts"
        mount_root.mkdir(parents=True, exist_ok=True)
        blob_mounts: list[BlobMount] = []
        errors = self.mount_volumes(
            record["meta"]["node_setup"].get("mountVolumes") or {}, mount_root, blob_mounts
        )
        if self.config.node_failure_rate and self.node_random.random() < self.config.node_failure_rate:
            errors.append(
                {
                    "code": "NodeSetupFailed",
                    "message": "Node setup failed and the node is unusable (injected node failure).",
                    "details": [],
                }
            )
        if blob_mounts and not errors:
            # Reading containers takes as long as they are big: off the lock, so that nothing else
            # waits; the node stays `preparing` meanwhile.
            node["mounting"] = True
            threading.Thread(
                target=self._mount_node_containers,
                args=(record["body"]["id"], node["id"], blob_mounts),
                name=f"blobfs-{node['id']}",
                daemon=True,
            ).start()
            return
        self._finish_node_setup(record, node, errors)

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
            record = self.state["clusters"].get(resource_key(cluster_id))
            node = next(
                (n for n in (record or {}).get("meta", {}).get("nodes", []) if n["id"] == node_id), None
            )
            if record is None or node is None or not node.pop("mounting", False):
                return  # the cluster or node went away meanwhile
            node["blobfs"] = [mount.to_json() for mount in mounts]
            self._finish_node_setup(record, node, errors)
            self._update_node_counts(record)
            self.dirty = True

    def _finish_node_setup(
        self, record: dict[str, Any], node: dict[str, Any], errors: list[dict[str, Any]]
    ) -> None:
        if errors:
            node["state"] = "unusable"
            props = record["body"]["properties"]
            known = {json.dumps(e, sort_keys=True) for e in props.get("errors", [])}
            for error in errors:
                error = {**error, "details": [*error["details"], {"name": "nodeId", "value": node["id"]}]}
                if json.dumps(error, sort_keys=True) not in known:
                    props.setdefault("errors", []).append(error)
        else:
            node["state"] = "idle"

    def resolve_share(self, url: str) -> Path | None:
        """`<files-endpoint>/<share>` or `https://<account>.file.core.windows.net/<share>` to the
        Files emulator's `<files-root>/<account>/<share>`; None if the URL is neither."""
        parsed = urlparse(url)
        parts = [p for p in parsed.path.split("/") if p]
        host = (parsed.hostname or "").lower()
        if host.endswith(".file.core.windows.net") and len(parts) >= 1:
            account, share, rest = host.split(".", 1)[0], parts[0], parts[1:]
        elif parsed.scheme in ("http", "https") and len(parts) >= 2:
            endpoint = urlparse(self.config.files_endpoint)
            if parsed.port and endpoint.port and parsed.port != endpoint.port:
                return None
            account, share, rest = parts[0], parts[1], parts[2:]
        else:
            return None
        if any(p in ("..", ".") for p in [account, share, *rest]):
            return None
        return (
            Path(self.config.files_root) / account / share / Path(*rest)
            if rest
            else (Path(self.config.files_root) / account / share)
        )

    def mount_volumes(
        self, volumes: dict[str, Any], mount_root: Path, blob_mounts: list[BlobMount] | None = None
    ) -> list[dict[str, Any]]:
        """Create `mount_root/<relativeMountPath>` symlinks; the errors Azure reports for failed mounts.

        Blob containers get a cache directory next to the mount root; their `BlobMount`s are appended
        to `blob_mounts` for the caller to read in (`blobfs.pull`) and write back (`blobfs.push`)."""
        errors: list[dict[str, Any]] = []

        def link(relative: str, target: Path) -> None:
            path = mount_root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink() or path.exists():
                with contextlib.suppress(OSError):
                    path.unlink()
            path.symlink_to(target, target_is_directory=True)

        for share in volumes.get("azureFileShares") or []:
            target = self.resolve_share(share["azureFileUrl"])
            if target is None or not target.is_dir():
                errors.append(
                    {
                        "code": "AzureFileShareMountFailed",
                        "message": f"Cannot mount Azure File share {share['azureFileUrl']}: "
                        + (
                            "the URL is not an Azure Files share URL this emulator serves"
                            if target is None
                            else "the specified share does not exist (ShareNotFound)"
                        ),
                        "details": [
                            {"name": "azureFileUrl", "value": share["azureFileUrl"]},
                            {"name": "relativeMountPath", "value": share["relativeMountPath"]},
                        ],
                    }
                )
                continue
            link(share["relativeMountPath"], target)
        for blob in volumes.get("azureBlobFileSystems") or []:
            target = mount_root.parent / "blobfs" / blob["relativeMountPath"].strip("/")
            target.mkdir(parents=True, exist_ok=True)
            link(blob["relativeMountPath"], target)
            credentials = blob.get("credentials") or {}
            mount = BlobMount(
                account=blob["accountName"],
                container=blob["containerName"],
                relative_mount_path=blob["relativeMountPath"],
                cache=str(target),
                endpoint=account_endpoint(self.config.storage_endpoints.get("blob"), blob["accountName"]),
                key=self._mount_key(blob["accountName"], credentials),
            )
            if blob_mounts is not None:
                blob_mounts.append(mount)
        for ref in volumes.get("fileServers") or []:
            server = self.state["fileServers"].get(resource_key(ref["fileServer"]["id"]))
            if not server:
                errors.append(
                    {
                        "code": "FileServerMountFailed",
                        "message": f"Cannot mount file server {ref['fileServer']['id']}: it does not exist",
                        "details": [{"name": "fileServer", "value": ref["fileServer"]["id"]}],
                    }
                )
                continue
            target = Path(server["meta"]["export_dir"])
            if ref.get("sourceDirectory"):
                target = target / ref["sourceDirectory"].strip("/")
                target.mkdir(parents=True, exist_ok=True)
            link(ref["relativeMountPath"], target)
        for fs in volumes.get("unmanagedFileSystems") or []:
            target = (
                self.config.data_dir
                / "unmanaged"
                / hashlib.sha1(fs["mountCommand"].encode()).hexdigest()[:12]
            )
            target.mkdir(parents=True, exist_ok=True)
            link(fs["relativeMountPath"], target)
        return errors

    def _mount_key(self, account: str, credentials: dict[str, Any]) -> str | None:
        """The key a blob mount signs with: the one given; for a Key Vault secret reference (the local
        stack has no Key Vault), or a key the state file did not keep across a restart, the stack's own
        key for that account (none for an account it does not serve)."""
        given = credentials.get("accountKey")
        if given and given != SECRET_PLACEHOLDER:
            return given
        if not credentials.get("accountKeySecretReference") and given != SECRET_PLACEHOLDER:
            return None
        keys = self.config.storage_accounts.get(account)
        return keys[0] if keys else None

    def _update_node_counts(self, record: dict[str, Any]) -> None:
        counts = dict.fromkeys(NODE_STATES, 0)
        for node in record["meta"]["nodes"]:
            counts[node["state"]] += 1
        props = record["body"]["properties"]
        props["currentNodeCount"] = len(record["meta"]["nodes"])
        props["nodeStateCounts"] = {f"{state}NodeCount": counts[state] for state in NODE_STATES}
        self._account_allocation(record, time.time())

    def _account_allocation(self, record: dict[str, Any], now: float) -> None:
        """Node time, as a real cluster bills it: every change of the node count (preparing, idle,
        running, leaving and unusable nodes all count) with the node-seconds held so far."""
        meta = record["meta"]
        count = len(meta["nodes"])
        alloc = meta.setdefault("allocation", {"nodes": 0, "since": now, "node_seconds": 0.0, "history": []})
        if count != alloc["nodes"]:
            alloc["node_seconds"] += alloc["nodes"] * max(now - alloc["since"], 0.0)
            alloc["nodes"], alloc["since"] = count, now
            alloc["history"] = [*alloc["history"], [now_iso(now), count]][-ALLOCATION_HISTORY:]
            self.dirty = True

    def cluster_allocations(self) -> list[dict[str, Any]]:
        """Each cluster's node allocation over time (the admin endpoint ``/_emulator/clusters``)."""
        with self.lock:
            now = time.time()
            answer = []
            for record in self.state["clusters"].values():
                alloc = record["meta"].get("allocation") or {"nodes": 0, "since": now, "node_seconds": 0.0}
                held = alloc["node_seconds"] + alloc["nodes"] * max(now - alloc["since"], 0.0)
                answer.append(
                    {
                        "id": record["body"]["id"],
                        "name": record["body"]["name"],
                        "nodes": alloc["nodes"],
                        "node_seconds": round(held, 3),
                        "history": [{"time": t, "nodes": n} for t, n in alloc.get("history", [])],
                    }
                )
            return answer

    # --- jobs ------------------------------------------------------------------------------------
    def job_id(self, sub: str, rg: str, ws: str, exp: str, job: str) -> str:
        return f"{self._ids(sub, rg, ws)}/experiments/{exp}/jobs/{job}"

    def create_job(
        self, sub: str, rg: str, ws: str, exp: str, name: str, body: dict[str, Any]
    ) -> tuple[str | None, dict]:
        with self.lock:
            self.require_workspace(sub, rg, ws)
            self._get_record("experiments", f"{self._ids(sub, rg, ws)}/experiments/{exp}", "experiment")
            rid = self.job_id(sub, rg, ws, exp, name)
            existing = self.state["jobs"].get(resource_key(rid))
            if existing:
                if existing["meta"]["request"] == body:
                    return None, self._job_body(existing)
                raise ArmError(
                    "JobAlreadyExists",
                    f"Job '{name}' already exists with different properties; jobs cannot be changed, "
                    "delete it first or use another name.",
                )
            req = body["properties"]
            cluster_id = req["cluster"]["id"]
            m = CLUSTER_ID.match(cluster_id)
            canonical = f"{self._ids(*m.groups()[:3])}/clusters/{m.group(4)}" if m else cluster_id
            cluster = self.state["clusters"].get(resource_key(canonical))
            if not cluster:
                raise ArmError(
                    "InvalidClusterReference",
                    f"properties.cluster.id: cluster '{cluster_id}' does not exist.",
                    target="properties.cluster.id",
                )
            job_uuid = str(uuid.uuid4())
            props = _clone(req)
            props["cluster"] = {"id": cluster["body"]["id"]}
            props.setdefault("schedulingPriority", "normal")
            # The service's own GetJob/PutJob examples also report the priority as `priority`.
            props["priority"] = props["schedulingPriority"]
            props.setdefault("nodeCount", 1)
            props.setdefault("constraints", {})
            props["constraints"].setdefault("maxWallClockTime", "P7D")
            for secret in props.get("secrets") or []:
                secret.pop("value", None)
            if props.get("mountVolumes"):  # credentials are never shown (the request keeps them)
                props["mountVolumes"] = _redact_node_setup({"mountVolumes": props["mountVolumes"]})[
                    "mountVolumes"
                ]
            registry = (props.get("containerSettings") or {}).get("imageSourceRegistry") or {}
            if registry.get("credentials"):
                registry["credentials"].pop("password", None)
            tool = toolkit_of(req)
            if tool in ("cntk", "tensorflow", "caffe", "caffe2", "chainer", "horovod", "custommpi", "custom"):
                props["toolType"] = tool
            props["jobOutputDirectoryPathSegment"] = (
                f"{sub}/{rg}/workspaces/{ws}/experiments/{exp}/jobs/{name}/{job_uuid}"
            )
            record = self._new_record("jobs", rid, f"{PROVIDER}/workspaces/experiments/jobs", props)
            now = time.time()
            props["executionState"] = "queued"
            props["executionStateTransitionTime"] = now_iso(now)
            props["executionInfo"] = {}
            record["meta"] = {
                "request": _clone(body),
                "uuid": job_uuid,
                "tool": tool,
                "secrets": {s["name"]: s.get("value", "") for s in req.get("secrets") or []},
                "nodes": [],
                "pids": [],
                "created": now,
            }
            op = self.new_operation("create", rid, sub, collection="jobs")
            return op, self._job_body(record)

    def _job_body(self, record: dict[str, Any]) -> dict[str, Any]:
        body = _clone(record["body"])
        if not body["properties"].get("executionInfo"):
            body["properties"].pop("executionInfo", None)
        return body

    def get_job(self, sub: str, rg: str, ws: str, exp: str, name: str) -> dict[str, Any]:
        with self.lock:
            self.require_workspace(sub, rg, ws)
            return self._job_body(self._get_record("jobs", self.job_id(sub, rg, ws, exp, name), "job"))

    def list_jobs(self, sub: str, rg: str, ws: str, exp: str) -> list[dict[str, Any]]:
        with self.lock:
            self.require_workspace(sub, rg, ws)
            self._get_record("experiments", f"{self._ids(sub, rg, ws)}/experiments/{exp}", "experiment")
            bodies = self._list("jobs", f"{self._ids(sub, rg, ws)}/experiments/{exp}/jobs")
            for body in bodies:
                if not body["properties"].get("executionInfo"):
                    body["properties"].pop("executionInfo", None)
            return bodies

    def delete_job(self, sub: str, rg: str, ws: str, exp: str, name: str) -> str | None:
        with self.lock:
            self.require_workspace(sub, rg, ws)
            return self._begin_delete("jobs", self.job_id(sub, rg, ws, exp, name), sub)

    def terminate_job(self, sub: str, rg: str, ws: str, exp: str, name: str) -> str:
        with self.lock:
            self.require_workspace(sub, rg, ws)
            rid = self.job_id(sub, rg, ws, exp, name)
            record = self._get_record("jobs", rid, "job")
            key = resource_key(rid)
            props = record["body"]["properties"]
            state = props.get("executionState")
            if state == "queued":
                self._finish_job(key, None, [job_terminated()])
            elif state in ("running", "terminating"):
                props["executionState"] = "terminating"
                props["executionStateTransitionTime"] = now_iso()
                record["meta"]["forced_errors"] = [job_terminated()]
                self._kill_job(key, record)
            self.dirty = True
            return self.new_operation("terminate", rid, sub, collection="jobs")

    def job_remote_logins(self, sub: str, rg: str, ws: str, exp: str, name: str) -> list[dict[str, Any]]:
        with self.lock:
            self.require_workspace(sub, rg, ws)
            record = self._get_record("jobs", self.job_id(sub, rg, ws, exp, name), "job")
            return [
                {"nodeId": node_id, "ipAddress": "127.0.0.1", "port": 50000 + i}
                for i, node_id in enumerate(record["meta"].get("nodes") or [])
            ]

    def job_output_dir(
        self, sub: str, rg: str, ws: str, exp: str, name: str, directory_id: str
    ) -> Path | None:
        """The local directory behind an output directory id (`stdouterr` or a declared id); None when
        the job has not resolved its paths yet (still queued)."""
        with self.lock:
            self.require_workspace(sub, rg, ws)
            record = self._get_record("jobs", self.job_id(sub, rg, ws, exp, name), "job")
            declared = {d["id"].lower() for d in record["body"]["properties"].get("outputDirectories") or []}
            if directory_id.lower() != "stdouterr" and directory_id.lower() not in declared:
                raise ArmError(
                    "InvalidOutputDirectoryId",
                    f"outputdirectoryid: the job has no output directory '{directory_id}'; it has "
                    f"stdouterr{''.join(', ' + d for d in sorted(declared))}.",
                    target="outputdirectoryid",
                )
            paths = record["meta"].get("paths")
            if not paths:
                return None
            if directory_id.lower() == "stdouterr":
                return Path(paths["stdouterr"])
            for out_id, path in paths["outputs"].items():
                if out_id.lower() == directory_id.lower():
                    return Path(path)
            return None

    # --- job progression -------------------------------------------------------------------------
    def _schedule_jobs(self, now: float) -> None:
        # Only clusters with an idle node can start anything: most ticks end here.
        free = {
            key
            for key, cluster in self.state["clusters"].items()
            if cluster["body"]["properties"].get("provisioningState") == "succeeded"
            and any(n["state"] == "idle" for n in cluster["meta"]["nodes"])
        }
        if not free:
            return
        queued = [
            (k, j)
            for k, j in self.state["jobs"].items()
            if j["body"]["properties"].get("executionState") == "queued"
            and j["body"]["properties"].get("provisioningState") == "succeeded"
            and resource_key(j["body"]["properties"]["cluster"]["id"]) in free
        ]
        queued.sort(
            key=lambda kj: (
                PRIORITY_ORDER.get(kj[1]["body"]["properties"]["schedulingPriority"], 1),
                kj[1]["meta"]["created"],
            )
        )
        for key, job in queued:
            props = job["body"]["properties"]
            cluster = self.state["clusters"].get(resource_key(props["cluster"]["id"]))
            if not cluster or cluster["body"]["properties"].get("provisioningState") != "succeeded":
                continue
            idle = [n for n in cluster["meta"]["nodes"] if n["state"] == "idle"]
            if len(idle) < int(props.get("nodeCount", 1)):
                continue
            chosen = idle[: int(props.get("nodeCount", 1))]
            for node in chosen:
                node["state"] = "running"
                node["job"] = key
            job["meta"]["nodes"] = [n["id"] for n in chosen]
            job["meta"].pop("requeue", None)
            job["meta"].pop("forced_errors", None)
            props["executionState"] = "running"
            props["executionStateTransitionTime"] = now_iso(now)
            props["executionInfo"] = {"startTime": now_iso(now)}
            job["meta"]["started"] = now
            self._update_node_counts(cluster)
            self.dirty = True
            mount_root = Path(cluster["meta"]["node_root"]) / chosen[0]["id"] / "mounts"
            try:
                node_dir = Path(cluster["meta"]["node_root"]) / chosen[0]["id"]
                job["meta"]["paths"] = self.runner.start(
                    key, job, mount_root, node_dir, self._node_blob_mounts(chosen[0])
                )
            except Exception as exc:  # a launch failure is a failed job, as on the service
                self._finish_job(key, None, [{"code": "JobLaunchFailed", "message": str(exc)}])

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
        for key, job in self.state["jobs"].items():
            props = job["body"]["properties"]
            if props.get("executionState") != "running" or job["meta"].get("forced_errors"):
                continue
            limit = parse_duration(props["constraints"]["maxWallClockTime"])
            if now - job["meta"].get("started", now) > limit:
                job["meta"]["forced_errors"] = [
                    {
                        "code": "JobMaxWallClockTimeExceeded",
                        "message": f"The job ran longer than its maxWallClockTime "
                        f"({props['constraints']['maxWallClockTime']}) and was terminated.",
                    }
                ]
                props["executionState"] = "terminating"
                props["executionStateTransitionTime"] = now_iso(now)
                self._kill_job(key, job)
                self.dirty = True

    def _kill_job(self, key: str, record: dict[str, Any]) -> None:
        self.runner.kill(key)

    def _release_nodes(self, key: str) -> None:
        for cluster in self.state["clusters"].values():
            touched = False
            for node in cluster["meta"]["nodes"]:
                if node.get("job") == key:
                    node["job"] = None
                    if node["state"] == "running":
                        node["state"] = "idle"
                    touched = True
            if touched:
                self._update_node_counts(cluster)
                self.dirty = True

    def job_process_exited(self, key: str, exit_code: int | None, errors: list[dict[str, Any]]) -> None:
        """Called by the job runner when the job's processes have all exited."""
        with self.lock:
            job = self.state["jobs"].get(key)
            if not job:
                return
            if job["meta"].pop("requeue", False):
                props = job["body"]["properties"]
                props["executionState"] = "queued"
                props["executionStateTransitionTime"] = now_iso()
                props["executionInfo"] = {}
                self._release_nodes(key)
                self.dirty = True
                return
            forced = job["meta"].get("forced_errors")
            self._finish_job(key, exit_code, (forced or []) + errors)
            for op in self.state["operations"].values():
                if op["status"] == "InProgress" and op["meta"]["resource"] == key:
                    op["meta"]["done_at"] = min(op["meta"]["done_at"], time.time())

    def _finish_job(self, key: str, exit_code: int | None, errors: list[dict[str, Any]]) -> None:
        job = self.state["jobs"][key]
        props = job["body"]["properties"]
        now = now_iso()
        succeeded = exit_code == 0 and not errors
        if not succeeded and exit_code not in (None, 0) and not errors:
            errors = [job_failed(exit_code)]
        props["executionState"] = "succeeded" if succeeded else "failed"
        props["executionStateTransitionTime"] = now
        info = props.get("executionInfo") or {}
        info.setdefault("startTime", now)
        info["endTime"] = now
        if exit_code is not None:
            info["exitCode"] = exit_code
        if errors:
            info["errors"] = errors
        props["executionInfo"] = info
        job["meta"]["pids"] = []
        self._release_nodes(key)
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


# Inline secret values of requests (EnvironmentVariableWithSecretValue.value, storage account keys of
# mounts, registry passwords, admin passwords) stay in memory; the state file holds this instead.
SECRET_PLACEHOLDER = "<secret: kept in memory only>"
SECRET_FIELDS = frozenset({"accountKey", "password", "adminUserPassword"})


def without_secret_values(value: Any, field: str = "") -> Any:
    """A copy of `value` (the emulator's JSON state) with every inline secret value replaced by
    SECRET_PLACEHOLDER: the `value` of each entry of a `secrets` list, each value of a job's
    `secrets` map, and SECRET_FIELDS strings."""
    if isinstance(value, dict):
        if field == "secrets":  # a job's meta: name -> value
            return {name: SECRET_PLACEHOLDER for name in value}
        return {
            k: SECRET_PLACEHOLDER
            if k in SECRET_FIELDS and isinstance(v, str)
            else without_secret_values(v, k)
            for k, v in value.items()
        }
    if isinstance(value, list):
        if field == "secrets":
            return [
                {**item, "value": SECRET_PLACEHOLDER} if isinstance(item, dict) and "value" in item else item
                for item in value
            ]
        return [without_secret_values(item) for item in value]
    return value


def _clone(value: Any) -> Any:
    """A deep copy of JSON-shaped data (pickle round trip: several times faster than copy.deepcopy)."""
    return pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))


def toolkit_of(props: dict[str, Any]) -> str:
    for setting, tool in TOOLKIT_SETTINGS.items():
        if props.get(setting):
            return tool
    return "custom"


TOOLKIT_SETTINGS = {
    "cntkSettings": "cntk",
    "pyTorchSettings": "pytorch",
    "tensorFlowSettings": "tensorflow",
    "caffeSettings": "caffe",
    "caffe2Settings": "caffe2",
    "chainerSettings": "chainer",
    "customToolkitSettings": "custom",
    "customMpiSettings": "custommpi",
    "horovodSettings": "horovod",
}


def _redact_node_setup(node_setup: dict[str, Any]) -> dict[str, Any]:
    """What the service echoes back: credentials emptied (as in the PutCluster example)."""
    setup = _clone(node_setup)
    volumes = setup.get("mountVolumes") or {}
    for share in volumes.get("azureFileShares") or []:
        share["credentials"] = {}
        share.setdefault("fileMode", "0777")
        share.setdefault("directoryMode", "0777")
    for blob in volumes.get("azureBlobFileSystems") or []:
        blob["credentials"] = {}
    task = setup.get("setupTask") or {}
    for secret in task.get("secrets") or []:
        secret.pop("value", None)
    return setup
