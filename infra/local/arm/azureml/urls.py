"""Routing table of Microsoft.MachineLearningServices: (method, path regex, handler on
`AzureMLResponses`, operation id of the published definition). Case-insensitive, as ARM paths are."""

from __future__ import annotations

from infra.local.arm import routing
from infra.local.arm.routing import AZUREML_VERBS, RG, SUB, resource

AML = r"/providers/Microsoft\.MachineLearningServices"
WS = RG + AML + r"/workspaces/(?P<ws>[^/]+)"
LOC = SUB + AML + r"/locations/(?P<location>[^/]+)"

NAME = r"/(?P<name>[^/]+)"
VERSION = r"/environments/(?P<name>[^/]+)/versions/(?P<version>[^/]+)"


def aml(pattern: str, noun: str, group: str, methods: str) -> list[tuple[str, str, str, str]]:
    return resource(pattern, noun, group, methods, AZUREML_VERBS)


url_paths: list[tuple[str, str, str, str]] = [
    *aml(WS, "workspace", "Workspaces", "GET PUT"),  # PUT is not in the subset: not validated
    ("GET", WS + r"/computes", "list_computes", "Compute_List"),
    *aml(WS + r"/computes" + NAME, "compute", "Compute", "GET PUT PATCH DELETE"),
    *aml(WS + r"/datastores" + NAME, "datastore", "Datastores", "GET PUT DELETE"),
    *aml(WS + VERSION, "environment", "EnvironmentVersions", "GET PUT DELETE"),
    ("GET", WS + r"/jobs", "list_jobs", "Jobs_List"),
    *aml(WS + r"/jobs" + NAME, "job", "Jobs", "GET PUT DELETE"),
    ("POST", WS + r"/jobs" + NAME + r"/cancel", "cancel_job", "Jobs_Cancel"),
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

ROUTES = routing.compile_routes(url_paths)


def owns(path: str) -> bool:
    """Is this a request for this provider?"""
    return "/providers/microsoft.machinelearningservices" in path.lower()


def match(method: str, path: str) -> tuple[str, str, dict[str, str]] | None:
    """(handler, operation id, path parameters), None for an unknown path; LookupError when the path
    exists under another method."""
    return routing.match(ROUTES, method, path)
