"""Queue triggers against real Azurite: a message runs once and is deleted; a failing one comes back
after visibilityTimeout with a rising dequeue count and moves to `<queue>-poison` at maxDequeueCount."""

from __future__ import annotations

import base64
import itertools
import time
import uuid
from collections.abc import Callable

import pytest
from azure.storage.queue import QueueClient

from .conftest import HostProcess, only

pytestmark = pytest.mark.e2e


def test_queue_message_runs_retries_with_visibility_timeout_then_poison(
    local_stack, host_factory: Callable[..., HostProcess]
) -> None:
    storage = local_stack.ensure("azurite").connection_string
    name = f"work-{uuid.uuid4().hex[:8]}"
    settings = {
        **only("work"),
        "AzureWebJobsStorage": storage,
        "TEST_QUEUE": name,
        "AzureFunctionsJobHost__extensions__queues__maxDequeueCount": "3",
        "AzureFunctionsJobHost__extensions__queues__visibilityTimeout": "00:00:01",
        "AzureFunctionsJobHost__extensions__queues__maxPollingInterval": "00:00:01",
    }
    queue = QueueClient.from_connection_string(storage, name)
    queue.create_queue()
    host = host_factory(settings).start()
    queue.send_message(base64.b64encode(b"hello").decode())
    queue.send_message(base64.b64encode(b"fail please").decode())

    poison = QueueClient.from_connection_string(storage, f"{name}-poison")

    def poisoned() -> list[str]:
        try:
            return [m.content for m in poison.peek_messages(max_messages=32)]
        except Exception:
            return []

    assert host.wait_for(poisoned, timeout=30, what="the poison message") == [
        base64.b64encode(b"fail please").decode()
    ]
    records = host.records("work")
    ok = [r for r in records if r["body"] == "hello"]
    failed = [r for r in records if r["body"] == "fail please"]
    assert [r["dequeue_count"] for r in ok] == [1]
    assert [r["dequeue_count"] for r in failed] == [1, 2, 3]
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(failed)]
    assert all(gap >= 0.9 for gap in gaps), gaps  # invisible for visibilityTimeout between tries
    time.sleep(1.5)
    assert len(host.records("work")) == 4 and not list(queue.peek_messages())  # both settled
    assert host.stop() == 0
