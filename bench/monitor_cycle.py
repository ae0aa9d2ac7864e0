"""One monitor pass (`shared.monitor.run_monitor`) over 1,000 active runs spread over 10 experiments.

Seeded through the real clients: the ARM emulator gets the workspace, one experiment per dataset, one
cluster per dataset and 1,000 jobs through the Batch AI SDK (`shared.compute`); the registry gets one
run record per job, as ingest leaves it after submission. The emulator's provisioning delay is raised
first so that the clusters stay `resizing` and every job stays `queued`: each pass then sees the same
1,000 active runs (the steady state of a busy app; no pass finishes a run, so the passes are
comparable). The ARM requests of a pass are counted from the emulator's request log; the baseline is
the number of runs (what a GET per run would cost).
"""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path
from typing import Any

from bench.common import BenchOptions, Figure, arm_admin, arm_requests_since, local_stack, median, stack_env

TARGET_REQUESTS = 20
TARGET_SECONDS = 3.0
SEED_THREADS = 8
GROUP = "benchmonitor"  # resource group and registry table of the seeded runs


def build_services(stack: Any, **overrides: str) -> Any:
    from azure.data.tables import TableClient

    from shared import clients
    from shared.batchai_backend import BatchAIBackend
    from shared.ingest import Services
    from shared.registry import RunRegistry
    from shared.settings import Settings

    settings = Settings.from_env(stack_env(stack, **overrides))
    return Services(
        settings=settings,
        registry=RunRegistry(
            TableClient.from_connection_string(stack.connection_string, settings.runs_table)
        ),
        container=clients.training_container(settings),
        share=clients.share_client(settings),
        cloud=BatchAIBackend(settings),
    )


def seed(svc: Any, runs: int, experiments: int) -> list[str]:
    """`runs` submitted runs over `experiments` datasets: jobs in the emulator, records in the registry."""
    from shared import batchai_models as bm
    from shared.registry import PROVISIONING, new_run_id, utcnow
    from shared.runspec import parse_run_spec

    spec = parse_run_spec({}, svc.spec_context)  # the quickstart's job
    cloud = svc.cloud
    cloud.ensure_workspace()
    datasets = [f"bench{i:02d}" for i in range(experiments)]
    clusters = {}
    for ds in datasets:
        clusters[ds] = cloud.ensure_cluster(spec, ds)
        cloud.compute.ensure_experiment(bm.experiment_name(ds))
    params = {ds: bm.job_parameters(spec, ds, clusters[ds].id, svc.settings) for ds in datasets}
    spec_json = spec.to_json_dict()

    def one(i: int) -> str:
        ds = datasets[i % experiments]
        run_id = f"{new_run_id()}-{i:04d}"
        names = cloud.job_names(run_id, ds)
        cloud.compute.create_job(names.experiment, names.job, params[ds])
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
            svc = build_services(stack, RUNS_TABLE=GROUP, BATCHAI_RESOURCE_GROUP=GROUP)
            figures = measure(svc, stack, runs, experiments, cycles)
        finally:
            arm_admin(
                stack, "settings", "POST", {k: saved[k] for k in ("provisioning_delay", "operation_delay")}
            )
    return figures


def measure(svc: Any, stack: Any, runs: int, experiments: int, cycles: int) -> list[Figure]:
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
        logged = [r for r in logged if f"/resourcegroups/{GROUP}/" in r["path"].lower()]
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
    return [
        Figure(
            key="monitor.arm_requests",
            name=f"monitor pass, {runs} active runs / {experiments} experiments: ARM requests",
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
            key="monitor.pass_s",
            name="  monitor pass duration",
            value=round(med_seconds, 3),
            unit="s",
            target=f"<= {TARGET_SECONDS:g} s",
            met=med_seconds <= TARGET_SECONDS,
            baseline=f"{runs} runs: {med_seconds / runs * 1000:.2f} ms per run",
            samples=[round(s, 3) for s in seconds],
            **common,
        ),
    ]
