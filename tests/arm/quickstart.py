"""The Batch AI quickstart ("Run a CNTK training job using the Azure Python SDK") as a reusable walk
through azure-mgmt-resource and azure-mgmt-batchai, against whatever ARM endpoint the clients use."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlparse

import azure.mgmt.batchai.models as bai
import requests
from azure.storage.fileshare import ShareClient

from tests.arm.conftest import Clients, wait_for

IMAGE = "microsoft/cntk:2.1-gpu-python3.5-cuda8.0-cudnn6.0"
MOUNT = "azurefileshare"
SAMPLE_DIR = "mnistcntksample"

# A small stand-in for ConvNet_MNIST.py: reads its input directory (argv[1]), writes a model file into
# its output directory (argv[2]), and prints what it did.
TRAIN_SCRIPT = b"""\
import os, sys
data_dir, model_dir = sys.argv[1], sys.argv[2]
assert data_dir == os.environ["AZ_BATCHAI_INPUT_SAMPLE"], (data_dir, os.environ["AZ_BATCHAI_INPUT_SAMPLE"])
train = open(os.path.join(data_dir, "Train-28x28_cntk_text.txt")).read().splitlines()
test = open(os.path.join(data_dir, "Test-28x28_cntk_text.txt")).read().splitlines()
print(f"training on {len(train)} samples, testing on {len(test)}")
print("stdouterr dir", os.environ["AZ_BATCHAI_STDOUTERR_DIR"])
with open(os.path.join(model_dir, "ConvNet_MNIST_0.dnn"), "w") as model:
    model.write(f"model trained on {len(train)} samples\\n")
