"""The pipeline end to end through the local Functions host running the repo's function_app.py: blobs
dropped into the training container trigger ingest, the monitor timer moves the runs, the callback
arrives signed; replays, a host killed mid-staging, and the logs checked for secrets."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.storage.blob import BlobServiceClient

from infra.local.eventgrid import EventGridStandIn, Subscription
from infra.local.eventgrid.models import blob_created_event
from infra.local.stack import DEV_SUBSCRIPTION, REPO_ROOT, free_port
from shared import callbacks, monitor
from shared.callbacks import SIGNATURE_HEADER, verify
from shared.registry import SNAPSHOT_ROOT, TERMINAL_STATES, RunRecord

from .conftest import QUICKSTART_FILES, QUICKSTART_MANIFEST, Pipeline

pytestmark = pytest.mark.e2e

SIGNING_SECRET = "e2e-callback-signing-secret-0123"
BLOBS_EXTENSION_KEY = "e2e-blobs-extension-key"
# Event Grid retries after 10 s, 30 s, 1 min...; these subscriptions retry sooner so that a delivery
# that met a stopped host arrives soon after its restart.
TEST_RETRY_SCHEDULE = (0.5, 1.0, 2.0)
RUN_SECRET = "s3cr3t-value-that-must-not-leak"


class Host:
    """`python -m infra.local.funchost` on the repository's app, with this pipeline's settings."""

    def __init__(self, work_dir: Path, values: dict[str, str], port: int) -> None:
        self.work_dir = work_dir
        self.values = values
        self.port = port  # the same across restarts: the Event Grid subscription's endpoint
        self.log_file = work_dir / "host.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Host:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        started = self.log().count("Host started")  # the log is appended to across restarts
        settings = self.work_dir / "local.settings.json"
        settings.write_text(json.dumps({"IsEncrypted": False, "Values": self.values}))
        env = {
            k: v for k, v in os.environ.items() if k not in self.values and not k.startswith("AzureWebJobs")
        }
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [sys.executable, "-m", "infra.local.funchost", "--app-dir", str(REPO_ROOT),
               "--host", "127.0.0.1", "--port", str(self.port), "--settings", str(settings)]  # fmt: skip
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while self.log().count("Host started") <= started:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"host did not start:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


class Receiver:
    """A callback endpoint on loopback that records what it receives."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/runs/done"


class Hosted:
    """A test's pipeline, its Functions host (made, restarted) and the Event Grid subscription that
    feeds the host's ingest function, as in Azure."""

    def __init__(self, p: Pipeline, values: dict[str, str], work_dir: Path) -> None:
        self.p = p
        self.values = values
        self.work_dir = work_dir
        self.port = free_port()
        self.hosts: list[Host] = []
        self.subscription = Subscription(
            name=f"ingest-{p.settings.training_container}",
            container=p.settings.training_container,
            endpoint=self.webhook(),
            dead_letter_container=f"deadletter-{p.settings.training_container}",
            retry_schedule=TEST_RETRY_SCHEDULE,
        )
        self.grid = EventGridStandIn(p.stack.connection_string, [self.subscription], poll_interval=0.2)

    def webhook(self, function: str = "Host.Functions.ingest") -> str:
        return (
            f"http://127.0.0.1:{self.port}/runtime/webhooks/blobs?functionName={function}"
            f"&code={BLOBS_EXTENSION_KEY}"
        )

    def __call__(self) -> Host:
        host = Host(self.work_dir / "host", self.values, self.port)
        self.hosts.append(host)
        return host

    def redeliver(self, names: list[str], times: int = 2) -> None:
        """Deliver each blob's BlobCreated event again, `times` times and all at once: what Event
        Grid's at-least-once delivery may do. Each delivery must be answered 202."""
        service = BlobServiceClient.from_connection_string(self.p.stack.connection_string)
        events = []
        for name in names:
            props = self.p.container.get_blob_client(name).get_blob_properties()
            events.append(
                blob_created_event(
                    topic=self.grid.topic,
                    blob_endpoint=service.url,
                    container=self.subscription.container,
                    blob=props,
                    sequencer=1,
                )
            )
        headers = {"aeg-event-type": "Notification", "Content-Type": "application/json"}

        def post(event: dict) -> int:
            return requests.post(self.webhook(), json=[event], headers=headers, timeout=60).status_code

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(post, events * times))
        assert statuses == [202] * len(statuses), statuses


