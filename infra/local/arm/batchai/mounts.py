"""Node setup's volumes: what a cluster's or job's `mountVolumes` become on this machine.

A mount is a symlink `<mount root>/<relativeMountPath>` to a local directory: an Azure File share is
the Files emulator's directory of it, a blob container a cache directory read in and written back by
`blobfs`, a file server the directory the backend's `FileServer` exports, an unmanaged file system a
directory of its own. Failures are the errors Azure reports for them.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from infra.local.arm.blobfs import BlobMount, account_endpoint
from infra.local.arm.common import SECRET_PLACEHOLDER, Config


class VolumeMounts:
    """`file_server_export(id)`: the directory a file server exports, None when there is none."""

    def __init__(self, config: Config, file_server_export: Callable[[str], Path | None]) -> None:
        self.config = config
        self.file_server_export = file_server_export

    def resolve_share(self, url: str) -> Path | None:
        """`<files-endpoint>/<share>` or `https://<account>.file.core.windows.net/<share>` to the
        Files emulator's `<files-root>/<account>/<share>`; None if the URL is neither."""
        parsed = urlparse(url)
        parts = [p for p in parsed.path.split("/") if p]
        host = (parsed.hostname or "").lower()
        if host.endswith(".file.core.windows.net") and len(parts) >= 1:
            account, share, rest = host.split(".", 1)[0], parts[0], parts[1:]
        elif parsed.scheme in ("http", "https") and len(parts) >= 2:
            endpoint = urlparse(self.config.files_endpoint)
            if parsed.port and endpoint.port and parsed.port != endpoint.port:
                return None
            account, share, rest = parts[0], parts[1], parts[2:]
        else:
            return None
        if any(p in ("..", ".") for p in [account, share, *rest]):
            return None
        return (
            Path(self.config.files_root) / account / share / Path(*rest)
            if rest
            else (Path(self.config.files_root) / account / share)
        )

    def mount_volumes(
        self, volumes: dict[str, Any], mount_root: Path, blob_mounts: list[BlobMount] | None = None
    ) -> list[dict[str, Any]]:
        """Create `mount_root/<relativeMountPath>` symlinks; the errors Azure reports for failed mounts.

        Blob containers get a cache directory next to the mount root; their `BlobMount`s are appended
        to `blob_mounts` for the caller to read in (`blobfs.pull`) and write back (`blobfs.push`)."""
        errors: list[dict[str, Any]] = []

        def link(relative: str, target: Path) -> None:
            path = mount_root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink() or path.exists():
                with contextlib.suppress(OSError):
                    path.unlink()
            path.symlink_to(target, target_is_directory=True)

        for share in volumes.get("azureFileShares") or []:
            target = self.resolve_share(share["azureFileUrl"])
            if target is None or not target.is_dir():
                errors.append(
                    {
                        "code": "AzureFileShareMountFailed",
                        "message": f"Cannot mount Azure File share {share['azureFileUrl']}: "
                        + (
                            "the URL is not an Azure Files share URL this emulator serves"
                            if target is None
                            else "the specified share does not exist (ShareNotFound)"
                        ),
                        "details": [
                            {"name": "azureFileUrl", "value": share["azureFileUrl"]},
                            {"name": "relativeMountPath", "value": share["relativeMountPath"]},
                        ],
                    }
                )
                continue
            link(share["relativeMountPath"], target)
        for blob in volumes.get("azureBlobFileSystems") or []:
            target = mount_root.parent / "blobfs" / blob["relativeMountPath"].strip("/")
            target.mkdir(parents=True, exist_ok=True)
            link(blob["relativeMountPath"], target)
            credentials = blob.get("credentials") or {}
            mount = BlobMount(
                account=blob["accountName"],
                container=blob["containerName"],
                relative_mount_path=blob["relativeMountPath"],
                cache=str(target),
                endpoint=account_endpoint(self.config.storage_endpoints.get("blob"), blob["accountName"]),
                key=self.mount_key(blob["accountName"], credentials),
            )
            if blob_mounts is not None:
                blob_mounts.append(mount)
        for ref in volumes.get("fileServers") or []:
            export = self.file_server_export(ref["fileServer"]["id"])
            if export is None:
                errors.append(
                    {
                        "code": "FileServerMountFailed",
                        "message": f"Cannot mount file server {ref['fileServer']['id']}: it does not exist",
                        "details": [{"name": "fileServer", "value": ref["fileServer"]["id"]}],
                    }
                )
                continue
            target = export
            if ref.get("sourceDirectory"):
                target = target / ref["sourceDirectory"].strip("/")
                target.mkdir(parents=True, exist_ok=True)
            link(ref["relativeMountPath"], target)
        for fs in volumes.get("unmanagedFileSystems") or []:
            target = (
                self.config.data_dir
                / "unmanaged"
                / hashlib.sha1(fs["mountCommand"].encode()).hexdigest()[:12]
            )
            target.mkdir(parents=True, exist_ok=True)
            link(fs["relativeMountPath"], target)
        return errors

    def mount_key(self, account: str, credentials: dict[str, Any]) -> str | None:
        """The key a blob mount signs with: the one given; for a Key Vault secret reference (the local
        stack has no Key Vault), or a key the state file did not keep across a restart, the stack's own
        key for that account (none for an account it does not serve)."""
        given = credentials.get("accountKey")
        if given and given != SECRET_PLACEHOLDER:
            return given
        if not credentials.get("accountKeySecretReference") and given != SECRET_PLACEHOLDER:
            return None
        keys = self.config.storage_accounts.get(account)
        return keys[0] if keys else None
