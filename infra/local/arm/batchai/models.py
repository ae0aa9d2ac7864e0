"""Batch AI's resources, one model per resource: each renders its wire body and advances its own state.

A model is a view over its persisted record, `{"body": <the ARM JSON shape>, "meta": <what only the
emulator needs: nodes, process ids, resolved paths, deadlines>}`, which is what `state.json` holds; so
the state file's format did not change when the models were introduced, and a model costs nothing to
make (`Cluster(record)`). What one resource cannot decide alone (which jobs a resize evicts, which
nodes a job gets, cascading deletes) is the backend's (`backend.py`).

State progressions (advanced by the backend's clock):
- `Operation`: `InProgress` until `done_at`, then `Succeeded` (`complete`);
- `provisioningState` of every resource: `creating` -> `succeeded`, `deleting` until removed;
- `Cluster` allocation: `resizing` while nodes are added (`preparing` for the provisioning delay, then
  `idle`, or `unusable` when setup fails) or removed (`leaving`), then `steady`;
- `Job`: `queued` -> `running` (`start`) -> `terminating` (`terminate`) -> `succeeded` | `failed`
  (`finish`), or back to `queued` (`requeue`) when a resize took its nodes.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from infra.local.arm.common import clone, now_iso, parse_duration, resource_key
from infra.local.arm.errors import ArmError, job_failed, resource_error

BATCHAI_API_VERSION = "2018-05-01"
PROVIDER = "Microsoft.BatchAI"
OPERATION_RETENTION = 3600.0  # seconds a finished operation can still be asked about
NODE_STATES = ("idle", "running", "preparing", "leaving", "unusable")
ALLOCATION_HISTORY = 200  # node count changes kept per cluster for /_emulator/clusters
PRIORITY_ORDER = {"high": 0, "normal": 1, "low": 2}
ACTIVE_JOB_STATES = ("queued", "running", "terminating")
# Toolkits the spec's `toolType` enum names (it has no `pytorch`).
TOOL_TYPES = ("cntk", "tensorflow", "caffe", "caffe2", "chainer", "horovod", "custommpi", "custom")

# A cluster reference; the service also accepted the singular "workspace" (as in its PutJob example).
CLUSTER_ID = re.compile(
    r"(?i)^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.BatchAI/workspaces?/([^/]+)"
    r"/clusters/([^/]+)$"
)

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


def toolkit_of(props: dict[str, Any]) -> str:
    for setting, tool in TOOLKIT_SETTINGS.items():
        if props.get(setting):
            return tool
    return "custom"


def workspace_id(sub: str, rg: str, ws: str) -> str:
    return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{PROVIDER}/workspaces/{ws}"


def redact_node_setup(node_setup: dict[str, Any]) -> dict[str, Any]:
    """What the service echoes back: credentials emptied (as in the PutCluster example)."""
    setup = clone(node_setup)
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


def default_subnet(sub: str, rg: str, name: str) -> dict[str, Any]:
    return {
        "id": f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Network/"
        f"virtualNetworks/{name}vnet/subnets/Subnet-1"
    }


# --- operations ------------------------------------------------------------------------------------
class Operation:
    """An ARM long-running operation (create, delete, terminate) on one resource."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    @staticmethod
    def new(kind: str, resource_id: str, subscription: str, done_at: float, now: float, **extra: Any) -> dict:
        return {
            "status": "InProgress",
            "startTime": now_iso(now),
            "subscription": subscription,
            "meta": {"kind": kind, "resource": resource_key(resource_id), "done_at": done_at, **extra},
        }

    @property
    def meta(self) -> dict[str, Any]:
        return self.record["meta"]

    @property
    def in_progress(self) -> bool:
        return self.record["status"] == "InProgress"

    def due(self, now: float) -> bool:
        return self.in_progress and now >= self.meta["done_at"]

    def expired(self, now: float) -> bool:
        return not self.in_progress and now - self.meta.get("ended_at", now) > OPERATION_RETENTION

    def complete(self, now: float) -> None:
        self.record["status"] = "Succeeded"
        self.record["endTime"] = now_iso(now)
        self.meta["ended_at"] = now

    def hasten(self, now: float) -> None:
        """What it waited for happened: complete at the next tick."""
        self.meta["done_at"] = min(self.meta["done_at"], now)


