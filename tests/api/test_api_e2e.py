"""The runs API end to end: real HTTP to the local Functions host running function_app.py, which talks
to Azurite, the Files emulator and the ARM emulator through the real Azure SDKs."""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

import pytest
import requests
from azure.core.exceptions import ResourceExistsError

from infra.local.waiting import wait_for
from shared.run_states import TERMINAL_STATES
from tests.api.stackapp import TRAIN_PY, TRAIN_SPEC, Api, stage_dataset

pytestmark = pytest.mark.e2e

TERMINAL = TERMINAL_STATES


def run_state(api: Api, run_id: str) -> str:
    response = api.get(f"/runs/{run_id}")
    assert response.status_code == 200, response.text
    return response.json()["state"]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# --- health, documents, keys ------------------------------------------------------------------------


def test_health_is_liveness_anonymous_and_checks_behind_the_key(api: Api) -> None:
    live = requests.get(f"{api.base}/health", timeout=30)
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    assert requests.get(f"{api.base}/health/deep", timeout=30).status_code == 401
    response = api.get("/health/deep")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert {"settings", "storage", "arm", "batchai"} <= set(body["checks"])
    assert all(check["ok"] for check in body["checks"].values())
    for name in (api.settings.resource_group, api.settings.location, "devstoreaccount1", "127.0.0.1"):
        assert name not in live.text and name not in response.text


