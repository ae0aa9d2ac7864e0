"""Sweeps as runs: a parent run whose trials are ordinary runs on the parent's one snapshot.

A run whose spec has a `sweep` section is a *parent*: when its snapshot is complete it moves from
staging to running without a job of its own (its cluster is ensured for the trials), and every
monitor pass calls ``advance`` for it:

1. stop running trials the early-termination policy stops (state ``cancelled``, error code
   ``early_terminated``, job terminated), from the primary metric's series the monitor recorded;
2. start trials (``shared.sweep.generate_trials``: deterministic from the spec and seed) until
   ``max_concurrent_trials`` are active; a trial's id is ``<parent id>-tNNN`` and ``RunRegistry.create``
   with an existing id returns that run, and the job is submitted by ``submission.submit``'s
   compare-and-swap: a replayed trigger or overlapping pass never starts a trial twice;
3. when every trial has ended, finish the parent: ``succeeded`` naming the best trial (best final
   value of the primary metric among succeeded trials), its parameters and metric, or ``failed``
   when no trial succeeded with that metric.

A trial is an ordinary run (its own record, job, metrics, logs and outputs) with ``parent_id`` set and
``snapshot`` the parent's: no data is copied per trial. Its spec is derived from the parent's
(``shared.sweep.trial_spec``), so secrets the parent's manifest holds reach the trial's job the way
they reach an ordinary run's (``submission.submission_spec`` derives it again when needed). Cancelling
the parent cancels its trials (``cancel_trials``; the next pass also cancels any a race started).

Resubmitting a finished parent (``resubmit``) runs its failed and cancelled trials again: each gets
a new attempt ``<trial id>-rK`` (round K) and the parent's ``sweep.attempts`` says which attempt of
each trial is current; the parent runs again and finishes over the current attempts.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shared import sweep as sweeps
from shared.compute_port import ComputeError
from shared.metrics import MetricsState
from shared.registry import (
    ACTIVE_STATES,
    CANCELLED,
    FAILED,
    RUNNING,
    STAGING,
    SUCCEEDED,
    TERMINAL_STATES,
    RunError,
    RunNotFound,
    RunRecord,
    RunRegistry,
    TransitionRejected,
    utcnow,
)
from shared.runspec import RunSpec

if TYPE_CHECKING:  # annotations only
    from shared.services import Services

log = logging.getLogger(__name__)

EARLY_TERMINATED = "early_terminated"


def is_parent(rec: RunRecord) -> bool:
    """A sweep's parent run (it has no job of its own)."""
    return rec.parent_id is None and isinstance(rec.sweep, dict) and rec.sweep.get("role") == "parent"


def start_parent(
    svc: Services, rec: RunRecord, spec: RunSpec, *, guard: Callable[[RunRecord], Any] | None = None
) -> bool:
    """Move a complete sweep parent from staging to running (compare-and-swap: one winner) and start
    its first trials. False when the cluster is not ready yet or another caller won. ``guard``: the
    transition's (``submission.submit``'s check that the run is as read; what it raises while the
    run is staging is raised on)."""
    assert spec.sweep is not None
    from shared.submission import fail_run

    try:  # the cluster its trials run on: sized for the ones that run at once
        cluster = svc.cloud.ensure_cluster(sweeps.sized_for_trials(spec, _max_nodes(svc)), rec.dataset)
    except ComputeError as exc:
        if exc.permanent:
            fail_run(svc, rec, RunError(exc.code, str(exc)), STAGING)
        return False
    trials = sweeps.generate_trials(spec.sweep)
    try:
        moved = svc.registry.transition(
            rec.run_id,
            RUNNING,
            STAGING,
            current=rec,
            guard=guard,
            cluster=cluster.name,
            cluster_id=cluster.id,
            sweep={
                "role": "parent",
                "trials": len(trials),
                "digest": sweeps.parameters_digest(trials),
                # The registry stores specs with sorted keys: the order trials are derived in is kept.
                "parameter_order": list(spec.sweep.parameters),
                "primary_metric": spec.sweep.primary_metric,
                "goal": spec.sweep.goal,
            },
        )
    except TransitionRejected as rejected:
        if guard is not None and rejected.current.state == STAGING:
            raise  # the guard's: the caller checks again
        return False
    log.info("sweep %s: running, %d trial(s)", rec.run_id, len(trials), extra=rec.log_extra())
    advance(svc, moved, spec)
    return True


def attempt_of(parent: RunRecord, index: int) -> int:
    """Which attempt of trial ``index`` is current: 0, or the round of the resubmit that re-ran it."""
    return int(((parent.sweep or {}).get("attempts") or {}).get(str(index), 0))


