"""Staging a large blob into the file share vs downloading it straight to disk.

Staging (`shared.staging.stage_blob`) asks the File service to copy the blob server side and polls
the copy; the baseline is what a function that did *not* copy server side would at best do: download
the blob to local disk with azure-storage-blob's defaults. Both run in a child interpreter of their
own (standing in for the Functions host process), so their peak RSS is theirs alone: the child reports the RSS
it had when ready and its peak (`VmHWM`), and this process samples the child's and the
Files emulator's RSS with psutil while it works. The blob is uploaded the way the CLI uploads
(Content-MD5 set), so staging verifies the MD5 the copy carried over instead of reading the file back.

    python -m bench.staging stage|download CONN BLOB DEST   (the child; prints one JSON line)
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (
    PY,
    BenchOptions,
    Figure,
    check_disk,
    local_stack,
    median,
    mib,
    repo_env,
    upload_varied_blob,
)
from infra.local.stack import REPO_ROOT

CONTAINER = "benchstaging"  # not training-data: a function app watching that would ingest it
SHARE = "batchaiquickstart"
BLOB = "benchstage/big.bin"
TARGET_RATIO = 0.8
TARGET_RSS_MIB = 64
SAMPLE_INTERVAL = 0.02


# --- the child ---------------------------------------------------------------------------------------
def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def peak_rss(pid: int | str = "self") -> int:
    """The process's peak RSS (VmHWM: kept per address space, so reset by exec, unlike `ru_maxrss`,
    which on Linux carries the forking parent's peak into the child)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/<pid>/status (Linux only)")


def child(argv: list[str]) -> int:
    """Stage or download one blob and print {seconds, bytes, ready_rss, peak_rss}."""
    action, conn, blob_name, dest = argv
    from azure.storage.blob import ContainerClient

    container = ContainerClient.from_connection_string(conn, CONTAINER)
    if action == "stage":
        from azure.storage.fileshare import ShareClient

        from shared.staging import stage_blob

        share = ShareClient.from_connection_string(conn, SHARE)
        ready = _rss()
        started = time.perf_counter()
        # The key of the stack's account, from its connection string (random per stack).
        key = dict(part.split("=", 1) for part in conn.split(";") if "=" in part)["AccountKey"]
        staged = stage_blob(container, blob_name, share, dest_path=dest, copy_timeout=3600, account_key=key)
        seconds = time.perf_counter() - started
        size = staged.size
    elif action == "download":
        blob = container.get_blob_client(blob_name)
        ready = _rss()
        started = time.perf_counter()
        with open(dest, "wb") as handle:
            size = blob.download_blob().readinto(handle)
        seconds = time.perf_counter() - started
    else:
        print(f"unknown action {action!r}: stage or download", file=sys.stderr)
        return 2
    peak = peak_rss()
    print(json.dumps({"seconds": seconds, "bytes": size, "ready_rss": ready, "peak_rss": peak}), flush=True)
    return 0


# --- the parent --------------------------------------------------------------------------------------
class RssSampler(threading.Thread):
    """Peak RSS of some processes, sampled every SAMPLE_INTERVAL s until stopped."""

    def __init__(self, pids: dict[str, int]) -> None:
        import psutil

        super().__init__(daemon=True)
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.first: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.done = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.done.is_set():
            for name, proc in self.procs.items():
                with contextlib.suppress(psutil.Error):
                    rss = int(proc.memory_info().rss)
                    self.first.setdefault(name, rss)
                    self.peak[name] = max(self.peak.get(name, 0), rss)
            time.sleep(SAMPLE_INTERVAL)

    def stop(self) -> None:
        self.done.set()
        self.join()


