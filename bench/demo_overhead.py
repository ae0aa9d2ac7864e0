"""The demo end to end minus the training script alone: what the pipeline adds to a training run.

Baseline: `ConvNet_MNIST.py` run directly on the demo's generated data with the demo's arguments (the
run.json's, input and output directories filled in). Pipeline: the stack as `make demo` runs it
(`samples.mnist.demo.demo_settings`: Functions host with function_app.py, short emulator delays),
the dataset uploaded with the CLI's upload (run.json last), timed until the registry shows the run
`succeeded`. Each repeat uses a new dataset name, so each pays a cluster's provisioning as the demo
does. Direct and pipeline runs alternate so that machine noise hits both alike.

Supporting lines break the pipeline's time down from the run record (upload, upload -> job
created, job created -> started, the job's own run time, job end -> run seen succeeded); "overhead
inside one run" (end to end minus that run's own job time) is far less noisy than the difference of
two separately timed trainings on a shared machine.
"""

from __future__ import annotations

import io
import json
import shlex
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import PY, BenchOptions, Figure, local_stack, median, repo_env

TARGET_OVERHEAD = 5.0


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def direct_run(data_dir: Path, out_dir: Path) -> float:
    """Seconds of ConvNet_MNIST.py run as the job runs it, on the same files."""
    manifest = json.loads((data_dir / "run.json").read_text())
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    args = [
        str(data_dir)
        if a == "$AZ_BATCHAI_INPUT_SAMPLE"
        else str(out_dir)
        if a == "$AZ_BATCHAI_OUTPUT_MODEL"
        else a
        for a in shlex.split(manifest["arguments"])
    ]
    started = time.perf_counter()
    subprocess.run(
        [PY, str(data_dir / manifest["script"]), *args],
        cwd=data_dir,
        env=repo_env(),
        check=True,
        capture_output=True,
        timeout=3600,
    )
    return time.perf_counter() - started


def pipeline_run(stack: Any, data_dir: Path, dataset: str, timeout: float) -> dict[str, float]:
    """Upload the dataset; wait for its run to succeed. Times in seconds since the upload began."""
    from azure.data.tables import TableClient

    from cli.client import Settings as CliSettings
    from cli.upload import upload_dataset
    from shared.registry import RunRegistry

    registry = RunRegistry(TableClient.from_connection_string(stack.connection_string, "runs"))
    settings = CliSettings(
        stack.functions_url, stack.functions_key, stack.connection_string, "training-data", "bench"
    )
    t0 = time.time()
    upload_dataset(settings, data_dir, dataset, stream=io.StringIO())
    uploaded = time.time()
    deadline = time.monotonic() + timeout
    rec = None
    while time.monotonic() < deadline:
        runs = list(registry.iter_runs(dataset=dataset))
        rec = runs[-1] if runs else None
        if rec is not None and rec.terminal:
            break
        time.sleep(0.2)
    done = time.time()
    if rec is None or rec.state != "succeeded":
        state = rec.state if rec else "no run"
        errors = rec.errors if rec else []
        raise RuntimeError(f"demo run of {dataset} ended {state}: {errors}")
    times = rec.times
    started, ended = _epoch(times.get("running")), _epoch(times.get("succeeded"))
    submitted = _epoch(rec.submitted_at)
    return {
        "end_to_end": done - t0,
        "upload": uploaded - t0,
        "upload_to_job_created": (submitted or uploaded) - uploaded,
        "job_created_to_started": (started or 0) - (submitted or 0),
        "job_run": (ended or 0) - (started or 0),
        "job_end_to_seen_succeeded": done - (ended or done),
    }


def run(options: BenchOptions) -> list[Figure]:
    from samples.mnist.demo import demo_settings, prepare_dataset

    work = Path(options.work_dir) / "demo"
    shutil.rmtree(work, ignore_errors=True)
    data_dir = work / "dataset"
    prepare_dataset(data_dir, options.demo_train, options.demo_test, options.demo_epochs)
    repeats = max(1, options.demo_repeats)
    direct: list[float] = []
    pipeline: list[dict[str, float]] = []
    try:
        services = ["azurite", "files", "arm", "functions", "eventgrid"]
        with local_stack(work / "stack", services, demo_settings, shared=options.shared_stack) as stack:
            for i in range(repeats):
                direct.append(direct_run(data_dir, work / "direct-out"))
                pipeline.append(pipeline_run(stack, data_dir, f"mnist{i}", timeout=600 + 10 * direct[-1]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    e2e = [p["end_to_end"] for p in pipeline]
    overhead = median(e2e) - median(direct)
    inside = [p["end_to_end"] - p["job_run"] for p in pipeline]
    phases = {k: round(median([p[k] for p in pipeline]), 2) for k in pipeline[0]}
    args = f"--train {options.demo_train} --test {options.demo_test} --epochs {options.demo_epochs}"
    return [
        Figure(
            key="demo.overhead_s",
            name=f"demo end to end - training script alone ({args})",
            value=round(overhead, 2),
            unit="s",
            target=f"<= {TARGET_OVERHEAD:g} s",
            met=overhead <= TARGET_OVERHEAD,
            baseline=f"script alone {median(direct):.1f} s; end to end {median(e2e):.1f} s",
            runs=repeats,
            samples=[round(e - d, 2) for e, d in zip(e2e, direct, strict=True)],
            details={"direct_s": [round(x, 2) for x in direct], "end_to_end_s": [round(x, 2) for x in e2e]},
        ),
        Figure(
            key="demo.overhead_inside_run_s",
            name="  overhead inside one run (end to end - its own job time)",
            value=round(median(inside), 2),
            unit="s",
            target="(supporting)",
            met=None,
            baseline="phases (median s): " + ", ".join(f"{k} {v}" for k, v in phases.items()),
            runs=repeats,
            samples=[round(x, 2) for x in inside],
            details={"phases_median_s": phases, "per_run": pipeline},
        ),
    ]
