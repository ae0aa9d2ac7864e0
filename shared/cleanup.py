"""Nightly cleanup: plan what to remove from plain facts, then carry the plan out and report it.

Why split in two: deciding what is safe to delete is the part that must be right, so `plan()` is a
pure function of an `Inventory` (runs, jobs, clusters, experiments, staged datasets), the time and a
`CleanupPolicy`: no I/O, unit-tested case by case. `execute()` then performs the actions (or, in a
dry run, only records them), and `run_cleanup()` gathers the inventory from the registry, Batch AI and
the file share, and writes the JSON report to the reports container.

Rules (each action names its reason in the report):
- terminate_job: a running job past its own max wall-clock time (Batch AI's default, 7 days, when it
  has none). The only action that touches a live run: it is the runaway the timer exists for.
- delete_job: a finished job whose end is older than the job retention.
- delete_experiment: an experiment left empty (no jobs, or only jobs deleted by this plan), older than
  a grace period so that an experiment created a moment ago for a new run is left alone.
- delete_cluster: a cluster with no active job and no non-terminal run, idle (since its creation or
  the end of its last job or run) past the idle threshold.
- delete_snapshot: a run's snapshot (``_snapshots/<run id>``, its job's input) once the run has
  finished past the staged data retention. Never the snapshot of an active run, nor a snapshot of a
  dataset one of whose runs is staging (it may be carrying files from it). A snapshot with no run
  record is not ours to judge and is kept.
- delete_staged_data: the share directory of a dataset (filled by hand, or by runs from before
  snapshots) whose runs are all finished, the latest past the staged data retention. A directory with
  no run record is not ours to judge and is kept.
Dataset names are compared case-insensitively, as Azure Files compares the directory names they
become. Nothing a non-terminal run uses (its job, experiment, cluster, snapshot, dataset directory) is
ever deleted, and the executor checks the registry again right before each deletion.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, cast

from shared.compute_port import JobStatus
from shared.registry import SNAPSHOT_ROOT, TERMINAL_STATES, dataset_key, parse_time

if TYPE_CHECKING:  # annotations only
    from shared.services import Services
    from shared.settings import Settings

__all__ = [
    "TERMINAL_RUN_STATES",
    "Action",
    "ActionResult",
    "CleanupPolicy",
    "ClusterInfo",
    "ExperimentInfo",
    "Inventory",
    "JobInfo",
    "RunInfo",
    "plan",
]

log = logging.getLogger(__name__)

TERMINAL_RUN_STATES = TERMINAL_STATES  # the registry owns the run states
ACTIVE_JOB_STATES = frozenset({"queued", "running", "terminating"})
FINISHED_JOB_STATES = frozenset({"succeeded", "failed"})
BATCHAI_DEFAULT_MAX_WALL_CLOCK = timedelta(days=7)

ActionKind = Literal[
    "terminate_job",
    "delete_job",
    "delete_experiment",
    "delete_cluster",
    "delete_snapshot",
    "delete_staged_data",
]
# The order actions run in: stop runaways first, then delete jobs before the experiments they empty.
ACTION_ORDER: tuple[str, ...] = (
    "terminate_job",
    "delete_job",
    "delete_experiment",
    "delete_cluster",
    "delete_snapshot",
    "delete_staged_data",
)


# --- the facts the planner sees ---------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    """A run record, reduced to what cleanup decides on."""

    id: str
    dataset: str
    state: str
    cluster: str | None = None
    experiment: str | None = None
    job: str | None = None
    finished_at: datetime | None = None
    # The run whose snapshot this run reads when not its own: a sweep trial reads its parent's, a
    # resubmitted run the snapshot of the run it repeats.
    snapshot_owner: str | None = None

    @property
    def active(self) -> bool:
        return self.state not in TERMINAL_RUN_STATES


# A job as the planner sees it: the compute port's own (its state, cluster, times, time limit).
JobInfo = JobStatus


@dataclass(frozen=True)
class ClusterInfo:
    name: str
    created_at: datetime | None = None


@dataclass(frozen=True)
class ExperimentInfo:
    name: str
    created_at: datetime | None = None


@dataclass(frozen=True)
class Inventory:
    runs: Sequence[RunInfo] = ()
    jobs: Sequence[JobInfo] = ()
    clusters: Sequence[ClusterInfo] = ()
    experiments: Sequence[ExperimentInfo] = ()
    staged_datasets: Sequence[str] = ()
    snapshots: Sequence[str] = ()  # run ids that have a snapshot directory on the share


@dataclass(frozen=True)
class CleanupPolicy:
    job_retention: timedelta
    data_retention: timedelta
    cluster_idle: timedelta
    experiment_grace: timedelta = timedelta(hours=1)

    @classmethod
    def from_settings(cls, settings: Settings) -> CleanupPolicy:
        return cls(
            job_retention=timedelta(hours=settings.job_retention_hours),
            data_retention=timedelta(hours=settings.staged_data_retention_hours),
            cluster_idle=timedelta(minutes=settings.cluster_idle_minutes),
        )


@dataclass(frozen=True)
class Action:
    """One thing cleanup will do. `target` is what it acts on, as the report shows it."""

    kind: ActionKind
    target: str
    reason: str
    experiment: str | None = None
    job: str | None = None
    cluster: str | None = None
    dataset: str | None = None
    run_ids: tuple[str, ...] = ()


@dataclass
class ActionResult:
    action: Action
    result: Literal["done", "dry-run", "skipped", "failed"]
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self.action).items() if v not in (None, ())}
        data["run_ids"] = list(self.action.run_ids)
        data["result"] = self.result
        if self.message:
            data["message"] = self.message
        return data


# --- planning ---------------------------------------------------------------------------------------


def _latest(times: Iterable[datetime | None]) -> datetime | None:
    present = [t for t in times if t is not None]
    return max(present) if present else None


def _age(now: datetime, since: datetime) -> str:
    hours = (now - since).total_seconds() / 3600
    return f"{hours:.1f} h"


def plan(inventory: Inventory, now: datetime, policy: CleanupPolicy) -> list[Action]:
    """What cleanup should do now, in execution order. Pure: same inputs, same plan."""
    active_runs = [r for r in inventory.runs if r.active]
    protected_jobs = {(r.experiment, r.job) for r in active_runs if r.job}
    protected_experiments = {r.experiment for r in active_runs if r.experiment}
    protected_clusters = {r.cluster for r in active_runs if r.cluster}
    protected_datasets = {dataset_key(r.dataset) for r in active_runs}
    carrying_datasets = {dataset_key(r.dataset) for r in active_runs if r.state == "staging"}
    for job in inventory.jobs:
        if job.state not in FINISHED_JOB_STATES:  # queued, running, terminating or unknown: in use
            protected_experiments.add(job.experiment)
            if job.cluster:
                protected_clusters.add(job.cluster)

    def runs_of_job(job: JobInfo) -> tuple[str, ...]:
        return tuple(r.id for r in inventory.runs if r.job == job.name and r.experiment == job.experiment)

    actions: list[Action] = []

    # Runaway jobs: past their own wall-clock limit (Batch AI should have stopped them; it did not).
    for job in inventory.jobs:
        if job.state != "running":
            continue
        started = job.started_at or job.created_at
        limit = job.max_wall_clock or BATCHAI_DEFAULT_MAX_WALL_CLOCK
        if started is not None and now - started > limit:
            actions.append(
                Action(
                    "terminate_job",
                    f"{job.experiment}/{job.name}",
                    f"running for {_age(now, started)}, past its max wall-clock time "
                    f"of {_age(now, now - limit)}",
                    experiment=job.experiment,
                    job=job.name,
                    cluster=job.cluster,
                    run_ids=runs_of_job(job),
                )
            )

    # Finished jobs past retention.
    deleted_jobs: set[tuple[str, str]] = set()
    for job in inventory.jobs:
        if job.state not in FINISHED_JOB_STATES or (job.experiment, job.name) in protected_jobs:
            continue
        ended = job.ended_at or job.started_at or job.created_at
        if ended is not None and now - ended >= policy.job_retention:
            deleted_jobs.add((job.experiment, job.name))
            actions.append(
                Action(
                    "delete_job",
                    f"{job.experiment}/{job.name}",
                    f"{job.state} {_age(now, ended)} ago, past the job retention of "
                    f"{_age(now, now - policy.job_retention)}",
                    experiment=job.experiment,
                    job=job.name,
                    cluster=job.cluster,
                    run_ids=runs_of_job(job),
                )
            )

    # Experiments left empty.
    for experiment in inventory.experiments:
        if experiment.name in protected_experiments:
            continue
        remaining = [
            j
            for j in inventory.jobs
            if j.experiment == experiment.name and (j.experiment, j.name) not in deleted_jobs
        ]
        if remaining:
            continue
        if experiment.created_at is None or now - experiment.created_at < policy.experiment_grace:
            continue
        actions.append(
            Action(
                "delete_experiment",
                experiment.name,
                "no jobs left" if not any(j.experiment == experiment.name for j in inventory.jobs)
                else "its last jobs are deleted by this cleanup",
                experiment=experiment.name,
            )
        )  # fmt: skip

    # Idle clusters.
    for cluster in inventory.clusters:
        if cluster.name in protected_clusters:
            continue
        idle_since = _latest(
            [cluster.created_at]
            + [j.ended_at or j.created_at for j in inventory.jobs if j.cluster == cluster.name]
            + [r.finished_at for r in inventory.runs if r.cluster == cluster.name]
        )
        if idle_since is not None and now - idle_since >= policy.cluster_idle:
            actions.append(
                Action(
                    "delete_cluster",
                    cluster.name,
                    f"idle for {_age(now, idle_since)}, past the idle threshold of "
                    f"{_age(now, now - policy.cluster_idle)}",
                    cluster=cluster.name,
                    run_ids=tuple(r.id for r in inventory.runs if r.cluster == cluster.name),
                )
            )

    # Snapshots of runs finished past the retention, with every run that reads them (a sweep's trials,
    # resubmitted runs): kept until the last of them is.
    runs_by_id = {r.id: r for r in inventory.runs}
    trials_of: dict[str, list[RunInfo]] = {}
    for r in inventory.runs:
        if r.snapshot_owner is not None:
            trials_of.setdefault(r.snapshot_owner, []).append(r)
    for run_id in inventory.snapshots:
        run = runs_by_id.get(run_id)
        if run is None or run.active or dataset_key(run.dataset) in carrying_datasets:
            continue
        readers = [run, *trials_of.get(run_id, [])]
        if any(r.active or r.finished_at is None for r in readers):
            continue
        last = max(r.finished_at for r in readers if r.finished_at is not None)
        if now - last >= policy.data_retention:
            actions.append(
                Action(
                    "delete_snapshot",
                    f"{SNAPSHOT_ROOT}/{run_id}",
                    f"run {run.state} {_age(now, last)} ago, past the staged data retention "
                    f"of {_age(now, now - policy.data_retention)}",
                    dataset=run.dataset,
                    run_ids=tuple(r.id for r in readers),
                )
            )

    # Dataset directories (filled by hand, or by runs from before snapshots) of finished runs.
    for dataset in inventory.staged_datasets:
        if dataset_key(dataset) in protected_datasets:
            continue
        runs = [r for r in inventory.runs if dataset_key(r.dataset) == dataset_key(dataset)]
        if not runs:
            continue
        finished = [r.finished_at for r in runs]
        if any(t is None for t in finished):
            continue
        last_finished = _latest(finished)
        if last_finished is not None and now - last_finished >= policy.data_retention:
            actions.append(
                Action(
                    "delete_staged_data",
                    dataset,
                    f"last run finished {_age(now, last_finished)} ago, past the staged data retention of "
                    f"{_age(now, now - policy.data_retention)}",
                    dataset=dataset,
                    run_ids=tuple(r.id for r in runs),
                )
            )

    return sorted(actions, key=lambda a: ACTION_ORDER.index(a.kind))


# --- execution --------------------------------------------------------------------------------------


@dataclass
class Executor:
    """How each action is carried out, and how "still unused?" is checked right before it.

    `perform` maps an action kind to a callable doing it; `in_use` returns the ids of non-terminal runs
    that now use what the action would delete (read fresh from the registry), or an empty list.
    """

    perform: dict[str, Callable[[Action], object]]  # what a callable returns is not used
    in_use: Callable[[Action], list[str]] = field(default=lambda action: [])


def execute(actions: Sequence[Action], executor: Executor, *, dry_run: bool) -> list[ActionResult]:
    """Carry out the plan in order; one failing action is reported and the rest still run."""
    results: list[ActionResult] = []
    for action in actions:
        if dry_run:
            log.info("cleanup (dry run) would %s %s: %s", action.kind, action.target, action.reason)
            results.append(ActionResult(action, "dry-run", "dry run: nothing changed"))
            continue
        try:
            users = executor.in_use(action) if action.kind != "terminate_job" else []
            if users:
                results.append(ActionResult(action, "skipped", f"now in use by run(s) {', '.join(users)}"))
                continue
            executor.perform[action.kind](action)
        except Exception as exc:
            log.warning("cleanup %s %s failed: %s", action.kind, action.target, exc)
            results.append(ActionResult(action, "failed", f"{type(exc).__name__}: {exc}"[:2000]))
            continue
        log.info("cleanup %s %s: %s", action.kind, action.target, action.reason)
        results.append(ActionResult(action, "done"))
    return results


def report(
    results: Sequence[ActionResult],
    *,
    started_at: datetime,
    finished_at: datetime,
    dry_run: bool,
    policy: CleanupPolicy,
    errors: Sequence[str] = (),
) -> dict[str, Any]:
    """The JSON report one cleanup writes to the reports container."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r.result] = counts.get(r.result, 0) + 1
    return {
        "kind": "cleanup",
        "id": str(uuid.uuid4()),
        "started_at": started_at.astimezone(UTC).isoformat(),
        "finished_at": finished_at.astimezone(UTC).isoformat(),
        "dry_run": dry_run,
        "policy": {
            "job_retention_hours": policy.job_retention.total_seconds() / 3600,
            "staged_data_retention_hours": policy.data_retention.total_seconds() / 3600,
            "cluster_idle_minutes": policy.cluster_idle.total_seconds() / 60,
            "experiment_grace_minutes": policy.experiment_grace.total_seconds() / 60,
        },
        "summary": counts,
        "actions": [r.to_json() for r in results],
        "errors": list(errors),
    }


