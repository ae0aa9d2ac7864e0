"""Resubmission (``POST /api/runs/{id}/resubmit``): a new run with a finished run's spec on the same
snapshot, nothing copied; for a sweep's parent, its failed and cancelled trials run again
(``shared.sweep_runs.resubmit``)."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from shared import callbacks, services
from shared.registry import STAGING, TERMINAL_STATES, RunRecord, TransitionRejected, new_run_id
from shared.runspec import RunSpec, RunSpecError, parse_run_spec
from shared.services import Services
from shared.staging import MANIFEST_NAME, MissingFiles, etag_of
from shared.submission import (
    check_ready,
    data_dir,
    inline_secrets,
    needs_preparation,
    prepare_infrastructure,
    read_manifest,
    staging_deadline,
)

log = logging.getLogger(__name__)


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
    svc = svc or services.get_services()
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
        **callbacks.record_fields(svc.settings, spec.callback_url, issued=True),
        "source": "api",
        "staging_deadline": staging_deadline(svc),
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
            prepare_infrastructure(svc, rec, spec)
        check_ready(rec.run_id, svc, spec)
    return svc.registry.get(rec.run_id)


def _check_snapshot_kept(svc: Services, source: RunRecord) -> None:
    """Refuse (SnapshotCleanedUp) a resubmit whose run's snapshot the cleanup deleted."""
    snapshot_dir = data_dir(source)
    try:
        present = svc.share.get_directory_client(snapshot_dir).exists()
    except HttpResponseError:
        present = False
    if not present or not source.staged_files:
        raise ResubmitRefused(
            "SnapshotCleanedUp",
            f"run {source.run_id}'s snapshot {snapshot_dir} is gone (the nightly cleanup deletes a finished "
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
    spec = sweep_runs.in_trial_order(parent, _kept_spec(svc, parent))
    if not sweep_runs.same_trials(parent, spec):
        raise ResubmitRefused(
            "SpecChanged",
            f"sweep {parent.run_id}'s trials cannot be derived again from its spec (its run.json changed "
            "since, or it was recorded before the trial order was kept): start a new sweep instead",
        )
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
    masked = inline_secrets(spec)
    if masked:
        raise ResubmitRefused(
            "SecretsNotKept",
            f"run {rec.run_id}'s secret environment variables ({', '.join(sorted(masked))}) were given "
            "inline and are not kept: start the sweep again with them, or use Key Vault references",
        )
    return spec
