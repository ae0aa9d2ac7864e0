"""The backend: watch subscribed containers in Azurite, publish `BlobCreated` events, push them to
webhooks on Event Grid's retry schedule, dead-letter what cannot be delivered.

Where events come from: Azurite has no change feed, so each subscribed container is listed every
`poll_interval` seconds and compared with the last listing. A blob is *created* when its name is
new, or when its content changed: creation time (Put Blob resets it), size, MD5 or blob type. A
metadata- or properties-only change (Set Blob Metadata, Set Blob Properties) changes the ETag but
none of those, and fires nothing, as in Azure where only `BlobCreated` is subscribed. Blobs present
when a subscription is created are its baseline: never delivered (Event Grid does not deliver what
happened before a subscription existed). One limit of the listing: a blob rewritten with identical
bytes within the same second (creation time has one-second resolution) is not seen as created.

Faults (like the ARM emulator's): `duplicate(n)` delivers each of the next n events twice (same
event id, as Event Grid's at-least-once duplicates are); `out_of_order(n)` holds the next n events
and delivers them in reverse order. Every delivery attempt is kept in `attempts` (in the order
of sending) for tests.
"""

from __future__ import annotations

import contextlib
import heapq
import http
import itertools
import json
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import requests
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

from ..listing import list_blobs_isolated
from .models import NOT_RETRIED, Delivery, Subscription, blob_created_event, utc_iso

log = logging.getLogger("eventgrid")

Fingerprint = tuple[Any, ...]
HOLD_SECONDS = 2.0  # an out-of-order hold releases what it has after this long


def fingerprint(blob: Any) -> Fingerprint:
    """What changes when a blob's content is written, and not when only its metadata is."""
    md5 = blob.content_settings.content_md5
    return (blob.creation_time, blob.size, bytes(md5) if md5 else None, str(blob.blob_type))


