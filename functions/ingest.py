"""Ingest blob trigger on `training-data/{name}` (the TRAINING_CONTAINER setting): stage the blob and
move its dataset's run on.

Declared with the Event Grid source (what the Flex Consumption plan supports; the local host scans
the container instead). The handler never reads the blob: `shared.ingest` copies it server side.

Caveat for Azure: with the `InputStream` binding the Functions host ships the blob's bytes to the
worker even though the handler never reads them. The SDK-type binding (`azurefunctions-extensions-
bindings-blob`, `client: blob.BlobClient`) avoids that, at the price of importing azure-storage-blob
when function_app is imported; the local host supports both (it binds by the annotation's name).
"""

from __future__ import annotations

import logging

import azure.functions as func

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name("ingest")
@bp.blob_trigger(
    arg_name="blob",
    path="%TRAINING_CONTAINER%/{name}",  # training-data unless the setting says otherwise
    connection="STORAGE_CONNECTION_STRING",
    source=func.BlobSource.EVENT_GRID,
)
def ingest(blob: func.InputStream) -> None:
    """One uploaded or changed dataset blob (at least once per blob version)."""
    from shared.ingest import ingest_blob

    container, _, name = (blob.name or "").partition("/")
    result = ingest_blob(name)
    log.info(
        "ingest %s/%s: %s (run %s, state %s%s)",
        container,
        name,
        result.action,
        result.run_id,
        result.state,
        ", job submitted" if result.submitted else "",
        extra={"run_id": result.run_id, "state": result.state},
    )
