"""Idle clusters give their nodes back (idle release), end to end: ingest_blob for the uploads and
run_monitor as the timer, against the ARM emulator's node allocation, through the real SDKs."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from shared.cleanup import Cleanup
from shared.ingest import ingest_blob
from shared.monitor import run_monitor
from shared.registry import TERMINAL_STATES, parse_time
from tests.pipeline.conftest import Pipeline, isolated_pipeline

pytestmark = pytest.mark.e2e

IDLE_MINUTES = 0.05  # 3 seconds
# A job that holds its node for a few seconds, so passes see it running.
SLOW_SCRIPT = b"import sys, time\ntime.sleep(3)\nprint('trained')\n"
MANIFEST = {"script": "slow.py", "arguments": "", "files": ["slow.py"]}


def idle_pipeline(local_stack, **overrides: str) -> Iterator[Pipeline]:
    yield from isolated_pipeline(local_stack, CLUSTER_IDLE_MINUTES=str(IDLE_MINUTES), **overrides)


@pytest.fixture
def scale_to_zero(local_stack) -> Iterator[Pipeline]:
    yield from idle_pipeline(local_stack)


@pytest.fixture
def delete_idle(local_stack) -> Iterator[Pipeline]:
    yield from idle_pipeline(local_stack, CLUSTER_IDLE_ACTION="delete")


def start_run(p: Pipeline, dataset: str, manifest: dict) -> str:
    names = p.upload(dataset, {"slow.py": SLOW_SCRIPT}, manifest)
    results = [ingest_blob(name, p.services) for name in names]
    assert any(r.submitted for r in results), results
    return results[-1].run_id


def run_to_the_end(p: Pipeline, run_id: str, timeout: float = 60.0) -> list[tuple[str, int, int]]:
    """Monitor passes until the run is finished; (run state, allocated nodes, running nodes) per pass."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        report = run_monitor(p.services)
        rec = p.registry.get(run_id, with_files=False)
        assert report.released == [], "a cluster was released while a run used it"
        cluster = p.services.cloud.get_cluster(rec.cluster)
        seen.append((rec.state, cluster.allocated_nodes, cluster.running_nodes))
        if rec.state in TERMINAL_STATES:
            return seen
        assert time.monotonic() < deadline, seen
        time.sleep(0.4)


def test_an_idle_cluster_drops_to_zero_nodes_one_pass_after_the_idle_time_and_scales_up_again(
    scale_to_zero: Pipeline,
) -> None:
    p = scale_to_zero
    dataset = f"idle-{uuid.uuid4().hex[:8]}"
    run1 = start_run(p, dataset, MANIFEST)
    seen = run_to_the_end(p, run1)
    rec = p.registry.get(run1)
    assert rec.state == "succeeded", rec.errors
    # The cluster held its node while the job ran.
    assert ("running", 1, 1) in seen, seen
    name = rec.cluster
    created = p.services.cloud.get_cluster(name).created_at
    ended = parse_time(rec.times["succeeded"])

    # Passes after the run: nothing is released before CLUSTER_IDLE_MINUTES after the job's end, and
    # the first pass at or past it releases the node.
    limit = ended + timedelta(minutes=IDLE_MINUTES)
    while True:
        now = datetime.now(UTC)
        report = run_monitor(p.services, now=now)
        if now < limit:
            assert report.released == [], (now, limit)
            time.sleep(0.3)
            continue
        assert report.released == [name]
        break
    cluster = p.services.cloud.get_cluster(name)
    assert cluster.manual_target == 0
    deadline = time.monotonic() + 10
    while cluster.allocated_nodes:
        assert time.monotonic() < deadline, cluster
        time.sleep(0.3)
        run_monitor(p.services)
        cluster = p.services.cloud.get_cluster(name)
    assert cluster.allocation_state == "steady"
    # A pass later nothing more is done to it, and then a quiet app asks ARM nothing.
    assert run_monitor(p.services).released == []
    since = p.arm("/_emulator/requests?since=999999999999")["last_seq"]
    run_monitor(p.services)
    ours = [
        r
        for r in p.arm(f"/_emulator/requests?since={since}")["requests"]
        if p.settings.resource_group in r["path"]
    ]
    assert ours == [], ours
    # The emulator's own account of the allocation: one node held, then none.
    emulated = next(c for c in p.arm("/_emulator/clusters")["clusters"] if c["name"] == name)
    assert emulated["nodes"] == 0 and [h["nodes"] for h in emulated["history"]][-2:] == [1, 0]

    # The run's node time: while it was active, and after it until the node was released.
    minutes = p.registry.get(run1).node_minutes
    assert minutes["cluster"] == name
    assert 0 < minutes["active"] < 2, minutes
    assert IDLE_MINUTES * 0.5 < minutes["after"] < IDLE_MINUTES + 0.5, minutes

    # The next run of the dataset asks the same cluster for a node again, and succeeds.
    run2 = start_run(p, dataset, {**MANIFEST, "arguments": "again"})
    assert run2 != run1
    assert p.registry.get(run2).state == "provisioning"
    assert p.services.cloud.get_cluster(name).manual_target == 1
    seen = run_to_the_end(p, run2)
    rec2 = p.registry.get(run2)
    assert rec2.state == "succeeded", rec2.errors
    assert rec2.cluster == name and p.services.cloud.get_cluster(name).created_at == created
    assert ("running", 1, 1) in seen, seen

    # The nightly cleanup still deletes a cluster idle past its threshold (the monitor released it
    # again after run 2; cleanup deletes it whatever its node count).
    report, _ = Cleanup(services=p.services).run(now=datetime.now(UTC) + timedelta(hours=1), dry_run=False)
    deleted = [a for a in report["actions"] if a["kind"] == "delete_cluster"]
    assert [(a["cluster"], a["result"]) for a in deleted] == [(name, "done")], report


