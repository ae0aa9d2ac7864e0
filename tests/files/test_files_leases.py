"""Leases (share and file) with their effect on writes, and share snapshots, through the real SDK."""

from __future__ import annotations

import time
import uuid

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.fileshare import ShareClient, ShareLeaseClient, ShareServiceClient

from infra.local.files import leases
from infra.local.files.errors import StorageError

pytestmark = pytest.mark.e2e


def error_code(call) -> str:
    with pytest.raises(HttpResponseError) as caught:
        call()
    return caught.value.error_code


def test_file_lease_guards_writes_until_released(share: ShareClient) -> None:
    file = share.get_file_client("leased.bin")
    file.upload_file(b"original")
    lease = file.acquire_lease()
    props = file.get_file_properties()
    assert (props.lease.state, props.lease.status, props.lease.duration) == ("leased", "locked", "infinite")

    # Writes without the lease, or with another one, are refused and change nothing.
    assert error_code(lambda: file.upload_range(b"XX", offset=0, length=2)) == "LeaseIdMissing"
    assert error_code(lambda: file.set_file_metadata({"a": "b"})) == "LeaseIdMissing"
    assert error_code(lambda: file.delete_file()) == "LeaseIdMissing"
    other = str(uuid.uuid4())
    assert (
        error_code(lambda: file.upload_file(b"stranger", lease=other)) == "LeaseIdMismatchWithFileOperation"
    )
    assert file.download_file().readall() == b"original"  # reads need no lease

    # With the lease: writes go through, Create File over it keeps the lease.
    file.upload_file(b"hello world", lease=lease)
    assert file.download_file().readall() == b"hello world"
    assert file.get_file_properties().lease.state == "leased"

    # Change moves the lease to a new id; acquiring it again with another id is a conflict.
    new_id = str(uuid.uuid4())
    lease.change(new_id)
    assert lease.id == new_id
    assert error_code(lambda: file.acquire_lease(str(uuid.uuid4()))) == "LeaseAlreadyPresent"
    lease.release()
    assert file.get_file_properties().lease.state == "available"
    file.set_file_metadata({"free": "again"})  # no lease needed once released
    assert error_code(lambda: file.set_file_metadata({"a": "b"}, lease=new_id)) == (
        "LeaseNotPresentWithFileOperation"
    )

    # A leased file is renamed only with its lease (the lease moves with it).
    lease = file.acquire_lease()
    assert error_code(lambda: file.rename_file("moved.bin")) == "LeaseIdMissing"
    file = file.rename_file("moved.bin", source_lease=lease)
    assert file.get_file_properties().lease.state == "leased"
    ShareLeaseClient(file, lease_id=lease.id).release()  # the old client still names the old path

    # Break ends a file lease at once; the file can be leased again.
    lease = file.acquire_lease()
    lease.break_lease()
    assert file.get_file_properties().lease.state == "broken"
    file.delete_file()


def test_share_lease_guards_delete(file_service: ShareServiceClient) -> None:
    share = file_service.get_share_client(f"lease-{uuid.uuid4().hex[:8]}")
    share.create_share()
    share.create_directory("mydir")
    lease = share.acquire_lease(lease_duration=15)
    assert share.get_share_properties().lease.state == "leased"
    assert error_code(share.delete_share) == "LeaseIdMissing"
    assert error_code(lambda: share.get_share_properties(lease=str(uuid.uuid4()))) == (
        "LeaseIdMismatchWithContainerOperation"
    )
    lease.renew()
    share.get_share_properties(lease=lease)
    listed = {s.name: s for s in file_service.list_shares(name_starts_with=share.share_name)}
    assert listed[share.share_name].lease.status == "locked"
    lease.break_lease(lease_break_period=0)
    assert share.get_share_properties().lease.state == "broken"
    assert error_code(lease.renew) == "LeaseIsBrokenAndCannotBeRenewed"
    lease = share.acquire_lease()  # infinite
    share.delete_share(lease=lease)  # the samples' way: the lease's holder deletes the share
    with pytest.raises(ResourceNotFoundError):
        share.get_share_properties()


