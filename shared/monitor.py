"""Monitor: the timer that moves submitted runs through their states and reports finished ones.

One pass (``run_monitor``):

1. Staging runs: past their staging deadline (STAGING_TIMEOUT_MINUTES) they fail, naming the files
   that never arrived (or the missing run.json); otherwise readiness is checked again (a safety net
   for a trigger that died between staging its file and submitting).
2. Submitted runs (provisioning, queued, running) are grouped by experiment; each experiment's jobs
   are listed with ONE call per page, and the workspace's clusters with one call, never a GET per
   run (1,000 runs over 10 experiments cost about a dozen ARM requests). Each run is reconciled:
   job queued -> ``provisioning`` while its cluster resizes, ``queued`` once it is steady; running
   -> ``running``; succeeded/failed -> terminal with exit code, errors, output files (``stdouterr``,
   ``MODEL`` and every declared output directory: name, size, download URL) and the tail of stdout
   (only the last MAX_STDOUT_TAIL_BYTES are downloaded). Times come from the job's execution info. A
   cluster with errors fails its waiting runs with the cluster's error; a job that was never created
   (a crashed or faulted submission) is created again with its deterministic name.
   Running jobs' metrics (``shared.metrics``): the new bytes of each one's stdout since the last pass
   (at most READ_BYTES_PER_PASS per run, a few runs at a time, read from the file share, never
   through ARM) are parsed into the run's bounded series; the run record keeps the latest value of
   each metric. No read starts later than METRICS_PASS_DEADLINE_SECONDS into the pass, beyond the
   first METRICS_MIN_READS_PER_PASS: the runs whose metrics were read longest ago go first, and the
   others wait for the next pass (a thousand chatty jobs cannot stretch it, and a slow pass still
   moves some curves on). A finishing job's remaining output is read to its end (bounded) before
   the run is moved, so the finished record and its callback carry the final values.
3. Node time and idle clusters (``shared.node_time``): from the same cluster listing, each
   cluster's node-minutes are added up in its ledger, each run gets the node-minutes its cluster was
   allocated while it was active and after it, and a cluster whose last queued or running job ended
   CLUSTER_IDLE_MINUTES ago has its nodes released (CLUSTER_IDLE_ACTION: scaled to zero, or deleted);
   auto-scale clusters are the service's. The release is claimed by compare-and-swap on the ledger
   (overlapping passes release once), and the registry is read again right before it, as cleanup
   does: a cluster an active run uses is never touched, and one a run claimed meanwhile gets its
   nodes back. A queued job whose manually scaled cluster holds fewer nodes than it needs asks for
   them (a release that raced the run's submission).
4. Finished runs with ``callback_pending`` get their summary POSTed (``shared.callbacks``), after
   every state change of the pass is recorded and within a budget of its own: each delivery has a
   hard deadline, no delivery starts once CALLBACK_PASS_BUDGET_SECONDS are spent, and a receiver
   that never answers only uses up its own run's passes.

Every change is a registry compare-and-swap, so a replayed or overlapping pass changes nothing twice.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import random
import secrets
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import HttpResponseError

from shared import callbacks, logtail, node_time, services, sweep_runs
from shared import metrics as run_metrics
from shared.compute_port import LEAD_LOG_SUFFIXES, ClusterStatus, ComputeError, JobStatus
from shared.registry import (
    ACTIVE_STATES,
    FAILED,
    PROVISIONING,
    QUEUED,
    RUNNING,
    STAGING,
    SUBMITTED_STATES,
    SUCCEEDED,
    TERMINAL_STATES,
    OutputFile,
    RegistryError,
    RunError,
    RunNotFound,
    RunRecord,
    RunRegistry,
    TransitionRejected,
    parse_time,
    utcnow,
)
from shared.runspec import RunSpecError
from shared.services import Services
from shared.submission import check_ready, create_job, missing_files, submission_spec
from shared.times import iso_utc

log = logging.getLogger(__name__)

RESUBMIT_GRACE = timedelta(seconds=60)  # a submission younger than this may still be in flight
MAX_OUTPUT_FILES = 1000
MAX_OUTPUT_DEPTH = 4
MAX_CALLBACK_PASSES = 3
CALLBACK_ATTEMPTS = 3  # per pass, with backoff
CALLBACK_TIMEOUT_SECONDS = 5.0  # per socket operation
CALLBACK_DEADLINE_SECONDS = 20.0  # one delivery in one pass, all attempts and backoff together
CALLBACK_PASS_BUDGET_SECONDS = 30.0  # all deliveries of one pass: no new one starts after this
CALLBACK_WORKERS = 4
# A pass's claim on a delivery: longer than its hard deadline.
CALLBACK_CLAIM_SECONDS = 120
STDOUT_NAMES = tuple(f"stdout{suffix}.txt" for suffix in LEAD_LOG_SUFFIXES)
METRICS_WORKERS = 8  # running jobs whose stdout is read at once
METRICS_PASS_DEADLINE_SECONDS = 2.0  # into the pass: no metrics read starts later (the rest: next pass)
METRICS_MIN_READS_PER_PASS = 8  # read even past the deadline: a slow pass never starves every curve
FINAL_METRICS_BYTES = 4 * 1024 * 1024  # the most of a finished job's unread stdout parsed for metrics


@dataclass
class MonitorReport:
    """What one pass did (logged, and asserted by tests)."""

    started: float = field(default_factory=time.monotonic)  # when the pass began (monotonic clock)
    checked: int = 0
    metrics_read: int = 0  # running jobs whose stdout was read for metrics
    metrics_deferred: int = 0  # running jobs left for the next pass (the pass's budget was spent)
    transitions: list[tuple[str, str, str]] = field(default_factory=list)  # (run id, from, to)
    resubmitted: list[str] = field(default_factory=list)
    callbacks: dict[str, str] = field(default_factory=dict)
    released: list[str] = field(default_factory=list)  # clusters whose idle nodes were released
    nodes_requested: list[str] = field(default_factory=list)  # clusters asked for nodes again
    errors: list[str] = field(default_factory=list)


def _ts(value: object) -> str | None:
    """A job's time (a datetime from the SDK, or text already) in the app's form, or None."""
    if value is None:
        return None
    return iso_utc(value) if isinstance(value, datetime) else str(value)


# --- the pass ------------------------------------------------------------------------------------------
def run_monitor(svc: Services | None = None, *, now: datetime | None = None) -> MonitorReport:
    """One monitoring pass over every active run (see module doc)."""
    svc = svc or services.get_services()
    now = now or datetime.now(UTC)
    report = MonitorReport()
    staging = _check_staging(svc, now, report)
    clusters = _list_clusters(svc, report) if _clusters_to_watch(svc, now) else {}
    if clusters is not None:
        submitted = _reconcile_submitted(svc, clusters, now, report)
        # The active runs this pass read, less those it finished: who uses each cluster (the
        # release itself reads the registry again).
        finished = {run_id for run_id, _, to in report.transitions if to in TERMINAL_STATES}
        users: dict[str, list[str]] = defaultdict(list)
        for rec in [*staging, *submitted]:
            if rec.cluster and rec.run_id not in finished:
                users[rec.cluster].append(rec.run_id)
        _account_clusters(svc, clusters, users, now, report)
    _deliver_callbacks(svc, report)
    log.info(
        "monitor pass: %d run(s) checked, %d transition(s), %d resubmitted, %d callback(s)",
        report.checked,
        len(report.transitions),
        len(report.resubmitted),
        len(report.callbacks),
    )
    return report


def _move(
    svc: Services, rec: RunRecord, to_state: str, report: MonitorReport, **changes: Any
) -> RunRecord | None:
    try:
        moved = svc.registry.transition(rec.run_id, to_state, rec.state, **changes)
    except TransitionRejected as rejected:
        log.info(
            "run %s not moved to %s: it is now %s",
            rec.run_id,
            to_state,
            rejected.current.state,
            extra=rec.log_extra(),
        )
        return None
    report.transitions.append((rec.run_id, rec.state, to_state))
    return moved


# --- staging -----------------------------------------------------------------------------------------
def _check_staging(svc: Services, now: datetime, report: MonitorReport) -> list[RunRecord]:
    """Check every staging run; the runs read."""
    seen: list[RunRecord] = []
    for rec in svc.registry.iter_runs(state=STAGING):
        seen.append(rec)
        report.checked += 1
        deadline = parse_time(rec.staging_deadline)
        if deadline is None:
            created = parse_time(rec.created_at) or now
            deadline = created + timedelta(minutes=svc.settings.staging_timeout_minutes)
        try:
            if now < deadline:
                if rec.spec is not None and check_ready(rec.run_id, svc):
                    report.transitions.append((rec.run_id, STAGING, "submitted"))
                continue
            full = svc.registry.get(rec.run_id)
            if full.spec is None:
                message = f"staging timed out: {rec.dataset}/run.json never arrived"
                missing: list[str] = []
            else:
                missing = missing_files(svc, full)
                if not missing and check_ready(rec.run_id, svc):
                    continue  # everything arrived at the last moment, and the job is submitted
                shown = ", ".join(missing[:50]) + (
                    f" and {len(missing) - 50} more" if len(missing) > 50 else ""
                )
                message = (
                    f"staging timed out: file(s) never arrived: {shown}"
                    if missing
                    else "staging timed out: every file arrived but the job could not be submitted "
                    "(the cluster or Batch AI kept refusing; see the function's log)"
                )
            error = RunError("StagingTimeout", message, details={"missing_files": missing[:200]})
            _move(svc, full, FAILED, report, error=error)
            log.warning("run %s: %s", rec.run_id, message, extra=rec.log_extra())
        except (ComputeError, HttpResponseError, RegistryError) as exc:
            report.errors.append(f"{rec.run_id}: {exc}")
            log.warning("run %s: staging check failed: %s", rec.run_id, exc, extra=rec.log_extra())
        except Exception as exc:  # one run's surprise must not stop the pass for the others
            _run_failed_unexpectedly(svc, rec, exc, report)
    return seen


# --- submitted runs ---------------------------------------------------------------------------------------
def _clusters_to_watch(svc: Services, now: datetime) -> bool:
    """Whether this pass needs the clusters: some run is active, a cluster the monitor saw still
    held nodes or owes a run its node time, or CLUSTER_IDLE_MINUTES passed since the clusters were
    last listed (a cluster no pass saw in use: created by an upload whose run failed at once, or by
    hand). A quiet app asks ARM once per CLUSTER_IDLE_MINUTES, not every pass (against Azure, where
    Batch AI is retired, that is also how often the failed listing is logged)."""
    try:
        busy = svc.registry.list_runs(state=sorted(ACTIVE_STATES), page_size=1)[0] or any(
            ledger.nodes or ledger.active_marks or ledger.after_marks
            for ledger in svc.registry.cluster_ledgers().values()
        )
        if not busy:
            last = parse_time(svc.registry.clusters_listed_at())
            if last is not None and now - last < timedelta(minutes=svc.settings.cluster_idle_minutes):
                return False
        svc.registry.set_clusters_listed_at(iso_utc(now))
    except (RegistryError, HttpResponseError):
        pass
    return True


def _list_clusters(svc: Services, report: MonitorReport) -> dict[str, ClusterStatus] | None:
    """The workspace's clusters, with one call (None when it failed: the next pass retries)."""
    try:
        return svc.cloud.list_clusters()
    except (ComputeError, HttpResponseError) as exc:
        report.errors.append(f"listing clusters: {exc}")
        log.warning("monitor: listing clusters failed (next pass retries): %s", exc)
        return None


