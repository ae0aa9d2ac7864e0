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


HOSTILE_NAMES = [
    "evil1/..\\..\\outside.txt",  # Azurite stores it as evil1/../../outside.txt
    "evil2/%2e%2e/%2e%2e/outside.txt",
    'evil3/a<b>:c|d?*".txt',
    "evil4/" + "n" * 1018,  # 1,024 characters: the receipt name would be longer than storage allows
    "evil5/tab\tdel\x7f.txt",
    "evil6/ctl\x01.txt",  # Azurite cannot list it at all (500 for any listing holding it)
    "evil7/\u00c3\u00a9\ufffd.txt",
]


def test_hostile_blob_names_never_stop_the_scan(
    storage: str, host_factory: Callable[..., HostProcess]
) -> None:
    """Every hostile name is its own blob's business: good blobs sorting before and after are
    invoked, a blob whose invocation keeps failing is poisoned after poisonBlobThreshold tries, and
    receipts are written for every name."""
    settings = {
        **names(), **only("client_binding"), "AzureWebJobsStorage": storage,
        "AzureFunctionsJobHost__extensions__blobs__poisonBlobThreshold": "2",
    }  # fmt: skip
    container = settings["TEST_CLIENT_CONTAINER"]
    service = BlobServiceClient.from_connection_string(storage)
    service.create_container(container)
    for name in ["aaa/first.txt", *HOSTILE_NAMES, "zzz/last.txt"]:
        service.get_blob_client(container, name).upload_blob(b"x")
    host = host_factory(settings).start()
    queue = QueueClient.from_connection_string(storage, "webjobs-blobtrigger-poison")

    def poisoned() -> set[str]:
        try:
            messages = list(queue.peek_messages(max_messages=32))
        except Exception:
            return set()
        bodies = [json.loads(base64.b64decode(m.content)) for m in messages]
        return {b["BlobName"] for b in bodies if b["ContainerName"] == container}

    def invoked() -> set[str]:
        return {r["blob"] for r in host.records("client_binding")}

    host.wait_for(lambda: {"aaa/first.txt", "zzz/last.txt"} <= invoked(), what="the good blobs")
    # The name Azurite made of the backslashes cannot be addressed: the handler's request for it
    # fails, twice (poisonBlobThreshold), then the blob is poisoned; the others all ran.
    host.wait_for(lambda: "evil1/../../outside.txt" in poisoned(), what="the poison message")
    assert set(HOSTILE_NAMES) - {HOSTILE_NAMES[0], HOSTILE_NAMES[5]} <= invoked()
    assert host.log().count("client_binding failed on") >= 2
    assert "blobs under" in host.log() and "evil6/" in host.log()  # that folder alone is unlisted
    receipts = [
        b.name
        for b in service.get_container_client("azure-webjobs-hosts").list_blobs(
            name_starts_with=f"blobreceipts/{settings['AzureFunctionsWebHost__hostid']}/"
        )
    ]
    assert len(receipts) == 2 + len(HOSTILE_NAMES) - 1
    assert all(len(r) <= 1024 and "/../" not in r and "\\" not in r for r in receipts)
    assert host.stop() == 0
