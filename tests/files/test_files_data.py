"""Shares, directories and files through azure-storage-file-share against the Files emulator."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psutil
import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobSasPermissions, generate_blob_sas
from azure.storage.blob import ContentSettings as BlobContentSettings
from azure.storage.fileshare import (
    ContentSettings,
    FileSasPermissions,
    ShareClient,
    ShareFileClient,
    generate_file_sas,
)

from infra.local.stack import DEV_ACCOUNT

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024


def on_disk(stack, share: ShareClient, path: str = ""):
    return stack.files_root / DEV_ACCOUNT / share.share_name / path


class RssSampler(threading.Thread):
    """Samples a process's resident memory while a transfer runs: the peak shows whether the server
    ever held a whole file."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> int:
        self.done.set()
        self.join()
        return self.peak


def test_nested_directories_64_mib_upload_ranges_and_bounded_memory(stack, share: ShareClient) -> None:
    for path in ("data", "data/train", "data/train/x"):
        share.get_directory_client(path).create_directory()
    payload = os.urandom(64 * MiB)
    file = share.get_file_client("data/train/x/big.bin")
    server_pid = stack.processes["files"].pid
    baseline = psutil.Process(server_pid).memory_info().rss

    sampler = RssSampler(server_pid)
    sampler.start()
    file.upload_file(payload)
    disk = on_disk(stack, share, "data/train/x/big.bin")
    assert disk.stat().st_size == len(payload)
    assert hashlib.sha256(disk.read_bytes()).digest() == hashlib.sha256(payload).digest()

    for offset, length in [
        (0, 1),
        (4 * MiB - 3, 7),
        (12345, 5 * MiB),
        (64 * MiB - 10, 10),
        (31 * MiB, 3 * MiB),
    ]:
        got = file.download_file(offset=offset, length=length).readall()
        assert got == payload[offset : offset + length], (offset, length)
    digest = hashlib.sha256()
    for chunk in file.download_file().chunks():
        digest.update(chunk)
    assert digest.digest() == hashlib.sha256(payload).digest()
    peak = sampler.stop()
    # Holding the 64 MiB file (or a 32 MiB first download chunk) would show; ranges of 4 MiB do not.
    assert peak - baseline < 40 * MiB, f"server RSS grew by {(peak - baseline) / MiB:.1f} MiB"

    props = file.get_file_properties()
    assert props.size == 64 * MiB
    assert [(r.start, r.end) for r in file.list_ranges()] == [(0, 64 * MiB - 1)]