def attempt_id(parent_id: str, index: int, attempt: int) -> str:
    """A trial attempt's run id: ``<parent>-tNNN`` for the first, ``<parent>-tNNN-rK`` for the one
    resubmit round K started (derived, so a replay finds the same run)."""
    base = sweeps.trial_id(parent_id, index)
    return base if attempt == 0 else f"{base}-r{attempt}"


def _max_nodes(svc: Services) -> int:
    """MAX_NODES_PER_RUN: how many nodes a sweep's cluster may get for its concurrent trials."""
    return int(svc.spec_context.max_nodes_per_run)


def trial_records(registry: RunRegistry, parent: RunRecord, count: int) -> dict[int, RunRecord]:
    """The current attempt of each of the parent's trials that exist, by index (ids are derived,
    so no query is needed)."""
    found: dict[int, RunRecord] = {}
    for index in range(count):
        with contextlib.suppress(RunNotFound):
            run_id = attempt_id(parent.run_id, index, attempt_of(parent, index))
            found[index] = registry.get(run_id, with_files=False)
    return found


def early_terminated(rec: RunRecord) -> bool:
    """A trial the early-termination policy stopped (not one that failed or was cancelled)."""
    return any(e.get("code") == EARLY_TERMINATED for e in rec.errors)


def to_rerun(rec: RunRecord) -> bool:
    """A trial a resubmit runs again: it failed, or was cancelled other than by the policy."""
    return rec.state == FAILED or (rec.state == CANCELLED and not early_terminated(rec))


def series_of(registry: RunRegistry, run_id: str, metric: str) -> list[list[float]]:
    """The stored series of one metric of a run (empty before the monitor read any)."""
    text, _ = registry.get_metrics(run_id)
    return list(MetricsState.from_json(text).series.get(metric, []))


def advance(svc: Services, parent: RunRecord, spec: RunSpec | None = None) -> RunRecord:
    """One step of a sweep (see module doc); returns the parent as it now is. Without ``spec`` the
    sweep's bookkeeping reads the parent's recorded spec, which needs no secret: a sweep started over
    HTTP with inline secret values goes on after its request has ended (``SECRETS_HELD_SECONDS``);
    the spec with the secrets (``submission.submission_spec``) is fetched only to submit a trial's job."""
    if spec is None:
        spec = _recorded_spec(svc, parent)
        if spec is None:
            return parent
    assert spec.sweep is not None
    sweep = spec.sweep
    trials = sweeps.generate_trials(sweep)
    existing = trial_records(svc.registry, parent, len(trials))
    if parent.state in TERMINAL_STATES:
        cancel_trials(svc, parent, existing.values())
        return parent
    # 1. early termination
    series = {
        rec.run_id: series_of(svc.registry, rec.run_id, sweep.primary_metric) for rec in existing.values()
    }
    running = {rec.run_id: series[rec.run_id] for rec in existing.values() if rec.state == RUNNING}
    ended = {rec.run_id: series[rec.run_id] for rec in existing.values() if rec.state in TERMINAL_STATES}
    for run_id, why in sweeps.trials_to_stop(sweep, running, ended).items():
        index = next(i for i, r in existing.items() if r.run_id == run_id)
        existing[index] = stop_trial(svc, existing[index], why)
    # 2. start trials up to the concurrency limit
    active = sum(1 for rec in existing.values() if rec.state in ACTIVE_STATES)
    to_start = [t for t in trials if t.index not in existing][: max(0, sweep.max_concurrent_trials - active)]
    # Trials created but never submitted (a pass that died in between) are submitted again.
    unsubmitted = [index for index, rec in existing.items() if rec.state == STAGING]
    job_spec = _job_spec(svc, parent, spec) if to_start or unsubmitted else None
    if job_spec is not None:
        for trial in to_start:
            existing[trial.index] = start_trial(svc, parent, job_spec, trial)
        for index in unsubmitted:
            from shared.submission import submit

            child = sweeps.trial_spec(job_spec, trials[index], max_nodes=_max_nodes(svc))
            submit(svc, existing[index], child)
    # 3. finish
    if len(existing) == len(trials) and all(rec.state in TERMINAL_STATES for rec in existing.values()):
        return finish_parent(svc, parent, sweep, trials, existing)
    return parent


def _recorded_spec(svc: Services, parent: RunRecord) -> RunSpec | None:
    """The parent's spec as recorded (secret values masked): enough for the sweep's bookkeeping.
    A recorded spec today's settings refuse is had the way a job's is (``submission_spec``)."""
    from shared.runspec import RunSpecError, parse_run_spec
    from shared.submission import submission_spec

    try:
        spec = parse_run_spec(parent.spec or {}, svc.spec_context)
    except RunSpecError:
        return submission_spec(svc, parent)
    spec = in_trial_order(parent, spec)
    return spec if same_trials(parent, spec) else submission_spec(svc, parent)


