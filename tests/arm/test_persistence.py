"""State survives an emulator restart; jobs running when it stopped (cleanly or killed) are reported
failed with a clear error and their processes are gone."""

from __future__ import annotations

import os
import signal

import azure.mgmt.batchai.models as bai
import pytest
import requests

from tests.arm.conftest import PRIVATE_ARM_TOKEN, PrivateArm, make_clients, wait_for
from tests.arm.quickstart import MOUNT, Names, alive, cluster_parameters, download, list_outputs, wait_job

pytestmark = pytest.mark.e2e


def custom_job(cluster_id: str, command: str) -> bai.JobCreateParameters:
    return bai.JobCreateParameters(
        cluster=bai.ResourceId(id=cluster_id),
        node_count=1,
        std_out_err_path_prefix=f"$AZ_BATCHAI_MOUNT_ROOT/{MOUNT}",
        output_directories=[bai.OutputDirectory(id="OUT", path_prefix=f"$AZ_BATCHAI_MOUNT_ROOT/{MOUNT}")],
        custom_toolkit_settings=bai.CustomToolkitSettings(command_line=command),
    )


LONG = "sleep 300 & echo $! > $AZ_BATCHAI_OUTPUT_OUT/child.pid; wait"


def test_state_survives_restart_and_running_jobs_fail_clearly(private_arm: PrivateArm) -> None:
    # The https://<account>.file.core.windows.net/<share> form maps to <files-root>/<account>/<share>.
    (private_arm.files_root / "devstoreaccount1" / "persist").mkdir(parents=True)
    share_url = "https://devstoreaccount1.file.core.windows.net/persist"
    c = make_clients(private_arm.endpoint, PRIVATE_ARM_TOKEN)
    n = Names(group="persist")
    c.resources.resource_groups.create_or_update(n.group, {"location": "westeurope", "tags": {"k": "v"}})
    c.batchai.workspaces.begin_create(
        n.group, n.workspace, bai.WorkspaceCreateParameters(location="eastus")
    ).result()
    c.batchai.experiments.begin_create(n.group, n.workspace, n.experiment).result()
    cluster = c.batchai.clusters.begin_create(
        n.group, n.workspace, n.cluster, cluster_parameters(share_url)
    ).result()
    c.batchai.jobs.begin_create(
        n.group, n.workspace, n.experiment, "quick", custom_job(cluster.id, "echo hi")
    ).result()
    assert wait_job(c, n, "quick", ("succeeded", "failed")).execution_state == "succeeded"
    old_url = list_outputs(c, n, "quick", "stdouterr")["stdout.txt"].download_url

    def start_long(name: str) -> int:
        c.batchai.jobs.begin_create(
            n.group, n.workspace, n.experiment, name, custom_job(cluster.id, LONG)
        ).result()
        wait_job(c, n, name, ("running",))
        pid_file = wait_for(lambda: list_outputs(c, n, name, "OUT").get("child.pid"), what="child pid")
        return int(download(pid_file.download_url))

    # A clean stop (SIGTERM) stops the job's processes.
    child = start_long("long")
    private_arm.stop()
    assert not alive(child)
    private_arm.start()
    long_job = c.batchai.jobs.get(n.group, n.workspace, n.experiment, "long")
    assert long_job.execution_state == "failed"
    assert [e.code for e in long_job.execution_info.errors] == ["EmulatorRestarted"]
    assert "stopped while this job was running" in long_job.execution_info.errors[0].message
    group = c.resources.resource_groups.get(n.group)
    assert group.location == "westeurope" and group.tags == {"k": "v"}
    quick = c.batchai.jobs.get(n.group, n.workspace, n.experiment, "quick")
    assert quick.execution_state == "succeeded" and quick.execution_info.exit_code == 0
    assert requests.get(old_url, timeout=10).content == b"hi\n"  # links issued before the restart still work
    assert wait_for(
        lambda: c.batchai.clusters.get(n.group, n.workspace, n.cluster).node_state_counts.idle_node_count
    )

    # A crash (SIGKILL) leaves the job's processes behind: the next start stops them.
    child = start_long("crashed")
    os.kill(private_arm.process.pid, signal.SIGKILL)
    private_arm.process.wait()
    private_arm.process = None
    assert alive(child)
    private_arm.start()
    crashed = c.batchai.jobs.get(n.group, n.workspace, n.experiment, "crashed")
    assert [e.code for e in crashed.execution_info.errors] == ["EmulatorRestarted"]
    wait_for(lambda: not alive(child), timeout=10, what="the orphaned job process to be stopped")

    c.resources.resource_groups.begin_delete(n.group).result()
    assert not c.resources.resource_groups.check_existence(n.group)
    assert c.spec.errors == []


def test_inline_secrets_reach_the_job_but_never_the_state_file(private_arm: PrivateArm) -> None:
    """Secret environment variables, mount keys and admin passwords stay in memory."""
    (private_arm.files_root / "devstoreaccount1" / "sealed").mkdir(parents=True)
    share_url = "https://devstoreaccount1.file.core.windows.net/sealed"
    c = make_clients(private_arm.endpoint, PRIVATE_ARM_TOKEN)
    n = Names(group="sealed")
    c.resources.resource_groups.create_or_update(n.group, {"location": "westeurope"})
    c.batchai.workspaces.begin_create(
        n.group, n.workspace, bai.WorkspaceCreateParameters(location="eastus")
    ).result()
    c.batchai.experiments.begin_create(n.group, n.workspace, n.experiment).result()
    parameters = cluster_parameters(share_url)
    parameters.node_setup.mount_volumes.azure_file_shares[0].credentials.account_key = "MOUNT-KEY-4f1d9a"
    parameters.user_account_settings.admin_user_password = "ADMIN-PASSWORD-77c2"
    cluster = c.batchai.clusters.begin_create(n.group, n.workspace, n.cluster, parameters).result()
    job = custom_job(cluster.id, 'echo "token=$API_TOKEN"')
    job.secrets = [bai.EnvironmentVariableWithSecretValue(name="API_TOKEN", value="JOB-SECRET-9e3b")]
    c.batchai.jobs.begin_create(n.group, n.workspace, n.experiment, "secret", job).result()
    assert wait_job(c, n, "secret", ("succeeded", "failed")).execution_state == "succeeded"
    stdout = list_outputs(c, n, "secret", "stdouterr")["stdout.txt"].download_url
    assert download(stdout) == b"token=JOB-SECRET-9e3b\n"  # the job got its secret

    # A second job queued behind a busy node, then a restart: its secret is gone, so it fails clearly.
    c.batchai.jobs.begin_create(
        n.group, n.workspace, n.experiment, "busy", custom_job(cluster.id, "sleep 30")
    ).result()
    wait_job(c, n, "busy", ("running",))
    c.batchai.jobs.begin_create(n.group, n.workspace, n.experiment, "waiting", job).result()
    private_arm.stop()
    state = (private_arm.data_dir / "state.json").read_text()
    for secret in ("MOUNT-KEY-4f1d9a", "ADMIN-PASSWORD-77c2", "JOB-SECRET-9e3b"):
        assert secret not in state, secret
    private_arm.start()
    waiting = c.batchai.jobs.get(n.group, n.workspace, n.experiment, "waiting")
    assert waiting.execution_state == "failed"
    assert [e.code for e in waiting.execution_info.errors] == ["EmulatorRestarted"]
    assert "in memory only" in waiting.execution_info.errors[0].message
    c.resources.resource_groups.begin_delete(n.group).result()
