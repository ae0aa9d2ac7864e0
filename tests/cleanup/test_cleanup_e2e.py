"""Cleanup end to end on the local stack: a dry run changes nothing and reports what it would do; the
real run deletes the finished run's job, experiment, cluster and staged data, terminates a runaway job,
leaves everything the live run uses, and writes its JSON report to the reports container.

It runs in its own workspace, share and runs table, so it cannot touch what other tests made, and moves
the clock (cleanup's `now`) forward instead of waiting for retention periods.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from infra.local.waiting import wait_for
from shared import monitor, run_starts, sdk_clients, services
from shared.cleanup import Cleanup
from shared.settings import Settings
from tests.api.stackapp import TRAIN_SPEC, app_settings, stage_dataset

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def isolated(api: Any) -> tuple[Settings, services.Services]:
    stack = api.stack
    settings = Settings.from_env(
        {
            **app_settings(stack),
            "RUNS_TABLE": "cleanupe2e",
            "BATCHAI_WORKSPACE": "cleanup-e2e",
            "FILE_SHARE_NAME": "cleanup-e2e",
        }
    )
    return settings, services.build_services(settings)


def experiments(compute: Any) -> set[str]:
    return {e.name for e in compute.list_experiments()}


def start(svc: services.Services, stack: Any, dataset: str, spec: dict[str, Any]) -> str:
    stage_dataset(stack, dataset, share_name="cleanup-e2e")
    return run_starts.start_run(dataset, spec, svc=svc).run_id


def state_after_monitor(svc: services.Services, run_id: str) -> str:
    monitor.run_monitor(svc)
    return svc.registry.get(run_id).state


def report_blob(settings: Settings, name: str) -> dict[str, Any]:
    container = sdk_clients.blob_service(settings).get_container_client(settings.reports_container)
    return json.loads(container.download_blob(name).readall())


def test_cleanup_dry_run_then_for_real_with_its_report(api: Any, isolated: tuple[Settings, Any]) -> None:
    settings, svc = isolated
    stack = api.stack
    done_id = start(svc, stack, "finished", dict(TRAIN_SPEC))
    live_id = start(
        svc, stack, "live",
        {**TRAIN_SPEC, "environment_variables": {"TRAIN_SECONDS": "120"}, "max_wall_clock_time": "PT1H"},
    )  # fmt: skip
    wait_for(
        lambda: state_after_monitor(svc, done_id) == "succeeded", 90, 0.5, what="the short run to succeed"
    )
    wait_for(lambda: state_after_monitor(svc, live_id) == "running", 60, 0.5, what="the long run to run")
    done, live = svc.registry.get(done_id), svc.registry.get(live_id)
    compute = svc.cloud
    later = datetime.now(UTC) + timedelta(hours=100)  # past every retention; the live job past its 1 h

    dry, dry_name = Cleanup(services=svc).run(now=later, dry_run=True)
    planned = {(a["kind"], a["target"]): a for a in dry["actions"]}
    assert set(planned) == {
        ("terminate_job", f"{live.experiment}/{live.job_name}"),
        ("delete_job", f"{done.experiment}/{done.job_name}"),
        ("delete_experiment", done.experiment),
        ("delete_cluster", done.cluster),
        ("delete_snapshot", done.snapshot),
        ("delete_staged_data", "finished"),
    }, dry["actions"]
    assert done.snapshot == f"_snapshots/{done_id}" and live.snapshot == f"_snapshots/{live_id}"
    assert all(a["result"] == "dry-run" for a in dry["actions"]) and dry["dry_run"] is True
    assert planned[("delete_job", f"{done.experiment}/{done.job_name}")]["run_ids"] == [done_id]
    assert report_blob(settings, dry_name) == dry and "dry-run" in dry_name
    assert compute.get_job(compute.job_ref(done.experiment, done.job_name)) is not None
    assert svc.share.get_directory_client("finished").exists()
    assert svc.share.get_directory_client(done.snapshot).exists()
    assert svc.registry.get(live_id).state == "running"

    real, real_name = Cleanup(services=svc).run(now=later, dry_run=False)
    assert {(a["kind"], a["target"]): a["result"] for a in real["actions"]} == dict.fromkeys(planned, "done")
    assert report_blob(settings, real_name)["summary"] == {"done": 6}
    wait_for(
        lambda: compute.get_job(compute.job_ref(done.experiment, done.job_name)) is None,
        30,
        0.5,
        what="the finished job to be deleted",
    )
    wait_for(
        lambda: done.experiment not in experiments(compute),
        30,
        0.5,
        what="the empty experiment to be deleted",
    )
    wait_for(
        lambda: compute.get_cluster(done.cluster) is None, 30, 0.5, what="the idle cluster to be deleted"
    )
    assert not svc.share.get_directory_client("finished").exists()
    assert not svc.share.get_directory_client(done.snapshot).exists()
    # The live run's job was terminated as a runaway; its cluster, experiment and data are untouched.
    wait_for(
        lambda: state_after_monitor(svc, live_id) in ("failed", "succeeded", "cancelled"),
        30,
        0.5,
        what="the runaway to stop",
    )
    assert compute.get_cluster(live.cluster) is not None
    assert live.experiment in experiments(compute)
    assert svc.share.get_directory_client("live").exists()
    assert svc.share.get_directory_client(live.snapshot).exists()  # a snapshot an active run uses
    # The registry keeps the records.
    assert svc.registry.get(done_id).state == "succeeded"


def test_cleanup_timer_in_the_host_honours_the_dry_run_setting(api: Any, isolated: Any) -> None:
    """The timer function itself, invoked by the local host (its test client) with CLEANUP_DRY_RUN."""
    from infra.local.funchost.host import FunctionHost
    from infra.local.stack import REPO_ROOT
    from shared.sdk_clients import reset_clients
    from shared.settings import reset_settings

    values = {
        **app_settings(api.stack),
        "RUNS_TABLE": "cleanupe2e",
        "BATCHAI_WORKSPACE": "cleanup-e2e",
        "FILE_SHARE_NAME": "cleanup-e2e",
        "REPORTS_CONTAINER": "reports-timer",
        "CLEANUP_DRY_RUN": "true",
    }
    saved = dict(os.environ)  # the host exports its settings into this process's environment
    try:
        reset_settings()
        reset_clients()
        FunctionHost(REPO_ROOT, settings=values, triggers=False).test_client().timer("cleanup")
    finally:
        os.environ.clear()
        os.environ.update(saved)
        reset_settings()
        reset_clients()
    settings = Settings.from_env(values)
    container = sdk_clients.blob_service(settings).get_container_client("reports-timer")
    names = [b.name for b in container.list_blobs(name_starts_with="cleanup/")]
    assert len(names) == 1 and names[0].endswith("-dry-run.json"), names
    report = report_blob(settings, names[0])
    assert report["dry_run"] is True and all(a["result"] == "dry-run" for a in report["actions"])