# --- resource groups -------------------------------------------------------------------------------
class ResourceGroup:
    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    @staticmethod
    def new(sub: str, rg: str, body: dict[str, Any]) -> dict[str, Any]:
        group_body = {
            "id": f"/subscriptions/{sub}/resourceGroups/{rg}",
            "name": rg,
            "type": "Microsoft.Resources/resourceGroups",
            "location": body["location"],
            "tags": body.get("tags") or {},
            "properties": {"provisioningState": "Succeeded"},
        }
        if body.get("managedBy"):
            group_body["managedBy"] = body["managedBy"]
        return {"body": group_body, "meta": {"subscription": sub}}

    @property
    def body(self) -> dict[str, Any]:
        return self.record["body"]

    @property
    def deleting(self) -> bool:
        return self.body["properties"]["provisioningState"] == "Deleting"

    def update(self, rg: str, body: dict[str, Any]) -> None:
        """A PUT of an existing group: only its tags change; another location is 409."""
        if self.deleting:
            raise ArmError(
                "ResourceGroupBeingDeleted", f"The resource group '{rg}' is in deprovisioning state."
            )
        if body.get("location", "").lower() != self.body["location"].lower():
            raise ArmError(
                "InvalidResourceGroupLocation",
                f"Invalid resource group location '{body.get('location')}'. The Resource group "
                f"already exists in location '{self.body['location']}'.",
            )
        self.body["tags"] = body.get("tags") or {}

    def begin_delete(self) -> None:
        self.body["properties"]["provisioningState"] = "Deleting"

    def render(self) -> dict[str, Any]:
        return clone(self.body)


# --- Batch AI resources ----------------------------------------------------------------------------
class Resource:
    """A Batch AI resource: `collection` names its part of the store, `kind` names it in messages."""

    collection: ClassVar[str]
    kind: ClassVar[str]
    rtype: ClassVar[str]
    # A property the body shows only when it is not empty (a cluster's `errors`, a job's `executionInfo`).
    shown_when_set: ClassVar[str | None] = None

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    @classmethod
    def new_record(cls, resource_id: str, properties: dict[str, Any], **top: Any) -> dict[str, Any]:
        now = now_iso()
        name = resource_id.rsplit("/", 1)[-1]
        body = {"id": resource_id, "name": name, "type": cls.rtype, **top, "properties": properties}
        properties.setdefault("creationTime", now)
        properties["provisioningState"] = "creating"
        properties["provisioningStateTransitionTime"] = now
        return {"body": body, "meta": {}}

    @property
    def body(self) -> dict[str, Any]:
        return self.record["body"]

    @property
    def props(self) -> dict[str, Any]:
        return self.record["body"]["properties"]

    @property
    def meta(self) -> dict[str, Any]:
        return self.record["meta"]

    @property
    def id(self) -> str:
        return self.record["body"]["id"]

    @property
    def key(self) -> str:
        return resource_key(self.id)

    def set_provisioning(self, state: str, now: float | None = None) -> None:
        self.props["provisioningState"] = state
        self.props["provisioningStateTransitionTime"] = now_iso(now)

    def render(self) -> dict[str, Any]:
        body = clone(self.body)
        if self.shown_when_set and not body["properties"].get(self.shown_when_set):
            body["properties"].pop(self.shown_when_set, None)
        return body


class Workspace(Resource):
    collection, kind, rtype = "workspaces", "workspace", f"{PROVIDER}/workspaces"

    @classmethod
    def create(cls, rid: str, body: dict[str, Any]) -> Workspace:
        return cls(cls.new_record(rid, {}, location=body["location"], tags=body.get("tags") or {}))


class Experiment(Resource):
    collection, kind, rtype = "experiments", "experiment", f"{PROVIDER}/workspaces/experiments"

    @classmethod
    def create(cls, rid: str) -> Experiment:
        return cls(cls.new_record(rid, {}))


