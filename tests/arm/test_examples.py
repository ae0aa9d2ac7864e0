"""Replay every official Batch AI 2018-05-01 example against the emulator: the example's request must be
accepted, and the emulator's answer must have the example's shape (same property names, same JSON types)
and conform to the spec's definition."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from infra.local.arm.specvalidator import SPEC_DIR, load_spec, validate
from tests.arm.conftest import RESPONSE_DEFINITIONS, auth, wait_for

pytestmark = pytest.mark.e2e

EXAMPLES = SPEC_DIR / "examples"
RG_API = "2025-04-01"
TYPOS = {"demo_experimnet": "demo_experiment"}
HEADERS = {"Content-Type": "application/json"}

# Dependency order: each example's prerequisites come from the ones before it.
ORDER = [
    "ListOperation",
    "ListUsages",
    "PutWorkspace",
    "GetWorkspace",
    "ListWorkspace",
    "ListWorkspaceByResourceGroup",
    "PatchWorkspace",
    "PutExperiment",
    "GetExperiment",
    "ListExperimentByWorkspace",
    "PutFileServer",
    "GetFileServer",
    "ListFileServerByWorkspace",
    "PutCluster",
    "GetCluster",
    "ListClusterByWorkspace",
    "ClusterListRemoteLoginInfo",
    "PutJob",
    "GetJob",
    "ListJobByExperiment",
    "JobListRemoteLoginInfo",
    "ListOutputFiles",
    "TerminateJob",
    "PatchCluster",
    "DeleteJob",
    "DeleteCluster",
    "DeleteFileServer",
    "DeleteExperiment",
    "DeleteWorkspace",
]


def _operations() -> dict[str, tuple[str, str, dict[str, Any]]]:
    """Example name -> (HTTP method, path template, operation) from the spec's x-ms-examples."""
    spec = load_spec()
    out = {}
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if method == "parameters":
                continue
            for ref in op.get("x-ms-examples", {}).values():
                out[Path(ref["$ref"]).stem] = (method.upper(), path, op)
    return out


def _query_names(op: dict[str, Any]) -> list[str]:
    spec = load_spec()
    names = []
    for param in op.get("parameters", []):
        if "$ref" in param:
            param = spec["parameters"][param["$ref"].rsplit("/", 1)[-1]]
        if param.get("in") == "query":
            names.append(param["name"])
    return names


def shape_diff(expected: Any, actual: Any, path: str = "$") -> list[str]:
    """Where `actual` lacks a property of `expected` or has another JSON type; a list item of the
    example must match the shape of some item of the answer. null in the example matches anything."""
    if expected is None:
        return []
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: example has an object, answer has {json.dumps(actual)[:60]}"]
        diffs = []
        for key, value in expected.items():
            if key not in actual:
                diffs.append(f"{path}.{key}: missing")
            else:
                diffs += shape_diff(value, actual[key], f"{path}.{key}")
        return diffs
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{path}: example has an array, answer has {json.dumps(actual)[:60]}"]
        if expected and not actual:
            return [f"{path}: example has items, answer has none"]
        diffs = []
        for i, item in enumerate(expected):
            candidates = [shape_diff(item, other, f"{path}[{i}]") for other in actual]
            if all(candidates):
                diffs += min(candidates, key=len)
        return diffs
    kinds = {bool: "boolean", int: "number", float: "number", str: "string"}
    if kinds.get(type(expected)) != kinds.get(type(actual)):
        return [f"{path}: example has {kinds.get(type(expected))}, answer has {json.dumps(actual)[:60]}"]
    return []


def test_every_example_has_a_replay_step() -> None:
    assert sorted(ORDER) == sorted(p.stem for p in EXAMPLES.glob("*.json"))
    assert set(ORDER) == set(_operations())


