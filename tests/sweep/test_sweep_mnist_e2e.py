"""A sweep end to end: a dataset drop whose run.json sweeps the MNIST sample's learning rate and batch
size (tiny data, 3 short epochs, so seconds per trial). The parent succeeds, the best trial is the one
with the best final loss, median stopping stops the deliberately bad learning rate, and replayed
triggers and overlapping monitor passes start no trial twice."""

from __future__ import annotations

import concurrent.futures
import json
import time
import uuid
from pathlib import Path

import pytest

from samples.mnist import make_dataset
from shared import sweep as sweeps
from shared.ingest import ingest_blob
from shared.monitor import run_monitor
from shared.registry import TERMINAL_STATES
from shared.sweep_runs import leaderboard
from tests.pipeline.conftest import Pipeline

pytestmark = pytest.mark.e2e

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "mnist"


def test_mnist_sweep_over_learning_rate_and_batch_size(pipeline: Pipeline, tmp_path: Path) -> None:
    p = pipeline
    make_dataset.main([str(tmp_path), "--train", "600", "--test", "100"])
    manifest = json.loads((SAMPLE / "run.json").read_text())
    manifest["arguments"] = (
        "$AZ_BATCHAI_INPUT_SAMPLE $AZ_BATCHAI_OUTPUT_MODEL --epochs 3 --threads 1 --seed 1 "
        "--lr ${{search_space.lr}} --batch-size ${{search_space.batch_size}}"
    )
    manifest["sweep"] = {
        # lr 3.0 diverges (Adam): its first epoch's loss is in the hundreds.
        "parameters": {"lr": {"values": [0.01, 3.0]}, "batch_size": {"values": [32, 64]}},
        "sampling": "grid",
        "max_trials": 4,
        "max_concurrent_trials": 2,
        "primary_metric": "loss",
        "goal": "minimize",
        "early_termination": {"policy": "median_stopping", "delay_evaluation": 1},
    }
    files = {"ConvNet_MNIST.py": (SAMPLE / "ConvNet_MNIST.py").read_bytes()}
    for name in (make_dataset.TRAIN_FILE, make_dataset.TEST_FILE):
        files[name] = (tmp_path / name).read_bytes()
    dataset = f"mnist-sweep-{uuid.uuid4().hex[:8]}"
    names = p.upload(dataset, files, manifest)
    parent_id = [ingest_blob(name, p.services) for name in names][-1].run_id

    deadline = time.monotonic() + 240
    parent = p.registry.get(parent_id, with_files=False)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        while parent.state not in TERMINAL_STATES:
            assert time.monotonic() < deadline, [
                (r["id"], r["state"]) for r in leaderboard(p.registry, parent)
            ]
            # Replayed triggers and two overlapping monitor passes, every round.
            jobs = [pool.submit(run_monitor, p.services) for _ in range(2)]
            jobs.append(pool.submit(ingest_blob, names[-1], p.services))
            for job in jobs:
                job.result()
            parent = p.registry.get(parent_id, with_files=False)
            time.sleep(0.2)
    assert parent.state == "succeeded", parent.errors

    runs = list(p.registry.iter_runs(dataset=dataset))
    trials = sorted((r for r in runs if r.parent_id == parent_id), key=lambda r: r.run_id)
    assert len(runs) == 5  # no trial (and no second parent) started twice
    assert [t.run_id for t in trials] == [sweeps.trial_id(parent_id, i) for i in range(4)]

    board = leaderboard(p.registry, parent)
    stopped = [r for r in board if r["early_terminated"]]
    # The bad learning rate is stopped by median stopping (a good trial may be too, when it trails
    # the one other trial that reached its step); every trial either succeeded or was stopped.
    assert any(r["parameters"]["lr"] == 3.0 for r in stopped), board
    assert not any(r["state"] == "succeeded" for r in board if r["parameters"]["lr"] == 3.0), board
    assert all(r["state"] == "succeeded" or r["early_terminated"] for r in board), board
    assert any("median" in e["message"] for t in trials for e in t.errors if e["code"] == "early_terminated")
    best = parent.sweep["best"]
    finals = {r["id"]: r["metric"] for r in board if r["state"] == "succeeded"}
    assert best["trial"] == min(finals, key=lambda k: finals[k])
    assert best["metric"] == {"name": "loss", "value": finals[best["trial"]]}
    assert best["parameters"]["lr"] == 0.01
