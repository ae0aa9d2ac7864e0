"""The pipeline on COMPUTE_BACKEND=azureml, through the real SDKs (azure-mgmt-core's ARM pipeline,
azure-storage) against the local stack's Azure ML provider: a dataset dropped into the container is
trained with the unchanged Batch AI script (its AZ_BATCHAI_* variables set from Azure ML's inputs and
outputs), its outputs and log are read back from blob storage where Azure ML puts them, and an HTTP
start with an idempotency key, teardown and cleanup work as on Batch AI."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from shared import monitor
from shared.azureml_backend import AzureMLBackend
from shared.cancellation import cancel_run
from shared.cleanup import Cleanup
from shared.ingest import ingest_blob
from shared.registry import TERMINAL_STATES
from shared.run_starts import start_run
from shared.runspec import RunSpecError, parse_run_spec
from tests.pipeline.conftest import QUICKSTART_FILES, QUICKSTART_MANIFEST, TRAIN_SCRIPT, Pipeline
from tests.pipeline.test_pipeline import dataset_name, monitor_until_done

pytestmark = pytest.mark.e2e


def test_dataset_drop_trains_a_model_on_azureml(azureml_pipeline: Pipeline) -> None:
    p = azureml_pipeline
    svc = p.services
    assert isinstance(svc.cloud, AzureMLBackend)
    ds = dataset_name()
    # The job trains 3 s longer than it needs, so that a pass sees it running (Azure ML gives no start
    # time: a job that ends between two passes has no "running" on its timeline).
    manifest = {**QUICKSTART_MANIFEST, "environment_variables": {"STAND_IN_SECONDS": "3"}}
    names = p.upload(ds, QUICKSTART_FILES, manifest)
    results = [ingest_blob(n, svc) for n in names]
    run_id = results[-1].run_id
    assert run_id and any(r.submitted for r in results), results
    rec = monitor_until_done(p, [run_id], timeout=120)[run_id]
    assert rec.state == "succeeded", rec.errors
    assert {"queued", "running", "succeeded"} <= set(rec.times) or {"provisioning", "running"} <= set(
        rec.times
    )
    files = {(o.directory_id, o.name) for o in rec.output_files}
    assert ("stdouterr", "stdout.txt") in files and ("MODEL", "ConvNet_MNIST.model") in files, files
    assert "test accuracy" in (rec.stdout_tail or "")
    # Fresh links read the model and the log back from Azurite, where the emulator put them.
    listed = monitor.collect_outputs(svc, rec, svc.cloud.job_names(rec.run_id, rec.dataset))
    model = next(o for o in listed if o.name == "ConvNet_MNIST.model")
    download = requests.get(model.download_url, timeout=10)
    assert (
        download.status_code == 200
        and download.content.startswith(b"{")
        and len(download.content) == model.size
    )
    # The job is a Command job whose command sets the Batch AI variables from Azure ML's inputs.
    job = requests.get(
        f"{p.stack.arm_endpoint}{svc.cloud.workspace_id}/jobs/{rec.job_name}?api-version=2024-10-01",
        headers={"Authorization": f"Bearer {p.stack.arm_token}"},
        timeout=10,
    ).json()
    command = job["properties"]["command"]
    assert "AZ_BATCHAI_INPUT_SAMPLE=${{inputs.SAMPLE}}" in command
    assert "AZ_BATCHAI_OUTPUT_MODEL=${{outputs.MODEL}}" in command
    assert rec.snapshot and job["properties"]["inputs"]["SAMPLE"]["uri"].endswith(f"/paths/{rec.snapshot}/")
    assert job["properties"]["status"] == "Completed"
    # Replayed triggers change nothing: still one job, one run.
    for name in names:
        assert ingest_blob(name, svc).action == "replay"
    assert len(svc.cloud.list_jobs(rec.experiment)) == 1


def test_http_start_teardown_and_cleanup_on_azureml(azureml_pipeline: Pipeline) -> None:
    p = azureml_pipeline
    svc = p.services
    ds = dataset_name("http")
    p.upload(ds, QUICKSTART_FILES)
    spec = {"files": sorted(QUICKSTART_FILES)}
    first = start_run(ds, spec, stage_from_prefix=ds, idempotency_key="key-1", svc=svc)
    again = start_run(ds, spec, stage_from_prefix=ds, idempotency_key="key-1", svc=svc)
    assert again.run_id == first.run_id and first.state in ("provisioning", "queued"), first.errors
    done = monitor_until_done(p, [first.run_id], timeout=120)[first.run_id]
    assert done.state == "succeeded", done.errors
    # A second run, torn down while it waits or runs: cancelled, its job cancelled and deleted.
    second = start_run(ds, {**spec, "environment_variables": {"TRAIN_SECONDS": "60"}}, svc=svc)
    cancelled = cancel_run(second.run_id, delete_cluster=False, svc=svc)
    assert cancelled.state == "cancelled"
    deadline = time.monotonic() + 30
    while svc.cloud.get_job(svc.cloud.job_ref(second.experiment, second.job_name)) is not None:
        assert time.monotonic() < deadline, "the cancelled run's job was not deleted"
        time.sleep(0.3)
    # Cleanup, long after: the finished job and the idle compute go; the registry keeps the runs.
    report, _ = Cleanup(services=svc).run(now=datetime.now(UTC) + timedelta(hours=500), dry_run=False)
    kinds = {(a["kind"], a["result"]) for a in report["actions"]}
    assert ("delete_job", "done") in kinds and ("delete_cluster", "done") in kinds, report
    deadline = time.monotonic() + 30
    while svc.cloud.get_cluster(done.cluster) is not None:
        assert time.monotonic() < deadline, "the idle compute was not deleted"
        time.sleep(0.3)
    assert p.registry.get(first.run_id).state == "succeeded"
    assert p.registry.get(second.run_id).state in TERMINAL_STATES


def test_unmappable_spec_fields_are_refused_naming_field_and_backend(azureml_pipeline: Pipeline) -> None:
    backend = azureml_pipeline.services.cloud
    names = backend.job_names("20260101-000000-00000001", "ds")
    for field, extra in [
        ("scheduling_priority", {"scheduling_priority": "high"}),
        ("secret_environment_variables.TOKEN", {"secret_environment_variables": {"TOKEN": "s3cret"}}),
        (
            "output_directories.OUT.path_prefix",
            {"output_directories": [{"id": "OUT", "path_prefix": "elsewhere"}]},
        ),
    ]:
        spec = parse_run_spec(extra, azureml_pipeline.services.spec_context)
        with pytest.raises(RunSpecError) as refused:
            backend.job_body(names, spec, "ds", "/compute/id")
        assert refused.value.errors[0]["field"] == field and "azureml" in refused.value.errors[0]["message"]
        assert "s3cret" not in str(refused.value)
    spec = parse_run_spec(
        {"cluster_name": "a-name-far-too-long-for-azure-ml"}, azureml_pipeline.services.spec_context
    )
    with pytest.raises(RunSpecError, match="azureml"):
        backend.cluster_name(spec, "ds")


def test_arm_faults_on_azureml_every_run_ends_in_the_right_state(azureml_pipeline: Pipeline) -> None:
    """20% of the ARM requests (Azure ML's included) fail with 429 or 500: the ARM pipeline's retries
    and the trigger's at-least-once delivery absorb them; one job per run, each run in its state."""
    p = azureml_pipeline
    p.arm("/_emulator/faults", "POST", {"rate_429": 0.1, "rate_500": 0.1, "retry_after": 0, "seed": 13})
    good, bad = dataset_name("faulty"), dataset_name("faulty")
    failing = {**QUICKSTART_FILES, "ConvNet_MNIST.py": b"import sys\nprint('boom')\nsys.exit(3)\n"}
    blobs = p.upload(good, QUICKSTART_FILES, QUICKSTART_MANIFEST) + p.upload(
        bad, failing, QUICKSTART_MANIFEST
    )
    for name in blobs:  # as the host does: up to 5 attempts per blob
        for attempt in range(5):
            try:
                ingest_blob(name, p.services)
                break
            except Exception:
                if attempt == 4:
                    raise
    run_ids = {ds: next(p.registry.iter_runs(dataset=ds)).run_id for ds in (good, bad)}
    records = monitor_until_done(p, list(run_ids.values()), timeout=150)
    assert sum(p.arm("/_emulator/requests")["faults"].values()) > 0, "no fault was injected"
    assert records[run_ids[good]].state == "succeeded", records[run_ids[good]].errors
    failed = records[run_ids[bad]]
    assert failed.state == "failed" and "boom" in (failed.stdout_tail or "")
    p.arm("/_emulator/faults", "DELETE")
    for rec in records.values():
        assert len(p.services.cloud.list_jobs(rec.experiment)) == 1


@pytest.fixture
def hosted_azureml(local_stack: Any, tmp_path: Path) -> Iterator[tuple[Pipeline, Any]]:
    from tests.pipeline.test_host_e2e import host_pipeline

    yield from host_pipeline(local_stack, tmp_path, COMPUTE_BACKEND="azureml")


def test_drop_through_the_host_on_azureml_survives_the_host_killed_mid_run(hosted_azureml: Any) -> None:
    """Through the local Functions host (blob events, timer): the host is killed while the job runs
    and started again; the run finishes once, with one job."""
    from tests.pipeline.test_host_e2e import done, wait_runs

    p, make_host = hosted_azureml
    host = make_host().start()
    slow = {**QUICKSTART_FILES, "ConvNet_MNIST.py": b"import time\ntime.sleep(6)\n" + TRAIN_SCRIPT}
    p.upload("mnist", slow, QUICKSTART_MANIFEST)
    wait_runs(p, "mnist", lambda runs: any(r.state == "running" for r in runs), timeout=90)
    host.kill()
    make_host().start()
    (rec,) = wait_runs(p, "mnist", done)
    assert rec.state == "succeeded", rec.errors
    assert "test accuracy" in (rec.stdout_tail or "")
    assert len(p.services.cloud.list_jobs(rec.experiment)) == 1


def test_metrics_are_read_while_an_azureml_job_runs(azureml_pipeline: Pipeline) -> None:
    """Azure ML streams std_log.txt while the job runs: the monitor reads a JSON metrics line from
    it before the job ends (read_stdout: a Range read of the blob, no ARM request)."""
    p = azureml_pipeline
    script = b'import json, time\nprint(json.dumps({"epoch": 1, "loss": 0.5}), flush=True)\ntime.sleep(8)\n'
    ds = dataset_name("metrics")
    files = {**QUICKSTART_FILES, "ConvNet_MNIST.py": script}
    run_id = [ingest_blob(n, p.services) for n in p.upload(ds, files, QUICKSTART_MANIFEST)][-1].run_id
    deadline = time.monotonic() + 60
    while True:
        monitor.run_monitor(p.services)
        rec = p.registry.get(run_id)
        if rec.state == "running" and rec.metrics:
            break
        assert rec.state not in TERMINAL_STATES and time.monotonic() < deadline, (rec.state, rec.metrics)
        time.sleep(0.5)
    assert rec.metrics["loss"]["value"] == 0.5, rec.metrics


def test_http_api_on_azureml(hosted_azureml: Any) -> None:
    """Over HTTP through the host: POST /api/runs with an Idempotency-Key (the replay gets the same
    run), its logs and outputs read back, DELETE with cluster=true, and the deep health check named
    after the backend."""
    p, make_host = hosted_azureml
    make_host().start()
    base = f"http://127.0.0.1:{make_host.port}/api"
    key = {"x-functions-key": "pipeline-test-key"}
    ds = dataset_name("http")
    p.upload(ds, QUICKSTART_FILES)
    body = {"dataset": ds, "stage_from_prefix": ds, "spec": {"files": sorted(QUICKSTART_FILES)}}
    headers = {**key, "Idempotency-Key": f"k-{ds}"}
    first = requests.post(f"{base}/runs", json=body, headers=headers, timeout=60)
    assert first.status_code == 202, first.text
    again = requests.post(f"{base}/runs", json=body, headers=headers, timeout=60)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    run_id = first.json()["id"]
    deadline = time.monotonic() + 120
    while (state := requests.get(f"{base}/runs/{run_id}", headers=key, timeout=30).json()["state"]) not in (
        TERMINAL_STATES
    ):
        assert time.monotonic() < deadline, state
        time.sleep(1)
    assert state == "succeeded"
    record = requests.get(f"{base}/runs/{run_id}", headers=key, timeout=30).json()
    assert record["output_urls_fresh"] is True
    model = next(o for o in record["output_files"] if o["name"] == "ConvNet_MNIST.model")
    assert requests.get(model["download_url"], timeout=10).status_code == 200
    logs = requests.get(f"{base}/runs/{run_id}/logs", headers=key, timeout=30).json()
    assert logs["source"] == "job" and "test accuracy" in logs["stdout"]
    deleted = requests.delete(f"{base}/runs/{run_id}", params={"cluster": "true"}, headers=key, timeout=60)
    assert deleted.status_code == 200 and deleted.json()["cluster_deleted"] is True, deleted.text
    health = requests.get(f"{base}/health/deep", headers=key, timeout=60).json()
    assert health["checks"]["azureml"]["ok"] is True and "batchai" not in health["checks"], health


def test_a_dropped_spec_azureml_cannot_map_fails_its_run_at_once(azureml_pipeline: Pipeline) -> None:
    """Bad input on azureml: a manifest asking for what Azure ML cannot do fails its run when the
    manifest arrives, naming the field and the backend; nothing is created, no invocation crashes;
    an HTTP start with such a spec is refused before any run exists."""
    p = azureml_pipeline
    for field, extra in [
        ("scheduling_priority", {"scheduling_priority": "high"}),
        ("cluster_name", {"cluster_name": "far-too-long-a-name-for-aml"}),
    ]:
        ds = dataset_name("bad")
        results = [
            ingest_blob(n, p.services)
            for n in p.upload(ds, QUICKSTART_FILES, {**QUICKSTART_MANIFEST, **extra})
        ]
        runs = list(p.registry.iter_runs(dataset=ds))  # as any invalid manifest: each event's run fails
        assert runs
        for rec in runs:
            assert rec.state == "failed" and rec.job_name is None, (rec.state, rec.errors)
            assert rec.errors[0]["code"] == "InvalidManifest", rec.errors
            assert field in rec.errors[0]["message"] and "azureml" in rec.errors[0]["message"]
        assert any(r.action == "failed" for r in results)
        with pytest.raises(RunSpecError, match=field):
            start_run(f"{ds}-http", {"files": sorted(QUICKSTART_FILES), **extra}, svc=p.services)
        assert list(p.registry.iter_runs(dataset=f"{ds}-http")) == []
    assert p.services.cloud.list_clusters() == {}


@pytest.mark.parametrize("backend", ["azureml_pipeline", "pipeline"])  # Azure ML, Batch AI
def test_a_job_that_ended_between_passes_keeps_the_metrics_an_overlapping_pass_read(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """A short job the monitor never saw running ends between two passes, and two overlapping passes
    both finish it: the first reads its whole log into the run's metrics series and is still on its
    way to the run's transition (or died) when the second finishes the run. The second's own final
    read finds those bytes read already; the run must still record the metrics the job printed."""
    p: Pipeline = request.getfixturevalue(backend)
    lines = [{"epoch": e, "loss": 1.0 / e} for e in range(1, 5)]
    script = "import json\n" + "".join(f"print(json.dumps({line!r}), flush=True)\n" for line in lines)
    ds = dataset_name("endedbetween")
    files = {**QUICKSTART_FILES, "ConvNet_MNIST.py": script.encode()}
    run_id = [ingest_blob(n, p.services) for n in p.upload(ds, files, QUICKSTART_MANIFEST)][-1].run_id
    names = p.services.cloud.job_names(run_id, ds)
    deadline = time.monotonic() + 60
    while (job := p.services.cloud.get_job(names)) is None or job.state not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.3)  # no monitor pass meanwhile: the job ends between two passes
    rec = p.registry.get(run_id)
    assert rec.state not in TERMINAL_STATES and rec.metrics is None
    read_first = monitor.read_metrics(p.services, rec, job, final=True)  # the first pass's final read
    assert read_first is not None and read_first["metrics"]["loss"]["value"] == 0.25
    monitor.run_monitor(p.services)  # the second pass finishes the run
    rec = p.registry.get(run_id)
    assert rec.state == "succeeded", rec.errors
    assert rec.metrics is not None, "the run finished without the metrics its job printed"
    assert rec.metrics["loss"]["value"] == 0.25 and rec.metrics["loss"]["x"] == 4
    assert rec.metrics_offset == read_first["metrics_offset"]


def test_a_two_process_job_logs_each_process_and_its_lead_log_is_read(azureml_pipeline: Pipeline) -> None:
    """A PyTorch distribution of 2 processes: Azure ML logs each to user_logs/std_log_process_<rank>.txt
    (shown as stdout-<rank>.txt); the run's metrics and log tail come from rank 0's log alone."""
    p = azureml_pipeline
    script = (
        b"import json, os\n"
        b"rank = int(os.environ['RANK'])\n"
        b"print(f'process {rank} of', os.environ['WORLD_SIZE'], flush=True)\n"
        b"print(json.dumps({'loss': 0.25 if rank == 0 else 0.75}), flush=True)\n"
    )
    ds = dataset_name("ranks")
    files = {**QUICKSTART_FILES, "ConvNet_MNIST.py": script}
    manifest = {
        "toolkit": "pytorch",
        "script": "ConvNet_MNIST.py",
        "arguments": "",
        "node_count": 1,
        "process_count": 2,
        "files": sorted(files),
    }
    run_id = [ingest_blob(n, p.services) for n in p.upload(ds, files, manifest)][-1].run_id
    rec = monitor_until_done(p, [run_id], timeout=120)[run_id]
    assert rec.state == "succeeded", rec.errors
    listed = monitor.collect_outputs(p.services, rec, p.services.cloud.job_names(rec.run_id, rec.dataset))
    logs = {o.name: o for o in listed if o.directory_id == "stdouterr"}
    assert {"stdout-0.txt", "stdout-1.txt"} <= set(logs) and "stdout.txt" not in logs, sorted(logs)
    texts = {n: requests.get(logs[n].download_url, timeout=10).text for n in ("stdout-0.txt", "stdout-1.txt")}
    assert "process 0 of 2" in texts["stdout-0.txt"] and "process 1" not in texts["stdout-0.txt"], texts
    assert "process 1 of 2" in texts["stdout-1.txt"] and "process 0" not in texts["stdout-1.txt"], texts
    assert rec.metrics and rec.metrics["loss"]["value"] == 0.25, rec.metrics
    assert "process 0 of 2" in (rec.stdout_tail or "") and "process 1" not in (rec.stdout_tail or "")
