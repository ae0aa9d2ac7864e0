"""HTTP triggers: a WSGI application that routes `/<routePrefix>/<route>` to the handlers, enforces
authLevel with the function key, refuses bodies over the limit before the handler runs, and returns
the handler's `HttpResponse` as it is."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import azure.functions as func
from werkzeug.datastructures import Headers
from werkzeug.wrappers import Request, Response

from .app import FunctionSpec
from .config import FUNCTIONS_KEY, MASTER_KEY, HostConfig
from .invoker import Invoker, ResponseCutOff
from .routes import RouteTemplate, compile_route

log = logging.getLogger("funchost")
_CHUNK = 64 * 1024


@dataclass
class HttpRoute:
    spec: FunctionSpec
    template: RouteTemplate
    methods: frozenset[str] | None  # None: every method
    auth_level: str  # anonymous, function or admin

    @classmethod
    def from_spec(cls, spec: FunctionSpec) -> HttpRoute:
        trigger = spec.trigger
        route = trigger.get("route") or spec.name
        methods = trigger.get("methods")
        return cls(
            spec=spec,
            template=compile_route(route),
            methods=frozenset(str(m).upper() for m in methods) if methods else None,
            auth_level=str(trigger.get("authLevel") or "function").lower(),
        )


class HttpTriggers:
    """The WSGI application of the HTTP triggers."""

    def __init__(self, config: HostConfig, specs: list[FunctionSpec], invoker: Invoker) -> None:
        self.config = config
        self.invoker = invoker
        self.prefix = config.route_prefix
        routes = [HttpRoute.from_spec(s) for s in specs if s.trigger_type == "httpTrigger"]
        self.routes = sorted(routes, key=lambda r: r.template.sort_key)
        self.body_limit = config.body_limit
        # Host routes outside routePrefix (`/runtime/webhooks/...`): path -> handler.
        self.system_routes: dict[str, Callable[[Request], Response]] = {}

    def url_path(self, route: HttpRoute) -> str:
        return "/" + "/".join(p for p in (self.prefix, route.template.template.strip("/")) if p)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        response = self.handle(request)
        return response(environ, start_response)

    # --- request handling ------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        path = request.path
        system = self.system_routes.get(path.rstrip("/").lower())
        if system is not None:
            return system(request)
        if self.prefix:
            head = "/" + self.prefix
            if path.lower() != head.lower() and not path.lower().startswith(head.lower() + "/"):
                return _plain(404, "Not Found")
            path = path[len(head) :]
        match = self._match(path, request.method)
        if match is None:
            return _plain(404, "Not Found")
        route, route_params = match
        if not self._authorized(route, request):
            return _plain(401, "Unauthorized")
        body = self._read_body(request)
        if body is None:
            return _plain(413, "Request body too large")
        http_request = func.HttpRequest(
            method=request.method,
            url=request.url,
            headers={k: ", ".join(request.headers.getlist(k)) for k in set(request.headers.keys())},
            params={k: request.args.get(k, "") for k in request.args},
            route_params=route_params,
            body=body,
        )
        try:
            result = self.invoker.invoke(
                route.spec,
                http_request,
                "This function was programmatically called via the host APIs.",
                route_params,
                answer_within=self.config.http_response_limit,
            )
        except ResponseCutOff:
            log.warning(
                "%s did not answer within %.0fs: 502, as Azure's front end answers (the function runs on)",
                route.spec.name, self.config.http_response_limit,
            )  # fmt: skip
            return _plain(502, "Bad Gateway")
        except Exception:
            return Response(b"", status=500)
        try:
            return _to_response(result)
        except TypeError as exc:
            log.error("function %s returned something that is not an HTTP response: %s", route.spec.name, exc)
            return Response(b"", status=500)

    def _match(self, path: str, method: str) -> tuple[HttpRoute, dict[str, str]] | None:
        for route in self.routes:
            if route.methods is not None and method.upper() not in route.methods:
                continue
            params = route.template.match(path)
            if params is not None:
                return route, params
        return None

    def _authorized(self, route: HttpRoute, request: Request) -> bool:
        if route.auth_level == "anonymous":
            return True
        given = request.headers.get("x-functions-key") or request.args.get("code") or ""
        keys = [self.config.get(MASTER_KEY)]
        if route.auth_level != "admin" or not self.config.get(MASTER_KEY):
            keys.append(self.config.get(FUNCTIONS_KEY))
        return any(key and hmac.compare_digest(given.encode(), key.encode()) for key in keys)

    def _read_body(self, request: Request) -> bytes | None:
        """The body, or None when it is over the limit (never reading more than limit + 1 bytes)."""
        length = request.content_length
        if length is not None and length > self.body_limit:
            return None
        stream = request.stream
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = stream.read(min(_CHUNK, self.body_limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > self.body_limit:
                return None
        return b"".join(chunks)


def _plain(status: int, text: str) -> Response:
    return Response(text, status=status, mimetype="text/plain")


def _to_response(result: Any) -> Response:
    """The handler's result as the worker sends it: an HttpResponse as is, a str/bytes as a 200 body."""
    if result is None:
        return Response(b"", status=204)
    if isinstance(result, (str, bytes, bytearray)):
        result = func.HttpResponse(result)
    if not isinstance(result, func.HttpResponse):
        raise TypeError(f"expected azure.functions.HttpResponse, got {type(result).__name__}")
    headers = Headers()
    for key, value in result.headers.items():
        headers.add(key, value)
    if "content-type" not in headers:
        mimetype = result.mimetype
        headers["Content-Type"] = (
            f"{mimetype}; charset={result.charset}" if mimetype.startswith("text/") else mimetype
        )
    return Response(result.get_body(), status=result.status_code, headers=headers)
