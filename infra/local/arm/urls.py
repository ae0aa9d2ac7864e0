"""Routing table: (method, path regex, handler name on `ArmResponses`, ARM operation id).

ARM paths are case-insensitive; the regexes are compiled with IGNORECASE. The operation id names each
request in the request log (`GET /_emulator/requests`).
"""

from __future__ import annotations

from infra.local.arm import routing
from infra.local.arm.routing import BATCHAI_VERBS, RG, SUB, get_and_post, resource

BAI = r"/providers/Microsoft\.BatchAI"
WS = RG + BAI + r"/workspaces/(?P<ws>[^/]+)"
EXP = WS + r"/experiments/(?P<exp>[^/]+)"
JOB = EXP + r"/jobs/(?P<job>[^/]+)"
CLUSTER = WS + r"/clusters/(?P<cluster>[^/]+)"
FS = WS + r"/fileservers/(?P<fs>[^/]+)"
LOC_OP = SUB + BAI + r"/locations/(?P<location>[^/]+)"

STORAGE = r"/providers/Microsoft\.Storage/storageAccounts"
# api-versions 2017-09-01-preview and 2018-03-01: clusters, jobs, file servers directly in a group.
L_CLUSTER = RG + BAI + r"/clusters/(?P<cluster>[^/]+)"
L_JOB = RG + BAI + r"/jobs/(?P<job>[^/]+)"
L_FS = RG + BAI + r"/fileServers/(?P<fs>[^/]+)"


def batchai(
    pattern: str, noun: str, group: str, methods: str, prefix: str = ""
) -> list[tuple[str, str, str, str]]:
    return resource(pattern, noun, group, methods, BATCHAI_VERBS, prefix)


def listing(
    parent: str, collection: str, noun: str, operation: str, prefix: str = ""
) -> tuple[str, str, str, str]:
    """GET of a collection: handler `<prefix>list_<noun>s`."""
    return ("GET", parent + collection, f"{prefix}list_{noun}s", operation)


LEGACY = "legacy_"
url_paths: list[tuple[str, str, str, str]] = [
    # Microsoft.Storage: the local stack's storage accounts (read-only)
    ("GET", SUB + STORAGE, "list_storage_accounts", "StorageAccounts_List"),
    ("GET", RG + STORAGE, "list_storage_accounts", "StorageAccounts_ListByResourceGroup"),
    ("GET", RG + STORAGE + r"/(?P<account>[^/]+)", "get_storage_account", "StorageAccounts_GetProperties"),
    ("POST", RG + STORAGE + r"/(?P<account>[^/]+)/listKeys", "list_storage_keys", "StorageAccounts_ListKeys"),
    # Microsoft.BatchAI 2017-09-01-preview / 2018-03-01 (legacy.py): lists per subscription and group
    *(
        listing(parent + BAI, f"/{collection}", noun, f"{group}_{scope}", LEGACY)
        for collection, noun, group in (
            ("clusters", "cluster", "Clusters"),
            ("jobs", "job", "Jobs"),
            ("fileServers", "file_server", "FileServers"),
        )
        for parent, scope in ((SUB, "List"), (RG, "ListByResourceGroup"))
    ),
    *batchai(L_CLUSTER, "cluster", "Clusters", "PUT PATCH GET DELETE", LEGACY),
    *get_and_post(
        L_CLUSTER + r"/listRemoteLoginInformation",
        "legacy_cluster_remote_logins",
        "Clusters_ListRemoteLoginInformation",
    ),
    *batchai(L_JOB, "job", "Jobs", "PUT GET DELETE", LEGACY),
    ("POST", L_JOB + r"/terminate", "legacy_terminate_job", "Jobs_Terminate"),
    *get_and_post(L_JOB + r"/listOutputFiles", "legacy_list_output_files", "Jobs_ListOutputFiles"),
    *get_and_post(
        L_JOB + r"/listRemoteLoginInformation", "legacy_job_remote_logins", "Jobs_ListRemoteLoginInformation"
    ),
    *batchai(L_FS, "file_server", "FileServers", "PUT GET DELETE", LEGACY),
    # Microsoft.Resources
    ("GET", SUB + r"/resourcegroups", "list_groups", "ResourceGroups_List"),
    ("PUT", RG, "put_group", "ResourceGroups_CreateOrUpdate"),
    ("GET", RG, "get_group", "ResourceGroups_Get"),
    ("HEAD", RG, "head_group", "ResourceGroups_CheckExistence"),
    ("DELETE", RG, "delete_group", "ResourceGroups_Delete"),
    (
        "GET",
        SUB + r"/operationresults/(?P<op>[^/]+)",
        "group_operation_result",
        "ResourceGroups_OperationResult",
    ),
    # Microsoft.BatchAI: provider-level
    ("GET", BAI + r"/operations", "list_operations", "Operations_List"),
    ("GET", LOC_OP + r"/usages", "list_usages", "Usages_List"),
    ("GET", LOC_OP + r"/operationstatuses/(?P<op>[^/]+)", "operation_status", "OperationStatus_Get"),
    ("GET", LOC_OP + r"/operationresults/(?P<op>[^/]+)", "operation_result", "OperationResult_Get"),
    listing(SUB + BAI, "/workspaces", "workspace", "Workspaces_List"),
    listing(RG + BAI, "/workspaces", "workspace", "Workspaces_ListByResourceGroup"),
    *batchai(WS, "workspace", "Workspaces", "PUT PATCH GET DELETE"),
    listing(WS, "/experiments", "experiment", "Experiments_ListByWorkspace"),
    *batchai(EXP, "experiment", "Experiments", "PUT GET DELETE"),
    # jobs (POST list operations' nextLinks are fetched with GET, as the SDK does)
    listing(EXP, "/jobs", "job", "Jobs_ListByExperiment"),
    *batchai(JOB, "job", "Jobs", "PUT GET DELETE"),
    ("POST", JOB + r"/terminate", "terminate_job", "Jobs_Terminate"),
    *get_and_post(JOB + r"/listoutputfiles", "list_output_files", "Jobs_ListOutputFiles"),
    *get_and_post(
        JOB + r"/listremotelogininformation", "job_remote_logins", "Jobs_ListRemoteLoginInformation"
    ),
    listing(WS, "/fileservers", "file_server", "FileServers_ListByWorkspace"),
    *batchai(FS, "file_server", "FileServers", "PUT GET DELETE"),
    listing(WS, "/clusters", "cluster", "Clusters_ListByWorkspace"),
    *batchai(CLUSTER, "cluster", "Clusters", "PUT PATCH GET DELETE"),
    *get_and_post(
        CLUSTER + r"/listremotelogininformation",
        "cluster_remote_logins",
        "Clusters_ListRemoteLoginInformation",
    ),
]

ROUTES = routing.compile_routes(url_paths)


def match(method: str, path: str) -> tuple[str, str, dict[str, str]] | None:
    """(handler, operation id, path parameters), None for an unknown path; LookupError when the path
    exists under another method."""
    return routing.match(ROUTES, method, path)
