"""Replay every official Azure ML 2024-10-01 example of the spec folder against the emulator's
Microsoft.MachineLearningServices provider: the example's request is accepted with one of the
example's status codes, and the answer conforms to the published definitions (checked here with the
spec folder's own checker, on top of the emulator's own check of everything it sends)."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import pytest
import requests

from infra.local.arm.azureml.responses import SPEC_DIR, spec_set
from tests.arm.conftest import auth

pytestmark = pytest.mark.e2e

HEADERS = {"Content-Type": "application/json"}
RG_API = "2025-04-01"
PROVIDER = "Microsoft.MachineLearningServices"
# Dependency order: each example's prerequisites come from the ones before it.
ORDER = [
    "Workspace/get.json",
    "Compute/createOrUpdate/BasicAmlCompute.json",
    "Compute/createOrUpdate/AmlCompute.json",
    "Compute/get/AmlCompute.json",
    "Compute/list.json",
    "Compute/patch.json",
    "Datastore/AzureBlobWAccountKey/createOrUpdate.json",
    "Datastore/AzureFileWAccountKey/createOrUpdate.json",
    "Datastore/get.json",
    "Workspace/EnvironmentVersion/createOrUpdate.json",
    "Workspace/EnvironmentVersion/get.json",
    "Job/CommandJob/createOrUpdate.json",
    "Job/CommandJob/get.json",
    "Job/CommandJob/list.json",
    "Job/cancel.json",
    "Job/delete.json",
    "Compute/delete.json",
]


def substitutions(params: dict[str, Any]) -> dict[str, Any]:
    """What the examples leave as placeholders, replaced by the resources the replay made: a job's
    computeId/environmentId ("string" in Microsoft's example) and the job id that Job/delete.json
    writes as a URL (a path parameter cannot hold one)."""
    sub, rg, ws = params["subscriptionId"], params["resourceGroupName"], params["workspaceName"]
    base = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{PROVIDER}/workspaces/{ws}"
    return {
        "computeId": f"{base}/computes/jobcompute",
        "environmentId": f"{base}/environments/string/versions/string",
    }


def examples() -> dict[str, tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """Example path -> (method, path template, operation, example document)."""
    import json

    out = {}
    for rel, (_, path, method, op, _) in spec_set().example_index().items():
        if not (SPEC_DIR / rel).is_file():  # referenced upstream, not copied into the subset
            continue
        doc = json.loads((SPEC_DIR / rel).read_text())
        out[rel.removeprefix("examples/")] = (method.upper(), path, op, doc)
    return out


def test_every_example_has_a_replay_step() -> None:
    present = {
        p.relative_to(SPEC_DIR / "examples").as_posix() for p in (SPEC_DIR / "examples").rglob("*.json")
    }
    assert sorted(ORDER) == sorted(present)
    assert set(ORDER) <= set(examples())


def test_replay_official_azureml_examples(arm_stack: Any) -> None:
    base = arm_stack.arm_endpoint
    specs = spec_set()
    known = examples()
    groups: set[tuple[str, str]] = set()
    session = requests.Session()
    session.headers.update({**HEADERS, **auth(arm_stack)})
    for name in ORDER:
        method, template, op, doc = known[name]
        params = dict(doc["parameters"])
        sub, rg, ws = params["subscriptionId"], params["resourceGroupName"], params["workspaceName"]
        if (sub, rg) not in groups:  # the resource group and workspace every example lives in
            r = session.put(
                f"{base}/subscriptions/{sub}/resourcegroups/{rg}?api-version={RG_API}",
                json={"location": "eastus"},
            )
            assert r.status_code in (200, 201), r.text
            ws_url = f"{base}/subscriptions/{sub}/resourceGroups/{rg}/providers/{PROVIDER}/workspaces/{ws}"
            r = session.put(f"{ws_url}?api-version=2024-10-01", json={"location": "eastus", "properties": {}})
            assert r.status_code in (200, 201), r.text
            # The job example's compute (an AmlCompute) and the environment it names.
            r = session.put(
                f"{ws_url}/computes/jobcompute?api-version=2024-10-01",
                json={
                    "location": "eastus",
                    "properties": {"computeType": "AmlCompute", "properties": {"vmSize": "STANDARD_D2_V2"}},
                },
            )
            assert r.status_code in (200, 201), r.text
            groups.add((sub, rg))
        if name == "Job/delete.json":
            params["id"] = "string"  # the example writes the job's URL where its name goes
        body = None
        query = {}
        path = template
        fname = specs.operation(op["operationId"])[0]
        for _, p in specs.op_parameters(fname, op):
            if p["in"] == "path":
                path = path.replace("{" + p["name"] + "}", quote(str(params[p["name"]]), safe=""))
            elif p["in"] == "query" and p["name"] in params:
                query[p["name"]] = params[p["name"]]
            elif p["in"] == "body":
                body = params.get(p["name"])
        if name == "Job/CommandJob/createOrUpdate.json":
            body = {**body, "properties": {**body["properties"], **substitutions(params)}}
        r = session.request(method, base + path, params=query, json=body)
        declared = set(doc["responses"])
        assert str(r.status_code) in declared, (name, r.status_code, r.text[:500])
        answer = r.json() if r.content else None
        errors = specs.validate_response(op["operationId"], r.status_code, answer)
        assert errors == [], (name, errors)
        if r.status_code == 202 and "Location" in r.headers:  # a long-running operation completes
            deadline = time.monotonic() + 10
            while session.get(r.headers["Location"]).status_code == 202:
                assert time.monotonic() < deadline, name
                time.sleep(0.05)
