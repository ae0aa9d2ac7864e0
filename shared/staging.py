"""Staging: copy a dataset blob into the Azure File share the clusters mount, server side.

Why server side: a dataset can be many GiB; the function only hands Azure Files a short-lived
read-only SAS URL of the blob (``start_copy_from_url``) and polls the copy, so no dataset byte
passes through the function. The copy is bounded by COPY_TIMEOUT_SECONDS (aborted past it), and
verified: the file's size must equal the blob's, and where the blob has a Content-MD5 the file's
must match (read back in bounded chunks when Azure Files did not carry the MD5 over).

Snapshots: a run's files land in its own directory of the share, ``<share>/_snapshots/<run id>/<relative
path>`` (``snapshot_dir``), which its job reads and nothing writes once the job is submitted. A file an
earlier run already staged from the same blob version is carried into the new snapshot by a copy inside
the share (``carry_file``: Azure Files copy from a file URL), so an unchanged dataset is never read from
blob storage again. ``_snapshots`` cannot be a dataset name (those start with a letter or digit).

Names: a blob ``<dataset>/<relative path>`` lands at ``<snapshot>/<relative path>``. Every
name is checked before anything is written: ``.``/``..`` or empty segments (percent-encoded ones
too, such as ``%2e%2e``), characters Azure Files rejects (``" \\ : | < > * ?`` and control
characters), segments over 255 characters, paths over 2,048 characters, trailing dots or spaces:
each is a ``StagingError`` naming the problem.

The SAS URL is a secret (it grants read access): it is never logged nor put in an error.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from urllib.parse import unquote

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobClient, BlobSasPermissions, ContainerClient, generate_blob_sas
from azure.storage.fileshare import FileSasPermissions, ShareClient, ShareFileClient, generate_file_sas

from shared.errors import staging_error_kind
from shared.registry import SNAPSHOT_ROOT, FileListTooLarge, StagedFile, check_file_list, utcnow

log = logging.getLogger(__name__)

_FORBIDDEN = re.compile(r'["\\:|<>*?\x00-\x1f\x7f]')
_DATASET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAX_SEGMENT = 255
MAX_PATH = 2048
MANIFEST_NAME = "run.json"
VERIFY_CHUNK = 4 * 1024 * 1024


class StagingError(ValueError):
    """A blob cannot be staged: a bad name, a failed or timed-out copy, or a verification mismatch."""

    def __init__(self, message: str, *, code: str = "StagingFailed") -> None:
        super().__init__(message)
        self.code = code

    @property
    def retryable(self) -> bool:
        """A failed or timed-out copy: trying again may succeed (shared.errors)."""
        return staging_error_kind(self.code).retryable

    @property
    def http_status(self) -> int:
        """What the HTTP API answers it with (shared.errors)."""
        return staging_error_kind(self.code).http_status

    @property
    def blob_gone(self) -> bool:
        """The blob was deleted after its upload: there is nothing to stage."""
        return self.code == "BlobNotFound"


class DatasetNotStaged(StagingError):
    """An HTTP start on a dataset that is not on the file share (and no prefix to stage)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="DatasetNotStaged")


class NothingToStage(StagingError):
    """An HTTP start from a prefix with no blob under it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="NothingToStage")


class MissingFiles(StagingError):
    """A run's required file that is in neither the prefix, the share nor the snapshot."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="MissingFiles")


class TooManyFiles(StagingError):
    """A run's file list over the registry's documented limit (``shared.registry.check_file_list``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="FileListTooLarge")


def check_run_file_list(names: list[str], what: str) -> None:
    """The registry's limit on a run's file list, as a staging error (TooManyFiles)."""
    try:
        check_file_list(names, what)
    except FileListTooLarge as exc:
        raise TooManyFiles(str(exc)) from None


@dataclass(frozen=True)
class BlobRef:
    """A dataset blob: ``dataset`` and ``path`` (relative to the dataset directory)."""

    dataset: str
    path: str

    @property
    def blob_name(self) -> str:
        return f"{self.dataset}/{self.path}"


def check_dataset_name(dataset: str) -> str:
    if not _DATASET.match(dataset or "") or dataset.endswith("."):
        raise StagingError(
            f"dataset name {dataset!r} is invalid: 1-63 letters, digits, '-', '_' and '.', starting "
            "with a letter or digit and not ending with '.'",
            code="InvalidDatasetName",
        )
    return dataset


def check_stage_prefix(prefix: str) -> str:
    """A folder of the training container to stage from (``<dataset>[/<path>]``, slashes around it
    dropped), or a StagingError: never the container's root, whose blobs span every dataset."""
    if not isinstance(prefix, str):
        raise StagingError(
            "stage_from_prefix must be a string: a folder of the training container", code="InvalidBlobName"
        )
    folder = prefix.strip("/")
    if not folder:
        raise StagingError(
            "stage_from_prefix must name a folder of the training container, not its root",
            code="InvalidBlobName",
        )
    check_relative_path(folder, what="stage_from_prefix")
    # Training-container blobs are named <dataset>/<path>: the prefix starts with a dataset.
    check_dataset_name(folder.split("/")[0])
    return folder


