"""Sweeps end to end on the local stack: a dataset drop whose run.json has a `sweep` section becomes a
parent run of trial runs on the parent's one snapshot; the monitor starts trials up to the concurrency
limit, median stopping stops the deliberately bad learning rate, and the parent names the best trial.
Triggers and monitor passes are replayed and overlapped throughout: no trial starts twice."""

from __future__ import annotations

import concurrent.futures
import io
import time
import uuid

import pytest

from cli.watch import watch_run
from shared import monitor, runs_api, services
from shared import sweep as sweeps
from shared.api_messages import ApiRequest
from shared.cancellation import cancel_run
from shared.ingest import ingest_blob
from shared.monitor import run_monitor
from shared.registry import TERMINAL_STATES
from shared.sweep_runs import leaderboard
from tests.pipeline.conftest import Pipeline

pytestmark = pytest.mark.e2e

# A stand-in trainer: its loss depends on the learning rate and batch size it is given (as an argument
# and as SWEEP_* variables, which must agree); lr 5.0 diverges (and is slow, so the policy sees it run).
TRAIN_PY = b"""import json, math, os, sys, time
args = sys.argv[1:]
lr = float(args[args.index("--lr") + 1]); bs = int(args[args.index("--batch-size") + 1])
assert float(os.environ["SWEEP_LR"]) == lr and int(os.environ["SWEEP_BATCH_SIZE"]) == bs
rows = len(open(os.path.join(os.environ["AZ_BATCHAI_INPUT_SAMPLE"], "data.txt")).read().split())
print("starting", flush=True)
for epoch in range(1, 5):
    loss = 10.0 if lr > 1 else abs(math.log10(lr) + 1.2) + bs / 1000 + 1.0 / epoch
    print(json.dumps({"epoch": epoch, "loss": loss, "rows": rows}), flush=True)
    time.sleep(1.0 if lr > 1 else 0.2)
"""
FILES = {"train.py": TRAIN_PY, "data.txt": b"1 2 3 4 5\n"}
MANIFEST = {
    "toolkit": "pytorch",
    "image": None,
    "script": "train.py",
    "arguments": "--lr ${{search_space.lr}} --batch-size ${{search_space.batch_size}}",
    "files": ["train.py", "data.txt"],
    "sweep": {
        "parameters": {"lr": {"values": [0.01, 0.1, 5.0]}, "batch_size": {"values": [32, 64]}},
        "sampling": "grid",
        "max_trials": 6,
        "max_concurrent_trials": 3,
        "primary_metric": "loss",
        "goal": "minimize",
        "early_termination": {"policy": "median_stopping", "delay_evaluation": 1},
    },
}


def _overlapping_passes(p: Pipeline) -> None:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(run_monitor, p.services) for _ in range(2)]:
            future.result()


