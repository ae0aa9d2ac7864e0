"""Resubmit end to end: POST /api/runs/{id}/resubmit starts a new run with the same spec (and
overrides) on the same snapshot, honours Idempotency-Key, and answers 409 once cleanup deleted the
snapshot."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from shared import runs_api, services
from shared.api_messages import ApiRequest
from shared.cleanup import delete_directory_tree
from shared.ingest import ingest_blob
from shared.monitor import run_monitor
from shared.registry import TERMINAL_STATES

from .conftest import Pipeline

pytestmark = pytest.mark.e2e

TRAIN_PY = b"""import os, sys
print("rows", len(open(os.path.join(os.environ["AZ_BATCHAI_INPUT_SAMPLE"], "data.txt")).read().split()))
print("args", sys.argv[1:], flush=True)
"""
MANIFEST = {
    "toolkit": "pytorch",
    "image": None,
    "script": "train.py",
    "arguments": "--first",
    "files": ["train.py", "data.txt"],
}


def _finish(p: Pipeline, run_id: str) -> None:
    deadline = time.monotonic() + 60
    while p.registry.get(run_id, with_files=False).state not in TERMINAL_STATES:
        assert time.monotonic() < deadline
        run_monitor(p.services)
        time.sleep(0.2)


def _resubmit(run_id: str, body: dict | None = None, key: str | None = None) -> object:
    headers = {"content-type": "application/json"}
    if key:
        headers["idempotency-key"] = key
    return runs_api.handle(
        "runs/{id}/resubmit",
        ApiRequest.build(
            "POST",
            "http://localhost/api/runs/x/resubmit",
            route_params={"id": run_id},
            headers=headers,
            body=json.dumps(body).encode() if body is not None else b"",
        ),
    )


def test_resubmit_reuses_the_snapshot_with_overrides(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = pipeline
    monkeypatch.setattr(services, "get_services", lambda: p.services)  # what the API's handlers use
    monkeypatch.setattr(runs_api, "_settings", lambda: p.settings)
    dataset = f"resub-{uuid.uuid4().hex[:8]}"
    names = p.upload(dataset, {"train.py": TRAIN_PY, "data.txt": b"1 2 3\n"}, MANIFEST)
    first = [ingest_blob(name, p.services) for name in names][-1].run_id
    _finish(p, first)
    source = p.registry.get(first)
    assert source.state == "succeeded", source.errors

    answer = _resubmit(first, {"overrides": {"arguments": "--second"}}, key="again-1")
    assert answer.status == 202, answer.body
    new_id = answer.body["id"]
    assert new_id != first and answer.headers["Location"].endswith(new_id)
    replay = _resubmit(first, {"overrides": {"arguments": "--second"}}, key="again-1")
    assert replay.status == 202 and replay.body["id"] == new_id  # Idempotency-Key honoured
    _finish(p, new_id)
    again = p.registry.get(new_id)
    assert again.state == "succeeded", again.errors
    assert again.spec["arguments"] == "--second" and again.spec["script"] == "train.py"
    assert again.snapshot == source.snapshot  # the same snapshot, nothing copied
    assert not (p.share_root / "_snapshots" / new_id).exists()
    assert "rows 3" in (again.stdout_tail or "") and "--second" in (again.stdout_tail or "")
    assert len(list(p.registry.iter_runs(dataset=dataset))) == 2

    # Bad overrides name the field; an unknown run is 404; an active run is refused.
    bad = _resubmit(first, {"overrides": {"node_count": 0}})
    assert bad.status == 400 and bad.body["error"]["details"][0]["field"] == "spec.node_count"
    assert _resubmit("no-such-run").status == 404

    # Once cleanup deleted the snapshot: 409 saying so, and no run made.
    delete_directory_tree(p.services.share, source.snapshot)
    gone = _resubmit(first)
    assert gone.status == 409 and gone.body["error"]["code"] == "SnapshotCleanedUp", gone.body
    assert "cleanup" in gone.body["error"]["message"]
    assert len(list(p.registry.iter_runs(dataset=dataset))) == 2
