"""Readiness and job submission: when a staging run has its spec and every required file, it moves
out of staging (a compare-and-swap: one winner) and its job is created. Shared by the blob trigger
(``shared.ingest``), HTTP starts (``shared.run_starts``), resubmission and sweeps, and by the monitor,
which calls ``check_ready`` and ``create_job`` again for runs whose submission failed transiently.

Also here: what submission needs around it: the spec a job is created with (``submission_spec``:
the manifest read again, since the registry keeps secret values masked), carrying files an earlier
run of the dataset staged into a run's snapshot (``missing_files``, ``carry_files``), preparing a
run's cluster and experiment ahead of submission, and failing a run (``fail_run``, through
``RunRegistry.fail``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from shared import services
from shared.compute_port import ComputeError
from shared.folder_claims import Adopted, started_from_folder
from shared.registry import (
    ACTIVE_STATES,
    PROVISIONING,
    QUEUED,
    STAGING,
    TERMINAL_STATES,
    RunError,
    RunNotFound,
    RunRecord,
    StagedFile,
    TransitionRejected,
    parse_time,
    utcnow,
)
from shared.runspec import RunSpec, RunSpecError, parse_run_spec, parse_run_spec_json
from shared.services import Services
from shared.staging import (
    MANIFEST_NAME,
    StagingError,
    carry_file,
    ensure_directory,
    ensure_share,
    etag_of,
    stage_blob,
)

log = logging.getLogger(__name__)

CARRY_OVER_RUNS = 10  # how many earlier runs of a dataset are searched for files to carry over
# A run whose spec holds inline secret values is submitted by its request alone (the registry keeps
# them masked; shared.run_starts). Meanwhile the monitor leaves such a run alone: it fails it only
# once the run has been untouched this long (the request died, or gave up and failed the run itself).
SECRETS_HELD_SECONDS = 60.0


class RunChangedMeanwhile(TransitionRejected):
    """The run was written after the submitter read it (a delivery claimed a copy into its snapshot,
    say): what the submitter checked may no longer hold, so it checks again."""


def check_ready(
    run_id: str, svc: Services | None = None, spec: RunSpec | None = None, spec_etag: str | None = None
) -> bool:
    """If the staging run has its manifest and every required file staged, and no delivery is
    copying a file into its snapshot, submit it. Returns True when this call submitted the job
    (exactly one caller wins the compare-and-swap). ``spec`` is a spec the caller already parsed:
    for ingest runs it is used only when ``spec_etag`` is the manifest version the run took (else
    the manifest is read again).

    The submission is a compare-and-swap on the run as read before its copy claims were read, and a
    delivery's claim writes the run in the same transaction (``RunRegistry.claim_file_copy``): a
    claim made after that read fails the swap, and the run is read and checked again. A run with a
    copy in flight is left staging: the claim's holder calls this again once it recorded its file."""
    svc = svc or services.get_services()
    for _ in range(CHECK_ATTEMPTS):
        rec = svc.registry.get(run_id)
        if rec.state != STAGING or rec.spec is None or rec.expected_files is None:
            return False
        missing = missing_files(svc, rec)
        if missing:
            return False
        in_flight = svc.registry.copies_in_flight(run_id)
        if in_flight:
            log.info(
                "run %s: not submitted while %d file(s) are copied into its snapshot (%s)",
                run_id,
                len(in_flight),
                ", ".join(in_flight[:5]),
                extra=rec.log_extra(),
            )
            return False
        given = spec
        if rec.source == "blob" and (spec_etag is None or spec_etag != rec.manifest_etag):
            given = None
        if given is None:
            given = submission_spec(svc, rec)
            if given is None:
                return False
        try:
            return submit(svc, rec, given, if_unchanged=True)
        except RunChangedMeanwhile:
            continue  # written since read (a copy claimed, files carried in): check again
    return False


# How often check_ready reads the run again when it changed between its checks and its submission.
CHECK_ATTEMPTS = 20


