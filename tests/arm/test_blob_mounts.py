"""Blob container mounts (`azureBlobFileSystems`): a job sees the Azurite container's blobs at its mount
path and what it writes goes back to the container; a mount that cannot be made fails with the reason,
never an empty folder."""

from __future__ import annotations

import uuid

import azure.mgmt.batchai.models as bai
import pytest
from azure.storage.blob import BlobServiceClient

from infra.local.stack import DEV_ACCOUNT
from tests.arm.conftest import Clients, unique, wait_for
from tests.arm.quickstart import MOUNT, Names, cluster_parameters, download, list_outputs, wait_job

pytestmark = pytest.mark.e2e

# Reads the dataset from the cluster's and the job's blob mounts, writes a result next to it, changes
# one blob and deletes another (as a training job writing checkpoints into its container would).
SCRIPT = """
set -e
cat $AZ_BATCHAI_MOUNT_ROOT/cbfs/data/train.txt
cat $AZ_BATCHAI_JOB_MOUNT_ROOT/jbfs/data/train.txt | wc -l
ls $AZ_BATCHAI_JOB_MOUNT_ROOT/jbfs/data
mkdir $AZ_BATCHAI_JOB_MOUNT_ROOT/jbfs/out
echo model > $AZ_BATCHAI_JOB_MOUNT_ROOT/jbfs/out/model.bin
echo changed > $AZ_BATCHAI_JOB_MOUNT_ROOT/jbfs/data/test.txt
rm $AZ_BATCHAI_JOB_MOUNT_ROOT/jbfs/data/stale.txt
"""


# The session stack's key of devstoreaccount1 (random per stack), set by the `blobs` fixture.
STACK_KEY: dict[str, str] = {}


def blob_volume(container: str, path: str, key: str | None = None) -> bai.AzureBlobFileSystemReference:
    return bai.AzureBlobFileSystemReference(
        account_name=DEV_ACCOUNT,
        container_name=container,
        credentials=bai.AzureStorageCredentialsInfo(account_key=key or STACK_KEY["key"]),
        relative_mount_path=path,
    )


@pytest.fixture(scope="module")
def blobs(local_stack):
    local_stack.ensure("azurite")
    STACK_KEY["key"] = local_stack.secrets.account_keys[DEV_ACCOUNT]
    with BlobServiceClient.from_connection_string(local_stack.connection_string) as service:
        yield service


@pytest.fixture(scope="module")
def setup(clients: Clients, arm_stack, file_service, blobs):
    names = Names(group=unique("blobfs"))
    share = file_service.get_share_client(unique("blobfs"))
    share.create_share()
    container = blobs.get_container_client(f"data-{uuid.uuid4().hex[:8]}")
    container.create_container()
    container.upload_blob("data/train.txt", b"1 2 3\n4 5 6\n")
    container.upload_blob("data/test.txt", b"7 8 9\n")
    container.upload_blob("data/stale.txt", b"old\n")
    clients.resources.resource_groups.create_or_update(names.group, {"location": "eastus"})
    clients.batchai.workspaces.begin_create(
        names.group, "ws", bai.WorkspaceCreateParameters(location="eastus")
    ).result()
    clients.batchai.experiments.begin_create(names.group, "ws", names.experiment).result()
    params = cluster_parameters(f"{arm_stack.file_endpoint}/{share.share_name}")
    params.node_setup.mount_volumes.azure_blob_file_systems = [blob_volume(container.container_name, "cbfs")]
    cluster = clients.batchai.clusters.begin_create(names.group, "ws", names.cluster, params).result()
    yield names, cluster, container
    clients.resources.resource_groups.begin_delete(names.group).result()
    share.delete_share()
    container.delete_container()


def job(
    cluster_id: str, command: str, volumes: list[bai.AzureBlobFileSystemReference]
) -> bai.JobCreateParameters:
    return bai.JobCreateParameters(
        cluster=bai.ResourceId(id=cluster_id),
        node_count=1,
        std_out_err_path_prefix=f"$AZ_BATCHAI_MOUNT_ROOT/{MOUNT}",
        mount_volumes=bai.MountVolumes(azure_blob_file_systems=volumes),
        custom_toolkit_settings=bai.CustomToolkitSettings(command_line=command),
    )