def test_with_the_delete_action_an_idle_cluster_is_deleted_and_made_again_for_the_next_run(
    delete_idle: Pipeline,
) -> None:
    p = delete_idle
    dataset = f"idle-{uuid.uuid4().hex[:8]}"
    run1 = start_run(p, dataset, MANIFEST)
    run_to_the_end(p, run1)
    name = p.registry.get(run1).cluster
    deadline = time.monotonic() + 20
    released: list[str] = []
    while not released:
        assert time.monotonic() < deadline
        time.sleep(0.3)
        released = run_monitor(p.services).released
    assert released == [name]
    while (cluster := p.services.cloud.get_cluster(name)) is not None:
        assert cluster.provisioning_state == "deleting" and time.monotonic() < deadline + 10
        time.sleep(0.3)
        assert run_monitor(p.services).released == []  # deleting: not released again
    # The pass after it is gone closes its node time: the run keeps its figures, the ledger goes.
    run_monitor(p.services)
    assert name not in p.registry.cluster_ledgers()
    assert p.registry.get(run1).node_minutes["after"] > 0
    run2 = start_run(p, dataset, {**MANIFEST, "arguments": "again"})
    run_to_the_end(p, run2)
    assert p.registry.get(run2).state == "succeeded"


def test_a_queued_job_whose_cluster_was_scaled_to_zero_under_it_gets_its_node_back(
    scale_to_zero: Pipeline,
) -> None:
    """A release that raced a submission (the cluster resized to zero just as the job was queued):
    the monitor asks for the node again, and the run succeeds."""
    p = scale_to_zero
    run_id = start_run(p, f"race-{uuid.uuid4().hex[:8]}", MANIFEST)
    name = p.registry.get(run_id).cluster
    p.services.cloud.compute.scale_cluster(name, 0)
    assert p.services.cloud.get_cluster(name).manual_target == 0
    report = run_monitor(p.services)
    assert report.nodes_requested == [name] and report.released == []
    assert p.services.cloud.get_cluster(name).manual_target == 1
    run_to_the_end(p, run_id)
    assert p.registry.get(run_id).state == "succeeded"


def test_a_cluster_no_pass_saw_in_use_is_found_and_released(scale_to_zero: Pipeline) -> None:
    """A cluster with a node that no run uses (made by an upload whose run failed before any pass,
    or by hand): a quiet monitor still lists the clusters once per CLUSTER_IDLE_MINUTES, finds it and
    releases it."""
    from shared.runspec import parse_run_spec

    p = scale_to_zero
    cloud = p.services.cloud
    spec = parse_run_spec({}, p.services.spec_context)
    name = cloud.ensure_cluster(spec, f"orphan-{uuid.uuid4().hex[:8]}").name
    deadline = time.monotonic() + 30
    while not (cluster := cloud.get_cluster(name)) or cluster.allocated_nodes < 1:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    released: list[str] = []
    while not released:
        assert time.monotonic() < deadline, cloud.get_cluster(name)
        released = run_monitor(p.services).released
        time.sleep(0.5)
    assert released == [name] and cloud.get_cluster(name).manual_target == 0
