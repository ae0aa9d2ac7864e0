"""What both providers' routing tables share: ARM's path prefixes and the matching of a request to a
route. Each provider's `urls.py` is its table: (method, path regex, handler name, ARM operation id)."""

from __future__ import annotations

import re

SUB = r"/subscriptions/(?P<sub>[^/]+)"
RG = SUB + r"/resourcegroups/(?P<rg>[^/]+)"

Route = tuple[str, re.Pattern[str], str, str]


def compile_routes(url_paths: list[tuple[str, str, str, str]]) -> list[Route]:
    """ARM paths are case-insensitive, and may end with a slash."""
    return [
        (method, re.compile(pattern + r"/?$", re.IGNORECASE), handler, operation)
        for method, pattern, handler, operation in url_paths
    ]


def get_and_post(pattern: str, handler: str, operation: str) -> list[tuple[str, str, str, str]]:
    """A POST action whose answer pages: its nextLinks are fetched with GET, as the SDKs do."""
    return [("POST", pattern, handler, operation), ("GET", pattern, handler, operation)]


# ARM's create/read/update/delete of one resource: method -> (verb of the handler's name, of the
# operation id).
BATCHAI_VERBS = {
    "PUT": ("create", "Create"),
    "PATCH": ("update", "Update"),
    "GET": ("get", "Get"),
    "DELETE": ("delete", "Delete"),
}
AZUREML_VERBS = {**BATCHAI_VERBS, "PUT": ("put", "CreateOrUpdate"), "PATCH": ("patch", "Update")}


def resource(
    pattern: str, noun: str, group: str, methods: str, verbs: dict[str, tuple[str, str]], prefix: str = ""
) -> list[tuple[str, str, str, str]]:
    """The routes of one resource's `methods` (e.g. "PUT GET DELETE"): handler `<prefix><verb>_<noun>`,
    operation id `<group>_<Verb>`, as the provider's definition names them."""
    return [
        (method, pattern, f"{prefix}{verbs[method][0]}_{noun}", f"{group}_{verbs[method][1]}")
        for method in methods.split()
    ]


def match(routes: list[Route], method: str, path: str) -> tuple[str, str, dict[str, str]] | None:
    """(handler, operation id, path parameters) for a request, or None if no route has that path.
    Raises LookupError (answered 405 MethodNotAllowed) when the path exists under another method."""
    path_known = False
    for route_method, regex, handler, operation in routes:
        m = regex.match(path)
        if m:
            path_known = True
            if route_method == method:
                return handler, operation, m.groupdict()
    if path_known:
        raise LookupError(method)
    return None
