"""Cancelling a run (``DELETE /api/runs/{id}``, a sweep's parent cancelling its trials): the run
leaves its state, its job is terminated and deleted, and optionally its unused cluster."""

from __future__ import annotations

import logging

from shared import services
from shared.registry import ACTIVE_STATES, CANCELLED, TERMINAL_STATES, RunError, RunRecord, TransitionRejected
from shared.services import Services

log = logging.getLogger(__name__)


def cancel_run(run_id: str, *, delete_cluster: bool = False, svc: Services | None = None) -> RunRecord:
    """Tear a run down: mark it cancelled (from any non-terminal state; a compare-and-swap, so the
    monitor cannot finish it meanwhile), terminate and delete its job, and with ``delete_cluster``
    delete its cluster when no other active run uses it. Idempotent: a finished run keeps its state
    (its job is still deleted). Batch AI failures propagate (ComputeError); calling again resumes."""
    svc = svc or services.get_services()
    rec = svc.registry.get(run_id)
    if rec.state not in TERMINAL_STATES:
        try:
            rec = svc.registry.transition(
                run_id,
                CANCELLED,
                ACTIVE_STATES,
                error=RunError("Cancelled", "cancelled on request"),
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
