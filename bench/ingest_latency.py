"""Drop-to-submit latency: a manifest upload until its job exists in the ARM emulator, 20 datasets.

The real path: the local Functions host runs function_app.py, fed by the Event Grid stand-in (it
lists the container every 0.5 s and POSTs BlobCreated events to the host's blob webhook, as Event
Grid does in Azure), the emulators run with their `make up` defaults. Twenty small
datasets (a tiny training script and a run.json naming it) are uploaded back to back, script first,
manifest last, as the CLI uploads. A dataset's latency runs from the moment its run.json upload
returned to the moment the emulator answered the successful `Jobs_Create` PUT of its experiment
(both on this machine's clock: the emulator's request log records `time.time()` per request). No
baseline: the figure is absolute.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

from bench.common import BenchOptions, Figure, arm_requests_since, local_stack, median

TARGET_SECONDS = 2.0
SCRIPT = b"print('bench dataset: nothing to train')\n"
MANIFEST = {"script": "train.py", "files": ["train.py"], "max_wall_clock_time": "PT5M"}


def job_create_times(stack: Any, since: int) -> dict[str, float]:
    """Experiment name -> time of its first successful Jobs_Create, from the emulator's request log."""
    logged, _ = arm_requests_since(stack, since)
    created: dict[str, float] = {}
    for r in logged:
        if r["operation"] != "Jobs_Create" or not str(r["status"]).startswith("2"):
            continue
        parts = r["path"].split("/")
        experiment = parts[parts.index("experiments") + 1]
        created.setdefault(experiment, float(r["time"]))
    return created


def drop(container: Any, ds: str) -> float:
    """Upload one dataset, manifest last; the time its manifest upload returned."""
    container.upload_blob(f"{ds}/train.py", SCRIPT, overwrite=True)
    container.upload_blob(f"{ds}/run.json", json.dumps(MANIFEST).encode(), overwrite=True)
    return time.time()


def wait_for_jobs(stack: Any, experiments: list[str], timeout: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    created: dict[str, float] = {}
    while time.monotonic() < deadline:
        created = job_create_times(stack, 0)
        if all(exp in created for exp in experiments):
            return created
        time.sleep(0.05)
    missing = [exp for exp in experiments if exp not in created]
    tail = (stack.logs_dir / "functions.log").read_text(errors="replace")[-3000:]
    raise RuntimeError(f"no job was created for {', '.join(missing)} in time; host log tail:\n{tail}")


def cpu_seconds(stack: Any) -> dict[str, float]:
    """CPU seconds (user + system) each stack service has used so far, children included: during the
    burst it says which process the machine's two cores were busy in."""
    import psutil

    used: dict[str, float] = {}
    for name, proc in stack.processes.items():
        total = 0.0
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(proc.pid)
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = p.cpu_times()
                    total += times.user + times.system
        used[name] = total
    return used


def training_container(stack: Any) -> Any:
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient

    container = BlobServiceClient.from_connection_string(stack.connection_string).get_container_client(
        "training-data"
    )
    with contextlib.suppress(ResourceExistsError):
        container.create_container()
    time.sleep(2.0)  # let the host's first scans and timers settle
    return container


def run(options: BenchOptions) -> list[Figure]:
    from shared import batchai_requests

    count = options.datasets
    services = ["azurite", "files", "arm", "functions", "eventgrid"]
    work = Path(options.work_dir) / "ingest"
    # One at a time: a dataset is dropped when the previous one's job exists (the first pays the
    # host's first-use imports, as the first upload after a cold start does). Then all at once, on a
    # fresh stack (the first phase's clusters and jobs would load it): `count` datasets back to back,
    # then every job awaited. --quick keeps the one stack (a smoke test, not figures to quote).
    one_by_one: list[float] = []
    with contextlib.ExitStack() as stacks:
        stack = stacks.enter_context(local_stack(work, services, shared=options.shared_stack))
        container = training_container(stack)
        for i in range(count):
            ds = f"seq{i:02d}"
            uploaded = drop(container, ds)
            exp = batchai_requests.experiment_name(ds)
            one_by_one.append(wait_for_jobs(stack, [exp], 60)[exp] - uploaded)
        if not options.quick:
            stacks.close()
            stack = stacks.enter_context(local_stack(work, services))
            container = training_container(stack)
        datasets = [f"burst{i:02d}" for i in range(count)]
        cpu_before = cpu_seconds(stack)
        burst_started = time.time()
        uploaded_at = {ds: drop(container, ds) for ds in datasets}
        created = wait_for_jobs(
            stack, [batchai_requests.experiment_name(ds) for ds in datasets], 60 + 5 * count
        )
        burst_wall = max(created.values()) - burst_started
        cpu_after = cpu_seconds(stack)
    burst_cpu = {name: round(cpu_after[name] - cpu_before.get(name, 0.0), 2) for name in cpu_after}
    burst = [created[batchai_requests.experiment_name(ds)] - uploaded_at[ds] for ds in datasets]
    return [
        Figure(
            key="ingest.one_at_a_time_s",
            name=f"manifest upload -> job created, {count} datasets one at a time",
            value=round(median(one_by_one), 3),
            unit="s",
            target=f"<= {TARGET_SECONDS:g} s",
            met=median(one_by_one) <= TARGET_SECONDS,
            baseline="none (absolute; Event Grid stand-in lists every 0.5 s)",
            runs=count,
            samples=[round(x, 3) for x in one_by_one],
            details={"max_s": round(max(one_by_one), 3), "min_s": round(min(one_by_one), 3)},
        ),
        Figure(
            key="ingest.burst_s",
            name=f"manifest upload -> job created, {count} datasets dropped at once",
            value=round(median(burst), 3),
            unit="s",
            target=f"<= {TARGET_SECONDS:g} s",
            met=median(burst) <= TARGET_SECONDS,
            baseline="none (absolute; Event Grid stand-in lists every 0.5 s)",
            runs=count,
            samples=[round(x, 3) for x in burst],
            details={
                "max_s": round(max(burst), 3),
                "min_s": round(min(burst), 3),
                "upload_burst_s": round(max(uploaded_at.values()) - min(uploaded_at.values()), 3),
                "burst_wall_s": round(burst_wall, 2),
                "cpu_s_per_service_during_burst": burst_cpu,
            },
        ),
    ]