@pytest.fixture
def hosted(local_stack, tmp_path: Path) -> Iterator[tuple[Pipeline, Hosted]]:
    yield from host_pipeline(local_stack, tmp_path)


def host_pipeline(local_stack: Any, tmp_path: Path, **overrides: str) -> Iterator[tuple[Pipeline, Hosted]]:
    """An isolated pipeline served by local Functions hosts (``overrides``: app settings, e.g.
    COMPUTE_BACKEND)."""
    local_stack.ensure("azurite", "files", "arm")
    tag = os.urandom(4).hex()
    p = Pipeline(
        local_stack,
        TRAINING_CONTAINER=f"training-{tag}",
        MONITOR_SCHEDULE="*/2 * * * * *",
        CALLBACK_SIGNING_SECRET=SIGNING_SECRET,
        CALLBACK_ALLOW_LOOPBACK_HTTP="true",
        **overrides,
    )
    p.container.create_container()
    saved = p.arm("/_emulator/settings")
    p.arm(
        "/_emulator/settings", "POST", {"provisioning_delay": 1.0, "operation_delay": 0.1, "retry_after": 0}
    )
    values = {
        **p.values,
        "FUNCTIONS_KEY": "pipeline-test-key",
        "FUNCTIONS_BLOBS_EXTENSION_KEY": BLOBS_EXTENSION_KEY,
        "AzureWebJobs.cleanup.Disabled": "true",
    }
    hosted = Hosted(p, values, tmp_path)
    hosted.grid.start()
    try:
        yield p, hosted
    finally:
        hosted.grid.stop()
        for host in hosted.hosts:
            host.stop()
        p.arm(
            "/_emulator/settings",
            "POST",
            {k: saved[k] for k in saved if k in ("provisioning_delay", "operation_delay", "retry_after")},
        )


def wait_runs(
    p: Pipeline, dataset: str, until: Callable[[list[RunRecord]], bool], timeout: float = 120
) -> list[RunRecord]:
    deadline = time.monotonic() + timeout
    while True:
        runs = [p.registry.get(r.run_id) for r in p.registry.iter_runs(dataset=dataset)]
        if runs and until(runs):
            return runs
        if time.monotonic() > deadline:
            raise AssertionError([(r.run_id, r.state, r.errors) for r in runs])
        time.sleep(0.5)


def done(runs: list[RunRecord]) -> bool:
    return all(r.state in TERMINAL_STATES and not r.callback_pending for r in runs)


