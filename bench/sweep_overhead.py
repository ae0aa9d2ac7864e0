"""A sweep's overhead: its wall time against the sum of its trials' job times at its concurrency.

The demo's stack (`samples.mnist.demo.demo_settings`: Functions host with function_app.py, a monitor
pass every second), the demo's dataset with a `sweep` section over learning rate and batch size
(grid, no early termination, so every trial trains fully), uploaded with the CLI's upload (run.json
last). Timed from the parent entering `running` (its snapshot complete) to its `succeeded`.

Ideal: the trials' own job times (each `running` -> its end, from the run records) divided by
`max_concurrent_trials`, i.e. perfectly packed slots. The ratio wall / ideal is what the sweep
machinery (starting trials pass by pass, cluster slots, the monitor's cadence) adds; 1.0 is none.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import BenchOptions, Figure, local_stack, median


def _epoch(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() if iso else None


def sweep_manifest(data_dir: Path, trials: int, concurrency: int) -> None:
    """Turn the demo's run.json into a sweep of `trials` grid points, `concurrency` at a time."""
    manifest = json.loads((data_dir / "run.json").read_text())
    args = manifest["arguments"].split()
    for flag, name in (("--lr", "lr"), ("--batch-size", "batch_size")):
        if flag in args:
            index = args.index(flag)
            del args[index : index + 2]
        args += [flag, "${{search_space." + name + "}}"]
    manifest["arguments"] = " ".join(args)
    lrs = [0.002 * (i + 1) for i in range((trials + 1) // 2)]
    manifest["sweep"] = {
        "parameters": {"lr": {"values": lrs}, "batch_size": {"values": [32, 64]}},
        "sampling": "grid",
        "max_trials": trials,
        "max_concurrent_trials": concurrency,
        "primary_metric": "test_loss",
        "goal": "minimize",
    }
    # Room on the cluster for the trials that run side by side.
    manifest["cluster"] = {
        "auto_scale": {"minimum_node_count": 0, "maximum_node_count": concurrency, "initial_node_count": 0}
    }
    (data_dir / "run.json").write_text(json.dumps(manifest, indent=2) + "\n")


def sweep_run(stack: Any, data_dir: Path, dataset: str, timeout: float) -> dict[str, Any]:
    from azure.data.tables import TableClient

    from cli.client import Settings as CliSettings
    from cli.upload import upload_dataset
    from shared.registry import RunRegistry

    registry = RunRegistry(TableClient.from_connection_string(stack.connection_string, "runs"))
    settings = CliSettings(
        stack.functions_url, stack.functions_key, stack.connection_string, "training-data", "bench"
    )
    upload_dataset(settings, data_dir, dataset, stream=io.StringIO())
    deadline = time.monotonic() + timeout
    parent = None
    while time.monotonic() < deadline:
        parents = [r for r in registry.iter_runs(dataset=dataset) if r.parent_id is None]
        parent = parents[-1] if parents else None
        if parent is not None and parent.terminal:
            break
        time.sleep(0.5)
    if parent is None or parent.state != "succeeded":
        raise RuntimeError(f"sweep of {dataset} ended {parent.state if parent else 'no run'}")
    trials = [r for r in registry.iter_runs(dataset=dataset) if r.parent_id == parent.run_id]
    jobs = []
    for trial in trials:
        start, end = _epoch(trial.times.get("running")), _epoch(trial.times.get(trial.state))
        if start is not None and end is not None:
            jobs.append(end - start)
    wall = (_epoch(parent.times["succeeded"]) or 0) - (_epoch(parent.times["running"]) or 0)
    return {"wall_s": wall, "job_s": jobs, "trials": len(trials)}


def run(options: BenchOptions) -> list[Figure]:
    from samples.mnist.demo import demo_settings, prepare_dataset

    work = Path(options.work_dir) / "sweep"
    shutil.rmtree(work, ignore_errors=True)
    data_dir = work / "dataset"
    prepare_dataset(data_dir, options.demo_train, options.demo_test, options.demo_epochs)
    sweep_manifest(data_dir, options.sweep_trials, options.sweep_concurrency)
    results: list[dict[str, Any]] = []
    try:
        services = ["azurite", "files", "arm", "functions", "eventgrid"]
        with local_stack(work / "stack", services, demo_settings, shared=options.shared_stack) as stack:
            for i in range(max(1, options.sweep_repeats)):
                results.append(sweep_run(stack, data_dir, f"sweep{i}", timeout=900))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    concurrency = options.sweep_concurrency
    ratios = [r["wall_s"] / (sum(r["job_s"]) / concurrency) for r in results]
    walls = [r["wall_s"] for r in results]
    sums = [sum(r["job_s"]) for r in results]
    return [
        Figure(
            key="sweep.overhead_ratio",
            name=f"sweep wall time / (sum of trial job times / {concurrency}) "
            f"({options.sweep_trials} trials, {concurrency} at a time)",
            value=round(median(ratios), 2),
            unit="x",
            target="(report)",
            met=None,
            baseline=f"wall {median(walls):.1f} s; trials' jobs {median(sums):.1f} s in all "
            f"(ideal at {concurrency} at a time {median(sums) / concurrency:.1f} s)",
            runs=len(results),
            samples=[round(x, 2) for x in ratios],
            details={"per_sweep": results},
        )
    ]
