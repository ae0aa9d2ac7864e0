"""Routing table of Microsoft.MachineLearningServices: (method, path regex, handler on
`AzureMLResponses`, operation id of the published definition). Case-insensitive, as ARM paths are."""

from __future__ import annotations

import re

SUB = r"/subscriptions/(?P<sub>[^/]+)"
RG = SUB + r"/resourcegroups/(?P<rg>[^/]+)"
AML = r"/providers/Microsoft\.MachineLearningServices"
WS = RG + AML + r"/workspaces/(?P<ws>[^/]+)"
LOC = SUB + AML + r"/locations/(?P<location>[^/]+)"

url_paths: list[tuple[str, str, str, str]] = [
    ("GET", WS, "get_workspace", "Workspaces_Get"),
    ("PUT", WS, "put_workspace", "Workspaces_CreateOrUpdate"),  # not in the subset: not validated
    ("GET", WS + r"/computes", "list_computes", "Compute_List"),
    ("GET", WS + r"/computes/(?P<name>[^/]+)", "get_compute", "Compute_Get"),
    ("PUT", WS + r"/computes/(?P<name>[^/]+)", "put_compute", "Compute_CreateOrUpdate"),
    ("PATCH", WS + r"/computes/(?P<name>[^/]+)", "patch_compute", "Compute_Update"),
    ("DELETE", WS + r"/computes/(?P<name>[^/]+)", "delete_compute", "Compute_Delete"),
    ("GET", WS + r"/datastores/(?P<name>[^/]+)", "get_datastore", "Datastores_Get"),
    ("PUT", WS + r"/datastores/(?P<name>[^/]+)", "put_datastore", "Datastores_CreateOrUpdate"),
    ("DELETE", WS + r"/datastores/(?P<name>[^/]+)", "delete_datastore", "Datastores_Delete"),
    (
        "GET",
        WS + r"/environments/(?P<name>[^/]+)/versions/(?P<version>[^/]+)",
        "get_environment",
        "EnvironmentVersions_Get",
    ),
    (
        "PUT",
        WS + r"/environments/(?P<name>[^/]+)/versions/(?P<version>[^/]+)",
        "put_environment",
        "EnvironmentVersions_CreateOrUpdate",
    ),
    (
        "DELETE",
        WS + r"/environments/(?P<name>[^/]+)/versions/(?P<version>[^/]+)",
        "delete_environment",
        "EnvironmentVersions_Delete",
    ),
    ("GET", WS + r"/jobs", "list_jobs", "Jobs_List"),
    ("GET", WS + r"/jobs/(?P<name>[^/]+)", "get_job", "Jobs_Get"),
    ("PUT", WS + r"/jobs/(?P<name>[^/]+)", "put_job", "Jobs_CreateOrUpdate"),
    ("DELETE", WS + r"/jobs/(?P<name>[^/]+)", "delete_job", "Jobs_Delete"),
    ("POST", WS + r"/jobs/(?P<name>[^/]+)/cancel", "cancel_job", "Jobs_Cancel"),
    (
        "GET",
        LOC + r"/(?P<kind>computeOperationsStatus|mfeOperationsStatus)/(?P<op>[^/]+)",
        "operation_status",
        "OperationStatus_Get",
    ),
    (
        "GET",
        LOC + r"/(?P<kind>computeOperationResults|mfeOperationResults)/(?P<op>[^/]+)",
        "operation_result",
        "OperationResult_Get",
    ),
]

ROUTES = [
    (method, re.compile(pattern + r"/?$", re.IGNORECASE), handler, operation)
    for method, pattern, handler, operation in url_paths
]


def owns(path: str) -> bool:
    """Is this a request for this provider?"""
    return "/providers/microsoft.machinelearningservices" in path.lower()


def match(method: str, path: str) -> tuple[str, str, dict[str, str]] | None:
    """(handler, operation id, path parameters), None for an unknown path; LookupError when the path
    exists under another method."""
    known = False
    for route_method, regex, handler, operation in ROUTES:
        m = regex.match(path)
        if m:
            known = True
            if route_method == method:
                return handler, operation, m.groupdict()
    if known:
        raise LookupError(method)
    return None
