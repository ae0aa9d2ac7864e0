"""Resubmitting a sweep end to end, through the API's handlers: its failed trials run again under the
same parent, with the same parameters on the same snapshot, and the parent finishes again."""

from __future__ import annotations

import time
import uuid

import pytest

from shared import runs_api, services
from shared import sweep as sweeps
from shared.api_messages import ApiRequest
from shared.ingest import ingest_blob
from shared.registry import TERMINAL_STATES
from shared.sweep_runs import leaderboard
from tests.pipeline.conftest import Pipeline
from tests.pipeline.test_resubmit_e2e import _resubmit
from tests.sweep.test_sweep_e2e import MANIFEST as SWEEP_MANIFEST
from tests.sweep.test_sweep_e2e import TRAIN_PY as SWEEP_TRAIN_PY
from tests.sweep.test_sweep_e2e import _overlapping_passes

pytestmark = pytest.mark.e2e


def test_resubmitting_a_sweep_reruns_its_failed_trials_and_finishes_again(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep whose best trial failed (a flag on the share stands in for a lost node): resubmitting
    the parent re-runs just that trial with the same parameters on the same snapshot, recorded as a
    re-run; the parent runs again and then names the re-run as its best."""
    p = pipeline
    monkeypatch.setattr(services, "get_services", lambda: p.services)  # what the API's handlers use
    monkeypatch.setattr(runs_api, "_settings", lambda: p.settings)
    dataset = f"resweep-{uuid.uuid4().hex[:8]}"
    flag = p.share_root / "flaky" / dataset / "0.1"
    flag.parent.mkdir(parents=True)
    flag.write_text("lost")
    flaky = (  # the sweep e2e's stand-in trainer, failing while its learning rate's flag is on the share
        b"import os, sys\n"
        b"flag = os.path.join(os.environ['AZ_BATCHAI_INPUT_SAMPLE'], '..', '..', 'flaky', "
        + repr(dataset).encode()
        + b", os.environ['SWEEP_LR'])\n"
        b"if os.path.exists(flag): sys.exit('node lost')\n" + SWEEP_TRAIN_PY
    )
    manifest = dict(
        SWEEP_MANIFEST,
        sweep=dict(
            SWEEP_MANIFEST["sweep"],
            parameters={"lr": {"values": [0.01, 0.1]}, "batch_size": {"values": [32]}},
            max_trials=2,
            max_concurrent_trials=2,
            early_termination={"policy": "none"},
        ),
    )
    names = p.upload(dataset, {"train.py": flaky, "data.txt": b"1 2 3 4 5\n"}, manifest)
    results = [ingest_blob(name, p.services) for name in names]
    parent_id = results[0].run_id
    first, second = (sweeps.trial_id(parent_id, i) for i in range(2))

    def finish() -> object:
        deadline = time.monotonic() + 60
        while (rec := p.registry.get(parent_id, with_files=False)).state not in TERMINAL_STATES:
            assert time.monotonic() < deadline, leaderboard(p.registry, rec)
            _overlapping_passes(p)
            time.sleep(0.2)
        return rec

    parent = finish()
    assert parent.state == "succeeded" and parent.sweep["best"]["trial"] == first, parent.sweep
    assert p.registry.get(second, with_files=False).state == "failed"

    # Refused: a trial (points at its sweep), overrides (the re-run must match the trial it replaces).
    trial = _resubmit(second)
    assert trial.status == 409 and trial.body["error"]["code"] == "SweepResubmitUnsupported"
    assert parent_id in trial.body["error"]["message"]
    changed = _resubmit(parent_id, {"overrides": {"arguments": "--lr 1"}})
    assert changed.status == 409 and changed.body["error"]["code"] == "SweepOverridesUnsupported"

    flag.unlink()  # the node is back
    answer = _resubmit(parent_id, key="sweep-again-1")
    assert answer.status == 202, answer.body
    assert answer.body["id"] == parent_id and answer.body["state"] == "running"
    rerun_id = f"{second}-r1"
    assert answer.body["sweep"]["attempts"] == {"1": 1}
    assert answer.body["sweep"]["resubmits"][0]["reran"] == {"1": second}
    assert answer.body["sweep"]["resubmits"][0]["best_before"]["trial"] == first
    replay = _resubmit(parent_id, key="sweep-again-1")
    assert replay.status == 202 and replay.body["id"] == parent_id  # Idempotency-Key honoured
    busy = _resubmit(parent_id)
    assert busy.status == 409 and busy.body["error"]["code"] == "RunNotFinished", busy.body

    parent = finish()
    assert parent.state == "succeeded", parent.errors
    rerun = p.registry.get(rerun_id)
    assert rerun.state == "succeeded", rerun.errors
    assert rerun.sweep == {
        "role": "trial",
        "index": 1,
        "parameters": {"lr": 0.1, "batch_size": 32},
        "attempt": 1,
        "rerun_of": second,
    }
    assert rerun.snapshot == parent.snapshot  # the same snapshot, nothing copied
    assert not (p.share_root / "_snapshots" / rerun_id).exists()
    assert (rerun.stdout_tail or "").count("starting") == 1
    # The leaderboard counts the re-run (lr 0.1 has the lower loss), and the parent names it best.
    board = leaderboard(p.registry, parent)
    assert [(r["id"], r["state"], r["attempt"]) for r in board] == [
        (rerun_id, "succeeded", 1),
        (first, "succeeded", 0),
    ]
    assert parent.sweep["best"]["trial"] == rerun_id
    assert parent.sweep["best"]["metric"]["value"] == board[0]["metric"] < board[1]["metric"]
    got = runs_api.handle("runs/{id}", ApiRequest.build("GET", route_params={"id": parent_id}))
    assert got.body["leaderboard"] == board
    # Every attempt is recorded under the parent; the first one's record is unchanged.
    listed = runs_api.handle("runs", ApiRequest.build("GET", params={"parent": parent_id}))
    assert sorted(r["id"] for r in listed.body["runs"]) == sorted([first, second, rerun_id])
    assert p.registry.get(second, with_files=False).state == "failed"
    # Nothing failed any more: nothing to resubmit; more passes start nothing.
    nothing = _resubmit(parent_id)
    assert nothing.status == 409 and nothing.body["error"]["code"] == "NothingToResubmit", nothing.body
    _overlapping_passes(p)
    assert len(list(p.registry.iter_runs(dataset=dataset))) == 4
