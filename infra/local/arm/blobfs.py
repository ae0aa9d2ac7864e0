"""Blob container mounts (`mountVolumes.azureBlobFileSystems`, blobfuse on a real node) on the local
stack: the container's blobs, from Azurite, in a local directory the job sees at its mount path.

blobfuse keeps a local cache of the blobs a node reads and uploads a file to its blob when it is
closed. Here the whole container is read into the cache when the volume is mounted (node setup for
cluster volumes, job start for job volumes), and what the job changed is written back when its
processes have exited: new and changed files are uploaded to their blobs, deleted files delete their
blobs. A mount that cannot be made (no blob endpoint, unknown account, wrong key, missing container)
is an error naming the cause, as the service reports it, never an empty folder.

Blob names that cannot be a path under the mount (`..` segments, empty segments) are not shown, as
blobfuse cannot show them either; nothing is ever written outside the cache directory.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from azure.core.exceptions import AzureError, HttpResponseError
from azure.storage.blob import ContainerClient

MOUNT_FAILED = "AzureBlobFileSystemMountFailed"
WRITE_BACK_FAILED = "AzureBlobFileSystemWriteFailed"


@dataclass
class BlobMount:
    """One mounted container: where its cache is, how to reach it, and what was read (name -> size,
    mtime) so that only changes are written back."""

    account: str
    container: str
    relative_mount_path: str
    cache: str
    endpoint: str | None
    key: str | None
    manifest: dict[str, list[int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The mount as kept with its node; the key as `accountKey`, which the emulator's state file
        never holds (models.without_secret_values)."""
        data = asdict(self)
        data["accountKey"] = data.pop("key")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BlobMount:
        fields = dict(data)
        fields["key"] = fields.pop("accountKey", None)
        return cls(**fields)


class MountError(Exception):
    def __init__(self, mount: BlobMount, cause: str) -> None:
        super().__init__(cause)
        self.error = {
            "code": MOUNT_FAILED,
            "message": f"Cannot mount Azure blob container {mount.container} of storage account "
            f"{mount.account}: {cause}",
            "details": [
                {"name": "accountName", "value": mount.account},
                {"name": "containerName", "value": mount.container},
                {"name": "relativeMountPath", "value": mount.relative_mount_path},
            ],
        }


def account_endpoint(blob_endpoint: str | None, account: str) -> str | None:
    """Azurite is path style: `http://host:port/<account>`."""
    if not blob_endpoint:
        return None
    parts = urlsplit(blob_endpoint)
    return f"{parts.scheme}://{parts.netloc}/{account}"


def _client(mount: BlobMount) -> ContainerClient:
    if not mount.endpoint:
        raise MountError(mount, "the local stack has no blob endpoint for this emulator (--blob-endpoint)")
    if not mount.key:
        raise MountError(mount, "no account key was given (credentials.accountKey)")
    return ContainerClient(
        mount.endpoint,
        mount.container,
        credential={"account_name": mount.account, "account_key": mount.key},
        retry_total=2,
        connection_timeout=10,
        read_timeout=60,
    )


def _local_path(cache: Path, name: str) -> Path | None:
    parts = name.split("/")
    if name.endswith("/"):
        parts = parts[:-1]
    if not parts or any(p in ("", ".", "..") or "\0" in p for p in parts):
        return None
    return cache.joinpath(*parts)


def pull(mount: BlobMount) -> None:
    """Read the container into the mount's cache (raises MountError with the service's reason)."""
    cache = Path(mount.cache)
    cache.mkdir(parents=True, exist_ok=True)
    try:
        with _client(mount) as container:
            for blob in container.list_blobs():
                target = _local_path(cache, blob.name)
                if target is None:
                    continue
                if blob.name.endswith("/"):
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as handle:
                    container.download_blob(blob.name).readinto(handle)
                st = target.stat()
                mount.manifest[blob.name] = [st.st_size, st.st_mtime_ns]
    except HttpResponseError as exc:
        code = getattr(exc.error_code, "value", exc.error_code) or f"HTTP {exc.status_code}"
        raise MountError(mount, f"{code}: {str(exc.message).splitlines()[0]}") from None
    except AzureError as exc:
        raise MountError(mount, f"the blob service could not be reached: {exc}") from None
    except OSError as exc:  # a blob that cannot be a file here: "a" and "a/b", a name too long, ...
        raise MountError(mount, f"the container's blobs cannot be laid out as files: {exc}") from None


def push(mount: BlobMount) -> list[dict[str, Any]]:
    """Write what changed in the cache back to the container; the errors, if any (as the job's)."""
    cache = Path(mount.cache)
    if not cache.is_dir():
        return []
    seen: set[str] = set()
    try:
        with _client(mount) as container:
            for root, dirs, files in os.walk(cache):
                dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
                for name in files:
                    path = Path(root, name)
                    if path.is_symlink() or not path.is_file():
                        continue
                    blob_name = path.relative_to(cache).as_posix()
                    seen.add(blob_name)
                    st = path.stat()
                    if mount.manifest.get(blob_name) == [st.st_size, st.st_mtime_ns]:
                        continue
                    with open(path, "rb") as handle:
                        container.upload_blob(blob_name, handle, overwrite=True)
                    mount.manifest[blob_name] = [st.st_size, st.st_mtime_ns]
            for blob_name in [n for n in mount.manifest if n not in seen]:
                with contextlib.suppress(HttpResponseError):
                    container.delete_blob(blob_name)
                del mount.manifest[blob_name]
    except (AzureError, MountError, OSError) as exc:
        return [
            {
                "code": WRITE_BACK_FAILED,
                "message": f"Writing the job's changes back to blob container {mount.container} of "
                f"storage account {mount.account} failed: {exc}",
            }
        ]
    return []
