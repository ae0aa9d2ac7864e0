"""State survives an emulator restart; jobs running when it stopped (cleanly or killed) are reported
failed with a clear error and their processes are gone."""

from __future__ import annotations

import os
import signal

import azure.mgmt.batchai.models as bai
import pytest
import requests

from tests.arm.conftest import PrivateArm, make_clients, wait_for
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
    c = make_clients(private_arm.endpoint)
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