def test_copy_blob_from_azurite_by_sas_url(stack, share: ShareClient, blob_service) -> None:
    container = blob_service.get_container_client(f"src-{uuid.uuid4().hex[:10]}")
    container.create_container()
    payload = os.urandom(3 * MiB + 5)
    blob = container.get_blob_client("dataset/train.txt")
    blob.upload_blob(
        payload,
        metadata={"origin": "azurite"},
        content_settings=BlobContentSettings(content_type="text/plain"),
    )
    sas = generate_blob_sas(
        DEV_ACCOUNT,
        container.container_name,
        blob.blob_name,
        account_key=stack.secrets.account_keys[DEV_ACCOUNT],
        permission=BlobSasPermissions(read=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    share.get_directory_client("staged").create_directory()
    dest = share.get_file_client("staged/train.txt")

    started = dest.start_copy_from_url(f"{blob.url}?{sas}")
    assert started["copy_status"] in ("pending", "success")
    deadline = time.monotonic() + 30
    while (props := dest.get_file_properties()).copy.status == "pending":
        assert time.monotonic() < deadline, "copy still pending after 30 s"
        time.sleep(0.1)
    assert props.copy.status == "success"
    assert props.copy.id == started["copy_id"]
    assert props.copy.progress == f"{len(payload)}/{len(payload)}"
    assert props.copy.source.startswith(blob.url)
    # The SDK reads the completion time from a misspelt key (x-ms-copy-completion_time): check the wire.
    headers: dict[str, str] = {}
    dest.get_file_properties(raw_response_hook=lambda r: headers.update(r.http_response.headers))
    assert headers["x-ms-copy-completion-time"].endswith(" GMT")
    assert props.metadata == {"origin": "azurite"}
    assert props.content_settings.content_type == "text/plain"
    assert dest.download_file().readall() == payload
    assert on_disk(stack, share, "staged/train.txt").read_bytes() == payload

    missing = container.get_blob_client("nope")
    with pytest.raises(ResourceNotFoundError) as caught:
        dest.start_copy_from_url(f"{missing.url}?{sas}")
    assert caught.value.error_code == "CannotVerifyCopySource"
    container.delete_container()


def test_abort_pending_copy(stack, blob_service, private_emulator) -> None:
    from azure.storage.fileshare import ShareServiceClient

    emulator = private_emulator("--copy-chunk-delay", "0.3")
    service = ShareServiceClient.from_connection_string(emulator.connection_string)
    share = service.get_share_client("slow")
    share.create_share()
    container = blob_service.get_container_client(f"slow-{uuid.uuid4().hex[:10]}")
    container.create_container()
    blob = container.get_blob_client("big.bin")
    blob.upload_blob(os.urandom(8 * MiB))
    sas = generate_blob_sas(
        DEV_ACCOUNT,
        container.container_name,
        blob.blob_name,
        account_key=stack.secrets.account_keys[DEV_ACCOUNT],
        permission=BlobSasPermissions(read=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    dest = share.get_file_client("big.bin")
    started = dest.start_copy_from_url(f"{blob.url}?{sas}")
    assert started["copy_status"] == "pending"
    props = dest.get_file_properties()
    assert props.copy.status == "pending"
    copied, total = (int(n) for n in props.copy.progress.split("/"))
    assert total == 8 * MiB and copied < total
    with pytest.raises(HttpResponseError) as caught:
        dest.abort_copy("not-the-copy-id")
    assert caught.value.error_code == "CopyIdMismatch"

    dest.abort_copy(started["copy_id"])
    props = dest.get_file_properties()
    assert props.copy.status == "aborted"
    assert props.size == 0
    with pytest.raises(HttpResponseError) as caught:
        dest.abort_copy(started["copy_id"])
    assert caught.value.error_code == "NoPendingCopyOperation"
    container.delete_container()


def test_list_with_prefix_and_paging(share: ShareClient) -> None:
    directory = share.get_directory_client("listing")
    directory.create_directory()
    for name in ("sub-a", "sub-b", "other"):
        directory.get_subdirectory_client(name).create_directory()
    for i in range(7):
        directory.get_file_client(f"file-{i}.txt").upload_file(b"x" * i)

    # Each page holds entries in name order; the SDK yields a page's directories before its files.
    everything = [(item["name"], item["is_directory"]) for item in directory.list_directories_and_files()]
    assert ("sub-a", True) in everything and ("file-6.txt", False) in everything
    assert len(everything) == 10
    sizes = {
        item["name"]: item["size"] for item in directory.list_directories_and_files(name_starts_with="file-")
    }
    assert sizes == {f"file-{i}.txt": i for i in range(7)}

    pages = directory.list_directories_and_files(results_per_page=3).by_page()
    names_by_page = [[item["name"] for item in page] for page in pages]
    assert [len(page) for page in names_by_page] == [3, 3, 3, 1]
    assert sorted(name for page in names_by_page for name in page) == sorted(name for name, _ in everything)
    assert names_by_page[0] == ["file-0.txt", "file-1.txt", "file-2.txt"]

    first = directory.list_directories_and_files(name_starts_with="file-", results_per_page=4).by_page()
    page_one = [item["name"] for item in next(first)]
    token = first.continuation_token
    assert page_one == [f"file-{i}.txt" for i in range(4)] and token
    resumed = directory.list_directories_and_files(name_starts_with="file-", results_per_page=4)
    page_two = [item["name"] for item in next(resumed.by_page(continuation_token=token))]
    assert page_two == [f"file-{i}.txt" for i in range(4, 7)]

    root_names = [item["name"] for item in share.list_directories_and_files()]
    assert root_names == ["listing"]


def test_metadata_and_properties(file_service, share: ShareClient) -> None:
    share.set_share_metadata({"Project": "mnist", "run_id": "42"})
    share.set_share_quota(7)
    share_props = share.get_share_properties()
    assert share_props.metadata == {"Project": "mnist", "run_id": "42"}
    assert share_props.quota == 7
    listed = [s for s in file_service.list_shares(name_starts_with=share.share_name, include_metadata=True)]
    assert [(s.name, s.quota, s.metadata) for s in listed] == [(share.share_name, 7, share_props.metadata)]

    directory = share.get_directory_client("props")
    directory.create_directory(metadata={"kind": "inputs"})
    directory.set_directory_metadata({"kind": "outputs"})
    assert directory.get_directory_properties().metadata == {"kind": "outputs"}

    file = directory.get_file_client("model.dnn")
    body = b"weights" * 1000
    md5 = hashlib.md5(body).digest()
    file.upload_file(body, metadata={"epoch": "3"})
    file.set_http_headers(
        ContentSettings(
            content_type="application/octet-stream+dnn",
            content_md5=md5,
            content_disposition="attachment",
            cache_control="no-cache",
        )
    )
    file.set_file_metadata({"epoch": "4", "Accuracy": "0.99"})
    props = file.get_file_properties()
    assert props.metadata == {"epoch": "4", "Accuracy": "0.99"}
    assert props.content_settings.content_type == "application/octet-stream+dnn"
    assert bytes(props.content_settings.content_md5) == md5
    assert props.content_settings.content_disposition == "attachment"
    assert props.content_settings.cache_control == "no-cache"
    assert props.size == len(body)
    assert props.file_id and props.creation_time and props.last_write_time and props.etag
    downloaded = file.download_file()
    assert downloaded.readall() == body
    assert bytes(downloaded.properties.content_settings.content_md5) == md5

    file.resize_file(10)
    assert file.get_file_properties().size == 10
    assert file.download_file().readall() == body[:10]


def test_delete_and_error_codes(stack, file_service, share: ShareClient) -> None:
    directory = share.get_directory_client("full")
    directory.create_directory()
    file = directory.get_file_client("f.txt")
    file.upload_file(b"hello")

    with pytest.raises(ResourceExistsError) as caught:
        directory.delete_directory()
    assert caught.value.error_code == "DirectoryNotEmpty"
    with pytest.raises(ResourceExistsError) as caught:
        directory.create_directory()
    assert caught.value.error_code == "ResourceAlreadyExists"
    with pytest.raises(ResourceExistsError) as caught:
        share.create_share()
    assert caught.value.error_code == "ShareAlreadyExists"
    with pytest.raises(HttpResponseError) as caught:
        file.download_file(offset=100, length=5)
    assert caught.value.status_code == 416 and caught.value.error_code == "InvalidRange"

    with pytest.raises(ResourceNotFoundError) as caught:
        share.get_directory_client("no/such").create_directory()
    assert caught.value.error_code == "ParentNotFound"
    with pytest.raises(ResourceNotFoundError) as caught:
        share.get_file_client("nodir/f.txt").upload_file(b"x")
    assert caught.value.error_code == "ParentNotFound"
    with pytest.raises(ResourceNotFoundError) as caught:
        directory.get_file_client("missing.txt").get_file_properties()
    assert caught.value.error_code == "ResourceNotFound"

    missing_share = file_service.get_share_client("no-such-share")
    with pytest.raises(ResourceNotFoundError) as caught:
        missing_share.get_directory_client("d").create_directory()
    assert caught.value.error_code == "ShareNotFound"
    with pytest.raises(ResourceNotFoundError) as caught:
        missing_share.get_file_client("f").download_file().readall()
    assert caught.value.error_code == "ShareNotFound"

    file.delete_file()
    directory.delete_directory()
    assert not on_disk(stack, share, "full").exists()
    with pytest.raises(ResourceNotFoundError):
        directory.get_directory_properties()
    share.delete_share()
    assert not on_disk(stack, share).exists()
    with pytest.raises(ResourceNotFoundError) as caught:
        share.get_share_properties()
    assert caught.value.error_code == "ShareNotFound"


def test_rename_file_and_directory_keeps_properties(stack, share: ShareClient) -> None:
    directory = share.get_directory_client("tmp")
    directory.create_directory()
    directory.get_file_client("part.bin").upload_file(b"payload", metadata={"stage": "upload"})
    renamed = directory.get_file_client("part.bin").rename_file("tmp/final.bin")
    assert renamed.get_file_properties().metadata == {"stage": "upload"}
    moved = directory.rename_directory("done")
    assert [item["name"] for item in moved.list_directories_and_files()] == ["final.bin"]
    assert share.get_file_client("done/final.bin").download_file().readall() == b"payload"
    assert share.get_file_client("done/final.bin").get_file_properties().metadata == {"stage": "upload"}
    assert not on_disk(stack, share, "tmp").exists()
    share.get_file_client("done/other.bin").upload_file(b"x")
    with pytest.raises(ResourceExistsError):
        share.get_file_client("done/other.bin").rename_file("done/final.bin")
    share.get_file_client("done/other.bin").rename_file("done/final.bin", overwrite=True)
    assert share.get_file_client("done/final.bin").download_file().readall() == b"x"


def wait_copied(file: Any) -> Any:
    deadline = time.monotonic() + 30
    while (props := file.get_file_properties()).copy.status == "pending":
        assert time.monotonic() < deadline, "copy still pending after 30 s"
        time.sleep(0.05)
    return props


def test_copy_from_a_file_url_inside_the_share_as_azure_authorizes_it(stack, share: ShareClient) -> None:
    """Snapshots carry files inside the share with Copy File from a file URL. Azure takes
    a file of the destination's own account as source on the copy request's Shared Key, or any file
    by a SAS granting read on it; anything else is 403 CannotVerifyCopySource, and nothing is written."""
    payload = os.urandom(MiB + 3)
    md5 = hashlib.md5(payload).digest()
    share.get_directory_client("snap1").create_directory()
    share.get_directory_client("snap2").create_directory()
    source = share.get_file_client("snap1/data.bin")
    source.upload_file(payload, content_settings=ContentSettings(content_md5=md5))

    by_key = share.get_file_client("snap2/by-key.bin")
    by_key.start_copy_from_url(source.url)
    props = wait_copied(by_key)
    assert props.copy.status == "success" and props.copy.source == source.url
    assert props.size == len(payload) and bytes(props.content_settings.content_md5) == md5
    assert by_key.download_file().readall() == payload

    key = stack.secrets.account_keys[DEV_ACCOUNT]

    def file_sas(path: str, **permission: bool) -> str:
        return generate_file_sas(
            DEV_ACCOUNT, share.share_name, path.split("/"), account_key=key,
            permission=FileSasPermissions(**permission), expiry=datetime.now(UTC) + timedelta(hours=1),
        )  # fmt: skip

    by_sas = share.get_file_client("snap2/by-sas.bin")
    by_sas.start_copy_from_url(f"{source.url}?{file_sas('snap1/data.bin', read=True)}")
    assert wait_copied(by_sas).copy.status == "success"
    assert by_sas.download_file().readall() == payload

    refused = share.get_file_client("snap2/refused.bin")
    for bad_source in (
        f"{source.url}?{file_sas('snap1/data.bin', write=True)}",  # no read permission
        f"{source.url}?{file_sas('snap1/other.bin', read=True)}",  # signed for another file
    ):
        with pytest.raises(HttpResponseError) as caught:
            refused.start_copy_from_url(bad_source)
        assert caught.value.status_code == 403 and caught.value.error_code == "CannotVerifyCopySource"
    # A destination reached by SAS cannot lend its authorization to a source without one.
    dest_sas = file_sas("snap2/refused.bin", read=True, create=True, write=True)
    account_url = refused.url.split(f"/{share.share_name}/", 1)[0]
    via_sas = ShareFileClient(account_url, share.share_name, "snap2/refused.bin", credential=dest_sas)
    with pytest.raises(HttpResponseError) as caught:
        via_sas.start_copy_from_url(source.url)
    assert caught.value.status_code == 403 and caught.value.error_code == "CannotVerifyCopySource"
    assert not refused.exists()


def test_names_are_case_preserving_but_case_insensitive_as_on_azure_files(stack, share: ShareClient) -> None:
    """On Azure Files `MNIST` and `mnist` are one directory. The emulator keeps the
    spelling an entry was created with and finds it by any spelling, so tests see what Azure does."""
    share.get_directory_client("mnist").create_directory()
    share.get_file_client("mnist/Train.txt").upload_file(b"version 1")
    with pytest.raises(ResourceExistsError):
        share.get_directory_client("MNIST").create_directory()
    assert share.get_file_client("MNIST/TRAIN.TXT").download_file().readall() == b"version 1"
    assert share.get_directory_client("Mnist").get_directory_properties() is not None
    # Writing through another spelling writes the one entry, which keeps its first spelling.
    share.get_file_client("MNIST/train.txt").upload_file(b"version 2")
    assert [i["name"] for i in share.list_directories_and_files()] == ["mnist"]
    assert [i["name"] for i in share.get_directory_client("MNIST").list_directories_and_files()] == [
        "Train.txt"
    ]
    root = on_disk(stack, share, "mnist")
    assert sorted(p.name for p in root.parent.iterdir()) == ["mnist"]
    assert (root / "Train.txt").read_bytes() == b"version 2"
    # Deleting by another spelling deletes it.
    share.get_file_client("Mnist/TRAIN.txt").delete_file()
    share.get_directory_client("MNIST").delete_directory()
    assert not root.exists()
