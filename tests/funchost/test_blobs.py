"""Blob triggers against real Azurite: receipts across a restart, changed blobs, poison messages,
bindings and the parallelism bound."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import time
import uuid
from collections.abc import Callable

import pytest
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient

from .conftest import HostProcess, only

pytestmark = pytest.mark.e2e


@pytest.fixture
def storage(local_stack) -> str:
    return local_stack.ensure("azurite").connection_string


def names(suffix: str = "") -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {
        "TEST_BLOB_CONTAINER": f"data-{tag}",
        "TEST_FAIL_CONTAINER": f"fail-{tag}",
        "TEST_CLIENT_CONTAINER": f"client-{tag}",
        "AzureFunctionsWebHost__hostid": f"test-{tag}",
    }


def test_blob_runs_once_across_a_restart_and_again_when_changed(
    storage: str, host_factory: Callable[..., HostProcess]
) -> None:
    settings = {**names(), **only("ingest"), "AzureWebJobsStorage": storage}
    container = settings["TEST_BLOB_CONTAINER"]
    service = BlobServiceClient.from_connection_string(storage)
    service.create_container(container)
    host = host_factory(settings).start()
    data = bytes(range(256)) * 4096  # 1 MiB: the handler reads it in four 256 KiB reads
    blob = service.get_blob_client(container, "mnist/train.txt")
    blob.upload_blob(data, metadata={"origin": "test"})
    service.get_blob_client(container, "no-dataset-folder.txt").upload_blob(
        b"does not match {dataset}/{file}"
    )
    etag = blob.get_blob_properties().etag

    first = host.wait_for(lambda: host.records("ingest"), what="the first invocation")
    assert first[0]["name"] == f"{container}/mnist/train.txt"
    assert first[0]["length"] == len(data)
    assert first[0]["sha256"] == hashlib.sha256(data).hexdigest()
    assert first[0]["reads"] == 4
    assert first[0]["etag"] == etag
    assert first[0]["metadata"] == {"origin": "test"}
    assert first[0]["uri"].endswith(f"/{container}/mnist/train.txt")
    receipt = service.get_blob_client(
        "azure-webjobs-hosts",
        f"blobreceipts/{settings['AzureFunctionsWebHost__hostid']}/Host.Functions.ingest/{etag}/{container}/mnist/train.txt",
    )
    host.wait_for(lambda: "Incomplete" not in receipt.get_blob_properties().metadata, what="receipt")
    assert host.stop() == 0

    restarted = host_factory(settings).start()
    time.sleep(1.5)  # several scans
    assert len(restarted.records("ingest")) == 1, "a blob with a receipt must not run again"

    blob.upload_blob(b"changed", overwrite=True)
    changed = restarted.wait_for(
        lambda: len(restarted.records("ingest")) == 2 and restarted.records("ingest")
    )
    assert changed[1]["length"] == len(b"changed")
    assert changed[1]["etag"] == blob.get_blob_properties().etag != etag
    time.sleep(0.6)
    assert len(restarted.records("ingest")) == 2
    assert "Executed 'Functions.ingest' (Succeeded, Id=" in restarted.log()


def test_failing_blob_is_tried_five_times_then_poisoned(
    storage: str, host_factory: Callable[..., HostProcess]
) -> None:
    settings = {**names(), **only("always_fails"), "AzureWebJobsStorage": storage}
    container = settings["TEST_FAIL_CONTAINER"]
    service = BlobServiceClient.from_connection_string(storage)
    service.create_container(container)
    host = host_factory(settings).start()
    blob = service.get_blob_client(container, "bad.txt")
    blob.upload_blob(b"cannot be processed")
    etag = blob.get_blob_properties().etag
    queue = QueueClient.from_connection_string(storage, "webjobs-blobtrigger-poison")

    def poison_message() -> dict | None:
        try:
            messages = list(queue.peek_messages(max_messages=32))
        except Exception:
            return None
        for message in messages:
            body = json.loads(base64.b64decode(message.content))
            if body.get("ContainerName") == container:
                return body
        return None

    message = host.wait_for(poison_message, what="the poison message")
    assert message == {
        "Type": "BlobTrigger",
        "FunctionId": "Host.Functions.always_fails",
        "BlobType": "BlockBlob",
        "ContainerName": container,
        "BlobName": "bad.txt",
        "ETag": etag,
    }
    assert len(host.records("always_fails")) == 5
    time.sleep(0.6)
    assert len(host.records("always_fails")) == 5, "a poisoned blob is not tried again"
    assert "ValueError: cannot handle" in host.log()


def test_sdk_blob_client_binding(storage: str, host_factory: Callable[..., HostProcess]) -> None:
    settings = {**names(), **only("client_binding"), "AzureWebJobsStorage": storage}
    container = settings["TEST_CLIENT_CONTAINER"]
    service = BlobServiceClient.from_connection_string(storage)
    service.create_container(container)
    host = host_factory(settings).start()
    service.get_blob_client(container, "folder/model.bin").upload_blob(b"x" * 1234)
    record = host.wait_for(lambda: host.records("client_binding"), what="the invocation")[0]
    assert record["blob"] == "folder/model.bin"
    assert record["size"] == 1234


def test_max_degree_of_parallelism_bounds_concurrent_invocations(
    storage: str, host_factory: Callable[..., HostProcess]
) -> None:
    settings = {
        **names(), **only("ingest"), "AzureWebJobsStorage": storage,
        "AzureFunctionsJobHost__extensions__blobs__maxDegreeOfParallelism": "2",
    }  # fmt: skip
    container = settings["TEST_BLOB_CONTAINER"]
    service = BlobServiceClient.from_connection_string(storage)
    service.create_container(container)
    for index in range(4):
        service.get_blob_client(container, f"set/{index}.txt").upload_blob(b"slow", metadata={"sleep": "0.6"})
    host = host_factory(settings).start()
    records = host.wait_for(lambda: len(host.records("ingest")) == 4 and host.records("ingest"), timeout=20)
    events = sorted([(r["began"], 1) for r in records] + [(r["ended"], -1) for r in records])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == 2


def test_blob_whose_host_died_mid_invocation_runs_again(
    storage: str, host_factory: Callable[..., HostProcess]
) -> None:
    settings = {
        **names(),
        **only("ingest"),
        "AzureWebJobsStorage": storage,
        "FUNCHOST_SHUTDOWN_TIMEOUT": "0.5",
    }
    container = settings["TEST_BLOB_CONTAINER"]
    service = BlobServiceClient.from_connection_string(storage)
    service.create_container(container)
    blob = service.get_blob_client(container, "ds/long.txt")
    blob.upload_blob(b"long", metadata={"sleep": "60"})
    host = host_factory(settings).start()
    host.wait_for(lambda: "Executing 'Functions.ingest'" in host.log(), what="the invocation to start")
    assert host.proc is not None
    os.killpg(host.proc.pid, signal.SIGKILL)
    host.proc.wait()
    receipt = service.get_blob_client(
        "azure-webjobs-hosts",
        f"blobreceipts/{settings['AzureFunctionsWebHost__hostid']}/Host.Functions.ingest/"
        f"{blob.get_blob_properties().etag}/{container}/ds/long.txt",
    )
    assert receipt.get_blob_properties().metadata == {"Incomplete": "Incomplete"}
    restarted = host_factory(settings).start()
    restarted.wait_for(
        lambda: "Executing 'Functions.ingest'" in restarted.log(), what="the blob to run again"
    )
    assert restarted.stop() == 1  # still sleeping past the 0.5 s shutdown timeout
