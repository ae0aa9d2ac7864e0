"""One monitor pass (`shared.monitor.run_monitor`) over 1,000 active runs spread over 10 experiments.

Seeded through the real clients: the ARM emulator gets the workspace, one experiment per dataset, one
cluster per dataset and 1,000 jobs through the Batch AI SDK (`shared.batchai_sdk`); the registry gets one
run record per job, as ingest leaves it after submission. The emulator's provisioning delay is raised
first so that the clusters stay `resizing` and every job stays `queued`: each pass then sees the same
1,000 active runs (the steady state of a busy app; no pass finishes a run, so the passes are
comparable). The ARM requests of a pass are counted from the emulator's request log; the baseline is
the number of runs (what a GET per run would cost).

Then the metrics reader's worst case (``measure_metrics``): the same runs, every job running and
printing one metrics line between two passes, so each pass reads new stdout of every run, parses it,
and writes its series and latest values. The emulator cannot run 1,000 jobs at once, so the jobs'
state and log location come from a thin view over the backend (its listing is still the emulator's,
one call per experiment), and each job's stdout is a file on the share that the bench appends to
between passes, as a job writes it; the monitor reads it through the Files emulator as usual.

Both compute backends are measured side by side on the same stack: Batch AI (jobs listed per
experiment) and Azure ML (`monitor.azureml.*`: the workspace's jobs listed once, 100 a page; its
jobs are created through the port, the emulator's nodes never finish preparing either).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from bench.common import BenchOptions, Figure, arm_admin, arm_requests_since, local_stack, median, stack_env

TARGET_REQUESTS = 20
TARGET_SECONDS = 3.0
SEED_THREADS = 8
GROUP = "benchmonitor"  # resource group and registry table of the seeded runs


def build_services(stack: Any, **overrides: str) -> Any:
    from shared.services import build_services as build
    from shared.settings import Settings

    return build(Settings.from_env(stack_env(stack, **overrides)))


def seed(svc: Any, runs: int, experiments: int) -> list[str]:
    """`runs` submitted runs over `experiments` datasets: jobs in the emulator, records in the registry."""
    from shared import batchai_requests
    from shared.registry import PROVISIONING, new_run_id, utcnow
    from shared.runspec import parse_run_spec

    spec = parse_run_spec({}, svc.spec_context)  # the quickstart's job
    cloud = svc.cloud
    cloud.ensure_workspace()
    datasets = [f"bench{i:02d}" for i in range(experiments)]
    clusters = {}
    for ds in datasets:
        clusters[ds] = cloud.ensure_cluster(spec, ds)
        if cloud.name == "batchai":
            cloud.compute.ensure_experiment(batchai_requests.experiment_name(ds))
    params = (
        {ds: batchai_requests.job_parameters(spec, ds, clusters[ds].id, svc.settings) for ds in datasets}
        if cloud.name == "batchai"
        else {}
    )
    spec_json = spec.to_json_dict()

    def one(i: int) -> str:
        ds = datasets[i % experiments]
        run_id = f"{new_run_id()}-{i:04d}"
        names = cloud.job_names(run_id, ds)
        if cloud.name == "batchai":
            cloud.compute.create_job(names.experiment, names.job, params[ds])
        else:  # through the port: Azure ML has no experiment resource
            cloud.create_job(names, spec, ds, clusters[ds].id)
        svc.registry.create(
            ds,
            run_id=run_id,
            state=PROVISIONING,
            spec=spec_json,
            source="api",
            resource_group=names.resource_group,
            workspace=names.workspace,
            experiment=names.experiment,
            job_name=names.job,
            job_id=names.job_id,
            cluster=clusters[ds].name,
            cluster_id=clusters[ds].id,
            submitted_at=utcnow(),
        )
        return run_id

    with concurrent.futures.ThreadPoolExecutor(SEED_THREADS) as pool:
        return list(pool.map(one, range(runs)))


def run(options: BenchOptions) -> list[Figure]:
    runs, experiments = options.monitor_runs, options.monitor_experiments
    cycles = max(1, options.monitor_cycles)
    # Nodes that take a day to prepare: clusters stay resizing, jobs stay queued, runs stay active.
    work = Path(options.work_dir) / "monitor"
    with local_stack(work, ["azurite", "files", "arm"], shared=options.shared_stack) as stack:
        saved = arm_admin(stack, "settings")
        arm_admin(stack, "settings", "POST", {"provisioning_delay": 86400, "operation_delay": 0.05})
        try:
            figures = []
            for backend in ("batchai", "azureml"):  # side by side, on the same stack
                group = f"{GROUP}{backend}"
                svc = build_services(
                    stack, RUNS_TABLE=group, BATCHAI_RESOURCE_GROUP=group, COMPUTE_BACKEND=backend
                )
                figures += measure(svc, stack, runs, experiments, cycles, group, backend)
                if backend == "batchai":
                    figures += measure_metrics(svc, stack, runs, cycles)
        finally:
            arm_admin(
                stack, "settings", "POST", {k: saved[k] for k in ("provisioning_delay", "operation_delay")}
            )
    return figures


def measure(
    svc: Any, stack: Any, runs: int, experiments: int, cycles: int, group: str, backend: str
) -> list[Figure]:
    from shared.monitor import run_monitor

    started = time.perf_counter()
    seed(svc, runs, experiments)
    seed_seconds = time.perf_counter() - started
    seconds: list[float] = []
    requests: list[int] = []
    by_operation: list[dict[str, int]] = []
    checked: list[int] = []
    transitions: list[int] = []
    errors: list[str] = []
    for _ in range(cycles):
        since = int(arm_admin(stack, "requests?since=999999999999")["last_seq"])
        started = time.perf_counter()
        report = run_monitor(svc)
        seconds.append(time.perf_counter() - started)
        logged, _ = arm_requests_since(stack, since)
        # Only this pass's: a shared --quick stack also serves a Functions host.
        logged = [r for r in logged if f"/resourcegroups/{group}/" in r["path"].lower()]
        requests.append(len(logged))
        ops: dict[str, int] = {}
        for r in logged:
            ops[r["operation"]] = ops.get(r["operation"], 0) + 1
        by_operation.append(ops)
        checked.append(report.checked)
        transitions.append(len(report.transitions))
        errors.extend(report.errors[:5])
    med_requests = median(requests)
    med_seconds = median(seconds)
    common = {"runs": cycles}
    prefix = "monitor" if backend == "batchai" else f"monitor.{backend}"
    return [
        Figure(
            key=f"{prefix}.arm_requests",
            name=f"monitor pass ({backend}), {runs} active runs / {experiments} experiments: ARM requests",
            value=med_requests,
            unit="requests",
            target=f"<= {TARGET_REQUESTS}",
            met=med_requests <= TARGET_REQUESTS,
            baseline=f"{runs} runs (a GET per run: {runs} requests); "
            f"{med_requests / runs:.3f} requests per run",
            samples=[float(r) for r in requests],
            details={
                "by_operation": by_operation[0],
                "runs_checked": checked,
                "transitions": transitions,
                "errors": errors,
                "seed_seconds": round(seed_seconds, 1),
            },
            **common,
        ),
        Figure(
            key=f"{prefix}.pass_s",
            name=f"  monitor pass duration ({backend})",
            value=round(med_seconds, 3),
            unit="s",
            target=f"<= {TARGET_SECONDS:g} s",
            met=med_seconds <= TARGET_SECONDS,
            baseline=f"{runs} runs: {med_seconds / runs * 1000:.2f} ms per run",
            samples=[round(s, 3) for s in seconds],
            **common,
        ),
    ]


class RunningJobs:
    """The backend, with every listed job running and writing its stdout under ``bench-logs/``."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def list_jobs_of(self, experiments: Any) -> Any:
        listing = self._backend.list_jobs_of(experiments)
        listing.jobs = {
            experiment: [
                dataclasses.replace(
                    job, state="running", log_location=f"bench-logs/{job.name}/stdouterr/stdout.txt"
                )
                for job in jobs
            ]
            for experiment, jobs in listing.jobs.items()
        }
        return listing