print("error to stderr", file=sys.stderr)
"""
TRAIN_DATA = b"".join(b"|labels 0 1 |features 0 0 0\n" for _ in range(5))
TEST_DATA = b"|labels 1 0 |features 1 1 1\n|labels 0 1 |features 0 1 0\n"

SAMPLE_FILES = {
    f"{SAMPLE_DIR}/ConvNet_MNIST.py": TRAIN_SCRIPT,
    f"{SAMPLE_DIR}/Train-28x28_cntk_text.txt": TRAIN_DATA,
    f"{SAMPLE_DIR}/Test-28x28_cntk_text.txt": TEST_DATA,
}


@dataclass
class Names:
    group: str
    workspace: str = "ws"
    cluster: str = "nc6"
    experiment: str = "quickstart"
    job: str = "cntk-mnist"


def cluster_parameters(share_url: str, nodes: int = 1) -> bai.ClusterCreateParameters:
    return bai.ClusterCreateParameters(
        vm_size="STANDARD_NC6",
        scale_settings=bai.ScaleSettings(manual=bai.ManualScaleSettings(target_node_count=nodes)),
        user_account_settings=bai.UserAccountSettings(
            admin_user_name="demoUser", admin_user_password="Dem0Pa55"
        ),
        node_setup=bai.NodeSetup(
            mount_volumes=bai.MountVolumes(
                azure_file_shares=[
                    bai.AzureFileShareReference(
                        account_name="devstoreaccount1",
                        azure_file_url=share_url,
                        credentials=bai.AzureStorageCredentialsInfo(account_key="not-checked"),
                        relative_mount_path=MOUNT,
                    )
                ]
            )
        ),
    )


def cntk_job(cluster_id: str) -> bai.JobCreateParameters:
    return bai.JobCreateParameters(
        cluster=bai.ResourceId(id=cluster_id),
        node_count=1,
        container_settings=bai.ContainerSettings(image_source_registry=bai.ImageSourceRegistry(image=IMAGE)),
        input_directories=[
            bai.InputDirectory(id="SAMPLE", path=f"$AZ_BATCHAI_MOUNT_ROOT/{MOUNT}/{SAMPLE_DIR}")
        ],
        output_directories=[
            bai.OutputDirectory(
                id="MODEL", path_prefix=f"$AZ_BATCHAI_MOUNT_ROOT/{MOUNT}", path_suffix="Models"
            )
        ],
        std_out_err_path_prefix=f"$AZ_BATCHAI_MOUNT_ROOT/{MOUNT}",
        cntk_settings=bai.CNTKsettings(
            python_script_file_path="$AZ_BATCHAI_INPUT_SAMPLE/ConvNet_MNIST.py",
            command_line_args="$AZ_BATCHAI_INPUT_SAMPLE $AZ_BATCHAI_OUTPUT_MODEL",
        ),
    )


def wait_job(c: Clients, n: Names, job: str, states: tuple[str, ...], timeout: float = 30) -> bai.Job:
    return wait_for(
        lambda: (
            (j := c.batchai.jobs.get(n.group, n.workspace, n.experiment, job)).execution_state in states and j
        ),
        timeout,
        what=f"job {job} in {states}",
    )


def list_outputs(c: Clients, n: Names, job: str, directory_id: str) -> dict[str, bai.File]:
    options = bai.JobsListOutputFilesOptions(outputdirectoryid=directory_id, linkexpiryinminutes=5)
    files = c.batchai.jobs.list_output_files(n.group, n.workspace, n.experiment, job, options)
    return {f.name: f for f in files}


def download(url: str) -> bytes:
    response = requests.get(url, timeout=10)
    response.raise_for_status()
    return response.content


def walk(c: Clients, share: ShareClient, share_url: str, n: Names) -> dict[str, object]:
    """Resource group -> workspace -> cluster mounting the share -> experiment -> CNTK job -> outputs
    -> long job terminated -> everything deleted. Returns what the caller may want to assert more on."""
    seen: dict[str, object] = {}
    group = c.resources.resource_groups.create_or_update(n.group, {"location": "eastus"})
    assert group.name == n.group and group.properties.provisioning_state == "Succeeded"
    assert c.resources.resource_groups.check_existence(n.group)

    workspace = c.batchai.workspaces.begin_create(
        n.group, n.workspace, bai.WorkspaceCreateParameters(location="eastus")
    ).result()
    assert workspace.provisioning_state == "succeeded"

    cluster = c.batchai.clusters.begin_create(
        n.group, n.workspace, n.cluster, cluster_parameters(share_url)
    ).result()
    assert cluster.provisioning_state == "succeeded"
    assert cluster.vm_size == "STANDARD_NC6"
    seen["first_allocation_state"] = cluster.allocation_state
    cluster = wait_for(
        lambda: (
            (cl := c.batchai.clusters.get(n.group, n.workspace, n.cluster)).allocation_state == "steady"
            and cl.node_state_counts.idle_node_count == 1
            and cl
        ),
        what="cluster steady with one idle node",
    )
    assert cluster.current_node_count == 1 and not cluster.errors

    c.batchai.experiments.begin_create(n.group, n.workspace, n.experiment).result()
    job = c.batchai.jobs.begin_create(
        n.group, n.workspace, n.experiment, n.job, cntk_job(cluster.id)
    ).result()
    assert job.tool_type == "cntk"
    assert job.container_settings.image_source_registry.image == IMAGE
    job = wait_job(c, n, n.job, ("succeeded", "failed"))
    stdouterr = list_outputs(c, n, n.job, "stdouterr")
    stdout = download(stdouterr["stdout.txt"].download_url).decode()
    assert job.execution_state == "succeeded", (job.execution_info, stdout, stdouterr)
    assert job.execution_info.exit_code == 0 and job.execution_info.end_time >= job.execution_info.start_time
    assert "training on 5 samples, testing on 2" in stdout
    assert b"error to stderr" in download(stdouterr["stderr.txt"].download_url)
    assert stdouterr["stdout.txt"].content_length == len(stdout.encode())
    model_files = list_outputs(c, n, n.job, "MODEL")
    assert download(model_files["ConvNet_MNIST_0.dnn"].download_url) == b"model trained on 5 samples\n"
    # As in Microsoft's ListOutputFiles example: read-only SAS URLs of the mounted share's files (the
    # Files emulator serves them, ranges included); no path of this machine in them.
    model_url = model_files["ConvNet_MNIST_0.dnn"].download_url
    expected_prefix = f"{share.url}/{job.job_output_directory_path_segment}/outputs/Models/"
    assert model_url.startswith(expected_prefix), (model_url, expected_prefix)
    assert {"sv", "sr", "sig", "se", "sp"} <= set(parse_qs(urlparse(model_url).query))
    assert "_emulator" not in model_url and "/shares/" not in unquote(model_url)
    ranged = requests.get(model_url, headers={"x-ms-range": "bytes=6-12"}, timeout=10)
    assert (ranged.status_code, ranged.content) == (206, b"trained")
    # The outputs landed on the share, where the service put them: <prefix>/<segment>/outputs/<suffix>.
    segment = job.job_output_directory_path_segment
    on_share = (
        share.get_file_client(f"{segment}/outputs/Models/ConvNet_MNIST_0.dnn").download_file().readall()
    )
    assert on_share == b"model trained on 5 samples\n"
    assert (
        share.get_file_client(f"{segment}/stdouterr/stdout.txt").download_file().readall() == stdout.encode()
    )
    seen["job"] = job

    # A long job with a child process: terminate stops the whole tree.
    long_job = cntk_job(cluster.id)
    long_job.cntk_settings = None
    long_job.custom_toolkit_settings = bai.CustomToolkitSettings(
        command_line="sleep 300 & echo $! > $AZ_BATCHAI_OUTPUT_MODEL/child.pid; echo started; wait"
    )
    c.batchai.jobs.begin_create(n.group, n.workspace, n.experiment, "long", long_job).result()
    running = wait_job(c, n, "long", ("running",))
    assert running.execution_info.start_time is not None
    counts = wait_for(
        lambda: (
            (
                cnt := c.batchai.clusters.get(n.group, n.workspace, n.cluster).node_state_counts
            ).running_node_count
            == 1
            and cnt
        ),
        what="node running the long job",
    )
    assert counts.idle_node_count == 0
    pid_file = wait_for(lambda: list_outputs(c, n, "long", "MODEL").get("child.pid"), what="child pid file")
    child_pid = int(download(pid_file.download_url))
    c.batchai.jobs.begin_terminate(n.group, n.workspace, n.experiment, "long").result()
    terminated = wait_job(c, n, "long", ("failed", "succeeded"))
    assert terminated.execution_state == "failed"
    assert [e.code for e in terminated.execution_info.errors] == ["JobTerminated"]
    wait_for(lambda: not alive(child_pid), timeout=10, what="the job's child process to stop")
    idle = wait_for(
        lambda: (
            (cnt := c.batchai.clusters.get(n.group, n.workspace, n.cluster).node_state_counts).idle_node_count
            == 1
            and cnt
        ),
        what="node idle again",
    )
    assert idle.running_node_count == 0

    # Paging: two jobs, one per page.
    one_per_page = bai.JobsListByExperimentOptions(max_results=1)
    names = [
        j.name for j in c.batchai.jobs.list_by_experiment(n.group, n.workspace, n.experiment, one_per_page)
    ]
    assert sorted(names) == sorted([n.job, "long"])

    c.batchai.jobs.begin_delete(n.group, n.workspace, n.experiment, n.job).result()
    c.batchai.clusters.begin_delete(n.group, n.workspace, n.cluster).result()
    c.batchai.experiments.begin_delete(n.group, n.workspace, n.experiment).result()
    c.batchai.workspaces.begin_delete(n.group, n.workspace).result()
    c.resources.resource_groups.begin_delete(n.group).result()
    assert not c.resources.resource_groups.check_existence(n.group)
    return seen


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is as good as gone
        return stat.read().split(")")[-1].split()[0] != "Z"
