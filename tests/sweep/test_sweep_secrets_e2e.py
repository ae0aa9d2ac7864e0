"""A sweep started over HTTP with inline secret values: the registry never keeps the values, so every
trial starts while the request holds them, and the sweep goes on after SECRETS_HELD_SECONDS (its
bookkeeping needs no secret); a sweep whose trials would start later is refused before anything is
made."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from shared import runs_api, services, submission
from shared.api_messages import ApiRequest
from shared.registry import TERMINAL_STATES
from shared.run_starts import start_run
from tests.pipeline.conftest import Pipeline
from tests.sweep.test_sweep_e2e import MANIFEST, TRAIN_PY, _overlapping_passes

pytestmark = pytest.mark.e2e

SECRET = "sweep-s3cret-never-stored-41d9"
CHECKS_SECRET = b'import os\nassert os.environ["API_TOKEN"] == ' + repr(SECRET).encode() + b"\n" + TRAIN_PY


def _spec(concurrent: int) -> dict:
    sweep = dict(
        MANIFEST["sweep"],
        parameters={"lr": {"values": [0.01, 0.1, 0.3]}, "batch_size": {"values": [32]}},
        max_trials=3,
        max_concurrent_trials=concurrent,
        early_termination={"policy": "none"},
    )
    return {**MANIFEST, "sweep": sweep, "secret_environment_variables": {"API_TOKEN": SECRET}}


def test_an_http_sweep_with_inline_secrets_runs_past_the_hold_and_a_staggered_one_is_refused(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = pipeline
    monkeypatch.setattr(services, "get_services", lambda: p.services)  # what the API's handlers use
    monkeypatch.setattr(runs_api, "_settings", lambda: p.settings)
    # The request's hold on the secrets is over as soon as it ends (default 60 s; the same code path).
    monkeypatch.setattr(submission, "SECRETS_HELD_SECONDS", 0.0)
    ds = f"sweepsec-{uuid.uuid4().hex[:8]}"
    p.upload(ds, {"train.py": CHECKS_SECRET, "data.txt": b"1 2 3 4 5\n"})

    # Three trials, two at a time: the third would start after the request: refused, nothing made.
    body = {"dataset": ds, "stage_from_prefix": ds, "spec": _spec(concurrent=2)}
    refused = runs_api.handle(
        "runs",
        ApiRequest.build(
            "POST",
            "http://localhost/api/runs",
            headers={"content-type": "application/json"},
            body=json.dumps(body).encode(),
        ),
    )
    assert refused.status == 400, refused.body
    detail = refused.body["error"]["details"][0]
    assert detail["field"] == "spec.secret_environment_variables"
    assert "Key Vault" in detail["message"] and "max_concurrent_trials to 3" in detail["message"]
    assert SECRET not in json.dumps(refused.body)
    assert list(p.registry.iter_runs(dataset=ds)) == []

    # All three at once: every trial's job gets the secret from this request.
    parent = start_run(ds, _spec(concurrent=3), stage_from_prefix=ds, svc=p.services)
    assert parent.state == "running", parent.errors
    deadline = time.monotonic() + 60
    while (parent := p.registry.get(parent.run_id, with_files=False)).state not in TERMINAL_STATES:
        assert time.monotonic() < deadline
        _overlapping_passes(p)  # passes after the hold: the sweep goes on without the secret
        time.sleep(0.2)
    assert parent.state == "succeeded", parent.errors
    trials = [r for r in p.registry.iter_runs(dataset=ds) if r.parent_id == parent.run_id]
    assert len(trials) == 3 and all(t.state == "succeeded" for t in trials), [
        (t.state, t.errors) for t in trials
    ]
    assert parent.sweep["best"]["parameters"]["lr"] == 0.1
    for rec in [parent, *(p.registry.get(t.run_id) for t in trials)]:
        assert SECRET not in json.dumps(rec.to_dict(), default=str)