def in_trial_order(parent: RunRecord, spec: RunSpec) -> RunSpec:
    """``spec`` with its sweep's parameters in the order the parent's trials were derived in (the
    recorded spec has them sorted by name, and a grid's trial order follows the parameter order)."""
    order = (parent.sweep or {}).get("parameter_order")
    if spec.sweep is None or not order or set(order) != set(spec.sweep.parameters):
        return spec
    parameters = {name: spec.sweep.parameters[name] for name in order}
    return spec.model_copy(update={"sweep": spec.sweep.model_copy(update={"parameters": parameters})})


def same_trials(parent: RunRecord, spec: RunSpec) -> bool:
    """``spec`` derives the trial set the parent started with (its recorded digest)."""
    digest = (parent.sweep or {}).get("digest")
    return spec.sweep is not None and digest == sweeps.parameters_digest(sweeps.generate_trials(spec.sweep))


def _job_spec(svc: Services, parent: RunRecord, spec: RunSpec) -> RunSpec | None:
    """The spec trials' jobs are created with: ``spec`` itself when it holds every secret value it
    names (the request or manifest that started the sweep, or no inline secrets), else the parent's
    spec had again with them (``submission.submission_spec``; None when not possible now)."""
    from shared.resubmit import MASKED_SECRET
    from shared.submission import submission_spec

    values = spec.secret_environment_variables.values()
    if not any(getattr(v, "get_secret_value", lambda: None)() == MASKED_SECRET for v in values):
        return spec
    return submission_spec(svc, parent)


def start_trial(svc: Services, parent: RunRecord, spec: RunSpec, trial: sweeps.Trial) -> RunRecord:
    """Create the trial's run (idempotent per derived id) and submit its job (one winner)."""
    from shared.submission import submit

    child = sweeps.trial_spec(spec, trial, max_nodes=_max_nodes(svc))
    attempt = attempt_of(parent, trial.index)
    info: dict[str, Any] = {"role": "trial", "index": trial.index, "parameters": trial.parameters}
    if attempt:  # recorded as a re-run of the attempt before it
        info.update(attempt=attempt, rerun_of=_previous_attempt(parent, trial.index, attempt))
    rec: RunRecord = svc.registry.create(
        parent.dataset,
        run_id=attempt_id(parent.run_id, trial.index, attempt),
        spec=child.to_json_dict(),
        source="sweep",
        parent_id=parent.run_id,
        snapshot=parent.snapshot,
        expected_files=[],
        sweep=info,
    )
    if rec.state == STAGING:
        submit(svc, rec, child)
        rec = svc.registry.get(rec.run_id, with_files=False)
    log.info(
        "sweep %s: trial %s (%s) %s",
        parent.run_id,
        rec.run_id,
        trial.parameters,
        rec.state,
        extra=rec.log_extra(),
    )
    return rec


def stop_trial(svc: Services, rec: RunRecord, why: str) -> RunRecord:
    """Cancel a trial the policy stopped, with the reason, and terminate its job."""
    try:
        rec = svc.registry.transition(
            rec.run_id,
            CANCELLED,
            ACTIVE_STATES,
            error=RunError(EARLY_TERMINATED, f"stopped early: {why}"),
        )
    except TransitionRejected as rejected:
        return rejected.current
    log.info("sweep trial %s stopped early: %s", rec.run_id, why, extra=rec.log_extra())
    if rec.job_name:
        with contextlib.suppress(ComputeError):
            svc.cloud.terminate_and_delete_job(svc.cloud.job_names(rec.run_id, rec.dataset))
    return rec


def cancel_trials(svc: Services, parent: RunRecord, trials: Any = None) -> None:
    """Cancel every active trial of a parent (when the parent was cancelled or ended)."""
    if trials is None:
        count = int((parent.sweep or {}).get("trials") or 0)
        trials = trial_records(svc.registry, parent, count).values()
    from shared.cancellation import cancel_run

    for rec in trials:
        if rec.state not in TERMINAL_STATES:
            with contextlib.suppress(ComputeError, RunNotFound):
                cancel_run(rec.run_id, svc=svc)


def leaderboard(registry: RunRegistry, parent: RunRecord) -> list[dict[str, Any]]:
    """The parent's trials, best first: parameters, state, primary metric's final value, duration."""
    info = parent.sweep or {}
    metric = info.get("primary_metric")
    goal = info.get("goal", "minimize")
    rows: list[dict[str, Any]] = []
    for index, rec in sorted(trial_records(registry, parent, int(info.get("trials") or 0)).items()):
        final = sweeps.final_value(series_of(registry, rec.run_id, metric)) if metric else None
        rows.append(
            {
                "id": rec.run_id,
                "index": index,
                "parameters": (rec.sweep or {}).get("parameters", {}),
                "state": rec.state,
                "early_terminated": early_terminated(rec),
                "attempt": attempt_of(parent, index),
                "metric": final,
                "duration_seconds": _duration(rec),
            }
        )
    sign = 1 if goal == "minimize" else -1
    rows.sort(key=lambda r: (r["metric"] is None, sign * (r["metric"] or 0.0), r["index"]))
    return rows