def _reconcile_submitted(
    svc: Services, clusters: dict[str, ClusterStatus], now: datetime, report: MonitorReport
) -> list[RunRecord]:
    """Reconcile every submitted run with its job; the runs read."""
    runs = list(svc.registry.iter_runs(state=sorted(SUBMITTED_STATES)))
    if not runs:
        return runs
    parents = [rec for rec in runs if sweep_runs.is_parent(rec)]  # no job: advanced below
    by_experiment: dict[tuple[str, str, str], list[RunRecord]] = defaultdict(list)
    for rec in runs:
        if sweep_runs.is_parent(rec):
            continue
        names = svc.cloud.job_names(rec.run_id, rec.dataset)
        key = (
            rec.resource_group or names.resource_group,
            rec.workspace or names.workspace,
            rec.experiment or names.experiment,
        )
        by_experiment[key].append(rec)
    running: list[tuple[RunRecord, JobStatus]] = []
    listing = svc.cloud.list_jobs_of(experiment for _, _, experiment in by_experiment)
    for (_rg, _ws, experiment), members in by_experiment.items():
        if experiment in listing.errors:
            exc = listing.errors[experiment]
            report.errors.append(f"listing jobs of {experiment}: {exc}")
            log.warning(
                "monitor: listing jobs of experiment %s failed (next pass retries): %s", experiment, exc
            )
            continue
        jobs = {job.name: job for job in listing.jobs.get(experiment, [])}
        for rec in members:
            report.checked += 1
            job = jobs.get(rec.job_name or "")
            try:
                _reconcile(svc, rec, job, clusters.get(rec.cluster or ""), now, report)
                if job is not None and job.state == "running":
                    running.append((rec, job))
            except (ComputeError, HttpResponseError, RegistryError, OSError) as exc:
                report.errors.append(f"{rec.run_id}: {exc}")
                log.warning(
                    "run %s: reconcile failed (next pass retries): %s", rec.run_id, exc, extra=rec.log_extra()
                )
            except Exception as exc:  # one run's surprise must not stop the pass for the others
                _run_failed_unexpectedly(svc, rec, exc, report)
    _read_running_metrics(svc, running, report)
    for parent in parents:  # after its trials moved and their metrics were read
        report.checked += 1
        try:
            moved = sweep_runs.advance(svc, parent)
            if moved.state != parent.state:
                report.transitions.append((parent.run_id, parent.state, moved.state))
        except (ComputeError, HttpResponseError, RegistryError, OSError) as exc:
            report.errors.append(f"{parent.run_id}: {exc}")
            log.warning(
                "sweep %s: step failed (next pass retries): %s", parent.run_id, exc, extra=parent.log_extra()
            )
        except Exception as exc:  # one run's surprise must not stop the pass for the others
            _run_failed_unexpectedly(svc, parent, exc, report)
    return runs


