"""Idle node time after a run ends (idle release): what a dataset's cluster costs once its job is done.

A dataset is dropped (ingest_blob for each upload, in process, through the real clients), its job
runs on a fresh one-node manual cluster, and the monitor (`shared.monitor.run_monitor`) runs every
`PASS_SECONDS` as the timer would, until the run has finished and its cluster holds no node. Two
figures per run, side by side with CLUSTER_IDLE_MINUTES:
- the idle node-minutes the run's record carries (`node_minutes.after`: what the monitor counted
  from the node counts it reads), and
- the same from the ARM emulator's own allocation history (`/_emulator/clusters`: node-seconds from
  the job's end until the node count reached zero), the ground truth the first is checked against.
The baseline is what it cost before: a node held until the nightly cleanup (02:00) found the cluster
idle, about 23 hours for a run that ends at 03:00.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import BenchOptions, Figure, arm_admin, local_stack, median
from bench.monitor_cycle import build_services

PASS_SECONDS = 1.0  # the monitor's schedule in this benchmark (the app's default is a minute)
NIGHTLY_BASELINE_MINUTES = 23 * 60  # a run ending at 03:00, cleanup at 02:00 the next night
SCRIPT = b"import time\ntime.sleep(1)\nprint('trained')\n"
MANIFEST = {"script": "train.py", "arguments": "", "files": ["train.py"]}


def run(options: BenchOptions) -> list[Figure]:
    idle_minutes = options.idle_seconds / 60
    work = Path(options.work_dir) / "idle"
    with local_stack(work, ["azurite", "files", "arm"], shared=options.shared_stack) as stack:
        saved = arm_admin(stack, "settings")
        arm_admin(stack, "settings", "POST", {"provisioning_delay": 1.0, "operation_delay": 0.1})
        try:
            tag = uuid.uuid4().hex[:8]
            svc = build_services(
                stack,
                RUNS_TABLE=f"benchidle{tag}",
                BATCHAI_RESOURCE_GROUP=f"benchidle-{tag}",
                TRAINING_CONTAINER=f"benchidle-{tag}",
                FILE_SHARE_NAME=f"benchidle-{tag}",
                CLUSTER_IDLE_MINUTES=repr(idle_minutes),
            )
            svc.container.create_container()
            samples = [one_run(svc, stack, f"idle{i}-{tag}") for i in range(options.idle_repeats)]
        finally:
            arm_admin(
                stack, "settings", "POST", {k: saved[k] for k in ("provisioning_delay", "operation_delay")}
            )
    recorded = [s["recorded_after"] for s in samples]
    emulated = [s["emulated_after"] for s in samples]
    bound = idle_minutes + 2 * PASS_SECONDS / 60  # the idle time, the pass that releases, the leaving node
    common = {"runs": len(samples), "details": {"samples": samples, "pass_seconds": PASS_SECONDS}}
    return [
        Figure(
            key="idle.after_node_minutes",
            name=f"idle node-minutes after a run ends (CLUSTER_IDLE_MINUTES={idle_minutes:g}, one node)",
            value=round(median(recorded), 3),
            unit="node-min",
            target=f"<= {bound:.3g} (idle time + 2 passes)",
            met=median(recorded) <= bound,
            baseline=f"CLUSTER_IDLE_MINUTES={idle_minutes:g}; before: held until the nightly cleanup, "
            f"~{NIGHTLY_BASELINE_MINUTES} node-min",
            samples=recorded,
            **common,
        ),
        Figure(
            key="idle.emulated_after_node_minutes",
            name="  the same from the ARM emulator's allocation history",
            value=round(median(emulated), 3),
            unit="node-min",
            target="(ground truth)",
            met=None,
            baseline=f"monitor recorded {median(recorded):.3f}; difference "
            f"{median(recorded) - median(emulated):+.3f} node-min (sampled every {PASS_SECONDS:g} s)",
            samples=emulated,
            **common,
        ),
    ]


def one_run(svc: Any, stack: Any, dataset: str, timeout: float = 120.0) -> dict[str, Any]:
    """Drop a dataset, run the monitor until its run is done and its cluster holds no node."""
    from shared.ingest import ingest_blob
    from shared.monitor import run_monitor
    from shared.registry import TERMINAL_STATES, parse_time

    svc.container.upload_blob(f"{dataset}/train.py", SCRIPT, overwrite=True)
    svc.container.upload_blob(f"{dataset}/run.json", json.dumps(MANIFEST), overwrite=True)
    run_id = None
    for name in (f"{dataset}/train.py", f"{dataset}/run.json"):
        run_id = ingest_blob(name, svc).run_id
    deadline = time.monotonic() + timeout
    while True:
        run_monitor(svc)
        rec = svc.registry.get(run_id, with_files=False)
        cluster = svc.cloud.get_cluster(rec.cluster) if rec.cluster else None
        if rec.state in TERMINAL_STATES and cluster is not None and cluster.allocated_nodes == 0:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"run {run_id} ({rec.state}) or its cluster's release took over {timeout:.0f}s"
            )
        time.sleep(PASS_SECONDS)
    time.sleep(PASS_SECONDS)
    run_monitor(svc)  # the pass that sees zero nodes closes the run's idle time
    rec = svc.registry.get(run_id, with_files=False)
    if rec.state != "succeeded":
        raise RuntimeError(f"run {run_id} {rec.state}: {rec.errors}")
    ended = parse_time(rec.times["succeeded"])
    history = next(c for c in arm_admin(stack, "clusters")["clusters"] if c["name"] == rec.cluster)["history"]
    return {
        "run": run_id,
        "recorded_active": (rec.node_minutes or {}).get("active"),
        "recorded_after": float((rec.node_minutes or {}).get("after") or 0.0),
        "emulated_after": round(node_minutes_after(history, ended), 4),
    }


def node_minutes_after(history: list[dict[str, Any]], since: datetime) -> float:
    """Node-minutes from `since` to the last change of the node count, from the emulator's history."""
    from shared.registry import parse_time

    total = 0.0
    points = [(parse_time(h["time"]), int(h["nodes"])) for h in history]
    for (start, nodes), (end, _) in itertools.pairwise(points):
        start, end = max(start, since), max(end, since)
        total += nodes * (end - start).total_seconds() / 60
    return total