def test_a_sweep_trains_its_trials_stops_the_bad_one_and_names_the_best(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = pipeline
    dataset = f"sweep-{uuid.uuid4().hex[:8]}"
    names = p.upload(dataset, FILES, MANIFEST)
    results = [ingest_blob(name, p.services) for name in names]
    parent_id = results[0].run_id
    for name in names:  # replayed triggers
        ingest_blob(name, p.services)
    parent = p.registry.get(parent_id, with_files=False)
    assert parent.state == "running", parent.errors
    assert parent.job_name is None  # the parent has no job of its own
    deadline = time.monotonic() + 150
    max_active = 0
    while parent.state not in TERMINAL_STATES:
        assert time.monotonic() < deadline, [(r["id"], r["state"]) for r in leaderboard(p.registry, parent)]
        _overlapping_passes(p)
        trials = [r for r in p.registry.iter_runs(dataset=dataset) if r.parent_id == parent_id]
        max_active = max(max_active, sum(1 for r in trials if r.state not in TERMINAL_STATES))
        parent = p.registry.get(parent_id, with_files=False)
        time.sleep(0.2)
    assert parent.state == "succeeded", parent.errors

    # Exactly the six derived trials, each an ordinary run with its own job, never more than three at once.
    runs = list(p.registry.iter_runs(dataset=dataset))
    trials = sorted((r for r in runs if r.parent_id == parent_id), key=lambda r: r.run_id)
    assert len(runs) == 7
    assert [t.run_id for t in trials] == [sweeps.trial_id(parent_id, i) for i in range(6)]
    assert max_active <= 3
    assert len({t.job_name for t in trials}) == 6
    # Every trial read the parent's snapshot: no data copied per trial.
    assert {t.snapshot for t in trials} == {parent.snapshot}
    assert not any((p.share_root / "_snapshots" / t.run_id).exists() for t in trials)
    for t in trials:
        assert t.metrics is not None and t.metrics["rows"]["value"] == 5
        if t.state != "succeeded":
            continue  # a stopped trial's job is deleted
        stdout = p.registry.get(t.run_id).stdout_tail or ""
        assert stdout.count("starting") == 1  # each trial's job ran once

    # The bad learning rate was stopped early by median stopping; the others succeeded.
    bad = [t for t in trials if t.sweep["parameters"]["lr"] == 5.0]
    assert all(t.state == "cancelled" for t in bad), [(t.run_id, t.state, t.errors) for t in bad]
    assert all(t.errors[-1]["code"] == "early_terminated" for t in bad)
    assert "median" in bad[0].errors[-1]["message"]
    # (Median stopping may stop a mediocre good trial too: every trial either succeeded or was stopped.)
    for t in trials:
        assert t.state == "succeeded" or t.errors[-1]["code"] == "early_terminated", (t.run_id, t.errors)
    assert trials[2].state == "succeeded"

    # The best trial is the one with the best final loss: lr 0.1, batch size 32.
    best = parent.sweep["best"]
    assert best["trial"] == sweeps.trial_id(parent_id, 2)
    assert best["parameters"] == {"lr": 0.1, "batch_size": 32}
    finals = {r["id"]: r["metric"] for r in leaderboard(p.registry, parent) if r["state"] == "succeeded"}
    assert best["metric"] == {"name": "loss", "value": min(finals.values())}
    board = leaderboard(p.registry, parent)
    assert board[0]["id"] == best["trial"]
    assert sum(r["early_terminated"] for r in board) >= 2

    # The API: the parent lists its leaderboard; ?parent= lists its trials.
    monkeypatch.setattr(services, "get_services", lambda: p.services)  # what the API's handlers use
    got = runs_api.handle("runs/{id}", ApiRequest.build("GET", route_params={"id": parent_id}))
    assert got.status == 200, got.body
    assert got.body["leaderboard"] == board and got.body["sweep"]["best"] == best
    listed = runs_api.handle("runs", ApiRequest.build("GET", params={"parent": parent_id}))
    assert listed.status == 200, listed.body
    assert sorted(r["id"] for r in listed.body["runs"]) == [t.run_id for t in trials]
    assert all(r["parent_id"] == parent_id for r in listed.body["runs"])
    trial = runs_api.handle("runs/{id}", ApiRequest.build("GET", route_params={"id": trials[2].run_id}))
    assert trial.status == 200 and "leaderboard" not in trial.body

    # `cli watch` on the parent prints its trials and the best one (the API's handlers answer it).
    class HandlerApi:
        def get_run(self, run_id: str) -> dict:
            return runs_api.handle("runs/{id}", ApiRequest.build("GET", route_params={"id": run_id})).body

        def clusters(self) -> list:
            return []

    out = io.StringIO()
    assert watch_run(HandlerApi(), parent_id, out=out, interval=0)["state"] == "succeeded"  # type: ignore[arg-type]
    shown = out.getvalue()
    assert f"best: {best['trial']} batch_size=32 lr=0.1  loss" in shown, shown
    assert shown.count("(stopped early)") == sum(r["early_terminated"] for r in board), shown

    # The parent's callback summary carries the result and the leaderboard; trials have no callback.
    carried = monitor.summary(p.registry.get(parent_id), p.registry)
    assert carried["sweep"]["best"] == best and carried["leaderboard"] == board
    assert all(t.callback_url is None and t.spec["callback_url"] is None for t in trials)

    # More passes and replays change nothing.
    for name in names:
        ingest_blob(name, p.services)
    _overlapping_passes(p)
    assert len(list(p.registry.iter_runs(dataset=dataset))) == 7
    assert p.registry.get(parent_id, with_files=False).sweep == parent.sweep


@pytest.mark.parametrize("backend", ["pipeline", "azureml_pipeline"])  # Batch AI, Azure ML
def test_cancelling_a_sweep_cancels_its_trials(backend: str, request: pytest.FixtureRequest) -> None:
    p: Pipeline = request.getfixturevalue(backend)
    dataset = f"sweepc-{uuid.uuid4().hex[:8]}"
    slow = dict(MANIFEST, sweep=dict(MANIFEST["sweep"], early_termination={"policy": "none"}))
    names = p.upload(dataset, {**FILES, "train.py": TRAIN_PY.replace(b"0.2)", b"5.0)")}, slow)
    parent_id = next(r.run_id for r in [ingest_blob(name, p.services) for name in names])
    started = [r for r in p.registry.iter_runs(dataset=dataset) if r.parent_id == parent_id]
    assert len(started) == 3
    # The sweep's cluster has a node for each of its 3 concurrent trials (the spec asks for one node,
    # so without that they would run one at a time), and all 3 run at once.
    parent = p.registry.get(parent_id, with_files=False)
    scale = p.services.cloud.list_clusters()[parent.cluster].scale_settings
    assert scale["auto_scale"]["minimum_node_count"] == 0, scale
    assert scale["auto_scale"]["maximum_node_count"] == 3, scale
    assert {p.registry.get(t.run_id, with_files=False).cluster for t in started} == {parent.cluster}
    deadline = time.monotonic() + 30
    while (states := [p.registry.get(t.run_id, with_files=False).state for t in started]) != ["running"] * 3:
        assert time.monotonic() < deadline, states
        run_monitor(p.services)
        time.sleep(0.2)
    cancel_run(parent_id, svc=p.services)
    assert p.registry.get(parent_id, with_files=False).state == "cancelled"
    trials = [r for r in p.registry.iter_runs(dataset=dataset) if r.parent_id == parent_id]
    assert len(trials) == 3 and all(t.state == "cancelled" for t in trials), [
        (t.run_id, t.state) for t in trials
    ]
    _overlapping_passes(p)  # a pass starts no trial for a cancelled sweep
    assert len([r for r in p.registry.iter_runs(dataset=dataset) if r.parent_id == parent_id]) == 3