def _run_failed_unexpectedly(svc: Services, rec: RunRecord, exc: Exception, report: MonitorReport) -> None:
    """Record an unexpected error against its run, so the pass goes on with the others. A spec that
    no longer validates (e.g. a Key Vault secret without a vault, stored before parsing checked it)
    can never be submitted: that run fails with the reason instead of erring on every pass."""
    report.errors.append(f"{rec.run_id}: {type(exc).__name__}: {exc}")
    if isinstance(exc, RunSpecError):
        log.warning("run %s: its spec is invalid: %s", rec.run_id, exc, extra=rec.log_extra())
        error = RunError("InvalidSpec", str(exc)[:2000], details={"errors": exc.errors})
        try:
            _move(svc, rec, FAILED, report, error=error)
        except Exception as again:
            log.warning("run %s: could not record the failure: %s", rec.run_id, again, extra=rec.log_extra())
        return
    log.exception("run %s: monitoring failed (next pass retries)", rec.run_id, extra=rec.log_extra())


def _reconcile(
    svc: Services,
    rec: RunRecord,
    job: JobStatus | None,
    cluster: ClusterStatus | None,
    now: datetime,
    report: MonitorReport,
) -> None:
    if job is None:
        _job_missing(svc, rec, cluster, now, report)
        return
    state = job.state
    start = _ts(job.started_at)
    if state in ("succeeded", "failed"):
        _finish(svc, rec, job, state, report)
        return
    if state == "running":
        if rec.state != RUNNING:
            _move(svc, rec, RUNNING, report, at=start or utcnow(), earlier_times=_skipped(rec, QUEUED, job))
        return
    if state == "queued":
        errors = _cluster_failure(cluster)
        if errors:
            _fail_for_cluster(svc, rec, errors, report)
            return
        resizing = cluster is None or cluster.allocation_state == "resizing"
        if cluster is not None and _too_few_nodes(rec, cluster):
            if svc.cloud.request_nodes(cluster.name, _nodes_needed(rec)):
                report.nodes_requested.append(cluster.name)
            resizing = True
        wanted = PROVISIONING if resizing else QUEUED
        if rec.state != wanted and rec.state != RUNNING:
            _move(svc, rec, wanted, report)
    # "terminating": wait for the final state.


