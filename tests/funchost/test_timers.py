"""Timer triggers through the real host process: schedule, past_due after a missed run (status kept
in Azurite as the real host keeps it), singleton runs, SIGTERM letting a running invocation finish."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Callable

import pytest
from azure.storage.blob import BlobServiceClient

from .conftest import HostProcess, only

pytestmark = pytest.mark.e2e


def test_timer_fires_on_schedule_and_is_past_due_after_a_missed_run(
    local_stack, host_factory: Callable[..., HostProcess]
) -> None:
    storage = local_stack.ensure("azurite").connection_string
    host_id = f"timer-{uuid.uuid4().hex[:8]}"
    settings = {
        **only("tick"), "AzureWebJobsStorage": storage, "TICK_SCHEDULE": "*/2 * * * * *",
        "AzureFunctionsWebHost__hostid": host_id,
    }  # fmt: skip
    host = host_factory(settings).start()
    ticks = host.wait_for(lambda: len(host.records("tick")) >= 2 and host.records("tick"), timeout=10)
    for tick in ticks:
        assert tick["past_due"] is False
        assert int(tick["at"]) % 2 == 0, "fires on even seconds"
    assert round(ticks[1]["at"] - ticks[0]["at"]) % 2 == 0
    assert ticks[1]["status"]["Next"], "schedule status is passed to the handler"
    assert host.stop() == 0

    status_blob = BlobServiceClient.from_connection_string(storage).get_blob_client(
        "azure-webjobs-hosts", f"timers/{host_id}/Host.Functions.tick/status"
    )
    status = json.loads(status_blob.download_blob().readall())
    assert set(status) == {"Last", "Next", "LastUpdated"}
    time.sleep(2.5)  # the recorded Next passes while the host is down
    count = len(host.records("tick"))
    restarted = host_factory(settings).start()
    after = restarted.wait_for(lambda: restarted.records("tick")[count:], timeout=10)
    assert after[0]["past_due"] is True
    assert "is past due" in restarted.log()


def test_slow_timer_never_overlaps_itself_and_sigterm_lets_it_finish(
    host_factory: Callable[..., HostProcess],
) -> None:
    settings = {**only("slow"), "SLOW_SCHEDULE": "* * * * * *", "SLOW_SECONDS": "1.2"}
    host = host_factory(settings).start()
    runs = host.wait_for(lambda: len(host.records("slow")) >= 2 and host.records("slow"), timeout=10)
    # run_on_startup fired the first run at once; every-second ticks that fell inside a run were skipped.
    for earlier, later in itertools.pairwise(runs):
        assert later["start"] >= earlier["end"]
    host.wait_for(
        lambda: host.log().count("Executing 'Functions.slow'") > len(host.records("slow")),
        what="a run in flight",
    )
    assert host.stop() == 0
    log = host.log()
    assert log.count("Executing 'Functions.slow'") == log.count("Executed 'Functions.slow' (Succeeded")
    assert len(host.records("slow")) == log.count("Executing 'Functions.slow'")
    assert "Host stopped" in log


def test_sigterm_waits_for_running_invocations_only_as_long_as_the_shutdown_timeout(
    host_factory: Callable[..., HostProcess],
) -> None:
    settings = {**only("slow"), "SLOW_SECONDS": "60", "FUNCHOST_SHUTDOWN_TIMEOUT": "1"}
    host = host_factory(settings).start()
    host.wait_for(lambda: "Executing 'Functions.slow'" in host.log(), what="the startup run")
    started = time.monotonic()
    assert host.stop() == 1, "exit status 1: an invocation was still running"
    assert time.monotonic() - started < 8
    assert "Host stopped with 1 invocation(s) still running" in host.log()
