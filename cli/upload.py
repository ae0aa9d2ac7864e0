"""Upload a dataset folder to the training-data container, the manifest last, with a progress bar.

The manifest goes last because ingest submits the job once `<dataset>/run.json` has arrived and every
file it lists is staged: uploading it first would only make ingest wait; uploading it last means the
run starts the moment the data is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from cli.client import CliError, Settings

MANIFEST = "run.json"
# What Azure Files and the ingest function accept in a path segment (see shared/runspec.py).
_BAD_CHARS = set('\\:*?"<>|')


@dataclass(frozen=True)
class UploadItem:
    path: Path
    blob_name: str
    size: int


def plan_upload(directory: Path, dataset: str) -> list[UploadItem]:
    """Every regular file under `directory` as `<dataset>/<relative path>`, sorted, the manifest last."""
    if not directory.is_dir():
        raise CliError(f"{directory} is not a directory")
    check_dataset_name(dataset)
    items = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        if any(part.startswith(".") for part in relative.split("/")):
            continue  # hidden files and folders (.git, .DS_Store) are not part of a dataset
        if _BAD_CHARS & set(relative):
            raise CliError(f'{relative}: file names may not contain any of \\ : * ? " < > |')
        items.append(UploadItem(path, f"{dataset}/{relative}", path.stat().st_size))
    if not items:
        raise CliError(f"{directory} holds no files to upload")
    items.sort(key=lambda item: item.blob_name == f"{dataset}/{MANIFEST}")  # stable: manifest last
    return items


def check_dataset_name(dataset: str) -> None:
    """A dataset is one directory on the share and one blob prefix: a plain name, nothing to escape with."""
    if (
        not dataset
        or len(dataset) > 255
        or dataset in (".", "..")
        or "/" in dataset
        or _BAD_CHARS & set(dataset)
    ):
        raise CliError(f'invalid dataset name {dataset!r}: one path segment, without / \\ : * ? " < > |')


def md5_of(path: Path) -> bytes:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.digest()


class ProgressBar:
    """One line redrawn in place on a terminal; a line per file otherwise (logs, CI, pipes)."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.total = max(total, 1)
        self.stream = stream
        self.width = width
        self.interactive = stream.isatty()
        self.started = time.monotonic()
        self.last_draw = 0.0

    def update(self, done: int, label: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and (not self.interactive or now - self.last_draw < 0.1):
            return
        self.last_draw = now
        fraction = min(done / self.total, 1.0)
        filled = int(self.width * fraction)
        rate = done / max(now - self.started, 1e-6) / 1e6
        line = (f"[{'#' * filled}{'.' * (self.width - filled)}] {fraction:6.1%} "
                f"{done / 1e6:8.1f}/{self.total / 1e6:.1f} MB {rate:6.1f} MB/s  {label}")  # fmt: skip
        if self.interactive:
            self.stream.write("\r" + line[:160].ljust(100))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()


def upload_dataset(settings: Settings, directory: Path, dataset: str, stream: TextIO = sys.stderr,
                   on_file: Callable[[UploadItem], None] | None = None) -> list[UploadItem]:  # fmt: skip
    """Upload every file (with its Content-MD5, so ingest can verify what it stages), manifest last."""
    from azure.core.exceptions import AzureError, ResourceExistsError
    from azure.storage.blob import BlobServiceClient, ContentSettings

    settings.require("AZURE_STORAGE_CONNECTION_STRING")
    items = plan_upload(directory, dataset)
    try:
        service = BlobServiceClient.from_connection_string(settings.connection_string or "")
    except ValueError as exc:
        raise CliError(f"AZURE_STORAGE_CONNECTION_STRING is not a valid connection string: {exc}") from None
    container = service.get_container_client(settings.container)
    bar = ProgressBar(sum(item.size for item in items), stream)
    done = 0
    try:
        with contextlib.suppress(ResourceExistsError):
            container.create_container()
        for item in items:
            content_type = (
                "application/json" if item.blob_name.endswith(".json") else "application/octet-stream"
            )
            content = ContentSettings(content_type=content_type, content_md5=bytearray(md5_of(item.path)))
            base = done

            def hook(current: int, _total: int | None, base: int = base, name: str = item.blob_name) -> None:
                bar.update(base + current, name)

            with item.path.open("rb") as data:
                container.upload_blob(
                    item.blob_name, data, length=item.size, overwrite=True, content_settings=content,
                    progress_hook=hook, max_concurrency=2,
                )  # fmt: skip
            done += item.size
            bar.update(done, item.blob_name, force=True)
            if on_file is not None:
                on_file(item)
    except AzureError as exc:
        bar.close()
        message = " ".join(str(getattr(exc, "message", None) or exc).split())[:300]
        raise CliError(f"upload to container {settings.container!r} failed: {message}") from None
    bar.close()
    return items
