"""Ingest: what happens when a dataset blob arrives, and how runs are started and torn down.

The blob trigger calls ``ingest_blob(name)`` for each uploaded or changed blob
``<dataset>/<relative path>`` of the training container (at least once per blob version: triggers are
replayed, so every step here is idempotent):

1. The dataset's *current staging run* is found or created (``RunRegistry.claim_staging_run``: a
   pointer entity swapped by compare-and-swap, so twenty blobs of one dataset arriving at once make
   exactly one run). A blob version (name + ETag) already recorded in the dataset's latest run is a
   replay and changes nothing; an upload after that run was submitted starts a new run.
2. The first upload of a run starts creating what it needs (resource group, workspace, the file
   share and dataset directory, the cluster, reused when one with the same settings exists) without
   waiting for the cluster to provision.
3. A data blob is copied server side into the run's snapshot, ``<share>/_snapshots/<run id>/<path>``
   (``shared.staging``), and recorded; ``<dataset>/run.json`` is parsed (``shared.runspec``) and
   becomes the run's spec. It is never copied to the share (it may hold secret environment variables).
4. When the manifest is in and every file it requires is staged with the blob's current ETag (or,
   with no list, every blob under the prefix when the manifest arrived), the run moves on with a
   compare-and-swap (staging -> provisioning, or -> queued when the cluster is steady) and only the
   winner creates the experiment and the job (deterministic names: a retry hits the same job).

Files a new run needs that an earlier run of the dataset already staged (same blob ETag, still on
the share) are carried into its snapshot by a copy inside the share, never read from blob storage
again. A run's snapshot is its own: later uploads go to later runs' snapshots, so nothing changes what
a submitted job reads. A blob that is no required file of a run that was submitted while it was being
copied is taken out of that snapshot again (it was never part of the run) and starts the next run.

A bad blob name or manifest fails the run's staging with an error naming the problem; nothing is
written for it. ``start_run`` (HTTP API) and ``cancel_run`` are the API's entry points.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from shared import callbacks
from shared.compute_port import ComputeBackend, ComputeError
from shared.registry import (
    ACTIVE_STATES,
    CANCELLED,
    FAILED,
    PROVISIONING,
    QUEUED,
    STAGING,
    TERMINAL_STATES,
    ConcurrencyError,
    FileListTooLarge,
    RunNotFound,
    RunRecord,
    RunRegistry,
    StagedFile,
    TransitionRejected,
    check_file_list,
    new_run_id,
    parse_time,
    utcnow,
)
from shared.runspec import RunSpec, RunSpecError, SpecContext, parse_run_spec, parse_run_spec_json
from shared.staging import (
    MANIFEST_NAME,
    StagingError,
    carry_file,
    check_dataset_name,
    check_relative_path,
    check_stage_prefix,
    ensure_directory,
    ensure_share,
    etag_of,
    parse_blob_name,
    stage_blob,
)

log = logging.getLogger(__name__)

CARRY_OVER_RUNS = 10  # how many earlier runs of a dataset are searched for files to carry over


class DatasetNotStaged(StagingError):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="DatasetNotStaged")


class NothingToStage(StagingError):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="NothingToStage")


class MissingFiles(StagingError):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="MissingFiles")


class TooManyFiles(StagingError):
    """A run's file list over the registry's documented limit (``shared.registry.check_file_list``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="FileListTooLarge")


def _check_file_list(names: list[str], what: str) -> None:
    try:
        check_file_list(names, what)
    except FileListTooLarge as exc:
        raise TooManyFiles(str(exc)) from None


@dataclass
class IngestResult:
    """What one blob event did (for logs and tests)."""

    action: str  # staged, manifest, replay, joined, ignored, failed
    run_id: str | None = None
    state: str | None = None
    submitted: bool = False
    message: str = ""


@dataclass
class Services:
    """Everything ingest and monitor talk to, built once from settings (or given by tests)."""

    settings: Any
    registry: RunRegistry
    container: Any  # azure.storage.blob.ContainerClient of TRAINING_CONTAINER
    share: Any  # azure.storage.fileshare.ShareClient of FILE_SHARE_NAME
    cloud: ComputeBackend  # the training service (shared.compute_port), built by build_services
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def account_key(self) -> str | None:
        key = self.settings.storage.account_key
        return key.get_secret_value() if key is not None else None

    @property
    def spec_context(self) -> SpecContext:
        return SpecContext.from_settings(self.settings)


_services: Services | None = None
_services_lock = threading.Lock()


def build_services(settings: Any) -> Services:
    """The one place the app's services are built: ingest, the monitor, the API and cleanup all
    receive these (the SDK clients come from shared.clients, the compute backend from the settings)."""
    from shared import clients
    from shared.compute_port import build_backend

    return Services(
        settings=settings,
        registry=RunRegistry(clients.runs_table(settings)),
        container=clients.training_container(settings),
        share=clients.share_client(settings),
        cloud=build_backend(settings),
    )


def services() -> Services:
    """The app's services from its settings (cached per process; built again when the settings are
    read again, e.g. after ``reset_settings``)."""
    global _services
    from shared.settings import get_settings

    settings = get_settings()
    if _services is None or _services.settings is not settings:
        with _services_lock:
            if _services is None or _services.settings is not settings:
                _services = build_services(settings)
    return _services


def reset_services() -> None:
    global _services
    with _services_lock:
        _services = None


# --- the blob trigger -----------------------------------------------------------------------------------
def ingest_blob(blob_name: str, svc: Services | None = None) -> IngestResult:
    """Handle one uploaded/changed blob of the training container (idempotent; see module doc)."""
    svc = svc or services()
    try:
        return _ingest(blob_name, svc)
    except _Adopted as adopted:  # an HTTP start made the run its own while this invocation worked
        return _joined(adopted.rec, blob_name)