def check_relative_path(path: str, *, what: str = "path") -> str:
    """A relative path inside a dataset directory that Azure Files accepts, or a StagingError."""
    if not path:
        raise StagingError(f"{what} is empty", code="InvalidBlobName")
    if path.startswith("/"):
        raise StagingError(f"{what} {path!r} is absolute; it must be relative", code="InvalidBlobName")
    if len(path) > MAX_PATH:
        raise StagingError(
            f"{what} is {len(path)} characters; Azure Files allows {MAX_PATH}", code="InvalidBlobName"
        )
    bad = _FORBIDDEN.search(path)
    if bad:
        raise StagingError(
            f"{what} {path!r} contains {bad.group()!r}, which Azure Files does not allow in names",
            code="InvalidBlobName",
        )
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise StagingError(
                f"{what} {path!r} has an empty, '.' or '..' segment: it would escape or blur the dataset"
                " directory",
                code="InvalidBlobName",
            )
        decoded = _percent_decoded(segment)
        if decoded in (".", "..") or "/" in decoded:
            raise StagingError(
                f"{what} {path!r} has a percent-encoded '.', '..' or '/' segment: a layer that decodes"
                " it would escape the dataset directory",
                code="InvalidBlobName",
            )
        if len(segment) > MAX_SEGMENT:
            raise StagingError(
                f"{what} {path!r} has a segment of {len(segment)} characters;"
                f" Azure Files allows {MAX_SEGMENT}",
                code="InvalidBlobName",
            )
        if segment.endswith((".", " ")):
            raise StagingError(
                f"{what} {path!r} has a segment ending in '.' or ' ', which Azure Files rejects",
                code="InvalidBlobName",
            )
    return path


def _percent_decoded(segment: str) -> str:
    """The segment percent-decoded until it no longer changes (a few rounds): what a layer that
    decodes (once or more) would make of it."""
    for _ in range(4):
        decoded = unquote(segment)
        if decoded == segment:
            break
        segment = decoded
    return segment


def parse_blob_name(blob_name: str) -> BlobRef:
    """Split ``<dataset>/<relative path>`` and check both parts; StagingError names the problem."""
    dataset, sep, path = (blob_name or "").partition("/")
    if not sep or not path:
        raise StagingError(
            f"blob name {blob_name!r} is not '<dataset>/<relative path>': a dataset blob must be inside "
            "a dataset folder",
            code="InvalidBlobName",
        )
    check_dataset_name(dataset)
    check_relative_path(path, what=f"blob name {blob_name!r}: path")
    return BlobRef(dataset, path)


# --- SAS ---------------------------------------------------------------------------------------------
def blob_read_sas_url(blob: BlobClient, *, lifetime_seconds: float, account_key: str | None = None) -> str:
    """A read-only SAS URL of ``blob`` valid for ``lifetime_seconds`` (plus clock-skew margins):
    signed with the account key, or with a user delegation key when there is no key."""
    now = datetime.now(UTC)
    start = now - timedelta(minutes=5)
    expiry = now + timedelta(seconds=lifetime_seconds + 300)
    common: dict[str, Any] = {
        "account_name": blob.account_name,
        "container_name": blob.container_name,
        "blob_name": blob.blob_name,
        "permission": BlobSasPermissions(read=True),
        "start": start,
        "expiry": expiry,
    }
    key = account_key
    if key is None:
        credential = getattr(blob, "credential", None)
        key = getattr(credential, "account_key", None)
    if key:
        token = generate_blob_sas(account_key=key, **common)
    else:
        from azure.storage.blob import BlobServiceClient

        account_url = blob.url.split(f"/{blob.container_name}/", 1)[0]
        service = BlobServiceClient(account_url, credential=blob.credential)
        delegation = service.get_user_delegation_key(start, expiry)
        token = generate_blob_sas(user_delegation_key=delegation, **common)
    return f"{blob.url}?{token}"


