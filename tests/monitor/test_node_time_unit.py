"""Node time arithmetic (shared.node_time.advance): one monitor pass over one cluster, case by case."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.compute_port import ClusterStatus
from shared.node_time import advance, new_ledger

T0 = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def cluster(nodes: int, running: int = 0, target: int | None = 1) -> ClusterStatus:
    return ClusterStatus(
        name="c1",
        id="/x/clusters/c1",
        current_node_count=nodes,
        node_state_counts={"idle_node_count": nodes - running, "running_node_count": running},
        scale_settings={"manual": {"target_node_count": target}} if target is not None else None,
        created_at=T0,
    )


def test_a_run_gets_its_active_and_after_node_minutes_and_the_idle_time_counts_from_its_end() -> None:
    ledger = new_ledger(cluster(0), T0)
    # Pass 1: the run is active (staging), the cluster is allocating its node.
    step = advance(ledger, cluster(1), ["r1"], {}, T0)
    assert step.idle_for is None and step.run_node_minutes == {}
    # Passes 2-4: one node, running the job, 1 minute apart.
    for i in (1, 2, 3):
        step = advance(step.ledger, cluster(1, running=1), ["r1"], {}, T0 + i * MIN)
    assert step.ledger.node_minutes == 3.0
    # Pass 5: the run ended 30 s ago; the node is idle and still allocated.
    end = T0 + 3.5 * MIN
    step = advance(step.ledger, cluster(1), [], {"r1": end}, T0 + 4 * MIN)
    assert step.run_node_minutes == {"r1": {"cluster": "c1", "active": 4.0, "after": 0.0}}
    assert step.idle_for == 0.5 * MIN  # from the run's end, not from the pass
    # Passes 6-7: idle, the node still allocated: "after" grows.
    step = advance(step.ledger, cluster(1), [], {}, T0 + 5 * MIN)
    assert step.run_node_minutes == {"r1": {"cluster": "c1", "after": 1.0}}
    assert step.idle_for == 1.5 * MIN
    # Pass 8: the nodes were released (zero seen): "after" is final and the run is not followed any more.
    step = advance(step.ledger, cluster(0, target=0), [], {}, T0 + 6 * MIN)
    assert step.run_node_minutes == {"r1": {"cluster": "c1", "after": 2.0}}
    assert step.ledger.after_marks == {}
    # Pass 9: nothing allocated, nothing changes, no write needed.
    step = advance(step.ledger, cluster(0, target=0), [], {}, T0 + 7 * MIN)
    assert step.run_node_minutes == {} and not step.changed
    assert step.ledger.node_minutes == 6.0


def test_a_running_node_keeps_a_cluster_busy_even_without_a_run_of_ours() -> None:
    ledger = new_ledger(cluster(1), T0)
    step = advance(ledger, cluster(1, running=1), [], {}, T0 + 60 * MIN)
    assert step.idle_for is None
    step = advance(step.ledger, cluster(1), [], {}, T0 + 61 * MIN)
    assert step.idle_for == 1 * MIN


def test_a_new_cluster_without_runs_is_idle_since_its_creation() -> None:
    step = advance(new_ledger(cluster(1), T0), cluster(1), [], {}, T0 + 45 * MIN)
    assert step.idle_for == 45 * MIN


def test_after_time_stops_when_another_run_starts_on_the_cluster() -> None:
    ledger = new_ledger(cluster(1), T0)
    step = advance(ledger, cluster(1, running=1), ["r1"], {}, T0)
    step = advance(step.ledger, cluster(1), [], {"r1": T0 + MIN}, T0 + 2 * MIN)
    assert step.run_node_minutes["r1"]["active"] == 2.0
    step = advance(step.ledger, cluster(1, running=1), ["r2"], {}, T0 + 3 * MIN)
    assert step.run_node_minutes == {"r1": {"cluster": "c1", "after": 1.0}}
    assert step.ledger.after_marks == {} and set(step.ledger.active_marks) == {"r2"}
    assert step.idle_for is None


def test_overlapping_runs_each_get_the_cluster_time_of_their_own_activity() -> None:
    ledger = new_ledger(cluster(2), T0)
    step = advance(ledger, cluster(2, running=2), ["r1"], {}, T0)
    step = advance(step.ledger, cluster(2, running=2), ["r1", "r2"], {}, T0 + MIN)
    step = advance(step.ledger, cluster(2, running=1), ["r2"], {"r1": T0 + 2 * MIN}, T0 + 2 * MIN)
    assert step.run_node_minutes["r1"] == {"cluster": "c1", "active": 4.0, "after": 0.0}
    assert step.ledger.after_marks == {}  # r2 still runs: r1's "after" is none of its own
    step = advance(step.ledger, cluster(2), [], {"r2": T0 + 3 * MIN}, T0 + 3 * MIN)
    assert step.run_node_minutes["r2"]["active"] == 6.0  # counted from the pass before it was first seen


def test_the_pass_that_sees_a_run_end_does_not_take_its_still_running_node_for_another_job() -> None:
    """The cluster listing comes before the job listing in a pass: it may show the node of the job
    that ended in between as running. The run's idle time starts at its end all the same."""
    ledger = new_ledger(cluster(1), T0)
    step = advance(ledger, cluster(1, running=1), ["r1"], {}, T0)
    step = advance(step.ledger, cluster(1, running=1), [], {"r1": T0 + 0.5 * MIN}, T0 + MIN)
    assert step.idle_for == 0.5 * MIN and step.ledger.after_marks == {"r1": 1.0}
    step = advance(step.ledger, cluster(1), [], {}, T0 + 2 * MIN)
    assert step.run_node_minutes == {"r1": {"cluster": "c1", "after": 1.0}}
