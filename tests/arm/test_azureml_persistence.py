"""The Azure ML provider's resources survive an ARM emulator restart (as Batch AI's do); a job that was
running when the emulator stopped has lost its processes and fails, saying so; no secret value is
written to disk."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from tests.arm.conftest import PRIVATE_ARM_TOKEN, wait_for

pytestmark = pytest.mark.e2e

API = "api-version=2024-10-01"


def test_resources_survive_a_restart_and_a_running_job_fails(private_arm: Any) -> None:
    base = private_arm.endpoint
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {PRIVATE_ARM_TOKEN}"
    sub, rg = "00000000-0000-0000-0000-000000000000", "persist"
    assert session.put(
        f"{base}/subscriptions/{sub}/resourcegroups/{rg}?api-version=2025-04-01", json={"location": "eastus"}
    ).status_code in (200, 201)
    prefix = (
        f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.MachineLearningServices/workspaces/ws1"
    )
    ws = f"{base}{prefix}"
    assert session.put(f"{ws}?{API}", json={"location": "eastus", "properties": {}}).ok
    store = {
        "properties": {
            "datastoreType": "AzureFile",
            "accountName": "devstoreaccount1",
            "fileShareName": "s1",
            "credentials": {
                "credentialsType": "AccountKey",
                "secrets": {"secretsType": "AccountKey", "key": "SECRETKEY"},
            },
        }
    }
    assert session.put(f"{ws}/datastores/share1?{API}", json=store).ok
    (private_arm.files_root / "devstoreaccount1" / "s1" / "data").mkdir(parents=True)
    compute = {
        "location": "eastus",
        "properties": {
            "computeType": "AmlCompute",
            "properties": {
                "vmSize": "STANDARD_D2_V2",
                "scaleSettings": {"minNodeCount": 0, "maxNodeCount": 1},
            },
        },
    }
    assert session.put(f"{ws}/computes/c1?{API}", json=compute).ok
    assert session.put(
        f"{ws}/environments/e1/versions/1?{API}", json={"properties": {"image": "python:3.11"}}
    ).ok
    job = {
        "properties": {
            "jobType": "Command",
            "command": "sleep 60",
            "computeId": f"{prefix}/computes/c1",
            "environmentId": f"{prefix}/environments/e1/versions/1",
            "experimentName": "x",
            "inputs": {"D": {"jobInputType": "uri_folder", "uri": "azureml://datastores/share1/paths/data/"}},
        }
    }
    assert session.put(f"{ws}/jobs/j1?{API}", json=job).ok
    wait_for(lambda: session.get(f"{ws}/jobs/j1?{API}").json()["properties"]["status"] == "Running", 30)

    private_arm.stop()
    state = (private_arm.data_dir / "azureml-state.json").read_text()
    assert "SECRETKEY" not in state
    private_arm.start()

    answered = session.get(f"{ws}/jobs/j1?{API}").json()
    assert answered["properties"]["status"] == "Failed"
    assert (
        session.get(f"{ws}/computes/c1?{API}").json()["properties"]["properties"]["vmSize"]
        == "STANDARD_D2_V2"
    )
    assert session.get(f"{ws}/datastores/share1?{API}").json()["properties"]["fileShareName"] == "s1"
    assert session.get(f"{ws}/environments/e1/versions/1?{API}").ok
    # The workspace goes on working: a new job runs on the compute's freed node.
    assert session.put(
        f"{ws}/jobs/j2?{API}", json={**job, "properties": {**job["properties"], "command": "true"}}
    ).ok
    deadline = time.monotonic() + 30
    while session.get(f"{ws}/jobs/j2?{API}").json()["properties"]["status"] not in ("Completed", "Failed"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
