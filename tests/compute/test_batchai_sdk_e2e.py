"""BatchAISdk against the local ARM and Files emulators, through the real SDKs with the app's own
settings-built clients (static development token, https relaxed for loopback only)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from shared import batchai_requests, sdk_clients, staging
from shared.batchai_sdk import BatchAISdk, ComputeError
from shared.runspec import SpecContext, parse_run_spec
from shared.settings import Settings, local_stack_values

pytestmark = pytest.mark.e2e

FAST = {"provisioning_delay": 0.3, "operation_delay": 0.05, "retry_after": 0}


@pytest.fixture(scope="module")
def compute(local_stack) -> Iterator[BatchAISdk]:
    stack = local_stack.ensure("files", "arm")
    settings_url = f"{stack.arm_endpoint}/_emulator/settings"
    before = requests.get(settings_url, timeout=10).json()
    requests.post(settings_url, json=FAST, timeout=10).raise_for_status()
    settings = Settings.from_env(
        local_stack_values(
            STORAGE_CONNECTION_STRING=stack.connection_string,
            ARM_ENDPOINT=stack.arm_endpoint,
            LOCAL_ARM_TOKEN=stack.arm_token,
            BATCHAI_RESOURCE_GROUP="foundation-rg",
            BATCHAI_WORKSPACE="foundation-ws",
            FILE_SHARE_NAME="foundation-share",
        )
    )
    yield BatchAISdk(settings)
    sdk_clients.reset_clients()
    requests.post(settings_url, json=before, timeout=10)


def wait_for_job(compute: BatchAISdk, experiment: str, job: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = compute.get_job(experiment, job)
        assert found is not None
        if found.execution_state in ("succeeded", "failed"):
            return found.execution_state
        time.sleep(0.3)
    raise AssertionError(f"job {experiment}/{job} did not finish in {timeout}s")


def test_full_cycle(compute: BatchAISdk) -> None:
    settings = compute.settings
    context = SpecContext.from_settings(settings)
    dataset = "foundation-ds"

    workspace = compute.ensure_workspace()
    assert workspace.name == "foundation-ws"
    assert compute.ensure_workspace().name == "foundation-ws"  # idempotent
    share = sdk_clients.share_client(settings)
    for _ in range(2):  # idempotent
        staging.ensure_share(share)
        staging.ensure_directory(share, f"{dataset}/nested/dir")
    share.get_file_client(f"{dataset}/input.txt").upload_file(b"hello from the share\n")

    spec = parse_run_spec(
        {
            "toolkit": "custom",
            "command_line": (
                "cat $AZ_BATCHAI_INPUT_SAMPLE/input.txt; echo done > $AZ_BATCHAI_OUTPUT_MODEL/model.txt"
            ),
            "files": ["input.txt"],
        },
        context,
    )
    name = batchai_requests.cluster_name(spec, dataset)
    first = compute.ensure_cluster(name, batchai_requests.cluster_parameters(spec, settings))
    assert first.created and first.id.endswith(f"/clusters/{name}")
    again = compute.ensure_cluster(name, batchai_requests.cluster_parameters(spec, settings))
    assert not again.created and again.id.lower() == first.id.lower()
    assert name in [c.name for c in compute.list_clusters()]

    # Same name, other VM size: a clear mismatch, not a silent reuse.
    other = parse_run_spec({"vm_size": "STANDARD_NC12", "cluster_name": name}, context)
    with pytest.raises(ComputeError) as mismatch:
        compute.ensure_cluster(name, batchai_requests.cluster_parameters(other, settings))
    assert mismatch.value.code == "ClusterMismatch" and "vm_size" in mismatch.value.message

    experiment = batchai_requests.experiment_name(dataset)
    compute.ensure_experiment(experiment)
    assert compute.ensure_experiment(experiment).name == experiment
    job = batchai_requests.job_name("20261127-000000-0a1b2c3d")
    submitted = compute.create_job(
        experiment, job, batchai_requests.job_parameters(spec, dataset, first.id, settings)
    )
    assert submitted.created
    retried = compute.create_job(
        experiment, job, batchai_requests.job_parameters(spec, dataset, first.id, settings)
    )
    assert not retried.created and retried.id.lower() == submitted.id.lower()

    assert wait_for_job(compute, experiment, job) == "succeeded"
    assert [j.name for j in compute.list_jobs(experiment)] == [job]
    stdouterr = {f.name: f for f in compute.list_output_files(experiment, job, "stdouterr")}
    assert "stdout.txt" in stdouterr and stdouterr["stdout.txt"].download_url
    stdout = requests.get(stdouterr["stdout.txt"].download_url, timeout=10).text
    assert "hello from the share" in stdout
    model = [f.name for f in compute.list_output_files(experiment, job, "MODEL")]
    assert "model.txt" in model

    # Resizing (cleanup's scale-to-zero) keeps the cluster reusable.
    compute.scale_cluster(name, 0)
    assert not compute.ensure_cluster(name, batchai_requests.cluster_parameters(spec, settings)).created

    assert compute.terminate_job(experiment, "no-such-job") is False
    assert compute.delete_job(experiment, job) is True
    # ARM answers a DELETE of a missing resource with 204: accepted, nothing to do.
    assert compute.delete_job(experiment, "no-such-job") in (True, False)
    assert compute.delete_experiment(experiment) is True
    assert compute.delete_cluster(name) is True
    assert compute.get_job(experiment, "no-such-job") is None
    assert compute.get_cluster("no-such-cluster") is None
    assert compute.delete_cluster("no-such-cluster") in (True, False)


def test_errors_carry_the_arm_code(compute: BatchAISdk) -> None:
    compute.ensure_workspace()
    with pytest.raises(ComputeError) as info:
        compute.list_jobs("no-such-experiment")
    assert info.value.not_found and info.value.status == 404 and info.value.code
    assert not info.value.retryable


def test_unreachable_endpoint_is_a_retryable_compute_error() -> None:
    settings = Settings.from_env(local_stack_values(ARM_ENDPOINT="http://127.0.0.1:9"))
    from azure.mgmt.batchai import BatchAI

    # No retries: the point is the translation, not azure-core's backoff.
    client = BatchAI(
        sdk_clients.credential(settings),
        settings.subscription_id,
        base_url=settings.arm_endpoint,
        per_call_policies=[sdk_clients.make_loopback_http_policy()],
        retry_total=0,
    )
    with pytest.raises(ComputeError) as info:
        BatchAISdk(settings, batchai=client).get_cluster("x")
    assert info.value.code == "ServiceUnavailable" and info.value.retryable


def test_ensure_experiment_without_waiting(compute: BatchAISdk) -> None:
    """wait=False only sends the creation (ingest requests the experiment off its critical path)."""
    compute.ensure_workspace()
    experiment = batchai_requests.experiment_name("foundation-nowait")
    assert compute.get_experiment(experiment) is None
    assert compute.ensure_experiment(experiment, wait=False) is None
    deadline = time.monotonic() + 30
    while (found := compute.get_experiment(experiment)) is None or found.provisioning_state != "succeeded":
        assert time.monotonic() < deadline, f"experiment {experiment} did not appear"
        time.sleep(0.1)
    existing = compute.ensure_experiment(experiment, wait=False)
    assert existing is not None and existing.name == experiment
    assert compute.delete_experiment(experiment) is True