class FileServer(Resource):
    """A plain directory (`meta.export_dir`) stands in for the NFS server's disks."""

    collection, kind, rtype = "fileServers", "file server", f"{PROVIDER}/workspaces/fileservers"

    @classmethod
    def create(cls, rid: str, sub: str, rg: str, body: dict[str, Any], export_dir: Path) -> FileServer:
        name = rid.rsplit("/", 1)[-1]
        props = clone(body["properties"])
        ssh = props.get("sshConfiguration", {}).get("userAccountSettings", {})
        ssh.pop("adminUserPassword", None)
        props["mountSettings"] = {
            "mountPoint": "/data",
            "fileServerPublicIP": "127.0.0.1",
            "fileServerInternalIP": "127.0.0.1",
        }
        props.setdefault("subnet", default_subnet(sub, rg, name))
        server = cls(cls.new_record(rid, props))
        server.meta["export_dir"] = str(export_dir)
        server.meta["request"] = clone(body)
        return server


class Cluster(Resource):
    """Nodes live in `meta.nodes` (`{id, state, ready_at | leave_at, job}`); the node counts the wire
    shows are derived from them (`update_node_counts`), and so is the node time it has held."""

    collection, kind, rtype = "clusters", "cluster", f"{PROVIDER}/workspaces/clusters"
    shown_when_set = "errors"

    @classmethod
    def create(
        cls, rid: str, sub: str, rg: str, body: dict[str, Any], node_root: Path, now: float
    ) -> Cluster:
        name = rid.rsplit("/", 1)[-1]
        req = body["properties"]
        props: dict[str, Any] = {
            "vmSize": req["vmSize"],
            "vmPriority": req.get("vmPriority", "dedicated"),
            "scaleSettings": clone(req.get("scaleSettings") or {"manual": {"targetNodeCount": 0}}),
            "virtualMachineConfiguration": clone(
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
        cls.scale_defaults(props["scaleSettings"])
        if req.get("nodeSetup"):
            props["nodeSetup"] = redact_node_setup(req["nodeSetup"])
        props["subnet"] = clone(req.get("subnet") or default_subnet(sub, rg, name))
        cluster = cls(cls.new_record(rid, props))
        props["allocationState"] = "steady"
        props["allocationStateTransitionTime"] = now_iso(now)
        props["errors"] = []
        cluster.record["meta"] = {
            "request": clone(body),
            "node_setup": clone(req.get("nodeSetup") or {}),
            "nodes": [],
            "node_root": str(node_root),
            "node_seq": 0,
        }
        return cluster

    @staticmethod
    def scale_defaults(scale: dict[str, Any]) -> None:
        if scale.get("manual") is not None:
            scale["manual"].setdefault("nodeDeallocationOption", "requeue")
        if scale.get("autoScale") is not None:
            scale["autoScale"].setdefault("initialNodeCount", 0)

    @property
    def nodes(self) -> list[dict[str, Any]]:
        return self.meta["nodes"]

    @property
    def live_nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.nodes if n["state"] != "leaving"]

    @property
    def node_root(self) -> Path:
        return Path(self.meta["node_root"])

    @property
    def deleting(self) -> bool:
        return self.props.get("provisioningState") == "deleting"

    @property
    def provisioned(self) -> bool:
        return self.props.get("provisioningState") == "succeeded"

    def node(self, node_id: str) -> dict[str, Any] | None:
        return next((n for n in self.nodes if n["id"] == node_id), None)

    def set_scale(self, scale: dict[str, Any]) -> None:
        """PATCH: new scale settings; the next `advance` moves the nodes."""
        scale = clone(scale)
        self.scale_defaults(scale)
        self.props["scaleSettings"] = scale

    def target_nodes(self, demand: int) -> int:
        """Manual: the target node count. Auto-scale: `demand` (nodes wanted by its queued and running
        jobs; at least `initialNodeCount` until the first allocation settled), within the bounds."""
        scale = self.props["scaleSettings"]
        if "manual" in scale:
            return int(scale["manual"].get("targetNodeCount", 0))
        auto = scale["autoScale"]
        if not self.meta.get("initial_done"):
            demand = max(demand, int(auto.get("initialNodeCount", 0)))
        return max(int(auto["minimumNodeCount"]), min(int(auto["maximumNodeCount"]), demand))

    def resize(self, target: int, now: float, delay: float) -> tuple[bool, list[tuple[str, str]]]:
        """Start adding or removing nodes to reach `target`. Returns whether any node changed, and the
        jobs whose running nodes leave with the deallocation option that says what becomes of them
        (`requeue`, `terminate`)."""
        props, meta = self.props, self.meta
        nodes = self.live_nodes
        evicted: list[tuple[str, str]] = []
        changed = False
        if len(nodes) < target:
            for _ in range(target - len(nodes)):
                meta["node_seq"] += 1
                stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dt%H%M%Sz")
                digest = hashlib.sha1(props.get("creationTime", "").encode() + self.id.encode())
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
                    evicted.append((node["job"], option))
                node["state"] = "leaving"
                node["leave_at"] = now + delay / 2
                node["job"] = None
                surplus -= 1
                changed = True
        if changed:
            props["allocationState"] = "resizing"
            props["allocationStateTransitionTime"] = now_iso(now)
        return changed, evicted

    def nodes_ready(self, now: float) -> list[dict[str, Any]]:
        """Nodes whose provisioning delay is over and whose setup has not started."""
        return [
            n
            for n in self.nodes
            if n["state"] == "preparing" and now >= n["ready_at"] and not n.get("mounting")
        ]

    def remove_departed(self, now: float) -> list[str]:
        """Leaving nodes whose time is up go; their ids (the caller removes their directories)."""
        gone = [n for n in self.nodes if n["state"] == "leaving" and now >= n.get("leave_at", 0)]
        for node in gone:
            self.nodes.remove(node)
        return [n["id"] for n in gone]

    def settle(self, now: float) -> None:
        """No node preparing or leaving: the allocation is steady again."""
        busy = any(n["state"] in ("preparing", "leaving") for n in self.nodes)
        if not busy and self.props["allocationState"] == "resizing":
            self.props["allocationState"] = "steady"
            self.props["allocationStateTransitionTime"] = now_iso(now)
        if not busy:
            self.meta["initial_done"] = True

    def fingerprint(self) -> str:
        """What the wire shows and the nodes, to tell whether an advance changed anything."""
        return json.dumps([self.props, self.nodes], sort_keys=True)

    def finish_node_setup(self, node: dict[str, Any], errors: list[dict[str, Any]]) -> None:
        """Setup done: the node is `idle`, or `unusable` with its errors added to the cluster's."""
        if errors:
            node["state"] = "unusable"
            known = {json.dumps(e, sort_keys=True) for e in self.props.get("errors", [])}
            for error in errors:
                error = {**error, "details": [*error["details"], {"name": "nodeId", "value": node["id"]}]}
                if json.dumps(error, sort_keys=True) not in known:
                    self.props.setdefault("errors", []).append(error)
        else:
            node["state"] = "idle"

    def release(self, job_key: str) -> bool:
        """The job's nodes are free again (running ones become idle); whether it had any."""
        touched = False
        for node in self.nodes:
            if node.get("job") == job_key:
                node["job"] = None
                if node["state"] == "running":
                    node["state"] = "idle"
                touched = True
        return touched

    def idle_nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.nodes if n["state"] == "idle"]

    def update_node_counts(self, now: float) -> bool:
        """The counts the wire shows, from the nodes; whether the node time accounting changed."""
        counts = dict.fromkeys(NODE_STATES, 0)
        for node in self.nodes:
            counts[node["state"]] += 1
        self.props["currentNodeCount"] = len(self.nodes)
        self.props["nodeStateCounts"] = {f"{state}NodeCount": counts[state] for state in NODE_STATES}
        return self._account_allocation(now)

    def _account_allocation(self, now: float) -> bool:
        """Node time, as a real cluster bills it: every change of the node count (preparing, idle,
        running, leaving and unusable nodes all count) with the node-seconds held so far."""
        count = len(self.nodes)
        alloc = self.meta.setdefault(
            "allocation", {"nodes": 0, "since": now, "node_seconds": 0.0, "history": []}
        )
        if count == alloc["nodes"]:
            return False
        alloc["node_seconds"] += alloc["nodes"] * max(now - alloc["since"], 0.0)
        alloc["nodes"], alloc["since"] = count, now
        alloc["history"] = [*alloc["history"], [now_iso(now), count]][-ALLOCATION_HISTORY:]
        return True

    def allocation_report(self, now: float) -> dict[str, Any]:
        """Its node allocation over time (the admin endpoint ``/_emulator/clusters``)."""
        alloc = self.meta.get("allocation") or {"nodes": 0, "since": now, "node_seconds": 0.0}
        held = alloc["node_seconds"] + alloc["nodes"] * max(now - alloc["since"], 0.0)
        return {
            "id": self.id,
            "name": self.body["name"],
            "nodes": alloc["nodes"],
            "node_seconds": round(held, 3),
            "history": [{"time": t, "nodes": n} for t, n in alloc.get("history", [])],
        }

    def remote_logins(self) -> list[dict[str, Any]]:
        return [
            {"nodeId": n["id"], "ipAddress": "127.0.0.1", "port": 50000 + i}
            for i, n in enumerate(self.nodes)
            if n["state"] != "leaving"
        ]


