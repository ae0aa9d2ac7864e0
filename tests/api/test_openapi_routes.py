"""The OpenAPI document against what function_app.py really registers, and the document's own validity."""

from __future__ import annotations

import functools
import json
from typing import Any

import function_app
from shared.openapi import ALL_METHODS, ANONYMOUS_ROUTES, ROUTES, document


@functools.cache
def app_functions() -> list[Any]:
    """The app's functions (azure-functions validates names on every get_functions call: call once)."""
    return function_app.app.get_functions()


def registered_http_routes() -> dict[str, tuple[set[str], str]]:
    """route template -> (methods, authLevel) of every HTTP function the app registers."""
    routes: dict[str, tuple[set[str], str]] = {}
    for function in app_functions():
        bindings = [json.loads(raw) for raw in function.get_raw_bindings()]
        trigger = next(b for b in bindings if b["type"].endswith("Trigger"))
        if trigger["type"] != "httpTrigger":
            continue
        route = trigger.get("route") or function.get_function_name()
        route = route.replace("{*", "{")  # a catch-all parameter is an ordinary one in OpenAPI
        assert route not in routes, f"route {route} registered twice"
        routes[route] = (
            {m.upper() for m in trigger.get("methods") or ALL_METHODS},
            str(trigger.get("authLevel")).lower(),
        )
    return routes


def test_every_registered_route_is_documented_and_every_documented_path_registered() -> None:
    registered = registered_http_routes()
    doc = document()
    documented = {path.lstrip("/") for path in doc["paths"]}
    assert documented == set(registered), (
        f"undocumented: {set(registered) - documented}, not registered: {documented - set(registered)}"
    )


def test_documented_methods_are_registered_and_the_rest_answer_405_in_the_handler() -> None:
    registered = registered_http_routes()
    doc = document()
    for route, (methods, _) in registered.items():
        operations = {m.upper() for m in doc["paths"]["/" + route] if m != "parameters"}
        assert operations <= methods, f"{route}: documented {operations} but registered {methods}"
        assert operations == set(ROUTES[route]), f"{route}: the dispatch table and the document disagree"
        assert methods == set(ALL_METHODS), f"{route}: every method reaches the handler (405 in our shape)"


def test_auth_levels_match_the_documented_security() -> None:
    registered = registered_http_routes()
    doc = document()
    for route, (_, auth) in registered.items():
        for method, operation in doc["paths"]["/" + route].items():
            if method == "parameters":
                continue
            anonymous = operation.get("security") == []
            assert anonymous == (route in ANONYMOUS_ROUTES), f"{method} /{route}: security"
            assert auth == ("anonymous" if anonymous else "function"), f"{route}: authLevel {auth}"


def test_path_parameters_match_the_route_templates() -> None:
    doc = document()
    for path, item in doc["paths"].items():
        names = {segment[1:-1] for segment in path.split("/") if segment.startswith("{")}
        declared = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        assert names == declared, path


def test_document_is_a_valid_openapi_3_document() -> None:
    from schemathesis.openapi import from_dict

    schema = from_dict(document())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == sum(len(ops) for ops in ROUTES.values())


def test_cleanup_timer_is_registered_with_the_schedule_setting() -> None:
    timers = {}
    for function in app_functions():
        trigger = json.loads(function.get_raw_bindings()[0])
        if trigger["type"] == "timerTrigger":
            timers[function.get_function_name()] = trigger
    assert timers["cleanup"]["schedule"] == "%CLEANUP_SCHEDULE%"


def test_readme_api_table_names_every_query_parameter() -> None:
    """Each `METHOD /api/path?a=&b=` in the README's HTTP API table lists exactly the query
    parameters the OpenAPI document gives that operation."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("## HTTP API", 1)[1].split("\n\n", 3)[2]
    doc = document()
    seen = 0
    for span in re.findall(r"`([^`]+)`", table):
        found = re.fullmatch(r"(GET|POST|DELETE|PUT|PATCH) /api(/[^?\[\s]*)(?:\[?\?(.*?)\]?)?", span)
        if not found:
            continue
        method, path, query = found.group(1).lower(), found.group(2), found.group(3) or ""
        operation = doc["paths"][path][method]
        documented = {
            p["name"]
            for p in [*operation.get("parameters", []), *doc["paths"][path].get("parameters", [])]
            if isinstance(p, dict) and p.get("in") == "query"
        }
        assert set(re.findall(r"(\w+)=", query)) == documented, (span, sorted(documented))
        seen += 1
    assert seen >= 6