def test_share_lease_expires_and_breaks_after_its_period() -> None:
    """The state machine on its own clock (a 15 s lease need not be waited for)."""
    lease, status, _ = leases.apply(None, "acquire", {"x-ms-lease-duration": "15"}, 1000.0, "share")
    assert (
        status == 201 and leases.state(lease, 1014.0) == "leased" and leases.state(lease, 1015.0) == "expired"
    )
    leases.check(lease, None, 1016.0, "share", needs_lease=True)  # an expired lease guards nothing
    lease, _, headers = leases.apply(lease, "renew", {"x-ms-lease-id": lease["id"]}, 1016.0, "share")
    assert leases.state(lease, 1030.0) == "leased"
    broken, status, headers = leases.apply(lease, "break", {"x-ms-lease-break-period": "10"}, 1020.0, "share")
    assert (status, headers["x-ms-lease-time"]) == (202, "10")
    assert leases.state(broken, 1029.0) == "breaking" and leases.state(broken, 1030.0) == "broken"
    with pytest.raises(StorageError, match="LeaseIsBreakingAndCannotBeAcquired"):
        leases.apply(broken, "acquire", {"x-ms-lease-duration": "-1"}, 1025.0, "share")
    with pytest.raises(StorageError, match="LeaseIdMissing"):
        leases.check(broken, None, 1025.0, "share", needs_lease=True)
    for duration in ("14", "61", "forever"):
        with pytest.raises(StorageError, match="x-ms-lease-duration"):
            leases.apply(None, "acquire", {"x-ms-lease-duration": duration}, 0.0, "share")
    with pytest.raises(StorageError, match="file leases are infinite"):
        leases.apply(None, "acquire", {"x-ms-lease-duration": "30"}, 0.0, "file")


def test_share_snapshots_are_read_only_copies(file_service: ShareServiceClient) -> None:
    share = file_service.get_share_client(f"snap-{uuid.uuid4().hex[:8]}")
    share.create_share(metadata={"k": "v"})
    share.create_directory("mydir")
    share.get_file_client("mydir/data.txt").upload_file(b"version 1")
    share.get_file_client("mydir/data.txt").set_file_metadata({"m": "1"})
    snapshot = share.create_snapshot()["snapshot"]
    time.sleep(0.01)
    share.get_file_client("mydir/data.txt").upload_file(b"version 2, longer")
    share.get_file_client("mydir/new.txt").upload_file(b"new")

    frozen = file_service.get_share_client(share.share_name, snapshot=snapshot)
    assert frozen.get_file_client("mydir/data.txt").download_file().readall() == b"version 1"
    assert frozen.get_file_client("mydir/data.txt").get_file_properties().metadata == {"m": "1"}
    assert [f["name"] for f in frozen.list_directories_and_files("mydir")] == ["data.txt"]
    assert frozen.get_share_properties().metadata == {"k": "v"}
    assert share.get_file_client("mydir/data.txt").download_file().readall() == b"version 2, longer"
    with pytest.raises(HttpResponseError) as caught:
        frozen.get_file_client("mydir/data.txt").upload_file(b"no")
    assert caught.value.status_code == 400  # snapshots are read-only
    listed = [
        (s.name, s.snapshot)
        for s in file_service.list_shares(name_starts_with=share.share_name, include_snapshots=True)
    ]
    assert listed == [(share.share_name, snapshot), (share.share_name, None)]

    # A share with snapshots is deleted only with them; one snapshot can go on its own.
    with pytest.raises(ResourceExistsError) as caught:
        share.delete_share()
    assert caught.value.error_code == "ShareHasSnapshots"
    second = share.create_snapshot()["snapshot"]
    file_service.get_share_client(share.share_name, snapshot=second).delete_share()
    with pytest.raises(ResourceNotFoundError):
        file_service.get_share_client(share.share_name, snapshot=second).get_share_properties()
    share.delete_share(delete_snapshots=True)
    with pytest.raises(ResourceNotFoundError):
        frozen.get_share_properties()
