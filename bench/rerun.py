"""Re-run of a big dataset whose one small file changed (run snapshots): manifest upload -> job created,
next to a fresh tiny dataset in the same run, and where the re-run's bytes came from.

The real path, as `ingest_latency` (the local Functions host and its blob scan, the emulators). A
dataset of one big blob (`--blob-size`, default 1 GiB), a small labels file, a script and a run.json
naming them is dropped and trained once (its job created). Then a fresh tiny dataset (script and
run.json) is dropped: its manifest upload -> job created is the baseline. Then the labels file is
uploaded again, changed, and run.json after it, as the CLI orders an upload: the figure is that
manifest upload -> the job of the run that took it. The re-run's snapshot is its own, so the big
file is not staged again from blob storage: it is carried from the first run's snapshot by a copy
inside the share. Bytes from blob storage vs bytes carried are read from each snapshot file's copy
source (`x-ms-copy-source`: a blob URL of the training container, or a file URL of the share).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from bench.common import (
    BenchOptions,
    Figure,
    arm_requests_since,
    check_disk,
    local_stack,
    mib,
    stack_env,
    upload_varied_blob,
)
from bench.ingest_latency import SCRIPT, training_container
from infra.local.waiting import wait_for

BIG = "data.bin"
LABELS = "labels.txt"
MANIFEST = {"script": "train.py", "files": ["train.py", BIG, LABELS], "max_wall_clock_time": "PT5M"}
TINY_MANIFEST = {"script": "train.py", "files": ["train.py"], "max_wall_clock_time": "PT5M"}


def upload_manifest(container: Any, dataset: str, manifest: dict[str, Any]) -> tuple[float, str]:
    """Upload run.json; the time its upload returned and its ETag."""
    blob = container.get_blob_client(f"{dataset}/run.json")
    answer = blob.upload_blob(json.dumps(manifest).encode(), overwrite=True)
    return time.time(), str(answer["etag"]).strip('"')


def submitted_run(registry: Any, dataset: str, manifest_etag: str) -> Any:
    """The dataset's run that took this manifest version, once its job is submitted."""
    for rec in registry.iter_runs(dataset=dataset):
        if rec.manifest_etag == manifest_etag and rec.submitted_at and rec.job_name:
            return registry.get(rec.run_id)
    return None


def job_created_at(stack: Any, experiment: str, job: str) -> float:
    logged, _ = arm_requests_since(stack, 0)
    for r in logged:
        created = r["operation"] == "Jobs_Create" and str(r["status"]).startswith("2")
        if created and f"/experiments/{experiment}/jobs/{job}" in r["path"]:
            return float(r["time"])
    raise RuntimeError(f"no Jobs_Create of {experiment}/{job} in the ARM emulator's log")


def drop_and_wait(stack: Any, registry: Any, container: Any, dataset: str, manifest: dict[str, Any],
                  timeout: float) -> tuple[float, Any]:  # fmt: skip
    """Upload the manifest, wait for its run's job: (seconds from upload to Jobs_Create, run)."""
    uploaded, etag = upload_manifest(container, dataset, manifest)
    rec = wait_for(
        lambda: submitted_run(registry, dataset, etag), timeout, 0.05, what=f"the job of {dataset}'s run"
    )
    return job_created_at(stack, rec.experiment, rec.job_name) - uploaded, rec


def copy_sources(share: Any, rec: Any, container_name: str) -> tuple[int, int]:
    """(bytes copied from blob storage, bytes carried inside the share) into the run's snapshot."""
    from_blob = carried = 0
    for f in rec.staged_files:
        source = share.get_file_client(f"{rec.snapshot}/{f.name}").get_file_properties().copy.source or ""
        if f"/{container_name}/" in source.split("?", 1)[0]:
            from_blob += f.size
        else:
            carried += f.size
    return from_blob, carried


def run(options: BenchOptions) -> list[Figure]:
    size = options.blob_size
    work = Path(options.work_dir) / "rerun"
    work.mkdir(parents=True, exist_ok=True)
    check_disk(work, size, copies=4, doing="re-running")  # the temp file, Azurite's copy, two snapshots
    services = ["azurite", "files", "arm", "functions", "eventgrid"]
    copy_timeout = 120 + size / (20 * 1024 * 1024)  # at least 20 MiB/s on a loaded machine
    try:
        figures = _measure(options, work, services, copy_timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return figures


def _measure(options: BenchOptions, work: Path, services: list[str], copy_timeout: float) -> list[Figure]:
    from azure.data.tables import TableClient
    from azure.storage.fileshare import ShareClient

    from shared.registry import RunRegistry
    from shared.settings import Settings

    size = options.blob_size
    tag = f"{int(time.time()) % 100000:05d}"  # a shared --quick stack may hold earlier datasets
    big, tiny = f"rerun-big-{tag}", f"rerun-tiny-{tag}"
    with local_stack(work / "stack", services, shared=options.shared_stack) as stack:
        settings = Settings.from_env(stack_env(stack))
        registry = RunRegistry(
            TableClient.from_connection_string(stack.connection_string, settings.runs_table)
        )
        share = ShareClient.from_connection_string(stack.connection_string, settings.file_share_name)
        container = training_container(stack)
        container.upload_blob(f"{big}/train.py", SCRIPT, overwrite=True)
        container.upload_blob(f"{big}/{LABELS}", b"labels v1\n", overwrite=True)
        upload_varied_blob(container, f"{big}/{BIG}", size, work)
        first_s, first = drop_and_wait(stack, registry, container, big, MANIFEST, copy_timeout)

        container.upload_blob(f"{tiny}/train.py", SCRIPT, overwrite=True)
        tiny_s, _ = drop_and_wait(stack, registry, container, tiny, TINY_MANIFEST, 60)

        changed = b"labels v2: one small file changed\n"
        container.upload_blob(f"{big}/{LABELS}", changed, overwrite=True)
        rerun_s, rerun = drop_and_wait(stack, registry, container, big, MANIFEST, copy_timeout)
        from_blob, carried = copy_sources(share, rerun, settings.training_container)
        first_from_blob, _ = copy_sources(share, first, settings.training_container)
    return [
        Figure(
            key="rerun.changed_small_file_s",
            name=f"re-run of a {mib(size):.0f} MiB dataset, one small file changed: "
            "manifest upload -> job created",
            value=round(rerun_s, 3),
            unit="s",
            target="(reported)",
            met=None,
            baseline=f"fresh tiny dataset {tiny_s:.2f} s; first run of the big dataset {first_s:.2f} s",
            samples=[round(rerun_s, 3)],
            details={
                "tiny_dataset_s": round(tiny_s, 3),
                "first_run_s": round(first_s, 3),
                "ratio_to_tiny": round(rerun_s / tiny_s, 3) if tiny_s > 0 else None,
                "blob_bytes": size,
                "runs": [first.run_id, rerun.run_id],
            },
        ),
        Figure(
            key="rerun.bytes_from_blob",
            name="re-run: bytes copied from blob storage (the rest carried inside the share)",
            value=from_blob,
            unit="bytes",
            target=f"= the changed file's {len(changed)} bytes",
            met=from_blob == len(changed),
            baseline=f"carried inside the share {carried} bytes; "
            f"the first run copied {first_from_blob} from blob",
            samples=[from_blob],
            details={"carried_bytes": carried, "first_run_from_blob_bytes": first_from_blob},
        ),
    ]