def test_a_flood_of_health_requests_costs_the_cached_probes_and_runs_keep_moving(api: Api) -> None:
    """Anonymous and keyed health requests in a tight loop while a run trains: the run finishes, and
    the ARM emulator saw at most one deep probe (one Usages_List) per cache period."""
    import threading

    dataset = unique("api-flood")
    stage_dataset(api.stack, dataset)
    arm = api.stack.arm_endpoint
    since = requests.get(f"{arm}/_emulator/requests?since=999999999999", timeout=10).json()["last_seq"]
    started = time.monotonic()
    stop = threading.Event()
    answered = {"health": 0, "health/deep": 0}
    lock = threading.Lock()

    def flood(route: str) -> None:
        with requests.Session() as session:
            while not stop.is_set():
                response = session.get(
                    f"{api.base}/{route}", headers={"x-functions-key": api.key}, timeout=60
                )
                assert response.status_code in (200, 503)
                with lock:
                    answered[route] += 1

    threads = [threading.Thread(target=flood, args=(r,)) for r in ("health", "health", "health/deep")]
    for thread in threads:
        thread.start()
    try:
        start = api.post("/runs", json={"dataset": dataset, "spec": dict(TRAIN_SPEC)})
        assert start.status_code == 202, start.text
        run_id = start.json()["id"]
        state = wait_for(
            lambda: (s := run_state(api, run_id)) in TERMINAL and s, 90, 0.5, what="the run to finish"
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert state == "succeeded"
    elapsed = time.monotonic() - started
    logged = requests.get(f"{arm}/_emulator/requests?since={since}", timeout=10).json()["requests"]
    probes = [r for r in logged if r["operation"] == "Usages_List"]
    assert len(probes) <= 1 + int(elapsed // 30), (len(probes), elapsed, answered)
    assert answered["health"] >= 20 and answered["health/deep"] >= 10, answered


def test_openapi_is_anonymous_and_names_this_server(api: Api) -> None:
    response = requests.get(f"{api.base}/openapi.json", timeout=30)
    assert response.status_code == 200
    assert response.json()["servers"] == [{"url": api.base}]


def test_function_key_is_required(api: Api) -> None:
    assert requests.get(f"{api.base}/runs", timeout=30).status_code == 401
    assert requests.get(f"{api.base}/runs", params={"code": "wrong"}, timeout=30).status_code == 401
    assert requests.get(f"{api.base}/runs", params={"code": api.key}, timeout=30).status_code == 200


# --- every error status -----------------------------------------------------------------------------


def error(response: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    return body["error"]


def test_error_statuses_over_http(api: Api) -> None:
    json_headers = {"Content-Type": "application/json"}
    error(api.post("/runs", data=b"{not json", headers=json_headers), 400, "InvalidJson")
    invalid = error(
        api.post("/runs", json={"dataset": "mnist", "spec": {"node_count": 0}}), 400, "InvalidRequest"
    )
    assert [d["field"] for d in invalid["details"]] == ["spec.node_count"]
    error(api.get("/runs/20990101-000000-deadbeef"), 404, "RunNotFound")
    error(api.get("/runs/20990101-000000-deadbeef/logs"), 404, "RunNotFound")
    error(api.delete("/runs/20990101-000000-deadbeef"), 404, "RunNotFound")
    error(api.delete("/clusters/no-such-cluster"), 404, "ClusterNotFound")
    not_allowed = api.put("/runs", json={})
    error(not_allowed, 405, "MethodNotAllowed")
    assert not_allowed.headers["Allow"] == "GET, POST"
    error(
        api.post("/runs", data=b"{" + b" " * (1024 * 1024) + b"}", headers=json_headers),
        413,
        "PayloadTooLarge",
    )
    error(
        api.post("/runs", data=b"dataset=mnist", headers={"Content-Type": "text/plain"}),
        415,
        "UnsupportedMediaType",
    )
    refused = error(
        api.post("/runs", json={"dataset": "mnist", "spec": {"callback_url": "https://169.254.169.254/x"}}),
        400,
        "InvalidRequest",
    )
    assert refused["details"][0]["field"] == "spec.callback_url"
    error(api.get("/runs", params={"state": "sleeping"}), 400, "InvalidRequest")
    error(api.get("/runs", params={"continuation": "not-a-token"}), 400, "InvalidRequest")
    missing = api.post("/runs", json={"dataset": unique("nowhere")})
    assert "not on the file share" in error(missing, 422, "DatasetNotStaged")["message"]
    # Refused before anything was created: no run record to point at, no cluster requested.
    assert "Location" not in missing.headers
    empty = api.post(
        "/runs", json={"dataset": unique("nothing"), "stage_from_prefix": unique("no-such-folder")}
    )
    error(empty, 422, "NothingToStage")
    assert "Location" not in empty.headers


# --- a run started over HTTP ----------------------------------------------------------------------


def test_http_started_run_on_a_staged_dataset_with_idempotency_key(api: Api) -> None:
    dataset = unique("api-quick")
    stage_dataset(api.stack, dataset)
    body = {"dataset": dataset, "spec": dict(TRAIN_SPEC)}
    key = {"Idempotency-Key": uuid.uuid4().hex}

    first = api.post("/runs", json=body, headers=key)
    assert first.status_code == 202, first.text
    run = first.json()
    assert first.headers["Location"] == f"{api.base}/runs/{run['id']}"
    assert run["dataset"] == dataset and run["source"] == "api"
    assert run["spec"]["script"] == "train.py" and run["spec"]["image"].startswith("microsoft/cntk")

    again = api.post("/runs", json=body, headers=key)
    assert again.status_code == 202 and again.json()["id"] == run["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    changed = api.post("/runs", json={**body, "spec": {**TRAIN_SPEC, "node_count": 2}}, headers=key)
    error(changed, 422, "IdempotencyKeyReused")
    listed = api.get("/runs", params={"dataset": dataset}).json()["runs"]
    assert [r["id"] for r in listed] == [run["id"]]

    state = wait_for(
        lambda: (s := run_state(api, run["id"])) in TERMINAL and s, 90, 0.5, what="the run to finish"
    )
    assert state == "succeeded"
    record = api.get(f"/runs/{run['id']}").json()
    assert record["exit_code"] == 0 and record["output_urls_fresh"] is True
    names = {(o["directory_id"], o["name"]) for o in record["output_files"]}
    assert {("stdouterr", "stdout.txt"), ("stdouterr", "stderr.txt")} <= names
    model = next(o for o in record["output_files"] if o["name"] == "model.txt")
    assert requests.get(model["download_url"], timeout=30).content == b"weights"

    logs = api.get(f"/runs/{run['id']}/logs", params={"tail": "2"}).json()
    assert logs["source"] == "job" and logs["stdout"].splitlines() == ["epoch 2", "done"]

    by_state = api.get("/runs", params={"state": "succeeded", "dataset": dataset}).json()["runs"]
    assert [r["id"] for r in by_state] == [run["id"]]


def test_list_pages_with_continuation(api: Api) -> None:
    seen: list[str] = []
    token = None
    for _ in range(50):
        params = {"limit": "1", **({"continuation": token} if token else {})}
        page = api.get("/runs", params=params).json()
        assert len(page["runs"]) <= 1
        seen += [r["id"] for r in page["runs"]]
        token = page["continuation"]
        if not token:
            break
    everything = [r["id"] for r in api.get("/runs", params={"limit": "1000"}).json()["runs"]]
    assert seen == everything


# --- teardown and clusters ------------------------------------------------------------------------------


def start_long_run(api: Api, prefix: str) -> dict[str, Any]:
    dataset = unique(prefix)
    stage_dataset(api.stack, dataset)
    spec = {**TRAIN_SPEC, "environment_variables": {"TRAIN_SECONDS": "120"}}
    response = api.post("/runs", json={"dataset": dataset, "spec": spec})
    assert response.status_code == 202, response.text
    run = response.json()
    wait_for(lambda: run_state(api, run["id"]) == "running", 90, 0.5, what="the job to run")
    return api.get(f"/runs/{run['id']}").json()


def test_teardown_of_a_running_job_and_cluster_delete_refused_while_in_use(api: Api) -> None:
    run = start_long_run(api, "api-teardown")
    cluster = run["cluster"]
    clusters = {c["name"]: c for c in api.get("/clusters").json()["clusters"]}
    assert clusters[cluster]["active_runs"] == [run["id"]]
    # In use: its node is held and it is not idle.
    assert clusters[cluster]["nodes"] == 1
    assert clusters[cluster]["idle_minutes"] is None and clusters[cluster]["idle_since"] is None

    refused = error(api.delete(f"/clusters/{cluster}"), 409, "ClusterInUse")
    assert run["id"] in refused["message"]

    torn = api.delete(f"/runs/{run['id']}", params={"cluster": "true"})
    assert torn.status_code == 200, torn.text
    assert torn.json()["state"] == "cancelled"
    assert torn.json()["job_deleted"] is True and torn.json()["cluster_deleted"] is True
    batchai = api.stack_batchai()
    wait_for(
        lambda: (
            run["job_name"]
            not in {j.name for j in batchai.jobs.list_by_experiment(*api.rg_ws, run["experiment"])}
        ),
        30,
        0.5,
        what="the job to be gone",
    )
    wait_for(
        lambda: cluster not in {c.name for c in batchai.clusters.list_by_workspace(*api.rg_ws)},
        30,
        0.5,
        what="the cluster to be deleted",
    )
    again = api.delete(f"/runs/{run['id']}")
    assert again.status_code == 200 and again.json()["state"] == "cancelled"


def test_forced_cluster_delete_cancels_its_runs(api: Api) -> None:
    run = start_long_run(api, "api-force")
    response = api.delete(f"/clusters/{run['cluster']}", params={"force": "true"})
    assert response.status_code == 202, response.text
    assert response.json()["cancelled_runs"] == [run["id"]]
    assert run_state(api, run["id"]) == "cancelled"


def test_run_staged_from_a_blob_prefix(api: Api) -> None:
    from azure.storage.blob import ContainerClient

    uploads = unique("api-uploads")  # blobs as a client drops them: <folder>/<path>, no run.json
    container = ContainerClient.from_connection_string(
        api.stack.connection_string, api.settings.training_container
    )
    with contextlib.suppress(ResourceExistsError):
        container.create_container()
    container.upload_blob(f"{uploads}/train.py", TRAIN_PY)
    container.upload_blob(f"{uploads}/data/part-0.txt", b"1 2 3\n")
    dataset = unique("api-prefix")
    response = api.post(
        "/runs", json={"dataset": dataset, "stage_from_prefix": uploads + "/", "spec": TRAIN_SPEC}
    )
    assert response.status_code == 202, response.text
    assert response.json()["stage_from_prefix"] == uploads  # staged out of band (the stage function)
    wait_for(lambda: run_state(api, response.json()["id"]) != "staging", 60, 0.5, what="the run to be staged")
    run = api.get(f"/runs/{response.json()['id']}").json()
    assert {f["name"] for f in run["staged_files"]} == {"train.py", "data/part-0.txt"}
    state = wait_for(
        lambda: (s := run_state(api, run["id"])) in TERMINAL and s, 90, 0.5, what="the run to finish"
    )
    assert state == "succeeded"
    # The blob trigger also saw the uploads (Event Grid delivered them), as a dataset of their own:
    # its invocations joined the run (or replayed it) and made no run for the folder.
    deliveries = f"http://127.0.0.1:{api.stack.ports.eventgrid}/_emulator/deliveries"

    def delivered() -> int:
        attempts = requests.get(deliveries, timeout=10).json()["attempts"]
        return sum(1 for a in attempts if f"/blobs/{uploads}/" in a["subject"] and a["status"] == 202)

    wait_for(lambda: delivered() == 2, 30, 0.5, what="the trigger's invocations for the uploads")
    # None trained on the folder as a dataset of its own: a run the trigger made for it before the
    # start claimed the folder (a delivery can win that race) was cancelled as superseded.
    stray = api.get("/runs", params={"dataset": uploads}).json()["runs"]
    assert all(r["state"] == "cancelled" for r in stray), stray
    for r in stray:
        record = api.get(f"/runs/{r['id']}").json()
        assert [e["code"] for e in record["errors"]] == ["Superseded"] and not record.get("job_name"), record


def test_metrics_of_a_run_over_http(api: Api) -> None:
    dataset = unique("api-metrics")
    script = (
        b'import json\nfor e in (1, 2):\n    print(json.dumps({"epoch": e, "loss": 1 / e}), flush=True)\n'
    )
    stage_dataset(api.stack, dataset, {"train.py": script})
    response = api.post("/runs", json={"dataset": dataset, "spec": dict(TRAIN_SPEC)})
    assert response.status_code == 202, response.text
    run = response.json()
    assert api.get(f"/runs/{run['id']}/metrics").json() == {
        "id": run["id"],
        "state": run["state"],
        "metrics": {},
    }
    wait_for(lambda: run_state(api, run["id"]) in TERMINAL, 90, 0.5, what="the run to finish")
    body = api.get(f"/runs/{run['id']}/metrics").json()
    assert body["state"] == "succeeded"
    assert [(p["x"], p["value"]) for p in body["metrics"]["loss"]] == [(1, 1.0), (2, 0.5)]
    assert body["metrics"]["loss"][-1]["time"].endswith("Z")
    record = api.get(f"/runs/{run['id']}").json()
    assert record["metrics"] == {"loss": body["metrics"]["loss"][-1]}
    listed = api.get("/runs", params={"dataset": dataset}).json()["runs"]
    assert listed[0]["metrics"]["loss"]["value"] == 0.5
    error(api.get("/runs/no-such-run/metrics"), 404, "RunNotFound")


def test_callback_secret_once_url_redacted_and_delivery_signed_over_the_full_url(api: Api) -> None:
    """A run started over HTTP with a callback whose query carries a token: the 202 gives the run's
    own secret (never again in GET); the record, its spec and the run list show the query redacted,
    and the registry's row holds neither the token nor the secret; the callback goes to the full
    URL, signed with that run's secret over that URL and a delivery id."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from azure.data.tables import TableClient

    from shared.callbacks import SIGNATURE_HEADER, verify

    received: list[tuple[str, dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, dict(self.headers), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = uuid.uuid4().hex
    url = f"http://127.0.0.1:{server.server_address[1]}/hook?token={token}"
    try:
        dataset = unique("api-cb")
        stage_dataset(api.stack, dataset)
        started = api.post("/runs", json={"dataset": dataset, "spec": {**TRAIN_SPEC, "callback_url": url}})
        assert started.status_code == 202, started.text
        run = started.json()
        secret = run["callback_secret"]
        assert len(secret) == 64 and token not in started.text
        redacted = url.replace(token, "REDACTED")
        assert run["callback_url"] == redacted and run["spec"]["callback_url"] == redacted
        record = api.get(f"/runs/{run['id']}")
        assert token not in record.text and secret not in record.text and "callback_seal" not in record.text
        assert token not in api.get("/runs", params={"dataset": dataset}).text
        table = TableClient.from_connection_string(api.stack.connection_string, api.settings.runs_table)
        rows = json.dumps(list(table.query_entities(f"PartitionKey eq '{run['id']}'")), default=str)
        assert token not in rows and secret not in rows

        wait_for(lambda: received, 90, 0.5, what="the callback")
    finally:
        server.shutdown()
        server.server_close()
    path, headers, body = received[0]
    assert path == f"/hook?token={token}"
    assert json.loads(body)["id"] == run["id"]
    delivery_id = verify(body, headers[SIGNATURE_HEADER], secret, url=url)
    assert delivery_id and delivery_id == headers["X-Callback-Delivery"]
    assert not verify(body, headers[SIGNATURE_HEADER], secret, url=redacted)


def test_an_uploaded_runs_callback_secret_is_issued_once(api: Api) -> None:
    """A run started by an upload has no caller to answer: its callback secret is issued once by
    POST /runs/{id}/callback-secret (then 409), and its callback verifies with it. An HTTP-started
    run had it in its 202: the route refuses it."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from azure.storage.blob import ContainerClient

    from shared.callbacks import SIGNATURE_HEADER, verify

    received: list[tuple[dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook?k=v"
    try:
        container = ContainerClient.from_connection_string(
            api.stack.connection_string, api.settings.training_container
        )
        with contextlib.suppress(ResourceExistsError):
            container.create_container()
        dataset = unique("api-upcb")
        container.upload_blob(f"{dataset}/train.py", TRAIN_PY)
        manifest = {**TRAIN_SPEC, "files": ["train.py"], "callback_url": url}
        container.upload_blob(f"{dataset}/run.json", json.dumps(manifest).encode())

        def manifest_taken() -> str | None:
            # The run exists from the first upload on; its callback once it has taken run.json.
            runs = api.get("/runs", params={"dataset": dataset}).json()["runs"]
            return next(
                (r["id"] for r in runs if api.get(f"/runs/{r['id']}").json().get("callback_url")), None
            )

        run_id = wait_for(manifest_taken, 60.0, 0.5, what="the upload's run with its manifest taken")
        issued = api.post(f"/runs/{run_id}/callback-secret")
        assert issued.status_code == 200, issued.text
        secret = issued.json()["callback_secret"]
        error(api.post(f"/runs/{run_id}/callback-secret"), 409, "CallbackSecretIssued")
        wait_for(lambda: received, 90, 0.5, what="the callback")
        headers, body = received[0]
        assert json.loads(body)["id"] == run_id
        assert verify(body, headers[SIGNATURE_HEADER], secret, url=url)

        other = unique("api-httpcb")
        stage_dataset(api.stack, other)
        started = api.post("/runs", json={"dataset": other, "spec": {**TRAIN_SPEC, "callback_url": url}})
        assert started.status_code == 202 and started.json()["callback_secret"]
        error(api.post(f"/runs/{started.json()['id']}/callback-secret"), 409, "CallbackSecretIssued")
        plain = api.post("/runs", json={"dataset": other, "spec": dict(TRAIN_SPEC)})
        error(api.post(f"/runs/{plain.json()['id']}/callback-secret"), 409, "NoCallbackSecret")
    finally:
        server.shutdown()
        server.server_close()
