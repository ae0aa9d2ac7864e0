"""Blob triggers with `source=EventGrid`: the host's /runtime/webhooks/blobs endpoint as Azure serves
it, fed by hand and by the local stack's Event Grid stand-in (retries, dead-lettering, faults)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import pytest
import requests
from azure.storage.blob import BlobServiceClient

from infra.local.eventgrid import EventGridStandIn, Subscription
from infra.local.eventgrid.models import blob_created_event

from .conftest import HostProcess, only

pytestmark = pytest.mark.e2e

KEY = "test-blobs-extension-key"
FAST = (0.2, 0.3)  # Event Grid's schedule starts at 10 s; the tests' subscriptions retry sooner


@pytest.fixture
def storage(local_stack) -> str:
    return local_stack.ensure("azurite").connection_string


def settings(storage: str) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {
        "TEST_EG_CONTAINER": f"eg-{tag}",
        "TEST_BLOB_CONTAINER": f"data-{tag}",
        "AzureFunctionsWebHost__hostid": f"test-{tag}",
        "AzureWebJobsStorage": storage,
        **only("eg_ingest", "ingest"),
    }


def webhook(host: HostProcess, function: str = "Host.Functions.eg_ingest", code: str = KEY) -> str:
    return f"{host.url}/runtime/webhooks/blobs?functionName={function}&code={code}"


def event_for(service: BlobServiceClient, container: str, name: str) -> dict:
    props = service.get_blob_client(container, name).get_blob_properties()
    props.name = name
    return blob_created_event(
        topic="/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/storageAccounts/devstoreaccount1",
        blob_endpoint=service.url,
        container=container,
        blob=props,
        sequencer=1,
    )


NOTIFY = {"aeg-event-type": "Notification", "Content-Type": "application/json"}


def test_webhook_answers_as_azure_and_runs_once_per_delivery(
    storage: str, host_factory: Callable[..., HostProcess]
) -> None:
    values = settings(storage)
    container = values["TEST_EG_CONTAINER"]
    service = BlobServiceClient.from_connection_string(storage)
    service.create_container(container)
    host = host_factory(values).start()
    name = "ds/a file #1 %2e.txt"
    service.get_blob_client(container, name).upload_blob(b"hello")
    event = event_for(service, container, name)
    body = json.dumps([event])

    assert (
        requests.post(webhook(host, code="wrong"), data=body, headers=NOTIFY, timeout=10).status_code == 401
    )
    unknown = requests.post(webhook(host, "Host.Functions.nope"), data=body, headers=NOTIFY, timeout=10)
    assert (unknown.status_code, unknown.text) == (404, "cannot find function: 'Host.Functions.nope'")
    polling = requests.post(webhook(host, "Host.Functions.ingest"), data=body, headers=NOTIFY, timeout=10)
    assert polling.status_code == 404  # a trigger without source=EventGrid has no webhook
    handshake = requests.post(
        webhook(host),
        json=[
            {
                "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
                "data": {"validationCode": "c0de"},
            }
        ],
        headers={"aeg-event-type": "SubscriptionValidation"},
        timeout=10,
    )
    assert handshake.status_code == 200 and handshake.json() == {"validationResponse": "c0de"}
    assert requests.post(webhook(host), data="{not json", headers=NOTIFY, timeout=10).status_code == 400

    # The same event twice: two invocations (no receipt, no ETag check in this mode).
    for _ in range(2):
        assert requests.post(webhook(host), data=body, headers=NOTIFY, timeout=30).status_code == 202
    records = host.records("eg_ingest")
    assert [r["name"] for r in records] == [f"{container}/{name}"] * 2
    assert records[0]["length"] == 5 and records[0]["etag"] == f'"{event["data"]["eTag"]}"'
    hosts = service.get_container_client("azure-webjobs-hosts")
    receipts = [b.name for b in hosts.list_blobs()] if hosts.exists() else []
    assert not [r for r in receipts if "eg_ingest" in r]
    # Nothing is scanned: a blob with no event never runs.
    service.get_blob_client(container, "ds/unannounced.txt").upload_blob(b"x")
    time.sleep(1.0)
    assert len(host.records("eg_ingest")) == 2
    # A failing invocation is a 500 (Event Grid retries it).
    service.get_blob_client(container, "ds/bad.txt").upload_blob(b"x", metadata={"fail": "1"})
    failing = json.dumps([event_for(service, container, "ds/bad.txt")])
    assert requests.post(webhook(host), data=failing, headers=NOTIFY, timeout=30).status_code == 500
    assert host.stop() == 0


def test_stand_in_delivers_created_blobs_only_and_retries_then_dead_letters(
    storage: str, host_factory: Callable[..., HostProcess]
) -> None:
    values = settings(storage)
    container = values["TEST_EG_CONTAINER"]
    service = BlobServiceClient.from_connection_string(storage)
    service.create_container(container)
    service.get_blob_client(container, "old/before.txt").upload_blob(b"existed before the subscription")
    host = host_factory(values).start()
    dead_letters = f"dl-{uuid.uuid4().hex[:8]}"
    subscription = Subscription(
        name=f"ingest-{container}", container=container, endpoint=webhook(host),
        max_delivery_attempts=3, dead_letter_container=dead_letters, retry_schedule=FAST,
    )  # fmt: skip
    with EventGridStandIn(storage, [subscription], poll_interval=0.2) as grid:
        blob = service.get_blob_client(container, "ds/new.txt")
        blob.upload_blob(b"one")
        host.wait_for(lambda: len(host.records("eg_ingest")) == 1, what="the first delivery")
        blob.set_blob_metadata({"only": "metadata"})  # not a BlobCreated
        time.sleep(1.0)
        assert grid.idle() and len(host.records("eg_ingest")) == 1
        blob.upload_blob(b"two!", overwrite=True)  # new content: created again
        host.wait_for(lambda: len(host.records("eg_ingest")) == 2, what="the second delivery")
        assert [r["length"] for r in host.records("eg_ingest")] == [3, 4]
        assert all("old/before.txt" not in r["name"] for r in host.records("eg_ingest"))

        # Duplicate and out-of-order delivery.
        grid.duplicate(1)
        service.get_blob_client(container, "ds/twice.txt").upload_blob(b"2")
        host.wait_for(lambda: len(host.records("eg_ingest")) == 4, what="the duplicate")
        grid.out_of_order(2)
        service.get_blob_client(container, "ds/first.txt").upload_blob(b"a")
        host.wait_for(lambda: grid.held() == 1, what="the held event")
        service.get_blob_client(container, "ds/second.txt").upload_blob(b"b")
        host.wait_for(lambda: len(host.records("eg_ingest")) == 6, what="the reordered pair")
        subjects = [a["subject"].rsplit("/", 1)[-1] for a in grid.attempts]
        assert subjects.index("second.txt") < subjects.index("first.txt")

        # A handler that keeps failing: tried max_delivery_attempts times, then dead-lettered.
        service.get_blob_client(container, "ds/bad.txt").upload_blob(b"x", metadata={"fail": "1"})
        dl = service.get_container_client(dead_letters)
        letters = host.wait_for(lambda: dl.exists() and list(dl.list_blobs()), what="the dead letter")
        (letter,) = letters
        parts = letter.name.split("/")
        assert parts[0] == subscription.name.upper() and parts[-1].endswith(".json") and len(parts) == 6
        (record,) = json.loads(dl.download_blob(letter.name).readall())
        assert record["deadLetterReason"] == "MaxDeliveryAttemptsExceeded"
        assert record["deliveryAttempts"] == 3 and record["lastHttpStatusCode"] == 500
        assert record["subject"] == f"/blobServices/default/containers/{container}/blobs/ds/bad.txt"
        assert len(host.records("eg_ingest_failed")) == 3
    assert host.stop() == 0