def measure_metrics(svc: Any, stack: Any, runs: int, cycles: int) -> list[Figure]:
    from azure.core.exceptions import ResourceExistsError

    from shared.monitor import run_monitor

    with contextlib.suppress(ResourceExistsError):
        svc.share.create_share()
    logs = Path(stack.files_root) / svc.settings.storage.account_name / svc.settings.file_share_name
    running = dataclasses.replace(svc, cloud=RunningJobs(svc.cloud))
    job_names = [r.job_name for r in svc.registry.iter_runs(state=["provisioning", "queued", "running"])]

    def print_epoch(epoch: int) -> None:
        line = json.dumps({"epoch": epoch, "loss": 1 / epoch, "accuracy": 1 - 1 / (epoch + 1)}) + "\n"
        for name in job_names:
            path = logs / "bench-logs" / name / "stdouterr" / "stdout.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(f"epoch {epoch} of a chatty job\n{line}")

    print_epoch(1)
    run_monitor(running)  # not timed: moves every run to running (one write each), reads epoch 1
    seconds: list[float] = []
    requests: list[int] = []
    read: list[int] = []
    deferred: list[int] = []
    errors: list[str] = []
    for cycle in range(cycles):
        print_epoch(cycle + 2)
        since = int(arm_admin(stack, "requests?since=999999999999")["last_seq"])
        started = time.perf_counter()
        report = run_monitor(running)
        seconds.append(time.perf_counter() - started)
        logged, _ = arm_requests_since(stack, since)
        group = svc.settings.resource_group.lower()
        requests.append(len([r for r in logged if f"/resourcegroups/{group}/" in r["path"].lower()]))
        read.append(report.metrics_read)
        deferred.append(report.metrics_deferred)
        errors.extend(report.errors[:5])
    sample = next(iter(svc.registry.iter_runs(state="running")), None)
    med_seconds = median(seconds)
    med_requests = median(requests)
    details = {
        "metrics_read": read,
        "metrics_deferred_to_next_pass": deferred,
        "errors": errors,
        "sample_run_metrics": sample.metrics if sample else None,
    }
    return [
        Figure(
            key="monitor.metrics_arm_requests",
            name=f"monitor pass, {len(job_names)} running jobs each printing a metrics line: ARM requests",
            value=med_requests,
            unit="requests",
            target=f"<= {TARGET_REQUESTS}",
            met=med_requests <= TARGET_REQUESTS,
            baseline="stdout is read from the file share: no ARM request per run",
            samples=[float(r) for r in requests],
            details=details,
            runs=cycles,
        ),
        Figure(
            key="monitor.metrics_pass_s",
            name="  its pass duration (every run has new stdout)",
            value=round(med_seconds, 3),
            unit="s",
            target=f"<= {TARGET_SECONDS:g} s",
            met=med_seconds <= TARGET_SECONDS,
            baseline=f"runs read per pass {read}, left for the next pass {deferred}",
            samples=[round(s, 3) for s in seconds],
            runs=cycles,
        ),
    ]