def run_child(action: str, conn: str, dest: str, watch: dict[str, int]) -> dict[str, Any]:
    proc = subprocess.Popen(
        [PY, "-m", "bench.staging", action, conn, BLOB, dest],
        cwd=REPO_ROOT,
        env=repo_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sampler = RssSampler({"child": proc.pid, **watch})
    sampler.start()
    try:
        out, err = proc.communicate(timeout=3600)
    finally:
        sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{action} child failed ({proc.returncode}):\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["sampled_peak"] = sampler.peak
    result["sampled_first"] = sampler.first
    return result


def make_blob(stack: Any, size: int, work: Path) -> None:
    """The benchmark's blob of ``size`` varied bytes, in its own container."""
    from azure.storage.blob import BlobServiceClient

    container = BlobServiceClient.from_connection_string(stack.connection_string).get_container_client(
        CONTAINER
    )
    with contextlib.suppress(Exception):
        container.create_container()
    upload_varied_blob(container, BLOB, size, work)


def run(options: BenchOptions) -> list[Figure]:
    size = options.blob_size
    work = Path(options.work_dir) / "staging"
    work.mkdir(parents=True, exist_ok=True)
    check_disk(work, size, copies=3, doing="staging")  # Azurite's copy, the share's copy, the downloaded copy
    repeats = max(1, options.staging_repeats)
    stage_runs: list[dict[str, Any]] = []
    download_runs: list[dict[str, Any]] = []
    try:
        with local_stack(work / "stack", ["azurite", "files"], shared=options.shared_stack) as stack:
            make_blob(stack, size, work)
            files_pid = stack.processes["files"].pid
            share_dir = stack.files_root / "devstoreaccount1" / SHARE
            for i in range(repeats):
                target = work / "downloaded.bin"
                download_runs.append(run_child("download", stack.connection_string, str(target), {}))
                target.unlink()
                dest = f"benchstage/staged-{i}.bin"
                stage_runs.append(
                    run_child("stage", stack.connection_string, dest, {"files_emulator": files_pid})
                )
                (share_dir / dest).unlink()  # the emulator keeps share bytes as plain files
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return figures(size, stage_runs, download_runs)


def figures(size: int, stage_runs: list[dict[str, Any]], download_runs: list[dict[str, Any]]) -> list[Figure]:
    stage_tp = [r["bytes"] / r["seconds"] for r in stage_runs]
    down_tp = [r["bytes"] / r["seconds"] for r in download_runs]
    ratio = median(stage_tp) / median(down_tp)
    growth = [max(r["peak_rss"], r["sampled_peak"].get("child", 0)) - r["ready_rss"] for r in stage_runs]
    down_growth = [
        max(r["peak_rss"], r["sampled_peak"].get("child", 0)) - r["ready_rss"] for r in download_runs
    ]
    emu_growth = [
        r["sampled_peak"].get("files_emulator", 0) - r["sampled_first"].get("files_emulator", 0)
        for r in stage_runs
    ]
    emu_peak = [r["sampled_peak"].get("files_emulator", 0) for r in stage_runs]
    label = f"{mib(size):.0f} MiB" if size < 1024**3 else f"{size / 1024**3:g} GiB"
    return [
        Figure(
            key="staging.throughput_ratio",
            name=f"staging {label} blob -> share: throughput / download-to-disk throughput",
            value=round(ratio, 3),
            unit="x",
            target=f">= {TARGET_RATIO}x",
            met=ratio >= TARGET_RATIO,
            baseline=f"download {mib(median(down_tp)):.0f} MiB/s; staging {mib(median(stage_tp)):.0f} MiB/s",
            runs=len(stage_runs),
            samples=[round(s / d, 3) for s, d in zip(stage_tp, down_tp, strict=True)],
            details={
                "blob_bytes": size,
                "staging_seconds": [round(r["seconds"], 3) for r in stage_runs],
                "download_seconds": [round(r["seconds"], 3) for r in download_runs],
            },
        ),
        Figure(
            key="staging.rss_growth_mib",
            name="  staging process peak RSS growth",
            value=round(mib(median(growth)), 1),
            unit="MiB",
            target=f"<= {TARGET_RSS_MIB} MiB",
            met=mib(median(growth)) <= TARGET_RSS_MIB and mib(max(growth)) <= TARGET_RSS_MIB,
            baseline=f"download-to-disk process grows {mib(median(down_growth)):.1f} MiB; "
            f"max over runs {mib(max(growth)):.1f} MiB",
            runs=len(stage_runs),
            samples=[round(mib(g), 1) for g in growth],
            details={"ready_rss_mib": [round(mib(r["ready_rss"]), 1) for r in stage_runs]},
        ),
        Figure(
            key="staging.files_emulator_rss_growth_mib",
            name="  Files emulator RSS growth while staging",
            value=round(mib(median(emu_growth)), 1),
            unit="MiB",
            target="(reported)",
            met=None,
            baseline=f"its peak RSS {mib(median(emu_peak)):.0f} MiB",
            runs=len(stage_runs),
            samples=[round(mib(g), 1) for g in emu_growth],
        ),
    ]


if __name__ == "__main__":
    sys.exit(child(sys.argv[1:]))
