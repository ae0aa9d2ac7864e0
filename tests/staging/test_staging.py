"""Staging against Azurite and the Files emulator: server-side copy, verification, bad names."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import os
import uuid
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient, ContentSettings
from azure.storage.fileshare import ContentSettings as FileContentSettings
from azure.storage.fileshare import ShareServiceClient

from infra.local.stack import DEV_ACCOUNT
from shared.registry import StagedFile
from shared.staging import StagingError, carry_file, check_relative_path, parse_blob_name, stage_blob

pytestmark = pytest.mark.e2e


@pytest.fixture
def stores(local_stack):
    local_stack.ensure("azurite", "files")
    blobs = BlobServiceClient.from_connection_string(local_stack.connection_string)
    container = blobs.get_container_client(f"data{uuid.uuid4().hex[:10]}")
    container.create_container()
    shares = ShareServiceClient.from_connection_string(local_stack.connection_string)
    share = shares.get_share_client(f"share{uuid.uuid4().hex[:10]}")
    share.create_share()
    root = Path(local_stack.files_root) / DEV_ACCOUNT / share.share_name
    return container, share, root


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def test_stage_copies_server_side_and_verifies(stores) -> None:
    container, share, root = stores
    data = os.urandom(3 * 1024 * 1024 + 17)
    md5 = hashlib.md5(data).digest()
    container.upload_blob(
        "mnist/sub/dir/train.bin", data, content_settings=ContentSettings(content_md5=bytearray(md5))
    )
    staged = stage_blob(container, "mnist/sub/dir/train.bin", share, copy_timeout=30)
    assert staged.name == "sub/dir/train.bin" and staged.size == len(data) and staged.etag
    assert (root / "mnist" / "sub" / "dir" / "train.bin").read_bytes() == data
    # A changed blob is staged again over the old copy.
    container.upload_blob("mnist/sub/dir/train.bin", b"new", overwrite=True)
    again = stage_blob(container, "mnist/sub/dir/train.bin", share, copy_timeout=30)
    assert again.size == 3 and again.etag != staged.etag
    assert (root / "mnist" / "sub" / "dir" / "train.bin").read_bytes() == b"new"
    # Another destination (an API run staging a prefix into a dataset directory).
    other = stage_blob(container, "mnist/sub/dir/train.bin", share, dest_path="copy/x.bin", copy_timeout=30)
    assert other.name == "x.bin" and (root / "copy" / "x.bin").read_bytes() == b"new"


def test_deleted_directory_is_created_again(stores) -> None:
    """Directories are remembered per process; one deleted since (cleanup) is created again."""
    from shared.cleanup import delete_directory_tree

    container, share, root = stores
    container.upload_blob("mnist/sub/a.txt", b"a")
    container.upload_blob("mnist/sub/b.txt", b"b")
    stage_blob(container, "mnist/sub/a.txt", share, copy_timeout=30)
    delete_directory_tree(share, "mnist")
    assert _tree(root) == []
    staged = stage_blob(container, "mnist/sub/b.txt", share, copy_timeout=30)
    assert staged.name == "sub/b.txt" and (root / "mnist" / "sub" / "b.txt").read_bytes() == b"b"
    share.delete_share()
    again = stage_blob(container, "mnist/sub/a.txt", share, copy_timeout=30)
    assert again.name == "sub/a.txt" and (root / "mnist" / "sub" / "a.txt").read_bytes() == b"a"


def test_blob_deleted_after_its_properties_were_read(stores) -> None:
    container, share, root = stores
    blob = container.upload_blob("mnist/gone.txt", b"x")
    props = blob.get_blob_properties()
    blob.delete_blob()
    with pytest.raises(StagingError, match="does not exist") as caught:
        stage_blob(container, "mnist/gone.txt", share, copy_timeout=5, props=props)
    assert caught.value.code == "BlobNotFound"
    assert not (root / "mnist" / "gone.txt").exists()


def test_missing_blob_is_a_clear_error(stores) -> None:
    container, share, root = stores
    with pytest.raises(StagingError, match="does not exist"):
        stage_blob(container, "mnist/nope.txt", share, copy_timeout=5)
    assert _tree(root) == []


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("mnist/../escape.txt", "'..'"),
        ("mnist/a/../../escape.txt", "'..'"),
        ("mnist/./x", "'.'"),
        ("mnist//x", "absolute"),
        ("mnist/a//x", "empty"),
        ("mnist/a:b", "':'"),
        ("mnist/a|b", "'|'"),
        ("mnist/a\\..\\..\\b", "does not allow"),
        ("mnist/bad\x01name", "does not allow"),
        ("mnist/%2e%2e/%2E%2E/escape.txt", "percent-encoded"),
        ("mnist/%252e%252e/escape.txt", "percent-encoded"),
        ("mnist/a%2Fb", "percent-encoded"),
        ("mnist/trailing.", "ending in"),
        ("mnist/" + "x" * 256, "255"),
        ("toplevel.txt", "dataset folder"),
        ("../mnist/x", "dataset name"),
        (".hidden/x", "dataset name"),
    ],
)
def test_bad_names_write_nothing(stores, name: str, message: str) -> None:
    container, share, root = stores
    with pytest.raises(StagingError, match=message):
        stage_blob(container, name, share, copy_timeout=5)
    assert _tree(root) == []
    assert not any(root.parent.glob("escape*"))


def test_name_checks() -> None:
    assert parse_blob_name("mnist/a/b.txt").path == "a/b.txt"
    assert check_relative_path("Train-28x28_cntk_text.txt") == "Train-28x28_cntk_text.txt"
    with pytest.raises(StagingError, match="absolute"):
        check_relative_path("/etc/passwd")
    with pytest.raises(StagingError, match="2048"):
        check_relative_path("a/" * 1100)


def test_two_invocations_carrying_one_file_join_one_copy(stores) -> None:
    """Two checks of one run carry the same file from an earlier snapshot at once (two blob events of
    the run): the second joins the first's copy inside the share instead of aborting it, and both
    get the verified file. The source is never read from blob storage."""
    _, share, root = stores
    share.get_directory_client("_snapshots").create_directory()
    share.get_directory_client("_snapshots/run1").create_directory()
    data = os.urandom(64 * 1024 * 1024 + 7)
    md5 = hashlib.md5(data).digest()
    share.get_file_client("_snapshots/run1/big.bin").upload_file(
        data, max_concurrency=2, content_settings=FileContentSettings(content_md5=bytearray(md5))
    )
    old = StagedFile("big.bin", len(data), base64.b64encode(md5).decode(), "0x1")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(
                lambda _: carry_file(
                    share,
                    "_snapshots/run1/big.bin",
                    "_snapshots/run2/big.bin",
                    old,
                    account_key=share.credential.account_key,
                ),
                range(2),
            )
        )
    assert [(r.name, r.size, r.md5, r.etag) for r in results] == [("big.bin", len(data), old.md5, "0x1")] * 2
    assert (root / "_snapshots/run2/big.bin").read_bytes() == data
    props = share.get_file_client("_snapshots/run2/big.bin").get_file_properties()
    assert props.copy.status == "success" and "/_snapshots/run1/big.bin" in props.copy.source
