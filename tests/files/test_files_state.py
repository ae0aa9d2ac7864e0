"""State of the Files emulator: the share tree on disk is the truth, properties survive a restart."""

from __future__ import annotations

import hashlib
import os
import time

import pytest
import requests
from azure.storage.fileshare import ContentSettings, LinearRetry, ShareClient, ShareServiceClient

from infra.local.stack import DEV_ACCOUNT

pytestmark = pytest.mark.e2e


def test_files_written_on_disk_directly_are_served(stack, share: ShareClient) -> None:
    """Jobs write into the mounted share without the API: listings and reads must show it at once."""
    root = stack.files_root / DEV_ACCOUNT / share.share_name
    (root / "outputs" / "Models").mkdir(parents=True)
    model = os.urandom(300_000)
    (root / "outputs" / "Models" / "ConvNet_MNIST.dnn").write_bytes(model)
    (root / "outputs" / "stdout.txt").write_text("epoch 1\n")

    assert [item["name"] for item in share.list_directories_and_files()] == ["outputs"]
    listed = {
        item["name"]: item for item in share.get_directory_client("outputs").list_directories_and_files()
    }
    assert listed["Models"]["is_directory"] and listed["stdout.txt"]["size"] == 8
    file = share.get_file_client("outputs/Models/ConvNet_MNIST.dnn")
    assert file.get_file_properties().size == len(model)
    assert file.download_file(offset=1000, length=5000).readall() == model[1000:6000]

    # Appends by the job show in the next read; metadata set through the API sticks to the file.
    file.set_file_metadata({"run": "r1"})
    with open(root / "outputs" / "stdout.txt", "a") as handle:
        handle.write("epoch 2\n")
    assert share.get_file_client("outputs/stdout.txt").download_file().readall() == b"epoch 1\nepoch 2\n"
    assert file.get_file_properties().metadata == {"run": "r1"}

    share.get_directory_client("outputs").get_file_client("stdout.txt").delete_file()
    assert not (root / "outputs" / "stdout.txt").exists()


def test_restart_keeps_state_and_sidecars_stay_out_of_the_share(private_emulator) -> None:
    emulator = private_emulator()
    service = ShareServiceClient.from_connection_string(emulator.connection_string)
    share = service.create_share("keep", quota=3, metadata={"purpose": "restart"})
    share.get_directory_client("d").create_directory(metadata={"level": "1"})
    file = share.get_file_client("d/f.txt")
    body = b"persist me" * 100
    file.upload_file(
        body,
        metadata={"Epoch": "7"},
        content_settings=ContentSettings(content_type="text/plain", content_md5=hashlib.md5(body).digest()),
    )
    before = file.get_file_properties()

    emulator.stop()
    emulator.start()

    service = ShareServiceClient.from_connection_string(emulator.connection_string)
    share = service.get_share_client("keep")
    props = share.get_share_properties()
    assert (props.quota, props.metadata) == (3, {"purpose": "restart"})
    assert share.get_directory_client("d").get_directory_properties().metadata == {"level": "1"}
    after = share.get_file_client("d/f.txt").get_file_properties()
    assert after.metadata == {"Epoch": "7"}
    assert after.content_settings.content_type == "text/plain"
    assert bytes(after.content_settings.content_md5) == hashlib.md5(body).digest()
    assert (after.etag, after.file_id, after.creation_time) == (
        before.etag,
        before.file_id,
        before.creation_time,
    )
    assert share.get_file_client("d/f.txt").download_file().readall() == body

    share_root = emulator.data_dir / "shares" / DEV_ACCOUNT / "keep"
    assert sorted(str(p.relative_to(share_root)) for p in share_root.rglob("*")) == ["d", "d/f.txt"]
    assert (emulator.data_dir / "meta").is_dir()


def test_injected_faults_errors_latency_and_failed_copies(private_emulator) -> None:
    emulator = private_emulator()
    admin = f"http://127.0.0.1:{emulator.port}/_emulator/faults"
    service = ShareServiceClient.from_connection_string(emulator.connection_string)
    share = service.create_share("faulty")
    source = share.get_file_client("source.bin")
    source.upload_file(os.urandom(3 * 1024 * 1024))

    bad = requests.put(admin, json={"error_rate": 2}, timeout=10)
    assert bad.status_code == 400 and "fraction" in bad.json()["error"]
    assert (
        requests.put(admin, json={"copy_failure_rate": 1, "seed": 7}, timeout=10).json()["copy_failure_rate"]
        == 1
    )
    dest = share.get_file_client("dest.bin")
    dest.start_copy_from_url(source.url)
    deadline = time.monotonic() + 20
    while (props := dest.get_file_properties()).copy.status == "pending":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert props.copy.status == "failed"
    assert "injected fault" in props.copy.status_description

    # A third of the requests fail with 503 ServerBusy: the SDK's retries (made quick here) absorb them.
    requests.put(admin, json={"error_rate": 0.3, "seed": 1}, timeout=10)
    quick = LinearRetry(backoff=0, retry_total=10, random_jitter_range=0)
    retrying = ShareServiceClient.from_connection_string(emulator.connection_string, retry_policy=quick)
    for i in range(5):
        retrying.get_share_client("faulty").get_file_client(f"f{i}.txt").upload_file(b"retried")
    requests.put(admin, json={"latency_ms": 200}, timeout=10)
    started = time.monotonic()
    share.get_share_properties()
    assert time.monotonic() - started >= 0.2
    requests.delete(admin, timeout=10)
    assert [item["name"] for item in share.list_directories_and_files(name_starts_with="f")] == [
        f"f{i}.txt" for i in range(5)
    ]
    log = requests.get(f"http://127.0.0.1:{emulator.port}/_emulator/requests", timeout=10).json()
    assert any(entry["error_code"] == "ServerBusy" for entry in log)