def _nodes_needed(rec: RunRecord) -> int:
    spec = rec.spec or {}
    manual = (spec.get("cluster") or {}).get("manual") or {}
    return max(int(spec.get("node_count") or 1), int(manual.get("target_node_count") or 0))


def _too_few_nodes(rec: RunRecord, cluster: ClusterStatus) -> bool:
    """A manually scaled cluster held at fewer nodes than the queued run needs (its nodes were
    released while idle just as the run was submitted): it would wait for ever."""
    target = cluster.manual_target
    return target is not None and target < _nodes_needed(rec) and cluster.provisioning_state != "deleting"


def _skipped(rec: RunRecord, state: str, job: JobStatus) -> dict[str, str]:
    """A time for a state the run passed between two polls (from the job's creation time)."""
    if state in rec.times:
        return {}
    created = _ts(job.created_at)
    return {state: created} if created else {}


def _cluster_failure(cluster: ClusterStatus | None) -> list[dict[str, Any]]:
    """The cluster's errors when it failed to provision: it reports errors, is not resizing any more,
    and has no node that is or may become usable (a single failed node among good ones is not a
    failed cluster: the job runs on the others)."""
    if cluster is None:
        return []
    errors = cluster.errors
    if not errors or cluster.allocation_state == "resizing":
        return []
    if cluster.usable_nodes:
        return []
    return [{"code": e.code or "ClusterError", "message": e.message or "cluster error"} for e in errors]


def _fail_for_cluster(
    svc: Services, rec: RunRecord, errors: list[dict[str, Any]], report: MonitorReport
) -> None:
    first = errors[0]
    error = RunError(
        "ClusterFailed",
        f"cluster {rec.cluster} failed to provision: {first['code']}: {first['message']}",
        details={"cluster_errors": errors},
    )
    if _move(svc, rec, FAILED, report, error=error):
        log.warning("run %s failed: cluster %s has errors", rec.run_id, rec.cluster, extra=rec.log_extra())
        with contextlib.suppress(ComputeError, HttpResponseError):
            svc.cloud.terminate_and_delete_job(svc.cloud.job_names(rec.run_id, rec.dataset))


def _job_missing(
    svc: Services, rec: RunRecord, cluster: ClusterStatus | None, now: datetime, report: MonitorReport
) -> None:
    """No job in the listing: its creation failed or never happened (create it again), or it was
    deleted behind our back (the run fails)."""
    if rec.submitted_at:
        error = RunError("JobNotFound", f"job {rec.job_name} no longer exists in Batch AI")
        _move(svc, rec, FAILED, report, error=error)
        return
    entered = parse_time(rec.times.get(rec.state)) or now
    if now - entered < RESUBMIT_GRACE:
        return  # the submitting function may still be creating it
    errors = _cluster_failure(cluster)
    if errors:
        _fail_for_cluster(svc, rec, errors, report)
        return
    spec = submission_spec(svc, rec)
    if spec is None:
        return
    if create_job(svc, rec, spec):
        report.resubmitted.append(rec.run_id)


