"""Node time: how long each cluster has held nodes, what each run cost in node-minutes, and when a
cluster has been idle long enough to give its nodes back (idle release, `CLUSTER_IDLE_MINUTES`).

Why here and pure: the monitor already lists the workspace's clusters once per pass (with their node
counts), so it samples node time at no extra ARM request. ``advance`` is the arithmetic of one pass
for one cluster, a function of the stored ``ClusterLedger``, the cluster as listed, the runs that use
it and the time: no I/O, unit-tested case by case; ``shared.monitor`` reads and writes the ledgers
(with an ETag match) and carries out the releases.

How it counts: each pass adds the nodes seen at the previous pass times the time since it (a step
function sampled at the monitor's schedule, so a change between two passes is counted from the pass
that sees it). A run's ``active`` node-minutes are the cluster's node time from the pass that first
saw it active to the pass that saw it end; its ``after`` node-minutes are the node time from then
until the nodes are released (zero nodes seen) or another run becomes active on the cluster.

A cluster is idle while no active run uses it and no node of it runs a job; ``busy_until`` is the
last time it was known in use (a pass that saw it busy, or the end time of its last run). Once that is
``CLUSTER_IDLE_MINUTES`` ago, the monitor releases its nodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shared.compute_port import ClusterStatus
from shared.registry import ClusterLedger, parse_time
from shared.times import iso_utc

__all__ = ["Step", "advance", "new_ledger"]


def _round(value: float) -> float:
    return round(value, 4)


@dataclass
class Step:
    """What one pass decided for one cluster: the ledger to store, the node-minutes to record on
    runs (``{run id: {"cluster", "active"?, "after"}}``), and how long the cluster has been idle
    (None while it is in use)."""

    ledger: ClusterLedger
    run_node_minutes: dict[str, dict[str, Any]] = field(default_factory=dict)
    idle_for: timedelta | None = None
    changed: bool = True


def new_ledger(cluster: ClusterStatus, now: datetime) -> ClusterLedger:
    """The ledger of a cluster the monitor sees for the first time: idle since its creation."""
    return ClusterLedger(name=cluster.name, busy_until=iso_utc(cluster.created_at or now))


def advance(
    ledger: ClusterLedger,
    cluster: ClusterStatus,
    active_runs: Iterable[str],
    ended_runs: Mapping[str, datetime | None],
    now: datetime,
) -> Step:
    """One pass over one cluster. ``active_runs``: ids of the active runs that use the cluster now;
    ``ended_runs``: runs the ledger followed as active that are not any more, with their end time
    (None when unknown: now is taken)."""
    before = ledger.to_entity()
    active = list(dict.fromkeys(active_runs))
    sampled = parse_time(ledger.sampled_at)
    previous_total = ledger.node_minutes
    if sampled is not None and now > sampled:
        ledger.node_minutes = _round(previous_total + ledger.nodes * (now - sampled).total_seconds() / 60)
    total = ledger.node_minutes
    accrued = total != previous_total
    ledger.nodes = cluster.allocated_nodes
    ledger.sampled_at = iso_utc(now)
    writes: dict[str, dict[str, Any]] = {}

    busy_until = parse_time(ledger.busy_until)
    just_ended = [r for r in ledger.active_marks if r not in active]
    for run_id in just_ended:
        mark = ledger.active_marks.pop(run_id)
        writes[run_id] = {"cluster": cluster.name, "active": _round(total - mark), "after": 0.0}
        ledger.after_marks[run_id] = total
        ended = ended_runs.get(run_id) or now
        busy_until = ended if busy_until is None else max(busy_until, ended)
    for run_id in active:
        if run_id not in ledger.active_marks:
            # First seen now: it became active some time since the last pass.
            ledger.active_marks[run_id] = previous_total

    # A running node means a job we may not know of, except in the pass that saw runs end: the
    # clusters are listed before the jobs, so the listing may still show their jobs' nodes running.
    in_use = bool(active) or (cluster.running_nodes > 0 and not just_ended)
    if in_use:
        busy_until = now
    stop_after = in_use or cluster.allocated_nodes == 0
    for run_id, mark in list(ledger.after_marks.items()):
        if accrued or run_id in writes:
            writes.setdefault(run_id, {"cluster": cluster.name})["after"] = _round(total - mark)
        if stop_after:
            del ledger.after_marks[run_id]
    ledger.busy_until = iso_utc(busy_until) if busy_until is not None else None
    idle_for = None if in_use or busy_until is None else max(now - busy_until, timedelta(0))
    after = ledger.to_entity()
    changed = {k: v for k, v in before.items() if k != "sampled_at"} != {
        k: v for k, v in after.items() if k != "sampled_at"
    }
    return Step(ledger, writes, idle_for, changed or bool(writes))
