"""Batch AI api-versions 2017-09-01-preview and 2018-03-01: clusters, jobs and file servers directly in a
resource group, as the quickstart's SDK (azure-mgmt-batchai 0.2.0) and 1.0.x use them.

They are the same resources as 2018-05-01's, seen through the older shape: a resource group's clusters
and file servers are those of its workspace `default`, its jobs those of that workspace's experiment
`default` (both made on first use, in the request's location). Requests are validated against the
version's own published definition and converted (cluster ids, `priority` -1000..1000 to
`schedulingPriority`); answers are converted back (ids, types, `location`, `priority`) and pruned to
the fields that version defines, so each version's clients see exactly their shape.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from infra.local.arm.batchai.backend import Backend
from infra.local.arm.errors import ArmError
from infra.local.arm.specvalidator import load_spec, validate

VERSIONS = frozenset({"2017-09-01-preview", "2018-03-01"})
WORKSPACE = "default"
EXPERIMENT = "default"
KINDS = {
    "clusters": ("Cluster", "Clusters", "clusters"),
    "jobs": ("Job", "Jobs", "jobs"),
    "fileServers": ("FileServer", "FileServers", "fileservers"),
}
PRIORITY = {"low": -1, "normal": 0, "high": 1}
_ID = re.compile(
    r"(?i)^(/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.BatchAI)"
    r"/workspaces/" + WORKSPACE + r"(?:/experiments/" + EXPERIMENT + r")?/(clusters|jobs|fileservers)/(.+)$"
)


def legacy_id(resource_id: str) -> str:
    """`.../workspaces/default[/experiments/default]/<kind>/<name>` -> `.../<Kind>/<name>`."""
    found = _ID.match(resource_id)
    if not found:
        return resource_id
    kind = {"clusters": "clusters", "jobs": "jobs", "fileservers": "fileServers"}[found.group(2).lower()]
    return f"{found.group(1)}/{kind}/{found.group(3)}"


def current_cluster_id(resource_id: str) -> str:
    """A legacy cluster id (`.../providers/Microsoft.BatchAI/clusters/<name>`) -> the workspace's."""
    found = re.match(
        r"(?i)^(/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.BatchAI)/clusters/([^/]+)$",
        resource_id,
    )
    if not found:
        return resource_id
    return f"{found.group(1)}/workspaces/{WORKSPACE}/clusters/{found.group(2)}"


@cache
def _definitions(version: str) -> dict[str, Any]:
    return load_spec(version)["definitions"]


def prune(value: Any, schema: dict[str, Any], version: str) -> Any:
    """Keep only what `schema` (of that version's definitions) names; free-form objects stay whole."""
    definitions = _definitions(version)
    if "$ref" in schema:
        return prune(value, definitions[schema["$ref"].rsplit("/", 1)[-1]], version)
    if isinstance(value, list):
        items = schema.get("items") or {}
        return [prune(item, items, version) for item in value]
    if not isinstance(value, dict):
        return value
    properties: dict[str, Any] = dict(schema.get("properties") or {})
    for part in schema.get("allOf") or []:
        resolved = definitions[part["$ref"].rsplit("/", 1)[-1]] if "$ref" in part else part
        properties.update(_all_properties(resolved, version))
    if not properties:
        return value
    return {key: prune(item, properties[key], version) for key, item in value.items() if key in properties}


def _all_properties(schema: dict[str, Any], version: str) -> dict[str, Any]:
    properties = dict(schema.get("properties") or {})
    for part in schema.get("allOf") or []:
        resolved = _definitions(version)[part["$ref"].rsplit("/", 1)[-1]] if "$ref" in part else part
        properties.update(_all_properties(resolved, version))
    return properties


class LegacyBatchAI:
    """The resource-group-level operations of the older api-versions, on top of the backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    # --- requests --------------------------------------------------------------------------------
    def check(self, definition: str, body: Any, version: str) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ArmError("InvalidRequestContent", f"The request body must be a JSON object ({definition}).")
        errors = validate(definition, body, version)
        if errors:
            raise ArmError(
                "InvalidRequestContent",
                f"The request content is not a valid {definition} ({version}): {errors[0]}",
                target=errors[0].path,
                details=[
                    {"code": "InvalidRequestContent", "target": e.path, "message": e.message} for e in errors
                ],
            )
        return body

    def ensure_container(self, sub: str, rg: str, location: str, experiment: bool) -> None:
        """The group's `default` workspace (and experiment), made on first use."""
        backend = self.backend
        with backend.lock:
            workspace = backend.state["workspaces"].get(f"{backend._ids(sub, rg, WORKSPACE)}".lower())
            if workspace is None:
                backend.create_workspace(sub, rg, WORKSPACE, {"location": location})
            if experiment:
                key = f"{backend._ids(sub, rg, WORKSPACE)}/experiments/{EXPERIMENT}".lower()
                if key not in backend.state["experiments"]:
                    backend.create_experiment(sub, rg, WORKSPACE, EXPERIMENT)

    @staticmethod
    def to_current_job(body: dict[str, Any]) -> dict[str, Any]:
        props = dict(body.get("properties") or {})
        if isinstance(props.get("cluster"), dict) and props["cluster"].get("id"):
            props["cluster"] = {"id": current_cluster_id(props["cluster"]["id"])}
        priority = props.pop("priority", 0)
        if isinstance(priority, int) and not isinstance(priority, bool):
            props["schedulingPriority"] = "high" if priority > 0 else "low" if priority < 0 else "normal"
        props.pop("experimentName", None)
        for directory in props.get("outputDirectories") or []:
            directory.pop("type", None)
            directory.pop("createNew", None)
        return {"properties": props}

    # --- answers ---------------------------------------------------------------------------------
    def shape(self, kind: str, body: dict[str, Any], version: str, location: str | None) -> dict[str, Any]:
        """A 2018-05-01 body of a cluster, job or file server as `version` shows it."""
        definition, type_name, _ = KINDS[kind]
        out = dict(body)
        out["id"] = legacy_id(body["id"])
        out["type"] = f"Microsoft.BatchAI/{type_name}"
        out.setdefault("location", location or self.backend.config.location)
        props = dict(body.get("properties") or {})
        if isinstance(props.get("cluster"), dict) and props["cluster"].get("id"):
            props["cluster"] = {"id": legacy_id(props["cluster"]["id"])}
        if "schedulingPriority" in props:
            props["priority"] = PRIORITY.get(props["schedulingPriority"], 0)
        out["properties"] = props
        return prune(out, _definitions(version)[definition], version)

    def location_of(self, sub: str, rg: str) -> str | None:
        with self.backend.lock:
            workspace = self.backend.state["workspaces"].get(self.backend._ids(sub, rg, WORKSPACE).lower())
            return workspace["body"].get("location") if workspace else None

    def not_found(self, kind: str, rg: str, name: str) -> ArmError:
        return ArmError(
            "ResourceNotFound",
            f"The Resource 'Microsoft.BatchAI/{kind}/{name}' under resource group '{rg}' was not found.",
        )

    def groups(self, sub: str) -> list[str]:
        return [g["name"] for g in self.backend.list_groups(sub)]
