"""Listing a blob container so that one unlistable name costs only its own folder.

Azurite answers 500 to any listing that holds a name with a control character (Azure encodes such
names in the XML; Azurite does not): a flat listing of the container would then fail for every
blob. Both the local Functions host's blob scan and the Event Grid stand-in list through here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.blob import BlobPrefix, BlobProperties


def list_blobs_isolated(
    container: Any,
    prefix: str,
    on_unlisted: Callable[[str, Exception], None],
    *,
    depth: int = 0,
) -> list[BlobProperties]:
    """Every blob under `prefix` (with metadata). A listing the service cannot answer is narrowed
    folder by folder (`/` delimiter); a folder that cannot be listed at all is reported to
    `on_unlisted(prefix, error)` and skipped. Only the container itself failing raises (storage
    down), as does a missing container (ResourceNotFoundError)."""
    try:
        # No retries: a failing listing falls back to narrower ones at once (the SDK's default
        # retries of a 500 take about a minute).
        return list(
            container.list_blobs(name_starts_with=prefix or None, include=["metadata"], retry_total=0)
        )
    except ResourceNotFoundError:
        raise
    except HttpResponseError as exc:
        failure: Exception = exc
    narrow = {} if depth == 0 else {"retry_total": 0}  # the container itself: retried as usual
    try:
        items = list(
            container.walk_blobs(
                name_starts_with=prefix or None, include=["metadata"], delimiter="/", **narrow
            )
        )
    except HttpResponseError:
        if depth == 0:
            raise
        on_unlisted(prefix, failure)
        return []
    blobs: list[BlobProperties] = []
    for item in items:
        if isinstance(item, BlobPrefix):
            if item.name != prefix:
                blobs.extend(list_blobs_isolated(container, item.name, on_unlisted, depth=depth + 1))
        else:
            blobs.append(item)
    return blobs


def blob_type(blob: Any) -> str | None:
    """A listed blob's type as text (``BlockBlob``...): the SDK gives an enum or a plain string."""
    value = blob.blob_type
    return None if value is None else str(getattr(value, "value", value))