# --- finished jobs --------------------------------------------------------------------------------------
def _finish(svc: Services, rec: RunRecord, job: JobStatus, state: str, report: MonitorReport) -> None:
    exit_code = job.exit_code
    end = _ts(job.ended_at) or utcnow()
    errors = [RunError(e.code or "JobError", e.message or "", end).to_json() for e in job.errors]
    names = svc.cloud.job_names(rec.run_id, rec.dataset)
    outputs = collect_outputs(svc, rec, names)
    # Names and sizes only: a download URL is a signed link that expires (GET /api/runs/{id} lists
    # fresh ones), and the registry and callbacks are no place for credentials.
    svc.registry.set_output_files(rec.run_id, [dataclasses.replace(o, download_url=None) for o in outputs])
    tail = stdout_tail(outputs, svc.settings.max_stdout_tail_bytes)
    target = SUCCEEDED if state == "succeeded" else FAILED
    if target == FAILED and not errors:
        errors = [RunError("JobFailed", f"the job exited with code {exit_code}", end).to_json()]
    extra = _skipped(rec, QUEUED, job)
    final_metrics: dict[str, Any] = {}
    try:
        final_metrics = read_metrics(svc, rec, job, final=True) or _stored_metrics(svc, rec)
    except (HttpResponseError, RegistryError, OSError) as exc:  # the run finishes with what it has
        log.warning("run %s: final metrics not read: %s", rec.run_id, exc, extra=rec.log_extra())
    start = _ts(job.started_at)
    if start and RUNNING not in rec.times:
        extra[RUNNING] = start

    def add_job_errors(now: RunRecord) -> None:
        # Appended to the run as it is at the write (``rec`` may be stale: an error recorded since
        # it was read stays). The job's errors carry its end time, so a replay adds none twice.
        now.errors = [*now.errors, *(e for e in errors if e not in now.errors)]

    moved = None
    try:
        # The errors go first, in a compare-and-swap of their own, so no reader (nor a callback)
        # ever sees the finished run without them.
        if errors:
            svc.registry.update(rec.run_id, add_job_errors, expected_state=rec.state)
        moved = svc.registry.transition(
            rec.run_id,
            target,
            rec.state,
            at=end,
            earlier_times=extra,
            exit_code=exit_code,
            stdout_tail=tail,
            **final_metrics,
        )
    except TransitionRejected as rejected:
        log.info("run %s already %s", rec.run_id, rejected.current.state, extra=rec.log_extra())
        return
    report.transitions.append((rec.run_id, rec.state, target))
    log.info(
        "run %s %s (exit code %s, %d output file(s))",
        rec.run_id,
        target,
        exit_code,
        len(outputs),
        extra=moved.log_extra(),
    )


# --- node time and idle clusters ---------------------------------------------------------------------
def _account_clusters(
    svc: Services,
    clusters: dict[str, ClusterStatus],
    users: dict[str, list[str]],
    now: datetime,
    report: MonitorReport,
) -> None:
    """Sample each cluster's node time, record runs' node-minutes, and release idle clusters' nodes
    (see the module doc and ``shared.node_time``). A failure is that cluster's alone."""
    try:
        ledgers = svc.registry.cluster_ledgers()
    except (RegistryError, HttpResponseError) as exc:
        report.errors.append(f"node time: {exc}")
        log.warning("monitor: node time not recorded this pass: %s", exc)
        return
    idle_limit = timedelta(minutes=svc.settings.cluster_idle_minutes)
    for name, ledger in ledgers.items():
        if name not in clusters:
            _close_ledger(svc, ledger, now, report)
    for name, cluster in clusters.items():
        try:
            ledger = ledgers.get(name) or node_time.new_ledger(cluster, now)
            ended = {
                run_id: _ended_at(svc, run_id)
                for run_id in ledger.active_marks
                if run_id not in users.get(name, ())
            }
            step = node_time.advance(ledger, cluster, users.get(name, ()), ended, now)
            if step.idle_for is not None and step.idle_for >= idle_limit and _holds_nodes(svc, cluster):
                step.ledger.released_at = iso_utc(now)
                step.changed = True
            if step.changed and not svc.registry.put_cluster_ledger(step.ledger):
                continue  # an overlapping pass counted this cluster (and released it if due)
            for run_id, minutes in step.run_node_minutes.items():
                _record_node_minutes(svc, run_id, minutes)
            if step.ledger.released_at == iso_utc(now):
                _release_idle(svc, cluster, step.idle_for or timedelta(0), report)
        except (ComputeError, HttpResponseError, RegistryError) as exc:
            report.errors.append(f"cluster {name}: {exc}")
            log.warning("monitor: cluster %s: node time or release failed: %s", name, exc)
        except Exception as exc:  # one cluster's surprise must not stop the pass (callbacks follow)
            report.errors.append(f"cluster {name}: {type(exc).__name__}: {exc}")
            log.exception("monitor: cluster %s: node time or release failed", name)


def _close_ledger(svc: Services, ledger: Any, now: datetime, report: MonitorReport) -> None:
    """A cluster that is gone (deleted): its runs get their final node time, and its ledger goes."""
    gone = ClusterStatus(name=ledger.name, id="", current_node_count=0)
    try:
        ended = {run_id: _ended_at(svc, run_id) for run_id in ledger.active_marks}
        step = node_time.advance(ledger, gone, (), ended, now)
        if not svc.registry.delete_cluster_ledger(step.ledger):
            return  # an overlapping pass closed it (or counted it once more)
        for run_id, minutes in step.run_node_minutes.items():
            _record_node_minutes(svc, run_id, minutes)
    except (RegistryError, HttpResponseError) as exc:
        report.errors.append(f"cluster {ledger.name}: {exc}")
        log.warning("monitor: closing the node time of cluster %s failed: %s", ledger.name, exc)


def _active_users(svc: Services) -> dict[str, list[str]]:
    """Active runs (read now) by the cluster they use."""
    users: dict[str, list[str]] = defaultdict(list)
    for rec in svc.registry.iter_runs(state=sorted(ACTIVE_STATES)):
        if rec.cluster:
            users[rec.cluster].append(rec.run_id)
    return users


def _ended_at(svc: Services, run_id: str) -> datetime | None:
    try:
        rec = svc.registry.get(run_id, with_files=False)
    except RunNotFound:
        return None
    return parse_time(rec.times.get(rec.state)) if rec.state in TERMINAL_STATES else None