def _ingest(blob_name: str, svc: Services) -> IngestResult:
    if blob_name.endswith("/"):
        # A folder marker (zero-byte `ds/dir/` blob some upload tools write): not a file of the dataset.
        return IngestResult("ignored", message="folder marker blob")
    try:
        ref = parse_blob_name(blob_name)
    except StagingError as exc:
        return _bad_blob(svc, blob_name, exc)
    blob = svc.container.get_blob_client(blob_name)
    try:
        props = blob.get_blob_properties()
    except ResourceNotFoundError:
        log.info("blob %s is gone; nothing to ingest", blob_name, extra={"dataset": ref.dataset})
        return IngestResult("ignored", message="blob deleted")
    etag = etag_of(props)

    pointer = _seen_run(svc, ref.dataset)
    latest = pointer[2]
    if latest is not None and _staged_by_request(latest, ref.dataset):
        return _joined(latest, blob_name)
    if latest is not None:
        seen = latest.staged(ref.path)
        replay = (seen is not None and seen.etag == etag) or (
            ref.path == MANIFEST_NAME and latest.manifest_etag == etag
        )
        if replay and latest.state != STAGING:
            log.info(
                "blob %s (ETag %s) was already ingested by run %s; replay ignored",
                blob_name,
                etag,
                latest.run_id,
                extra=latest.log_extra(),
            )
            return IngestResult("replay", latest.run_id, latest.state)
        if replay and latest.state == STAGING:
            submitted = check_ready(latest.run_id, svc)
            return IngestResult("replay", latest.run_id, latest.state, submitted=submitted)
        if ref.path != MANIFEST_NAME and _failed_by_current_manifest(svc, latest):
            log.info(
                "blob %s: run %s failed on the dataset's current run.json; a new run.json starts over",
                blob_name,
                latest.run_id,
                extra=latest.log_extra(),
            )
            return IngestResult("ignored", latest.run_id, latest.state, message="the manifest failed")

    rec, created = svc.registry.claim_staging_run(
        ref.dataset, staging_deadline=_staging_deadline(svc), source="blob", seen=pointer
    )
    if _staged_by_request(rec, ref.dataset):
        return _joined(rec, blob_name)
    extra = rec.log_extra()
    if created:
        log.info("first upload of dataset %s: run %s created", ref.dataset, rec.run_id, extra=extra)
    spec: RunSpec | None = None
    spec_etag: str | None = None
    if ref.path != MANIFEST_NAME and rec.spec is None and rec.manifest_etag is None:
        # The manifest may be there already (uploaded first, or this run follows a submitted one
        # of the same dataset): the run takes it now rather than waiting for a new upload of it.
        manifest = svc.container.get_blob_client(f"{ref.dataset}/{MANIFEST_NAME}")
        try:
            manifest_props = manifest.get_blob_properties()
        except ResourceNotFoundError:
            manifest_props = None
        if manifest_props is not None:
            try:
                spec, rec = _take_manifest(svc, rec, manifest_props, prepare=False)
                spec_etag = etag_of(manifest_props)
            except TransitionRejected:
                return _ingest(blob_name, svc)  # submitted meanwhile (see below): decide again
            except TooManyFiles as exc:
                manifest_etag = etag_of(manifest_props)
                _fail_staging(svc, rec, exc.code, str(exc), folder=ref.dataset, manifest_etag=manifest_etag)
                return IngestResult("failed", rec.run_id, FAILED, message=str(exc))
            except RunSpecError as exc:
                message = f"{ref.dataset}/{MANIFEST_NAME}: {exc}"
                _fail_staging(
                    svc,
                    rec,
                    "InvalidManifest",
                    message,
                    folder=ref.dataset,
                    manifest_etag=etag_of(manifest_props),
                )
                return IngestResult("failed", rec.run_id, FAILED, message=str(exc))

    if ref.path == MANIFEST_NAME:
        try:
            spec, rec = _take_manifest(svc, rec, props, prepare=False)
        except TransitionRejected:
            # The run left staging after this delivery claimed it: another delivery (a data blob
            # reads the manifest too) took this manifest and submitted it. Decided again from the
            # top: the same manifest version is then a replay, a newer one starts the next run.
            return _ingest(blob_name, svc)
        except TooManyFiles as exc:
            _fail_staging(svc, rec, exc.code, str(exc), folder=ref.dataset, manifest_etag=etag)
            return IngestResult("failed", rec.run_id, FAILED, message=str(exc))
        except RunSpecError as exc:
            _fail_staging(
                svc, rec, "InvalidManifest", f"{blob_name}: {exc}", folder=ref.dataset, manifest_etag=etag
            )
            return IngestResult("failed", rec.run_id, FAILED, message=str(exc))
        preparing = _start_preparing(svc, rec, spec) if needs_preparation(svc, rec, spec) else None
        try:
            submitted = check_ready(rec.run_id, svc, spec, etag)
        finally:
            if preparing is not None:
                preparing.join()
        return IngestResult("manifest", rec.run_id, STAGING, submitted=submitted)

    # The first upload of a run (or the first with its manifest) starts creating the cluster and
    # experiment while this blob is copied: provisioning overlaps the rest of the upload.
    preparing = None
    if (created or spec is not None) and needs_preparation(svc, rec, spec):
        preparing = _start_preparing(svc, rec, spec)
    try:
        token = _copy_claimed(svc, rec, ref.path, etag)
        if token is None:
            # A duplicate delivery of this blob version copied it (or is copying it): this one joins
            # and writes nothing, so no second copy can reach a snapshot whose job already started.
            submitted = check_ready(rec.run_id, svc)
            return IngestResult("replay", rec.run_id, rec.state, submitted=submitted, message="joined a copy")
        try:
            with svc.registry.renewing_file_copies(rec.run_id, [(ref.path, etag, token)]):
                staged = stage_blob(
                    svc.container,
                    blob_name,
                    svc.share,
                    dest_path=f"{_data_dir(rec)}/{ref.path}",
                    copy_timeout=svc.settings.copy_timeout_seconds,
                    account_key=svc.account_key,
                    props=props,
                )
        except BaseException as exc:
            svc.registry.release_file_copy(rec.run_id, ref.path, etag)  # a retry or a waiter copies
            if not isinstance(exc, StagingError):
                raise
            if exc.code in ("BlobNotFound",):
                return IngestResult("ignored", rec.run_id, rec.state, message=str(exc))
            if exc.code in ("CopyTimeout", "CopyFailed"):
                raise  # transient: let the trigger retry (and poison after its retries)
            _fail_staging(svc, rec, exc.code, str(exc), folder=ref.dataset)
            return IngestResult("failed", rec.run_id, FAILED, message=str(exc))
        svc.registry.add_staged_files(rec.run_id, [staged])
        if _arrived_after_submission(svc, rec.run_id, ref.path):
            return _ingest(blob_name, svc)  # the run left without it: this upload starts the next run
        # Submission does not wait for the preparation: its creates are idempotent, and a job only
        # needs its experiment and cluster to exist, not to be provisioned.
        submitted = check_ready(rec.run_id, svc, spec, spec_etag)
    finally:
        if preparing is not None:
            preparing.join()  # nothing outlives the invocation
    return IngestResult("staged", rec.run_id, STAGING, submitted=submitted)


def _copy_claimed(svc: Services, rec: RunRecord, path: str, etag: str | None) -> str | None:
    """The claim token when this delivery copies blob version ``etag`` of ``path`` into the run's
    snapshot: it holds the registry's create-only claim on it. Else it waits until the holder
    recorded the file, or the run left staging (None: nothing to write), or the holder gave the claim
    up or died (it stopped renewing it): then this delivery takes it over."""
    while not (token := svc.registry.claim_file_copy(rec.run_id, path, etag)):
        current = svc.registry.get(rec.run_id)
        seen = current.staged(path)
        if (seen is not None and seen.etag == etag) or current.state != STAGING:
            log.info(
                "run %s: %s (ETag %s) is copied by another delivery; this one joins",
                rec.run_id,
                path,
                etag,
                extra=rec.log_extra(),
            )
            return None
        time.sleep(0.2 + secrets.randbelow(300) / 1000)
    return token


def _data_dir(rec: RunRecord) -> str:
    """The share directory a run's files go to and its job reads: its snapshot (runs recorded before
    snapshots existed keep the dataset's directory)."""
    return rec.snapshot or rec.dataset


def _arrived_after_submission(svc: Services, run_id: str, path: str) -> bool:
    """Whether the run was submitted while ``path`` was being copied into its snapshot and does not
    require it: then the file is no part of the run, and it is taken out of the snapshot and the
    record again (a submitted run's snapshot holds what its submission saw)."""
    rec = svc.registry.get(run_id)  # with its files: the required list is one entity per file
    if rec.state == STAGING or path in (rec.expected_files or []):
        return False
    with contextlib.suppress(HttpResponseError):
        svc.share.get_file_client(f"{_data_dir(rec)}/{path}").delete_file()
    svc.registry.remove_staged_files(run_id, [path])
    log.info(
        "run %s was submitted without %s, which arrived meanwhile: it goes to the next run",
        run_id,
        path,
        extra=rec.log_extra(),
    )
    return True


# Errors of a dataset's manifest itself: every run taking that run.json would fail the same way.
MANIFEST_FAILURES = frozenset({"InvalidManifest", "FileListTooLarge"})


def _failed_by_current_manifest(svc: Services, latest: RunRecord) -> bool:
    """Whether the dataset's latest run failed on its run.json as it still is: a data blob arriving
    then would only make another run that fails the same way (12,000 of them for a dataset too large
    to list), so it starts none; uploading a new run.json starts over."""
    if latest.state != FAILED or not latest.errors or latest.errors[-1].get("code") not in MANIFEST_FAILURES:
        return False
    try:
        props = svc.container.get_blob_client(f"{latest.dataset}/{MANIFEST_NAME}").get_blob_properties()
    except ResourceNotFoundError:
        return False
    return latest.manifest_etag is not None and etag_of(props) == latest.manifest_etag


