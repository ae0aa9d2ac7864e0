"""Ingest blob trigger on `training-data/{name}` (the TRAINING_CONTAINER setting): stage the blob and
move its dataset's run on.

Declared with the Event Grid source (what the Flex Consumption plan supports; the local host scans
the container instead). The handler never reads the blob: `shared.ingest` copies it server side.

The trigger binds the SDK type `blob.BlobClient` (azurefunctions-extensions-bindings-blob), not
`func.InputStream`: with `InputStream` the Functions host in Azure reads the whole blob and ships its
bytes to the worker even though the handler never reads them (a multi-GiB dataset would exhaust the
instance's memory); with the SDK type the host sends only the blob's reference and the worker makes a
client from the STORAGE_CONNECTION_STRING setting. The handler uses only the client's blob name. The
price: the extension imports azure-storage-blob (and azure-identity) when function_app is imported.
The extension is imported at module level so the worker can resolve the annotation at indexing.
"""

from __future__ import annotations

import logging

import azure.functions as func
import azurefunctions.extensions.bindings.blob as blob

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name("ingest")
@bp.blob_trigger(
    arg_name="client",
    path="%TRAINING_CONTAINER%/{name}",  # training-data unless the setting says otherwise
    connection="STORAGE_CONNECTION_STRING",
    source=func.BlobSource.EVENT_GRID,
)
def ingest(client: blob.BlobClient) -> None:
    """One uploaded or changed dataset blob (at least once per blob version)."""
    from shared.ingest import ingest_blob

    container, name = client.container_name, client.blob_name
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
