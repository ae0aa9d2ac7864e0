"""The backend: shares, directories and files as a plain directory tree, properties in SQLite.

Bytes live at `<data-dir>/shares/<account>/<share>/<path>`, so the Batch AI emulator can mount a share
and jobs can write into it directly; what the API reports (listings, sizes, times) is read from the
disk on every request, so files that appear there without the API are visible at once. Metadata,
content settings, SMB times and copy state live in `<data-dir>/meta/meta.sqlite3`, never in the share
tree. A property record is tied to the inode it was written for, so a file deleted and re-created
behind the emulator's back usually starts with fresh properties (unless the filesystem hands the new
file the same inode number).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from . import leases
from .errors import StorageError

CHUNK = 1024 * 1024
MAX_RANGE_WRITE = 4 * 1024 * 1024  # Azure's limit for one Put Range
MAX_NAME = 255
MAX_PATH = 2048
DEFAULT_QUOTA_GIB = 5120
DEFAULT_ACCESS_TIER = "TransactionOptimized"
# The tiers of a standard (general-purpose v2) account's shares; Premium is only for premium accounts.
ACCESS_TIERS = ("TransactionOptimized", "Hot", "Cool")
MAX_QUOTA_GIB = 102400
FORBIDDEN_CHARS = frozenset('"\\:|<>*?/')
SHARE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9]))*$")
METADATA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CONTENT_FIELDS = (
    "content_type",
    "content_encoding",
    "content_language",
    "cache_control",
    "content_disposition",
    "content_md5",
)


def validate_share_name(share: str) -> None:
    if not 3 <= len(share) <= 63:
        raise StorageError(
            "OutOfRangeInput",
            message="The specified resource name length is not within the permissible limits.",
        )
    if not SHARE_NAME.match(share):
        raise StorageError("InvalidResourceName")


def split_path(path: str) -> list[str]:
    """The components of a directory or file path, or InvalidResourceName for what Azure rejects.

    `.` and `..` segments, empty segments, the characters `"\\:|<>*?`, control characters, names made
    only of dots, components over 255 characters and paths over 2048 characters are all refused, so
    a path can never name anything outside its share.
    """
    if path.endswith("/"):
        path = path[:-1]
    if not path:
        return []
    if len(path) > MAX_PATH:
        raise StorageError("InvalidResourceName", message=f"The path is longer than {MAX_PATH} characters.")
    components = path.split("/")
    for name in components:
        if not name or set(name) == {"."}:
            raise StorageError(
                "InvalidResourceName",
                message="The specifed resource name contains invalid characters: empty, '.' or '..' "
                "path segments are not allowed.",
            )
        if len(name) > MAX_NAME:
            raise StorageError(
                "InvalidResourceName",
                message=f"The specifed resource name is longer than {MAX_NAME} characters.",
            )
        if any(ch in FORBIDDEN_CHARS or ord(ch) < 0x20 for ch in name):
            raise StorageError("InvalidResourceName")
    return components


SNAPSHOT_SEP = "@"  # `<share>@<snapshot id>`: how the backend names a share snapshot
SNAPSHOT_ID = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{7}Z$")


def validate_snapshot_id(snapshot: str) -> None:
    if not SNAPSHOT_ID.match(snapshot):
        raise StorageError(
            "InvalidQueryParameterValue",
            message=f"The share snapshot {snapshot!r} is not a snapshot time (yyyy-MM-ddTHH:mm:ss.fffffffZ).",
            details={"QueryParameterName": "sharesnapshot", "QueryParameterValue": snapshot},
        )


def snapshot_of(share: str) -> str | None:
    return share.partition(SNAPSHOT_SEP)[2] or None


def validate_metadata(metadata: list[tuple[str, str]]) -> None:
    for name, _value in metadata:
        if not METADATA_NAME.match(name):
            raise StorageError(
                "InvalidMetadata",
                message=f"The metadata name {name!r} is not a valid C# identifier.",
            )


def now_ns() -> int:
    return time.time_ns()


def etag_of(*parts: Any) -> str:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=7).hexdigest().upper()
    return f'"0x8D{digest}"'


@dataclass
class ShareInfo:
    name: str
    quota: int
    metadata: list[tuple[str, str]]
    last_modified: float
    etag: str
    access_tier: str = DEFAULT_ACCESS_TIER
    access_tier_changed: float | None = None
    lease: dict[str, Any] | None = None
    snapshot: str | None = None  # the share snapshot's id, for a snapshot


@dataclass
class EntryInfo:
    """What the API reports for one directory or file: disk facts merged with stored properties."""

    kind: str  # "file" or "directory"
    name: str
    size: int
    etag: str
    last_modified: float
    creation_ns: int
    last_write_ns: int
    change_ns: int
    file_id: str
    parent_id: str
    attributes: str
    metadata: list[tuple[str, str]] = field(default_factory=list)
    content: dict[str, str] = field(default_factory=dict)
    copy: dict[str, Any] | None = None
    lease: dict[str, Any] | None = None


class MetaStore:
    """Property records in one SQLite file; a lock serialises access from the server's threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS shares (account TEXT, share TEXT, doc TEXT,"
            " PRIMARY KEY (account, share))"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS entries (account TEXT, share TEXT, path TEXT, doc TEXT,"
            " PRIMARY KEY (account, share, path))"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS service (account TEXT PRIMARY KEY, doc TEXT)")

    def get_service(self, account: str) -> dict[str, Any]:
        with self._lock:
            row = self._db.execute("SELECT doc FROM service WHERE account=?", (account,)).fetchone()
        return json.loads(row[0]) if row else {}

    def put_service(self, account: str, doc: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO service VALUES (?, ?)", (account, json.dumps(doc)))

    def get_share(self, account: str, share: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT doc FROM shares WHERE account=? AND share=?", (account, share)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def put_share(self, account: str, share: str, doc: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO shares VALUES (?, ?, ?)", (account, share, json.dumps(doc))
            )

    def delete_share(self, account: str, share: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM shares WHERE account=? AND share=?", (account, share))
            self._db.execute("DELETE FROM entries WHERE account=? AND share=?", (account, share))

    def get(self, account: str, share: str, path: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT doc FROM entries WHERE account=? AND share=? AND path=?", (account, share, path)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, account: str, share: str, path: str, doc: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?)", (account, share, path, json.dumps(doc))
            )

    def delete(self, account: str, share: str, path: str) -> None:
        with self._lock:
            self._db.execute(
                "DELETE FROM entries WHERE account=? AND share=? AND path=?", (account, share, path)
            )

    def move(self, account: str, share: str, old: str, new: str) -> None:
        """Re-key the records of `old` and everything under it to `new`."""
        with self._lock:
            self._db.execute(
                "UPDATE entries SET path = ? || substr(path, ?) WHERE account=? AND share=?"
                " AND (path = ? OR substr(path, 1, ?) = ?)",
                (new, len(old) + 1, account, share, old, len(old) + 1, old + "/"),
            )

    def entries_of(self, account: str, share: str) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT path, doc FROM entries WHERE account=? AND share=?", (account, share)
            ).fetchall()
        return [(p, json.loads(d)) for p, d in rows]

    def all_entries(self) -> list[tuple[str, str, str, dict[str, Any]]]:
        with self._lock:
            rows = self._db.execute("SELECT account, share, path, doc FROM entries").fetchall()
        return [(a, s, p, json.loads(d)) for a, s, p, d in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass
class CopySource:
    """An opened copy source: its length, its content properties and a stream of its bytes."""

    url: str
    length: int
    stream: IO[bytes]
    content: dict[str, str]
    metadata: list[tuple[str, str]]


class CopyJob(threading.Thread):
    """Streams a copy source into the destination file in the background, chunk by chunk."""

    def __init__(
        self,
        backend: FilesBackend,
        key: tuple[str, str, str],
        target: Path,
        copy_id: str,
        source: CopySource,
        ino: int,
    ) -> None:
        super().__init__(name=f"copy-{copy_id[:8]}", daemon=True)
        self.backend = backend
        self.key = key
        self.target = target
        self.copy_id = copy_id
        self.source = source
        self.ino = ino
        self.copied = 0
        self.abort_requested = threading.Event()
        # An injected failure (see Faults) stops the copy halfway, as a broken source connection would.
        self.fail_at = source.length // 2 if backend.faults.copy_fails() else None

    def run(self) -> None:
        status, description = "success", ""
        try:
            with open(self.target, "r+b") as out:
                while True:
                    if self.abort_requested.is_set():
                        status = "aborted"
                        break
                    if self.fail_at is not None and self.copied >= self.fail_at:
                        raise OSError("injected fault: the connection to the copy source was reset")
                    chunk = self.source.stream.read(CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    self.copied += len(chunk)
                    if self.backend.copy_chunk_delay:
                        time.sleep(self.backend.copy_chunk_delay)
            if status == "success" and self.copied != self.source.length:
                status = "failed"
                description = (
                    f"500 InternalError Copy failed: the source ended after {self.copied} of "
                    f"{self.source.length} bytes."
                )
        except Exception as exc:  # the copy's failure is reported in its status, as Azure does
            status, description = "failed", f"500 InternalError Copy failed: {exc}"
        finally:
            with contextlib.suppress(Exception):
                self.source.stream.close()
        self.backend._finish_copy(self, status, description)


class Faults:
    """Injected trouble, set through `/_emulator/faults`: a fraction of API requests answered with an
    error (503 ServerBusy by default, which the SDKs retry), added latency, and a fraction of copies that
    end `failed`. Seeded, so a failing test can be replayed."""

    FIELDS = ("error_rate", "error_status", "latency_ms", "copy_failure_rate", "seed")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.configure({})

    def configure(self, settings: dict[str, Any]) -> None:
        unknown = set(settings) - set(self.FIELDS)
        if unknown:
            raise ValueError(f"unknown fault settings {sorted(unknown)}; known: {', '.join(self.FIELDS)}")
        error_rate = float(settings.get("error_rate", 0.0))
        copy_failure_rate = float(settings.get("copy_failure_rate", 0.0))
        error_status = int(settings.get("error_status", 503))
        latency_ms = float(settings.get("latency_ms", 0.0))
        if not (0 <= error_rate <= 1 and 0 <= copy_failure_rate <= 1):
            raise ValueError("error_rate and copy_failure_rate must be fractions between 0 and 1")
        if error_status not in (500, 503) or latency_ms < 0:
            raise ValueError("error_status must be 500 or 503 and latency_ms not negative")
        with self._lock:
            self.error_rate, self.error_status = error_rate, error_status
            self.latency_ms, self.copy_failure_rate = latency_ms, copy_failure_rate
            self.seed = settings.get("seed")
            self._random = random.Random(self.seed)

    def settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}

    def request_error(self) -> StorageError | None:
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000)
        with self._lock:
            if not self.error_rate or self._random.random() >= self.error_rate:
                return None
        if self.error_status == 503:
            return StorageError(
                "ServerBusy",
                status=503,
                message="The server is busy. (injected fault)",
                headers={"Retry-After": "1"},
            )
        return StorageError(
            "InternalError", message="The server encountered an internal error. (injected fault)"
        )

    def copy_fails(self) -> bool:
        with self._lock:
            return bool(self.copy_failure_rate) and self._random.random() < self.copy_failure_rate


class FilesBackend:
    """All state of the emulated File service for the accounts it serves."""

    def __init__(self, data_dir: Path, copy_chunk_delay: float = 0.0) -> None:
        self.faults = Faults()
        self.data_dir = data_dir.resolve()
        self.shares_root = self.data_dir / "shares"
        self.shares_root.mkdir(parents=True, exist_ok=True)
        # Share snapshots: read-only copies of a share's tree, outside the tree a cluster mounts.
        self.snapshots_root = self.data_dir / "snapshots"
        self.meta = MetaStore(self.data_dir / "meta" / "meta.sqlite3")
        self.copy_chunk_delay = copy_chunk_delay
        self.copies: dict[tuple[str, str, str], CopyJob] = {}
        self._lock = threading.RLock()
        self._fail_interrupted_copies()

    def close(self) -> None:
        for job in list(self.copies.values()):
            job.abort_requested.set()
        self.meta.close()

    def _fail_interrupted_copies(self) -> None:
        """Copies that were pending when the emulator stopped cannot resume: report them failed."""
        for account, share, path, doc in self.meta.all_entries():
            copy = doc.get("copy")
            if copy and copy.get("status") == "pending":
                copy.update(status="failed", completion_ns=now_ns(),
                            description="500 InternalError Copy failed: the emulator restarted during the copy.")  # fmt: skip  # noqa: E501
                self.meta.put(account, share, path, doc)

    # --- paths -----------------------------------------------------------------------------------
    def share_dir(self, account: str, share: str, must_exist: bool = True) -> Path:
        """A share's directory; `<share>@<snapshot id>` names a share snapshot's (read-only) copy."""
        name, _, snapshot = share.partition(SNAPSHOT_SEP)
        validate_share_name(name)
        if snapshot:
            validate_snapshot_id(snapshot)
            if not (self.shares_root / account / name).is_dir():
                raise StorageError("ShareNotFound")
            directory = self.snapshots_root / account / name / snapshot
            if not directory.is_dir():
                raise StorageError("ShareSnapshotNotFound")
            return directory
        directory = self.shares_root / account / share
        if must_exist and not directory.is_dir():
            raise StorageError("ShareNotFound")
        return directory

    def locate(self, account: str, share: str, path: str) -> tuple[Path, list[str]]:
        """The on-disk path for `path` in the share, checked to stay inside the share directory.

        Azure Files is case-preserving but case-insensitive: `MNIST/x` names the entry created as
        `mnist/x`. Each component is matched to an existing entry of its directory ignoring case, so
        the returned path and components (the metadata key) are the entry's own spelling; a name that
        matches nothing keeps the caller's spelling (a create preserves it)."""
        components = split_path(path)
        root = self.share_dir(account, share)
        components = _existing_spelling(root, components)
        target = root.joinpath(*components)
        real_root = root.resolve()
        real = target.resolve()
        if real != real_root and real_root not in real.parents:
            raise StorageError(
                "InvalidResourceName", message="The specified path resolves outside of its share."
            )
        return target, components

    def key_of(self, account: str, share: str, path: str) -> str:
        """The metadata key of `path`: its components as the existing entry spells them."""
        return "/".join(self.locate(account, share, path)[1])

    # --- shares ----------------------------------------------------------------------------------
    def create_share(
        self,
        account: str,
        share: str,
        quota: int | None,
        metadata: list[tuple[str, str]],
        access_tier: str | None = None,
    ) -> ShareInfo:
        validate_metadata(metadata)
        directory = self.share_dir(account, share, must_exist=False)
        with self._lock:
            if directory.is_dir():
                raise StorageError("ShareAlreadyExists")
            directory.mkdir(parents=True)
            doc = {
                "quota": quota or DEFAULT_QUOTA_GIB,
                "metadata": metadata,
                "changed": now_ns(),
                "ino": directory.stat().st_ino,
            }
            if access_tier:
                doc["access_tier"] = access_tier
                doc["access_tier_changed"] = doc["changed"]
            self.meta.put_share(account, share, doc)
        return self.get_share(account, share)

    def _share_doc(self, account: str, share: str, directory: Path) -> dict[str, Any]:
        doc = self.meta.get_share(account, share)
        st = directory.stat()
        if doc is None or doc.get("ino") != st.st_ino:
            doc = {"quota": DEFAULT_QUOTA_GIB, "metadata": [], "changed": st.st_mtime_ns, "ino": st.st_ino}
        return doc

    def get_share(self, account: str, share: str) -> ShareInfo:
        directory = self.share_dir(account, share)
        doc = self._share_doc(account, share, directory)
        return ShareInfo(
            name=share.split(SNAPSHOT_SEP, 1)[0],
            quota=doc["quota"],
            metadata=[tuple(p) for p in doc["metadata"]],
            last_modified=doc["changed"] / 1e9,
            etag=etag_of("share", doc["changed"], doc["ino"]),
            access_tier=doc.get("access_tier", DEFAULT_ACCESS_TIER),
            access_tier_changed=doc["access_tier_changed"] / 1e9 if doc.get("access_tier_changed") else None,
            lease=doc.get("lease"),
            snapshot=snapshot_of(share),
        )

    def update_share(
        self,
        account: str,
        share: str,
        quota: int | None = None,
        metadata: list[tuple[str, str]] | None = None,
        access_tier: str | None = None,
    ) -> ShareInfo:
        directory = self.share_dir(account, share)
        with self._lock:
            doc = self._share_doc(account, share, directory)
            if quota is not None:
                doc["quota"] = quota
            if access_tier is not None and access_tier != doc.get("access_tier", DEFAULT_ACCESS_TIER):
                doc["access_tier"] = access_tier
                doc["access_tier_changed"] = now_ns()
            if metadata is not None:
                validate_metadata(metadata)
                doc["metadata"] = metadata
            doc["changed"] = now_ns()
            self.meta.put_share(account, share, doc)
        return self.get_share(account, share)

    def delete_share(self, account: str, share: str, include_snapshots: bool = False) -> None:
        """Delete a share (refused while it has snapshots, unless they go too) or one snapshot."""
        directory = self.share_dir(account, share)
        with self._lock:
            if snapshot_of(share):
                shutil.rmtree(directory)
                self.meta.delete_share(account, share)
                return
            snapshots = self.list_snapshots(account, share)
            if snapshots and not include_snapshots:
                raise StorageError("ShareHasSnapshots")
            for key, job in list(self.copies.items()):
                if key[:2] == (account, share):
                    job.abort_requested.set()
            shutil.rmtree(directory)
            self.meta.delete_share(account, share)
            for snapshot in snapshots:
                self.meta.delete_share(account, f"{share}{SNAPSHOT_SEP}{snapshot}")
            shutil.rmtree(self.snapshots_root / account / share, ignore_errors=True)

    def list_snapshots(self, account: str, share: str) -> list[str]:
        base = self.snapshots_root / account / share
        return sorted(e.name for e in os.scandir(base) if SNAPSHOT_ID.match(e.name)) if base.is_dir() else []

    def create_snapshot(self, account: str, share: str, metadata: list[tuple[str, str]] | None) -> str:
        """Copy the share's tree and properties into a snapshot named by its creation time."""
        if metadata is not None:
            validate_metadata(metadata)
        directory = self.share_dir(account, share)
        with self._lock:
            stamp = time.time_ns()
            while True:
                snapshot = (
                    time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp // 1_000_000_000))
                    + f".{(stamp % 1_000_000_000) // 100:07d}Z"
                )
                target = self.snapshots_root / account / share / snapshot
                if not target.exists():
                    break
                stamp += 100
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{snapshot}.partial")
            shutil.copytree(directory, partial, symlinks=True)
            name = f"{share}{SNAPSHOT_SEP}{snapshot}"
            doc = dict(self._share_doc(account, share, directory))
            doc.pop("lease", None)
            doc["ino"] = partial.stat().st_ino
            if metadata is not None:
                doc["metadata"] = metadata
            for path, entry in self.meta.entries_of(account, share):
                copied = partial / path
                with contextlib.suppress(OSError):
                    if entry.get("ino") == (directory / path).stat().st_ino:
                        entry = {k: v for k, v in entry.items() if k not in ("lease", "copy")}
                        self.meta.put(account, name, path, {**entry, "ino": copied.stat().st_ino})
            os.rename(partial, target)
            self.meta.put_share(account, name, doc)
        return snapshot

    def list_shares(
        self, account: str, prefix: str, marker: str, max_results: int
    ) -> tuple[list[ShareInfo], str]:
        base = self.shares_root / account
        names = sorted(
            entry.name
            for entry in (os.scandir(base) if base.is_dir() else [])
            if entry.is_dir(follow_symlinks=False)
            and SHARE_NAME.match(entry.name)
            and 3 <= len(entry.name) <= 63
        )
        names = [n for n in names if n.startswith(prefix) and n >= marker]
        page, rest = names[:max_results], names[max_results:]
        return [self.get_share(account, n) for n in page], (rest[0] if rest else "")

    def share_lease(
        self, account: str, share: str, action: str, request: dict[str, str | None]
    ) -> tuple[int, dict[str, str], ShareInfo]:
        directory = self.share_dir(account, share)
        with self._lock:
            doc = self._share_doc(account, share, directory)
            lease, status, headers = leases.apply(doc.get("lease"), action, request, time.time(), "share")
            doc["lease"] = lease
            self.meta.put_share(account, share, doc)
        return status, headers, self.get_share(account, share)

    def check_share_lease(self, account: str, share: str, given: str | None, needs_lease: bool) -> None:
        if snapshot_of(share):
            return
        leases.check(self.get_share(account, share).lease, given, time.time(), "share", needs_lease)

    def file_lease(
        self, account: str, share: str, path: str, action: str, request: dict[str, str | None]
    ) -> tuple[int, dict[str, str], EntryInfo]:
        self.get_entry(account, share, path, "file")
        target, components = self.locate(account, share, path)
        key = "/".join(components)
        with self._lock:
            doc = self._doc(account, share, key, target.stat())
            lease, status, headers = leases.apply(doc.get("lease"), action, request, time.time(), "file")
            doc["lease"] = lease
            self.meta.put(account, share, key, doc)
        return status, headers, self._info(account, share, key, target, doc=doc)

    def check_file_lease(
        self, account: str, share: str, path: str, given: str | None, needs_lease: bool
    ) -> None:
        """Refuse a file operation that a lease forbids; a file that does not exist has no lease."""
        target, components = self.locate(account, share, path)
        try:
            st = target.stat()
        except OSError:
            return
        doc = self._doc(account, share, "/".join(components), st)
        leases.check(doc.get("lease"), given, time.time(), "file", needs_lease)

    def service_properties(self, account: str) -> dict[str, Any]:
        """The account's File service properties as set: top-level element name -> its XML."""
        return self.meta.get_service(account)

    def set_service_properties(self, account: str, elements: dict[str, str]) -> None:
        """Replace the given top-level elements; the ones a request leaves out keep their setting."""
        with self._lock:
            doc = self.meta.get_service(account)
            doc.update(elements)
            self.meta.put_service(account, doc)

    def share_usage(self, account: str, share: str) -> int:
        directory = self.share_dir(account, share)
        total = 0
        for root, _dirs, files in os.walk(directory):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, name)).st_size
        return total

    # --- entries ---------------------------------------------------------------------------------
    def _doc(self, account: str, share: str, path: str, st: os.stat_result) -> dict[str, Any]:
        doc = self.meta.get(account, share, path)
        if doc is None or doc.get("ino") != st.st_ino:
            return {"ino": st.st_ino, "metadata": [], "content": {}}
        return doc

    def _info(
        self,
        account: str,
        share: str,
        path: str,
        target: Path,
        st: os.stat_result | None = None,
        doc: dict[str, Any] | None = None,
    ) -> EntryInfo:
        st = st or target.stat()
        doc = doc if doc is not None else self._doc(account, share, path, st)
        kind = "directory" if os.path.isdir(target) else "file"
        changed = doc.get("changed", 0)
        copy = doc.get("copy")
        job = self.copies.get((account, share, path))
        if copy and job is not None and copy.get("id") == job.copy_id and copy.get("status") == "pending":
            copy = dict(copy, progress=f"{job.copied}/{job.source.length}")
        try:
            parent_id = str(target.parent.stat().st_ino) if path else "0"
        except OSError:
            parent_id = "0"
        return EntryInfo(
            kind=kind,
            name=target.name if path else "",
            size=st.st_size if kind == "file" else 0,
            etag=etag_of(st.st_mtime_ns, st.st_size, changed, st.st_ino),
            last_modified=max(st.st_mtime_ns, changed) / 1e9,
            creation_ns=doc.get("creation") or min(st.st_mtime_ns, st.st_ctime_ns),
            last_write_ns=doc.get("last_write") or st.st_mtime_ns,
            change_ns=max(st.st_ctime_ns, changed),
            file_id=str(st.st_ino),
            parent_id=parent_id,
            attributes=doc.get("attributes") or ("Directory" if kind == "directory" else "Archive"),
            metadata=[tuple(p) for p in doc.get("metadata", [])],
            content=dict(doc.get("content", {})),
            copy=copy,
            lease=doc.get("lease"),
        )

    def get_entry(self, account: str, share: str, path: str, kind: str) -> EntryInfo:
        """Properties of a directory (`kind="directory"`, path "" is the share root) or a file."""
        target, components = self.locate(account, share, path)
        try:
            st = target.stat()
        except FileNotFoundError:
            if components and not target.parent.is_dir():
                raise StorageError("ParentNotFound") from None
            raise StorageError("ResourceNotFound") from None
        except NotADirectoryError:
            raise StorageError("ParentNotFound") from None
        is_dir = os.path.isdir(target)
        if (kind == "directory") != is_dir:
            raise StorageError("ResourceNotFound")
        return self._info(account, share, "/".join(components), target, st)

    def create_directory(
        self, account: str, share: str, path: str, metadata: list[tuple[str, str]], props: dict[str, Any]
    ) -> EntryInfo:
        validate_metadata(metadata)
        target, components = self.locate(account, share, path)
        if not components:
            raise StorageError("ResourceAlreadyExists")
        with self._lock:
            if not target.parent.is_dir():
                raise StorageError("ParentNotFound")
            if target.exists():
                raise StorageError("ResourceAlreadyExists")
            target.mkdir()
            key = "/".join(components)
            doc = {
                "ino": target.stat().st_ino,
                "metadata": metadata,
                "content": {},
                "changed": now_ns(),
                **props,
            }
            self.meta.put(account, share, key, doc)
        return self._info(account, share, key, target, doc=doc)

    def delete_directory(self, account: str, share: str, path: str) -> None:
        self.get_entry(account, share, path, "directory")
        target, components = self.locate(account, share, path)
        if not components:
            raise StorageError("InvalidUri", message="The root directory of a share cannot be deleted.")
        with self._lock:
            try:
                target.rmdir()
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise StorageError("DirectoryNotEmpty") from None
                raise
            self.meta.delete(account, share, "/".join(components))

    def update_entry(
        self,
        account: str,
        share: str,
        path: str,
        kind: str,
        metadata: list[tuple[str, str]] | None = None,
        props: dict[str, Any] | None = None,
        content: dict[str, str] | None = None,
        size: int | None = None,
    ) -> EntryInfo:
        """Set metadata (replacing it), SMB properties, content settings (replacing them) or size."""
        self.get_entry(account, share, path, kind)
        target, components = self.locate(account, share, path)
        key = "/".join(components)
        with self._lock:
            if size is not None:
                self._refuse_while_copying(account, share, key)
                os.truncate(target, size)
            st = target.stat()
            doc = self._doc(account, share, key, st)
            if metadata is not None:
                validate_metadata(metadata)
                doc["metadata"] = metadata
            if content is not None:
                doc["content"] = content
            if props:
                doc.update(props)
            doc["changed"] = now_ns()
            self.meta.put(account, share, key, doc)
        return self._info(account, share, key, target, doc=doc)

    def list_directory(
        self, account: str, share: str, path: str, prefix: str, marker: str, max_results: int
    ) -> tuple[EntryInfo, list[EntryInfo], str]:
        """One page of a directory's entries in name order: (directory itself, entries, next marker)."""
        directory = self.get_entry(account, share, path, "directory")
        target, components = self.locate(account, share, path)
        real_root = self.share_dir(account, share).resolve()
        names = []
        with os.scandir(target) as entries:
            for entry in entries:
                if not entry.name.startswith(prefix) or entry.name < marker:
                    continue
                try:
                    split_path(entry.name)
                except StorageError:
                    continue  # a name Azure cannot hold (written on disk directly): not addressable
                if entry.is_symlink():
                    real = Path(entry.path).resolve()
                    if real_root not in real.parents or not real.exists():
                        continue
                names.append(entry.name)
        names.sort()
        page, rest = names[:max_results], names[max_results:]
        infos = []
        for name in page:
            child = "/".join([*components, name])
            with contextlib.suppress(FileNotFoundError):  # deleted while listing
                infos.append(self._info(account, share, child, target / name))
        return directory, infos, (rest[0] if rest else "")

    def rename(
        self, account: str, share: str, source: str, destination: str, kind: str, replace: bool
    ) -> EntryInfo:
        """Move a file or directory (with its subtree's properties) within one share."""
        self.get_entry(account, share, source, kind)
        source_path, source_parts = self.locate(account, share, source)
        target, parts = self.locate(account, share, destination)
        if not source_parts or not parts:
            raise StorageError("InvalidResourceName", message="The root directory cannot be renamed.")
        old, new = "/".join(source_parts), "/".join(parts)
        if kind == "directory" and (new + "/").startswith(old + "/"):
            raise StorageError("InvalidResourceName", message="A directory cannot move into itself.")
        with self._lock:
            self._refuse_while_copying(account, share, old)
            if not target.parent.is_dir():
                raise StorageError("ParentNotFound")
            if target.exists() and old != new:
                if not replace or target.is_dir() or kind == "directory":
                    raise StorageError("ResourceAlreadyExists")
                target.unlink()
                self.meta.delete(account, share, new)
            os.rename(source_path, target)
            self.meta.move(account, share, old, new)
        return self.get_entry(account, share, new, kind)

    # --- files -----------------------------------------------------------------------------------
    def _refuse_while_copying(self, account: str, share: str, key: str) -> None:
        if (account, share, key) in self.copies:
            raise StorageError("PendingCopyOperation")

    def create_file(
        self,
        account: str,
        share: str,
        path: str,
        size: int,
        metadata: list[tuple[str, str]],
        content: dict[str, str],
        props: dict[str, Any],
    ) -> EntryInfo:
        """Create (or replace) a file of `size` bytes, all zero: Azure's Create File."""
        validate_metadata(metadata)
        target, components = self.locate(account, share, path)
        if not components:
            raise StorageError("InvalidUri")
        key = "/".join(components)
        with self._lock:
            if not target.parent.is_dir():
                raise StorageError("ParentNotFound")
            if target.is_dir():
                raise StorageError("ResourceAlreadyExists")
            self._refuse_while_copying(account, share, key)
            with open(target, "wb") as handle:
                handle.truncate(size)
            ino = target.stat().st_ino
            doc = {"ino": ino, "metadata": metadata, "content": content, "changed": now_ns(), **props}
            old = self.meta.get(account, share, key)
            if old and old.get("ino") == ino and old.get("lease"):
                doc["lease"] = old["lease"]  # a lease outlives Create File over its file
            self.meta.put(account, share, key, doc)
        return self._info(account, share, key, target, doc=doc)

    def file_path(self, account: str, share: str, path: str) -> tuple[Path, EntryInfo]:
        info = self.get_entry(account, share, path, "file")
        target, _ = self.locate(account, share, path)
        return target, info

    def write_range(self, account: str, share: str, path: str, start: int, data: bytes) -> EntryInfo:
        target, info = self.file_path(account, share, path)
        key = self.key_of(account, share, path)
        self._refuse_while_copying(account, share, key)
        if start + len(data) > info.size:
            raise StorageError("InvalidRange")
        fd = os.open(target, os.O_WRONLY)
        try:
            os.pwrite(fd, data, start)
        finally:
            os.close(fd)
        return self._info(account, share, key, target)

    def clear_range(self, account: str, share: str, path: str, start: int, end: int) -> EntryInfo:
        target, info = self.file_path(account, share, path)
        key = self.key_of(account, share, path)
        self._refuse_while_copying(account, share, key)
        if end >= info.size:
            raise StorageError("InvalidRange")
        zeros = bytes(min(CHUNK, end - start + 1))
        fd = os.open(target, os.O_WRONLY)
        try:
            offset = start
            while offset <= end:
                n = min(len(zeros), end - offset + 1)
                os.pwrite(fd, zeros[:n], offset)
                offset += n
        finally:
            os.close(fd)
        return self._info(account, share, key, target)

    def data_ranges(self, target: Path, size: int) -> list[tuple[int, int]]:
        """Extents holding data (holes skipped where the filesystem reports them), inclusive ends."""
        ranges = []
        fd = os.open(target, os.O_RDONLY)
        try:
            offset = 0
            while offset < size:
                try:
                    start = os.lseek(fd, offset, os.SEEK_DATA)
                except OSError:
                    break
                end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
                if start >= size:
                    break
                ranges.append((start, end - 1))
                offset = end
        finally:
            os.close(fd)
        return ranges

    def delete_file(self, account: str, share: str, path: str) -> None:
        target, _ = self.file_path(account, share, path)
        key = self.key_of(account, share, path)
        with self._lock:
            job = self.copies.get((account, share, key))
            if job is not None:
                job.abort_requested.set()
                job.join(timeout=10)
            target.unlink()
            self.meta.delete(account, share, key)

    # --- copy ------------------------------------------------------------------------------------
    def start_copy(
        self, account: str, share: str, path: str, source: CopySource, metadata: list[tuple[str, str]] | None
    ) -> EntryInfo:
        """Create the destination at the source's length and stream the source into it in the background."""
        if metadata is not None:
            validate_metadata(metadata)
        target, components = self.locate(account, share, path)
        if not components:
            raise StorageError("InvalidUri")
        key = "/".join(components)
        with self._lock:
            if not target.parent.is_dir():
                raise StorageError("ParentNotFound")
            if target.is_dir():
                raise StorageError("ResourceAlreadyExists")
            self._refuse_while_copying(account, share, key)
            with open(target, "wb") as handle:
                handle.truncate(source.length)
            copy_id = str(uuid.uuid4())
            ino = target.stat().st_ino
            doc = {
                "ino": ino,
                "metadata": metadata if metadata is not None else source.metadata,
                "content": source.content,
                "changed": now_ns(),
                "copy": {
                    "id": copy_id,
                    "status": "pending",
                    "source": source.url,
                    "progress": f"0/{source.length}",
                    "description": "",
                },
            }
            self.meta.put(account, share, key, doc)
            job = CopyJob(self, (account, share, key), target, copy_id, source, ino)
            self.copies[(account, share, key)] = job
            job.start()
        return self._info(account, share, key, target, doc=doc)

    def _finish_copy(self, job: CopyJob, status: str, description: str) -> None:
        account, share, key = job.key
        with self._lock:
            if self.copies.get(job.key) is job:
                del self.copies[job.key]
            try:
                st = job.target.stat()
            except OSError:
                return  # deleted (with its share) while copying
            if st.st_ino != job.ino:
                return
            if status == "aborted":
                os.truncate(job.target, 0)  # Azure leaves an aborted destination empty
            doc = self._doc(account, share, key, st)
            copy = doc.get("copy") or {}
            if copy.get("id") != job.copy_id:
                return
            copy.update(
                status=status,
                description=description,
                completion_ns=now_ns(),
                progress=f"{job.copied}/{job.source.length}",
            )
            doc["copy"] = copy
            doc["changed"] = now_ns()
            self.meta.put(account, share, key, doc)

    def abort_copy(self, account: str, share: str, path: str, copy_id: str) -> None:
        info = self.get_entry(account, share, path, "file")
        key = self.key_of(account, share, path)
        job = self.copies.get((account, share, key))
        if job is None or not info.copy or info.copy.get("status") != "pending":
            raise StorageError("NoPendingCopyOperation")
        if job.copy_id != copy_id:
            raise StorageError("CopyIdMismatch")
        job.abort_requested.set()
        job.join(timeout=30)

    def open_local_source(self, account: str, share: str, path: str, url: str) -> CopySource:
        """A copy source on this emulator itself: read straight from the disk."""
        target, info = self.file_path(account, share, path)
        return CopySource(
            url=url, length=info.size, stream=open(target, "rb"), content=info.content, metadata=info.metadata
        )


def _existing_spelling(root: Path, components: list[str]) -> list[str]:
    """`components` with each one replaced by the spelling of the entry of its directory that equals
    it ignoring case (Azure Files compares names case-insensitively), as far as such entries exist."""
    resolved: list[str] = []
    directory = root
    for i, name in enumerate(components):
        if not (directory / name).exists() and directory.is_dir():
            folded = name.casefold()
            with os.scandir(directory) as entries:
                match = next((e.name for e in entries if e.name.casefold() == folded), None)
            if match is None:
                return resolved + components[i:]
            name = match
        resolved.append(name)
        directory = directory / name
    return resolved


def read_chunks(
    target: Path, start: int, length: int, on_close: Callable[[], None] | None = None
) -> Iterator[bytes]:
    """`length` bytes of a file from `start`, in chunks of at most 1 MiB: bounded memory for any size."""
    with open(target, "rb") as handle:
        handle.seek(start)
        remaining = length
        while remaining > 0:
            chunk = handle.read(min(CHUNK, remaining))
            if not chunk:
                # The file shrank under us (a job truncated it): pad so Content-Length stays true.
                chunk = bytes(min(CHUNK, remaining))
            remaining -= len(chunk)
            yield chunk
    if on_close:
        on_close()
