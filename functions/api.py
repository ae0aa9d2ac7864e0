"""HTTP triggers of the runs API: thin adapters from `func.HttpRequest` to `shared.runs_api.handle`.

Each route registers every method (`ALL_METHODS`) so that a method the route does not implement gets
our 405 error body instead of the host's bare 404; the routes and their operations are listed once, in
`shared.openapi.ROUTES`, which a test checks against what this blueprint registers.
"""

from __future__ import annotations

import azure.functions as func

from shared.openapi import ALL_METHODS

bp = func.Blueprint()

FUNCTION = func.AuthLevel.FUNCTION
ANONYMOUS = func.AuthLevel.ANONYMOUS
METHODS = list(ALL_METHODS)


def _call(route: str, req: func.HttpRequest) -> func.HttpResponse:
    # Imported at first request, not at `import function_app`: cold start pays only for what it uses.
    from shared.api_messages import ApiRequest
    from shared.runs_api import handle

    request = ApiRequest.build(
        req.method,
        req.url,
        route_params=req.route_params,
        params=req.params,
        headers=dict(req.headers),
        body=req.get_body(),
    )
    response = handle(route, request)
    headers = dict(response.headers)
    if response.content_type:
        headers["Content-Type"] = response.content_type
    return func.HttpResponse(response.body_bytes(), status_code=response.status, headers=headers)


@bp.function_name("runs")
@bp.route(route="runs", methods=METHODS, auth_level=FUNCTION)
def runs(req: func.HttpRequest) -> func.HttpResponse:
    """GET: list runs; POST: start a run."""
    return _call("runs", req)


@bp.function_name("run")
@bp.route(route="runs/{id}", methods=METHODS, auth_level=FUNCTION)
def run(req: func.HttpRequest) -> func.HttpResponse:
    """GET: the run record; DELETE: tear it down."""
    return _call("runs/{id}", req)


@bp.function_name("run_resubmit")
@bp.route(route="runs/{id}/resubmit", methods=METHODS, auth_level=FUNCTION)
def run_resubmit(req: func.HttpRequest) -> func.HttpResponse:
    """POST: a new run with the same spec (and overrides) on the same snapshot."""
    return _call("runs/{id}/resubmit", req)


@bp.function_name("run_logs")
@bp.route(route="runs/{id}/logs", methods=METHODS, auth_level=FUNCTION)
def run_logs(req: func.HttpRequest) -> func.HttpResponse:
    """GET: the tail of the run's stdout and stderr."""
    return _call("runs/{id}/logs", req)


@bp.function_name("run_metrics")
@bp.route(route="runs/{id}/metrics", methods=METHODS, auth_level=FUNCTION)
def run_metrics(req: func.HttpRequest) -> func.HttpResponse:
    """GET: the run's metrics series (from the JSON lines of its stdout)."""
    return _call("runs/{id}/metrics", req)


@bp.function_name("run_callback_secret")
@bp.route(route="runs/{id}/callback-secret", methods=METHODS, auth_level=FUNCTION)
def run_callback_secret(req: func.HttpRequest) -> func.HttpResponse:
    """POST: the run's callback signing secret, issued once (runs started by an upload)."""
    return _call("runs/{id}/callback-secret", req)


@bp.function_name("clusters")
@bp.route(route="clusters", methods=METHODS, auth_level=FUNCTION)
def clusters(req: func.HttpRequest) -> func.HttpResponse:
    """GET: clusters of the workspace."""
    return _call("clusters", req)


@bp.function_name("cluster")
@bp.route(route="clusters/{name}", methods=METHODS, auth_level=FUNCTION)
def cluster(req: func.HttpRequest) -> func.HttpResponse:
    """DELETE: delete a cluster (409 while in use unless force=true)."""
    return _call("clusters/{name}", req)


@bp.function_name("health")
@bp.route(route="health", methods=METHODS, auth_level=ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    """GET: liveness only (anonymous: no dependency called, nothing named)."""
    return _call("health", req)


@bp.function_name("health_deep")
@bp.route(route="health/deep", methods=METHODS, auth_level=FUNCTION)
def health_deep(req: func.HttpRequest) -> func.HttpResponse:
    """GET: settings, storage, ARM and the compute service (cached, plain messages)."""
    return _call("health/deep", req)


@bp.function_name("dashboard")
@bp.route(route="ui", methods=METHODS, auth_level=ANONYMOUS)
def dashboard(req: func.HttpRequest) -> func.HttpResponse:
    """GET: the dashboard page (holds no data; it calls the API with the key the user gives)."""
    return _call("ui", req)


@bp.function_name("dashboard_file")
@bp.route(route="ui/{*path}", methods=METHODS, auth_level=ANONYMOUS)
def dashboard_file(req: func.HttpRequest) -> func.HttpResponse:
    """GET: a file of the dashboard page (script, styles, the vendored chart library)."""
    return _call("ui/{path}", req)


@bp.function_name("openapi")
@bp.route(route="openapi.json", methods=METHODS, auth_level=ANONYMOUS)
def openapi(req: func.HttpRequest) -> func.HttpResponse:
    """GET: the OpenAPI 3 document of this API."""
    return _call("openapi.json", req)