def missing_files(svc: Services, rec: RunRecord) -> list[str]:
    """Required files not yet staged with the blob's current version; carries over files an earlier
    run of the dataset staged (same blob ETag) when they are still on the share."""
    expected = rec.expected_files or []
    staged_by_name = {f.name: f for f in rec.staged_files}
    if rec.source != "blob":
        return [name for name in expected if name not in staged_by_name]
    blobs = dataset_blobs(svc, rec.dataset)
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
                earlier = earlier_staged(svc, rec)
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
            try:
                token = svc.registry.claim_file_copy(rec.run_id, item[1].name, item[1].etag)
            except TransitionRejected:
                token = None  # the run left staging meanwhile: nothing more goes into its snapshot
            if token:
                mine.append(item)
                claims.append((item[1].name, item[1].etag, token))
            else:
                missing.append(item[1].name)
        try:
            with svc.registry.renewing_file_copies(rec.run_id, claims):
                carried = carry_files(svc, rec, mine, from_blobs=True)
        except BaseException:
            for _, f in mine:
                svc.registry.release_file_copy(rec.run_id, f.name, f.etag)
            raise
        for claim in claims:
            svc.registry.finish_file_copy(rec.run_id, *claim)
        log.info(
            "run %s: %d file(s) carried over from earlier runs",
            rec.run_id,
            len(carried),
            extra=rec.log_extra(),
        )
    return missing


def earlier_staged(svc: Services, rec: RunRecord) -> dict[str, tuple[str, StagedFile]]:
    """The latest staged version of each file over the dataset's earlier runs: name -> (its path on
    the share, the file as its run recorded it)."""
    latest: dict[str, tuple[str, StagedFile]] = {}
    earlier = [r.run_id for r in svc.registry.iter_runs(dataset=rec.dataset) if r.run_id < rec.run_id]
    for run_id in sorted(earlier)[-CARRY_OVER_RUNS:]:
        old = svc.registry.get(run_id)
        for f in old.staged_files:
            if f.name not in latest or (f.staged_at or "") > (latest[f.name][1].staged_at or ""):
                latest[f.name] = (f"{data_dir(old)}/{f.name}", f)
    return latest


def carry_files(
    svc: Services, rec: RunRecord, items: list[tuple[str, StagedFile]], *, from_blobs: bool
) -> list[StagedFile]:
    """Copy files earlier snapshots hold into ``rec``'s snapshot inside the share, and record them.
    ``from_blobs``: a file whose carry fails (its snapshot was cleaned up meanwhile) is copied from
    its blob instead (same version: the blob's ETag was just compared); otherwise the error stands."""
    carried: list[StagedFile] = []
    for source, old in items:
        dest = f"{data_dir(rec)}/{old.name}"
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
            fail_run(svc, rec, RunError("InvalidManifest", str(exc)))
            return None
        if rec.state == STAGING:
            return None  # a newer manifest is on its way through its own trigger
    spec = parse_run_spec(rec.spec or {}, svc.spec_context)
    masked = inline_secrets(spec)
    if masked and _touched_within(rec, SECRETS_HELD_SECONDS):
        return None  # the request that holds the secrets may still be submitting the job itself
    if masked:
        message = (
            f"the job must be created again but its secret environment variables ({', '.join(masked)}) "
            "are not kept by the registry; start the run again"
        )
        fail_run(svc, rec, RunError("SpecUnavailable", message))
        return None
    return spec


def submit(svc: Services, rec: RunRecord, spec: RunSpec, *, if_unchanged: bool = False) -> bool:
    """Move the run out of staging (compare-and-swap: one winner) and create its experiment and job.
    A sweep's parent has no job: it starts running and starts its trials (shared.sweep_runs).
    ``if_unchanged``: only if the run is still as ``rec`` was read (its ETag); else raises
    ``RunChangedMeanwhile`` (``check_ready`` then checks again)."""

    def unchanged(now: RunRecord) -> None:
        if if_unchanged and now.etag != rec.etag:
            raise RunChangedMeanwhile(f"run {rec.run_id} was written after it was checked", now)

    if spec.sweep is not None:
        from shared import sweep_runs

        try:
            return sweep_runs.start_parent(svc, rec, spec, guard=unchanged)
        except RunChangedMeanwhile as changed:
            if changed.current.state != STAGING:
                return False
            raise
    names = svc.cloud.job_names(rec.run_id, rec.dataset)
    try:
        cluster = svc.cloud.ensure_cluster(spec, rec.dataset)
        steady = svc.cloud.is_steady(cluster)
    except ComputeError as exc:
        if exc.permanent:  # no retry changes it: the run fails now, not at its staging timeout
            fail_run(svc, rec, RunError(exc.code, str(exc)), STAGING)
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
            guard=unchanged,
            cluster=cluster.name,
            cluster_id=cluster.id,
            experiment=names.experiment,
            job_name=names.job,
            job_id=names.job_id,
            workspace=names.workspace,
            resource_group=names.resource_group,
        )
    except RunChangedMeanwhile as changed:
        if changed.current.state != STAGING:
            return False  # someone else submitted it (or it was cancelled)
        raise
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
            svc.registry.update(rec.run_id, error=RunError("JobCreateFailed", message))
        return False
    with contextlib.suppress(TransitionRejected, RunNotFound, ComputeError):
        now = svc.registry.update(
            rec.run_id, current=rec, submitted_at=utcnow(), job_id=getattr(job, "id", None) or rec.job_id
        )
        if now.state in TERMINAL_STATES:  # cancelled or failed while the job was being created
            svc.cloud.terminate_and_delete_job(names)  # no orphan job
    log.info("run %s: job %s submitted", rec.run_id, rec.job_name, extra=rec.log_extra())
    return True