def _holds_nodes(svc: Services, cluster: ClusterStatus) -> bool:
    """Whether releasing the cluster changes anything: an auto-scale cluster is the service's; a
    manual one held at zero nodes has nothing left to give (delete: anything not deleting yet)."""
    if cluster.auto_scale or cluster.provisioning_state == "deleting":
        return False
    if svc.settings.cluster_idle_action == "delete":
        return True
    return bool(cluster.manual_target)


def _record_node_minutes(svc: Services, run_id: str, minutes: dict[str, Any]) -> None:
    def apply(rec: RunRecord) -> None:
        rec.node_minutes = {**(rec.node_minutes or {}), **minutes}

    with contextlib.suppress(RunNotFound):
        svc.registry.update(run_id, apply)


def _release_idle(svc: Services, cluster: ClusterStatus, idle_for: timedelta, report: MonitorReport) -> None:
    """Release (or delete) an idle cluster this pass claimed. The registry is read again right
    before, as cleanup does before a deletion: a run that took the cluster since the pass began
    keeps it; one that takes it just after gets its nodes asked for again."""
    name = cluster.name
    users = _active_users(svc).get(name, [])
    if users:
        log.info("cluster %s not released: now used by run(s) %s", name, ", ".join(users))
        return
    minutes = idle_for.total_seconds() / 60
    if svc.settings.cluster_idle_action == "delete":
        done = svc.cloud.delete_cluster(name)
        what = "deleted"
    else:
        done = svc.cloud.release_nodes(name)
        what = "scaled to zero"
    if done:
        report.released.append(name)
        log.info(
            "cluster %s %s: idle for %.1f min (CLUSTER_IDLE_MINUTES=%s)",
            name,
            what,
            minutes,
            svc.settings.cluster_idle_minutes,
        )
    if svc.settings.cluster_idle_action == "delete":
        return
    late = [svc.registry.get(r, with_files=False) for r in _active_users(svc).get(name, [])]
    if late:
        wanted = max(_nodes_needed(r) for r in late)
        if svc.cloud.request_nodes(name, wanted):
            report.nodes_requested.append(name)
            log.info("cluster %s: run(s) arrived while its nodes were released; asked for %d", name, wanted)


# --- metrics ---------------------------------------------------------------------------------------------
def _read_running_metrics(svc: Services, running: list[tuple[RunRecord, Any]], report: MonitorReport) -> None:
    """Read each running job's new stdout for metrics, METRICS_WORKERS at a time; a failure is that
    run's alone and the next pass reads again from where the last one stopped."""
    if not running:
        return
    deadline = report.started + METRICS_PASS_DEADLINE_SECONDS
    lock = threading.Lock()
    started = [0]

    def one(item: tuple[RunRecord, Any]) -> None:
        rec, job = item
        with lock:
            if time.monotonic() > deadline and started[0] >= METRICS_MIN_READS_PER_PASS:
                report.metrics_deferred += 1
                return
            started[0] += 1
        try:
            changes = read_metrics(svc, rec, job)
            if changes:
                _record_latest(svc, rec, changes)
        except (ComputeError, HttpResponseError, RegistryError, OSError, ValueError) as exc:
            report.errors.append(f"{rec.run_id}: metrics: {exc}")
            log.warning("run %s: metrics not read: %s", rec.run_id, exc, extra=rec.log_extra())
        with lock:
            report.metrics_read += 1

    # Longest unread first (no metrics yet, then the oldest latest value): a run deferred in one
    # pass is among the first of the next.
    running = sorted(running, key=lambda item: _metrics_read_at(item[0]))
    with concurrent.futures.ThreadPoolExecutor(min(METRICS_WORKERS, len(running))) as pool:
        list(pool.map(one, running))
    if report.metrics_deferred:
        log.info("monitor: metrics of %d running job(s) left for the next pass", report.metrics_deferred)


def _metrics_read_at(rec: RunRecord) -> str:
    """When the run's metrics last got new values ("" for never): ISO times sort as text."""
    return max((str(p.get("time") or "") for p in (rec.metrics or {}).values()), default="")


def read_metrics(
    svc: Services, rec: RunRecord, job: JobStatus, *, final: bool = False
) -> dict[str, Any] | None:
    """Parse the job's stdout written since the last read into the run's stored series; the run
    fields to set (``metrics``: latest values, ``metrics_offset``), or None when nothing changed or
    an overlapping pass recorded the same bytes first. ``final``: the job has ended; read on to the
    end of its output (at most FINAL_METRICS_BYTES) and count an unterminated last line."""
    chunk = run_metrics.READ_BYTES_PER_PASS
    hint = rec.metrics_offset or 0
    data = svc.cloud.read_stdout(job, hint, chunk)
    if not data:
        return None
    text, etag = svc.registry.get_metrics(rec.run_id)
    state = run_metrics.MetricsState.from_json(text)
    if state.offset != hint:  # the run record lags the series (a pass died between the writes)
        data = svc.cloud.read_stdout(job, state.offset, chunk)
    start = state.offset
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    budget = FINAL_METRICS_BYTES if final else chunk
    while True:
        budget -= len(data)
        more = final and len(data) == chunk and budget > 0
        state.feed(data, now_ms=now_ms, final=final and not more)
        if not more:
            break
        data = svc.cloud.read_stdout(job, state.offset, chunk)
    if state.offset == start:
        return None
    if not svc.registry.put_metrics(rec.run_id, state.to_json(), etag):
        return None
    return {"metrics": state.latest() or None, "metrics_offset": state.offset}


