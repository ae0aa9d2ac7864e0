"""Data-parallel scaling of the MNIST sample: training samples per second with 2 ranks
(DistributedDataParallel, gloo on the CPU, started as Batch AI and Azure ML start them: RANK,
WORLD_SIZE, MASTER_ADDR/MASTER_PORT) vs 1 process, on the same generated data for the same epochs,
measured side by side in one run, alternating.

The cores are split, not added: the single process trains with every core of this machine as threads,
each rank with its share of them, so the ratio says what data parallelism buys on one machine (on 2
cores expect well under 2x: gradients are all-reduced every step). The figure is there to catch a
regression and to compare with a GPU machine (bench/gpu_check.sh). Samples per second are the
script's own (its `samples_per_sec` per epoch: every rank's samples over the epoch's training time),
the median over epochs and repeats."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from bench.common import BenchOptions, Figure, median

SCRIPT = Path(__file__).resolve().parents[1] / "samples" / "mnist" / "ConvNet_MNIST.py"
RANKS = 2


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(data: Path, out: Path, epochs: int, ranks: int, threads: int) -> list[float]:
    """Train with `ranks` processes; the per-epoch samples/s rank 0 wrote to metrics.json."""
    shutil.rmtree(out, ignore_errors=True)
    port = _free_port()
    procs = []
    for rank in range(ranks):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_SIZE")}
        if ranks > 1:
            env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(ranks), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port))  # fmt: skip
        cmd = [sys.executable, str(SCRIPT), str(data), str(out), "--epochs", str(epochs), "--seed", "1",
               "--threads", str(threads), "--device", "cpu"]  # fmt: skip
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outputs = [p.communicate(timeout=1800)[0] for p in procs]
    failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        raise RuntimeError(f"{ranks} rank(s): {failed} failed:\n" + "\n".join(o[-2000:] for o in outputs))
    history = json.loads((out / "metrics.json").read_text())["history"]
    return [float(h["samples_per_sec"]) for h in history]


def run(options: BenchOptions) -> list[Figure]:
    from samples.mnist import make_dataset

    work = Path(options.work_dir) / "ddp"
    shutil.rmtree(work, ignore_errors=True)
    data = work / "data"
    make_dataset.main([str(data), "--train", str(options.demo_train), "--test", str(options.demo_test)])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_rank = max(1, cores // RANKS)
    single: list[float] = []
    parallel: list[float] = []
    try:
        for _ in range(max(1, options.demo_repeats)):
            single += train(data, work / "single", options.demo_epochs, 1, cores)
            parallel += train(data, work / "ddp", options.demo_epochs, RANKS, per_rank)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = median(parallel) / median(single)
    sizes = f"{options.demo_train} samples, {options.demo_epochs} epoch(s)"
    return [
        Figure(
            key="ddp.scaling_ratio",
            name=f"MNIST sample: samples/s with {RANKS} ranks / 1 process ({sizes}, {cores} cores)",
            value=round(ratio, 2),
            unit="x",
            target="(reported; < 2x on 2 cores)",
            met=None,
            baseline=f"1 process {median(single):.0f} samples/s ({cores} threads); {RANKS} ranks "
            f"{median(parallel):.0f} samples/s ({per_rank} thread(s) each)",
            runs=max(1, options.demo_repeats),
            samples=[round(x, 1) for x in parallel],
            details={"single_samples_per_sec": single, "ddp_samples_per_sec": parallel, "cores": cores},
        )
    ]