# --- share -----------------------------------------------------------------------------------------
# Shares and directories this process has created or found existing, keyed by the share's URL: every
# blob of a dataset would otherwise send a PUT for the share and each directory (answered 409). A
# share or directory deleted meanwhile (cleanup) shows up as ShareNotFound/ParentNotFound on the copy,
# which forgets the share's entries (``forget_share``) and creates them again.
_known: set[tuple[str, str]] = set()
_known_lock = threading.Lock()
_MISSING_PARENT_CODES = ("ParentNotFound", "ShareNotFound")
_MAX_KNOWN = 100_000


def _is_known(share: ShareClient, path: str) -> bool:
    return (share.url, path) in _known


def _remember(share: ShareClient, path: str) -> None:
    with _known_lock:
        if len(_known) >= _MAX_KNOWN:  # bounded: forgetting costs one 409 per directory, no more
            _known.clear()
        _known.add((share.url, path))


def forget_share(share: ShareClient) -> None:
    """Forget what this process knows exists on ``share`` (after a ShareNotFound/ParentNotFound)."""
    with _known_lock:
        for key in [k for k in _known if k[0] == share.url]:
            _known.discard(key)


def ensure_share(share: ShareClient) -> None:
    if _is_known(share, ""):
        return
    with contextlib.suppress(ResourceExistsError):
        share.create_share()
    _remember(share, "")


def ensure_directory(share: ShareClient, path: str) -> None:
    """Create ``path`` and its parents on the share (idempotent; remembered per process)."""
    parts = [p for p in path.split("/") if p]
    for i in range(1, len(parts) + 1):
        sub = "/".join(parts[:i])
        if _is_known(share, sub):
            continue
        directory = share.get_directory_client(sub)
        try:
            directory.create_directory()
        except ResourceExistsError:
            pass
        except ResourceNotFoundError:  # the share itself is missing
            forget_share(share)
            ensure_share(share)
            with contextlib.suppress(ResourceExistsError):
                directory.create_directory()
        _remember(share, sub)


def etag_of(props: Any) -> str | None:
    """A blob's ETag without quotes (list and get answers differ in quoting)."""
    etag = getattr(props, "etag", None)
    return etag.strip('"') if etag else None


def _md5_b64(value: Any) -> str | None:
    if not value:
        return None
    if isinstance(value, str):
        return value
    return base64.b64encode(bytes(value)).decode()


def _file_md5(file: ShareFileClient, size: int) -> str:
    """MD5 of a share file, read back in bounded chunks (never the whole file in memory)."""
    digest = hashlib.md5(usedforsecurity=False)
    offset = 0
    while offset < size:
        length = min(VERIFY_CHUNK, size - offset)
        digest.update(file.download_file(offset=offset, length=length).readall())
        offset += length
    return base64.b64encode(digest.digest()).decode()


