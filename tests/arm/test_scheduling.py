"""How jobs run: the AZ_BATCHAI_* environment and $VAR expansion, several processes with ranks, exit
codes, maxWallClockTime, gang scheduling on free nodes, manual resize and auto-scale."""

from __future__ import annotations

import re

import azure.mgmt.batchai.models as bai
import pytest
import requests

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
    yield names, f"{arm_stack.file_endpoint}/{share.share_name}", share
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
    names, share_url, _ = env
    cluster_id = make_cluster(
        clients,
        names,
        "one",
        share_url,
        bai.ScaleSettings(manual=bai.ManualScaleSettings(target_node_count=1)),
    )
    script = "env | grep -E '^(AZ_BATCHAI_|OMPI_|GREETING|TOKEN)' > $AZ_BATCHAI_OUTPUT_OUT/env-$PMI_RANK"
    greeting = bai.EnvironmentVariable(name="GREETING", value="data in $AZ_BATCHAI_INPUT_DATA")
    clients.batchai.jobs.begin_create(
        names.group,
        "ws",
        names.experiment,
        "mpi",
        job(
            cluster_id,
            custom_mpi_settings=bai.CustomMpiSettings(command_line=script, process_count=3),
            environment_variables=[greeting],
            secrets=[bai.EnvironmentVariableWithSecretValue(name="TOKEN", value="s3cret")],
        ),
    ).result()
    done = wait_job(clients, names, "mpi", ("succeeded", "failed"))
    outputs = list_outputs(clients, names, "mpi", "OUT")
    assert done.execution_state == "succeeded", download(
        list_outputs(clients, names, "mpi", "stdouterr")["stderr.txt"].download_url
    )
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
    for key in (
        "AZ_BATCHAI_JOB_MOUNT_ROOT",
        "AZ_BATCHAI_JOB_TEMP",
        "AZ_BATCHAI_SHARED_JOB_TEMP",
        "AZ_BATCHAI_MPI_HOST_FILE",
        "AZ_BATCHAI_JOB_TEMP_DIR",
    ):
        assert first[key].startswith("/"), key

    # PyTorch settings: a python script with rank variables, through the configured interpreter.
    clients.batchai.jobs.begin_create(
        names.group,
        "ws",
        names.experiment,
        "torch",
        job(
            cluster_id,
            py_torch_settings=bai.PyTorchSettings(
                python_script_file_path="$AZ_BATCHAI_INPUT_DATA/../train.py",
                command_line_args="--epochs 1",
                process_count=2,
            ),
        ),
    ).result()
    failed = wait_job(clients, names, "torch", ("succeeded", "failed"))
    assert failed.execution_state == "failed"  # no train.py on the share: python exits 2
    assert failed.execution_info.exit_code == 2
    assert [e.code for e in failed.execution_info.errors] == ["JobFailed"]
    named = re.search(r"\brank (\d)\b", failed.execution_info.errors[0].message)
    assert named, failed.execution_info.errors[0].message  # the process that failed first, named
    # Batch AI's PyTorch toolkit writes each process's output to its own stdout-<rank>/stderr-<rank>.
    files = list_outputs(clients, names, "torch", "stdouterr")
    assert {"stdout-0.txt", "stderr-0.txt", "stdout-1.txt", "stderr-1.txt"} <= set(files)
    assert "stdout.txt" not in files
    # The rank that failed first said why (the other may be stopped before it could).
    assert b"train.py" in download(files[f"stderr-{named.group(1)}.txt"].download_url)

    # maxWallClockTime is enforced.
    clients.batchai.jobs.begin_create(
        names.group,
        "ws",
        names.experiment,
        "slow",
        job(
            cluster_id,
            custom_toolkit_settings=bai.CustomToolkitSettings(command_line="sleep 60"),
            constraints=bai.JobBasePropertiesConstraints(max_wall_clock_time="PT1S"),
        ),
    ).result()
    slow = wait_job(clients, names, "slow", ("succeeded", "failed"), timeout=15)
    assert [e.code for e in slow.execution_info.errors] == ["JobMaxWallClockTimeExceeded"]
    assert clients.spec.errors == []


def test_gang_scheduling_resize_and_autoscale(clients: Clients, env) -> None:
    names, share_url, _ = env
    cluster_id = make_cluster(
        clients,
        names,
        "small",
        share_url,
        bai.ScaleSettings(manual=bai.ManualScaleSettings(target_node_count=1)),
    )
    wait_for(lambda: counts(clients, names, "small").idle_node_count == 1, what="one idle node")
    clients.batchai.jobs.begin_create(
        names.group,
        "ws",
        names.experiment,
        "wide",
        job(
            cluster_id,
            node_count=2,
            custom_toolkit_settings=bai.CustomToolkitSettings(command_line="true"),
        ),
    ).result()
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
    clients.batchai.jobs.begin_create(
        names.group,
        "ws",
        names.experiment,
        "grow",
        job(
            auto_id,
            custom_toolkit_settings=bai.CustomToolkitSettings(command_line="sleep 1"),
        ),
    ).result()
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


TF_SCRIPT = b"""\
import json, os, sys, time
task = json.loads(os.environ["TF_CONFIG"])["task"]
if task["type"] == "ps":
    time.sleep(300)  # parameter servers run until the workers are done
name = f"{task['type']}-{task['index']}-{os.environ['AZ_BATCHAI_TASK_INDEX']}-{' '.join(sys.argv[1:])}"
with open(os.path.join(os.environ["AZ_BATCHAI_OUTPUT_OUT"], name), "w") as out:
    out.write(os.environ["AZ_BATCHAI_WORKER_HOSTS"])
"""


