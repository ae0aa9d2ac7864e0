"""The pipeline in process on the local stack: ingest_blob for each upload, run_monitor as the timer.

These call the very functions the blob trigger and the timer call, against Azurite, the Files
emulator and the ARM emulator (which really runs the training script), through the real SDKs.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import dataclasses
import hashlib
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import requests

from shared import ingest as ingest_module
from shared import monitor
from shared.batchai_backend import BatchAIBackend
from shared.cancellation import cancel_run
from shared.ingest import ingest_blob
from shared.monitor import run_monitor
from shared.registry import TERMINAL_STATES, RunError, RunRecord
from shared.run_starts import start_run
from shared.settings import Settings
from shared.staging import DatasetNotStaged, MissingFiles, NothingToStage, StagingError

from .conftest import QUICKSTART_FILES, QUICKSTART_MANIFEST, Pipeline

pytestmark = pytest.mark.e2e


def dataset_name(prefix: str = "mnist") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def monitor_until_done(p: Pipeline, run_ids: list[str], timeout: float = 90.0) -> dict[str, RunRecord]:
    deadline = time.monotonic() + timeout
    while True:
        run_monitor(p.services)
        records = {run_id: p.registry.get(run_id) for run_id in run_ids}
        if all(r.state in TERMINAL_STATES and not r.callback_pending for r in records.values()):
            return records
        if time.monotonic() > deadline:
            raise AssertionError({r.run_id: (r.state, r.errors) for r in records.values()})
        time.sleep(0.5)


def test_quickstart_in_process(pipeline: Pipeline) -> None:
    p = pipeline
    ds = dataset_name()
    names = p.upload(ds, QUICKSTART_FILES, QUICKSTART_MANIFEST)
    results = [ingest_blob(name, p.services) for name in names]
    # The manifest was uploaded with the files: the first file's event takes it, the last file submits.
    assert [r.action for r in results] == ["staged", "staged", "staged", "replay"]
    assert [r.submitted for r in results] == [False, False, True, False]
    assert len({r.run_id for r in results}) == 1
    run_id = results[0].run_id
    rec = p.registry.get(run_id)
    assert rec.state in ("provisioning", "queued") and rec.job_name and rec.cluster
    assert {f.name for f in rec.staged_files} == set(QUICKSTART_FILES)
    assert rec.snapshot == f"_snapshots/{run_id}"
    for name, data in QUICKSTART_FILES.items():
        assert (p.share_root / rec.snapshot / name).read_bytes() == data
    assert not (p.share_root / rec.snapshot / "run.json").exists()  # the manifest is never staged
    assert not (p.share_root / ds).exists()  # a run's files are in its snapshot only

    rec = monitor_until_done(p, [run_id])[run_id]
    assert rec.state == "succeeded", rec.errors
    assert rec.exit_code == 0
    assert {"staging", "running", "succeeded"} <= set(rec.times)
    assert "test accuracy" in (rec.stdout_tail or "")
    by_name = {(o.directory_id, o.name.rsplit("/", 1)[-1]): o for o in rec.output_files}
    assert {
        ("stdouterr", "stdout.txt"),
        ("stdouterr", "stderr.txt"),
        ("MODEL", "ConvNet_MNIST.model"),
    } <= set(by_name)
    assert all(o.download_url is None for o in rec.output_files)  # signed links are not kept
    job_names = p.services.cloud.job_names(rec.run_id, rec.dataset)
    fresh = {(o.directory_id, o.name): o for o in monitor.collect_outputs(p.services, rec, job_names)}
    recorded = by_name[("MODEL", "ConvNet_MNIST.model")]
    model = fresh[(recorded.directory_id, recorded.name)]
    download = requests.get(model.download_url, timeout=10)
    assert (
        download.status_code == 200
        and download.content.startswith(b"{")
        and len(download.content) == model.size
    )
    # The job carries the quickstart's settings.
    job = p.services.cloud.compute.get_job(rec.experiment, rec.job_name)
    assert job.cntk_settings.python_script_file_path == "$AZ_BATCHAI_INPUT_SAMPLE/ConvNet_MNIST.py"
    assert job.cntk_settings.command_line_args == "$AZ_BATCHAI_INPUT_SAMPLE $AZ_BATCHAI_OUTPUT_MODEL"
    assert (
        job.container_settings.image_source_registry.image
        == "microsoft/cntk:2.1-gpu-python3.5-cuda8.0-cudnn6.0"
    )
    assert [(o.id, o.path_suffix) for o in job.output_directories] == [("MODEL", "Models")]
    assert [(d.id, d.path) for d in job.input_directories] == [
        ("SAMPLE", f"$AZ_BATCHAI_MOUNT_ROOT/azurefileshare/_snapshots/{run_id}")
    ]

    # Every trigger replayed: nothing changes, still one job.
    for _ in range(10):
        for name in names:
            assert ingest_blob(name, p.services).action == "replay"
        run_monitor(p.services)
    assert [r.run_id for r in p.registry.iter_runs(dataset=ds)] == [run_id]
    assert len(p.services.cloud.list_jobs(rec.experiment)) == 1
    assert p.registry.get(run_id).times == rec.times


def test_changed_file_before_submission_and_upload_after(pipeline: Pipeline) -> None:
    p = pipeline
    ds = dataset_name()
    files = dict(QUICKSTART_FILES)
    first = [ingest_blob(n, p.services) for n in p.upload(ds, {"Train-28x28_cntk_text.txt": b"old"})]
    p.upload(ds, {"Train-28x28_cntk_text.txt": files["Train-28x28_cntk_text.txt"]})
    again = ingest_blob(f"{ds}/Train-28x28_cntk_text.txt", p.services)
    assert again.run_id == first[0].run_id and again.action == "staged"
    snapshot = p.share_root / p.registry.get(again.run_id).snapshot
    assert (snapshot / "Train-28x28_cntk_text.txt").read_bytes() == files["Train-28x28_cntk_text.txt"]
    rest = [ingest_blob(n, p.services) for n in p.upload(ds, files, QUICKSTART_MANIFEST)]
    assert sum(r.submitted for r in rest) == 1
    run1 = first[0].run_id
    # An upload after submission starts a new run: it takes the manifest already there, the unchanged
    # files carry over without a copy, and it is submitted at once.
    p.upload(ds, {"extra.txt": b"more data"})
    new = ingest_blob(f"{ds}/extra.txt", p.services)
    assert new.run_id != run1 and new.submitted
    records = monitor_until_done(p, [run1, new.run_id])
    assert [records[r].state for r in (run1, new.run_id)] == ["succeeded", "succeeded"]
    assert {f.name for f in records[new.run_id].staged_files} == {*QUICKSTART_FILES, "extra.txt"}
    assert records[new.run_id].job_name != records[run1].job_name


def test_manifest_first_then_files(pipeline: Pipeline) -> None:
    p = pipeline
    ds = dataset_name()
    manifest_blob = p.upload(ds, {}, QUICKSTART_MANIFEST)
    data_blobs = p.upload(ds, QUICKSTART_FILES)
    results = [ingest_blob(n, p.services) for n in manifest_blob + data_blobs]
    assert [r.submitted for r in results] == [False, False, False, True]
    assert len({r.run_id for r in results}) == 1


def test_twenty_datasets_at_once(pipeline: Pipeline) -> None:
    p = pipeline
    datasets = [dataset_name("many") for _ in range(20)]
    blobs = [name for ds in datasets for name in p.upload(ds, QUICKSTART_FILES, QUICKSTART_MANIFEST)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: ingest_blob(n, p.services), blobs))
    runs_by_dataset = {ds: [r.run_id for r in p.registry.iter_runs(dataset=ds)] for ds in datasets}
    assert all(len(ids) == 1 for ids in runs_by_dataset.values()), runs_by_dataset
    assert sum(r.submitted for r in results) == 20
    # One monitor pass lists jobs per experiment and clusters once: never a GET per run.
    seq = p.arm("/_emulator/requests")["last_seq"]
    run_monitor(p.services)
    # Counted for this pipeline's resource group only: the session's Functions host (started by other
    # tests against the same ARM emulator) runs monitor passes of its own meanwhile.
    mine = f"/resourcegroups/{p.services.settings.resource_group}/".lower()
    requests_seen = p.arm(f"/_emulator/requests?since={seq}")["requests"]
    window = collections.Counter(r["operation"] for r in requests_seen if mine in r["path"].lower())
    assert not any("Jobs_Get" in op for op in window), window
    assert sum(n for op, n in window.items() if "ListByExperiment" in op) <= 20, window
    assert sum(n for op, n in window.items() if "Clusters_ListByWorkspace" in op) == 1, window
    run_ids = [ids[0] for ids in runs_by_dataset.values()]
    records = monitor_until_done(p, run_ids, timeout=150)
    assert all(r.state == "succeeded" for r in records.values()), {
        r.run_id: r.errors for r in records.values()
    }


def test_bad_inputs(pipeline: Pipeline) -> None:
    p = pipeline
    ds = dataset_name("bad")
    p.upload(ds, {}, {"toolkit": "cntk", "node_count": 0, "unknown": 1})
    result = ingest_blob(f"{ds}/run.json", p.services)
    assert result.action == "failed"
    rec = p.registry.get(result.run_id)
    assert rec.state == "failed" and rec.errors[0]["code"] == "InvalidManifest"
    assert "node_count" in rec.errors[0]["message"] and "unknown" in rec.errors[0]["message"]
    # A replay of the bad manifest changes nothing; a bad name fails a new run and writes nothing.
    assert ingest_blob(f"{ds}/run.json", p.services).action == "replay"
    ds2 = dataset_name("bad")
    p.container.upload_blob(f"{ds2}/a|b.txt", b"x")
    bad = ingest_blob(f"{ds2}/a|b.txt", p.services)
    assert bad.action == "failed" and "'|'" in p.registry.get(bad.run_id).errors[0]["message"]
    assert not (p.share_root / ds2).exists() or not any((p.share_root / ds2).iterdir())
    assert not (p.share_root / "_snapshots" / bad.run_id).exists()
    assert ingest_blob(f"{ds2}/a|b.txt", p.services).action == "replay"
    assert ingest_blob("no-dataset-folder.txt", p.services).action == "ignored"
    # A folder-marker blob some upload tools write is ignored, not a bad name failing the dataset.
    ds3 = dataset_name("marker")
    p.container.upload_blob(f"{ds3}/sub/", b"")
    assert ingest_blob(f"{ds3}/sub/", p.services).action == "ignored"
    assert list(p.registry.iter_runs(dataset=ds3)) == []


def test_staging_timeout_names_missing_files(pipeline: Pipeline) -> None:
    p = pipeline
    ds = dataset_name("late")
    names = p.upload(ds, {"ConvNet_MNIST.py": QUICKSTART_FILES["ConvNet_MNIST.py"]}, QUICKSTART_MANIFEST)
    run_id = [ingest_blob(n, p.services) for n in names][-1].run_id
    from datetime import UTC, datetime, timedelta

    report = run_monitor(p.services, now=datetime.now(UTC) + timedelta(hours=2))
    rec = p.registry.get(run_id)
    assert rec.state == "failed" and (run_id, "staging", "failed") in report.transitions
    assert rec.errors[-1]["code"] == "StagingTimeout"
    assert "Train-28x28_cntk_text.txt" in rec.errors[-1]["message"]
    assert "ConvNet_MNIST.py" not in rec.errors[-1]["message"]


def test_start_run_and_cancel(pipeline: Pipeline) -> None:
    p = pipeline
    prefix = f"uploads-{uuid.uuid4().hex[:6]}"
    for name, data in QUICKSTART_FILES.items():
        p.container.upload_blob(f"{prefix}/{name}", data)
    ds = dataset_name("api")
    spec = {
        "files": sorted(QUICKSTART_FILES),
        "arguments": "$AZ_BATCHAI_INPUT_SAMPLE $AZ_BATCHAI_OUTPUT_MODEL",
    }
    rec = start_run(ds, spec, stage_from_prefix=prefix, idempotency_key=f"k-{ds}", svc=p.services)
    assert rec.state in ("provisioning", "queued") and rec.source == "api"
    same = start_run(ds, spec, stage_from_prefix=prefix, idempotency_key=f"k-{ds}", svc=p.services)
    assert same.run_id == rec.run_id
    # A second run on the already staged dataset, then both torn down.
    second = start_run(ds, {"files": sorted(QUICKSTART_FILES)}, svc=p.services)
    assert second.run_id != rec.run_id and second.state in ("provisioning", "queued")
    cancelled = cancel_run(rec.run_id, delete_cluster=True, svc=p.services)
    assert cancelled.state == "cancelled"
    assert p.services.cloud.compute.get_cluster(rec.cluster) is not None  # still used by the second run
    assert cancel_run(rec.run_id, svc=p.services).state == "cancelled"  # idempotent
    assert cancel_run(second.run_id, delete_cluster=True, svc=p.services).state == "cancelled"
    deadline = time.monotonic() + 30  # job deletion is a long-running operation, not waited for
    while p.services.cloud.compute.get_job(rec.experiment, rec.job_name) is not None:
        assert time.monotonic() < deadline, "the cancelled run's job was not deleted"
        time.sleep(0.3)


def test_start_run_refusals_create_nothing(pipeline: Pipeline) -> None:
    """A run that cannot proceed is refused before anything exists: no run record, no cluster, no
    dataset directory (DatasetNotStaged is reachable: the check does not create the directory)."""
    p = pipeline
    svc = p.services
    spec = {"files": sorted(QUICKSTART_FILES), "cluster_name": f"refused-{uuid.uuid4().hex[:6]}"}

    unstaged = dataset_name("unstaged")
    with pytest.raises(DatasetNotStaged, match=unstaged):
        start_run(unstaged, spec, svc=svc)

    empty = dataset_name("empty")
    with pytest.raises(NothingToStage, match="no blobs under prefix"):
        start_run(empty, spec, stage_from_prefix=f"no-such-{uuid.uuid4().hex[:6]}", svc=svc)

    root = dataset_name("root")  # the container's root holds every dataset's blobs: never staged whole
    for prefix in ("/", "", "//"):
        with pytest.raises(StagingError, match="not its root"):
            start_run(root, spec, stage_from_prefix=prefix, svc=svc)

    partial = dataset_name("partial")
    p.container.upload_blob(f"{partial}/ConvNet_MNIST.py", QUICKSTART_FILES["ConvNet_MNIST.py"])
    with pytest.raises(MissingFiles, match=r"Train-28x28_cntk_text\.txt") as missing:
        start_run(partial, spec, stage_from_prefix=partial, svc=svc)
    assert missing.value.code == "MissingFiles"

    for dataset in (unstaged, empty, root, partial):
        assert list(p.registry.iter_runs(dataset=dataset)) == [], dataset
        assert not (p.share_root / dataset).exists(), dataset
    assert svc.cloud.compute.get_cluster(spec["cluster_name"]) is None


def test_start_run_from_the_dataset_folder_is_the_triggers_run_too(pipeline: Pipeline) -> None:
    """Staging from the dataset's own folder: those blobs fire the blob trigger as well. The trigger's
    run for them is adopted by the HTTP start, the trigger's later invocations join that run, and
    the dataset ends with one run, no stray one left staging."""
    p = pipeline
    ds = dataset_name("folder")
    names = p.upload(ds, QUICKSTART_FILES)
    early = ingest_blob(names[0], p.services)  # the trigger fired before the HTTP call
    assert early.action == "staged"
    spec = {
        "files": sorted(QUICKSTART_FILES),
        "arguments": "$AZ_BATCHAI_INPUT_SAMPLE $AZ_BATCHAI_OUTPUT_MODEL",
    }
    rec = start_run(ds, spec, stage_from_prefix=ds, idempotency_key=f"k-{ds}", svc=p.services)
    assert rec.run_id == early.run_id and rec.source == "api"
    assert rec.state in ("provisioning", "queued"), rec.errors
    for name in names:  # the trigger's other invocations, and replays of them
        for _ in range(2):
            result = ingest_blob(name, p.services)
            assert result.action in ("replay", "joined") and result.run_id == rec.run_id, result
    runs = list(p.registry.iter_runs(dataset=ds))
    assert [r.run_id for r in runs] == [rec.run_id]

    # While such a run is staging, the trigger joins it rather than starting another.
    ds2 = dataset_name("folder")
    names2 = p.upload(ds2, QUICKSTART_FILES)
    p.container.upload_blob(f"{ds2}/run.json", b"{}")
    staging, _ = p.registry.claim_staging_run(
        ds2, reuse=lambda r: False, source="api", stage_from_prefix=ds2, spec={"files": []}
    )
    for name in [*names2, f"{ds2}/run.json"]:
        assert ingest_blob(name, p.services).action == "joined"
    assert [r.run_id for r in p.registry.iter_runs(dataset=ds2)] == [staging.run_id]
    assert p.registry.get(staging.run_id).manifest_etag is None  # the request's spec stays the run's
    assert cancel_run(rec.run_id, svc=p.services).state == "cancelled"


FOLDER_SPEC = {
    "files": sorted(QUICKSTART_FILES),
    "arguments": "$AZ_BATCHAI_INPUT_SAMPLE $AZ_BATCHAI_OUTPUT_MODEL",
}


def trigger_run_then_manifest(p: Pipeline) -> tuple[str, str]:
    """A dataset folder whose first file the trigger made a run for, then run.json uploaded (its
    trigger not fired yet): (dataset, the trigger's run id)."""
    ds = dataset_name("race")
    names = p.upload(ds, QUICKSTART_FILES)
    early = ingest_blob(names[0], p.services).run_id
    p.upload(ds, {}, QUICKSTART_MANIFEST)
    return ds, early


def after_next_claim(p: Pipeline, monkeypatch: pytest.MonkeyPatch, action: Callable[[], Any]) -> list[Any]:
    """Run ``action`` right after the next claim of a staging run returns (once): an interleaving of
    two invocations forced at the point the race needs. Returns the list ``action``'s result lands in."""
    claim, done = p.registry.claim_staging_run, []

    def claim_then_act(*args: Any, **kwargs: Any) -> Any:
        found = claim(*args, **kwargs)
        if not done:
            done.append(None)  # before acting: the action's own claims are not hooked
            done[0] = action()
        return found

    monkeypatch.setattr(p.registry, "claim_staging_run", claim_then_act)
    return done


def test_start_run_from_the_folder_supersedes_a_run_that_took_its_manifest_meanwhile(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trigger takes the manifest between the HTTP start's claim of its run and the adoption:
    the run is not adopted (its manifest spec would be overwritten) but superseded, and the request
    gets a run of its own."""
    p = pipeline
    ds, early = trigger_run_then_manifest(p)
    injected = after_next_claim(p, monkeypatch, lambda: ingest_blob(f"{ds}/run.json", p.services).action)
    rec = start_run(ds, FOLDER_SPEC, stage_from_prefix=ds, svc=p.services)
    assert injected == ["manifest"]
    assert rec.run_id != early and rec.source == "api"
    assert rec.state in ("provisioning", "queued"), rec.errors
    superseded = p.registry.get(early)
    assert superseded.state == "cancelled" and superseded.manifest_etag is not None
    assert [e["code"] for e in superseded.errors] == ["Superseded"]
    assert sorted(r.run_id for r in p.registry.iter_runs(dataset=ds)) == sorted([early, rec.run_id])
    assert cancel_run(rec.run_id, svc=p.services).state == "cancelled"


def test_a_manifest_taken_after_an_http_start_adopted_the_run_joins_it(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The HTTP start adopts the trigger's run while the trigger's invocation for run.json is between
    its claim and its taking of the manifest: the invocation joins the adopted run, whose spec stays
    the request's."""
    p = pipeline
    ds, early = trigger_run_then_manifest(p)
    started = after_next_claim(
        p, monkeypatch, lambda: start_run(ds, FOLDER_SPEC, stage_from_prefix=ds, svc=p.services)
    )
    result = ingest_blob(f"{ds}/run.json", p.services)
    assert result.action == "joined" and result.run_id == early, result
    rec = p.registry.get(early)
    assert started[0].run_id == early and rec.source == "api"
    manifest = p.container.get_blob_client(f"{ds}/run.json").get_blob_properties()
    assert rec.spec["arguments"] == FOLDER_SPEC["arguments"]  # the request's spec, not the manifest's
    assert rec.manifest_etag == manifest.etag.strip('"')  # the manifest it superseded
    assert rec.state in ("provisioning", "queued"), rec.errors
    assert [r.run_id for r in p.registry.iter_runs(dataset=ds)] == [early]
    assert cancel_run(rec.run_id, svc=p.services).state == "cancelled"


def test_a_manifest_in_the_folder_an_http_start_staged_makes_no_second_run(pipeline: Pipeline) -> None:
    """Files and run.json are in the folder, an HTTP start stages the folder and submits before the
    trigger fires: the late trigger makes no second run, for the files nor for the manifest. A new
    upload of run.json afterwards is a new request to train, and makes a run."""
    p = pipeline
    ds = dataset_name("late")
    names = p.upload(ds, QUICKSTART_FILES, QUICKSTART_MANIFEST)
    rec = start_run(ds, FOLDER_SPEC, stage_from_prefix=ds, svc=p.services)
    assert rec.state in ("provisioning", "queued"), rec.errors
    for name in names:
        result = ingest_blob(name, p.services)
        assert result.action in ("replay", "joined") and result.run_id == rec.run_id, (name, result)
    assert [r.run_id for r in p.registry.iter_runs(dataset=ds)] == [rec.run_id]

    p.upload(ds, {}, QUICKSTART_MANIFEST)  # at once: told apart by its ETag, not by a clock
    again = ingest_blob(f"{ds}/run.json", p.services)
    assert again.action == "manifest" and again.run_id != rec.run_id, again
    assert len(list(p.registry.iter_runs(dataset=ds))) == 2
    for run_id in (rec.run_id, again.run_id):
        cancel_run(run_id, svc=p.services)


def test_start_run_from_another_folder_leaves_no_run_for_that_folder(pipeline: Pipeline) -> None:
    """Staging dataset D from the top-level folder F: F's blobs also fire the trigger as a dataset F.
    The trigger's invocations join D's run while it stages, and are replays of it afterwards; F gets
    no run and no directory on the share. A run the trigger had already made for F is superseded."""
    p = pipeline
    folder = f"uploads-{uuid.uuid4().hex[:6]}"
    names = p.upload(folder, QUICKSTART_FILES, QUICKSTART_MANIFEST)
    early = ingest_blob(names[0], p.services)  # the trigger fired first: a run of dataset F
    assert early.action == "staged"
    ds = dataset_name("api")
    rec = start_run(ds, FOLDER_SPEC, stage_from_prefix=f"/{folder}/", svc=p.services)
    assert rec.dataset == ds and rec.state in ("provisioning", "queued"), rec.errors
    for name in names:
        for _ in range(2):
            result = ingest_blob(name, p.services)
            assert result.action in ("replay", "joined") and result.run_id == rec.run_id, (name, result)
    superseded = p.registry.get(early.run_id)
    assert superseded.state == "cancelled" and superseded.errors[-1]["code"] == "Superseded"
    assert [r.run_id for r in p.registry.iter_runs(dataset=folder)] == [early.run_id]
    assert [r.run_id for r in p.registry.iter_runs(dataset=ds)] == [rec.run_id]
    assert {f.name for f in p.registry.get(rec.run_id).staged_files} == set(QUICKSTART_FILES)

    # With no run of F before: none after either, and nothing staged under F.
    folder2 = f"uploads-{uuid.uuid4().hex[:6]}"
    names2 = p.upload(folder2, QUICKSTART_FILES)
    ds2 = dataset_name("api")
    rec2 = start_run(ds2, FOLDER_SPEC, stage_from_prefix=folder2, svc=p.services)
    for name in names2:
        assert ingest_blob(name, p.services).run_id == rec2.run_id
    assert list(p.registry.iter_runs(dataset=folder2)) == []
    assert not (p.share_root / folder2).exists()
    for run_id in (rec.run_id, rec2.run_id):
        cancel_run(run_id, svc=p.services)


def test_arm_faults_every_run_ends_in_the_right_state(pipeline: Pipeline) -> None:
    p = pipeline
    p.arm("/_emulator/faults", "POST", {"rate_429": 0.1, "rate_500": 0.1, "retry_after": 0, "seed": 20})
    good = [dataset_name("faulty") for _ in range(2)]
    bad = dataset_name("faulty")
    blobs = [n for ds in good for n in p.upload(ds, QUICKSTART_FILES, QUICKSTART_MANIFEST)]
    failing = {**QUICKSTART_FILES, "ConvNet_MNIST.py": b"import sys\nprint('boom')\nsys.exit(3)\n"}
    blobs += p.upload(bad, failing, QUICKSTART_MANIFEST)

    def trigger(name: str) -> None:  # as the host does: up to 5 attempts per blob
        for attempt in range(5):
            try:
                ingest_blob(name, p.services)
                return
            except Exception:
                if attempt == 4:
                    raise

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(trigger, blobs))
    run_ids = {ds: next(p.registry.iter_runs(dataset=ds)).run_id for ds in [*good, bad]}
    records = monitor_until_done(p, list(run_ids.values()), timeout=150)
    faults = p.arm("/_emulator/requests")["faults"]
    assert sum(faults.values()) > 0, "no fault was injected"
    assert [records[run_ids[ds]].state for ds in good] == ["succeeded", "succeeded"]
    failed = records[run_ids[bad]]
    assert failed.state == "failed" and failed.exit_code == 3 and "boom" in (failed.stdout_tail or "")
    for rec in records.values():
        assert len(p.services.cloud.list_jobs(rec.experiment)) == 1


def test_cluster_that_fails_to_provision_fails_its_runs(pipeline: Pipeline) -> None:
    p = pipeline
    # The clusters of this pipeline mount a share that does not exist: their nodes fail to set up.
    broken = Settings.from_env({**p.values, "FILE_SHARE_NAME": f"missing-{uuid.uuid4().hex[:8]}"})
    svc = dataclasses.replace(p.services, cloud=BatchAIBackend(broken))
    ds = dataset_name("nocluster")
    run_id = [ingest_blob(n, svc) for n in p.upload(ds, QUICKSTART_FILES, QUICKSTART_MANIFEST)][-1].run_id
    deadline = time.monotonic() + 60
    while (rec := p.registry.get(run_id)).state not in TERMINAL_STATES:
        assert time.monotonic() < deadline, rec
        run_monitor(svc)
        time.sleep(0.5)
    assert rec.state == "failed"
    assert rec.errors[-1]["code"] == "ClusterFailed" and "ShareNotFound" in rec.errors[-1]["message"]


def test_callbacks_to_refused_urls_are_given_up(pipeline: Pipeline) -> None:
    p = pipeline
    rec = p.registry.create(
        dataset_name("cb"),
        state="succeeded",
        callback_url="https://169.254.169.254/latest",
        callback_pending=True,
    )
    report = run_monitor(p.services)
    assert report.callbacks[rec.run_id] == "failed"
    after = p.registry.get(rec.run_id)
    assert not after.callback_pending and "metadata" in after.callback["error"]
    assert rec.run_id not in run_monitor(p.services).callbacks  # not tried again


def test_a_run_whose_handling_raises_does_not_stop_the_monitor_pass(pipeline: Pipeline) -> None:
    """A run the monitor cannot handle (here: a spec stored before parsing checked that its Key Vault
    secret names a vault, with KEY_VAULT_RESOURCE_ID unset) is failed with the reason, and the pass
    still handles the runs after it, in staging and among the submitted runs alike."""
    p = pipeline
    ds = dataset_name("unhandled")
    bad_spec = {
        "secret_environment_variables": {
            "KV": {"key_vault_secret_url": "https://kv1.vault.azure.net/secrets/x"}
        }
    }
    long_ago = "2000-01-01T00:00:00.000Z"
    # Run ids sort as the registry lists them: each bad run comes before the good one of its state.
    bad_staging = p.registry.create(
        ds, run_id="20000101-000000-0000aaaa", source="api", spec=bad_spec, expected_files=[]
    )
    good_staging = p.registry.create(
        ds, run_id="20000101-000000-0000bbbb", source="api", staging_deadline=long_ago
    )
    bad_submitted = p.registry.create(
        ds,
        run_id="20000101-000000-0000cccc",
        state="provisioning",
        source="api",
        spec=bad_spec,
        times={"provisioning": long_ago},
    )
    good_submitted = p.registry.create(
        ds, run_id="20000101-000000-0000dddd", state="provisioning", source="api", submitted_at=long_ago
    )
    report = run_monitor(p.services)
    assert p.registry.get(good_staging.run_id).errors[-1]["code"] == "StagingTimeout"
    assert p.registry.get(good_submitted.run_id).errors[-1]["code"] == "JobNotFound"
    for bad in (bad_staging, bad_submitted):
        rec = p.registry.get(bad.run_id)
        assert rec.state == "failed", rec
        assert rec.errors[-1]["code"] == "InvalidSpec"
        assert "secret_environment_variables.KV.key_vault_resource_id" in rec.errors[-1]["message"]
        assert any(e.startswith(bad.run_id) for e in report.errors)


def test_finishing_a_run_from_a_stale_read_keeps_errors_recorded_since(pipeline: Pipeline) -> None:
    """The monitor finishes a run from the record it read at the start of the pass; an error recorded
    on the run after that read (here: by another writer) survives, and the job's own errors are added
    once, also when the finish is replayed."""
    from shared import monitor

    p = pipeline
    ds = dataset_name("stale")
    failing = {**QUICKSTART_FILES, "ConvNet_MNIST.py": b"import sys\nprint('boom')\nsys.exit(3)\n"}
    run_id = [ingest_blob(n, p.services) for n in p.upload(ds, failing, QUICKSTART_MANIFEST)][-1].run_id
    rec = p.registry.get(run_id)
    names = p.services.cloud.job_names(run_id, ds)
    deadline = time.monotonic() + 90
    while True:
        jobs = {j.name: j for j in p.services.cloud.list_jobs(names.experiment)}
        job = jobs.get(names.job)
        if job is not None and job.state == "failed":
            break
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    stale = p.registry.get(run_id)
    meanwhile = RunError("Meanwhile", "recorded after the monitor read the run", "x")
    p.registry.update(run_id, error=meanwhile)
    report = monitor.MonitorReport()
    monitor._finish(p.services, stale, job, "failed", report)
    monitor._finish(p.services, stale, job, "failed", report)  # a replayed (or overlapping) pass
    after = p.registry.get(run_id)
    assert after.state == "failed" and after.exit_code == 3, after
    codes = [e["code"] for e in after.errors]
    assert "Meanwhile" in codes, after.errors
    job_codes = [c for c in codes if c not in {e["code"] for e in rec.errors} | {"Meanwhile"}]
    assert job_codes and len(job_codes) == len(set(job_codes)), after.errors


def test_retired_batch_ai_fails_the_run_with_the_retirement_error(pipeline: Pipeline) -> None:
    """Against Azure today Microsoft.BatchAI answers NoRegisteredProviderFound: a complete dataset's run
    fails at once with BatchAIUnavailable instead of waiting in staging forever."""
    from http.server import ThreadingHTTPServer
    from threading import Thread

    from tests.api.test_health import RetiredArm

    class RetiredArmWrites(RetiredArm):
        do_PUT = do_POST = do_PATCH = RetiredArm.do_GET

    server = ThreadingHTTPServer(("127.0.0.1", 0), RetiredArmWrites)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        retired = Pipeline(
            pipeline.stack,
            ARM_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}",
            TRAINING_CONTAINER=pipeline.settings.training_container,
        )
        ds = dataset_name("retired")
        names = retired.upload(ds, QUICKSTART_FILES, QUICKSTART_MANIFEST)
        results = [ingest_blob(n, retired.services) for n in names]
        rec = retired.registry.get(results[-1].run_id)
        assert rec.state == "failed", rec.state
        assert rec.errors[-1]["code"] == "BatchAIUnavailable"
        assert "retired" in rec.errors[-1]["message"]
    finally:
        server.shutdown()