def _started_from_folder(rec: RunRecord, folder: str) -> bool:
    """Whether ``rec`` was started over HTTP staging the training container's top-level ``folder``
    (its dataset's own, or another): it supersedes the trigger's run for the blobs (and the
    manifest) that were in the folder when it started."""
    return rec.source == "api" and (rec.stage_from_prefix or "").strip("/") == folder


def _staged_by_request(rec: RunRecord, folder: str) -> bool:
    """Whether ``rec`` is a staging run started over HTTP from ``folder``: its request stages every
    blob under the folder (and submits), so the trigger's invocations for them join it."""
    return rec.state == STAGING and _started_from_folder(rec, folder)


def _joined(rec: RunRecord, blob_name: str) -> IngestResult:
    log.info(
        "blob %s: staged by run %s (started over HTTP from the dataset's folder); nothing to do",
        blob_name,
        rec.run_id,
        extra=rec.log_extra(),
    )
    return IngestResult("joined", rec.run_id, rec.state, message=f"staged by run {rec.run_id}")


def _start_preparing(svc: Services, rec: RunRecord, spec: RunSpec | None) -> threading.Thread:
    """Prepare the run's infrastructure in a thread (the caller joins it before returning)."""
    thread = threading.Thread(
        target=_prepare_infrastructure, args=(svc, rec, spec), name=f"prepare-{rec.run_id}", daemon=True
    )
    thread.start()
    return thread


def _seen_run(svc: Services, dataset: str) -> tuple[str | None, str | None, RunRecord | None]:
    """(run id, pointer ETag, run or None) of the dataset's latest ingest run: what
    ``claim_staging_run(seen=...)`` takes, so the claim does not read the pointer and run again."""
    run_id, pointer_etag = svc.registry.current_run_id(dataset)
    if run_id is None:
        return None, None, None
    try:
        return run_id, pointer_etag, svc.registry.get(run_id)
    except RunNotFound:
        return run_id, pointer_etag, None


def _staging_deadline(svc: Services) -> str:
    deadline = datetime.now(UTC) + timedelta(minutes=svc.settings.staging_timeout_minutes)
    return deadline.isoformat(timespec="seconds").replace("+00:00", "Z")


def _bad_blob(svc: Services, blob_name: str, exc: StagingError) -> IngestResult:
    """A blob whose name cannot be staged: fail its dataset's staging run (if the dataset part is
    usable) with the error; nothing is written to the share."""
    dataset, sep, _ = (blob_name or "").partition("/")
    try:
        if not sep:
            raise exc
        check_dataset_name(dataset)
    except StagingError:
        log.warning("blob %r ignored: %s", blob_name[:300], exc)
        return IngestResult("ignored", message=str(exc))
    pointer = _seen_run(svc, dataset)
    latest = pointer[2]
    if latest is not None and _staged_by_request(latest, dataset):
        return _joined(latest, blob_name)
    if (
        latest is not None
        and latest.state == FAILED
        and any(e.get("blob") == blob_name for e in latest.errors)
    ):
        return IngestResult("replay", latest.run_id, latest.state, message=str(exc))
    rec, _ = svc.registry.claim_staging_run(
        dataset, staging_deadline=_staging_deadline(svc), source="blob", seen=pointer
    )
    _fail_staging(svc, rec, exc.code, str(exc), blob=blob_name, folder=dataset)
    return IngestResult("failed", rec.run_id, FAILED, message=str(exc))


def _fail_staging(
    svc: Services,
    rec: RunRecord,
    code: str,
    message: str,
    *,
    blob: str | None = None,
    folder: str | None = None,
    **changes: Any,
) -> None:
    """Fail a staging run. ``folder``: the trigger's dataset folder, when the trigger fails it: a
    run an HTTP start from that folder adopted meanwhile is not failed (raises _Adopted)."""
    error = {"code": code, "message": message, "time": utcnow()}
    if blob is not None:
        error["blob"] = blob

    def not_adopted(r: RunRecord) -> None:
        if folder is not None and _started_from_folder(r, folder):
            raise _Adopted(r)

    try:
        failed = svc.registry.transition(
            rec.run_id,
            FAILED,
            STAGING,
            guard=not_adopted,
            add_error=error,
            callback_pending=bool(rec.callback_url),
            **changes,
        )
        log.warning("run %s staging failed: %s", rec.run_id, message, extra=failed.log_extra())
    except TransitionRejected as rejected:
        log.info(
            "run %s not failed for %s: it is already %s",
            rec.run_id,
            code,
            rejected.current.state,
            extra=rec.log_extra(),
        )


def callback_fields(svc: Services, spec: RunSpec, *, issued: bool) -> dict[str, Any]:
    """The run's callback as the registry keeps it: the URL with its query redacted, and the seal
    (the salt of the run's own secret, the full URL encrypted): ``shared.callbacks``. ``issued``:
    the run's secret goes to the starting request (HTTP) and may not be issued again."""
    if not spec.callback_url:
        return {"callback_url": None, "callback_seal": None}
    key = svc.settings.callback_signing_secret
    seal = callbacks.seal_callback(spec.callback_url, key.get_secret_value() if key else None)
    seal["issued"] = issued
    return {"callback_url": callbacks.redact_url(spec.callback_url), "callback_seal": seal}


def _take_manifest(
    svc: Services, rec: RunRecord, props: Any, *, prepare: bool = True
) -> tuple[RunSpec, RunRecord]:
    """Parse run.json (``props``: its blob properties, already fetched) and make it the run's spec
    (idempotent per manifest ETag); with ``prepare``, start creating the spec's cluster when it is
    not the one the run has. Returns the spec and the run as written (``rec``'s file lists kept)."""
    spec = read_manifest(svc, rec.dataset, props)
    if rec.manifest_etag == etag_of(props) and rec.spec is not None:
        return spec, rec
    expected = spec.required_files()
    if not spec.files:
        # No list: every blob under the prefix when the manifest arrived (plus the script).
        present = [
            name
            for name in _dataset_blobs(svc, rec.dataset)
            if name != MANIFEST_NAME and not name.endswith("/")
        ]
        expected = sorted(set(expected) | set(present))
    _check_file_list(expected, f"{rec.dataset}/{MANIFEST_NAME}'s dataset (no 'files' list: every blob)")
    spec_json = spec.to_json_dict()
    callback = callback_fields(svc, spec, issued=False)

    def apply(r: RunRecord) -> None:
        if _started_from_folder(r, rec.dataset):
            raise _Adopted(r)  # an HTTP start made the run its own meanwhile: its spec stays
        r.spec = spec_json
        r.expected_files = expected
        r.manifest_etag = etag_of(props)
        r.callback_url, r.callback_seal = callback["callback_url"], callback["callback_seal"]

    try:
        updated = svc.registry.update(rec.run_id, apply, expected_state=STAGING, current=rec)
    except TransitionRejected as exc:
        if _started_from_folder(exc.current, rec.dataset):
            raise _Adopted(exc.current) from None  # adopted and already submitted
        raise
    updated.staged_files, updated.output_files = list(rec.staged_files), list(rec.output_files)
    log.info("run %s: manifest taken (%d required file(s))", rec.run_id, len(expected), extra=rec.log_extra())
    if prepare and needs_preparation(svc, updated, spec):
        _prepare_infrastructure(svc, updated, spec=spec)
    return spec, updated


def needs_preparation(svc: Services, rec: RunRecord, spec: RunSpec | None) -> bool:
    """Whether the run's cluster (for ``spec``, or the defaults) is not requested yet."""
    if spec is None:
        return rec.cluster is None
    return rec.cluster != svc.cloud.cluster_name(spec, rec.dataset)