class Job(Resource):
    """`meta`: the request (with its credentials), the job's uuid, toolkit, inline secrets (in memory
    only), its nodes and process ids, resolved paths, and the errors that will end it (`forced_errors`:
    terminate, wall clock, a resize) or whether it goes back to the queue (`requeue`)."""

    collection, kind, rtype = "jobs", "job", f"{PROVIDER}/workspaces/experiments/jobs"
    shown_when_set = "executionInfo"

    @classmethod
    def create(cls, rid: str, body: dict[str, Any], cluster_id: str, segment: str, now: float) -> Job:
        req = body["properties"]
        job_uuid = segment.rsplit("/", 1)[-1]
        props = clone(req)
        props["cluster"] = {"id": cluster_id}
        props.setdefault("schedulingPriority", "normal")
        # The service's own GetJob/PutJob examples also report the priority as `priority`.
        props["priority"] = props["schedulingPriority"]
        props.setdefault("nodeCount", 1)
        props.setdefault("constraints", {})
        props["constraints"].setdefault("maxWallClockTime", "P7D")
        for secret in props.get("secrets") or []:
            secret.pop("value", None)
        if props.get("mountVolumes"):  # credentials are never shown (the request keeps them)
            props["mountVolumes"] = redact_node_setup({"mountVolumes": props["mountVolumes"]})["mountVolumes"]
        registry = (props.get("containerSettings") or {}).get("imageSourceRegistry") or {}
        if registry.get("credentials"):
            registry["credentials"].pop("password", None)
        tool = toolkit_of(req)
        if tool in TOOL_TYPES:
            props["toolType"] = tool
        props["jobOutputDirectoryPathSegment"] = segment
        job = cls(cls.new_record(rid, props))
        props["executionState"] = "queued"
        props["executionStateTransitionTime"] = now_iso(now)
        props["executionInfo"] = {}
        job.record["meta"] = {
            "request": clone(body),
            "uuid": job_uuid,
            "tool": tool,
            "secrets": {s["name"]: s.get("value", "") for s in req.get("secrets") or []},
            "nodes": [],
            "pids": [],
            "created": now,
        }
        return job

    @staticmethod
    def new_uuid() -> str:
        return str(uuid.uuid4())

    @property
    def state(self) -> str | None:
        return self.props.get("executionState")

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_JOB_STATES

    @property
    def cluster_key(self) -> str:
        return resource_key(self.props["cluster"]["id"])

    @property
    def node_count(self) -> int:
        return int(self.props.get("nodeCount", 1))

    def schedule_order(self) -> tuple[int, float]:
        """Queued jobs start by priority, then age."""
        return PRIORITY_ORDER.get(self.props["schedulingPriority"], 1), self.meta["created"]

    def _set_state(self, state: str, now: float | None = None) -> None:
        self.props["executionState"] = state
        self.props["executionStateTransitionTime"] = now_iso(now)

    def start(self, node_ids: list[str], now: float) -> None:
        """queued -> running on these nodes (the backend then starts its processes)."""
        self.meta["nodes"] = node_ids
        self.meta.pop("requeue", None)
        self.meta.pop("forced_errors", None)
        self._set_state("running", now)
        self.props["executionInfo"] = {"startTime": now_iso(now)}
        self.meta["started"] = now

    def terminate(self, errors: list[dict[str, Any]], now: float | None = None) -> None:
        """running -> terminating: its processes are being stopped, and it will end with `errors`."""
        self._set_state("terminating", now)
        self.meta["forced_errors"] = errors

    def evicted(self, option: str) -> None:
        """A resize took its nodes: `requeue` puts it back in the queue when its processes have exited,
        `terminate` fails it."""
        if option == "requeue":
            self.meta["requeue"] = True
        else:
            self.meta["forced_errors"] = [
                resource_error(
                    "JobTerminatedByClusterResize",
                    "The cluster was resized with nodeDeallocationOption 'terminate' while the job was "
                    "running.",
                )
            ]

    def requeue(self) -> None:
        self._set_state("queued")
        self.props["executionInfo"] = {}

    def over_wall_clock(self, now: float) -> bool:
        if self.state != "running" or self.meta.get("forced_errors"):
            return False
        return now - self.meta.get("started", now) > parse_duration(
            self.props["constraints"]["maxWallClockTime"]
        )

    def wall_clock_error(self) -> dict[str, Any]:
        return resource_error(
            "JobMaxWallClockTimeExceeded",
            f"The job ran longer than its maxWallClockTime ({self.props['constraints']['maxWallClockTime']}) "
            "and was terminated.",
        )

    def finish(self, exit_code: int | None, errors: list[dict[str, Any]]) -> None:
        """-> succeeded (exit code 0, no error) or failed, with its execution info."""
        now = now_iso()
        succeeded = exit_code == 0 and not errors
        if not succeeded and exit_code not in (None, 0) and not errors:
            errors = [job_failed(exit_code)]
        self.props["executionState"] = "succeeded" if succeeded else "failed"
        self.props["executionStateTransitionTime"] = now
        info = self.props.get("executionInfo") or {}
        info.setdefault("startTime", now)
        info["endTime"] = now
        if exit_code is not None:
            info["exitCode"] = exit_code
        if errors:
            info["errors"] = errors
        self.props["executionInfo"] = info
        self.meta["pids"] = []

    def output_dir(self, directory_id: str) -> Path | None:
        """The local directory behind an output directory id (`stdouterr` or a declared id); None when
        the job has not resolved its paths yet (still queued)."""
        declared = {d["id"].lower() for d in self.props.get("outputDirectories") or []}
        if directory_id.lower() != "stdouterr" and directory_id.lower() not in declared:
            raise ArmError(
                "InvalidOutputDirectoryId",
                f"outputdirectoryid: the job has no output directory '{directory_id}'; it has "
                f"stdouterr{''.join(', ' + d for d in sorted(declared))}.",
                target="outputdirectoryid",
            )
        paths = self.meta.get("paths")
        if not paths:
            return None
        if directory_id.lower() == "stdouterr":
            return Path(paths["stdouterr"])
        for out_id, path in paths["outputs"].items():
            if out_id.lower() == directory_id.lower():
                return Path(path)
        return None

    def remote_logins(self) -> list[dict[str, Any]]:
        return [
            {"nodeId": node_id, "ipAddress": "127.0.0.1", "port": 50000 + i}
            for i, node_id in enumerate(self.meta.get("nodes") or [])
        ]


MODELS: dict[str, type[Resource]] = {
    model.collection: model for model in (Workspace, Experiment, FileServer, Cluster, Job)
}
