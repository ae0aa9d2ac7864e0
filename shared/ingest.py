"""Ingest: what happens when a dataset blob arrives (the blob trigger).

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
   with no list, every blob under the prefix when the manifest arrived), the run is submitted
   (``shared.submission``: staging -> provisioning, or -> queued when the cluster is steady, and only
   the winner creates the experiment and the job, with deterministic names: a retry hits the same job).

Files a new run needs that an earlier run of the dataset already staged (same blob ETag, still on
the share) are carried into its snapshot by a copy inside the share, never read from blob storage
again. A run's snapshot is its own: later uploads go to later runs' snapshots, so nothing changes what
a submitted job reads. A copy into a snapshot is claimed first (``RunRegistry.claim_file_copy``, which
writes the run in the same transaction and only while it is staging), and a run is not submitted while
a live claim's file is unrecorded: a blob arriving as its run is submitted either is copied and
recorded before the submission, or finds the run submitted and starts the next run.

A bad blob name or manifest fails the run's staging with an error naming the problem; nothing is
written for it. A folder an HTTP start stages is that request's: its invocations join the request's
run (``shared.folder_claims``). HTTP starts are ``shared.run_starts``, cancelling ``shared.cancellation``.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from shared import callbacks, services
from shared.folder_claims import Adopted, staged_by_request, started_from_folder
from shared.registry import (
    FAILED,
    STAGING,
    RunError,
    RunNotFound,
    RunRecord,
    TransitionRejected,
)
from shared.runspec import RunSpec, RunSpecError
from shared.services import Services
from shared.staging import (
    MANIFEST_NAME,
    StagingError,
    TooManyFiles,
    check_dataset_name,
    check_run_file_list,
    etag_of,
    parse_blob_name,
    stage_blob,
)
from shared.submission import (
    check_ready,
    data_dir,
    dataset_blobs,
    fail_run,
    needs_preparation,
    prepare_infrastructure,
    read_manifest,
    staging_deadline,
)

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    """What one blob event did (for logs and tests)."""

    action: str  # staged, manifest, replay, joined, ignored, failed
    run_id: str | None = None
    state: str | None = None
    submitted: bool = False
    message: str = ""


def ingest_blob(blob_name: str, svc: Services | None = None) -> IngestResult:
    """Handle one uploaded/changed blob of the training container (idempotent; see module doc)."""
    svc = svc or services.get_services()
    try:
        return _ingest(blob_name, svc)
    except Adopted as adopted:  # an HTTP start made the run its own while this invocation worked
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
    if latest is not None and staged_by_request(latest, ref.dataset):
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
        ref.dataset, staging_deadline=staging_deadline(svc), source="blob", seen=pointer
    )
    if staged_by_request(rec, ref.dataset):
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
                fail_run(
                    svc,
                    rec,
                    RunError(exc.code, str(exc)),
                    STAGING,
                    folder=ref.dataset,
                    manifest_etag=manifest_etag,
                )
                return IngestResult("failed", rec.run_id, FAILED, message=str(exc))
            except RunSpecError as exc:
                message = f"{ref.dataset}/{MANIFEST_NAME}: {exc}"
                fail_run(
                    svc,
                    rec,
                    RunError("InvalidManifest", message),
                    STAGING,
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
            fail_run(svc, rec, RunError(exc.code, str(exc)), STAGING, folder=ref.dataset, manifest_etag=etag)
            return IngestResult("failed", rec.run_id, FAILED, message=str(exc))
        except RunSpecError as exc:
            error = RunError("InvalidManifest", f"{blob_name}: {exc}")
            fail_run(svc, rec, error, STAGING, folder=ref.dataset, manifest_etag=etag)
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
        try:
            token = _copy_claimed(svc, rec, ref.path, etag)
        except TransitionRejected:
            # The run left staging before this delivery could claim the copy: nothing goes into its
            # snapshot. Decided again from the top: a version the run recorded is a replay, any other
            # starts the next run.
            return _ingest(blob_name, svc)
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
                    dest_path=f"{data_dir(rec)}/{ref.path}",
                    copy_timeout=svc.settings.copy_timeout_seconds,
                    account_key=svc.account_key,
                    props=props,
                )
        except BaseException as exc:
            svc.registry.release_file_copy(rec.run_id, ref.path, etag)  # a retry or a waiter copies
            if not isinstance(exc, StagingError):
                raise
            if exc.blob_gone:
                # Its claim kept the run from being submitted: with the claim given up it may be ready.
                submitted = check_ready(rec.run_id, svc)
                return IngestResult("ignored", rec.run_id, rec.state, submitted=submitted, message=str(exc))
            if exc.retryable:
                raise  # transient: let the trigger retry (and poison after its retries)
            fail_run(svc, rec, RunError(exc.code, str(exc)), STAGING, folder=ref.dataset)
            return IngestResult("failed", rec.run_id, FAILED, message=str(exc))
        svc.registry.add_staged_files(rec.run_id, [staged])
        svc.registry.finish_file_copy(rec.run_id, ref.path, etag, token)
        if _arrived_after_submission(svc, rec.run_id, ref.path):
            return _ingest(blob_name, svc)  # the run left without it: this upload starts the next run
        # The holder checks readiness itself once its file is recorded: its claim kept the run staging.
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
    up or died (it stopped renewing it): then this delivery takes it over. Raises
    ``TransitionRejected`` when the run left staging before any delivery claimed the copy."""
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