def read_manifest(svc: Services, dataset: str, props: Any = None) -> RunSpec:
    """Download and parse ``<dataset>/run.json`` (small: bounded by runspec's manifest limit).
    ``props``: the blob's properties when the caller has them (saves fetching them again)."""
    from shared.runspec import MAX_MANIFEST_BYTES

    blob = svc.container.get_blob_client(f"{dataset}/{MANIFEST_NAME}")
    try:
        size = (props if props is not None else blob.get_blob_properties()).size
    except ResourceNotFoundError:
        raise RunSpecError(
            [{"field": "(root)", "message": f"{dataset}/{MANIFEST_NAME} does not exist"}]
        ) from None
    if size > MAX_MANIFEST_BYTES:
        raise RunSpecError([{"field": "(root)", "message": f"larger than {MAX_MANIFEST_BYTES} bytes"}])
    text = blob.download_blob(offset=0, length=MAX_MANIFEST_BYTES + 1).readall()
    # An uploaded manifest: what MANIFEST_COMMANDS_ALLOWED refuses applies (not to HTTP starts).
    spec = parse_run_spec_json(text, dataclasses.replace(svc.spec_context, from_manifest=True))
    svc.cloud.check_spec(spec)  # what the compute backend cannot map fails the manifest, naming it
    return spec


def _dataset_blobs(svc: Services, dataset: str) -> dict[str, Any]:
    """Relative path -> blob properties of every blob under ``<dataset>/`` (one list call per page)."""
    prefix = f"{dataset}/"
    return {b.name[len(prefix) :]: b for b in svc.container.list_blobs(name_starts_with=prefix)}


def _prepare_infrastructure(svc: Services, rec: RunRecord, spec: RunSpec | None) -> None:
    """Start creating what the run needs, without waiting for the cluster to provision. Failures
    are logged and recorded: submission and the monitor try again."""
    spec = spec or parse_run_spec({}, svc.spec_context)
    try:
        ensure_share(svc.share)
        ensure_directory(svc.share, _data_dir(rec))
        cluster = svc.cloud.ensure_cluster(spec, rec.dataset)
        svc.cloud.request_experiment(rec.dataset)  # off the submission's critical path
    except (ComputeError, HttpResponseError, OSError) as exc:
        log.warning(
            "run %s: preparing the cluster failed (will retry): %s", rec.run_id, exc, extra=rec.log_extra()
        )
        return
    with contextlib.suppress(TransitionRejected):
        svc.registry.update(
            rec.run_id, expected_state=STAGING, current=rec, cluster=cluster.name, cluster_id=cluster.id
        )


# --- readiness and submission -------------------------------------------------------------------------
def check_ready(
    run_id: str, svc: Services | None = None, spec: RunSpec | None = None, spec_etag: str | None = None
) -> bool:
    """If the staging run has its manifest and every required file staged, submit it. Returns True
    when this call submitted the job (exactly one caller wins the compare-and-swap). ``spec`` is a
    spec the caller already parsed: for ingest runs it is used only when ``spec_etag`` is the
    manifest version the run took (else the manifest is read again)."""
    svc = svc or services()
    rec = svc.registry.get(run_id)
    if rec.state != STAGING or rec.spec is None or rec.expected_files is None:
        return False
    missing = missing_files(svc, rec)
    if missing:
        return False
    if spec is not None and rec.source == "blob" and (spec_etag is None or spec_etag != rec.manifest_etag):
        spec = None
    if spec is None:
        spec = submission_spec(svc, rec)
        if spec is None:
            return False
    return submit(svc, rec, spec)


def submission_spec(svc: Services, rec: RunRecord) -> RunSpec | None:
    """The spec to create a run's job with, secrets included: the manifest the run took (read again:
    the registry keeps secret values masked), or the recorded spec when it holds no secret value.
    None when not possible now; a run whose spec cannot be had again is failed with the reason.
    A sweep's trial: its parent's spec with the trial's parameters (shared.sweep.trial_spec)."""
    if rec.parent_id is not None and isinstance(rec.sweep, dict):
        from shared import sweep as sweeps

        parent_spec = submission_spec(svc, svc.registry.get(rec.parent_id, with_files=False))
        if parent_spec is None or parent_spec.sweep is None:
            return None
        trial = sweeps.Trial(int(rec.sweep["index"]), dict(rec.sweep["parameters"]))
        return sweeps.trial_spec(parent_spec, trial, max_nodes=svc.spec_context.max_nodes_per_run)
    if rec.source == "blob":
        blob = svc.container.get_blob_client(f"{rec.dataset}/{MANIFEST_NAME}")
        try:
            props = blob.get_blob_properties()
            if etag_of(props) == rec.manifest_etag:
                return read_manifest(svc, rec.dataset, props)
        except ResourceNotFoundError:
            pass
        except RunSpecError as exc:
            _fail(svc, rec, "InvalidManifest", str(exc))
            return None
        if rec.state == STAGING:
            return None  # a newer manifest is on its way through its own trigger
    spec = parse_run_spec(rec.spec or {}, svc.spec_context)
    masked = _inline_secrets(spec)
    if masked and _touched_within(rec, SECRETS_HELD_SECONDS):
        return None  # the request that holds the secrets may still be submitting the job itself
    if masked:
        _fail(
            svc,
            rec,
            "SpecUnavailable",
            f"the job must be created again but its secret environment variables ({', '.join(masked)}) "
            "are not kept by the registry; start the run again",
        )
        return None
    return spec


def _fail(svc: Services, rec: RunRecord, code: str, message: str) -> None:
    """Fail an active run (any non-terminal state) with an error."""
    error = {"code": code, "message": message, "time": utcnow()}
    try:
        svc.registry.transition(
            rec.run_id, FAILED, ACTIVE_STATES, add_error=error, callback_pending=bool(rec.callback_url)
        )
        log.warning("run %s failed: %s", rec.run_id, message, extra=rec.log_extra())
    except TransitionRejected:
        pass


def missing_files(svc: Services, rec: RunRecord) -> list[str]:
    """Required files not yet staged with the blob's current version; carries over files an earlier
    run of the dataset staged (same blob ETag) when they are still on the share."""
    expected = rec.expected_files or []
    staged_by_name = {f.name: f for f in rec.staged_files}
    if rec.source != "blob":
        return [name for name in expected if name not in staged_by_name]
    blobs = _dataset_blobs(svc, rec.dataset)
    missing: list[str] = []
    carry: list[tuple[str, StagedFile]] = []
    earlier: dict[str, tuple[str, StagedFile]] | None = None
    for name in expected:
        blob = blobs.get(name)
        staged = staged_by_name.get(name)
        if blob is None:
            missing.append(name)
            continue
        if staged is not None and staged.etag == etag_of(blob):
            continue
        if staged is None:
            if earlier is None:
                earlier = _earlier_staged(svc, rec)
            old = earlier.get(name)
            if old is not None and old[1].etag == etag_of(blob) and old[1].size == int(blob.size):
                carry.append(old)
                continue
        missing.append(name)
    if carry:
        # A delivery of the same blob version may be copying it right now: the carry takes the same
        # create-only claim, so exactly one of them writes the file (the other counts it missing).
        mine = []
        claims = []
        for item in carry:
            token = svc.registry.claim_file_copy(rec.run_id, item[1].name, item[1].etag)
            if token:
                mine.append(item)
                claims.append((item[1].name, item[1].etag, token))
            else:
                missing.append(item[1].name)
        try:
            with svc.registry.renewing_file_copies(rec.run_id, claims):
                carried = _carry(svc, rec, mine, from_blobs=True)
        except BaseException:
            for _, f in mine:
                svc.registry.release_file_copy(rec.run_id, f.name, f.etag)
            raise
        log.info(
            "run %s: %d file(s) carried over from earlier runs",
            rec.run_id,
            len(carried),
            extra=rec.log_extra(),
        )
    return missing