def test_replay_official_examples(arm_stack) -> None:
    base = arm_stack.arm_endpoint
    operations = _operations()
    session = requests.Session()
    session.headers.update({**HEADERS, **auth(arm_stack)})

    def call(method: str, url: str, body: Any = None) -> requests.Response:
        return session.request(method, url, data=None if body is None else json.dumps(body), timeout=30)

    sub = "00000000-0000-0000-0000-000000000000"
    group = f"{base}/subscriptions/{sub}/resourceGroups/demo_resource_group"
    assert call("PUT", f"{group}?api-version={RG_API}", {"location": "eastus"}).status_code in (200, 201)
    # PutCluster mounts https://storage_account_name.file.core.windows.net/azure_file_share_name: the
    # Files emulator only serves devstoreaccount1, so that share is a plain directory under files-root.
    (arm_stack.files_root / "storage_account_name" / "azure_file_share_name").mkdir(
        parents=True, exist_ok=True
    )
    # ... and an NFS file server in the example's (misspelt) workspace "demo_workspaces".
    bai = f"{group}/providers/Microsoft.BatchAI"
    put_fs = json.loads((EXAMPLES / "PutFileServer.json").read_text())["parameters"]["parameters"]
    for url, body in (
        (f"{bai}/workspaces/demo_workspaces", {"location": "eastus"}),
        (f"{bai}/workspaces/demo_workspaces/fileservers/fileservercedd134b", put_fs),
    ):
        response = call("PUT", f"{url}?api-version=2018-05-01", body)
        assert response.status_code in (200, 202), response.text
        _wait_operation(session, response)

    failures: list[str] = []
    for name in ORDER:
        example = json.loads((EXAMPLES / f"{name}.json").read_text())
        method, template, op = operations[name]
        # The examples misspell one name; use the experiment the earlier examples created.
        params = {k: TYPOS.get(v, v) if isinstance(v, str) else v for k, v in example["parameters"].items()}
        path = template
        for key, value in params.items():
            path = path.replace("{" + key + "}", str(value))
        query = "&".join(f"{q}={params[q]}" for q in _query_names(op) if q in params)
        url = f"{base}{path}?{query}"
        response = call(method, url, params.get("parameters"))
        expected = example["responses"]
        if str(response.status_code) not in expected:
            failures.append(f"{name}: {method} answered {response.status_code} {response.text[:300]}")
            continue
        if response.status_code == 202:
            for header in ("Location", "Retry-After"):
                if header not in response.headers:
                    failures.append(f"{name}: 202 without {header}")
            _wait_operation(session, response)
            if method == "PUT":
                _settle(session, name, f"{base}{path}?api-version=2018-05-01")
                response = call("GET", f"{base}{path}?api-version=2018-05-01")
        answer = response.json() if response.content else None
        sample = (expected.get("200") or {}).get("body")
        if sample is not None and answer is not None:
            failures += [f"{name}: {d}" for d in shape_diff(sample, answer)]
            definition = RESPONSE_DEFINITIONS.get(op["operationId"])
            if method == "PUT":
                definition = RESPONSE_DEFINITIONS.get(op["operationId"].replace("_Create", "_Get"))
            failures += [f"{name}: spec {definition}: {e}" for e in validate(definition, answer)]
        if name == "PutJob":
            _settle(session, "job", f"{base}{path}?api-version=2018-05-01")
    call("DELETE", f"{group}?api-version={RG_API}")
    assert failures == [], "\n".join(failures)


def _wait_operation(session: requests.Session, response: requests.Response) -> None:
    if response.status_code != 202:
        return
    url = response.headers["Azure-AsyncOperation"]
    wait_for(lambda: session.get(url, timeout=10).json()["status"] != "InProgress", what=url)
    assert session.get(url, timeout=10).json()["status"] == "Succeeded"


def _settle(session: requests.Session, name: str, url: str) -> None:
    """Let the resource reach the state its example shows: clusters steady with nodes, jobs finished."""

    def ready() -> bool:
        props = session.get(url, timeout=10).json()["properties"]
        if "allocationState" in props:
            return props["allocationState"] == "steady" and props["currentNodeCount"] > 0
        if "executionState" in props:
            return props["executionState"] in ("succeeded", "failed")
        return props["provisioningState"] == "succeeded"

    wait_for(ready, timeout=30, what=f"{name} to settle")
    time.sleep(0.05)