def _arrived_after_submission(svc: Services, run_id: str, path: str) -> bool:
    """Whether the run was submitted while ``path`` was being copied into its snapshot and does not
    require it. A live copy claim keeps its run from being submitted (``check_ready``), so this
    happens only when the holder stopped renewing its claim for COPY_CLAIM_STALE_SECONDS (its host
    stalled) and a submitter took it for dead: then the file is no part of the run, and it is taken
    out of the snapshot and the record again."""
    rec = svc.registry.get(run_id)  # with its files: the required list is one entity per file
    if rec.state == STAGING or path in (rec.expected_files or []):
        return False
    with contextlib.suppress(HttpResponseError):
        svc.share.get_file_client(f"{data_dir(rec)}/{path}").delete_file()
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
        target=prepare_infrastructure, args=(svc, rec, spec), name=f"prepare-{rec.run_id}", daemon=True
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
    if latest is not None and staged_by_request(latest, dataset):
        return _joined(latest, blob_name)
    if (
        latest is not None
        and latest.state == FAILED
        and any(e.get("blob") == blob_name for e in latest.errors)
    ):
        return IngestResult("replay", latest.run_id, latest.state, message=str(exc))
    rec, _ = svc.registry.claim_staging_run(
        dataset, staging_deadline=staging_deadline(svc), source="blob", seen=pointer
    )
    fail_run(svc, rec, RunError(exc.code, str(exc), details={"blob": blob_name}), STAGING, folder=dataset)
    return IngestResult("failed", rec.run_id, FAILED, message=str(exc))


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
            for name in dataset_blobs(svc, rec.dataset)
            if name != MANIFEST_NAME and not name.endswith("/")
        ]
        expected = sorted(set(expected) | set(present))
    check_run_file_list(expected, f"{rec.dataset}/{MANIFEST_NAME}'s dataset (no 'files' list: every blob)")
    spec_json = spec.to_json_dict()
    callback = callbacks.record_fields(svc.settings, spec.callback_url, issued=False)

    def apply(r: RunRecord) -> None:
        if started_from_folder(r, rec.dataset):
            raise Adopted(r)  # an HTTP start made the run its own meanwhile: its spec stays
        r.spec = spec_json
        r.expected_files = expected
        r.manifest_etag = etag_of(props)
        r.callback_url, r.callback_seal = callback["callback_url"], callback["callback_seal"]

    try:
        updated = svc.registry.update(rec.run_id, apply, expected_state=STAGING, current=rec)
    except TransitionRejected as exc:
        if started_from_folder(exc.current, rec.dataset):
            raise Adopted(exc.current) from None  # adopted and already submitted
        raise
    updated.staged_files, updated.output_files = list(rec.staged_files), list(rec.output_files)
    log.info("run %s: manifest taken (%d required file(s))", rec.run_id, len(expected), extra=rec.log_extra())
    if prepare and needs_preparation(svc, updated, spec):
        prepare_infrastructure(svc, updated, spec=spec)
    return spec, updated