def report_blob_name(started_at: datetime, dry_run: bool) -> str:
    stamp = started_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"cleanup/{stamp}{'-dry-run' if dry_run else ''}.json"


def report_bytes(data: dict[str, Any]) -> bytes:
    return json.dumps(data, indent=2, sort_keys=False).encode()


# --- gathering the facts and carrying out the plan against Azure ---------------------------------------


def run_info(record: Any, compute: Any) -> RunInfo:
    """A registry RunRecord as the planner sees it. An active run without an experiment yet protects the
    experiment its dataset's jobs go to (ingest creates it just before the job)."""
    finished = None
    if record.state in TERMINAL_RUN_STATES:
        finished = parse_time(record.times.get(record.state) or record.updated_at)
    experiment = record.experiment
    if experiment is None and record.state not in TERMINAL_RUN_STATES:
        experiment = compute.job_names(record.run_id, record.dataset).experiment
    return RunInfo(
        id=record.run_id,
        dataset=record.dataset,
        state=record.state,
        cluster=record.cluster,
        experiment=experiment,
        job=record.job_name,
        finished_at=finished,
        snapshot_owner=_snapshot_owner(record),
    )


def _snapshot_owner(record: Any) -> str | None:
    """The run id of the snapshot directory a record reads, when it is another run's."""
    from shared.registry import RegistryError, snapshot_dir

    snapshot = getattr(record, "snapshot", None)
    owner = (snapshot or "").rpartition("/")[2]
    if not snapshot or owner == record.run_id:
        return None
    try:
        return owner if snapshot == snapshot_dir(owner) else None
    except RegistryError:
        return None