def test_concurrent_first_invocations_create_the_workspace_once(pipeline: Pipeline) -> None:
    """Eight invocations starting together on a fresh process (a burst after a cold start) wait for
    the one that creates the resource group's workspace instead of each creating and polling it."""
    p = pipeline
    cloud = BatchAIBackend(p.settings)
    since = p.arm("/_emulator/requests?since=999999999999")["last_seq"]
    pool = concurrent.futures.ThreadPoolExecutor(8)

    def first_use(_: int) -> None:
        cloud.ensure_workspace()

    list(pool.map(first_use, range(8)))
    pool.shutdown()
    logged = p.arm(f"/_emulator/requests?since={since}")["requests"]
    ours = [r for r in logged if f"/resourceGroups/{p.settings.resource_group}/" in r["path"]]
    creates = [r for r in ours if r["operation"] == "Workspaces_Create"]
    assert len(creates) == 1, [r["operation"] for r in ours]
    assert p.services.cloud.compute.get_workspace() is not None


def test_two_http_starts_from_one_folder_both_run(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second HTTP start from a top-level folder while the first still stages it (into another
    dataset) takes the folder's pointer but does not cancel the first: both requests get their runs."""
    p = pipeline
    folder = f"uploads-{uuid.uuid4().hex[:6]}"
    p.upload(folder, QUICKSTART_FILES)
    first_ds, second_ds = dataset_name("one"), dataset_name("two")
    second = after_next_claim(
        p, monkeypatch, lambda: start_run(second_ds, FOLDER_SPEC, stage_from_prefix=folder, svc=p.services)
    )
    first = start_run(first_ds, FOLDER_SPEC, stage_from_prefix=folder, svc=p.services)
    for rec in (first, second[0]):
        assert rec.state in ("provisioning", "queued") and not rec.errors, (
            rec.dataset,
            rec.state,
            rec.errors,
        )
    assert [first.dataset, second[0].dataset] == [first_ds, second_ds]
    for rec in (first, second[0]):
        cancel_run(rec.run_id, svc=p.services)


def test_an_invalid_manifest_does_not_fail_the_run_an_http_start_adopted(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder's run.json is invalid, and the HTTP start (whose spec supersedes it) adopts the
    trigger's run while the trigger's invocation for run.json is between its claim and its failing
    of the run: the invocation joins the adopted run instead of failing it."""
    p = pipeline
    ds = dataset_name("race")
    names = p.upload(ds, QUICKSTART_FILES)
    early = ingest_blob(names[0], p.services).run_id
    p.container.upload_blob(f"{ds}/run.json", b"{not json", overwrite=True)
    started = after_next_claim(
        p, monkeypatch, lambda: start_run(ds, FOLDER_SPEC, stage_from_prefix=ds, svc=p.services)
    )
    result = ingest_blob(f"{ds}/run.json", p.services)
    assert result.action == "joined" and result.run_id == early, result
    rec = p.registry.get(early)
    assert started[0].run_id == early and rec.state in ("provisioning", "queued"), rec.errors
    assert not [e for e in rec.errors if e["code"] == "InvalidManifest"]
    cancel_run(early, svc=p.services)


def test_each_run_trains_on_its_own_snapshot_and_unchanged_files_are_carried_inside_the_share(
    pipeline: Pipeline,
) -> None:
    """A file uploaded again while the dataset's run is submitted goes to the next run's
    snapshot; the first run's snapshot keeps what its job was submitted with, byte for byte. The
    next run copies only the changed file from blob storage: the unchanged ones are carried from the
    first snapshot by a copy inside the share. Each record lists its snapshot (path, size, MD5, ETag)."""
    p = pipeline
    ds = dataset_name("snap")
    first_data = QUICKSTART_FILES["Train-28x28_cntk_text.txt"]
    names = p.upload(ds, QUICKSTART_FILES, QUICKSTART_MANIFEST)
    first = [ingest_blob(n, p.services) for n in names]
    run1 = p.registry.get(first[0].run_id)
    assert run1.state in ("provisioning", "queued") and run1.snapshot == f"_snapshots/{run1.run_id}"

    second_data = first_data.replace(b"|labels 1 0", b"|labels 0 1", 1)
    assert second_data != first_data
    p.upload(ds, {"Train-28x28_cntk_text.txt": second_data})
    again = ingest_blob(f"{ds}/Train-28x28_cntk_text.txt", p.services)
    assert again.run_id != run1.run_id and again.submitted, again
    run2 = p.registry.get(again.run_id)
    assert run2.snapshot == f"_snapshots/{run2.run_id}" != run1.snapshot

    # The first run's input never changed; the second has the new version.
    snap1, snap2 = p.share_root / run1.snapshot, p.share_root / run2.snapshot
    assert (snap1 / "Train-28x28_cntk_text.txt").read_bytes() == first_data
    assert (snap2 / "Train-28x28_cntk_text.txt").read_bytes() == second_data
    for name in ("Test-28x28_cntk_text.txt", "ConvNet_MNIST.py"):
        assert (snap2 / name).read_bytes() == (snap1 / name).read_bytes() == QUICKSTART_FILES[name]

    # Each record lists exactly its snapshot: path, size, MD5 and the blob ETag it came from.
    blobs = {b.name.split("/", 1)[1]: b for b in p.container.list_blobs(name_starts_with=f"{ds}/")}
    for rec, root in ((run1, snap1), (run2, snap2)):
        on_share = sorted(str(f.relative_to(root)) for f in root.rglob("*") if f.is_file())
        assert [f.name for f in rec.staged_files] == on_share == sorted(QUICKSTART_FILES)
        for f in rec.staged_files:
            data = (root / f.name).read_bytes()
            assert f.size == len(data) and f.md5 == base64.b64encode(hashlib.md5(data).digest()).decode()
    assert run2.staged("Train-28x28_cntk_text.txt").etag == blobs["Train-28x28_cntk_text.txt"].etag.strip('"')
    assert run1.staged("Train-28x28_cntk_text.txt").etag != run2.staged("Train-28x28_cntk_text.txt").etag
    assert run1.staged("ConvNet_MNIST.py").etag == run2.staged("ConvNet_MNIST.py").etag
    assert run2.to_dict()["snapshot"] == {
        "path": run2.snapshot,
        "file_count": 3,
        "total_bytes": sum(len(v) for v in (second_data, *list(QUICKSTART_FILES.values())[1:])),
    }

    # Only the changed file came from blob storage; the others were copied from the first snapshot.
    share = p.services.share
    sources = {
        name: share.get_file_client(f"{run2.snapshot}/{name}").get_file_properties().copy.source or ""
        for name in QUICKSTART_FILES
    }
    assert f"/{p.settings.training_container}/" in sources["Train-28x28_cntk_text.txt"]
    for name in ("Test-28x28_cntk_text.txt", "ConvNet_MNIST.py"):
        assert sources[name].split("?")[0].endswith(f"/{p.settings.file_share_name}/{run1.snapshot}/{name}")

    # The jobs read their own snapshots.
    for rec in (run1, run2):
        rec = p.registry.get(rec.run_id)
        job = p.services.cloud.compute.get_job(rec.experiment, rec.job_name)
        assert [d.path for d in job.input_directories] == [
            f"$AZ_BATCHAI_MOUNT_ROOT/azurefileshare/{rec.snapshot}"
        ]
    records = monitor_until_done(p, [run1.run_id, run2.run_id])
    assert [r.state for r in records.values()] == ["succeeded", "succeeded"]


def test_the_operators_narrowing_settings_fail_uploaded_manifests_naming_the_field(
    pipeline: Pipeline,
) -> None:
    """With MANIFEST_COMMANDS_ALLOWED=false, MAX_NODES_PER_RUN=2 and CLUSTERS_BY_DERIVED_NAME_ONLY=true,
    uploaded manifests asking for a shell command, 3 nodes or another cluster by name fail at once,
    each error naming the field and the setting; no cluster or job is created for any of them."""
    narrow = Pipeline(
        pipeline.stack,
        TRAINING_CONTAINER=pipeline.settings.training_container,
        MANIFEST_COMMANDS_ALLOWED="false",
        MAX_NODES_PER_RUN="2",
        CLUSTERS_BY_DERIVED_NAME_ONLY="true",
    )
    since = narrow.arm("/_emulator/requests?since=999999999999")["last_seq"]
    cases = {
        "command_line": (
            {"toolkit": "custom", "command_line": "id > /tmp/pwned"},
            "MANIFEST_COMMANDS_ALLOWED",
        ),
        "job_preparation": ({"job_preparation": "id > /tmp/pwned"}, "MANIFEST_COMMANDS_ALLOWED"),
        "node_count": ({"node_count": 3}, "MAX_NODES_PER_RUN"),
        "cluster_name": ({"cluster_name": "another-datasets-cluster"}, "CLUSTERS_BY_DERIVED_NAME_ONLY"),
    }
    for field, (manifest, setting) in cases.items():
        ds = dataset_name("narrow")
        narrow.upload(ds, {}, manifest)
        result = ingest_blob(f"{ds}/run.json", narrow.services)
        rec = narrow.registry.get(result.run_id)
        assert result.action == "failed" and rec.state == "failed", (field, rec.state)
        error = rec.errors[0]
        assert (
            error["code"] == "InvalidManifest" and field in error["message"] and setting in error["message"]
        )
        assert rec.job_name is None and not rec.submitted_at
    logged = narrow.arm(f"/_emulator/requests?since={since}")["requests"]
    assert not [r for r in logged if r["operation"] in ("Clusters_Create", "Jobs_Create")]


def test_a_dataset_over_the_file_list_limit_fails_at_once_with_a_named_error(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest with no `files` list over a dataset larger than the documented limit
    fails its run when the manifest is taken, with FileListTooLarge naming the limit: no retry into
    the poison queue, no wait for the staging timeout. (The limit is lowered to keep the test small;
    the 12,000-file list itself is stored by test_registry.)"""
    from shared import registry as reg

    monkeypatch.setattr(reg, "MAX_FILE_LIST_FILES", 3)
    p = pipeline
    ds = dataset_name("huge")
    names = p.upload(ds, {f"part-{i}.txt": b"x" for i in range(5)}, {"script": "part-0.txt"})
    results = [ingest_blob(name, p.services) for name in names]
    failed = [r for r in results if r.action == "failed"]
    assert failed, results
    rec = p.registry.get(failed[0].run_id)
    assert rec.state == "failed" and rec.errors[-1]["code"] == "FileListTooLarge", rec.errors
    assert "at most 3 files" in rec.errors[-1]["message"]
    assert ingest_blob(f"{ds}/run.json", p.services).action == "replay"  # the trigger's retry: nothing new
    assert len(list(p.registry.iter_runs(dataset=ds))) == 1


def test_datasets_differing_only_in_case_never_share_their_input(pipeline: Pipeline) -> None:
    """On Azure Files (and the Files emulator, case-insensitive like it) `Mnist-x` and
    `mnist-x` would be one directory. Each run's input is its own snapshot, so staging one dataset never
    overwrites what a submitted run of the other reads."""
    p = pipeline
    lower = dataset_name("case")
    upper = lower.upper()
    first = [ingest_blob(n, p.services) for n in p.upload(lower, QUICKSTART_FILES, QUICKSTART_MANIFEST)]
    run_lower = p.registry.get(first[0].run_id)
    assert run_lower.state in ("provisioning", "queued"), run_lower.errors
    changed = {**QUICKSTART_FILES, "Train-28x28_cntk_text.txt": b"the upper-case dataset's data\n"}
    second = [ingest_blob(n, p.services) for n in p.upload(upper, changed, QUICKSTART_MANIFEST)]
    run_upper = p.registry.get(second[0].run_id)
    assert run_upper.run_id != run_lower.run_id and run_upper.dataset == upper
    assert run_upper.state in ("provisioning", "queued"), run_upper.errors
    for rec, files in ((run_lower, QUICKSTART_FILES), (run_upper, changed)):
        for name, data in files.items():
            assert (p.share_root / rec.snapshot / name).read_bytes() == data, (rec.dataset, name)
    for rec in (run_lower, run_upper):
        cancel_run(rec.run_id, svc=p.services)


def test_a_start_on_a_staged_dataset_finds_it_under_any_case(pipeline: Pipeline) -> None:
    """`POST /api/runs` without a prefix snapshots the dataset's latest snapshot; the name
    is matched as the share matches it, ignoring case."""
    p = pipeline
    ds = dataset_name("anycase")
    p.upload(ds, QUICKSTART_FILES)
    first = start_run(ds, FOLDER_SPEC, stage_from_prefix=ds, svc=p.services)
    assert first.state in ("provisioning", "queued"), first.errors
    again = start_run(ds.upper(), FOLDER_SPEC, svc=p.services)
    assert again.state in ("provisioning", "queued"), again.errors
    assert {f.name for f in again.staged_files} == set(QUICKSTART_FILES)
    for name, data in QUICKSTART_FILES.items():
        assert (p.share_root / again.snapshot / name).read_bytes() == data
    for rec in (first, again):
        cancel_run(rec.run_id, svc=p.services)


def test_a_duplicate_delivery_never_writes_into_the_snapshot_of_a_submitted_run(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Event Grid delivers at least once: two deliveries of one blob version both pass the replay
    check; the first copies, records and submits the run. The second must not copy into the
    snapshot again (a job may be reading it): it joins the first's copy and writes nothing."""
    p = pipeline
    ds = dataset_name("dup")
    names = p.upload(ds, QUICKSTART_FILES, QUICKSTART_MANIFEST)
    last = f"{ds}/Train-28x28_cntk_text.txt"
    for name in names:
        if name != last:
            assert ingest_blob(name, p.services).submitted is False
    share = p.services.share

    def first_delivery() -> tuple[Any, Any]:
        result = ingest_blob(last, p.services)
        snapshot = p.registry.get(result.run_id).snapshot
        return result, share.get_file_client(f"{snapshot}/Train-28x28_cntk_text.txt").get_file_properties()

    # The second delivery claims the run (having passed the replay check), then the first runs whole.
    done = after_next_claim(p, monkeypatch, first_delivery)
    second = ingest_blob(last, p.services)
    first, props_at_submission = done[0]
    assert first.submitted and first.action == "staged", first
    assert second.run_id == first.run_id and not second.submitted, second
    rec = p.registry.get(first.run_id)
    assert rec.state != "staging"
    props_now = share.get_file_client(f"{rec.snapshot}/Train-28x28_cntk_text.txt").get_file_properties()
    assert (props_now.etag, props_now.copy.id) == (props_at_submission.etag, props_at_submission.copy.id)
    assert [f.name for f in rec.staged_files] == sorted(QUICKSTART_FILES)


def test_a_run_is_not_submitted_while_a_file_it_does_not_require_is_copied_into_its_snapshot(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery of a file the manifest does not list claims its copy into the run's snapshot, and
    while it copies, the manifest and every required file arrive. The run is not submitted until
    that copy is recorded (its holder then submits it): the job is created on a snapshot holding
    exactly the files the record lists, and no file is taken out of it afterwards."""
    p = pipeline
    ds = dataset_name("inflight")
    files = {**QUICKSTART_FILES, "notes/extra.txt": b"not listed by run.json\n"}
    names = p.upload(ds, files, QUICKSTART_MANIFEST)
    extra = f"{ds}/notes/extra.txt"
    copying, release = threading.Event(), threading.Event()
    real_stage_blob = ingest_module.stage_blob

    def held_stage_blob(container: Any, blob_name: str, *args: Any, **kwargs: Any) -> Any:
        if blob_name == extra:
            copying.set()
            assert release.wait(30)
        return real_stage_blob(container, blob_name, *args, **kwargs)

    seen_by_job: list[set[str]] = []
    real_create_job = p.services.cloud.create_job

    def create_job(*args: Any, data_dir: str | None = None, **kwargs: Any) -> Any:
        snapshot = p.share_root / (data_dir or ds)
        seen_by_job.append({str(f.relative_to(snapshot)) for f in snapshot.rglob("*") if f.is_file()})
        return real_create_job(*args, data_dir=data_dir, **kwargs)

    monkeypatch.setattr(ingest_module, "stage_blob", held_stage_blob)
    monkeypatch.setattr(p.services.cloud, "create_job", create_job)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(ingest_blob, extra, p.services)
        assert copying.wait(30)
        try:
            others = [ingest_blob(n, p.services) for n in names if n != extra]
            run_id = others[0].run_id
            assert not any(r.submitted for r in others), others
            assert p.registry.get(run_id).state == "staging"
        finally:
            release.set()
        held = in_flight.result(30)
    assert held.action == "staged" and held.submitted and held.run_id == run_id, held
    rec = p.registry.get(run_id)
    assert rec.state in ("provisioning", "queued"), rec.errors
    assert sorted(rec.expected_files or []) == sorted(QUICKSTART_FILES)
    recorded = {f.name for f in rec.staged_files}
    assert recorded == set(files)
    assert seen_by_job == [recorded]
    on_share = {
        str(f.relative_to(p.share_root / rec.snapshot)) for f in (p.share_root / rec.snapshot).rglob("*")
    }
    assert {n for n in on_share if (p.share_root / rec.snapshot / n).is_file()} == recorded
    assert [r.run_id for r in p.registry.iter_runs(dataset=ds)] == [run_id]
    cancel_run(run_id, svc=p.services)


def test_a_manifest_delivery_whose_run_was_submitted_by_the_data_blobs_meanwhile_is_a_replay(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything uploaded before any trigger fires (test_twenty_datasets_at_once under load): a data
    blob's delivery reads run.json itself, so the data deliveries can take the manifest and submit the
    run between the manifest delivery's claim and its own taking of the manifest. That delivery is
    then a replay, not an error (it raised TransitionRejected before)."""
    p = pipeline
    ds = dataset_name("late")
    names = p.upload(ds, QUICKSTART_FILES, QUICKSTART_MANIFEST)
    data = [n for n in names if not n.endswith("/run.json")]
    done = after_next_claim(p, monkeypatch, lambda: [ingest_blob(n, p.services) for n in data])
    manifest = ingest_blob(f"{ds}/run.json", p.services)
    assert sum(r.submitted for r in done[0]) == 1
    assert manifest.action == "replay" and not manifest.submitted, manifest
    assert [r.run_id for r in p.registry.iter_runs(dataset=ds)] == [manifest.run_id]
