"""How jobs run: the AZ_BATCHAI_* environment and $VAR expansion, several processes with ranks, exit
codes, maxWallClockTime, gang scheduling on free nodes, manual resize and auto-scale."""

from __future__ import annotations

import azure.mgmt.batchai.models as bai
import pytest

from tests.arm.conftest import Clients, unique, wait_for
from tests.arm.quickstart import MOUNT, Names, cluster_parameters, download, list_outputs, wait_job

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def env(clients: Clients, arm_stack, file_service):
    """A group with a workspace, an experiment and a share with an `input/` directory."""
    names = Names(group=unique("sched"))
    share = file_service.get_share_client(unique("sched"))
    share.create_share()
    share.get_directory_client("input").create_directory()
    share.get_file_client("input/data.txt").upload_file(b"42\n")
    clients.resources.resource_groups.create_or_update(names.group, {"location": "eastus"})
    clients.batchai.workspaces.begin_create(
        names.group, "ws", bai.WorkspaceCreateParameters(location="eastus")
    ).result()
    clients.batchai.experiments.begin_create(names.group, "ws", names.experiment).result()
    yield names, f"{arm_stack.file_endpoint}/{share.share_name}"
    clients.resources.resource_groups.begin_delete(names.group).result()
    share.delete_share()


def make_cluster(c: Clients, names: Names, name: str, share_url: str, scale: bai.ScaleSettings) -> str:
    params = cluster_parameters(share_url)
    params.scale_settings = scale
    return c.batchai.clusters.begin_create(names.group, "ws", name, params).result().id


def job(cluster_id: str, **settings) -> bai.JobCreateParameters:
    return bai.JobCreateParameters(
        cluster=bai.ResourceId(id=cluster_id),
        node_count=settings.pop("node_count", 1),
        std_out_err_path_prefix=f"$AZ_BATCHAI_MOUNT_ROOT/{MOUNT}",
        input_directories=[bai.InputDirectory(id="DATA", path=f"$AZ_BATCHAI_MOUNT_ROOT/{MOUNT}/input")],
        output_directories=[bai.OutputDirectory(id="OUT", path_prefix=f"$AZ_BATCHAI_MOUNT_ROOT/{MOUNT}")],
        **settings,
    )


def counts(c: Clients, names: Names, cluster: str) -> bai.NodeStateCounts:
    return c.batchai.clusters.get(names.group, "ws", cluster).node_state_counts


def test_environment_ranks_and_exit_codes(clients: Clients, env) -> None:
    names, share_url = env
    cluster_id = make_cluster(clients, names, "one", share_url, bai.ScaleSettings(
        manual=bai.ManualScaleSettings(target_node_count=1)))  # fmt: skip
    script = "env | grep -E '^(AZ_BATCHAI_|OMPI_|GREETING|TOKEN)' > $AZ_BATCHAI_OUTPUT_OUT/env-$PMI_RANK"
    greeting = bai.EnvironmentVariable(name="GREETING", value="data in $AZ_BATCHAI_INPUT_DATA")
    clients.batchai.jobs.begin_create(names.group, "ws", names.experiment, "mpi", job(
        cluster_id,
        custom_mpi_settings=bai.CustomMpiSettings(command_line=script, process_count=3),
        environment_variables=[greeting],
        secrets=[bai.EnvironmentVariableWithSecretValue(name="TOKEN", value="s3cret")],
    )).result()  # fmt: skip
    done = wait_job(clients, names, "mpi", ("succeeded", "failed"))
    outputs = list_outputs(clients, names, "mpi", "OUT")
    assert done.execution_state == "succeeded", download(list_outputs(clients, names, "mpi", "stdouterr")
                                                         ["stderr.txt"].download_url)  # fmt: skip
    assert done.tool_type == "custommpi"
    assert all(s.value is None for s in done.secrets)  # secrets are never reported back
    envs = [
        dict(
            line.split("=", 1) for line in download(outputs[f"env-{rank}"].download_url).decode().splitlines()
        )
        for rank in range(3)
    ]
    assert [e["OMPI_COMM_WORLD_SIZE"] for e in envs] == ["3", "3", "3"]
    assert [e["AZ_BATCHAI_TASK_INDEX"] for e in envs] == ["0", "1", "2"]
    first = envs[0]
    assert first["AZ_BATCHAI_INPUT_DATA"] == f"{first['AZ_BATCHAI_MOUNT_ROOT']}/{MOUNT}/input"
    assert first["GREETING"] == f"data in {first['AZ_BATCHAI_INPUT_DATA']}" and first["TOKEN"] == "s3cret"
    segment = done.job_output_directory_path_segment
    assert first["AZ_BATCHAI_OUTPUT_OUT"] == f"{first['AZ_BATCHAI_MOUNT_ROOT']}/{MOUNT}/{segment}/outputs"
    assert (
        first["AZ_BATCHAI_STDOUTERR_DIR"] == f"{first['AZ_BATCHAI_MOUNT_ROOT']}/{MOUNT}/{segment}/stdouterr"
    )
    for key in ("AZ_BATCHAI_JOB_MOUNT_ROOT", "AZ_BATCHAI_JOB_TEMP", "AZ_BATCHAI_SHARED_JOB_TEMP",
                "AZ_BATCHAI_MPI_HOST_FILE", "AZ_BATCHAI_JOB_TEMP_DIR"):  # fmt: skip
        assert first[key].startswith("/"), key

    # PyTorch settings: a python script with rank variables, through the configured interpreter.
    clients.batchai.jobs.begin_create(names.group, "ws", names.experiment, "torch", job(
        cluster_id,
        py_torch_settings=bai.PyTorchSettings(
            python_script_file_path="$AZ_BATCHAI_INPUT_DATA/../train.py", command_line_args="--epochs 1",
            process_count=2),
    )).result()  # fmt: skip
    failed = wait_job(clients, names, "torch", ("succeeded", "failed"))
    assert failed.execution_state == "failed"  # no train.py on the share: python exits 2
    assert failed.execution_info.exit_code == 2
    assert [e.code for e in failed.execution_info.errors] == ["JobFailed"]
    stderr = download(list_outputs(clients, names, "torch", "stdouterr")["stderr.txt"].download_url)
    assert b"train.py" in stderr

    # maxWallClockTime is enforced.
    clients.batchai.jobs.begin_create(names.group, "ws", names.experiment, "slow", job(
        cluster_id, custom_toolkit_settings=bai.CustomToolkitSettings(command_line="sleep 60"),
        constraints=bai.JobBasePropertiesConstraints(max_wall_clock_time="PT1S"),
    )).result()  # fmt: skip
    slow = wait_job(clients, names, "slow", ("succeeded", "failed"), timeout=15)
    assert [e.code for e in slow.execution_info.errors] == ["JobMaxWallClockTimeExceeded"]
    assert clients.spec.errors == []