def test_quickstart_through_the_functions_host(hosted) -> None:
    p, make_host = hosted
    receiver = Receiver()
    host = make_host().start()
    manifest = {
        **QUICKSTART_MANIFEST,
        "callback_url": receiver.url,
        "secret_environment_variables": {"API_TOKEN": RUN_SECRET},
    }
    names = p.upload("mnist", QUICKSTART_FILES, manifest)
    (rec,) = wait_runs(p, "mnist", done)
    assert rec.state == "succeeded", rec.errors
    assert list(rec.times)[:1] == ["staging"] and {"running", "succeeded"} <= set(rec.times)
    assert {"queued", "provisioning"} & set(rec.times)
    wanted = {("stdouterr", "stdout.txt"), ("stdouterr", "stderr.txt"), ("MODEL", "ConvNet_MNIST.model")}
    assert wanted <= {(o.directory_id, o.name.rsplit("/", 1)[-1]) for o in rec.output_files}
    assert all(o.download_url is None for o in rec.output_files)  # signed links are not kept
    listed = monitor.collect_outputs(p.services, rec, p.services.cloud.job_names(rec.run_id, rec.dataset))
    fresh = {(o.directory_id, o.name.rsplit("/", 1)[-1]): o for o in listed}
    for key in sorted(wanted):
        assert requests.get(fresh[key].download_url, timeout=10).status_code == 200, key
    assert "test accuracy" in rec.stdout_tail
    job = p.services.cloud.compute.get_job(rec.experiment, rec.job_name)
    assert job.cntk_settings.python_script_file_path == "$AZ_BATCHAI_INPUT_SAMPLE/ConvNet_MNIST.py"
    assert (
        job.container_settings.image_source_registry.image
        == "microsoft/cntk:2.1-gpu-python3.5-cuda8.0-cudnn6.0"
    )
    assert job.node_count == 1 and job.input_directories[0].id == "SAMPLE"
    # The callback came, signed with the run's own secret, over its URL and delivery id.
    headers, body = receiver.received[0]
    run_secret = callbacks.run_secret(SIGNING_SECRET, rec.callback_seal["salt"])
    assert verify(body, headers[SIGNATURE_HEADER], run_secret, url=receiver.url)
    assert not verify(body, headers[SIGNATURE_HEADER], SIGNING_SECRET, url=receiver.url)
    assert json.loads(body)["state"] == "succeeded" and json.loads(body)["id"] == rec.run_id
    assert {o["name"] for o in json.loads(body)["output_files"]} == {o.name for o in rec.output_files}
    assert b"sig=" not in body  # no signed download link leaves in a callback

    # Every event delivered again, twice and concurrently (Event Grid delivers at least once; the
    # host keeps no receipts in this mode), and the host restarted in between. One run, one job.
    # (test_pipeline replays every trigger 10 times in process, through the same ingest_blob.)
    make_host.redeliver(names)
    host.stop()
    host = make_host().start()
    make_host.redeliver(names)
    # the log is appended to: the first delivery and four more of each event
    assert host.log().count("Executed 'Functions.ingest' (Succeeded") == 5 * len(names)
    time.sleep(3)  # at least one more monitor pass
    runs = [p.registry.get(r.run_id) for r in p.registry.iter_runs(dataset="mnist")]
    assert [(r.run_id, r.state, r.times) for r in runs] == [(rec.run_id, "succeeded", rec.times)]
    assert len(p.services.cloud.list_jobs(rec.experiment)) == 1
    assert len(receiver.received) == 1

    # No secret in the logs or the record.
    host.stop()
    text = host.log()
    for secret in (
        *p.stack.secrets.account_keys.values(),
        p.stack.arm_token,
        SIGNING_SECRET,
        RUN_SECRET,
        "sig=",
    ):
        assert secret not in text, secret
    assert RUN_SECRET not in json.dumps(rec.to_dict())


def test_host_killed_mid_staging_then_restarted(hosted) -> None:
    p, make_host = hosted
    big = {**QUICKSTART_FILES, **{f"extra/part-{i}.bin": os.urandom(256 * 1024) for i in range(8)}}
    manifest = {"files": sorted(big)}
    host = make_host().start()
    p.upload("killed", big, manifest)
    wait_runs(p, "killed", lambda runs: any(r.staged_files for r in runs), timeout=60)
    host.kill()  # mid-staging: some blobs staged, others not yet
    staging = [r for r in p.registry.iter_runs(dataset="killed")]
    assert [r.state for r in staging] == ["staging"]
    make_host().start()
    (rec,) = wait_runs(p, "killed", done)
    assert rec.state == "succeeded", rec.errors
    assert {f.name for f in rec.staged_files} == set(big)


def test_twenty_datasets_dropped_at_once_through_the_host(hosted) -> None:
    p, make_host = hosted
    make_host().start()
    datasets = [f"drop-{i:02d}" for i in range(20)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda ds: p.upload(ds, QUICKSTART_FILES, QUICKSTART_MANIFEST), datasets))
    deadline = time.monotonic() + 180
    while True:
        runs = list(p.registry.iter_runs())
        if len(runs) >= 20 and done(runs):
            break
        assert time.monotonic() < deadline, sorted((r.dataset, r.state) for r in runs)
        time.sleep(1)
    assert sorted(r.dataset for r in runs) == datasets  # none lost, none duplicated
    assert all(r.state == "succeeded" for r in runs), [(r.dataset, r.errors) for r in runs if r.errors]


def test_http_start_from_the_dataset_folder_leaves_no_stray_run(hosted) -> None:
    """Blobs dropped into a dataset's folder fire the trigger; a run then started on that folder
    (what POST /api/runs with stage_from_prefix does) is the dataset's one run: the trigger's
    invocations join it, none is left staging until the staging timeout."""
    from shared.run_starts import start_run

    p, make_host = hosted
    make_host().start()
    names = p.upload("folder", QUICKSTART_FILES)
    wait_runs(p, "folder", lambda runs: any(r.staged_files for r in runs), timeout=60)
    rec = start_run("folder", QUICKSTART_MANIFEST, stage_from_prefix="folder", svc=p.services)
    (finished,) = wait_runs(p, "folder", done)
    assert finished.run_id == rec.run_id and finished.state == "succeeded", finished.errors
    assert finished.source == "api" and {f.name for f in finished.staged_files} == set(QUICKSTART_FILES)
    # Every event delivered again, twice and concurrently: still the one run.
    make_host.redeliver(names)
    runs = [p.registry.get(r.run_id) for r in p.registry.iter_runs(dataset="folder")]
    assert [(r.run_id, r.state) for r in runs] == [(rec.run_id, "succeeded")]


