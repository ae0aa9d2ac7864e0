"""A Command job with a PyTorch distribution of 2 instances x 2 processes on the emulator: each process
gets the variables Azure ML sets (RANK, WORLD_SIZE, NODE_RANK, LOCAL_RANK, LOCAL_WORLD_SIZE) and writes
its own log, `user_logs/std_log_process_<rank>.txt` in the workspace's `azureml` container."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from azure.storage.blob import BlobServiceClient

from tests.arm.conftest import auth, unique, wait_for

pytestmark = pytest.mark.e2e

API = "api-version=2024-10-01"
VARIABLES = ("RANK", "WORLD_SIZE", "NODE_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def test_each_process_of_a_pytorch_distribution_has_its_ranks_and_its_own_log(arm_stack: Any) -> None:
    stack = arm_stack.ensure("azurite")  # the logs land in Azurite
    session = requests.Session()
    session.headers.update(auth(stack))
    sub, rg = "00000000-0000-0000-0000-000000000000", unique("ranks")
    base = stack.arm_endpoint
    assert session.put(
        f"{base}/subscriptions/{sub}/resourcegroups/{rg}?api-version=2025-04-01", json={"location": "eastus"}
    ).ok
    prefix = (
        f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.MachineLearningServices/workspaces/ws1"
    )
    ws = f"{base}{prefix}"
    assert session.put(f"{ws}?{API}", json={"location": "eastus", "properties": {}}).ok
    compute = {
        "computeType": "AmlCompute",
        "properties": {"scaleSettings": {"minNodeCount": 0, "maxNodeCount": 2}},
    }
    assert session.put(f"{ws}/computes/c2?{API}", json={"location": "eastus", "properties": compute}).ok
    assert session.put(
        f"{ws}/environments/e/versions/1?{API}", json={"properties": {"image": "python:3.11"}}
    ).ok
    job = {
        "properties": {
            "jobType": "Command",
            "command": "echo " + " ".join(f"{v}=${v}" for v in VARIABLES),
            "computeId": f"{prefix}/computes/c2",
            "environmentId": f"{prefix}/environments/e/versions/1",
            "resources": {"instanceCount": 2},
            "distribution": {"distributionType": "PyTorch", "processCountPerInstance": 2},
        }
    }
    name = unique("j")
    assert session.put(f"{ws}/jobs/{name}?{API}", json=job).ok
    wait_for(lambda: session.get(f"{ws}/jobs/{name}?{API}").json()["properties"]["status"] == "Completed", 60)

    container = BlobServiceClient.from_connection_string(stack.connection_string).get_container_client(
        "azureml"
    )
    folder = f"ExperimentRun/dcid.{name}/user_logs/"
    assert sorted(b.name.removeprefix(folder) for b in container.list_blobs(name_starts_with=folder)) == [
        f"std_log_process_{rank}.txt" for rank in range(4)
    ]
    for rank in range(4):
        log = container.download_blob(f"{folder}std_log_process_{rank}.txt").readall().decode()
        expected = dict(RANK=rank, WORLD_SIZE=4, NODE_RANK=rank // 2, LOCAL_RANK=rank % 2, LOCAL_WORLD_SIZE=2)
        assert log.strip() == " ".join(f"{k}={v}" for k, v in expected.items()), (rank, log)