def test_jobs_read_the_container_and_write_back(clients: Clients, setup) -> None:
    names, cluster, container = setup
    c = clients.batchai
    c.jobs.begin_create(
        names.group, "ws", names.experiment, "reads",
        job(cluster.id, SCRIPT, [blob_volume(container.container_name, "jbfs")]),
    ).result()  # fmt: skip
    done = wait_job(clients, names, "reads", ("succeeded", "failed"))
    outputs = list_outputs(clients, names, "reads", "stdouterr")
    stdout = download(outputs["stdout.txt"].download_url).decode()
    assert done.execution_state == "succeeded", download(outputs["stderr.txt"].download_url)
    assert stdout.splitlines() == ["1 2 3", "4 5 6", "2", "stale.txt", "test.txt", "train.txt"]
    # The job's writes went back to the container: a new blob, a changed one, a deleted one.
    names_now = sorted(b.name for b in container.list_blobs())
    assert names_now == ["data/test.txt", "data/train.txt", "out/model.bin"]
    assert container.download_blob("out/model.bin").readall() == b"model\n"
    assert container.download_blob("data/test.txt").readall() == b"changed\n"
    # The job's body shows the mount without its key, as the service does.
    volume = c.jobs.get(names.group, "ws", names.experiment, "reads").mount_volumes.azure_blob_file_systems[0]
    assert volume.credentials.account_key is None and volume.container_name == container.container_name


def test_blobs_that_cannot_be_files_fail_the_mount_with_the_reason(clients: Clients, setup, blobs) -> None:
    """`a` and `a/b` are both blobs: no directory tree holds both. The job fails naming it, nothing is
    written outside the mount, and the emulator goes on serving."""
    names, cluster, _ = setup
    clash = blobs.get_container_client(f"clash-{uuid.uuid4().hex[:8]}")
    clash.create_container()
    try:
        clash.upload_blob("a", b"file")
        clash.upload_blob("a/b", b"under a file")
        name = unique("clash")
        clients.batchai.jobs.begin_create(
            names.group,
            "ws",
            names.experiment,
            name,
            job(cluster.id, "true", [blob_volume(clash.container_name, "x")]),
        ).result()
        done = wait_job(clients, names, name, ("succeeded", "failed"))
        error = done.execution_info.errors[0]
        assert done.execution_state == "failed" and error.code == "AzureBlobFileSystemMountFailed"
        assert "cannot be laid out as files" in error.message
    finally:
        clash.delete_container()


@pytest.mark.parametrize(
    ("volume", "reason"),
    [
        # A wrong key: Azurite says AuthorizationFailure where Azure says AuthenticationFailed.
        (lambda name: blob_volume(name, "jbfs", key="d3Jvbmcga2V5"), "AuthorizationFailure"),
        (lambda name: blob_volume("no-such-container", "jbfs"), "ContainerNotFound"),
    ],
)
def test_a_mount_that_cannot_be_made_fails_the_job(clients: Clients, setup, volume, reason) -> None:
    names, cluster, container = setup
    name = unique("badmount")
    clients.batchai.jobs.begin_create(
        names.group,
        "ws",
        names.experiment,
        name,
        job(cluster.id, "touch ran", [volume(container.container_name)]),
    ).result()
    done = wait_job(clients, names, name, ("succeeded", "failed"))
    assert done.execution_state == "failed"
    error = done.execution_info.errors[0]
    assert error.code == "AzureBlobFileSystemMountFailed" and reason in error.message, error.message
    assert {d.name for d in error.details} >= {"accountName", "containerName", "relativeMountPath"}


def test_a_cluster_mount_that_cannot_be_made_leaves_the_node_unusable(
    clients: Clients, setup, arm_stack
) -> None:
    names, _, _ = setup
    params = cluster_parameters(f"{arm_stack.file_endpoint}/nosuchshare-unused")
    params.node_setup.mount_volumes.azure_file_shares = []
    params.node_setup.mount_volumes.azure_blob_file_systems = [blob_volume("no-such-container", "cbfs")]
    cluster = clients.batchai.clusters.begin_create(names.group, "ws", "badblob", params).result()
    cluster = wait_for(
        lambda: (c := clients.batchai.clusters.get(names.group, "ws", "badblob")).errors and c,
        what="the cluster's mount error",
    )
    assert cluster.node_state_counts.unusable_node_count == 1
    assert cluster.errors[0].code == "AzureBlobFileSystemMountFailed"
    assert "ContainerNotFound" in cluster.errors[0].message
    clients.batchai.clusters.begin_delete(names.group, "ws", "badblob").result()
