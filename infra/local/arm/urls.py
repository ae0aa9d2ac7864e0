"""Routing table: (method, path regex, handler name on `ArmResponses`, ARM operation id).

ARM paths are case-insensitive; the regexes are compiled with IGNORECASE. The operation id names each
request in the request log (`GET /_emulator/requests`).
"""

from __future__ import annotations

import re

SUB = r"/subscriptions/(?P<sub>[^/]+)"
RG = SUB + r"/resourcegroups/(?P<rg>[^/]+)"
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

url_paths: list[tuple[str, str, str, str]] = [
    # Microsoft.Storage: the local stack's storage accounts (read-only)
    ("GET", SUB + STORAGE, "list_storage_accounts", "StorageAccounts_List"),
    ("GET", RG + STORAGE, "list_storage_accounts", "StorageAccounts_ListByResourceGroup"),
    ("GET", RG + STORAGE + r"/(?P<account>[^/]+)", "get_storage_account", "StorageAccounts_GetProperties"),
    ("POST", RG + STORAGE + r"/(?P<account>[^/]+)/listKeys", "list_storage_keys", "StorageAccounts_ListKeys"),
    # Microsoft.BatchAI 2017-09-01-preview / 2018-03-01 (legacy.py)
    ("GET", SUB + BAI + r"/clusters", "legacy_list_clusters", "Clusters_List"),
    ("GET", RG + BAI + r"/clusters", "legacy_list_clusters", "Clusters_ListByResourceGroup"),
    ("PUT", L_CLUSTER, "legacy_create_cluster", "Clusters_Create"),
    ("PATCH", L_CLUSTER, "legacy_update_cluster", "Clusters_Update"),
    ("GET", L_CLUSTER, "legacy_get_cluster", "Clusters_Get"),
    ("DELETE", L_CLUSTER, "legacy_delete_cluster", "Clusters_Delete"),
    (
        "POST",
        L_CLUSTER + r"/listRemoteLoginInformation",
        "legacy_cluster_remote_logins",
        "Clusters_ListRemoteLoginInformation",
    ),
    (
        "GET",
        L_CLUSTER + r"/listRemoteLoginInformation",
        "legacy_cluster_remote_logins",
        "Clusters_ListRemoteLoginInformation",
    ),
    ("GET", SUB + BAI + r"/jobs", "legacy_list_jobs", "Jobs_List"),
    ("GET", RG + BAI + r"/jobs", "legacy_list_jobs", "Jobs_ListByResourceGroup"),
    ("PUT", L_JOB, "legacy_create_job", "Jobs_Create"),
    ("GET", L_JOB, "legacy_get_job", "Jobs_Get"),
    ("DELETE", L_JOB, "legacy_delete_job", "Jobs_Delete"),
    ("POST", L_JOB + r"/terminate", "legacy_terminate_job", "Jobs_Terminate"),
    ("POST", L_JOB + r"/listOutputFiles", "legacy_list_output_files", "Jobs_ListOutputFiles"),
    ("GET", L_JOB + r"/listOutputFiles", "legacy_list_output_files", "Jobs_ListOutputFiles"),
    (
        "POST",
        L_JOB + r"/listRemoteLoginInformation",
        "legacy_job_remote_logins",
        "Jobs_ListRemoteLoginInformation",
    ),
    (
        "GET",
        L_JOB + r"/listRemoteLoginInformation",
        "legacy_job_remote_logins",
        "Jobs_ListRemoteLoginInformation",
    ),
    ("GET", SUB + BAI + r"/fileServers", "legacy_list_file_servers", "FileServers_List"),
    ("GET", RG + BAI + r"/fileServers", "legacy_list_file_servers", "FileServers_ListByResourceGroup"),
    ("PUT", L_FS, "legacy_create_file_server", "FileServers_Create"),
    ("GET", L_FS, "legacy_get_file_server", "FileServers_Get"),
    ("DELETE", L_FS, "legacy_delete_file_server", "FileServers_Delete"),
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
    ("GET", SUB + BAI + r"/workspaces", "list_workspaces", "Workspaces_List"),
    ("GET", RG + BAI + r"/workspaces", "list_workspaces", "Workspaces_ListByResourceGroup"),
    # workspaces
    ("PUT", WS, "create_workspace", "Workspaces_Create"),
    ("PATCH", WS, "update_workspace", "Workspaces_Update"),
    ("GET", WS, "get_workspace", "Workspaces_Get"),
    ("DELETE", WS, "delete_workspace", "Workspaces_Delete"),
    # experiments
    ("GET", WS + r"/experiments", "list_experiments", "Experiments_ListByWorkspace"),
    ("PUT", EXP, "create_experiment", "Experiments_Create"),
    ("GET", EXP, "get_experiment", "Experiments_Get"),
    ("DELETE", EXP, "delete_experiment", "Experiments_Delete"),
    # jobs (POST list operations' nextLinks are fetched with GET, as the SDK does)
    ("GET", EXP + r"/jobs", "list_jobs", "Jobs_ListByExperiment"),
    ("PUT", JOB, "create_job", "Jobs_Create"),
    ("GET", JOB, "get_job", "Jobs_Get"),
    ("DELETE", JOB, "delete_job", "Jobs_Delete"),
    ("POST", JOB + r"/terminate", "terminate_job", "Jobs_Terminate"),
    ("POST", JOB + r"/listoutputfiles", "list_output_files", "Jobs_ListOutputFiles"),
    ("GET", JOB + r"/listoutputfiles", "list_output_files", "Jobs_ListOutputFiles"),
    ("POST", JOB + r"/listremotelogininformation", "job_remote_logins", "Jobs_ListRemoteLoginInformation"),
    ("GET", JOB + r"/listremotelogininformation", "job_remote_logins", "Jobs_ListRemoteLoginInformation"),
    # file servers
    ("GET", WS + r"/fileservers", "list_file_servers", "FileServers_ListByWorkspace"),
    ("PUT", FS, "create_file_server", "FileServers_Create"),
    ("GET", FS, "get_file_server", "FileServers_Get"),
    ("DELETE", FS, "delete_file_server", "FileServers_Delete"),
    # clusters
    ("GET", WS + r"/clusters", "list_clusters", "Clusters_ListByWorkspace"),
    ("PUT", CLUSTER, "create_cluster", "Clusters_Create"),
    ("PATCH", CLUSTER, "update_cluster", "Clusters_Update"),
    ("GET", CLUSTER, "get_cluster", "Clusters_Get"),
    ("DELETE", CLUSTER, "delete_cluster", "Clusters_Delete"),
    (
        "POST",
        CLUSTER + r"/listremotelogininformation",
        "cluster_remote_logins",
        "Clusters_ListRemoteLoginInformation",
    ),
    (
        "GET",
        CLUSTER + r"/listremotelogininformation",
        "cluster_remote_logins",
        "Clusters_ListRemoteLoginInformation",
    ),
]

ROUTES = [
    (method, re.compile(pattern + r"/?$", re.IGNORECASE), handler, operation)
    for method, pattern, handler, operation in url_paths
]


def match(method: str, path: str) -> tuple[str, str, dict[str, str]] | None:
    """(handler, operation id, path parameters) for a request, or None if no route has that path.
    Raises MethodNotAllowed-style LookupError when the path exists under another method."""
    path_known = False
    for route_method, regex, handler, operation in ROUTES:
        m = regex.match(path)
        if m:
            path_known = True
            if route_method == method:
                return handler, operation, m.groupdict()
    if path_known:
        raise LookupError(method)
    return None