def _earlier_staged(svc: Services, rec: RunRecord) -> dict[str, tuple[str, StagedFile]]:
    """The latest staged version of each file over the dataset's earlier runs: name -> (its path on
    the share, the file as its run recorded it)."""
    latest: dict[str, tuple[str, StagedFile]] = {}
    earlier = [r.run_id for r in svc.registry.iter_runs(dataset=rec.dataset) if r.run_id < rec.run_id]
    for run_id in sorted(earlier)[-CARRY_OVER_RUNS:]:
        old = svc.registry.get(run_id)
        for f in old.staged_files:
            if f.name not in latest or (f.staged_at or "") > (latest[f.name][1].staged_at or ""):
                latest[f.name] = (f"{_data_dir(old)}/{f.name}", f)
    return latest


def _carry(
    svc: Services, rec: RunRecord, items: list[tuple[str, StagedFile]], *, from_blobs: bool
) -> list[StagedFile]:
    """Copy files earlier snapshots hold into ``rec``'s snapshot inside the share, and record them.
    ``from_blobs``: a file whose carry fails (its snapshot was cleaned up meanwhile) is copied from
    its blob instead (same version: the blob's ETag was just compared); otherwise the error stands."""
    carried: list[StagedFile] = []
    for source, old in items:
        dest = f"{_data_dir(rec)}/{old.name}"
        try:
            carried.append(
                carry_file(
                    svc.share,
                    source,
                    dest,
                    old,
                    copy_timeout=svc.settings.copy_timeout_seconds,
                    account_key=svc.account_key,
                )
            )
        except StagingError as exc:
            if exc.code != "CarryFailed" or not from_blobs:
                raise
            log.info("run %s: %s; copying it from blob storage", rec.run_id, exc, extra=rec.log_extra())
            carried.append(
                stage_blob(
                    svc.container,
                    f"{rec.dataset}/{old.name}",
                    svc.share,
                    dest_path=dest,
                    copy_timeout=svc.settings.copy_timeout_seconds,
                    account_key=svc.account_key,
                )
            )
    svc.registry.add_staged_files(rec.run_id, carried)
    return carried


# Answers that no retry changes: the run fails now instead of waiting for the staging timeout.
PERMANENT_SUBMIT_ERRORS = frozenset({"ClusterMismatch", "BatchAIUnavailable"})


def submit(svc: Services, rec: RunRecord, spec: RunSpec) -> bool:
    """Move the run out of staging (compare-and-swap: one winner) and create its experiment and job.
    A sweep's parent has no job: it starts running and starts its trials (shared.sweep_runs)."""
    if spec.sweep is not None:
        from shared import sweep_runs

        return sweep_runs.start_parent(svc, rec, spec)
    names = svc.cloud.job_names(rec.run_id, rec.dataset)
    try:
        cluster = svc.cloud.ensure_cluster(spec, rec.dataset)
        steady = svc.cloud.is_steady(cluster)
    except ComputeError as exc:
        if exc.code in PERMANENT_SUBMIT_ERRORS:
            _fail_staging(svc, rec, exc.code, str(exc))
            return False
        log.warning(
            "run %s: cluster not ready to submit (will retry): %s", rec.run_id, exc, extra=rec.log_extra()
        )
        return False
    target = QUEUED if steady else PROVISIONING
    try:
        moved = svc.registry.transition(
            rec.run_id,
            target,
            STAGING,
            current=rec,
            cluster=cluster.name,
            cluster_id=cluster.id,
            experiment=names.experiment,
            job_name=names.job,
            job_id=names.job_id,
            workspace=names.workspace,
            resource_group=names.resource_group,
        )
    except TransitionRejected:
        return False  # someone else submitted it (or it was cancelled)
    create_job(svc, moved, spec)
    return True


def create_job(svc: Services, rec: RunRecord, spec: RunSpec) -> bool:
    """Create the run's experiment and job (idempotent: the names are deterministic). Errors are
    recorded on the run; the monitor retries runs whose job does not exist yet."""
    if spec.sweep is not None:
        return False  # a sweep's parent has no job; its trials do
    names = svc.cloud.job_names(rec.run_id, rec.dataset)
    try:
        cluster_id = rec.cluster_id or svc.cloud.ensure_cluster(spec, rec.dataset).id
        job = svc.cloud.create_job(names, spec, rec.dataset, cluster_id, data_dir=rec.snapshot)
    except ComputeError as exc:
        message = f"creating job {rec.job_name} failed: {exc}"[:2000]
        log.warning("run %s: %s (will retry)", rec.run_id, message, extra=rec.log_extra())
        with contextlib.suppress(TransitionRejected, RunNotFound):
            svc.registry.update(
                rec.run_id, add_error={"code": "JobCreateFailed", "message": message, "time": utcnow()}
            )
        return False
    with contextlib.suppress(TransitionRejected, RunNotFound, ComputeError):
        now = svc.registry.update(
            rec.run_id, current=rec, submitted_at=utcnow(), job_id=getattr(job, "id", None) or rec.job_id
        )
        if now.state in TERMINAL_STATES:  # cancelled or failed while the job was being created
            svc.cloud.terminate_and_delete_job(names)  # no orphan job
    log.info("run %s: job %s submitted", rec.run_id, rec.job_name, extra=rec.log_extra())
    return True


# --- the HTTP API's entry points ----------------------------------------------------------------------
def start_run(
    dataset: str,
    spec: RunSpec | dict[str, Any],
    *,
    stage_from_prefix: str | None = None,
    idempotency_key: str | None = None,
    svc: Services | None = None,
    background: bool = False,
) -> RunRecord:
    """Start a run on ``dataset`` with ``spec``: stage every blob under ``stage_from_prefix`` of the
    training container into the run's snapshot first, or carry in the dataset's latest snapshot on
    the share (every required file must be there). Returns the run (submitted unless it failed).
    The same ``idempotency_key`` returns the same run; a request repeating the key of a run another
    request is staging gets that run as it is, without staging it again.

    What the request needs is checked before anything is created: a dataset not on the share
    (DatasetNotStaged), an empty prefix (NothingToStage) or a required file that is in neither
    (MissingFiles) raises, and no run record, cluster or directory is made for it.

    ``background`` (the HTTP API): a start from a prefix queues its staging for the stage function
    and returns the run in staging at once (see shared.staging_queue)."""
    svc = svc or services()
    check_dataset_name(dataset)
    if not isinstance(spec, RunSpec):
        spec = parse_run_spec(spec, svc.spec_context)
    svc.cloud.check_spec(spec)  # refused before anything is created, naming the field and backend
    prefix = None if stage_from_prefix is None else check_stage_prefix(stage_from_prefix)
    replayed = svc.registry.find_by_idempotency_key(idempotency_key) if idempotency_key else None
    if replayed is not None and replayed.state != STAGING:
        return replayed  # an idempotent replay of a run that already moved on

    folder_manifest: str | None = None
    if prefix is not None:
        to_stage, folder_manifest = _prefix_blobs(svc, prefix)
        available = {rel for _, rel, _ in to_stage}
    else:
        available = {f.name for _, f in _already_staged(svc, dataset, spec)}
    _check_file_list(sorted(available | set(spec.required_files())), "the run's list of files")
    missing = [name for name in spec.required_files() if name not in available]
    if missing:
        where = f"prefix {prefix!r}" if prefix is not None else f"dataset {dataset!r} on the file share"
        raise MissingFiles(f"required file(s) not in {where}: {', '.join(missing[:20])}")

    fields: dict[str, Any] = {
        "spec": spec.to_json_dict(),
        **callback_fields(svc, spec, issued=True),
        "idempotency_key": idempotency_key,
        "source": "api",
        "stage_from_prefix": stage_from_prefix,
        "staging_deadline": _staging_deadline(svc),
    }
    if replayed is not None:
        return replayed  # the same key while its run is staging: its own request stages it
    run_id = new_run_id()
    if idempotency_key:
        # The key is reserved for this run before anything else: of requests repeating it at once
        # exactly one goes on (and stages); the others get its run.
        holder = svc.registry.reserve_idempotency_key(idempotency_key, run_id)
        if holder is not None:
            return holder
    if prefix is not None and "/" not in prefix:
        # A top-level folder, whose blobs also fire the trigger as a dataset of that name. The
        # run.json in it now is superseded by this request: its trigger (however late) is a replay
        # of this run, not a new one. A later upload of it has another ETag: a new run.
        fields["manifest_etag"] = folder_manifest
        rec, mine = _claim_folder(svc, prefix, dataset, fields, run_id)
    else:
        rec = svc.registry.create(dataset, run_id=run_id, key_reserved=True, **fields)
        mine = rec.run_id == run_id
    if not mine or rec.state != STAGING:
        return rec  # the key's run, made by another request: it stages the run, not this one
    if background and prefix is not None and not _inline_secrets(spec):
        # The HTTP API: staging a folder can outlast Azure's 230 s HTTP limit, so the queue-triggered
        # stage function does it (shared.staging_queue) and the request answers with the run in
        # staging. A spec with inline secret values is staged here: only this request holds them.
        _queue_staging(svc, rec)
        return rec
    final = stage_run(rec, svc, spec)
    if _inline_secrets(spec) and final.state in ACTIVE_STATES and not final.submitted_at:
        final = _submit_while_secrets_are_held(svc, final, spec)
    return final


