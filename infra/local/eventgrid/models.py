"""Subscriptions, events and deliveries as Event Grid has them (the in-memory backend's data)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from ..listing import blob_type as listed_blob_type

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
# Event Grid's documented retry schedule (delivery-and-retry): after 10 s, 30 s, 1 min, 5 min,
# 10 min, 30 min, 1 h, 3 h, 6 h, then every 12 h up to the event's time to live.
EVENT_GRID_RETRY_SCHEDULE: tuple[float, ...] = (10, 30, 60, 300, 600, 1800, 3600, 10800, 21600, 43200)
# Webhook answers Event Grid does not retry: the event is dead-lettered (or dropped) at once.
NOT_RETRIED = frozenset({400, 401, 403, 413})
RESPONSE_TIMEOUT = 30.0  # seconds Event Grid waits for the endpoint's answer


@dataclass
class Subscription:
    """A system topic's event subscription: webhook destination, `subjectBeginsWith` filter on one
    container, retry policy and dead-letter container (what infra/azure/modules/ingest-events.bicep
    creates in Azure). `retry_schedule` and `response_timeout` are Event Grid's; tests shorten them."""

    name: str
    container: str
    endpoint: str
    included_event_types: tuple[str, ...] = (BLOB_CREATED,)
    max_delivery_attempts: int = 30
    event_ttl_minutes: int = 1440
    dead_letter_container: str | None = None
    retry_schedule: tuple[float, ...] = EVENT_GRID_RETRY_SCHEDULE
    response_timeout: float = RESPONSE_TIMEOUT

    def __post_init__(self) -> None:
        if not 1 <= self.max_delivery_attempts <= 30:
            raise ValueError(f"subscription {self.name}: max_delivery_attempts must be 1-30")
        if not 1 <= self.event_ttl_minutes <= 1440:
            raise ValueError(f"subscription {self.name}: event_ttl_minutes must be 1-1440")
        if not self.retry_schedule:
            raise ValueError(f"subscription {self.name}: retry_schedule must not be empty")

    @property
    def subject_begins_with(self) -> str:
        return f"/blobServices/default/containers/{self.container}/"

    def retry_delay(self, attempts: int) -> float:
        """Seconds before the next try after `attempts` failed ones."""
        return self.retry_schedule[min(attempts, len(self.retry_schedule)) - 1]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Subscription:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("included_event_types", "retry_schedule"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["endpoint"] = self.endpoint.split("?", 1)[0]  # the query holds the key
        return data


def utc_iso(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).isoformat().replace("+00:00", "Z")


def blob_created_event(
    *,
    topic: str,
    blob_endpoint: str,
    container: str,
    blob: Any,
    sequencer: int,
) -> dict[str, Any]:
    """One `Microsoft.Storage.BlobCreated` event in the Event Grid schema, from listed blob
    properties. The blob's URL is percent-encoded, as the storage service writes it."""
    settings = blob.content_settings
    blob_type = listed_blob_type(blob) or "BlockBlob"
    return {
        "topic": topic,
        "subject": f"/blobServices/default/containers/{container}/blobs/{blob.name}",
        "eventType": BLOB_CREATED,
        "id": str(uuid.uuid4()),
        "data": {
            # Listings do not say which call wrote the blob: a single Put Blob stores an MD5.
            "api": "PutBlob" if settings.content_md5 else "PutBlockList",
            "clientRequestId": str(uuid.uuid4()),
            "requestId": str(uuid.uuid4()),
            "eTag": str(blob.etag).strip('"'),
            "contentType": settings.content_type or "application/octet-stream",
            "contentLength": blob.size,
            "blobType": blob_type,
            "url": f"{blob_endpoint.rstrip('/')}/{container}/{quote(blob.name, safe='/')}",
            "sequencer": f"{sequencer:032x}",
            "storageDiagnostics": {"batchId": str(uuid.uuid4())},
        },
        "dataVersion": "",
        "metadataVersion": "1",
        "eventTime": utc_iso(),
    }


@dataclass
class Delivery:
    """One event on its way to one subscription."""

    event: dict[str, Any]
    subscription: Subscription
    published: float  # monotonic
    published_at: str
    due: float  # monotonic time of the next try
    attempts: int = 0
    last_status: int | None = None
    last_outcome: str = ""
    last_attempt_at: str | None = None
    outcomes: list[dict[str, Any]] = field(default_factory=list)
