"""Conformance with Microsoft's Batch AI recipes: their `utilities` helpers (vendored unmodified in
tests/legacy/clients/recipes/utilities, github Azure/BatchAI, MIT) drive the ARM emulator as the
recipes' notebooks do: status printing, submission, wait and stream, a random-search and a grid sweep
over a blob-mounted dataset, metric extraction, and resubmission of failed jobs (storage keys looked up
through Microsoft.Storage)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from infra.local.stack import DEV_SUBSCRIPTION
from tests.legacy.conftest import run_client

pytestmark = pytest.mark.e2e
RECIPES = Path(__file__).with_name("clients") / "recipes"


def recipes_env(named_stack: Any, resource_group: str) -> dict[str, str]:
    """What the recipes' client scripts read: the named stack's endpoints and keys, and the resource
    group they work in."""
    return {
        "RECIPES_SUBSCRIPTION_ID": DEV_SUBSCRIPTION,
        "RECIPES_ARM_ENDPOINT": named_stack.stack.arm_endpoint,
        "RECIPES_ARM_TOKEN": named_stack.arm_token,
        "RECIPES_STORAGE_ACCOUNT": named_stack.account,
        "RECIPES_STORAGE_KEY": named_stack.key,
        "RECIPES_STORAGE_CONNECTION_STRING": named_stack.connection_string,
        "RECIPES_FILE_ENDPOINT": f"http://{named_stack.file_host}",
        "RECIPES_RESOURCE_GROUP": resource_group,
        "PYTHONWARNINGS": "ignore",
    }


def test_recipes_utilities_against_the_local_stack(named_stack, recipes_python, tmp_path: Path) -> None:
    output = run_client(
        recipes_python,
        RECIPES / "conformance.py",
        tmp_path,
        recipes_env(named_stack, "recipes"),
        timeout=240,
    )
    result = json.loads(output.split("RESULT ", 1)[1].splitlines()[0])
    # Status printing and streaming happened as the recipes print them.
    assert "Cluster state: steady Target: 2" in output
    assert "epoch 2 on 50 samples" in output  # wait_for_job_completion streamed the job's stdout
    # Every sweep job trained on the blob-mounted dataset and reported a real metric.
    assert len(result["metrics"]) == 6 and result["finite"], result
    assert all(math.isfinite(m) and m > 0 for m in result["metrics"]) and len(set(result["metrics"])) > 1
    assert set(result["states"]) == {"succeeded"}, result
    assert "Best job: " in output
    # The failed job was resubmitted (its storage key found through ARM) and then succeeded.
    assert result["flaky_first"] == "failed"
    assert len(result["resubmitted"]) == 1 and result["flaky_final"] == ["succeeded"], result


def test_distributed_recipes_job_definitions(named_stack, recipes_python, tmp_path: Path) -> None:
    """The PyTorch-GPU-Distributed-Gloo and TensorFlow-GPU recipes' jobs, as their notebooks submit and
    stream them: arguments expanded per process (`--rank $AZ_BATCHAI_TASK_INDEX`), a working
    `AZ_BATCHAI_PYTORCH_INIT_METHOD` rendezvous, per-rank and per-role stdout files, and a failing rank
    that fails the job with the rank named."""
    output = run_client(
        recipes_python,
        RECIPES / "distributed.py",
        tmp_path,
        recipes_env(named_stack, "distributed"),
        timeout=240,
    )
    result = json.loads(output.split("RESULT ", 1)[1].splitlines()[0])
    torch_job = result["pytorch"]
    assert torch_job["state"] == "succeeded", output
    # wait_for_job_completion streamed stdout-0.txt: rank 0 got rank 0 (not "$AZ_BATCHAI_TASK_INDEX")
    # and the all_reduce over both ranks' values (1 + 2) went through the service's rendezvous URL.
    assert "rank 0 of 2, init file://" in output and "Epoch: [2] rank 0 all_reduce 3" in output
    assert "Epoch: [2] rank 1 all_reduce 3" in torch_job["stdout_1"]
    assert {"stdout-0.txt", "stderr-0.txt", "stdout-1.txt", "stderr-1.txt"} <= set(torch_job["files"])
    tf_job = result["tensorflow"]
    assert tf_job["state"] == "succeeded", output
    assert "Test error: 0.8%" in output  # streamed from stdout-wk-0.txt
    assert {"stdout-wk-0.txt", "stderr-wk-0.txt"} <= set(tf_job["files"])
    failing = result["failing"]
    assert failing["state"] == "failed" and failing["exit_code"] == 3, failing
    assert len(failing["errors"]) == 1 and "rank 1 of 2 exited with code 3" in failing["errors"][0], failing
    assert "stderr-1.txt" in failing["errors"][0]
    assert failing["seconds"] < 100  # rank 0, sleeping 120 s, was stopped, not waited for