class EventGridStandIn:
    """Publisher and delivery engine for webhook subscriptions to one storage account's blobs."""

    def __init__(
        self,
        connection_string: str,
        subscriptions: list[Subscription] | tuple[Subscription, ...] = (),
        *,
        poll_interval: float = 0.5,
        topic: str | None = None,
        workers: int = 8,
    ) -> None:
        self.service = BlobServiceClient.from_connection_string(connection_string)
        self.poll_interval = poll_interval
        self.topic = topic or (
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/local/providers/"
            f"Microsoft.Storage/storageAccounts/{self.service.account_name}"
        )
        self.workers = workers
        self.subscriptions: dict[str, Subscription] = {}
        self._seen: dict[str, dict[str, Fingerprint]] = {}  # subscription -> blob name -> fingerprint
        self._unlisted: dict[tuple[str, str], str] = {}
        self._lock = threading.Condition()
        self._queue: list[tuple[float, int, Delivery]] = []  # heap by due time
        self._order = itertools.count()
        self._sequencer = itertools.count(1)
        self._duplicate = 0
        self._reorder = 0
        self._held: list[Delivery] = []
        self._held_since = 0.0
        self._inflight = 0
        self.attempts: deque[dict[str, Any]] = deque(maxlen=10000)
        self.dead_lettered: deque[dict[str, Any]] = deque(maxlen=10000)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pool: ThreadPoolExecutor | None = None
        self._http = requests.Session()
        for subscription in subscriptions:
            self.subscribe(subscription)

    # --- subscriptions ---------------------------------------------------------------------------
    def subscribe(self, subscription: Subscription) -> None:
        """Create (or replace) a subscription; what its container holds now is never delivered."""
        baseline = {b.name: fingerprint(b) for b in self._list(subscription)}
        with self._lock:
            self.subscriptions[subscription.name] = subscription
            self._seen[subscription.name] = baseline

    def unsubscribe(self, name: str) -> None:
        with self._lock:
            self.subscriptions.pop(name, None)
            self._seen.pop(name, None)

    # --- faults ----------------------------------------------------------------------------------
    def duplicate(self, count: int) -> None:
        """Deliver each of the next `count` events twice."""
        with self._lock:
            self._duplicate = count

    def out_of_order(self, count: int) -> None:
        """Hold the next `count` events and deliver them in reverse order."""
        with self._lock:
            self._reorder = count

    def clear_faults(self) -> None:
        with self._lock:
            self._duplicate = self._reorder = 0
            self._release_held()

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> EventGridStandIn:
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="eventgrid-delivery")
        for target, name in ((self._watch, "eventgrid-watch"), (self._dispatch, "eventgrid-dispatch")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> EventGridStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def held(self) -> int:
        """Events an out-of-order fault holds back now."""
        with self._lock:
            return len(self._held)

    def idle(self) -> bool:
        """No delivery pending, held or running (tests wait for this)."""
        with self._lock:
            return not self._queue and not self._held and self._inflight == 0

    # --- publishing ------------------------------------------------------------------------------
    def _list(self, subscription: Subscription) -> list[Any]:
        container = self.service.get_container_client(subscription.container)

        def unlisted(prefix: str, exc: Exception) -> None:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if self._unlisted.get((subscription.name, prefix)) != message:
                log.warning(
                    "blobs under %s/%s cannot be listed (%s): no events for them; the rest is watched",
                    subscription.container, prefix, message,
                )  # fmt: skip
            self._unlisted[(subscription.name, prefix)] = message

        try:
            return list_blobs_isolated(container, "", unlisted)
        except ResourceNotFoundError:
            return []

    def poll_once(self) -> int:
        """Compare each subscription's container with its last listing; publish what was created.
        Returns the number of events published."""
        published = 0
        for subscription in list(self.subscriptions.values()):
            try:
                blobs = self._list(subscription)
            except Exception as exc:  # storage unreachable: try again next interval
                log.warning("listing %s failed: %s", subscription.container, exc)
                continue
            with self._lock:
                seen = self._seen.get(subscription.name)
                if seen is None:
                    continue
                current = {}
                for blob in blobs:
                    mark = fingerprint(blob)
                    current[blob.name] = mark
                    if seen.get(blob.name) != mark:
                        self._publish(subscription, blob)
                        published += 1
                self._seen[subscription.name] = current
        return published

    def _publish(self, subscription: Subscription, blob: Any) -> None:
        """Queue one event for one subscription (lock held), applying the faults."""
        event = blob_created_event(
            topic=self.topic,
            blob_endpoint=self.service.url,
            container=subscription.container,
            blob=blob,
            sequencer=next(self._sequencer),
        )
        if event["eventType"] not in subscription.included_event_types:
            return
        now = time.monotonic()
        copies = 1
        if self._duplicate > 0:
            self._duplicate -= 1
            copies = 2
        for _ in range(copies):
            delivery = Delivery(event, subscription, published=now, published_at=utc_iso(), due=now)
            if self._reorder > 0:
                self._reorder -= 1
                if not self._held:
                    self._held_since = now
                self._held.append(delivery)
                if self._reorder == 0:
                    self._release_held()
            else:
                self._push(delivery)

    def _release_held(self) -> None:
        for delivery in reversed(self._held):
            delivery.due = time.monotonic()  # due now, in this order (not by publication time)
            self._push(delivery)
        self._held = []

    def _push(self, delivery: Delivery) -> None:
        heapq.heappush(self._queue, (delivery.due, next(self._order), delivery))
        self._lock.notify_all()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:
                log.exception("event publication pass failed")
            with self._lock:
                if self._held and time.monotonic() - self._held_since > HOLD_SECONDS:
                    self._reorder = 0
                    self._release_held()
            self._stop.wait(self.poll_interval)

    # --- delivery --------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                while not self._stop.is_set():
                    now = time.monotonic()
                    if self._queue and self._queue[0][0] <= now:
                        break
                    timeout = self._queue[0][0] - now if self._queue else 0.5
                    self._lock.wait(min(timeout, 0.5))
                if self._stop.is_set():
                    return
                _, _, delivery = heapq.heappop(self._queue)
                self._inflight += 1
                delivery.attempts += 1
                attempt: dict[str, Any] = {
                    "subscription": delivery.subscription.name,
                    "id": delivery.event["id"],
                    "subject": delivery.event["subject"],
                    "attempt": delivery.attempts,
                    "status": None,  # filled in when answered: `attempts` is in the order of sending
                    "outcome": None,
                }
                self.attempts.append(attempt)
            assert self._pool is not None
            self._pool.submit(self._attempt, delivery, attempt)

    def _attempt(self, delivery: Delivery, attempt: dict[str, Any]) -> None:
        try:
            self._deliver(delivery, attempt)
        except Exception:
            log.exception("delivery of event %s failed unexpectedly", delivery.event["id"])
        finally:
            with self._lock:
                self._inflight -= 1
                self._lock.notify_all()

    def _deliver(self, delivery: Delivery, attempt: dict[str, Any]) -> None:
        sub = delivery.subscription
        headers = {
            "Content-Type": "application/json",
            "aeg-event-type": "Notification",
            "aeg-subscription-name": sub.name.upper(),
            "aeg-delivery-count": str(delivery.attempts - 1),  # tries before this one
            "aeg-data-version": delivery.event["dataVersion"],
            "aeg-metadata-version": delivery.event["metadataVersion"],
        }
        delivery.last_attempt_at = utc_iso()
        status: int | None = None
        try:
            response = self._http.post(
                sub.endpoint, data=json.dumps([delivery.event]), headers=headers, timeout=sub.response_timeout
            )
            status = response.status_code
            outcome = "Succeeded" if 200 <= status <= 204 else _phrase(status)
        except requests.Timeout:
            outcome = "TimedOut"
        except requests.RequestException:
            outcome = "GenericError"
        delivery.last_status, delivery.last_outcome = status, outcome
        attempt.update(status=status, outcome=outcome)
        if outcome == "Succeeded":
            return
        expired = time.monotonic() - delivery.published > sub.event_ttl_minutes * 60
        if status in NOT_RETRIED:
            self._dead_letter(delivery, "NonRetriableStatusCode")
        elif delivery.attempts >= sub.max_delivery_attempts:
            self._dead_letter(delivery, "MaxDeliveryAttemptsExceeded")
        elif expired:
            self._dead_letter(delivery, "TimeToLiveExceeded")
        else:
            log.info(
                "event %s (%s) to %s: %s; retry %d in %.0fs",
                delivery.event["id"], delivery.event["subject"], sub.name, outcome,
                delivery.attempts + 1, sub.retry_delay(delivery.attempts),
            )  # fmt: skip
            with self._lock:
                delivery.due = time.monotonic() + sub.retry_delay(delivery.attempts)
                self._push(delivery)

    def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Write the event, with why and how often it failed, where Event Grid writes it:
        `<container>/<SUBSCRIPTION>/<yyyy>/<m>/<d>/<h>/<event id>.json` (hour and date unpadded)."""
        sub = delivery.subscription
        record = {
            **delivery.event,
            "deadLetterReason": reason,
            "deliveryAttempts": delivery.attempts,
            "lastDeliveryOutcome": delivery.last_outcome,
            "lastHttpStatusCode": delivery.last_status,
            "publishTime": delivery.published_at,
            "lastDeliveryAttemptTime": delivery.last_attempt_at,
        }
        self.dead_lettered.append(record)
        log.warning(
            "event %s (%s) to %s dead-lettered: %s after %d attempt(s), last %s",
            delivery.event["id"], delivery.event["subject"], sub.name, reason, delivery.attempts,
            delivery.last_outcome,
        )  # fmt: skip
        if not sub.dead_letter_container:
            return
        now = datetime.now(UTC)
        name = f"{sub.name.upper()}/{now.year}/{now.month}/{now.day}/{now.hour}/{delivery.event['id']}.json"
        container = self.service.get_container_client(sub.dead_letter_container)
        with contextlib.suppress(ResourceExistsError):
            container.create_container()
        container.upload_blob(name, json.dumps([record]), overwrite=True)


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase.replace(" ", "")
    except ValueError:
        return "GenericError"
