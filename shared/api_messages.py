"""Plain HTTP values for the runs API: request, response and the one error shape.

Why apart from azure.functions: `shared/` is the domain and never imports the Functions SDK, so the
API's parsing and error handling can be unit-tested without a host. `functions/api.py` converts a
`func.HttpRequest` into an `ApiRequest` and an `ApiResponse` back into a `func.HttpResponse`.

Every error leaves as `{"error": {"code": ..., "message": ..., "details": [...]}}`; `details` names
the offending field of a validation error (`{"field": "spec.nodeCount", "message": ...}`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.jsontypes import JsonObject, JsonValue

__all__ = [
    "MAX_BODY_BYTES",
    "ApiError",
    "ApiRequest",
    "ApiResponse",
    "json_body",
]

MAX_BODY_BYTES = 1024 * 1024  # 1 MiB: a run spec is a few KiB; anything larger is refused with 413.


class ApiError(Exception):
    """An error the API answers with its status and `{"error": {...}}` body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: list[dict[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = dict(headers or {})

    def response(self) -> ApiResponse:
        error: JsonObject = {"code": self.code, "message": self.message}
        if self.details:
            error["details"] = self.details
        return ApiResponse(self.status, {"error": error}, headers=self.headers)


@dataclass(frozen=True)
class ApiRequest:
    """What a handler needs of an HTTP request. Header names are lowercase."""

    method: str
    url: str = ""
    route_params: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def build(
        cls,
        method: str,
        url: str = "",
        *,
        route_params: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> ApiRequest:
        return cls(
            method=method.upper(),
            url=url,
            route_params=dict(route_params or {}),
            params=dict(params or {}),
            headers={k.lower(): v for k, v in (headers or {}).items()},
            body=body or b"",
        )

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


@dataclass
class ApiResponse:
    """Status, a JSON-serializable body (or None for no body) and extra headers."""

    status: int
    body: JsonValue = None
    headers: dict[str, str] = field(default_factory=dict)

    def body_bytes(self) -> bytes:
        if self.body is None:
            return b""
        return json.dumps(self.body, separators=(",", ":"), default=str).encode()

    @property
    def content_type(self) -> str | None:
        return None if self.body is None else "application/json"


def json_body(request: ApiRequest) -> JsonObject:
    """The request's JSON object body: 413 over 1 MiB, 415 not JSON, 400 malformed or not an object."""
    declared = request.header("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    if len(request.body) > MAX_BODY_BYTES:
        raise _too_large()
    content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"expected Content-Type application/json, got {content_type or 'none'}",
        )
    if not request.body.strip():
        raise ApiError(400, "InvalidJson", "the request body is empty: expected a JSON object")
    try:
        value = json.loads(request.body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ApiError(400, "InvalidJson", f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError(
            400, "InvalidJson", f"the request body must be a JSON object, got {type(value).__name__}"
        )
    return value


def _too_large() -> ApiError:
    return ApiError(413, "PayloadTooLarge", f"the request body exceeds {MAX_BODY_BYTES} bytes (1 MiB)")