class Cleanup:
    """Cleanup against the configured workspace, file share, registry and reports container, through
    the app's services (shared.services.build_services): the same compute backend as the pipeline."""

    def __init__(self, settings: Settings | None = None, services: Services | None = None) -> None:
        from shared import sdk_clients
        from shared import services as app_services

        if services is None:
            if settings is None:
                services = app_services.get_services()
            else:
                services = app_services.build_services(settings)
        self.settings = services.settings
        self.compute = services.cloud
        self.registry = services.registry
        self.share = services.share
        self.blobs = sdk_clients.blob_service(self.settings)

    # --- inventory ----------------------------------------------------------------------------------
    def inventory(self) -> Inventory:
        """Runs, jobs, clusters, experiments and staged datasets now (none of the service's before
        its workspace exists)."""
        runs = [run_info(r, self.compute) for r in self.registry.iter_runs()]
        experiments: list[ExperimentInfo] = []
        jobs: list[JobInfo] = []
        for experiment in self.compute.list_experiments():
            experiments.append(ExperimentInfo(experiment.name, experiment.created_at))
            jobs.extend(self.compute.list_jobs(experiment.name))
        clusters = [ClusterInfo(c.name, c.created_at) for c in self.compute.list_clusters().values()]
        return Inventory(runs, jobs, clusters, experiments, self._staged_datasets(), self._snapshots())

    def _staged_datasets(self) -> list[str]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            items = list(self.share.list_directories_and_files())
        except ResourceNotFoundError:
            return []
        # The storage SDK's DictMixin.get is unannotated.
        directories = [i for i in items if i.get("is_directory")]  # type: ignore[no-untyped-call]
        return [i["name"] for i in directories if i["name"] != SNAPSHOT_ROOT]

    def _snapshots(self) -> list[str]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            items = list(self.share.get_directory_client(SNAPSHOT_ROOT).list_directories_and_files())
        except ResourceNotFoundError:
            return []
        return [i["name"] for i in items if i.get("is_directory")]  # type: ignore[no-untyped-call]

    # --- guards and actions -----------------------------------------------------------------------
    def in_use(self, action: Action) -> list[str]:
        """Active runs (read now) that use what `action` would delete."""
        from shared.registry import ACTIVE_STATES

        users = []
        for record in self.registry.iter_runs(state=sorted(ACTIVE_STATES)):
            info = run_info(record, self.compute)
            same_dataset = dataset_key(info.dataset) == dataset_key(action.dataset or "")
            if (
                (
                    action.kind == "delete_job"
                    and (info.experiment, info.job) == (action.experiment, action.job)
                )
                or (action.kind == "delete_experiment" and info.experiment == action.experiment)
                or (action.kind == "delete_cluster" and info.cluster == action.cluster)
                or (action.kind == "delete_staged_data" and same_dataset)
                or (
                    action.kind == "delete_snapshot"
                    and (info.id in action.run_ids or (same_dataset and info.state == "staging"))
                )
            ):
                users.append(info.id)
        return users

    def executor(self) -> Executor:
        """Each action through the compute backend: ARM accepts the request and the service carries
        it out (a job's termination, deletions); an action on something already gone counts as done."""

        def delete_staged(a: Action) -> None:
            from shared.staging import check_dataset_name

            delete_directory_tree(self.share, check_dataset_name(a.dataset or ""))

        def delete_snapshot(a: Action) -> None:
            from shared.registry import snapshot_dir

            delete_directory_tree(self.share, snapshot_dir(a.target.rpartition("/")[2]))

        return Executor(
            perform={
                # The planner names the experiment, job or cluster of each of these kinds.
                "terminate_job": lambda a: self.compute.terminate_job(
                    self.compute.job_ref(cast(str, a.experiment), cast(str, a.job))
                ),
                "delete_job": lambda a: self.compute.delete_job(
                    self.compute.job_ref(cast(str, a.experiment), cast(str, a.job))
                ),
                "delete_experiment": lambda a: self.compute.delete_experiment(cast(str, a.experiment)),
                "delete_cluster": lambda a: self.compute.delete_cluster(cast(str, a.cluster)),
                "delete_snapshot": delete_snapshot,
                "delete_staged_data": delete_staged,
            },
            in_use=self.in_use,
        )

    # --- one cleanup run ----------------------------------------------------------------------------
    def run(self, *, now: datetime | None = None, dry_run: bool | None = None) -> tuple[dict[str, Any], str]:
        """Plan, execute (or only record, in a dry run) and write the report: (report, blob name)."""
        started = datetime.now(UTC)
        now = now or started
        dry_run = self.settings.cleanup_dry_run if dry_run is None else dry_run
        policy = CleanupPolicy.from_settings(self.settings)
        errors: list[str] = []
        results: list[ActionResult] = []
        try:
            actions = plan(self.inventory(), now, policy)
            results = execute(actions, self.executor(), dry_run=dry_run)
        except Exception as exc:  # the report still says what happened
            log.exception("cleanup failed while gathering its inventory")
            errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:2000])
        data = report(
            results, started_at=started, finished_at=datetime.now(UTC), dry_run=dry_run, policy=policy,
            errors=errors,
        )  # fmt: skip
        name = report_blob_name(started, dry_run)
        self._write_report(name, data)
        log.info("cleanup %s: %s (report %s/%s)", "dry run" if dry_run else "done", data["summary"],
                 self.settings.reports_container, name)  # fmt: skip
        return data, name

    def _write_report(self, name: str, data: dict[str, Any]) -> None:
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob import ContentSettings

        container = self.blobs.get_container_client(self.settings.reports_container)
        with contextlib.suppress(ResourceExistsError):
            container.create_container()
        container.upload_blob(
            name, report_bytes(data), overwrite=True,
            content_settings=ContentSettings(content_type="application/json"),
        )  # fmt: skip


def delete_directory_tree(share: Any, path: str) -> None:
    """Delete a share directory and everything in it (Azure Files deletes only empty directories)."""
    from azure.core.exceptions import ResourceNotFoundError

    directory = share.get_directory_client(path)
    try:
        items = list(directory.list_directories_and_files())
    except ResourceNotFoundError:
        return
    for item in items:
        child = f"{path}/{item['name']}"
        if item.get("is_directory"):
            delete_directory_tree(share, child)
        else:
            with contextlib.suppress(ResourceNotFoundError):
                share.get_file_client(child).delete_file()
    with contextlib.suppress(ResourceNotFoundError):
        directory.delete_directory()


def run_cleanup(*, now: datetime | None = None, dry_run: bool | None = None) -> tuple[dict[str, Any], str]:
    """One cleanup with the app settings: what the nightly timer calls."""
    return Cleanup().run(now=now, dry_run=dry_run)