# Names an attacker would try, each in a dataset of its own (what the blob service keeps of it may
# differ: Azurite turns backslashes into slashes).
HOSTILE_BLOBS = {
    "evil-backslash": "evil-backslash/..\\..\\outside.txt",
    "evil-pct": "evil-pct/%2e%2e/%2e%2e/outside.txt",
    "evil-chars": 'evil-chars/a<b>:c|d?*".txt',
    "evil-long": "evil-long/" + "n" * (1024 - len("evil-long/")),
    "evil-tab": "evil-tab/tab\there.txt",
    "evil-ctl": "evil-ctl/bell\x07and\x01.txt",  # Azurite cannot list it: its event is delivered by hand
}


def test_hostile_blob_names_in_a_burst_of_good_datasets(hosted) -> None:
    """The attacker's test: hostile names mixed into good datasets that sort before and after them.
    Every good dataset trains, every hostile one fails promptly naming its blob, and nothing is
    written outside a dataset's directory."""
    p, make_host = hosted
    make_host().start()
    good = ["aaa-good", "aab-good", "zzy-good", "zzz-good"]
    odd_but_valid = "Ã©\ufffd-looks-like-mojibake.txt"  # Azure Files accepts it: it is staged

    def upload_good(ds: str) -> None:
        files = {**QUICKSTART_FILES, odd_but_valid: b"odd"}
        p.upload(ds, files, {"files": sorted(files)})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        jobs = [pool.submit(upload_good, ds) for ds in good]
        jobs += [pool.submit(p.container.upload_blob, name, b"x") for name in HOSTILE_BLOBS.values()]
        for job in jobs:
            job.result()
    # In Azure, Event Grid sees the Put Blob of a name with control characters; the stand-in, which
    # lists, cannot (Azurite fails such listings), so its event is delivered as Event Grid would.
    make_host.redeliver([HOSTILE_BLOBS["evil-ctl"]], times=1)
    stored = {ds: HOSTILE_BLOBS[ds] for ds in ("evil-ctl",)}
    for top in p.container.walk_blobs():
        if top.name.startswith("evil") and top.name != "evil-ctl/":
            stored.update({b.name.split("/", 1)[0]: b.name for b in p.container.list_blobs(top.name)})
    deadline = time.monotonic() + 180
    while True:
        runs = [p.registry.get(r.run_id) for r in p.registry.iter_runs()]
        by_dataset = {r.dataset: r for r in runs}
        if set(by_dataset) >= set(good) | set(HOSTILE_BLOBS) and done(runs):
            break
        assert time.monotonic() < deadline, sorted((r.dataset, r.state, r.callback_pending) for r in runs)
        time.sleep(1)
    assert len(runs) == len(good) + len(HOSTILE_BLOBS), sorted((r.dataset, r.state) for r in runs)
    for ds in good:
        rec = by_dataset[ds]
        assert rec.state == "succeeded", (ds, rec.errors)
        assert odd_but_valid in {f.name for f in rec.staged_files}
    for ds in HOSTILE_BLOBS:
        rec = by_dataset[ds]
        assert rec.state == "failed", (ds, rec.state)
        (error,) = rec.errors
        assert error["code"] == "InvalidBlobName" and error["blob"] == stored[ds], error
        assert repr(stored[ds])[:60].strip("'") in error["message"], error["message"][:200]
    # Nothing outside a dataset's directory: the share holds the good datasets' files (and the jobs'
    # outputs, under the subscription's folder, where Batch AI writes them) only, and no file named
    # outside.txt exists anywhere in the emulators' data.
    share = p.share_root
    top = {path.relative_to(share).parts[0] for path in share.rglob("*")}
    assert top <= {*good, SNAPSHOT_ROOT, DEV_SUBSCRIPTION}, top
    snapshots = {path.name for path in (share / SNAPSHOT_ROOT).iterdir()}
    assert snapshots <= {by_dataset[ds].run_id for ds in good}, snapshots
    assert not list(Path(p.stack.data_dir).rglob("outside.txt"))