# --- the copy --------------------------------------------------------------------------------------
def stage_blob(
    container: ContainerClient,
    blob_name: str,
    share: ShareClient,
    *,
    dest_path: str | None = None,
    copy_timeout: float = 600.0,
    account_key: str | None = None,
    poll_interval: float = 1.0,
    props: Any = None,
) -> StagedFile:
    """Copy blob ``blob_name`` of ``container`` to ``dest_path`` on ``share`` (default: the blob's
    own name, i.e. ``<dataset>/<relative path>``; a run's is ``<snapshot>/<relative path>``), server
    side, and verify it. Returns the staged file with ``name`` relative to the destination's top
    directory (the dataset's, or for a snapshot ``_snapshots/<run id>``). Raises StagingError
    (nothing written for a bad name; an incomplete file removed after a failed copy). ``props``: the
    blob's properties when the caller just fetched them (size, MD5 and ETag taken from them)."""
    ref = parse_blob_name(blob_name)
    if dest_path is None:
        dest_path = blob_name
    else:
        dest_root, _, dest_rel = dest_path.partition("/")
        if dest_root != SNAPSHOT_ROOT:
            check_dataset_name(dest_root)
        check_relative_path(dest_rel, what=f"destination {dest_path!r}")
    blob = container.get_blob_client(blob_name)
    if props is None:
        try:
            props = blob.get_blob_properties()
        except ResourceNotFoundError:
            raise StagingError(
                f"blob {blob_name!r} does not exist (deleted after upload?)", code="BlobNotFound"
            ) from None
    size = int(props.size)
    blob_md5 = _md5_b64(props.content_settings.content_md5)
    source_url = blob_read_sas_url(blob, lifetime_seconds=copy_timeout, account_key=account_key)

    parent = dest_path.rpartition("/")[0]
    if parent:
        ensure_directory(share, parent)
    file = share.get_file_client(dest_path)
    started = time.monotonic()
    try:
        try:
            copy = _start_copy(file, source_url)
        except HttpResponseError as exc:
            if getattr(exc, "error_code", None) not in _MISSING_PARENT_CODES:
                raise
            forget_share(share)  # deleted since this process created it (cleanup): create it again
            if parent:
                ensure_directory(share, parent)
            else:
                ensure_share(share)
            copy = _start_copy(file, source_url)
    except HttpResponseError as exc:
        if exc.status_code == 404 and getattr(exc, "error_code", None) == "CannotVerifyCopySource":
            raise StagingError(
                f"blob {blob_name!r} does not exist (deleted after upload?)", code="BlobNotFound"
            ) from None
        raise StagingError(
            f"copy of {blob_name!r} to the file share could not start: {exc.reason or exc.status_code}",
            code="CopyFailed",
        ) from None
    copy_id = copy.get("copy_id")
    delay = 0.05  # small files finish at once; big ones are polled every poll_interval
    status = copy.get("copy_status")
    fprops = None  # the last poll's answer: it also carries the size and MD5 verified below
    while status == "pending":
        if time.monotonic() - started > copy_timeout:
            with contextlib.suppress(HttpResponseError):
                file.abort_copy(cast(str, copy_id))  # a pending copy has an id
            _remove(file)
            raise StagingError(
                f"copy of {blob_name!r} ({size} bytes) did not finish within {copy_timeout:.0f}s "
                "(COPY_TIMEOUT_SECONDS); aborted",
                code="CopyTimeout",
            )
        time.sleep(delay)
        delay = min(delay * 2, poll_interval)
        fprops = file.get_file_properties()
        status = fprops.copy.status
    if status != "success":
        description = (fprops or file.get_file_properties()).copy.status_description or ""
        _remove(file)
        raise StagingError(
            f"copy of {blob_name!r} ended {status}: {description}".rstrip(": "), code="CopyFailed"
        )

    if fprops is None:
        fprops = file.get_file_properties()
    if int(fprops.size) != size:
        _remove(file)
        raise StagingError(
            f"staged {dest_path!r} has {fprops.size} bytes, the blob {size}: the copy is incomplete "
            "or the blob changed during the copy",
            code="VerificationFailed",
        )
    if blob_md5:
        file_md5 = _md5_b64(fprops.content_settings.content_md5) or _file_md5(file, size)
        if file_md5 != blob_md5:
            _remove(file)
            raise StagingError(
                f"staged {dest_path!r} has MD5 {file_md5}, the blob {blob_md5}", code="VerificationFailed"
            )
    log.info(
        "staged %s (%d bytes) to %s in %.1fs",
        blob_name,
        size,
        dest_path,
        time.monotonic() - started,
        extra={"dataset": ref.dataset},
    )
    return StagedFile(
        name=_relative_to_top(dest_path), size=size, md5=blob_md5, etag=etag_of(props), staged_at=utcnow()
    )


def _relative_to_top(dest_path: str) -> str:
    """A destination's path relative to its dataset directory or its run's snapshot directory."""
    if dest_path.startswith(f"{SNAPSHOT_ROOT}/"):
        return dest_path.split("/", 2)[2]
    return dest_path.partition("/")[2]


def file_read_url(file: ShareFileClient, *, lifetime_seconds: float, account_key: str | None) -> str:
    """The URL a copy inside the share reads ``file`` from: with a read-only SAS when there is an
    account key (Azure accepts it from any account), else the plain URL (a source file in the
    destination's own account is authorized by the copy request itself)."""
    if not account_key:
        return file.url
    now = datetime.now(UTC)
    token = generate_file_sas(
        account_name=cast(str, file.account_name),  # a client built from a URL with an account
        share_name=file.share_name,
        file_path=file.file_path,
        account_key=account_key,
        permission=FileSasPermissions(read=True),
        start=now - timedelta(minutes=5),
        expiry=now + timedelta(seconds=lifetime_seconds + 300),
    )
    return f"{file.url}?{token}"