def test_preparation_job_mounts_tensorflow_requeue_and_node_failures(
    clients: Clients, env, arm_stack
) -> None:
    names, share_url, share = env
    share.get_file_client("input/tf.py").upload_file(TF_SCRIPT)
    cluster_id = make_cluster(
        clients,
        names,
        "prep",
        share_url,
        bai.ScaleSettings(manual=bai.ManualScaleSettings(target_node_count=1)),
    )

    # Job preparation runs first; job-level mount volumes appear under $AZ_BATCHAI_JOB_MOUNT_ROOT.
    job_mount = bai.MountVolumes(
        azure_file_shares=[
            bai.AzureFileShareReference(
                account_name="devstoreaccount1",
                azure_file_url=share_url,
                credentials=bai.AzureStorageCredentialsInfo(account_key="k"),
                relative_mount_path="jobshare",
            )
        ]
    )
    clients.batchai.jobs.begin_create(
        names.group,
        "ws",
        names.experiment,
        "prepared",
        job(
            cluster_id,
            job_preparation=bai.JobPreparation(command_line="echo prepared > $AZ_BATCHAI_JOB_TEMP/prep.txt"),
            mount_volumes=job_mount,
            environment_variables=[
                bai.EnvironmentVariable(
                    name="JOB_DATA", value="${AZ_BATCHAI_JOB_MOUNT_ROOT}/jobshare/input/data.txt"
                )
            ],
            custom_toolkit_settings=bai.CustomToolkitSettings(
                command_line="cat $AZ_BATCHAI_JOB_TEMP/prep.txt $JOB_DATA"
            ),
        ),
    ).result()
    done = wait_job(clients, names, "prepared", ("succeeded", "failed"))
    files = list_outputs(clients, names, "prepared", "stdouterr")
    assert done.execution_state == "succeeded", download(files["stderr.txt"].download_url)
    assert download(files["stdout.txt"].download_url) == b"prepared\n42\n"
    assert {"stdout-job_prep.txt", "stderr-job_prep.txt"} <= set(files)

    # Distributed TensorFlow: one parameter server and two workers with TF_CONFIG.
    clients.batchai.jobs.begin_create(
        names.group,
        "ws",
        names.experiment,
        "tf",
        job(
            cluster_id,
            tensor_flow_settings=bai.TensorFlowSettings(
                python_script_file_path="$AZ_BATCHAI_INPUT_DATA/tf.py",
                master_command_line_args="master",
                worker_command_line_args="worker",
                parameter_server_command_line_args="ps",
                worker_count=2,
                parameter_server_count=1,
            ),
        ),
    ).result()
    tf = wait_job(clients, names, "tf", ("succeeded", "failed"), timeout=20)
    assert tf.execution_state == "succeeded" and tf.tool_type == "tensorflow"
    assert sorted(list_outputs(clients, names, "tf", "OUT")) == ["master-0-0-master", "worker-1-1-worker"]

    # Shrinking a manual cluster with nodeDeallocationOption requeue puts the running job back in the queue.
    marker = "$AZ_BATCHAI_OUTPUT_OUT/ran"
    command = f"if [ -e {marker} ]; then echo again; else touch {marker}; sleep 60; fi"
    clients.batchai.jobs.begin_create(
        names.group,
        "ws",
        names.experiment,
        "requeued",
        job(cluster_id, custom_toolkit_settings=bai.CustomToolkitSettings(command_line=command)),
    ).result()
    wait_job(clients, names, "requeued", ("running",))
    wait_for(lambda: "ran" in list_outputs(clients, names, "requeued", "OUT"), what="first run to start")
    to = {
        n: bai.ClusterUpdateParameters(
            scale_settings=bai.ScaleSettings(manual=bai.ManualScaleSettings(target_node_count=n))
        )
        for n in (0, 1)
    }
    clients.batchai.clusters.update(names.group, "ws", "prep", to[0])
    assert wait_job(clients, names, "requeued", ("queued",)).execution_state == "queued"
    wait_for(
        lambda: clients.batchai.clusters.get(names.group, "ws", "prep").current_node_count == 0, what="shrink"
    )
    clients.batchai.clusters.update(names.group, "ws", "prep", to[1])
    again = wait_job(clients, names, "requeued", ("succeeded", "failed"))
    assert again.execution_state == "succeeded"
    assert (
        download(list_outputs(clients, names, "requeued", "stdouterr")["stdout.txt"].download_url)
        == b"again\n"
    )

    # Injected node failures leave nodes unusable, with the error on the cluster.
    settings = f"{arm_stack.arm_endpoint}/_emulator/settings"
    requests.post(settings, json={"node_failure_rate": 1}, timeout=10).raise_for_status()
    try:
        make_cluster(
            clients,
            names,
            "broken",
            share_url,
            bai.ScaleSettings(manual=bai.ManualScaleSettings(target_node_count=2)),
        )
        broken = wait_for(
            lambda: (
                (c := clients.batchai.clusters.get(names.group, "ws", "broken")).allocation_state == "steady"
                and c
            ),
            what="allocation with failing nodes",
        )
    finally:
        requests.post(settings, json={"node_failure_rate": 0}, timeout=10).raise_for_status()
    assert broken.node_state_counts.unusable_node_count == 2
    assert {e.code for e in broken.errors} == {"NodeSetupFailed"}
    assert clients.spec.errors == []
