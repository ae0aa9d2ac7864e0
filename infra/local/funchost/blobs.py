"""Blob triggers: poll each trigger's container, detect new and changed blobs by ETag, keep blob
receipts and poison messages where the real host keeps them, bound concurrency by
`extensions.blobs.maxDegreeOfParallelism`.

Layout kept from the WebJobs SDK (BlobListenerFactory, BlobReceiptManager, BlobTriggerMessage):
- in the host's account (AzureWebJobsStorage, else the trigger's), the receipt
  `azure-webjobs-hosts/blobreceipts/<hostId>/<functionId>/<"etag">/<container>/<blob>`, with
  metadata `Incomplete` while the blob version is being handled;
- in the trigger's account, queue `webjobs-blobtrigger-poison`, a base64-encoded JSON message.
The real host completes the receipt once it has queued the blob for its workers; this host has no
internal queue, so it completes the receipt when the invocation ends (success or poison), and a host
killed mid-invocation runs that blob version again (at least once, as in Azure).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.functions.blob import InputStream as BlobsInputStream
from azure.storage.blob import (
    BlobClient,
    BlobProperties,
    BlobServiceClient,
    StorageStreamDownloader,
)

from ..listing import blob_type, list_blobs_isolated
from .app import FunctionSpec
from .config import STORAGE, ConfigError, HostConfig
from .invoker import Invoker

log = logging.getLogger("funchost")

HOSTS_CONTAINER = "azure-webjobs-hosts"
POISON_QUEUE = "webjobs-blobtrigger-poison"
INCOMPLETE_KEY = "Incomplete"  # BlobReceipt: the key's presence marks an unfinished receipt
_CHUNK = 4 * 1024 * 1024


def quoted_etag(etag: str) -> str:
    """ETags as the storage service sends them in headers (listings drop the quotes)."""
    return '"' + etag.strip('"') + '"'


MAX_BLOB_NAME = 1024  # Azure Storage's limit on a blob name, receipts included
_RECEIPT_SAFE = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=@ /-]*")


def receipt_blob_name(container: str, blob_name: str, prefix: str) -> str:
    """`<prefix><container>/<blob>`, the receipt's name, for every blob name storage accepts.

    A name that can go in a path as is (plain characters, no empty, `.` or `..` segment) keeps the
    real host's layout. Any other is percent-encoded (`%` itself included, so no encoded name equals
    a plain one, and `..` becomes `%2E%2E`: no server normalises it away); a receipt name that would
    still exceed storage's 1,024 characters uses `%sha256/<hex of the name>` (no encoded name holds
    `%s`). Without this a name such as `ds/../../x` made a receipt request signed for one path and
    served for another, and its AuthorizationFailure stopped the whole scan.
    """
    segments = blob_name.split("/")
    plain = _RECEIPT_SAFE.fullmatch(blob_name) and all(seg not in ("", ".", "..") for seg in segments)
    if plain:
        encoded = blob_name
    else:
        encoded = "/".join(
            "".join(f"%{b:02X}" for b in seg.encode()) if seg in ("", ".", "..") else quote(seg, safe="")
            for seg in segments
        )
    name = f"{prefix}{container}/{encoded}"
    if len(name) > MAX_BLOB_NAME:
        name = f"{prefix}{container}/%sha256/{hashlib.sha256(blob_name.encode()).hexdigest()}"
    return name


class EventError(ValueError):
    """An Event Grid event the blob extension cannot read (the webhook answers 400)."""


def blob_of_event(service_url: str, event: dict[str, Any]) -> tuple[str, str]:
    """(container, blob name) of a BlobCreated event, from `data.url` (percent-encoded as the
    storage service writes it; path-style on the local stack, host-style in Azure)."""
    data = event.get("data")
    url = data.get("url") if isinstance(data, dict) else None
    if not isinstance(url, str) or not url:
        raise EventError(f"event {event.get('id')!r} has no data.url")
    path = urlsplit(url).path
    account_path = urlsplit(service_url).path.rstrip("/")  # /devstoreaccount1 locally, else empty
    if account_path and path.startswith(account_path + "/"):
        path = path[len(account_path) :]
    container, _, raw_name = path.lstrip("/").partition("/")
    if not container or not raw_name:
        raise EventError(f"event {event.get('id')!r}: data.url {url!r} names no blob")
    return container, unquote(raw_name)


def connection_string(config: HostConfig, name: str | None, function: str) -> str:
    """The storage connection string a `connection` app setting name refers to."""
    name = name or STORAGE
    value = config.get(name) or config.get(f"AzureWebJobs{name}")
    if not value:
        raise ConfigError(f"function {function}: connection {name!r} names an app setting that is not set")
    return value


@dataclass
class BlobPath:
    """`container/pattern` of a blob trigger with `{param}` placeholders."""

    container: str
    prefix: str
    regex: re.Pattern[str]
    names: list[str]

    @classmethod
    def parse(cls, path: str, function: str) -> BlobPath:
        container, _, pattern = path.strip("/").partition("/")
        if not container or "{" in container:
            raise ConfigError(
                f"function {function}: blob trigger path {path!r} must start with a container name"
            )
        names: list[str] = []
        regex = ""
        for index, piece in enumerate(re.split(r"\{([^{}]*)\}", pattern)):
            if index % 2 == 0:
                regex += re.escape(piece)
            else:
                if not re.fullmatch(r"\w+", piece):
                    raise ConfigError(f"function {function}: blob path parameter {{{piece}}} is not valid")
                regex += f"(?P<{piece}>.+?)"
                names.append(piece)
        prefix = pattern.split("{", 1)[0]
        return cls(container, prefix, re.compile(regex + r"\Z" if pattern else r".+\Z", re.DOTALL), names)

    def match(self, blob_name: str) -> dict[str, str] | None:
        found = self.regex.match(blob_name)
        return found.groupdict() if found else None


class BlobInputStream(BlobsInputStream):
    """The worker's `InputStream` (name, uri, length, blob_properties, metadata), reading the blob
    lazily in 4 MiB ranges instead of holding it whole (the real class takes bytes)."""

    def __init__(self, client: BlobClient, properties: BlobProperties, container: str) -> None:
        self._client = client
        self._downloader: StorageStreamDownloader | None = None
        self._name = f"{container}/{properties.name}"
        self._uri = client.url
        self._length = properties.size
        self._metadata = dict(properties.metadata or {})
        self._blob_properties = {
            "BlobType": str(blob_type(properties)),
            "ContentMD5": base64.b64encode(properties.content_settings.content_md5).decode()
            if properties.content_settings.content_md5
            else None,
            "ContentType": properties.content_settings.content_type,
            "ContentEncoding": properties.content_settings.content_encoding,
            "ETag": quoted_etag(properties.etag),
            "LastModified": properties.last_modified.isoformat() if properties.last_modified else None,
            "Created": properties.creation_time.isoformat() if properties.creation_time else None,
            "Length": properties.size,
        }

    def read(self, size: int | None = -1) -> bytes:
        if self._downloader is None:
            self._downloader = self._client.download_blob()
        return self._downloader.read(-1 if size is None else size)

    read1 = read

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


@dataclass
class BlobTrigger:
    spec: FunctionSpec
    path: BlobPath
    service: BlobServiceClient  # the trigger's account: the blobs, the poison queue
    conn_str: str
    host_service: BlobServiceClient  # AzureWebJobsStorage: receipts

    @property
    def event_grid(self) -> bool:
        """`source=EventGrid`: fed by the blob webhook; no scan, no receipts, no ETag check."""
        return str(self.spec.trigger.get("source") or "").lower() == "eventgrid"


class BlobTriggers:
    """Poller thread plus a worker pool of maxDegreeOfParallelism threads for all blob triggers."""

    def __init__(self, config: HostConfig, specs: list[FunctionSpec], invoker: Invoker) -> None:
        self.config = config
        self.invoker = invoker
        self.interval = config.blob_poll_interval
        self.max_attempts = config.poison_blob_threshold
        self.triggers: list[BlobTrigger] = []
        for spec in specs:
            if spec.trigger_type != "blobTrigger":
                continue
            path = config.resolve(str(spec.trigger.get("path", "")), f"function {spec.name}: blob path")
            conn = connection_string(config, spec.trigger.get("connection"), spec.name)
            service = BlobServiceClient.from_connection_string(
                conn, max_single_get_size=_CHUNK, max_chunk_get_size=_CHUNK
            )
            host_conn = config.get(STORAGE)
            host_service = (
                BlobServiceClient.from_connection_string(host_conn)
                if host_conn and host_conn != conn
                else service
            )
            self.triggers.append(
                BlobTrigger(spec, BlobPath.parse(path, spec.name), service, conn, host_service)
            )
        self._done: dict[tuple[str, str], str] = {}  # (function, blob) -> etag handled
        self._failures: dict[tuple[tuple[str, str], str], int] = {}  # ((function, blob), etag) -> count
        self._listing_failures: dict[tuple[str, str], str] = {}  # (function, prefix) -> last error
        self._inflight: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(config.max_degree_of_parallelism)  # Event Grid ones
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    @property
    def polled(self) -> list[BlobTrigger]:
        return [t for t in self.triggers if not t.event_grid]

    def event_grid_trigger(self, function_id: str) -> BlobTrigger | None:
        """The Event Grid blob trigger the webhook's `functionName` (Host.Functions.<name>) names."""
        return next(
            (t for t in self.triggers if t.event_grid and t.spec.function_id.lower() == function_id.lower()),
            None,
        )

    def start(self) -> None:
        if not self.polled:
            return
        self._pool = ThreadPoolExecutor(self.config.max_degree_of_parallelism, thread_name_prefix="blob")
        self._thread = threading.Thread(target=self._poll, name="blob-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop scanning and taking new work; running invocations finish (the host waits for them)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)  # a scan stuck in storage retries must not hold up shutdown
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _poll(self) -> None:
        failing: dict[str, str] = {}
        while not self._stop.is_set():
            for trigger in self.polled:
                try:
                    self.scan(trigger)
                except Exception as exc:  # storage down: say so once, not every interval
                    if failing.get(trigger.spec.name) != str(exc):
                        log.warning(
                            "blob scan of %s for %s failed: %s",
                            trigger.path.container,
                            trigger.spec.name,
                            exc,
                        )
                    failing[trigger.spec.name] = str(exc)
                else:
                    if failing.pop(trigger.spec.name, None) is not None:
                        log.info(
                            "blob scan of %s for %s works again", trigger.path.container, trigger.spec.name
                        )
                if self._stop.is_set():
                    return
            self._stop.wait(self.interval)

    # --- scanning --------------------------------------------------------------------------------
    def scan(self, trigger: BlobTrigger) -> None:
        """One pass over the trigger's container. Each blob is handled on its own: an error on one
        (its receipt, its properties) is that blob's failure, counted towards its poison threshold,
        never the scan's; only a container that cannot be listed at all fails the scan."""
        container = trigger.service.get_container_client(trigger.path.container)
        try:
            blobs = list_blobs_isolated(
                container, trigger.path.prefix, lambda prefix, exc: self._listing_failed(trigger, prefix, exc)
            )
        except ResourceNotFoundError:
            return
        for blob in blobs:
            if self._stop.is_set() or self._pool is None:
                return
            try:
                self._consider(trigger, blob)
            except Exception as exc:
                self._blob_failed(trigger, blob, quoted_etag(blob.etag), exc)

    def _listing_failed(self, trigger: BlobTrigger, prefix: str, exc: Exception) -> None:
        key = (trigger.spec.name, prefix)
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if self._listing_failures.get(key) != message:  # once, not every interval
            log.warning(
                "blobs under %s/%s cannot be listed for %s (%s); the rest of the container is scanned",
                trigger.path.container, prefix, trigger.spec.name, message,
            )  # fmt: skip
        self._listing_failures[key] = message

    def _consider(self, trigger: BlobTrigger, blob: BlobProperties) -> None:
        """Queue one blob version for invocation unless it is running, done or has a receipt."""
        params = trigger.path.match(blob.name)
        if params is None:
            return
        key = (trigger.spec.name, blob.name)
        etag = quoted_etag(blob.etag)
        with self._lock:
            if key in self._inflight or self._done.get(key) == etag:
                return
        if self._receipt_complete(trigger, blob.name, etag):
            with self._lock:
                self._done[key] = etag
            return
        with self._lock:
            self._inflight.add(key)
        assert self._pool is not None
        self._pool.submit(self._process, trigger, blob, params, etag)

    def _blob_failed(self, trigger: BlobTrigger, blob: BlobProperties, etag: str, exc: Exception) -> None:
        """One failure of one blob version outside its invocation (receipt, properties): tried again
        at the next scan, and after `poisonBlobThreshold` failures sent to the poison queue."""
        key = (trigger.spec.name, blob.name)
        with self._lock:
            count = self._failures[(key, etag)] = self._failures.get((key, etag), 0) + 1
        log.warning(
            "blob %s/%s for %s not handled (failure %d of %d): %s",
            trigger.path.container, blob.name[:300], trigger.spec.name, count, self.max_attempts,
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        )  # fmt: skip
        if count < self.max_attempts:
            return
        try:
            self._poison(trigger, blob, etag)
        except Exception as poison_exc:
            log.error("poison message for %s/%s not sent: %s", trigger.path.container, blob.name, poison_exc)
        with self._lock:
            self._done[key] = etag
            self._failures.pop((key, etag), None)

    # --- receipts --------------------------------------------------------------------------------
    def _receipt(self, trigger: BlobTrigger, blob_name: str, etag: str) -> BlobClient:
        prefix = f"blobreceipts/{self.config.host_id}/{trigger.spec.function_id}/{etag}/"
        name = receipt_blob_name(trigger.path.container, blob_name, prefix)
        return trigger.host_service.get_blob_client(HOSTS_CONTAINER, name)

    def _receipt_complete(self, trigger: BlobTrigger, blob_name: str, etag: str) -> bool:
        try:
            props = self._receipt(trigger, blob_name, etag).get_blob_properties()
        except ResourceNotFoundError:
            return False
        return INCOMPLETE_KEY not in (props.metadata or {})

    def _mark_incomplete(self, trigger: BlobTrigger, blob_name: str, etag: str) -> BlobClient:
        receipt = self._receipt(trigger, blob_name, etag)
        metadata = {INCOMPLETE_KEY: INCOMPLETE_KEY}
        try:
            receipt.upload_blob(b"", metadata=metadata, overwrite=False)
        except ResourceNotFoundError:
            with contextlib.suppress(ResourceExistsError):
                trigger.host_service.create_container(HOSTS_CONTAINER)
            receipt.upload_blob(b"", metadata=metadata, overwrite=True)
        except ResourceExistsError:
            receipt.set_blob_metadata(metadata)
        return receipt

    # --- invocation ------------------------------------------------------------------------------
    def _process(self, trigger: BlobTrigger, blob: BlobProperties, params: dict[str, str], etag: str) -> None:
        key = (trigger.spec.name, blob.name)
        try:
            receipt = self._mark_incomplete(trigger, blob.name, etag)
            self._run_with_retries(trigger, blob, params, etag)
            receipt.set_blob_metadata({})
            with self._lock:
                self._done[key] = etag
        except Exception as exc:  # storage trouble: this blob's failure, tried again at the next scan
            self._blob_failed(trigger, blob, etag, exc)
        finally:
            with self._lock:
                self._inflight.discard(key)

    def _run_with_retries(
        self, trigger: BlobTrigger, blob: BlobProperties, params: dict[str, str], etag: str
    ) -> None:
        spec = trigger.spec
        for attempt in range(1, self.max_attempts + 1):
            client = trigger.service.get_blob_client(trigger.path.container, blob.name)
            try:
                value = self._binding(trigger, client)
                metadata: dict[str, Any] = {
                    "BlobTrigger": f"{trigger.path.container}/{blob.name}",
                    "Uri": client.url,
                }
                metadata.update(params)
                self.invoker.invoke(
                    spec, value, f"New blob detected: {trigger.path.container}/{blob.name}", metadata
                )
                return
            except ResourceNotFoundError:
                log.info("blob %s/%s is gone; %s not run", trigger.path.container, blob.name, spec.name)
                return
            except Exception:
                where = f"{trigger.path.container}/{blob.name}"
                log.warning(
                    "%s failed on %s (attempt %d of %d)", spec.name, where, attempt, self.max_attempts
                )
                if self._stop.is_set():
                    raise
        self._poison(trigger, blob, etag)

    # --- Event Grid source ------------------------------------------------------------------------
    def deliver_event(self, trigger: BlobTrigger, event: dict[str, Any]) -> bool:
        """Run the trigger's handler for one BlobCreated event, as the blob extension does in Azure
        for `source=EventGrid`: no receipt and no ETag check (a duplicate delivery is a duplicate
        invocation). False when the event is not the trigger's (another container or path) or its
        blob is gone; an invocation's exception propagates (the webhook answers 500, and Event Grid
        retries on its schedule, then dead-letters)."""
        container, blob_name = blob_of_event(trigger.service.url, event)
        params = trigger.path.match(blob_name) if container == trigger.path.container else None
        if params is None:
            log.info(
                "event for %s/%s does not match %s: ignored", container, blob_name[:300], trigger.spec.name
            )
            return False
        client = trigger.service.get_blob_client(container, blob_name)
        with self._slots:  # extensions.blobs.maxDegreeOfParallelism
            try:
                value = self._binding(trigger, client)
            except ResourceNotFoundError:
                log.info("blob %s/%s is gone; %s not run", container, blob_name[:300], trigger.spec.name)
                return False
            metadata: dict[str, Any] = {
                "BlobTrigger": f"{container}/{blob_name}",
                "Uri": client.url,
                **params,
            }
            self.invoker.invoke(
                trigger.spec, value, f"New blob detected(EventGrid): {container}/{blob_name}", metadata
            )
        return True

    def _binding(self, trigger: BlobTrigger, client: BlobClient) -> Any:
        """The value of the trigger argument, by the handler's annotation (InputStream by default)."""
        annotation = trigger.spec.annotation(str(trigger.spec.trigger.get("name")))
        kind = getattr(annotation, "__name__", None)
        if kind == "BlobClient":
            return client
        if kind == "ContainerClient":
            return trigger.service.get_container_client(trigger.path.container)
        if kind == "StorageStreamDownloader":
            return client.download_blob()
        if annotation is bytes:
            return client.download_blob().readall()
        if annotation is str:
            return client.download_blob().readall().decode("utf-8")
        return BlobInputStream(client, client.get_blob_properties(), trigger.path.container)

    def _poison(self, trigger: BlobTrigger, blob: BlobProperties, etag: str) -> None:
        from azure.storage.queue import QueueClient

        message = {
            "Type": "BlobTrigger",
            "FunctionId": trigger.spec.function_id,
            "BlobType": str(blob_type(blob)),
            "ContainerName": trigger.path.container,
            "BlobName": blob.name,
            "ETag": etag,
        }
        queue = QueueClient.from_connection_string(trigger.conn_str, POISON_QUEUE)
        with contextlib.suppress(ResourceExistsError):
            queue.create_queue()
        queue.send_message(base64.b64encode(json.dumps(message).encode()).decode())
        log.error(
            "%s failed %d times on %s/%s; message sent to queue %s",
            trigger.spec.name, self.max_attempts, trigger.path.container, blob.name, POISON_QUEUE,
        )  # fmt: skip