def _queue_staging(svc: Services, rec: RunRecord) -> None:
    """Queue the run's staging; a run whose message cannot be queued is failed, saying why."""
    from shared import staging_queue

    try:
        staging_queue.enqueue(svc, rec)
    except Exception as exc:
        _fail(svc, rec, "StagingNotQueued", f"the staging of this run could not be queued: {exc}"[:1000])
        raise


# Submission attempts a request makes itself when its spec carries inline secret values: the
# registry keeps them masked, so once the request returns no one can create the job any more.
SECRET_SUBMIT_DELAYS = (0.5, 1.0, 2.0, 4.0)
# Meanwhile the monitor leaves such a run alone: it fails it only once the run has been untouched
# this long (the request died, or gave up and failed the run itself).
SECRETS_HELD_SECONDS = 60.0


def _touched_within(rec: RunRecord, seconds: float) -> bool:
    touched = parse_time(rec.updated_at or rec.created_at)
    return touched is not None and (datetime.now(UTC) - touched).total_seconds() < seconds


def _inline_secrets(spec: RunSpec) -> list[str]:
    """Names of the spec's secret environment variables given by value (not Key Vault references)."""
    return [name for name, v in spec.secret_environment_variables.items() if hasattr(v, "get_secret_value")]


def _submit_while_secrets_are_held(svc: Services, rec: RunRecord, spec: RunSpec) -> RunRecord:
    """Retry the submission of a run whose first try failed transiently (cluster being deleted, ARM
    errors) while this request still holds its inline secrets; when it keeps failing, fail the run
    now, saying why, rather than leave the monitor to fail it later for want of the secrets."""
    for delay in SECRET_SUBMIT_DELAYS:
        time.sleep(delay)
        with contextlib.suppress(TransitionRejected, RunNotFound):
            svc.registry.update(rec.run_id)  # touched: the monitor's grace (SECRETS_HELD_SECONDS) holds
        if rec.state == STAGING:
            check_ready(rec.run_id, svc, spec)
        else:
            create_job(svc, rec, spec)
        rec = svc.registry.get(rec.run_id)
        if (
            rec.state not in ACTIVE_STATES
            or rec.submitted_at
            or (spec.sweep is not None and rec.state != STAGING)
        ):
            return rec
    last = rec.errors[-1]["message"] if rec.errors else "the cluster was not ready"
    _fail(
        svc,
        rec,
        "SubmitFailed",
        f"the job could not be created ({last}); its inline secret environment variables "
        f"({', '.join(_inline_secrets(spec))}) are not kept by the registry, so it cannot be retried "
        "later: start the run again, or give the secrets as Key Vault references",
    )
    return svc.registry.get(rec.run_id)


def stage_run(rec: RunRecord, svc: Services | None = None, spec: RunSpec | None = None) -> RunRecord:
    """Stage a run started over HTTP into its snapshot and submit it: every blob under its
    ``stage_from_prefix`` (files an earlier run of the dataset staged from the same blob version are
    carried inside the share), or the dataset's latest snapshot. A function of the run alone (``spec``
    only saves parsing it again), so a queue worker can call it. Returns the run as it ends up."""
    svc = svc or services()
    if spec is None:
        spec = parse_run_spec(rec.spec or {}, svc.spec_context)
    if needs_preparation(svc, rec, spec):
        _prepare_infrastructure(svc, rec, spec)
    ensure_share(svc.share)
    ensure_directory(svc.share, _data_dir(rec))
    try:
        if rec.stage_from_prefix is not None:
            blobs, _ = _prefix_blobs(svc, check_stage_prefix(rec.stage_from_prefix))
            staged = _stage_prefix(svc, rec, blobs)
            expected = sorted(set(spec.required_files()) | {f.name for f in staged})
        else:
            staged = _carry(svc, rec, _already_staged(svc, rec.dataset, spec), from_blobs=False)
            expected = spec.required_files() or [f.name for f in staged]
    except StagingError as exc:
        _fail_staging(svc, rec, exc.code, str(exc), blob=getattr(exc, "blob", None))
        raise
    svc.registry.update(rec.run_id, expected_files=expected)
    missing = [name for name in expected if name not in {f.name for f in staged}]
    if missing:  # a blob deleted between the listing and its copy
        message = f"required file(s) not in the dataset: {', '.join(missing[:20])}"
        _fail_staging(svc, rec, "MissingFiles", message)
        return svc.registry.get(rec.run_id)
    check_ready(rec.run_id, svc, spec)
    return svc.registry.get(rec.run_id)


def _claim_folder(
    svc: Services, folder: str, dataset: str, fields: dict[str, Any], run_id: str
) -> tuple[RunRecord, bool]:
    """The run for staging from the top-level ``folder``, whose blobs also fire the blob trigger (as
    a dataset named ``folder``): it becomes the folder's current staging run, so the trigger's
    invocations join it instead of making another run. When the folder is the dataset's own, a
    staging run the trigger already made for these blobs (no manifest yet) is adopted as this run;
    the trigger's other staging runs of the folder (with a manifest, or made for the folder as a
    dataset of its own) are cancelled as superseded, not left to time out. Another HTTP start's run
    from the same folder is left alone: both requests get their runs.

    Adoption is a compare-and-swap that rechecks the run: when the trigger takes a manifest between
    the claim and the adoption, the run is superseded instead and a new one is claimed. Returns the
    run and whether it is this request's (not the idempotency key's run of another request)."""
    reuse = _adoptable if folder == dataset else _never
    for _ in range(5):
        rec, created = svc.registry.claim_staging_run(
            folder, reuse=reuse, run_dataset=dataset, run_id=run_id, key_reserved=True, **fields
        )
        if rec.source == "api":  # ours (or, for a repeated idempotency key, the key's run)
            if created:
                why = f"run {rec.run_id}, started over HTTP, stages the folder {folder!r}"
                for other in svc.registry.iter_runs(state=STAGING, dataset=folder):
                    if other.source == "blob" and other.run_id != rec.run_id:
                        _supersede(svc, other, why)
            return rec, created

        def adopt(r: RunRecord) -> None:
            if not _adoptable(r):
                raise _NotAdoptable
            for name, value in fields.items():
                setattr(r, name, value)

        try:
            adopted = svc.registry.update(rec.run_id, adopt, expected_state=STAGING)
        except _NotAdoptable:
            _supersede(svc, rec, f"a run started over HTTP stages the folder {folder!r}")
            continue
        except TransitionRejected:
            continue  # the run left staging meanwhile: claim again
        log.info(
            "run %s (made by the blob trigger) adopted by an HTTP start",
            rec.run_id,
            extra=adopted.log_extra(),
        )
        key = fields["idempotency_key"]
        if key:
            svc.registry.point_idempotency_key(key, adopted.run_id)  # the key this request reserved
        return adopted, True
    raise ConcurrencyError(
        f"folder {folder!r}: could not claim its staging run (too many concurrent changes); retry "
        "the request with the same Idempotency-Key"
    )