def _stored_metrics(svc: Services, rec: RunRecord) -> dict[str, Any]:
    """The latest values of the run's stored series, when they are newer than its record's: what a
    finishing pass records when its own final read added nothing, because an overlapping pass read
    those bytes first (its series write won, or it wrote before this pass looked) and has not put
    them on the run yet, or died before it could. A job that ended between two passes is read by
    both, and whichever pass finishes the run must not leave it without the metrics it printed."""
    text, _ = svc.registry.get_metrics(rec.run_id)
    state = run_metrics.MetricsState.from_json(text)
    if state.offset <= (rec.metrics_offset or 0):
        return {}
    return {"metrics": state.latest() or None, "metrics_offset": state.offset}


def _record_latest(svc: Services, rec: RunRecord, changes: dict[str, Any]) -> None:
    """Copy the latest values onto the run record, unless a later read is there already (``rec``,
    as this pass listed it, is tried first without reading the run again)."""

    def apply(now: RunRecord) -> None:
        if (now.metrics_offset or 0) > changes["metrics_offset"]:
            raise _Stale
        now.metrics = changes["metrics"]
        now.metrics_offset = changes["metrics_offset"]

    with contextlib.suppress(_Stale):
        svc.registry.update(rec.run_id, apply, current=rec)


class _Stale(Exception):
    """A newer metrics read is recorded on the run already."""


def output_directory_ids(rec: RunRecord) -> list[str]:
    ids = ["stdouterr"]
    for directory in (rec.spec or {}).get("output_directories", [{"id": "MODEL"}]):
        if directory.get("id") and directory["id"] not in ids:
            ids.append(directory["id"])
    return ids


def collect_outputs(svc: Services, rec: RunRecord, names: Any) -> list[OutputFile]:
    """Files of stdouterr and every output directory (recursing into subdirectories, bounded)."""
    outputs: list[OutputFile] = []
    for directory_id in output_directory_ids(rec):
        pending = ["."]
        depth = 0
        while pending and depth < MAX_OUTPUT_DEPTH and len(outputs) < MAX_OUTPUT_FILES:
            next_level: list[str] = []
            for directory in pending:
                for item in svc.cloud.list_output_files(names, directory_id, directory):
                    name = item.name if directory == "." else f"{directory}/{item.name}"
                    if item.is_directory:
                        next_level.append(name)
                        continue
                    outputs.append(OutputFile(directory_id, name, item.size, item.download_url))
            pending, depth = next_level, depth + 1
    return outputs[:MAX_OUTPUT_FILES]


def stdout_tail(outputs: list[OutputFile], max_bytes: int) -> str | None:
    """The last ``max_bytes`` of the job's stdout, fetched with a Range request (the rest of the
    file is never downloaded; a server that ignores Range is read through, keeping only the tail)."""
    if max_bytes <= 0:
        return None
    stdout = next(
        (o for o in outputs if o.directory_id == "stdouterr" and o.name.rsplit("/", 1)[-1] in STDOUT_NAMES),
        None,
    )
    if stdout is None or not stdout.download_url:
        return None
    try:
        tail = logtail.read_tail(stdout.download_url, max_bytes, size=stdout.size)
    except (OSError, ValueError) as exc:
        log.warning("stdout tail not fetched: %s", type(exc).__name__)
        return None
    return tail.decode("utf-8", errors="replace")


# --- callbacks ------------------------------------------------------------------------------------------
def summary(rec: RunRecord, registry: RunRegistry | None = None) -> dict[str, Any]:
    """The run summary a callback carries (no spec, no staged-file list, no idempotency key; the
    snapshot's path, file count and total bytes). A sweep's parent (with ``registry``) adds its
    result (``sweep``: the best trial) and its trials' ``leaderboard``; its trials send none."""
    out = {
        "id": rec.run_id,
        "dataset": rec.dataset,
        "state": rec.state,
        "times": rec.times,
        "job_id": rec.job_id,
        "cluster": rec.cluster,
        "exit_code": rec.exit_code,
        "errors": rec.errors,
        "output_files": [o.to_dict() for o in rec.output_files],
        "stdout_tail": rec.stdout_tail,
        "metrics": rec.metrics or {},
        "snapshot": rec.snapshot_summary(),
    }
    if registry is not None and sweep_runs.is_parent(rec):
        out["sweep"] = rec.sweep
        out["leaderboard"] = sweep_runs.leaderboard(registry, rec)
    return out


def _deliver_callbacks(svc: Services, report: MonitorReport) -> None:
    """POST pending run summaries within CALLBACK_PASS_BUDGET_SECONDS: a few at a time, each bounded
    by its own hard deadline (never past the budget's end), and none started once the budget is
    spent, so however slowly receivers answer the pass ends and the next one moves every run again.
    A delivery not done after MAX_CALLBACK_PASSES claims is given up and its last result recorded
    on the run; what is left over waits for the next pass."""
    pending = [
        r for r in svc.registry.iter_pending_callbacks() if r.state in TERMINAL_STATES and r.callback_url
    ]
    if not pending:
        return
    random.shuffle(pending)  # a pass's budget is not always spent first on the same (slow) receivers
    budget_end = time.monotonic() + CALLBACK_PASS_BUDGET_SECONDS

    def deliver(rec: RunRecord) -> tuple[str, str | None]:
        left = budget_end - time.monotonic()
        if left < 1.0:
            return rec.run_id, None  # the budget is spent: the next pass delivers it
        return _deliver_one(svc, rec.run_id, deadline_seconds=min(CALLBACK_DEADLINE_SECONDS, left))

    with concurrent.futures.ThreadPoolExecutor(min(CALLBACK_WORKERS, len(pending))) as pool:
        for run_id, status in pool.map(deliver, pending):
            if status is not None:
                report.callbacks[run_id] = status


