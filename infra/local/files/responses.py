"""Request parsing and response shaping: the File service's REST semantics on top of `models.py`.

Header names, status codes and XML bodies follow the Azure Files REST reference and what
azure-storage-file-share 12.x sends and parses. Request headers are read from the raw header list
(`RAW_HEADERS_KEY` in the WSGI environ), because WSGI folds header case and werkzeug drops names with
underscores, and metadata names keep both on Azure.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import json
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape, quoteattr

from werkzeug.wrappers import Request, Response

from . import auth, leases, serviceprops, urls
from .errors import StorageError
from .models import (
    ACCESS_TIERS,
    MAX_QUOTA_GIB,
    MAX_RANGE_WRITE,
    SNAPSHOT_SEP,
    CopySource,
    EntryInfo,
    FilesBackend,
    ShareInfo,
    read_chunks,
)

RAW_HEADERS_KEY = "files_emulator.raw_headers"
DEFAULT_VERSION = "2025-05-05"
MAX_FILE_SIZE = 4 * 1024**4
MAX_LIST_RESULTS = 5000
PERMISSION_KEY = "4066528134148476695*1"  # one default SDDL key, as a fresh Azure share reports
# Copy sources are fetched directly: an HTTP(S)_PROXY in the environment must not carry loopback traffic.
DIRECT_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
XML_HEAD = '<?xml version="1.0" encoding="utf-8"?>'
RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
SUFFIX_RANGE = re.compile(r"^bytes=-(\d+)$")
ISO_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,7}))?Z$")
# Request headers that carry a file's content settings, and the response headers that report them.
CONTENT_HEADERS = {
    "content_type": ("x-ms-content-type", "Content-Type"),
    "content_encoding": ("x-ms-content-encoding", "Content-Encoding"),
    "content_language": ("x-ms-content-language", "Content-Language"),
    "cache_control": ("x-ms-cache-control", "Cache-Control"),
    "content_disposition": ("x-ms-content-disposition", "Content-Disposition"),
    "content_md5": ("x-ms-content-md5", "Content-MD5"),
}


def http_date(seconds: float) -> str:
    return formatdate(seconds, usegmt=True)


def iso7(ns: int) -> str:
    """Azure's SMB timestamp format: seven fractional digits, UTC."""
    stamp = datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{(ns % 1_000_000_000) // 100:07d}Z"


def parse_iso7(value: str, header: str) -> int:
    found = ISO_TIME.match(value)
    if not found:
        raise StorageError(
            "InvalidHeaderValue", message=f"The value {value!r} of {header} is not a UTC time."
        )
    base = datetime.strptime(found.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    fraction = (found.group(2) or "").ljust(7, "0")
    return int(base.timestamp()) * 1_000_000_000 + int(fraction) * 100


class Ctx:
    """One request as the handlers see it: verb, decoded names, raw headers, query, stream."""

    def __init__(self, request: Request, level: str, groups: dict[str, str]) -> None:
        self.request = request
        self.level = level
        self.account = groups.get("account", "")
        self.share = groups.get("share")
        self.share_name = self.share  # as addressed, without a snapshot
        self.path = groups.get("path", "") or ""
        raw = request.environ.get(RAW_HEADERS_KEY)
        pairs: Iterable[tuple[str, str]] = raw if raw is not None else request.headers.items()
        self.raw_headers: list[tuple[str, str]] = [(name, value.strip()) for name, value in pairs]
        self.headers: dict[str, str] = {}
        for name, value in self.raw_headers:
            key = name.lower()
            self.headers[key] = f"{self.headers[key]},{value}" if key in self.headers else value
        self.args = request.args
        self.method = request.method

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def metadata(self) -> list[tuple[str, str]]:
        return [
            (name[len("x-ms-meta-") :], value)
            for name, value in self.raw_headers
            if name.lower().startswith("x-ms-meta-")
        ]

    def has_metadata(self) -> bool:
        return any(name.lower().startswith("x-ms-meta-") for name, _ in self.raw_headers)


def xml_response(body: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(XML_HEAD + body, status=status, headers=headers or {}, content_type="application/xml")


def empty(status: int, headers: dict[str, str] | None = None) -> Response:
    """A response without a body; a Content-Length in `headers` (HEAD of a file) is kept as given."""
    response = Response(b"", status=status)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def meta_headers(metadata: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {f"x-ms-meta-{name}": value for name, value in metadata}


def smb_headers(info: EntryInfo) -> dict[str, str]:
    return {
        "x-ms-file-attributes": info.attributes,
        "x-ms-file-creation-time": iso7(info.creation_ns),
        "x-ms-file-last-write-time": iso7(info.last_write_ns),
        "x-ms-file-change-time": iso7(info.change_ns),
        "x-ms-file-permission-key": PERMISSION_KEY,
        "x-ms-file-id": info.file_id,
        "x-ms-file-parent-id": info.parent_id,
    }


def write_headers(info: EntryInfo) -> dict[str, str]:
    return {
        "ETag": info.etag,
        "Last-Modified": http_date(info.last_modified),
        "x-ms-request-server-encrypted": "true",
        **smb_headers(info),
    }


def copy_headers(info: EntryInfo) -> dict[str, str]:
    copy = info.copy
    if not copy:
        return {}
    headers = {
        "x-ms-copy-id": copy["id"],
        "x-ms-copy-status": copy["status"],
        "x-ms-copy-source": copy["source"],
        "x-ms-copy-progress": copy["progress"],
    }
    if copy.get("completion_ns"):
        headers["x-ms-copy-completion-time"] = http_date(copy["completion_ns"] / 1e9)
    if copy.get("description"):
        headers["x-ms-copy-status-description"] = copy["description"]
    return headers


def parse_int(
    value: str | None, what: str, low: int, high: int, code: str = "InvalidHeaderValue"
) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        raise StorageError(
            code, message=f"The value {value!r} for {what} is not an integer in [{low}, {high}]."
        )
    return number


def parse_range(value: str | None, what: str) -> tuple[int, int | None] | None:
    if not value:
        return None
    found = RANGE.match(value.strip())
    if not found:
        raise StorageError(
            "InvalidHeaderValue", message=f"The {what} header {value!r} is not 'bytes=start-end'."
        )
    start = int(found.group(1))
    end = int(found.group(2)) if found.group(2) else None
    if end is not None and end < start:
        raise StorageError("InvalidRange")
    return start, end


class FilesResponses:
    """The WSGI application: authenticates, routes to a handler, shapes errors as Azure does."""

    def __init__(
        self, backend: FilesBackend, accounts: dict[str, bytes], local_netlocs: Iterable[str] = ()
    ) -> None:
        self.backend = backend
        self.accounts = accounts
        self.local_netlocs = set(local_netlocs)
        self.request_log: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)
        self._log_lock = threading.Lock()

    # --- WSGI ------------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        started = time.monotonic()
        request_id = str(uuid.uuid4())
        error_code = ""
        try:
            response = self.dispatch(request)
        except StorageError as exc:
            error_code = exc.code
            response = self.error_response(exc, request_id)
        except Exception as exc:  # an emulator bug must still answer like the service does
            error_code = "InternalError"
            response = self.error_response(
                StorageError("InternalError", message=f"InternalError: {exc!r}"), request_id
            )
            import traceback

            traceback.print_exc()
        response.headers.setdefault("x-ms-request-id", request_id)
        response.headers.setdefault("x-ms-version", request.headers.get("x-ms-version") or DEFAULT_VERSION)
        response.headers.setdefault("Date", http_date(time.time()))
        response.headers.setdefault("Server", "Windows-Azure-File/1.0 Microsoft-HTTPAPI/2.0")
        client_request_id = request.headers.get("x-ms-client-request-id")
        if client_request_id:
            response.headers["x-ms-client-request-id"] = client_request_id
        if not request.path.startswith("/_emulator/"):
            with self._log_lock:
                self.request_log.append(
                    {
                        "time": time.time(),
                        "method": request.method,
                        "path": request.path,
                        "query": request.query_string.decode("latin-1"),
                        "status": response.status_code,
                        "error_code": error_code,
                        "ms": round((time.monotonic() - started) * 1000, 1),
                    }
                )
        return response(environ, start_response)

    def error_response(self, exc: StorageError, request_id: str) -> Response:
        body = exc.xml(request_id, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z"))
        headers = {"x-ms-error-code": exc.code, "x-ms-request-id": request_id, **exc.headers}
        if exc.status == 401:
            headers["WWW-Authenticate"] = "SharedKey"
        return Response(body, status=exc.status, headers=headers, content_type="application/xml")

    def dispatch(self, request: Request) -> Response:
        routed = urls.match(request.path)
        if routed is None:
            raise StorageError("InvalidUri")
        level, groups = routed
        if level == "admin":
            return self.admin(request, groups["action"])
        injected = self.backend.faults.request_error()
        if injected is not None:
            raise injected
        ctx = Ctx(request, level, groups)
        restype = request.args.get("restype") or None
        comp = request.args.get("comp") or None
        operation = urls.operations.get((level, request.method, restype, comp))
        if operation is None:
            if any(key[0] == level and key[2:] == (restype, comp) for key in urls.operations):
                raise StorageError(
                    "UnsupportedHttpVerb",
                    headers={
                        "Allow": ", ".join(
                            sorted(
                                key[1]
                                for key in urls.operations
                                if key[0] == level and key[2:] == (restype, comp)
                            )
                        )
                    },
                )
            raise StorageError(
                "InvalidQueryParameterValue",
                message=f"No File service operation matches {request.method} with restype={restype!r}, "
                f"comp={comp!r} on this URL.",
            )
        self.authorize(ctx, operation)
        snapshot = request.args.get("sharesnapshot")
        if snapshot:
            if operation.handler not in urls.SNAPSHOT_READS:
                raise StorageError("ShareSnapshotOperationNotSupported")
            ctx.share = f"{ctx.share}{SNAPSHOT_SEP}{snapshot}"
        lease_id = ctx.header("x-ms-lease-id")
        if operation.handler in urls.FILE_LEASED:
            needs = urls.FILE_LEASED[operation.handler]
            self.backend.check_file_lease(ctx.account, ctx.share, ctx.path, lease_id, needs)
        elif operation.handler in urls.SHARE_LEASED:
            self.backend.check_share_lease(
                ctx.account, ctx.share, lease_id, urls.SHARE_LEASED[operation.handler]
            )
        return getattr(self, operation.handler)(ctx)

    def authorize(self, ctx: Ctx, operation: urls.Operation) -> None:
        authorization = ctx.header("authorization")
        if authorization:
            auth.verify_shared_key(
                authorization,
                ctx.method,
                ctx.headers,
                auth.raw_path_of(ctx.request.environ),
                ctx.request.environ.get("QUERY_STRING", ""),
                self.accounts,
                ctx.account,
            )
            return
        if "sig" in ctx.args:
            key = self.accounts.get(ctx.account)
            if key is None:
                raise StorageError(
                    "AuthenticationFailed",
                    details={"AuthenticationErrorDetail": f"The account {ctx.account!r} is not served here."},
                )
            params = {name: ctx.args.get(name, "") for name in ctx.args}
            auth.verify_sas(
                params, ctx.account, key, ctx.share, ctx.path, operation.permission, operation.resource_type
            )
            return
        raise StorageError("NoAuthenticationInformation")

    # --- admin -----------------------------------------------------------------------------------
    def admin(self, request: Request, action: str) -> Response:
        if action == "health":
            return Response(json.dumps({"status": "ok"}), content_type="application/json")
        if action == "requests":
            if request.method == "DELETE":
                with self._log_lock:
                    self.request_log.clear()
                return empty(204)
            with self._log_lock:
                entries = list(self.request_log)
            return Response(json.dumps(entries), content_type="application/json")
        if action == "faults":
            if request.method in ("PUT", "POST"):
                try:
                    settings = json.loads(request.get_data(as_text=True) or "{}")
                    if not isinstance(settings, dict):
                        raise ValueError("the body must be a JSON object")
                    self.backend.faults.configure(settings)
                except (ValueError, TypeError) as exc:
                    return Response(
                        json.dumps({"error": str(exc)}), status=400, content_type="application/json"
                    )
            elif request.method == "DELETE":
                self.backend.faults.configure({})
            return Response(json.dumps(self.backend.faults.settings()), content_type="application/json")
        return Response(
            json.dumps({"error": f"unknown admin endpoint {action!r}"}),
            status=404,
            content_type="application/json",
        )

    # --- service ---------------------------------------------------------------------------------
    def list_shares(self, ctx: Ctx) -> Response:
        prefix = ctx.args.get("prefix", "")
        marker = ctx.args.get("marker", "")
        max_results = (
            parse_int(
                ctx.args.get("maxresults"), "maxresults", 1, MAX_LIST_RESULTS, "InvalidQueryParameterValue"
            )
            or MAX_LIST_RESULTS
        )
        include = {part.strip().lower() for part in ctx.args.get("include", "").split(",") if part}
        shares, next_marker = self.backend.list_shares(ctx.account, prefix, marker, max_results)
        endpoint = f"{ctx.request.host_url}{ctx.account}"
        parts = [f"<EnumerationResults ServiceEndpoint={quoteattr(endpoint)}>"]
        if prefix:
            parts.append(f"<Prefix>{escape(prefix)}</Prefix>")
        if marker:
            parts.append(f"<Marker>{escape(marker)}</Marker>")
        if ctx.args.get("maxresults"):
            parts.append(f"<MaxResults>{max_results}</MaxResults>")
        parts.append("<Shares>")
        listed = []
        for share in shares:
            if "snapshots" in include:
                for snapshot in self.backend.list_snapshots(ctx.account, share.name):
                    listed.append(
                        self.backend.get_share(ctx.account, f"{share.name}{SNAPSHOT_SEP}{snapshot}")
                    )
            listed.append(share)
        for share in listed:
            snapshot = f"<Snapshot>{share.snapshot}</Snapshot>" if share.snapshot else ""
            parts.append(
                f"<Share><Name>{escape(share.name)}</Name>{snapshot}{self._share_properties_xml(share)}"
            )
            if "metadata" in include:
                parts.append(
                    "<Metadata>"
                    + "".join(f"<{n}>{escape(v)}</{n}>" for n, v in share.metadata)
                    + "</Metadata>"
                )
            parts.append("</Share>")
        parts.append(f"</Shares><NextMarker>{escape(next_marker)}</NextMarker></EnumerationResults>")
        return xml_response("".join(parts))

    @staticmethod
    def _share_properties_xml(share: ShareInfo) -> str:
        lease = leases.headers(share.lease, time.time())
        changed = (
            f"<AccessTierChangeTime>{http_date(share.access_tier_changed)}</AccessTierChangeTime>"
            if share.access_tier_changed
            else ""
        )
        return (
            f"<Properties><Last-Modified>{http_date(share.last_modified)}</Last-Modified>"
            f"<Etag>{escape(share.etag)}</Etag><Quota>{share.quota}</Quota>"
            f"<AccessTier>{share.access_tier}</AccessTier>{changed}"
            f"<LeaseStatus>{lease['x-ms-lease-status']}</LeaseStatus>"
            f"<LeaseState>{lease['x-ms-lease-state']}</LeaseState>"
            + (
                f"<LeaseDuration>{lease['x-ms-lease-duration']}</LeaseDuration>"
                if "x-ms-lease-duration" in lease
                else ""
            )
            + "<EnabledProtocols>SMB</EnabledProtocols></Properties>"
        )

    def get_service_properties(self, ctx: Ctx) -> Response:
        return xml_response(serviceprops.to_xml(self.backend.service_properties(ctx.account)))

    def set_service_properties(self, ctx: Ctx) -> Response:
        if (ctx.request.content_length or 0) > serviceprops.MAX_BODY:
            raise StorageError("RequestBodyTooLarge")
        elements = serviceprops.parse(ctx.request.get_data())
        self.backend.set_service_properties(ctx.account, elements)
        return empty(202)

    # --- shares ----------------------------------------------------------------------------------
    def _share_headers(self, share: ShareInfo) -> dict[str, str]:
        return {"ETag": share.etag, "Last-Modified": http_date(share.last_modified)}

    def _quota(self, ctx: Ctx) -> int | None:
        return parse_int(ctx.header("x-ms-share-quota"), "x-ms-share-quota", 1, MAX_QUOTA_GIB)

    def _access_tier(self, ctx: Ctx) -> str | None:
        """x-ms-access-tier as Azure spells it; a standard account refuses Premium and unknown tiers."""
        value = ctx.header("x-ms-access-tier")
        if value is None:
            return None
        for tier in ACCESS_TIERS:
            if value.lower() == tier.lower():
                return tier
        raise StorageError(
            "InvalidHeaderValue",
            message=f"The access tier {value!r} is not valid for a share of this account; "
            f"use one of {', '.join(ACCESS_TIERS)} (Premium needs a premium FileStorage account).",
            details={"HeaderName": "x-ms-access-tier", "HeaderValue": value},
        )

    def create_share(self, ctx: Ctx) -> Response:
        share = self.backend.create_share(
            ctx.account, ctx.share, self._quota(ctx), ctx.metadata(), self._access_tier(ctx)
        )
        return empty(201, self._share_headers(share))

    def get_share_properties(self, ctx: Ctx) -> Response:
        share = self.backend.get_share(ctx.account, ctx.share)
        headers = {
            **self._share_headers(share),
            **meta_headers(share.metadata),
            "x-ms-share-quota": str(share.quota),
            "x-ms-access-tier": share.access_tier,
            "x-ms-enabled-protocols": "SMB",
            **leases.headers(share.lease if not share.snapshot else None, time.time()),
        }
        if share.access_tier_changed:
            headers["x-ms-access-tier-change-time"] = http_date(share.access_tier_changed)
        return empty(200, headers)

    def delete_share(self, ctx: Ctx) -> Response:
        option = (ctx.header("x-ms-delete-snapshots") or "").lower()
        if option not in ("", "include", "include-leased"):
            raise StorageError(
                "InvalidHeaderValue",
                message=f"x-ms-delete-snapshots must be include or include-leased, not {option!r}.",
                details={"HeaderName": "x-ms-delete-snapshots"},
            )
        self.backend.delete_share(ctx.account, ctx.share, include_snapshots=bool(option))
        return empty(202)

    def create_snapshot(self, ctx: Ctx) -> Response:
        snapshot = self.backend.create_snapshot(
            ctx.account, ctx.share, ctx.metadata() if ctx.has_metadata() else None
        )
        share = self.backend.get_share(ctx.account, f"{ctx.share}{SNAPSHOT_SEP}{snapshot}")
        return empty(201, {"x-ms-snapshot": snapshot, **self._share_headers(share)})

    @staticmethod
    def _lease_request(ctx: Ctx) -> dict[str, str | None]:
        names = ("x-ms-lease-id", "x-ms-proposed-lease-id", "x-ms-lease-duration", "x-ms-lease-break-period")
        return {name: ctx.header(name) for name in names}

    def share_lease(self, ctx: Ctx) -> Response:
        status, headers, share = self.backend.share_lease(
            ctx.account, ctx.share, ctx.header("x-ms-lease-action") or "", self._lease_request(ctx)
        )
        return empty(status, {**headers, **self._share_headers(share)})

    def file_lease(self, ctx: Ctx) -> Response:
        status, headers, info = self.backend.file_lease(
            ctx.account, ctx.share, ctx.path, ctx.header("x-ms-lease-action") or "", self._lease_request(ctx)
        )
        return empty(status, {**headers, "ETag": info.etag, "Last-Modified": http_date(info.last_modified)})

    def set_share_metadata(self, ctx: Ctx) -> Response:
        share = self.backend.update_share(ctx.account, ctx.share, metadata=ctx.metadata())
        return empty(200, self._share_headers(share))

    def set_share_properties(self, ctx: Ctx) -> Response:
        share = self.backend.update_share(
            ctx.account, ctx.share, quota=self._quota(ctx), access_tier=self._access_tier(ctx)
        )
        return empty(200, self._share_headers(share))

    def get_share_stats(self, ctx: Ctx) -> Response:
        share = self.backend.get_share(ctx.account, ctx.share)
        usage = self.backend.share_usage(ctx.account, ctx.share)
        return xml_response(
            f"<ShareStats><ShareUsageBytes>{usage}</ShareUsageBytes></ShareStats>",
            200,
            self._share_headers(share),
        )

    def get_share_acl(self, ctx: Ctx) -> Response:
        share = self.backend.get_share(ctx.account, ctx.share)
        return xml_response("<SignedIdentifiers />", 200, self._share_headers(share))

    def set_share_acl(self, ctx: Ctx) -> Response:
        share = self.backend.get_share(ctx.account, ctx.share)
        return empty(200, self._share_headers(share))

    # --- directories -----------------------------------------------------------------------------
    def _smb_props(self, ctx: Ctx) -> dict[str, Any]:
        """SMB properties a create or set-properties request asks for (`now`/`preserve` as Azure)."""
        props: dict[str, Any] = {}
        for header, key in (
            ("x-ms-file-creation-time", "creation"),
            ("x-ms-file-last-write-time", "last_write"),
        ):
            value = ctx.header(header)
            if value and value.lower() not in ("now", "preserve"):
                props[key] = parse_iso7(value, header)
            elif value and value.lower() == "now":
                props[key] = time.time_ns()
        attributes = ctx.header("x-ms-file-attributes")
        if attributes and attributes.lower() not in ("preserve", "none"):
            props["attributes"] = attributes
        return props

    def create_directory(self, ctx: Ctx) -> Response:
        info = self.backend.create_directory(
            ctx.account, ctx.share, ctx.path, ctx.metadata(), self._smb_props(ctx)
        )
        return empty(201, write_headers(info))

    def get_directory_properties(self, ctx: Ctx) -> Response:
        info = self.backend.get_entry(ctx.account, ctx.share, ctx.path, "directory")
        headers = {
            "ETag": info.etag,
            "Last-Modified": http_date(info.last_modified),
            "x-ms-server-encrypted": "true",
            **meta_headers(info.metadata),
            **smb_headers(info),
        }
        return empty(200, headers)

    def delete_directory(self, ctx: Ctx) -> Response:
        self.backend.delete_directory(ctx.account, ctx.share, ctx.path)
        return empty(202)

    def set_directory_metadata(self, ctx: Ctx) -> Response:
        info = self.backend.update_entry(
            ctx.account, ctx.share, ctx.path, "directory", metadata=ctx.metadata()
        )
        return empty(
            200,
            {
                "ETag": info.etag,
                "Last-Modified": http_date(info.last_modified),
                "x-ms-request-server-encrypted": "true",
            },
        )

    def set_directory_properties(self, ctx: Ctx) -> Response:
        info = self.backend.update_entry(
            ctx.account, ctx.share, ctx.path, "directory", props=self._smb_props(ctx)
        )
        return empty(200, write_headers(info))

    def list_directory(self, ctx: Ctx) -> Response:
        prefix = ctx.args.get("prefix", "")
        marker = ctx.args.get("marker", "")
        max_results = (
            parse_int(
                ctx.args.get("maxresults"), "maxresults", 1, MAX_LIST_RESULTS, "InvalidQueryParameterValue"
            )
            or MAX_LIST_RESULTS
        )
        directory, entries, next_marker = self.backend.list_directory(
            ctx.account, ctx.share, ctx.path, prefix, marker, max_results
        )
        endpoint = f"{ctx.request.host_url}{ctx.account}"
        parts = [
            f"<EnumerationResults ServiceEndpoint={quoteattr(endpoint)} "
            f"ShareName={quoteattr(ctx.share_name or '')} DirectoryPath={quoteattr(ctx.path.rstrip('/'))}>"
        ]
        if prefix:
            parts.append(f"<Prefix>{escape(prefix)}</Prefix>")
        if marker:
            parts.append(f"<Marker>{escape(marker)}</Marker>")
        if ctx.args.get("maxresults"):
            parts.append(f"<MaxResults>{max_results}</MaxResults>")
        parts.append(f"<DirectoryId>{directory.file_id}</DirectoryId><Entries>")
        for entry in entries:
            tag = "File" if entry.kind == "file" else "Directory"
            size = f"<Content-Length>{entry.size}</Content-Length>" if entry.kind == "file" else ""
            parts.append(
                f"<{tag}><Name>{escape(entry.name)}</Name><FileId>{entry.file_id}</FileId><Properties>{size}"
                f"<CreationTime>{iso7(entry.creation_ns)}</CreationTime>"
                f"<LastAccessTime>{iso7(entry.last_write_ns)}</LastAccessTime>"
                f"<LastWriteTime>{iso7(entry.last_write_ns)}</LastWriteTime>"
                f"<ChangeTime>{iso7(entry.change_ns)}</ChangeTime>"
                f"<Last-Modified>{http_date(entry.last_modified)}</Last-Modified>"
                f"<Etag>{escape(entry.etag.strip(chr(34)))}</Etag></Properties>"
                f"<Attributes>{escape(entry.attributes)}</Attributes><PermissionKey>{PERMISSION_KEY}</PermissionKey>"
                f"</{tag}>"
            )
        parts.append(f"</Entries><NextMarker>{escape(next_marker)}</NextMarker></EnumerationResults>")
        return xml_response("".join(parts))

    def list_handles(self, ctx: Ctx) -> Response:
        if ctx.level == "item":
            kind = "directory" if ctx.args.get("restype") == "directory" else "file"
            self.backend.get_entry(ctx.account, ctx.share, ctx.path, kind)
        else:
            self.backend.get_share(ctx.account, ctx.share)
        return xml_response("<EnumerationResults><Entries /><NextMarker /></EnumerationResults>")

    def force_close_handles(self, ctx: Ctx) -> Response:
        self.list_handles(ctx)
        return empty(200, {"x-ms-number-of-handles-closed": "0", "x-ms-number-of-handles-failed": "0"})

    # --- files -----------------------------------------------------------------------------------
    def _content_settings(self, ctx: Ctx) -> dict[str, str]:
        content = {}
        for key, (request_header, _) in CONTENT_HEADERS.items():
            value = ctx.header(request_header)
            if value:
                if key == "content_md5":
                    try:
                        base64.b64decode(value, validate=True)
                    except (binascii.Error, ValueError):
                        raise StorageError(
                            "InvalidHeaderValue", message=f"x-ms-content-md5 {value!r} is not base64."
                        ) from None
                content[key] = value
        return content

    def create_file(self, ctx: Ctx) -> Response:
        if ctx.header("x-ms-copy-source") is not None:
            return self.start_copy(ctx)
        if (ctx.header("x-ms-type") or "").lower() != "file":
            raise StorageError(
                "MissingRequiredHeader" if not ctx.header("x-ms-type") else "InvalidHeaderValue",
                message="Create File needs the header x-ms-type: file.",
                details={"HeaderName": "x-ms-type"},
            )
        length = parse_int(ctx.header("x-ms-content-length"), "x-ms-content-length", 0, MAX_FILE_SIZE)
        if length is None:
            raise StorageError(
                "MissingRequiredHeader",
                message="Create File needs x-ms-content-length.",
                details={"HeaderName": "x-ms-content-length"},
            )
        info = self.backend.create_file(
            ctx.account,
            ctx.share,
            ctx.path,
            length,
            ctx.metadata(),
            self._content_settings(ctx),
            self._smb_props(ctx),
        )
        return empty(201, write_headers(info))

    def _file_headers(self, info: EntryInfo) -> dict[str, str]:
        headers = {
            "ETag": info.etag,
            "Last-Modified": http_date(info.last_modified),
            "x-ms-type": "File",
            "Content-Type": info.content.get("content_type") or "application/octet-stream",
            "Accept-Ranges": "bytes",
            "x-ms-server-encrypted": "true",
            **leases.headers(info.lease, time.time()),
            **meta_headers(info.metadata),
            **smb_headers(info),
            **copy_headers(info),
        }
        for key in ("content_encoding", "content_language", "cache_control", "content_disposition"):
            if info.content.get(key):
                headers[CONTENT_HEADERS[key][1]] = info.content[key]
        return headers

    def get_file_properties(self, ctx: Ctx) -> Response:
        info = self.backend.get_entry(ctx.account, ctx.share, ctx.path, "file")
        headers = self._file_headers(info)
        headers["Content-Length"] = str(info.size)
        if info.content.get("content_md5"):
            headers["Content-MD5"] = info.content["content_md5"]
        return empty(200, headers)

    def get_file(self, ctx: Ctx) -> Response:
        target, info = self.backend.file_path(ctx.account, ctx.share, ctx.path)
        requested = self._read_range(ctx, info.size)
        headers = self._file_headers(info)
        if requested is None:
            start, length, status = 0, info.size, 200
            if info.content.get("content_md5"):
                headers["Content-MD5"] = info.content["content_md5"]
        else:
            start, end = requested
            if start >= info.size:
                raise StorageError("InvalidRange", headers={"Content-Range": f"bytes */{info.size}"})
            end = info.size - 1 if end is None else min(end, info.size - 1)
            length, status = end - start + 1, 206
            headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
            if info.content.get("content_md5"):
                headers["x-ms-content-md5"] = info.content["content_md5"]
            if (ctx.header("x-ms-range-get-content-md5") or "").lower() == "true":
                if length > MAX_RANGE_WRITE:
                    raise StorageError(
                        "OutOfRangeInput",
                        message="x-ms-range-get-content-md5 needs a range of at most 4 MiB.",
                    )
                digest = hashlib.md5(usedforsecurity=False)
                for chunk in read_chunks(target, start, length):
                    digest.update(chunk)
                headers["Content-MD5"] = base64.b64encode(digest.digest()).decode()
        headers["Content-Length"] = str(length)
        return Response(
            read_chunks(target, start, length), status=status, headers=headers, direct_passthrough=True
        )

    @staticmethod
    def _read_range(ctx: Ctx, size: int) -> tuple[int, int | None] | None:
        """The range a Get File asks for. Besides Azure's two forms, a suffix range (`bytes=-N`, the
        last N bytes) in the standard Range header is honoured as HTTP defines it (a whole empty
        file for an empty one), so SAS download links serve log tails as the emulator's own did."""
        standard = ctx.header("range")
        if not ctx.header("x-ms-range") and standard:
            found = SUFFIX_RANGE.match(standard.strip())
            if found:
                wanted = int(found.group(1))
                if not size or not wanted:
                    return None
                return max(0, size - wanted), size - 1
        return parse_range(ctx.header("x-ms-range") or standard, "x-ms-range")

    def delete_file(self, ctx: Ctx) -> Response:
        self.backend.delete_file(ctx.account, ctx.share, ctx.path)
        return empty(202)

    def set_file_metadata(self, ctx: Ctx) -> Response:
        info = self.backend.update_entry(ctx.account, ctx.share, ctx.path, "file", metadata=ctx.metadata())
        return empty(
            200,
            {
                "ETag": info.etag,
                "Last-Modified": http_date(info.last_modified),
                "x-ms-request-server-encrypted": "true",
            },
        )

    def set_file_properties(self, ctx: Ctx) -> Response:
        size = parse_int(ctx.header("x-ms-content-length"), "x-ms-content-length", 0, MAX_FILE_SIZE)
        info = self.backend.update_entry(
            ctx.account,
            ctx.share,
            ctx.path,
            "file",
            props=self._smb_props(ctx),
            content=self._content_settings(ctx),
            size=size,
        )
        return empty(200, write_headers(info))

    def put_range(self, ctx: Ctx) -> Response:
        if ctx.header("x-ms-copy-source"):
            raise StorageError(
                "NotImplemented", message="Put Range From URL is not supported by the local Files emulator."
            )
        write = (ctx.header("x-ms-write") or "").lower()
        if write not in ("update", "clear"):
            raise StorageError(
                "InvalidHeaderValue" if write else "MissingRequiredHeader",
                message="Put Range needs x-ms-write: update or clear.",
                details={"HeaderName": "x-ms-write"},
            )
        requested = parse_range(ctx.header("x-ms-range") or ctx.header("range"), "x-ms-range")
        if requested is None or requested[1] is None:
            raise StorageError(
                "MissingRequiredHeader",
                message="Put Range needs x-ms-range: bytes=start-end.",
                details={"HeaderName": "x-ms-range"},
            )
        start, end = requested
        length = end - start + 1
        body_length = ctx.request.content_length or 0
        if write == "clear":
            if body_length:
                raise StorageError(
                    "InvalidHeaderValue", message="Put Range with x-ms-write: clear takes no body."
                )
            info = self.backend.clear_range(ctx.account, ctx.share, ctx.path, start, end)
            return empty(201, {"ETag": info.etag, "Last-Modified": http_date(info.last_modified)})
        if length > MAX_RANGE_WRITE:
            raise StorageError("RequestBodyTooLarge")
        if body_length != length:
            raise StorageError(
                "InvalidHeaderValue",
                message=f"Content-Length {body_length} does not match the range's {length} bytes.",
                details={"HeaderName": "Content-Length"},
            )
        data = bytearray()
        while len(data) < length:
            chunk = ctx.request.stream.read(min(1024 * 1024, length - len(data)))
            if not chunk:
                raise StorageError(
                    "InvalidInput", message="The request body ended before Content-Length bytes."
                )
            data += chunk
        digest = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        sent_md5 = ctx.header("content-md5")
        if sent_md5 and sent_md5 != digest:
            raise StorageError(
                "Md5Mismatch", details={"UserSpecifiedMd5": sent_md5, "ServerCalculatedMd5": digest}
            )
        info = self.backend.write_range(ctx.account, ctx.share, ctx.path, start, bytes(data))
        return empty(
            201,
            {
                "ETag": info.etag,
                "Last-Modified": http_date(info.last_modified),
                "Content-MD5": digest,
                "x-ms-request-server-encrypted": "true",
                "x-ms-file-last-write-time": iso7(info.last_write_ns),
            },
        )

    def list_ranges(self, ctx: Ctx) -> Response:
        if ctx.args.get("prevsharesnapshot"):
            raise StorageError(
                "NotImplemented",
                message="Range lists against a previous share snapshot are not supported by the local "
                "Files emulator.",
            )
        target, info = self.backend.file_path(ctx.account, ctx.share, ctx.path)
        requested = parse_range(ctx.header("x-ms-range") or ctx.header("range"), "x-ms-range")
        low, high = (0, info.size - 1) if requested is None else (requested[0], requested[1] or info.size - 1)
        parts = ["<Ranges>"]
        for start, end in self.backend.data_ranges(target, info.size):
            start, end = max(start, low), min(end, high)
            if start <= end:
                parts.append(f"<Range><Start>{start}</Start><End>{end}</End></Range>")
        parts.append("</Ranges>")
        return xml_response(
            "".join(parts),
            200,
            {
                "ETag": info.etag,
                "Last-Modified": http_date(info.last_modified),
                "x-ms-content-length": str(info.size),
            },
        )

    def rename(self, ctx: Ctx) -> Response:
        """Rename File / Directory: the source is a URL or a share-relative path in the same share."""
        source = ctx.header("x-ms-file-rename-source")
        if not source:
            raise StorageError(
                "MissingRequiredHeader",
                message="Rename needs x-ms-file-rename-source.",
                details={"HeaderName": "x-ms-file-rename-source"},
            )
        parts = urlsplit(source)
        if parts.scheme:
            routed = urls.match(unquote(parts.path))
            if (
                not routed
                or routed[0] != "item"
                or routed[1]["account"] != ctx.account
                or routed[1]["share"] != ctx.share
            ):
                raise StorageError(
                    "InvalidHeaderValue",
                    message="The rename source must be in the same share.",
                    details={"HeaderName": "x-ms-file-rename-source"},
                )
            source_path = routed[1]["path"]
        else:
            source_path = unquote(parts.path).lstrip("/")
        kind = "directory" if ctx.args.get("restype") == "directory" else "file"
        replace = (ctx.header("x-ms-file-rename-replace-if-exists") or "").lower() == "true"
        if kind == "file":  # a leased source or destination moves only with its lease's id
            for path, header in (
                (source_path, "x-ms-source-lease-id"),
                (ctx.path, "x-ms-destination-lease-id"),
            ):
                self.backend.check_file_lease(ctx.account, ctx.share, path, ctx.header(header), True)
        info = self.backend.rename(ctx.account, ctx.share, source_path, ctx.path, kind, replace)
        return empty(200, write_headers(info))

    # --- copy ------------------------------------------------------------------------------------
    def _open_copy_source(self, ctx: Ctx, url: str) -> CopySource:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise StorageError(
                "InvalidHeaderValue",
                message=f"x-ms-copy-source {url!r} is not an http(s) URL.",
                details={"HeaderName": "x-ms-copy-source"},
            )
        if parts.netloc in self.local_netlocs or parts.netloc == ctx.request.host:
            routed = urls.match(unquote(parts.path))
            if routed and routed[0] == "item" and routed[1]["account"] in self.accounts:
                account, share, path = routed[1]["account"], routed[1]["share"], routed[1]["path"]
                self._authorize_file_source(ctx, account, share, path, parts.query)
                return self.backend.open_local_source(account, share, path, url)
        try:
            response = DIRECT_OPENER.open(url, timeout=30)
        except urllib.error.HTTPError as exc:
            source_code = exc.headers.get("x-ms-error-code", "") if exc.headers else ""
            exc.close()
            raise StorageError(
                "CannotVerifyCopySource",
                status=exc.code,
                message="This request is not authorized to perform this operation."
                if exc.code == 403
                else None,
                details={
                    "CopySourceStatusCode": str(exc.code),
                    "CopySourceErrorCode": source_code,
                    "CopySourceErrorMessage": str(exc.reason),
                },
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            raise StorageError(
                "CannotVerifyCopySource", status=400, message=f"The copy source could not be reached: {exc}"
            ) from None
        length = response.headers.get("Content-Length")
        if length is None or not length.isdigit():
            response.close()
            raise StorageError(
                "CannotVerifyCopySource", status=400, message="The copy source has no Content-Length."
            )
        content = {}
        for key, (_, response_header) in CONTENT_HEADERS.items():
            value = response.headers.get(response_header)
            if value:
                content[key] = value
        metadata = [
            (name[len("x-ms-meta-") :], value)
            for name, value in response.headers.items()
            if name.lower().startswith("x-ms-meta-")
        ]
        return CopySource(url=url, length=int(length), stream=response, content=content, metadata=metadata)

    def _authorize_file_source(self, ctx: Ctx, account: str, share: str, path: str, query: str) -> None:
        """A file as copy source, authorized as Azure Files does: by a SAS granting read on it, or,
        for a file of the destination's own account, by the copy request's Shared Key itself. Any
        other source is refused with 403 CannotVerifyCopySource before anything is written."""
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        try:
            if "sig" in params:
                auth.verify_sas(params, account, self.accounts[account], share, path, "r", "o")
                return
            if account == ctx.account and ctx.header("authorization"):
                return
        except StorageError as exc:
            reason = exc.code
        else:
            reason = "NoAuthenticationInformation"
        raise StorageError(
            "CannotVerifyCopySource",
            status=403,
            message="This request is not authorized to perform this operation.",
            details={"CopySourceStatusCode": "403", "CopySourceErrorCode": reason},
        )

    def start_copy(self, ctx: Ctx) -> Response:
        url = ctx.header("x-ms-copy-source") or ""
        source = self._open_copy_source(ctx, url)
        try:
            info = self.backend.start_copy(
                ctx.account, ctx.share, ctx.path, source, ctx.metadata() if ctx.has_metadata() else None
            )
        except BaseException:
            source.stream.close()
            raise
        copy = info.copy or {}
        return empty(
            202,
            {
                "ETag": info.etag,
                "Last-Modified": http_date(info.last_modified),
                "x-ms-copy-id": copy.get("id", ""),
                "x-ms-copy-status": copy.get("status", "pending"),
            },
        )

    def abort_copy(self, ctx: Ctx) -> Response:
        if (ctx.header("x-ms-copy-action") or "").lower() != "abort":
            raise StorageError(
                "MissingRequiredHeader",
                message="Abort Copy File needs x-ms-copy-action: abort.",
                details={"HeaderName": "x-ms-copy-action"},
            )
        copy_id = ctx.args.get("copyid")
        if not copy_id:
            raise StorageError("MissingRequiredQueryParameter", details={"QueryParameterName": "copyid"})
        self.backend.abort_copy(ctx.account, ctx.share, ctx.path, copy_id)
        return empty(204)