def test_gang_scheduling_resize_and_autoscale(clients: Clients, env) -> None:
    names, share_url = env
    cluster_id = make_cluster(clients, names, "small", share_url, bai.ScaleSettings(
        manual=bai.ManualScaleSettings(target_node_count=1)))  # fmt: skip
    wait_for(lambda: counts(clients, names, "small").idle_node_count == 1, what="one idle node")
    clients.batchai.jobs.begin_create(names.group, "ws", names.experiment, "wide", job(
        cluster_id, node_count=2, custom_toolkit_settings=bai.CustomToolkitSettings(command_line="true"),
    )).result()  # fmt: skip
    assert clients.batchai.jobs.get(names.group, "ws", names.experiment, "wide").execution_state == "queued"
    resize = bai.ScaleSettings(manual=bai.ManualScaleSettings(target_node_count=2))
    update = bai.ClusterUpdateParameters(scale_settings=resize)
    cluster = clients.batchai.clusters.update(names.group, "ws", "small", update)
    assert cluster.scale_settings.manual.target_node_count == 2
    assert wait_job(clients, names, "wide", ("succeeded", "failed")).execution_state == "succeeded"
    wait_for(lambda: counts(clients, names, "small").idle_node_count == 2, what="both nodes idle")

    auto = bai.ScaleSettings(auto_scale=bai.AutoScaleSettings(minimum_node_count=0, maximum_node_count=2))
    auto_id = make_cluster(clients, names, "auto", share_url, auto)
    assert clients.batchai.clusters.get(names.group, "ws", "auto").current_node_count == 0
    clients.batchai.jobs.begin_create(names.group, "ws", names.experiment, "grow", job(
        auto_id, custom_toolkit_settings=bai.CustomToolkitSettings(command_line="sleep 1"),
    )).result()  # fmt: skip
    grown = wait_for(
        lambda: (c := clients.batchai.clusters.get(names.group, "ws", "auto")).current_node_count == 1 and c,
        what="auto-scale to grow",
    )
    assert grown.allocation_state == "resizing"
    assert wait_job(clients, names, "grow", ("succeeded", "failed")).execution_state == "succeeded"
    shrunk = wait_for(
        lambda: (
            (c := clients.batchai.clusters.get(names.group, "ws", "auto")).current_node_count == 0
            and c.allocation_state == "steady"
            and c
        ),
        what="auto-scale to shrink to the minimum",
    )
    assert shrunk.node_state_counts.leaving_node_count == 0
    logins = list(clients.batchai.clusters.list_remote_login_information(names.group, "ws", "small"))
    assert len(logins) == 2 and {login.ip_address for login in logins} == {"127.0.0.1"}
    assert clients.spec.errors == []
