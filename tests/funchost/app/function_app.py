"""Test app of the local Functions host: every trigger kind it runs. Each invocation appends a JSON
line to `<FUNCHOST_TEST_RECORD_DIR>/<function>.jsonl`, so tests can observe what ran and when."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from pathlib import Path

import azure.functions as func
from azure.storage.blob import BlobClient

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


def record(function: str, **fields: object) -> None:
    directory = Path(os.environ["FUNCHOST_TEST_RECORD_DIR"])
    directory.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"function": function, "pid": os.getpid(), "at": time.time(), **fields})
    with open(directory / f"{function}.jsonl", "a", encoding="utf-8") as out:
        out.write(line + "\n")


def json_response(data: object, status: int = 200) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(data), status_code=status, mimetype="application/json")


# --- HTTP ----------------------------------------------------------------------------------------
@app.route(route="items/{id:int}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def item_by_id(req: func.HttpRequest) -> func.HttpResponse:
    return json_response({"by": "id", "params": dict(req.route_params)})


@app.route(route="items/{name:alpha}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def item_by_name(req: func.HttpRequest) -> func.HttpResponse:
    return json_response({"by": "name", "params": dict(req.route_params)})


@app.route(route="keys/{key:guid}/{part?}", methods=["GET", "DELETE"], auth_level=func.AuthLevel.ANONYMOUS)
def by_key(req: func.HttpRequest) -> func.HttpResponse:
    return json_response({"method": req.method, "params": dict(req.route_params)})


@app.route(route="echo", methods=["POST", "PUT"], auth_level=func.AuthLevel.ANONYMOUS)
def echo(req: func.HttpRequest) -> func.HttpResponse:
    body = req.get_body()
    response = json_response(
        {
            "method": req.method,
            "url": req.url,
            "query": dict(req.params),
            "x_test": req.headers.get("x-test"),
            "length": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
        },
        status=201,
    )
    response.headers.add_header("Set-Cookie", "a=1")
    response.headers.add_header("Set-Cookie", "b=2")
    response.headers["X-Handler"] = "echo"
    return response


@app.route(route="secure", methods=["GET"])
def secure(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("secret")


@app.route(route="admin/ping", auth_level=func.AuthLevel.ADMIN)
def admin_ping(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("pong")


@app.route(route="boom", auth_level=func.AuthLevel.ANONYMOUS)
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("boom-marker: this text must only reach the log")


@app.route(route="async/{n:int}", auth_level=func.AuthLevel.ANONYMOUS)
async def async_double(req: func.HttpRequest) -> func.HttpResponse:
    await asyncio.sleep(0.01)
    return json_response({"double": int(req.route_params["n"]) * 2})


@app.route(route="sleep/{seconds}", auth_level=func.AuthLevel.ANONYMOUS)
def sleepy(req: func.HttpRequest) -> func.HttpResponse:
    seconds = float(req.route_params["seconds"])
    time.sleep(seconds)
    record("sleepy", seconds=seconds)
    return func.HttpResponse(f"slept {seconds}")


@app.route(route="plain", auth_level=func.AuthLevel.ANONYMOUS)
def plain(req: func.HttpRequest) -> str:
    return "just a string"


# --- Blob ---------------------------------------------------------------------------------------
def record_blob(function: str, blob: func.InputStream, context: func.Context) -> None:
    began = time.time()
    digest = hashlib.sha256()
    reads = 0
    while chunk := blob.read(256 * 1024):
        digest.update(chunk)
        reads += 1
    props = blob.blob_properties or {}
    if blob.metadata and blob.metadata.get("sleep"):
        time.sleep(float(blob.metadata["sleep"]))
    record(
        function, name=blob.name, length=blob.length, uri=blob.uri, sha256=digest.hexdigest(), reads=reads,
        etag=props.get("ETag"), metadata=blob.metadata, invocation_id=context.invocation_id,
        began=began, ended=time.time(),
    )  # fmt: skip


@app.function_name("ingest")
@app.blob_trigger(
    arg_name="blob", path="%TEST_BLOB_CONTAINER%/{dataset}/{file}", connection="AzureWebJobsStorage"
)
def ingest(blob: func.InputStream, context: func.Context) -> None:
    """Polling mode (no source): scans, receipts, poison queue."""
    record_blob("ingest", blob, context)


@app.function_name("eg_ingest")
@app.blob_trigger(
    arg_name="blob", path="%TEST_EG_CONTAINER%/{dataset}/{file}", connection="AzureWebJobsStorage",
    source=func.BlobSource.EVENT_GRID,
)  # fmt: skip
def eg_ingest(blob: func.InputStream, context: func.Context) -> None:
    """Event Grid source: fed by /runtime/webhooks/blobs; fails for blobs whose metadata says so."""
    if blob.metadata and blob.metadata.get("fail"):
        record("eg_ingest_failed", name=blob.name)
        raise ValueError(f"told to fail on {blob.name}")
    record_blob("eg_ingest", blob, context)


@app.blob_trigger(arg_name="blob", path="%TEST_FAIL_CONTAINER%/{name}", connection="AzureWebJobsStorage")
def always_fails(blob: func.InputStream) -> None:
    record("always_fails", name=blob.name)
    raise ValueError(f"cannot handle {blob.name}")


@app.blob_trigger(arg_name="client", path="%TEST_CLIENT_CONTAINER%/{name}", connection="AzureWebJobsStorage")
def client_binding(client: BlobClient) -> None:
    record("client_binding", blob=client.blob_name, size=client.get_blob_properties().size)


# --- Queue ---------------------------------------------------------------------------------------
@app.queue_trigger(arg_name="msg", queue_name="%TEST_QUEUE%", connection="AzureWebJobsStorage")
def work(msg: func.QueueMessage) -> None:
    body = msg.get_body().decode()
    record("work", body=body, dequeue_count=msg.dequeue_count, id=msg.id)
    if body.startswith("fail"):
        raise ValueError(f"told to fail: {body}")


# --- Timer ---------------------------------------------------------------------------------------
@app.timer_trigger(schedule="%TICK_SCHEDULE%", arg_name="timer", use_monitor=True)
def tick(timer: func.TimerRequest) -> None:
    record("tick", past_due=timer.past_due, status=timer.schedule_status)


@app.timer_trigger(schedule="%SLOW_SCHEDULE%", arg_name="timer", run_on_startup=True)
def slow(timer: func.TimerRequest) -> None:
    start = time.time()
    time.sleep(float(os.environ.get("SLOW_SECONDS", "2")))
    record("slow", start=start, end=time.time())
