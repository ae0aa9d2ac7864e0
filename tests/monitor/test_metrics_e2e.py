"""Metrics end to end: a job that prints JSON lines on the ARM emulator, the monitor reading its stdout
from the file share pass by pass, the series in the registry and on the finished run."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from shared import metrics, monitor
from shared.ingest import ingest_blob
from shared.monitor import run_monitor
from shared.registry import TERMINAL_STATES
from tests.pipeline.conftest import Pipeline

pytestmark = pytest.mark.e2e

# Four epochs, each record written in two halves with a pause between (a monitor pass may read half
# a line), chatter and a malformed line between records, and a last record with no final newline.
METRICS_PY = b"""import json, os, sys, time
print("starting", flush=True)
for epoch in range(1, 5):
    line = json.dumps({"epoch": epoch, "loss": 1.0 / epoch, "accuracy": epoch / 10, "phase": "train"})
    half = len(line) // 2
    sys.stdout.write(line[:half]); sys.stdout.flush()
    time.sleep(0.4)
    sys.stdout.write(line[half:] + "\\n")
    print('{"loss": oops', flush=True)
    print(f"epoch {epoch} done", flush=True)
    time.sleep(float(os.environ.get("EPOCH_SECONDS", "0.6")))
sys.stdout.write('{"epoch": 5, "loss": 0.1, "accuracy": 0.9}'); sys.stdout.flush()
"""
FILES = {"train.py": METRICS_PY}
MANIFEST = {"files": ["train.py"], "script": "train.py", "arguments": "$AZ_BATCHAI_OUTPUT_MODEL"}


def test_monitor_reads_metrics_while_the_job_runs(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = pipeline
    dataset = f"metrics-{uuid.uuid4().hex[:8]}"
    names = p.upload(dataset, FILES, MANIFEST)
    results = [ingest_blob(name, p.services) for name in names]  # the last one submits the job
    run_id = results[0].run_id
    seen_while_running: list[int] = []
    deadline = time.monotonic() + 90
    deferred = False
    while True:
        rec = p.registry.get(run_id, with_files=False)
        if rec.state == "running" and not deferred:
            # A pass past its metrics deadline starts no read: the run waits for the next pass.
            with monkeypatch.context() as patch:
                patch.setattr(monitor, "METRICS_PASS_DEADLINE_SECONDS", -1.0)
                patch.setattr(monitor, "METRICS_MIN_READS_PER_PASS", 0)
                report = run_monitor(p.services)
            assert (report.metrics_read, report.metrics_deferred) == (0, 1)
            assert p.registry.get(run_id, with_files=False).metrics_offset == rec.metrics_offset
            # ... except for the first METRICS_MIN_READS_PER_PASS: a slow pass never starves them all.
            with monkeypatch.context() as patch:
                patch.setattr(monitor, "METRICS_PASS_DEADLINE_SECONDS", -1.0)
                report = run_monitor(p.services)
            assert (report.metrics_read, report.metrics_deferred) == (1, 0)
            deferred = True
        run_monitor(p.services)
        rec = p.registry.get(run_id, with_files=False)
        if rec.state == "running" and rec.metrics:
            seen_while_running.append(int(rec.metrics["loss"]["x"]))
        if rec.state in TERMINAL_STATES:
            break
        assert time.monotonic() < deadline, (rec.state, rec.errors)
        time.sleep(0.25)
    assert rec.state == "succeeded", rec.errors
    assert deferred
    # The curve grew while the job ran: some passes saw only its first epochs.
    assert seen_while_running and min(seen_while_running) < 5, seen_while_running
    assert seen_while_running == sorted(seen_while_running)

    text, _ = p.registry.get_metrics(run_id)
    state = metrics.MetricsState.from_json(text)
    assert set(state.series) == {"loss", "accuracy"}  # "phase" is a string, "oops" malformed
    assert [p[0] for p in state.series["loss"]] == [1, 2, 3, 4, 5]  # each split line parsed once
    assert [p[1] for p in state.series["accuracy"]] == [0.1, 0.2, 0.3, 0.4, 0.9]
    segment = p.services.cloud.compute.get_job(rec.experiment, rec.job_name).job_output_directory_path_segment
    stdout = (p.share_root / segment / "stdouterr" / "stdout.txt").read_bytes()
    assert state.offset == len(stdout)

    # The finished record and its callback carry the final values.
    assert rec.metrics == {"loss": state.latest()["loss"], "accuracy": state.latest()["accuracy"]}
    assert rec.metrics["loss"]["value"] == 0.1 and rec.metrics["loss"]["x"] == 5
    assert rec.metrics_offset == len(stdout)
    full = p.registry.get(run_id)
    assert monitor.summary(full)["metrics"] == rec.metrics
    assert json.loads(json.dumps(monitor.summary(full)))["metrics"]["accuracy"]["value"] == 0.9

    # More passes change nothing (the offset is at the end).
    for _ in range(2):
        run_monitor(p.services)
    assert p.registry.get_metrics(run_id)[0] == text