class _Adopted(Exception):
    """The trigger's run was adopted by an HTTP start while an invocation was taking the manifest
    (the invocation joins that run: the request's spec stays)."""

    def __init__(self, rec: RunRecord) -> None:
        super().__init__(rec.run_id)
        self.rec = rec


class _NotAdoptable(Exception):
    """The trigger's run took a manifest between the claim and the adoption."""


def _never(rec: RunRecord) -> bool:
    return False


def _adoptable(rec: RunRecord) -> bool:
    """A staging run the blob trigger made with no manifest yet: an HTTP start may make it its own."""
    return rec.source == "blob" and rec.spec is None and rec.manifest_etag is None


def _supersede(svc: Services, rec: RunRecord, why: str) -> None:
    """Cancel a staging run of the blob trigger that a run started over HTTP replaces (no-op if it
    left staging, or if another HTTP start adopted it meanwhile: that run is another request's)."""
    error = {"code": "Superseded", "message": why, "time": utcnow()}

    def still_the_triggers(r: RunRecord) -> None:
        if r.source == "api":
            raise TransitionRejected(f"run {r.run_id} was adopted by an HTTP start", r)

    with contextlib.suppress(TransitionRejected):
        svc.registry.transition(
            rec.run_id,
            CANCELLED,
            STAGING,
            guard=still_the_triggers,
            add_error=error,
            callback_pending=bool(rec.callback_url),
        )
        log.info("run %s superseded: %s", rec.run_id, why, extra=rec.log_extra())


def _prefix_blobs(svc: Services, prefix: str) -> tuple[list[tuple[str, str, Any]], str | None]:
    """(blob name, path relative to the prefix, its listed properties) of every blob to stage under
    ``prefix`` (manifests excluded), and the ETag of ``<prefix>/run.json`` when there is one;
    NothingToStage when there is no blob, StagingError naming a blob that cannot be staged."""
    manifest = f"{prefix}/{MANIFEST_NAME}"
    manifest_etag: str | None = None
    names = []
    try:
        for b in svc.container.list_blobs(name_starts_with=f"{prefix}/"):
            if b.name == manifest:
                manifest_etag = etag_of(b)
            elif not b.name.endswith(f"/{MANIFEST_NAME}"):
                names.append(b)
    except ResourceNotFoundError:
        names = []  # the training container does not exist (yet)
    if not names:
        raise NothingToStage(f"no blobs under prefix {prefix!r} of container {svc.container.container_name}")
    found = []
    for b in names:
        rel = b.name[len(prefix) + 1 :]
        check_relative_path(rel, what=f"blob {b.name!r}")
        found.append((b.name, rel, b))
    return found, manifest_etag


def _stage_prefix(svc: Services, rec: RunRecord, blobs: list[tuple[str, str, Any]]) -> list[StagedFile]:
    """Copy the prefix's blobs into the run's snapshot: from a snapshot of an earlier run of the
    dataset when it holds the same blob version (inside the share), else from blob storage."""
    earlier: dict[str, tuple[str, StagedFile]] | None = None
    staged = []
    for name, rel, props in blobs:
        if earlier is None:
            earlier = _earlier_staged(svc, rec)
        old = earlier.get(rel)
        if old is not None and old[1].etag == etag_of(props) and old[1].size == int(props.size):
            with contextlib.suppress(StagingError):  # gone meanwhile: copied from the blob below
                staged.extend(_carry(svc, rec, [old], from_blobs=False))
                continue
        try:
            one = stage_blob(
                svc.container,
                name,
                svc.share,
                dest_path=f"{_data_dir(rec)}/{rel}",
                copy_timeout=svc.settings.copy_timeout_seconds,
                account_key=svc.account_key,
            )
        except StagingError as exc:
            exc.blob = name  # type: ignore[attr-defined]
            raise
        svc.registry.add_staged_files(rec.run_id, [one])
        staged.append(one)
    return staged


def _already_staged(svc: Services, dataset: str, spec: RunSpec) -> list[tuple[str, StagedFile]]:
    """What a run on a dataset already on the share starts from (the API's 'use what is there'): the
    files of the dataset's latest snapshot still on the share, else of the dataset's own directory
    (filled by hand or by runs from before snapshots), as (path on the share, file); only the
    spec's required files when it lists them. DatasetNotStaged when there is neither."""
    wanted = set(spec.required_files())
    # Any spelling of the name: on the share, `MNIST` and `mnist` are one dataset.
    runs = sorted(svc.registry.iter_runs_of_dataset(dataset), key=lambda r: r.run_id, reverse=True)
    for run in runs[:CARRY_OVER_RUNS]:
        if run.snapshot is None:
            continue
        try:
            svc.share.get_directory_client(run.snapshot).get_directory_properties()
        except ResourceNotFoundError:
            continue  # cleaned up
        files = svc.registry.get(run.run_id).staged_files
        chosen = [(f"{run.snapshot}/{f.name}", f) for f in files if not wanted or f.name in wanted]
        if chosen and {f.name for _, f in chosen} >= wanted:
            return chosen
    return _on_share_directory(svc, dataset, wanted)


def _on_share_directory(svc: Services, dataset: str, wanted: set[str]) -> list[tuple[str, StagedFile]]:
    directory = svc.share.get_directory_client(dataset)
    try:
        directory.get_directory_properties()
    except ResourceNotFoundError:
        raise DatasetNotStaged(
            f"dataset {dataset!r} is not on the file share; give stage_from_prefix"
        ) from None
    found: list[tuple[str, StagedFile]] = []
    if wanted:
        for name in sorted(wanted):
            try:
                props = svc.share.get_file_client(f"{dataset}/{name}").get_file_properties()
            except ResourceNotFoundError:
                continue
            found.append((f"{dataset}/{name}", _staged_from_props(name, props)))
        return found
    stack = [""]
    while stack and len(found) < 10_000:
        sub = stack.pop()
        client = svc.share.get_directory_client(f"{dataset}/{sub}".rstrip("/"))
        for item in client.list_directories_and_files():
            rel = f"{sub}/{item['name']}".lstrip("/")
            if item.get("is_directory"):
                stack.append(rel)
            else:
                size = int(item.get("size") or 0)
                found.append((f"{dataset}/{rel}", StagedFile(rel, size, staged_at=utcnow())))
    if not found:
        raise DatasetNotStaged(f"dataset {dataset!r} has no files on the share")
    return found


def _staged_from_props(name: str, props: Any) -> StagedFile:
    md5 = props.content_settings.content_md5
    if md5 is not None and not isinstance(md5, str):
        import base64

        md5 = base64.b64encode(bytes(md5)).decode()
    return StagedFile(name, int(props.size), md5 or None, None, utcnow())