class _NotOurs(Exception):
    """The callback is no longer pending, or another pass holds its delivery claim."""


def _claim_callback(svc: Services, run_id: str, token: str) -> RunRecord | None:
    """Claim the run's callback delivery by compare-and-swap (None when it is not ours to deliver):
    of two overlapping passes that both saw it pending, exactly one posts. A claim expires after
    CALLBACK_CLAIM_SECONDS, so a pass that died holding it does not lose the callback (and a claim
    that was never recorded as done counts as one of its passes); a delivery claimed
    MAX_CALLBACK_PASSES times is given up at its next claim."""
    now = datetime.now(UTC)

    def claim(rec: RunRecord) -> None:
        if not rec.callback_pending or rec.state not in TERMINAL_STATES or not rec.callback_url:
            raise _NotOurs
        held = parse_time((rec.callback or {}).get("claimed_until"))
        if held is not None and held > now:
            raise _NotOurs
        if int((rec.callback or {}).get("passes", 0)) >= MAX_CALLBACK_PASSES:
            # Every pass was claimed and none recorded a result (each worker died or hung):
            # give up rather than claim it again for ever.
            rec.callback = {
                **{k: v for k, v in (rec.callback or {}).items() if k not in ("claim", "claimed_until")},
                "status": "failed",
                "error": (rec.callback or {}).get("error") or "no delivery finished in its passes",
                "time": utcnow(),
            }
            rec.callback_pending = False
            return
        until = _ts(now + timedelta(seconds=CALLBACK_CLAIM_SECONDS))
        # The pass counts when claimed, not when the delivery returns: a delivery that never
        # returns (a killed worker) still uses up one of its MAX_CALLBACK_PASSES.
        passes = int((rec.callback or {}).get("passes", 0)) + 1
        # One delivery id for every pass and attempt of this callback: receivers dedupe on it.
        delivery_id = (rec.callback or {}).get("delivery_id") or f"{rec.run_id}.{secrets.token_hex(8)}"
        rec.callback = {
            **(rec.callback or {}),
            "claim": token,
            "claimed_until": until,
            "passes": passes,
            "delivery_id": delivery_id,
        }

    try:
        return svc.registry.update(run_id, claim)
    except (_NotOurs, TransitionRejected):
        return None


def _deliver_one(
    svc: Services, run_id: str, *, deadline_seconds: float | None = None
) -> tuple[str, str | None]:
    settings = svc.settings
    key = settings.callback_signing_secret.get_secret_value() if settings.callback_signing_secret else None
    token = secrets.token_hex(8)
    try:
        claimed = _claim_callback(svc, run_id, token)
        if claimed is None:
            return run_id, None
        if not claimed.callback_pending:
            return run_id, "failed"  # given up at this claim (see _claim_callback)
        rec = svc.registry.get(run_id)  # with its output files (a compare-and-swap reads the run row only)
        delivery_id = str((claimed.callback or {}).get("delivery_id") or "")
        seal = rec.callback_seal or {}
        try:
            url = callbacks.open_callback(rec.callback_url or "", seal, key)
        except callbacks.CallbackError as exc:
            result = callbacks.DeliveryResult(False, 0, None, str(exc), refused=True)
        else:
            result = callbacks.deliver(
                url,
                summary(rec, svc.registry),
                # Runs recorded before per-run secrets (no seal) get one salted with their id.
                secret=callbacks.run_secret(key, str(seal.get("salt") or rec.run_id)) if key else None,
                allow_loopback_http=settings.callback_allow_loopback_http,
                attempts=CALLBACK_ATTEMPTS,
                timeout_seconds=CALLBACK_TIMEOUT_SECONDS,
                deadline_seconds=CALLBACK_DEADLINE_SECONDS if deadline_seconds is None else deadline_seconds,
                run_id=rec.run_id,
                delivery_id=delivery_id,
            )
        passes = int((claimed.callback or {}).get("passes", 1))
        done = result.delivered or result.refused or passes >= MAX_CALLBACK_PASSES
        status = {**result.to_dict(), "passes": passes, "time": utcnow(), "delivery_id": delivery_id}

        def record(now: RunRecord) -> None:
            if (now.callback or {}).get("claim") != token:
                raise _NotOurs  # our claim expired and another pass took over: its result counts
            now.callback = status
            now.callback_pending = not done

        svc.registry.update(rec.run_id, record)
    except _NotOurs:
        log.warning("run %s: callback claim lost while posting", run_id, extra={"run_id": run_id})
        return run_id, None
    except (RegistryError, HttpResponseError) as exc:
        log.warning("run %s: callback bookkeeping failed: %s", run_id, exc, extra={"run_id": run_id})
        return run_id, None
    return run_id, status["status"]
