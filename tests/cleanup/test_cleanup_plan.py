"""The cleanup planner, case by case: what it deletes, and that it never touches a live run's things."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from shared import compute_port
from shared.cleanup import (
    Action,
    CleanupPolicy,
    ClusterInfo,
    Executor,
    ExperimentInfo,
    Inventory,
    JobInfo,
    RunInfo,
    execute,
    plan,
    report,
)
from shared.run_states import STATES

NOW = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
H = timedelta(hours=1)
POLICY = CleanupPolicy(job_retention=72 * H, data_retention=72 * H, cluster_idle=0.5 * H)


def kinds(actions: list[Action]) -> list[tuple[str, str]]:
    return [(a.kind, a.target) for a in actions]


def test_empty_inventory_plans_nothing() -> None:
    assert plan(Inventory(), NOW, POLICY) == []


def test_finished_job_past_retention_is_deleted_and_its_empty_experiment_too() -> None:
    inv = Inventory(
        runs=[RunInfo("r1", "mnist", "succeeded", "c1", "exp", "job1", NOW - 100 * H)],
        jobs=[JobInfo("job1", "exp", "succeeded", "c1", NOW - 101 * H, NOW - 101 * H, NOW - 100 * H)],
        experiments=[ExperimentInfo("exp", NOW - 200 * H)],
    )
    actions = plan(inv, NOW, POLICY)
    assert kinds(actions) == [("delete_job", "exp/job1"), ("delete_experiment", "exp")]
    assert actions[0].run_ids == ("r1",)


def test_finished_job_within_retention_is_kept() -> None:
    inv = Inventory(
        runs=[RunInfo("r1", "mnist", "failed", "c1", "exp", "job1", NOW - 10 * H)],
        jobs=[JobInfo("job1", "exp", "failed", "c1", ended_at=NOW - 10 * H)],
        experiments=[ExperimentInfo("exp", NOW - 200 * H)],
    )
    assert plan(inv, NOW, POLICY) == []


def test_job_of_a_non_terminal_run_is_never_deleted_even_if_batchai_says_finished() -> None:
    # The monitor has not recorded the outputs yet: the run is still "running" in the registry.
    inv = Inventory(
        runs=[RunInfo("r1", "mnist", "running", "c1", "exp", "job1")],
        jobs=[JobInfo("job1", "exp", "succeeded", "c1", ended_at=NOW - 100 * H)],
        clusters=[ClusterInfo("c1", NOW - 300 * H)],
        experiments=[ExperimentInfo("exp", NOW - 300 * H)],
        staged_datasets=["mnist"],
    )
    assert plan(inv, NOW, POLICY) == []


def test_runaway_job_is_terminated_with_its_own_limit_or_the_batchai_default() -> None:
    inv = Inventory(
        runs=[
            RunInfo("r1", "a", "running", "c1", "exp", "j1"),
            RunInfo("r2", "b", "running", "c1", "exp", "j2"),
        ],
        jobs=[
            JobInfo("j1", "exp", "running", "c1", started_at=NOW - 3 * H, max_wall_clock=2 * H),
            JobInfo("j2", "exp", "running", "c1", started_at=NOW - 3 * H),  # default 7 days
            JobInfo("j3", "exp", "running", "c1", started_at=NOW - 8 * 24 * H),
        ],
    )
    actions = plan(inv, NOW, POLICY)
    assert kinds(actions) == [("terminate_job", "exp/j1"), ("terminate_job", "exp/j3")]
    assert actions[0].run_ids == ("r1",)
    assert "max wall-clock" in actions[0].reason


def test_queued_job_is_not_terminated() -> None:
    inv = Inventory(jobs=[JobInfo("j1", "exp", "queued", "c1", created_at=NOW - 300 * H, max_wall_clock=H)])
    assert plan(inv, NOW, POLICY) == []


def test_idle_cluster_is_deleted_after_the_threshold_counting_from_its_last_job() -> None:
    inv = Inventory(
        runs=[RunInfo("r1", "a", "succeeded", "c1", "exp", "j1", NOW - 2 * H)],
        jobs=[JobInfo("j1", "exp", "succeeded", "c1", ended_at=NOW - 2 * H)],
        clusters=[ClusterInfo("c1", NOW - 10 * H), ClusterInfo("c2", NOW - 10 * H), ClusterInfo("c3", NOW)],
        experiments=[ExperimentInfo("exp", NOW - 10 * H)],
    )
    actions = plan(inv, NOW, POLICY)
    assert kinds(actions) == [("delete_cluster", "c1"), ("delete_cluster", "c2")]
    assert actions[0].run_ids == ("r1",)


def test_cluster_used_by_a_non_terminal_run_or_active_job_is_kept() -> None:
    inv = Inventory(
        runs=[RunInfo("r1", "a", "provisioning", "c1")],  # no job yet: the cluster is still in use
        jobs=[JobInfo("j9", "other", "queued", "c2", created_at=NOW - 100 * H)],
        clusters=[ClusterInfo("c1", NOW - 100 * H), ClusterInfo("c2", NOW - 100 * H)],
        experiments=[ExperimentInfo("other", NOW - 100 * H)],
    )
    assert plan(inv, NOW, POLICY) == []


def test_new_empty_experiment_is_left_alone_during_the_grace_period() -> None:
    inv = Inventory(
        experiments=[ExperimentInfo("fresh", NOW - timedelta(minutes=5)), ExperimentInfo("old", NOW - 5 * H)]
    )
    assert kinds(plan(inv, NOW, POLICY)) == [("delete_experiment", "old")]


def test_experiment_with_a_kept_job_is_not_deleted() -> None:
    inv = Inventory(
        jobs=[JobInfo("j1", "exp", "succeeded", "c1", ended_at=NOW - 1 * H)],
        experiments=[ExperimentInfo("exp", NOW - 200 * H)],
    )
    assert plan(inv, NOW, POLICY) == []


def test_staged_data_deleted_only_when_every_run_of_the_dataset_is_finished_past_retention() -> None:
    inv = Inventory(
        runs=[
            RunInfo("r1", "old", "succeeded", finished_at=NOW - 100 * H),
            RunInfo("r2", "old", "cancelled", finished_at=NOW - 80 * H),
            RunInfo("r3", "recent", "failed", finished_at=NOW - 100 * H),
            RunInfo("r4", "recent", "succeeded", finished_at=NOW - 1 * H),
            RunInfo("r5", "live", "failed", finished_at=NOW - 100 * H),
            RunInfo("r6", "live", "staging"),
        ],
        staged_datasets=["old", "recent", "live", "unknown"],
    )
    actions = plan(inv, NOW, POLICY)
    assert kinds(actions) == [("delete_staged_data", "old")]
    assert actions[0].run_ids == ("r1", "r2")


def test_snapshots_of_runs_finished_past_retention_are_deleted_never_one_in_use() -> None:
    inv = Inventory(
        runs=[
            RunInfo("old", "mnist", "succeeded", finished_at=NOW - 100 * H),
            RunInfo("recent", "mnist", "failed", finished_at=NOW - 10 * H),
            RunInfo("live", "other", "running"),
            RunInfo("old2", "carried", "cancelled", finished_at=NOW - 100 * H),
            RunInfo("staging", "CARRIED", "staging"),  # may be carrying from old2's snapshot
        ],
        snapshots=["old", "recent", "live", "old2", "staging", "no-record"],
    )
    actions = plan(inv, NOW, POLICY)
    assert kinds(actions) == [("delete_snapshot", "_snapshots/old")]
    assert actions[0].run_ids == ("old",) and "past the staged data retention" in actions[0].reason


def test_dataset_directories_are_compared_case_insensitively() -> None:
    """`mnist` finished days ago and `MNIST` running are one directory on Azure Files."""
    inv = Inventory(
        runs=[
            RunInfo("r1", "mnist", "succeeded", finished_at=NOW - 100 * H),
            RunInfo("r2", "MNIST", "running"),
        ],
        staged_datasets=["mnist", "Mnist"],
    )
    assert plan(inv, NOW, POLICY) == []


def test_plan_is_ordered_jobs_before_experiments_before_clusters_before_data() -> None:
    inv = Inventory(
        runs=[RunInfo("r1", "d", "succeeded", "c1", "exp", "j1", NOW - 100 * H)],
        jobs=[
            JobInfo("j1", "exp", "succeeded", "c1", ended_at=NOW - 100 * H),
            JobInfo("j2", "exp2", "running", "c2", started_at=NOW - 10 * H, max_wall_clock=H),
        ],
        clusters=[ClusterInfo("c1", NOW - 200 * H)],
        experiments=[ExperimentInfo("exp", NOW - 200 * H)],
        staged_datasets=["d"],
    )
    assert [a.kind for a in plan(inv, NOW, POLICY)] == [
        "terminate_job",
        "delete_job",
        "delete_experiment",
        "delete_cluster",
        "delete_staged_data",
    ]


def test_execute_dry_run_changes_nothing_and_real_run_reports_each_result() -> None:
    actions = [
        Action("delete_job", "exp/j1", "old", experiment="exp", job="j1"),
        Action("delete_cluster", "c1", "idle", cluster="c1"),
        Action("delete_staged_data", "d", "old", dataset="d"),
    ]
    done: list[str] = []

    def fail(action: Action) -> None:
        raise RuntimeError("boom")

    executor = Executor(
        perform={"delete_job": lambda a: done.append(a.target), "delete_cluster": fail,
                 "delete_staged_data": lambda a: done.append(a.target)},
        in_use=lambda a: ["r7"] if a.kind == "delete_staged_data" else [],
    )  # fmt: skip
    dry = execute(actions, executor, dry_run=True)
    assert done == [] and [r.result for r in dry] == ["dry-run"] * 3
    real = execute(actions, executor, dry_run=False)
    assert done == ["exp/j1"]
    assert [r.result for r in real] == ["done", "failed", "skipped"]
    assert "boom" in real[1].message and "r7" in real[2].message
    doc = report(real, started_at=NOW, finished_at=NOW, dry_run=False, policy=POLICY)
    assert doc["summary"] == {"done": 1, "failed": 1, "skipped": 1}
    assert doc["actions"][0]["kind"] == "delete_job" and doc["actions"][0]["result"] == "done"


# --- the safety property, over random inventories ------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "c", "A"])  # "a" and "A": one directory on Azure Files
TIMES = st.one_of(st.none(), st.integers(min_value=0, max_value=400).map(lambda h: NOW - h * H))
RUN_STATES = list(STATES)
JOB_STATES = list(compute_port.JOB_STATES)

runs_strategy = st.builds(
    RunInfo,
    id=st.uuids().map(str),
    dataset=NAMES,
    state=st.sampled_from(RUN_STATES),
    cluster=st.one_of(st.none(), NAMES),
    experiment=st.one_of(st.none(), NAMES),
    job=st.one_of(st.none(), NAMES),
    finished_at=TIMES,
)
jobs_strategy = st.builds(
    JobInfo,
    name=NAMES,
    experiment=NAMES,
    state=st.sampled_from(JOB_STATES),
    cluster=st.one_of(st.none(), NAMES),
    created_at=TIMES,
    started_at=TIMES,
    ended_at=TIMES,
    max_wall_clock=st.one_of(st.none(), st.integers(1, 300).map(lambda h: h * H)),
)
base_inventories = st.builds(
    Inventory,
    runs=st.lists(runs_strategy, max_size=6),
    jobs=st.lists(jobs_strategy, max_size=6, unique_by=lambda j: (j.experiment, j.name)),
    clusters=st.lists(
        st.builds(ClusterInfo, name=NAMES, created_at=TIMES), max_size=3, unique_by=lambda c: c.name
    ),
    experiments=st.lists(
        st.builds(ExperimentInfo, name=NAMES, created_at=TIMES), max_size=3, unique_by=lambda e: e.name
    ),
    staged_datasets=st.lists(NAMES, max_size=3, unique=True),
)


@st.composite
def inventories(draw: st.DrawFn) -> Inventory:
    """Inventories whose share holds snapshots of some of the runs (and of runs it does not know)."""
    inventory = draw(base_inventories)
    ids = [r.id for r in inventory.runs] + ["unknown-run"]
    snapshots = draw(st.lists(st.sampled_from(ids), unique=True))
    return dataclasses.replace(inventory, snapshots=snapshots)


@settings(max_examples=300, deadline=None)
@given(inventories())
def test_nothing_a_live_run_or_active_job_uses_is_ever_deleted(inventory: Inventory) -> None:
    actions = plan(inventory, NOW, POLICY)
    live = [r for r in inventory.runs if r.active]
    active_jobs = [j for j in inventory.jobs if j.state not in ("succeeded", "failed")]
    for action in actions:
        if action.kind == "terminate_job":
            job = next(j for j in inventory.jobs if (j.experiment, j.name) == (action.experiment, action.job))
            assert job.state == "running"
            continue
        if action.kind == "delete_job":
            assert all((r.experiment, r.job) != (action.experiment, action.job) for r in live)
            job = next(j for j in inventory.jobs if (j.experiment, j.name) == (action.experiment, action.job))
            assert job.state in ("succeeded", "failed")
        if action.kind == "delete_experiment":
            assert all(r.experiment != action.experiment for r in live)
            assert all(j.experiment != action.experiment for j in active_jobs)
        if action.kind == "delete_cluster":
            assert all(r.cluster != action.cluster for r in live)
            assert all(j.cluster != action.cluster for j in active_jobs)
        if action.kind == "delete_staged_data":
            assert all(r.dataset.casefold() != action.dataset.casefold() for r in live)
        if action.kind == "delete_snapshot":
            (run_id,) = action.run_ids
            assert action.target == f"_snapshots/{run_id}" and run_id in inventory.snapshots
            run = next(r for r in inventory.runs if r.id == run_id)  # never an unknown run's
            assert not run.active and NOW - run.finished_at >= POLICY.data_retention
            # No run of its dataset is staging (it may be carrying files from this snapshot).
            assert all(r.dataset.casefold() != run.dataset.casefold() for r in live if r.state == "staging")
    assert plan(inventory, NOW, POLICY) == actions  # pure: same inputs, same plan


def test_a_sweeps_snapshot_is_kept_until_its_last_trial_is_past_retention() -> None:
    def inventory(trial_state: str, trial_finished: datetime | None) -> Inventory:
        return Inventory(
            runs=[
                RunInfo("sweep", "mnist", "succeeded", finished_at=NOW - 100 * H),
                RunInfo(
                    "sweep-t000", "mnist", "succeeded", finished_at=NOW - 120 * H, snapshot_owner="sweep"
                ),
                RunInfo(
                    "sweep-t001", "mnist", trial_state, finished_at=trial_finished, snapshot_owner="sweep"
                ),
            ],
            snapshots=["sweep"],
        )

    # A trial (or a resubmitted run reading the snapshot) finished within the retention, or still
    # active, keeps the parent's snapshot.
    assert plan(inventory("succeeded", NOW - 10 * H), NOW, POLICY) == []
    assert plan(inventory("running", None), NOW, POLICY) == []
    actions = plan(inventory("cancelled", NOW - 80 * H), NOW, POLICY)
    assert kinds(actions) == [("delete_snapshot", "_snapshots/sweep")]
    assert actions[0].run_ids == ("sweep", "sweep-t000", "sweep-t001")