def carry_file(
    share: ShareClient,
    source_path: str,
    dest_path: str,
    staged: StagedFile,
    *,
    copy_timeout: float = 600.0,
    account_key: str | None = None,
    poll_interval: float = 1.0,
) -> StagedFile:
    """Carry a file an earlier snapshot holds (``staged``: what its run recorded of it) into
    ``dest_path`` by a server-side copy inside the share: no byte passes through the function and
    blob storage is not read. Verified like a blob copy (size; MD5 where recorded). StagingError
    (``CarryFailed``) when the source is gone or changed: the caller copies from the blob instead."""
    check_relative_path(source_path, what="carry source")
    check_relative_path(dest_path, what="carry destination")
    source = share.get_file_client(source_path)
    try:
        sprops = source.get_file_properties()
    except ResourceNotFoundError:
        raise StagingError(f"{source_path!r} is no longer on the share", code="CarryFailed") from None
    if int(sprops.size) != staged.size:
        raise StagingError(
            f"{source_path!r} has {sprops.size} bytes, its run recorded {staged.size}", code="CarryFailed"
        )
    parent = dest_path.rpartition("/")[0]
    if parent:
        ensure_directory(share, parent)
    file = share.get_file_client(dest_path)
    source_url = file_read_url(source, lifetime_seconds=copy_timeout, account_key=account_key)
    started = time.monotonic()
    try:
        copy = _same_copy(file, source.url)
        if copy is None:
            try:
                copy = file.start_copy_from_url(source_url)
            except HttpResponseError as exc:
                if exc.status_code != 409 or getattr(exc, "error_code", None) != "PendingCopyOperation":
                    raise
                # Another invocation started this very copy a moment ago: join it. A stale copy
                # from elsewhere (its stager died) is aborted and started afresh.
                copy = _same_copy(file, source.url) or _start_copy(file, source_url)
        status, fprops = copy.get("copy_status"), None
        delay = 0.05
        while status == "pending":
            if time.monotonic() - started > copy_timeout:
                with contextlib.suppress(HttpResponseError):
                    file.abort_copy(cast(str, copy.get("copy_id")))  # a pending copy has an id
                _remove(file)
                raise StagingError(f"copy of {source_path!r} inside the share timed out", code="CarryFailed")
            time.sleep(delay)
            delay = min(delay * 2, poll_interval)
            fprops = file.get_file_properties()
            status = fprops.copy.status
    except HttpResponseError as exc:
        raise StagingError(
            f"copy of {source_path!r} inside the share failed: {exc.reason or exc.status_code}",
            code="CarryFailed",
        ) from None
    fprops = fprops or file.get_file_properties()
    problem = None
    if status != "success":
        problem = f"ended {status}"
    elif int(fprops.size) != staged.size:
        problem = f"has {fprops.size} bytes, expected {staged.size}"
    elif staged.md5 and (_md5_b64(fprops.content_settings.content_md5) or staged.md5) != staged.md5:
        problem = "has another MD5 than its run recorded"
    if problem:
        _remove(file)
        raise StagingError(f"copy of {source_path!r} to {dest_path!r} {problem}", code="CarryFailed")
    log.info("carried %s (%d bytes) to %s inside the share", source_path, staged.size, dest_path)
    return dataclasses.replace(staged, name=_relative_to_top(dest_path), staged_at=utcnow())


def _same_copy(file: ShareFileClient, source_url: str) -> dict[str, Any] | None:
    """The copy of ``source_url`` (compared without its query) that ``file`` already holds or
    receives, as ``start_copy_from_url`` answers: two invocations carrying one file join one copy
    instead of aborting each other's."""
    try:
        props = file.get_file_properties()
    except ResourceNotFoundError:
        return None
    copy = props.copy
    if not copy or not copy.source or copy.source.split("?", 1)[0] != source_url.split("?", 1)[0]:
        return None
    if copy.status not in ("pending", "success"):
        return None
    return {"copy_id": copy.id, "copy_status": copy.status}


def _start_copy(file: ShareFileClient, source_url: str) -> dict[str, Any]:
    """Start the copy; a copy still pending on the file (its stager died, e.g. a host killed mid-staging)
    is aborted first, so a retried trigger always starts a fresh, complete copy."""
    try:
        return file.start_copy_from_url(source_url)
    except HttpResponseError as exc:
        if exc.status_code != 409 or getattr(exc, "error_code", None) != "PendingCopyOperation":
            raise
    with contextlib.suppress(HttpResponseError):
        pending = file.get_file_properties().copy
        if pending.id:
            file.abort_copy(pending.id)
    return file.start_copy_from_url(source_url)


def _remove(file: ShareFileClient) -> None:
    with contextlib.suppress(HttpResponseError):
        file.delete_file()