class ResubmitRefused(ValueError):
    """A run that cannot be resubmitted as asked (``code``: SnapshotCleanedUp, SecretsNotKept,
    SweepResubmitUnsupported, RunNotFinished)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


MASKED_SECRET = "**********"


def resubmit_run(
    run_id: str,
    overrides: dict[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    svc: Services | None = None,
) -> RunRecord:
    """A new run with the finished run's spec (top-level fields replaced by ``overrides``) on the same
    snapshot: the new run reads that directory, nothing is copied (cleanup keeps it while the new
    run needs it). Refused (``ResubmitRefused``) when the snapshot was cleaned up, when the run's
    inline secret values are needed (the registry never kept them: give them in ``overrides``), for
    a sweep's parent, and for a run still active. The same ``idempotency_key`` returns the same run."""
    svc = svc or services()
    source = svc.registry.get(run_id)
    if idempotency_key:
        replayed = svc.registry.find_by_idempotency_key(idempotency_key)
        if replayed is not None:
            return replayed
    if source.state not in TERMINAL_STATES:
        raise ResubmitRefused("RunNotFinished", f"run {run_id} is {source.state}; resubmit a finished run")
    from shared import sweep_runs

    if source.parent_id is not None:
        raise ResubmitRefused(
            "SweepResubmitUnsupported",
            f"run {run_id} is a trial of sweep {source.parent_id}: resubmit the sweep, which runs its "
            "failed and cancelled trials again",
        )
    if sweep_runs.is_parent(source):
        return _resubmit_sweep(svc, source, overrides, idempotency_key)
    data = dict(source.spec or {})
    data.update(overrides or {})
    masked = [
        name for name, v in (data.get("secret_environment_variables") or {}).items() if v == MASKED_SECRET
    ]
    if masked:
        raise ResubmitRefused(
            "SecretsNotKept",
            f"run {run_id}'s secret environment variables ({', '.join(sorted(masked))}) were given inline "
            "and are not kept: give them again in the overrides' secret_environment_variables",
        )
    spec = parse_run_spec(data, svc.spec_context)
    svc.cloud.check_spec(spec)
    _check_snapshot_kept(svc, source)
    staged = list(source.staged_files)
    wanted = spec.required_files() or [f.name for f in staged]
    missing = [name for name in wanted if name not in {f.name for f in staged}]
    if missing:
        raise MissingFiles(f"required file(s) not in run {run_id}'s snapshot: {', '.join(missing[:20])}")
    fields: dict[str, Any] = {
        "spec": spec.to_json_dict(),
        **callback_fields(svc, spec, issued=True),
        "source": "api",
        "staging_deadline": _staging_deadline(svc),
        "snapshot": source.snapshot,
        "staged_files": staged,
        "expected_files": wanted,
    }
    new_id = new_run_id()
    if idempotency_key:
        holder = svc.registry.reserve_idempotency_key(idempotency_key, new_id)
        if holder is not None:
            return holder
    rec = svc.registry.create(
        source.dataset, run_id=new_id, idempotency_key=idempotency_key, key_reserved=True, **fields
    )
    log.info("run %s: resubmitted as %s", run_id, rec.run_id, extra=rec.log_extra())
    if rec.state == STAGING:
        if needs_preparation(svc, rec, spec):
            _prepare_infrastructure(svc, rec, spec)
        check_ready(rec.run_id, svc, spec)
    return svc.registry.get(rec.run_id)


def _check_snapshot_kept(svc: Services, source: RunRecord) -> None:
    """Refuse (SnapshotCleanedUp) a resubmit whose run's snapshot the cleanup deleted."""
    data_dir = _data_dir(source)
    try:
        present = svc.share.get_directory_client(data_dir).exists()
    except HttpResponseError:
        present = False
    if not present or not source.staged_files:
        raise ResubmitRefused(
            "SnapshotCleanedUp",
            f"run {source.run_id}'s snapshot {data_dir} is gone (the nightly cleanup deletes a finished "
            "run's snapshot after STAGED_DATA_RETENTION_HOURS): start a new run from the dataset instead",
        )


def _resubmit_sweep(
    svc: Services, parent: RunRecord, overrides: dict[str, Any] | None, idempotency_key: str | None
) -> RunRecord:
    """Resubmitting a sweep's parent runs its failed and cancelled trials again under the same
    parent, with the same spec and parameters on the same snapshot (shared.sweep_runs.resubmit); the
    answer is the parent, running again. Overrides would make the re-runs differ from the trials
    they replace, so they are refused."""
    from shared import sweep_runs

    if overrides:
        raise ResubmitRefused(
            "SweepOverridesUnsupported",
            f"run {parent.run_id} is a sweep: its failed trials run again with the sweep's own spec and "
            "parameters, so overrides are not accepted (start a new sweep to change them)",
        )
    spec = _kept_spec(svc, parent)
    _check_snapshot_kept(svc, parent)
    if idempotency_key:
        holder = svc.registry.reserve_idempotency_key(idempotency_key, parent.run_id)
        if holder is not None:
            return holder
    try:
        sweep_runs.resubmit(svc, parent, spec)
    except LookupError as exc:
        raise ResubmitRefused("NothingToResubmit", str(exc)) from None
    except TransitionRejected as rejected:
        raise ResubmitRefused(
            "RunNotFinished",
            f"run {parent.run_id} is {rejected.current.state}: another request resubmitted it meanwhile",
        ) from None
    log.info("sweep %s: resubmitted", parent.run_id, extra=parent.log_extra())
    return svc.registry.get(parent.run_id)


def _kept_spec(svc: Services, rec: RunRecord) -> RunSpec:
    """A finished run's spec with its secrets, for running it again: the manifest it took when that
    is unchanged, else the recorded spec, refused (SecretsNotKept) when it had inline secret values
    (the registry never keeps them)."""
    if rec.source == "blob" and rec.manifest_etag:
        blob = svc.container.get_blob_client(f"{rec.dataset}/{MANIFEST_NAME}")
        with contextlib.suppress(ResourceNotFoundError, RunSpecError):
            props = blob.get_blob_properties()
            if etag_of(props) == rec.manifest_etag:
                return read_manifest(svc, rec.dataset, props)
    spec = parse_run_spec(rec.spec or {}, svc.spec_context)
    masked = _inline_secrets(spec)
    if masked:
        raise ResubmitRefused(
            "SecretsNotKept",
            f"run {rec.run_id}'s secret environment variables ({', '.join(sorted(masked))}) were given "
            "inline and are not kept: start the sweep again with them, or use Key Vault references",
        )
    return spec


def cancel_run(run_id: str, *, delete_cluster: bool = False, svc: Services | None = None) -> RunRecord:
    """Tear a run down: mark it cancelled (from any non-terminal state; a compare-and-swap, so the
    monitor cannot finish it meanwhile), terminate and delete its job, and with ``delete_cluster``
    delete its cluster when no other active run uses it. Idempotent: a finished run keeps its state
    (its job is still deleted). Batch AI failures propagate (ComputeError); calling again resumes."""
    svc = svc or services()
    rec = svc.registry.get(run_id)
    if rec.state not in TERMINAL_STATES:
        try:
            rec = svc.registry.transition(
                run_id,
                CANCELLED,
                ACTIVE_STATES,
                add_error={"code": "Cancelled", "message": "cancelled on request", "time": utcnow()},
                callback_pending=bool(rec.callback_url),
            )
        except TransitionRejected as rejected:
            rec = rejected.current
            if rec.state not in TERMINAL_STATES:
                raise
    if rec.job_name:
        svc.cloud.terminate_and_delete_job(svc.cloud.job_names(rec.run_id, rec.dataset))
    from shared import sweep_runs

    if sweep_runs.is_parent(rec):
        sweep_runs.cancel_trials(svc, rec)  # a sweep's parent: its trials go with it
    if delete_cluster and rec.cluster:
        users = [
            r.run_id
            for r in svc.registry.iter_runs(state=sorted(ACTIVE_STATES))
            if r.cluster == rec.cluster and r.run_id != run_id
        ]
        if users:
            log.info(
                "run %s: cluster %s kept, in use by %s",
                run_id,
                rec.cluster,
                ", ".join(users),
                extra=rec.log_extra(),
            )
        else:
            svc.cloud.delete_cluster(rec.cluster)
    return svc.registry.get(run_id)


__all__ = [
    "DatasetNotStaged",
    "IngestResult",
    "MissingFiles",
    "NothingToStage",
    "Services",
    "TooManyFiles",
    "build_services",
    "cancel_run",
    "check_ready",
    "ingest_blob",
    "missing_files",
    "read_manifest",
    "reset_services",
    "services",
    "start_run",
    "submission_spec",
    "submit",
]