def needs_preparation(svc: Services, rec: RunRecord, spec: RunSpec | None) -> bool:
    """Whether the run's cluster (for ``spec``, or the defaults) is not requested yet."""
    if spec is None:
        return rec.cluster is None
    return rec.cluster != svc.cloud.cluster_name(spec, rec.dataset)


def prepare_infrastructure(svc: Services, rec: RunRecord, spec: RunSpec | None) -> None:
    """Start creating what the run needs, without waiting for the cluster to provision. Failures
    are logged and recorded: submission and the monitor try again."""
    spec = spec or parse_run_spec({}, svc.spec_context)
    try:
        ensure_share(svc.share)
        ensure_directory(svc.share, data_dir(rec))
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


def dataset_blobs(svc: Services, dataset: str) -> dict[str, Any]:
    """Relative path -> blob properties of every blob under ``<dataset>/`` (one list call per page)."""
    prefix = f"{dataset}/"
    return {b.name[len(prefix) :]: b for b in svc.container.list_blobs(name_starts_with=prefix)}


def data_dir(rec: RunRecord) -> str:
    """The share directory a run's files go to and its job reads: its snapshot (runs recorded before
    snapshots existed keep the dataset's directory)."""
    return rec.snapshot or rec.dataset


def staging_deadline(svc: Services) -> str:
    deadline = datetime.now(UTC) + timedelta(minutes=svc.settings.staging_timeout_minutes)
    return deadline.isoformat(timespec="seconds").replace("+00:00", "Z")


def inline_secrets(spec: RunSpec) -> list[str]:
    """Names of the spec's secret environment variables given by value (not Key Vault references)."""
    return [name for name, v in spec.secret_environment_variables.items() if hasattr(v, "get_secret_value")]


def _touched_within(rec: RunRecord, seconds: float) -> bool:
    touched = parse_time(rec.updated_at or rec.created_at)
    return touched is not None and (datetime.now(UTC) - touched).total_seconds() < seconds


def fail_run(
    svc: Services,
    rec: RunRecord,
    error: RunError,
    expected_from: str | Iterable[str] = ACTIVE_STATES,
    *,
    folder: str | None = None,
    **changes: Any,
) -> None:
    """Fail a run with ``error`` if it is still in ``expected_from`` (any non-terminal state by
    default; STAGING when staging or submission fails it), through ``RunRegistry.fail``: the
    pipeline's one way to fail a run. A run that moved on meanwhile is left as it is. ``folder``:
    the trigger's dataset folder, when the trigger fails it: a run an HTTP start from that folder
    adopted meanwhile is not failed (raises Adopted)."""

    def not_adopted(r: RunRecord) -> None:
        if folder is not None and started_from_folder(r, folder):
            raise Adopted(r)

    try:
        failed = svc.registry.fail(rec.run_id, error, expected_from, guard=not_adopted, **changes)
        log.warning("run %s failed: %s", rec.run_id, error.message, extra=failed.log_extra())
    except TransitionRejected as rejected:
        log.info(
            "run %s not failed for %s: it is already %s",
            rec.run_id,
            error.code,
            rejected.current.state,
            extra=rec.log_extra(),
        )