def _duration(rec: RunRecord) -> float | None:
    from shared.registry import parse_time

    start = parse_time(rec.times.get(RUNNING))
    end = next((parse_time(rec.times[s]) for s in (SUCCEEDED, FAILED, CANCELLED) if s in rec.times), None)
    return (end - start).total_seconds() if start and end else None


def finish_parent(
    svc: Services,
    parent: RunRecord,
    sweep: sweeps.SweepSpec,
    trials: list[sweeps.Trial],
    existing: dict[int, RunRecord],
) -> RunRecord:
    """Every trial has ended: the parent succeeds naming its best trial, or fails without one."""
    finals = {
        rec.run_id: sweeps.final_value(series_of(svc.registry, rec.run_id, sweep.primary_metric))
        for rec in existing.values()
        if rec.state == SUCCEEDED
    }
    best = sweeps.best_trial(sweep, finals)
    info = dict(parent.sweep or {})
    if best is None:
        state = FAILED
        error: RunError | None = RunError(
            "NoSuccessfulTrial", f"no trial succeeded with a value of {sweep.primary_metric!r}"
        )
    else:
        index = next(i for i, r in existing.items() if r.run_id == best)
        info["best"] = {
            "trial": best,
            "parameters": trials[index].parameters,
            "metric": {"name": sweep.primary_metric, "value": finals[best]},
        }
        state = SUCCEEDED
        error = None
    try:
        done: RunRecord = svc.registry.transition(
            parent.run_id,
            state,
            RUNNING,
            current=parent,
            sweep=info,
            error=error,
        )
    except TransitionRejected as rejected:
        return rejected.current
    log.info("sweep %s %s: best %s", parent.run_id, state, info.get("best"), extra=parent.log_extra())
    return done


def _previous_attempt(parent: RunRecord, index: int, attempt: int) -> str | None:
    """The run id of the attempt that resubmit round ``attempt`` re-ran for trial ``index``."""
    for entry in (parent.sweep or {}).get("resubmits") or []:
        if int(entry.get("round", 0)) == attempt:
            return (entry.get("reran") or {}).get(str(index))
    return None


def resubmit(svc: Services, parent: RunRecord, spec: RunSpec) -> RunRecord:
    """Run a finished sweep's failed and cancelled trials again (resubmit round K): each such trial
    gets a new attempt ``<parent>-tNNN-rK`` with the same parameters on the parent's snapshot,
    recorded as a re-run of the attempt before it; trials the policy stopped early and trials that
    succeeded stay as they are, and trials a cancelled sweep never started are started. The parent
    goes back to ``running`` (``RunRegistry.reopen``: one winner among concurrent requests; a loser,
    or a request while it runs, gets ``TransitionRejected``) and finishes again when its trials
    have, naming the best over the current attempts; its sweep keeps the round's history (which
    trials, the state and best it had) and its callback fires again at that finish. Raises
    ``LookupError`` when there is nothing to run again."""
    assert spec.sweep is not None
    trials = sweeps.generate_trials(spec.sweep)
    existing = trial_records(svc.registry, parent, len(trials))
    rerun = {index: rec.run_id for index, rec in sorted(existing.items()) if to_rerun(rec)}
    never_started = [t.index for t in trials if t.index not in existing]
    if not rerun and not never_started:
        raise LookupError(
            f"sweep {parent.run_id} has no failed or cancelled trial to run again "
            "(trials stopped early by the policy are not re-run)"
        )

    def reopen_guard(rec: RunRecord) -> None:
        if rec.state not in TERMINAL_STATES or rec.sweep != parent.sweep:
            raise TransitionRejected(f"sweep {rec.run_id} is {rec.state} (or was resubmitted meanwhile)", rec)

    info = dict(parent.sweep or {})
    history = list(info.get("resubmits") or [])
    round_ = len(history) + 1
    attempts = dict(info.get("attempts") or {})
    attempts.update({str(index): round_ for index in rerun})
    entry = {
        "round": round_,
        "time": utcnow(),
        "reran": {str(index): run_id for index, run_id in rerun.items()},
        "started": never_started,
        "state_before": parent.state,
        "best_before": info.pop("best", None),
    }
    info.update(attempts=attempts, resubmits=[*history, entry])
    reopened = svc.registry.reopen(parent.run_id, current=parent, guard=reopen_guard, sweep=info)
    log.info(
        "sweep %s: resubmit round %d re-runs %s, starts %s",
        parent.run_id,
        round_,
        ", ".join(rerun.values()) or "none",
        never_started or "none",
        extra=parent.log_extra(),
    )
    return advance(svc, reopened, spec)