def test_duplicate_and_out_of_order_deliveries_make_one_run_and_one_job(hosted) -> None:
    """Event Grid delivers at least once and in no particular order: every event twice, all of them
    in reverse (the manifest first); then metadata-only changes, which fire nothing."""
    p, make_host = hosted
    host = make_host().start()
    make_host.grid.duplicate(4)
    make_host.grid.out_of_order(8)
    names = p.upload("dup", QUICKSTART_FILES, QUICKSTART_MANIFEST)
    (rec,) = wait_runs(p, "dup", done)
    assert rec.state == "succeeded", rec.errors
    assert len(p.services.cloud.list_jobs(rec.experiment)) == 1
    delivered = [a["subject"].split("/blobs/", 1)[1] for a in make_host.grid.attempts]
    assert sorted(delivered) == sorted(names * 2)  # each event twice
    assert delivered[0] == "dup/run.json"  # the held events went out last one first
    executed = host.log().count("Executed 'Functions.ingest'")
    for name in names:  # Set Blob Metadata is not a BlobCreated: nothing is delivered
        p.container.get_blob_client(name).set_blob_metadata({"reviewed": "yes"})
    time.sleep(1.5)
    assert make_host.grid.idle() and len(make_host.grid.attempts) == len(names) * 2
    assert host.log().count("Executed 'Functions.ingest'") == executed
    runs = [p.registry.get(r.run_id) for r in p.registry.iter_runs(dataset="dup")]
    assert [(r.run_id, r.state) for r in runs] == [(rec.run_id, "succeeded")]


def test_blobs_present_before_the_subscription_are_started_over_http(hosted) -> None:
    """Event Grid never delivers what happened before its subscription existed: a folder uploaded
    earlier trains only when POST /api/runs stages it (stage_from_prefix), as docs/api.md says."""
    p, make_host = hosted
    host = make_host().start()
    make_host.grid.unsubscribe(make_host.subscription.name)
    p.upload("early", QUICKSTART_FILES, QUICKSTART_MANIFEST)
    make_host.grid.subscribe(make_host.subscription)
    time.sleep(1.5)
    assert make_host.grid.idle() and not list(make_host.grid.attempts)
    assert not list(p.registry.iter_runs(dataset="early"))
    response = requests.post(
        f"http://127.0.0.1:{host.port}/api/runs",
        json={"dataset": "early", "stage_from_prefix": "early", "spec": QUICKSTART_MANIFEST},
        headers={"x-functions-key": "pipeline-test-key"},
        timeout=60,
    )
    assert response.status_code == 202, response.text
    (rec,) = wait_runs(p, "early", done)
    assert rec.state == "succeeded" and rec.source == "api", rec.errors


def test_http_start_of_a_dataset_too_large_for_the_http_cutoff_answers_at_once(hosted) -> None:
    """Azure's front end cuts an HTTP response off after 230 s (here 2 s): staging a folder inside
    the request would be cut off for a large dataset. The start answers at once with the run in
    staging; the queue-triggered stage function stages it, and it trains."""
    p, make_host = hosted
    make_host.values["FUNCHOST_HTTP_RESPONSE_LIMIT"] = "2"
    host = make_host().start()
    files = {**QUICKSTART_FILES, **{f"shards/part-{i:03d}.bin": os.urandom(4096) for i in range(120)}}
    make_host.grid.unsubscribe(make_host.subscription.name)  # only the HTTP start stages it
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: p.container.upload_blob(f"big/{item[0]}", item[1]), files.items()))
    started = time.monotonic()
    response = requests.post(
        f"http://127.0.0.1:{host.port}/api/runs",
        json={"dataset": "big", "stage_from_prefix": "big", "spec": QUICKSTART_MANIFEST},
        headers={"x-functions-key": "pipeline-test-key"},
        timeout=60,
    )
    answered = time.monotonic() - started
    assert response.status_code == 202, (response.status_code, response.text[:300])
    assert response.json()["state"] == "staging" and answered < 2
    (rec,) = wait_runs(p, "big", done, timeout=180)
    assert rec.state == "succeeded", rec.errors
    assert {f.name for f in rec.staged_files} == set(files)
    assert "Executed 'Functions.stage' (Succeeded" in host.log()
