"""Many apps starting runs on one folder at once. Thirty concurrent `POST /api/runs`
staging the same folder, each with its own Idempotency-Key, all get their own run (never a 5xx, never
two runs copying to one file: each run has its own snapshot); thirty with one shared key get exactly
one run between them."""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
import uuid
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError

from tests.api.stackapp import TRAIN_PY, TRAIN_SPEC, Api

pytestmark = pytest.mark.e2e

FILES = {"train.py": TRAIN_PY, "data.txt": b"1 2 3\n", "more/part-0.txt": b"4 5 6\n"}
CONCURRENT = 30


def upload_folder(api: Api, folder: str) -> None:
    from shared import sdk_clients

    container = sdk_clients.training_container(api.settings)
    with contextlib.suppress(ResourceExistsError):
        container.create_container()
    for name, data in FILES.items():
        container.upload_blob(f"{folder}/{name}", data, overwrite=True)


def start_all(api: Api, folder: str, keys: list[str]) -> list[Any]:
    body = {"dataset": folder, "stage_from_prefix": folder, "spec": {**TRAIN_SPEC, "files": sorted(FILES)}}

    def start(key: str) -> Any:
        return api.post("/runs", json=body, headers={"Idempotency-Key": key})

    with concurrent.futures.ThreadPoolExecutor(CONCURRENT) as pool:
        return list(pool.map(start, keys))


def settled(api: Api, run_ids: set[str], timeout: float = 240) -> dict[str, Any]:
    """Each run's record once it has left staging (staging may happen after the 202)."""
    deadline = time.monotonic() + timeout
    records: dict[str, Any] = {}
    while True:
        for run_id in run_ids - set(records):
            record = api.get(f"/runs/{run_id}").json()
            if record["state"] != "staging":
                records[run_id] = record
        if len(records) == len(run_ids):
            return records
        assert time.monotonic() < deadline, f"{len(run_ids) - len(records)} run(s) still staging"
        time.sleep(0.5)


def cancel(api: Api, run_ids: set[str]) -> None:
    for run_id in run_ids:
        api.delete(f"/runs/{run_id}")


def test_thirty_concurrent_starts_of_one_folder_each_get_their_own_run(api: Api) -> None:
    folder = f"burst-{uuid.uuid4().hex[:6]}"
    upload_folder(api, folder)
    responses = start_all(api, folder, [f"{folder}-{i}" for i in range(CONCURRENT)])
    statuses = [r.status_code for r in responses]
    assert all(s < 500 for s in statuses), [(r.status_code, r.text[:300]) for r in responses]
    # Every request gets its run: the documented 409 is only for requests that cannot both proceed,
    # and starts with distinct keys always can.
    assert statuses == [202] * CONCURRENT, [
        (r.status_code, r.text[:300]) for r in responses if r.status_code != 202
    ]
    run_ids = {r.json()["id"] for r in responses}
    assert len(run_ids) == CONCURRENT
    try:
        records = settled(api, run_ids)
        failed = {i: r["errors"] for i, r in records.items() if r["state"] in ("failed", "cancelled")}
        assert not failed, failed
        snapshots = {r["snapshot"]["path"] for r in records.values()}
        assert len(snapshots) == CONCURRENT  # no two runs share (or copy to) one file
        for record in records.values():
            assert sorted(f["name"] for f in record["staged_files"]) == sorted(FILES)
            assert record["snapshot"]["file_count"] == len(FILES)
    finally:
        cancel(api, run_ids)


def test_thirty_concurrent_starts_with_one_key_make_exactly_one_run(api: Api) -> None:
    folder = f"burst1-{uuid.uuid4().hex[:6]}"
    upload_folder(api, folder)
    responses = start_all(api, folder, [f"{folder}-shared"] * CONCURRENT)
    assert all(r.status_code == 202 for r in responses), [
        (r.status_code, r.text[:300]) for r in responses if r.status_code != 202
    ]
    run_ids = {r.json()["id"] for r in responses}
    assert len(run_ids) == 1, run_ids
    try:
        (record,) = settled(api, run_ids).values()
        assert record["state"] not in ("failed", "cancelled"), record["errors"]
        assert sorted(f["name"] for f in record["staged_files"]) == sorted(FILES)
        runs = api.get("/runs", params={"dataset": folder}).json()["runs"]
        assert [r["id"] for r in runs] == list(run_ids)
    finally:
        cancel(api, run_ids)
