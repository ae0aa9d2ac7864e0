"""Runs started over HTTP with inline secret values: the registry keeps them masked, so the request
that holds them submits the job itself, retrying a transient failure, and fails the run at once when
it cannot; the monitor leaves such a run alone while its request may still be at it."""

from __future__ import annotations

import uuid

import pytest

from shared import run_starts
from shared.cancellation import cancel_run
from shared.monitor import run_monitor
from shared.registry import RunError
from shared.run_starts import start_run
from shared.runspec import parse_run_spec
from shared.submission import create_job

from .conftest import QUICKSTART_FILES, Pipeline

pytestmark = pytest.mark.e2e

SECRET = "s3cret-value-never-stored-7f1c"


def secret_spec(cluster: str) -> dict:
    return {
        "files": sorted(QUICKSTART_FILES),
        "arguments": "$AZ_BATCHAI_INPUT_SAMPLE $AZ_BATCHAI_OUTPUT_MODEL",
        "cluster_name": cluster,
        "secret_environment_variables": {"API_TOKEN": SECRET},
    }


def deleting_cluster(p: Pipeline, spec: dict, dataset: str, seconds: float) -> str:
    """The run's cluster exists and is being deleted (say the nightly cleanup took it as idle) for
    ``seconds``: creating a job on it is refused with ClusterDeleting until then."""
    cluster = p.services.cloud.ensure_cluster(parse_run_spec(spec, p.services.spec_context), dataset)
    p.arm("/_emulator/settings", "POST", {"operation_delay": seconds})
    try:
        assert p.services.cloud.delete_cluster(cluster.name)
    finally:
        p.arm("/_emulator/settings", "POST", {"operation_delay": 0.1})
    assert p.services.cloud.compute.get_cluster(cluster.name).provisioning_state == "deleting"
    return cluster.name


def test_a_transient_submit_failure_is_retried_while_the_request_holds_the_secrets(
    pipeline: Pipeline,
) -> None:
    p = pipeline
    ds = f"secret-{uuid.uuid4().hex[:8]}"
    p.upload(ds, QUICKSTART_FILES)
    spec = secret_spec(f"secret-{uuid.uuid4().hex[:8]}")
    name = deleting_cluster(p, spec, ds, seconds=2.0)
    rec = start_run(ds, spec, stage_from_prefix=ds, svc=p.services)
    assert rec.state in ("provisioning", "queued") and rec.submitted_at, rec.errors
    assert rec.cluster == name
    job = p.services.cloud.compute.get_job(rec.experiment, rec.job_name)
    assert [s.name for s in job.secrets or []] == ["API_TOKEN"]
    assert SECRET not in str(rec.to_dict())
    cancel_run(rec.run_id, delete_cluster=True, svc=p.services)


def test_a_submit_that_keeps_failing_fails_the_run_in_the_request(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = pipeline
    ds = f"secret-{uuid.uuid4().hex[:8]}"
    p.upload(ds, QUICKSTART_FILES)
    spec = secret_spec(f"secret-{uuid.uuid4().hex[:8]}")  # a cluster of its own: it stays deleting
    deleting_cluster(p, spec, ds, seconds=120.0)
    monkeypatch.setattr(run_starts, "SECRET_SUBMIT_DELAYS", (0.1, 0.2))
    rec = start_run(ds, spec, stage_from_prefix=ds, svc=p.services)
    assert rec.state == "failed" and not rec.submitted_at
    error = rec.errors[-1]
    assert error["code"] == "SubmitFailed" and "API_TOKEN" in error["message"], error
    assert "start the run again" in error["message"] and SECRET not in str(rec.to_dict())


def test_the_monitor_leaves_a_young_run_with_masked_secrets_to_its_request(pipeline: Pipeline) -> None:
    """A staging run ready to submit whose secrets only the request had: untouched for less than
    SECRETS_HELD_SECONDS it is left alone (its request may be submitting it); after that it fails
    with SpecUnavailable, naming the secrets, not their values."""
    p = pipeline
    ds = f"secret-{uuid.uuid4().hex[:8]}"
    masked = parse_run_spec(secret_spec("unused"), p.services.spec_context).to_json_dict()
    assert masked["secret_environment_variables"]["API_TOKEN"] != SECRET
    young = p.registry.create(ds, source="api", spec=masked, expected_files=[])
    old = p.registry.create(
        ds, source="api", spec=masked, expected_files=[], updated_at="2000-01-01T00:00:00.000Z"
    )
    run_monitor(p.services)
    assert p.registry.get(young.run_id).state == "staging"
    failed = p.registry.get(old.run_id)
    assert failed.state == "failed" and failed.errors[-1]["code"] == "SpecUnavailable"
    assert "API_TOKEN" in failed.errors[-1]["message"]
    cancel_run(young.run_id, svc=p.services)


def test_a_job_created_for_a_run_that_failed_meanwhile_is_deleted(pipeline: Pipeline) -> None:
    """The request creates the job while the monitor fails the run (say SpecUnavailable, its grace
    run out): the job the request then created is terminated and deleted, not left training."""
    import time

    from shared.registry import FAILED

    p = pipeline
    ds = f"secret-{uuid.uuid4().hex[:8]}"
    p.upload(ds, QUICKSTART_FILES)
    spec = parse_run_spec(secret_spec(f"secret-{uuid.uuid4().hex[:8]}"), p.services.spec_context)
    cluster = p.services.cloud.ensure_cluster(spec, ds)
    names = p.services.cloud.job_names("20260101-000000-0000beef", ds)
    rec = p.registry.create(
        ds,
        run_id="20260101-000000-0000beef",
        state="provisioning",
        source="api",
        cluster=cluster.name,
        cluster_id=cluster.id,
        experiment=names.experiment,
        job_name=names.job,
    )
    p.registry.transition(rec.run_id, FAILED, error=RunError("SpecUnavailable", "m"))
    assert create_job(p.services, rec, spec)  # from the request's stale copy: still provisioning
    deadline = time.monotonic() + 30
    while (job := p.services.cloud.compute.get_job(names.experiment, names.job)) is not None:
        assert time.monotonic() < deadline, job.provisioning_state
        time.sleep(0.3)
    assert p.registry.get(rec.run_id).state == "failed"
