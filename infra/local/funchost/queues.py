"""Queue triggers with the Azure Storage queue extension's semantics.

Each trigger's queue is polled with the extension's backoff: at once after a batch, else doubling
from 100 ms up to `extensions.queues.maxPollingInterval` (1 min by default). A batch of up to
`batchSize` (16) messages is received invisible for 10 minutes while the handlers run (the real
host renews that lease; no local invocation outlives functionTimeout's default). A message the
handler completes is deleted. A failed one is made visible again after `visibilityTimeout`
(0 s by default) and tried again, its dequeue count rising; once the count reaches
`maxDequeueCount` (5) it moves to `<queue>-poison` (created when needed) with its content as is.
A message already dequeued more often than that (its host died mid-invocation) is poisoned before
it runs. Messages are base64 (`messageEncoding`, the default) or `none`; the handler gets
`func.QueueMessage` (id, body, dequeue_count, insertion/expiration times, pop_receipt), `str` or
`bytes` by its annotation.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.functions.queue import QueueMessage as FunctionQueueMessage
from azure.storage.queue import QueueClient, QueueMessage

from .app import FunctionSpec
from .blobs import connection_string
from .config import ConfigError, HostConfig
from .invoker import Invoker

log = logging.getLogger("funchost")

LEASE_SECONDS = 600  # invisible while being handled
MIN_POLL = 0.1


@dataclass
class QueueTrigger:
    spec: FunctionSpec
    queue: QueueClient
    poison: QueueClient


class QueueTriggers:
    """One poller thread per queue trigger; handlers run on a pool of `batchSize` threads each."""

    def __init__(self, config: HostConfig, specs: list[FunctionSpec], invoker: Invoker) -> None:
        self.config = config
        self.invoker = invoker
        self.max_dequeue = config.max_dequeue_count
        self.batch_size = min(32, config.queue_int("batchSize", 16))
        self.visibility_timeout = config.queue_seconds("visibilityTimeout", 0.0)
        self.max_poll = config.queue_seconds("maxPollingInterval", 60.0)
        encoding = str(config.host_value("extensions", "queues", "messageEncoding", default="base64")).lower()
        if encoding not in ("base64", "none"):
            raise ConfigError(
                f"host.json extensions.queues.messageEncoding must be base64 or none: {encoding}"
            )
        self.base64 = encoding == "base64"
        self.triggers: list[QueueTrigger] = []
        for spec in specs:
            if spec.trigger_type != "queueTrigger":
                continue
            name = config.resolve(str(spec.trigger.get("queueName", "")), f"function {spec.name}: queueName")
            if not name:
                raise ConfigError(f"function {spec.name}: queue trigger without queueName")
            conn = connection_string(config, spec.trigger.get("connection"), spec.name)
            self.triggers.append(
                QueueTrigger(
                    spec,
                    QueueClient.from_connection_string(conn, name),
                    QueueClient.from_connection_string(conn, f"{name}-poison"),
                )
            )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pool: ThreadPoolExecutor | None = None

    def start(self) -> None:
        if not self.triggers:
            return
        self._pool = ThreadPoolExecutor(self.batch_size * len(self.triggers), thread_name_prefix="queue")
        for trigger in self.triggers:
            thread = threading.Thread(target=self._poll, args=(trigger,), name=f"queue-{trigger.spec.name}")
            thread.daemon = True
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _poll(self, trigger: QueueTrigger) -> None:
        delay = MIN_POLL
        failing = False
        while not self._stop.is_set():
            try:
                got = self.poll_once(trigger)
                if failing:
                    log.info("queue %s works again", trigger.queue.queue_name)
                failing = False
            except Exception as exc:
                if not failing:
                    log.warning("polling queue %s failed: %s", trigger.queue.queue_name, exc)
                failing, got = True, 0
            delay = MIN_POLL if got else min(delay * 2, self.max_poll)
            self._stop.wait(0 if got else delay)

    def poll_once(self, trigger: QueueTrigger) -> int:
        """Receive one batch and run it; the number of messages received."""
        try:
            batch = list(
                trigger.queue.receive_messages(
                    messages_per_page=self.batch_size,
                    visibility_timeout=LEASE_SECONDS,
                    max_messages=self.batch_size,
                )
            )
        except ResourceNotFoundError:
            return 0  # the queue does not exist yet: nothing to do
        assert self._pool is not None
        futures = [self._pool.submit(self._process, trigger, message) for message in batch]
        for future in futures:
            future.result()
        return len(batch)

    def _process(self, trigger: QueueTrigger, message: QueueMessage) -> None:
        """One message: run, then delete; or on failure retry later / poison (never raises)."""
        try:
            if message.dequeue_count and message.dequeue_count > self.max_dequeue:
                self._poison(trigger, message)
                return
            try:
                try:
                    value = self._binding(trigger, message)
                except Exception as exc:
                    log.warning(
                        "message %s on %s cannot be bound: %s", message.id, trigger.queue.queue_name, exc
                    )
                    raise
                self.invoker.invoke(
                    trigger.spec,
                    value,
                    f"New queue message detected on '{trigger.queue.queue_name}'.",
                    {
                        "Id": message.id,
                        "DequeueCount": message.dequeue_count,
                        "PopReceipt": message.pop_receipt,
                    },
                )
            except Exception:  # logged (the binding's above, the handler's by the invoker)
                if (message.dequeue_count or 0) >= self.max_dequeue:
                    self._poison(trigger, message)
                else:
                    trigger.queue.update_message(message, visibility_timeout=int(self.visibility_timeout))
                return
            trigger.queue.delete_message(message)
        except Exception as exc:  # storage trouble: the lease runs out and the message comes back
            log.warning("queue message %s on %s not settled: %s", message.id, trigger.queue.queue_name, exc)

    def _poison(self, trigger: QueueTrigger, message: QueueMessage) -> None:
        with contextlib.suppress(ResourceExistsError):
            trigger.poison.create_queue()
        trigger.poison.send_message(message.content)
        trigger.queue.delete_message(message)
        log.error(
            "Message %s has a dequeue count of %s; moved to poison queue '%s'",
            message.id, message.dequeue_count, trigger.poison.queue_name,
        )  # fmt: skip

    def _body(self, message: QueueMessage) -> bytes:
        content = message.content if isinstance(message.content, str) else str(message.content)
        if self.base64:
            try:
                return base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"queue message {message.id} is not base64 (messageEncoding)") from None
        return content.encode()

    def _binding(self, trigger: QueueTrigger, message: QueueMessage) -> Any:
        annotation = trigger.spec.annotation(str(trigger.spec.trigger.get("name")))
        body = self._body(message)
        if annotation is bytes:
            return body
        if annotation is str:
            return body.decode("utf-8")
        return FunctionQueueMessage(  # the worker's class, with dequeue count and times
            id=message.id,
            body=body,
            dequeue_count=message.dequeue_count,
            expiration_time=message.expires_on,
            insertion_time=message.inserted_on,
            time_next_visible=message.next_visible_on,
            pop_receipt=message.pop_receipt,
        )
