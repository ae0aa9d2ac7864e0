"""The structure of infra/azure/*.bicep: resources by type, identity and role assignments, Key Vault,
the Flex Consumption app, and the Event Grid route from training-data to the ingest function.

No Bicep compiler can be installed here (see tests/deploy/bicep.py), so these tests parse the
templates with pycep-parser and evaluate them for concrete parameters; docs/deploy.md shows
`az bicep build` for a full compile where the Azure CLI is available.
"""

from __future__ import annotations

import importlib
import ipaddress
import pkgutil
import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.settings import Settings
from tests.deploy.bicep import (
    AZURE_DIR,
    MAIN,
    RESOURCE_GROUP,
    ROOT,
    FunctionResult,
    ResourceRef,
    Template,
    parse,
    parse_expression,
)

SECRETS = {
    "clusterSshPublicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAItest test",
    "callbackSigningSecret": "s" * 32,
}

# Azure built-in role definition GUIDs (Microsoft's "Azure built-in roles" reference). A role
# assignment to a GUID outside this table fails the tests: a typo would otherwise surface only as a
# RoleDefinitionDoesNotExist error at deployment time.
BUILT_IN_ROLES = {
    "b24988ac-6180-42a0-ab88-20f7382dd24c": "Contributor",  # granted by no template (see below)
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "69566ab7-960f-475b-8e7c-b3118f30c6bd": "Storage File Data Privileged Contributor",
    "0c867c2a-1d8c-454a-a3db-ab2ea1bdc8bb": "Storage File Data SMB Share Contributor",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
    "f6c7c914-8db3-469d-8ca1-694a8f32e121": "AzureML Data Scientist",
    "e503ece1-11d0-4e8e-8e2c-7a6c3bf38815": "AzureML Compute Operator",
    "b556d68e-0be0-4f35-a333-ad7ee1ce17ea": "Azure AI Enterprise Network Connection Approver",
}
# Roles that would let the app grant itself more, or that span more than it needs.
TOO_WIDE = {
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",  # Owner
    "18d7d88d-d35e-4fb1-a5c3-7773c20a72d9",  # User Access Administrator
    "f58310d9-a9f6-439a-9e8d-f62e7b41a168",  # Role Based Access Control Administrator
    "00482a5a-887f-4fb3-b363-3b7fe8e74483",  # Key Vault Administrator
}

STORAGE_ACCOUNT_NAME = re.compile(r"^[a-z0-9]{3,24}$")
CONTAINER_NAME = re.compile(r"^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$")
KEY_VAULT_NAME = re.compile(r"^[a-zA-Z](?!.*--)[a-zA-Z0-9-]{1,22}[a-zA-Z0-9]$")
APP_NAME = re.compile(r"^[a-z0-9](?!.*--)[a-z0-9-]{0,58}[a-z0-9]$")


def _main(**params: Any) -> Template:
    return Template(MAIN, {**SECRETS, **params})


def _expr(template: Template, text: str) -> Any:
    return template.value(parse_expression(text))


def _one(template: Template, resource_type: str) -> tuple[str, dict[str, Any]]:
    found = template.resources_of_type(resource_type)
    assert len(found) == 1, f"expected one {resource_type}, found {sorted(found)}"
    symbol, declaration = next(iter(found.items()))
    return symbol, template.value(template.body(declaration))


def _children(template: Template, resource_type: str) -> dict[str, str]:
    """Full name (`account/default/child`) -> symbol of every deployed resource of a child type."""
    return {
        template.resource_name(symbol): symbol
        for symbol in template.resources_of_type(resource_type)
        if template.is_deployed(symbol)
    }


# --- every template parses and every module call matches its module -----------------------------------


@pytest.mark.parametrize(
    "path", sorted(AZURE_DIR.rglob("*.bicep")), ids=lambda p: str(p.relative_to(AZURE_DIR))
)
def test_template_parses(path: Path) -> None:
    document = parse(path)
    assert document.get("resources"), f"{path.name} declares no resources"


def test_module_calls_match_their_modules() -> None:
    template = _main()
    assert template.modules, "main.bicep uses its modules"
    for symbol, declaration in template.modules.items():
        module_path = AZURE_DIR / declaration["detail"]["path"]
        assert module_path.is_file(), f"{symbol}: {module_path} missing"
        declared = parse(module_path).get("parameters", {})
        given = set(template.body(declaration).get("params", {}))
        required = {name for name, spec in declared.items() if "default" not in spec}
        assert given <= set(declared), f"{symbol}: unknown module parameters {sorted(given - set(declared))}"
        assert required <= given, f"{symbol}: module parameters not given {sorted(required - given)}"


# --- storage --------------------------------------------------------------------------------------------


def test_data_and_host_storage_accounts() -> None:
    template = _main()
    accounts = template.resources_of_type("Microsoft.Storage/storageAccounts")
    assert set(accounts) == {"dataStorage", "hostStorage", "shareStorage"}
    for symbol in accounts:
        body = template.value(template.body(accounts[symbol]))
        assert body["kind"] == "StorageV2", f"{symbol} is general-purpose v2"
        assert STORAGE_ACCOUNT_NAME.match(body["name"]), body["name"]
        properties = body["properties"]
        assert properties["minimumTlsVersion"] == "TLS1_2"
        assert properties["supportsHttpsTrafficOnly"] is True
        assert properties["allowBlobPublicAccess"] is False
    data = template.value(template.body(accounts["dataStorage"]))["properties"]
    host = template.value(template.body(accounts["hostStorage"]))["properties"]
    share = template.value(template.body(accounts["shareStorage"]))["properties"]
    # Only the share's account has keys (Batch AI mounts the share with one); the data and host accounts
    # are reached with the app's managed identity alone.
    assert data["allowSharedKeyAccess"] is False and data["defaultToOAuthAuthentication"] is True
    assert host["allowSharedKeyAccess"] is False
    assert share["allowSharedKeyAccess"] is True
    names = {template.resource_name(symbol) for symbol in accounts}
    assert len(names) == 3


def test_data_account_holds_the_containers_and_table_and_the_share_account_only_the_share() -> None:
    """The key every cluster node holds opens the share and nothing else."""
    template = _main()
    data = template.resource_name("dataStorage")
    share_account = template.resource_name("shareStorage")
    defaults = {field.alias: field.default for field in Settings.model_fields.values()}
    containers = _children(template, "Microsoft.Storage/storageAccounts/blobServices/containers")
    for container in (defaults["TRAINING_CONTAINER"], defaults["REPORTS_CONTAINER"], "eventgrid-deadletter"):
        assert f"{data}/default/{container}" in containers, sorted(containers)
    shares = _children(template, "Microsoft.Storage/storageAccounts/fileServices/shares")
    assert list(shares) == [f"{share_account}/default/{defaults['FILE_SHARE_NAME']}"]
    share_symbol = shares[f"{share_account}/default/{defaults['FILE_SHARE_NAME']}"]
    share = template.value(template.body(template.resources[share_symbol]))["properties"]
    assert share["enabledProtocols"] == "SMB"  # Batch AI mounts Azure File shares over SMB
    assert share["shareQuota"] >= 1
    tables = _children(template, "Microsoft.Storage/storageAccounts/tableServices/tables")
    assert f"{data}/default/{defaults['RUNS_TABLE']}" in tables
    queues = _children(template, "Microsoft.Storage/storageAccounts/queueServices/queues")
    assert f"{data}/default/{defaults['STAGING_QUEUE']}" in queues, sorted(queues)
    # Nothing but the share lives in the share's account.
    for child_type in ("blobServices/containers", "tableServices/tables", "queueServices/queues"):
        children = _children(template, f"Microsoft.Storage/storageAccounts/{child_type}")
        assert not [name for name in children if name.startswith(f"{share_account}/")], child_type


def test_no_key_of_the_data_account_is_read_anywhere() -> None:
    """Shared keys are off on the data account; no template lists its keys (they would end up in a
    secret or a setting)."""
    for path in sorted(AZURE_DIR.rglob("*.bicep")):
        code = path.read_text()
        assert set(re.findall(r"(\w+)\.listKeys\(", code)) <= {"shareStorage"}, path.name


def test_names_stay_valid_for_the_longest_base_name() -> None:
    for base_name in ("batchai", "abcdefghij", "ab"):
        template = _main(baseName=base_name)
        for symbol in ("dataStorage", "hostStorage", "shareStorage"):
            assert STORAGE_ACCOUNT_NAME.match(template.resource_name(symbol))
        assert KEY_VAULT_NAME.match(template.resource_name("vault"))
        assert APP_NAME.match(template.resource_name("functionApp"))
        for name in _children(template, "Microsoft.Storage/storageAccounts/blobServices/containers"):
            assert CONTAINER_NAME.match(name.split("/")[-1]), name


# --- the function app -----------------------------------------------------------------------------------


def test_flex_consumption_plan_and_python_311_app() -> None:
    template = _main()
    _, plan = _one(template, "Microsoft.Web/serverfarms")
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan["properties"]["reserved"] is True  # Linux
    _, app = _one(template, "Microsoft.Web/sites")
    assert app["kind"] == "functionapp,linux"
    assert app["identity"] == {"type": "SystemAssigned"}
    assert app["properties"]["httpsOnly"] is True
    assert app["properties"]["serverFarmId"] == _expr(template, "plan.id")
    config = app["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    assert set(config["scaleAndConcurrency"]) >= {"maximumInstanceCount", "instanceMemoryMB"}
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"] == {"type": "SystemAssignedIdentity"}
    host_blob = _expr(template, "hostStorage.properties.primaryEndpoints.blob")
    containers = _children(template, "Microsoft.Storage/storageAccounts/blobServices/containers")
    host = template.resource_name("hostStorage")
    assert storage["value"].startswith(host_blob)
    assert f"{host}/default/{storage['value'].removeprefix(host_blob)}" in containers


def test_application_insights_on_log_analytics_with_entra_id_only() -> None:
    template = _main()
    _one(template, "Microsoft.OperationalInsights/workspaces")
    _, insights = _one(template, "Microsoft.Insights/components")
    assert insights["properties"]["WorkspaceResourceId"] == _expr(template, "logAnalytics.id")
    assert insights["properties"]["DisableLocalAuth"] is True


# --- Key Vault ------------------------------------------------------------------------------------------


def test_key_vault_in_rbac_mode_holds_the_secrets() -> None:
    template = _main()
    _, vault = _one(template, "Microsoft.KeyVault/vaults")
    assert vault["properties"]["enableRbacAuthorization"] is True
    assert "accessPolicies" not in vault["properties"]
    vault_name = template.resource_name("vault")
    always = {"file-share-connection-string", "cluster-ssh-public-key", "callback-signing-secret"}
    assert set(_children(template, "Microsoft.KeyVault/vaults/secrets")) == {
        f"{vault_name}/{s}" for s in always
    }
    everything = _main(
        clusterAdminPassword="Adm1n-password",
        containerRegistryPassword="registry-password",
        mountShareWithKeyVaultSecret=True,
    )
    optional = {"cluster-admin-password", "container-registry-password", "file-share-account-key"}
    names = set(_children(everything, "Microsoft.KeyVault/vaults/secrets"))
    assert names == {f"{vault_name}/{s}" for s in always | optional}


def test_key_vault_cannot_be_purged_and_stays_recoverable() -> None:
    """Key Vault: purge protection on (whatever the parameters), soft delete long enough to
    notice and recover (at least 30 days; 90 by default)."""
    template = _main()
    properties = _one(template, "Microsoft.KeyVault/vaults")[1]["properties"]
    assert properties["enablePurgeProtection"] is True
    assert properties["enableSoftDelete"] is True
    assert properties["softDeleteRetentionInDays"] == 90
    retention = template.parameters["keyVaultSoftDeleteRetentionDays"]
    bounds = {d["type"]: d for d in retention.get("decorators", [])}
    assert bounds["min_value"]["argument"] >= 30, bounds
    shortest = _one(_main(keyVaultSoftDeleteRetentionDays=30), "Microsoft.KeyVault/vaults")[1]["properties"]
    assert shortest["enablePurgeProtection"] is True and shortest["softDeleteRetentionInDays"] == 30
    assert "keyVaultPurgeProtection" not in template.parameters  # no way to deploy without it


# --- role assignments -----------------------------------------------------------------------------------


def _assignments(template: Template) -> list[dict[str, Any]]:
    found = []
    for symbol, declaration in template.resources_of_type("Microsoft.Authorization/roleAssignments").items():
        body = template.body(declaration)
        properties = template.value(body["properties"])
        found.append(
            {
                "symbol": symbol,
                "name": template.value(body["name"]),
                "scope": template.value(body["scope"]) if "scope" in body else None,
                "role": properties["roleDefinitionId"].rsplit("/", 1)[-1],
                "roleDefinitionId": properties["roleDefinitionId"],
                "principalId": properties["principalId"],
                "principalType": properties.get("principalType"),
            }
        )
    return found


def test_role_assignments_are_least_privilege_built_in_roles() -> None:
    template = _main()
    app_principal = _expr(template, "functionApp.identity.principalId")
    topic_principal = _expr(template, "systemTopic.identity.principalId")
    granted = set()
    for assignment in _assignments(template):
        assert assignment["role"] in BUILT_IN_ROLES, (
            f"{assignment['symbol']}: unknown role {assignment['role']}"
        )
        assert assignment["roleDefinitionId"].startswith("/subscriptions/")
        assert (
            assignment["roleDefinitionId"]
            .split("/providers/")[1]
            .startswith("Microsoft.Authorization/roleDefinitions/")
        )
        assert isinstance(assignment["scope"], ResourceRef), f"{assignment['symbol']} has no explicit scope"
        assert assignment["principalType"] == "ServicePrincipal"
        uuid.UUID(assignment["name"])  # deterministic guid(...) names, so redeployments are idempotent
        principal = {app_principal: "app", topic_principal: "event-grid"}[assignment["principalId"]]
        granted.add((assignment["scope"].symbol, BUILT_IN_ROLES[assignment["role"]], principal))
    assert granted == {
        ("hostStorage", "Storage Blob Data Owner", "app"),
        ("hostStorage", "Storage Queue Data Contributor", "app"),
        ("hostStorage", "Storage Table Data Contributor", "app"),  # the host's diagnostic events
        ("dataStorage", "Storage Blob Data Contributor", "app"),
        ("dataStorage", "Storage Queue Data Contributor", "app"),  # the staging queue
        ("dataStorage", "Storage Table Data Contributor", "app"),
        ("vault", "Key Vault Secrets User", "app"),
        ("appInsights", "Monitoring Metrics Publisher", "app"),
        ("deadLetterContainer", "Storage Blob Data Contributor", "event-grid"),
    }
    names = [a["name"] for a in _assignments(template)]
    assert len(names) == len(set(names))


# What each SDK call of the compute backends needs in the Batch AI resource group (Azure's operation
# names for Microsoft.BatchAI and Microsoft.Resources), and the calls deliberately not granted there.
SDK_CALL_ACTIONS = {
    ("resource_groups", "get"): "Microsoft.Resources/subscriptions/resourceGroups/read",
    ("workspaces", "get"): "Microsoft.BatchAI/workspaces/read",
    ("workspaces", "begin_create"): "Microsoft.BatchAI/workspaces/write",
    ("clusters", "get"): "Microsoft.BatchAI/workspaces/clusters/read",
    ("clusters", "list_by_workspace"): "Microsoft.BatchAI/workspaces/clusters/read",
    ("clusters", "begin_create"): "Microsoft.BatchAI/workspaces/clusters/write",
    ("clusters", "update"): "Microsoft.BatchAI/workspaces/clusters/write",
    ("clusters", "begin_delete"): "Microsoft.BatchAI/workspaces/clusters/delete",
    ("experiments", "get"): "Microsoft.BatchAI/workspaces/experiments/read",
    ("experiments", "list_by_workspace"): "Microsoft.BatchAI/workspaces/experiments/read",
    ("experiments", "begin_create"): "Microsoft.BatchAI/workspaces/experiments/write",
    ("experiments", "begin_delete"): "Microsoft.BatchAI/workspaces/experiments/delete",
    ("jobs", "get"): "Microsoft.BatchAI/workspaces/experiments/jobs/read",
    ("jobs", "list_by_experiment"): "Microsoft.BatchAI/workspaces/experiments/jobs/read",
    ("jobs", "begin_create"): "Microsoft.BatchAI/workspaces/experiments/jobs/write",
    ("jobs", "begin_delete"): "Microsoft.BatchAI/workspaces/experiments/jobs/delete",
    ("jobs", "begin_terminate"): "Microsoft.BatchAI/workspaces/experiments/jobs/terminate/action",
    ("jobs", "list_output_files"): "Microsoft.BatchAI/workspaces/experiments/jobs/listoutputfiles/action",
}
NOT_GRANTED = {
    # The group exists before the deployment; the app GETs it and creates it only when missing, which
    # needs subscription scope: an operator's step (docs/deploy.md).
    ("resource_groups", "create_or_update"): "the group is created before deployment",
    # Deleting the whole group (the quickstart's last step) is reachable in code but no function calls it.
    ("resource_groups", "begin_delete"): "an operator's step",
    # Subscription-scoped (/subscriptions/<id>/providers/Microsoft.BatchAI/locations/<region>/usages):
    # a role in the resource group cannot grant it; the deep health check reports it unreachable.
    ("usages", "list"): "subscription scope",
}
SDK_CALL = re.compile(r"\b(workspaces|clusters|experiments|jobs|resource_groups|groups|usages)\.([a-z_]+)\b")
PAGER_METHODS = {"by_page"}


def _sdk_calls() -> set[tuple[str, str]]:
    """(operation group, method) of every Batch AI / resource group SDK call in the modules of shared/
    that talk to ARM."""
    calls = set()
    for path in sorted((ROOT / "shared").glob("*.py")):
        code = path.read_text()
        if not re.search(r"batchai_client|resource_client|self\.batchai|self\.resources", code):
            continue
        for group, method in SDK_CALL.findall(code):
            if method not in PAGER_METHODS:
                calls.add(("resource_groups" if group == "groups" else group, method))
    return calls


def _batch_ai_access(template: Template) -> tuple[Template, dict[str, Any]]:
    module = template.modules["batchAiAccess"]
    body = template.body(module)
    params = template.value(body["params"])
    return Template(AZURE_DIR / module["detail"]["path"], params), {
        "scope": template.value(body["scope"]),
        **params,
    }


def test_the_app_has_a_custom_role_with_exactly_the_operations_it_calls_on_the_batch_ai_group() -> None:
    """The app's role: not Contributor; a custom role listing the Microsoft.BatchAI and
    Microsoft.Resources actions the code calls, assignable to the Batch AI resource group only."""
    calls = _sdk_calls()
    unknown = calls - set(SDK_CALL_ACTIONS) - set(NOT_GRANTED)
    assert not unknown, (
        f"SDK calls with no known action (add them to SDK_CALL_ACTIONS or NOT_GRANTED): {unknown}"
    )
    needed = {SDK_CALL_ACTIONS[call] for call in calls if call in SDK_CALL_ACTIONS}

    template = _main(batchAiResourceGroupName="rg-training-batchai", computeBackend="batchai")
    assert template.is_deployed("batchAiAccess")
    access, params = _batch_ai_access(template)
    scope = params["scope"]
    assert isinstance(scope, FunctionResult) and scope.properties["name"] == "rg-training-batchai"
    assert params["principalId"] == _expr(template, "functionApp.identity.principalId")
    (role_symbol,) = access.resources_of_type("Microsoft.Authorization/roleDefinitions")
    role = access.value(access.body(access.resources[role_symbol]))
    properties = role["properties"]
    assert properties["type"] == "CustomRole"
    (permissions,) = properties["permissions"]
    assert set(permissions["actions"]) == needed
    assert len(permissions["actions"]) == len(needed)
    assert not any("*" in action for action in permissions["actions"])
    assert permissions["notActions"] == [] and permissions["dataActions"] == []
    module_group = _expr(access, "resourceGroup().id")
    assert properties["assignableScopes"] == [module_group]
    uuid.UUID(role["name"])

    (assignment,) = _assignments(access)
    assert assignment["roleDefinitionId"] == _expr(access, f"{role_symbol}.id")
    assert assignment["role"] not in BUILT_IN_ROLES  # not Contributor, nor any other built-in role
    assert assignment["scope"] is None  # the module's own scope: the Batch AI resource group
    assert assignment["principalId"] == params["principalId"]
    assert assignment["principalType"] == "ServicePrincipal"


def test_azure_ml_workspace_with_least_privilege_roles_by_default() -> None:
    """computeBackend defaults to azureml: the workspace (on the data account, Key Vault and Application
    Insights of main.bicep), the share's datastore, and the app's two AzureML roles on the workspace."""
    template = _main(batchAiResourceGroupName="rg-training")
    assert template.parameters["computeBackend"]["default"] == "azureml"
    module = template.modules["azureMlWorkspace"]
    body = template.body(module)
    scope = template.value(body["scope"])
    assert isinstance(scope, FunctionResult) and scope.properties["name"] == "rg-training"
    params = template.value(body["params"])
    assert params["principalId"] == _expr(template, "functionApp.identity.principalId")
    workspace = Template(AZURE_DIR / module["detail"]["path"], params)
    roles = {BUILT_IN_ROLES[a["role"]] for a in _assignments(workspace)}
    assert roles == {"AzureML Data Scientist", "AzureML Compute Operator"}
    for assignment in _assignments(workspace):
        assert isinstance(assignment["scope"], ResourceRef) and assignment["scope"].symbol == "workspace"
        assert assignment["principalId"] == params["principalId"]
    assert set(workspace.resources_of_type("Microsoft.MachineLearningServices/workspaces/datastores"))
    # No Batch AI role on the training resource group: Azure ML needs the workspace roles only.
    assert template.is_deployed("azureMlWorkspace") and not template.is_deployed("batchAiAccess")


def test_no_template_grants_contributor() -> None:
    for path in sorted(AZURE_DIR.rglob("*.bicep")):
        assert "b24988ac-6180-42a0-ab88-20f7382dd24c" not in path.read_text().lower(), path.name


def test_no_template_grants_a_role_that_could_widen_itself() -> None:
    for path in sorted(AZURE_DIR.rglob("*.bicep")):
        text = path.read_text().lower()
        for role in TOO_WIDE:
            assert role not in text, f"{path.name} grants {role}"


# --- private network: the storage accounts behind private endpoints -----------------------------------------

# Every storage service the app (and the Functions host) uses, by account: what needs a private endpoint
# once the accounts are closed to the public network. The data account: blobs (training data, reports,
# Azure ML outputs), the staging queue, the runs table; the host account: the host's blobs, queues and
# tables and the deployment package; the share account: the file share.
PRIVATE_ENDPOINTS = {
    ("dataStorage", "blob"),
    ("dataStorage", "queue"),
    ("dataStorage", "table"),
    ("hostStorage", "blob"),
    ("hostStorage", "queue"),
    ("hostStorage", "table"),
    ("shareStorage", "file"),
}
PRIVATE_ENDPOINT_MODULE = "modules/storage-private-endpoint.bicep"
DNS_ZONE_MODULE = "modules/private-dns-zone.bicep"


def _network_properties(template: Template, symbol: str) -> dict[str, Any]:
    return template.value(template.body(template.resources[symbol]))["properties"]


def _deployed_modules(template: Template, path: str) -> dict[str, dict[str, Any]]:
    """Symbol -> evaluated params of every deployed call of one module."""
    return {
        symbol: template.value(template.body(declaration)["params"])
        for symbol, declaration in template.modules.items()
        if declaration["detail"]["path"] == path and template.is_deployed(symbol)
    }


def _subnets(template: Template) -> dict[str, dict[str, Any]]:
    _, vnet = _one(template, "Microsoft.Network/virtualNetworks")
    return {subnet["name"]: subnet["properties"] for subnet in vnet["properties"]["subnets"]}


def test_private_networking_is_the_default_and_closes_the_storage_accounts() -> None:
    """No account answers the public network but the data account. By default its public endpoint
    stays open (identity or SAS still needed), since ingest's server-side copies from a firewalled
    source account are unverified; dataAccountFirewall=true closes it to the uploaders' addresses
    (none by default), trusted Azure services and the Azure ML workspace."""
    template = _main(batchAiResourceGroupName="rg-training")
    assert template.parameters["privateNetworking"]["default"] is True
    assert template.parameters["dataAccountFirewall"]["default"] is False
    for symbol in ("hostStorage", "shareStorage"):
        properties = _network_properties(template, symbol)
        assert properties["publicNetworkAccess"] == "Disabled", symbol
        assert properties["networkAcls"]["defaultAction"] == "Deny", symbol
        assert properties["networkAcls"]["bypass"] == "None", symbol
    assert _network_properties(template, "dataStorage")["networkAcls"]["defaultAction"] == "Allow"
    closed = _main(batchAiResourceGroupName="rg-training", dataAccountFirewall=True)
    data = _network_properties(closed, "dataStorage")["networkAcls"]
    assert data["defaultAction"] == "Deny"
    assert data["ipRules"] == []
    workspace_id = (
        "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-training/providers/"
        "Microsoft.MachineLearningServices/workspaces/aml-workspace"
    )
    assert data["resourceAccessRules"] == [
        {"tenantId": _expr(closed, "subscription().tenantId"), "resourceId": workspace_id}
    ]
    uploaders = _main(dataAccountFirewall=True, uploaderIpRanges=["203.0.113.0/24", "198.51.100.7"])
    assert _network_properties(uploaders, "dataStorage")["networkAcls"]["ipRules"] == [
        {"value": "203.0.113.0/24", "action": "Allow"},
        {"value": "198.51.100.7", "action": "Allow"},
    ]
    # Opening the data account opens nothing else.
    assert _network_properties(template, "shareStorage")["publicNetworkAccess"] == "Disabled"
    assert _network_properties(template, "hostStorage")["publicNetworkAccess"] == "Disabled"
    # Batch AI (local stack only) has no workspace to let in.
    batch_ai = _main(computeBackend="batchai", dataAccountFirewall=True)
    assert _network_properties(batch_ai, "dataStorage")["networkAcls"]["resourceAccessRules"] == []


def test_without_private_networking_nothing_of_the_network_is_deployed() -> None:
    template = _main(privateNetworking=False)
    for symbol in ("dataStorage", "hostStorage", "shareStorage"):
        properties = _network_properties(template, symbol)
        assert properties["publicNetworkAccess"] == "Enabled"
        assert properties["networkAcls"]["defaultAction"] == "Allow"
    assert not template.is_deployed("vnet")
    assert not _deployed_modules(template, PRIVATE_ENDPOINT_MODULE)
    assert not _deployed_modules(template, DNS_ZONE_MODULE)
    _, app = _one(template, "Microsoft.Web/sites")
    assert app["properties"]["virtualNetworkSubnetId"] is None


def test_the_app_is_vnet_integrated_into_a_subnet_delegated_to_flex_consumption() -> None:
    template = _main()
    _, app = _one(template, "Microsoft.Web/sites")
    subnet_id = app["properties"]["virtualNetworkSubnetId"]
    vnet_id = _expr(template, "vnet.id")
    assert subnet_id.startswith(f"{vnet_id}/subnets/"), subnet_id
    subnets = _subnets(template)
    app_subnet = subnets[subnet_id.rsplit("/", 1)[1]]
    # Flex Consumption integrates with a subnet delegated to Microsoft.App/environments (not serverFarms).
    assert [d["properties"]["serviceName"] for d in app_subnet["delegations"]] == [
        "Microsoft.App/environments"
    ]
    assert "vnet" in template.body(template.resources["functionApp"])["dependsOn"]
    # The subnets lie in the address space and do not overlap.
    _, vnet = _one(template, "Microsoft.Network/virtualNetworks")
    space = [ipaddress.ip_network(p) for p in vnet["properties"]["addressSpace"]["addressPrefixes"]]
    prefixes = [ipaddress.ip_network(s["addressPrefix"]) for s in subnets.values()]
    for prefix in prefixes:
        assert any(prefix.subnet_of(net) for net in space), prefix
    assert not prefixes[0].overlaps(prefixes[1])
    # The app's subnet holds nothing else; endpoints take addresses from their own subnet.
    assert len(subnets) == 2
    endpoints_subnet = next(s for s in subnets.values() if s is not app_subnet)
    assert endpoints_subnet["privateEndpointNetworkPolicies"] == "Disabled"
    assert "delegations" not in endpoints_subnet


def test_each_storage_service_the_app_uses_has_a_private_endpoint_with_its_dns_zone_group() -> None:
    template = _main()
    storage_suffix = _expr(template, "environment().suffixes.storage")
    zones = {
        params["zoneName"]: (symbol, params)
        for symbol, params in _deployed_modules(template, DNS_ZONE_MODULE).items()
    }
    zone_template = Template(AZURE_DIR / DNS_ZONE_MODULE, next(iter(zones.values()))[1])
    (link_symbol,) = zone_template.resources_of_type("Microsoft.Network/privateDnsZones/virtualNetworkLinks")
    link = zone_template.value(zone_template.body(zone_template.resources[link_symbol]))
    assert link["properties"] == {
        "registrationEnabled": False,
        "virtualNetwork": {"id": _expr(template, "vnet.id")},
    }
    endpoints_subnet = next(
        name for name, subnet in _subnets(template).items() if "delegations" not in subnet
    )
    found = set()
    for symbol, params in _deployed_modules(template, PRIVATE_ENDPOINT_MODULE).items():
        account = next(
            account
            for account in ("dataStorage", "hostStorage", "shareStorage")
            if params["storageAccountId"] == _expr(template, f"{account}.id")
        )
        group = params["groupId"]
        found.add((account, group))
        assert params["subnetId"] == f"{_expr(template, 'vnet.id')}/subnets/{endpoints_subnet}"
        # The zone group points at the service's privatelink zone, which is deployed, linked to the
        # network, and created before the endpoint.
        zone_name = f"privatelink.{group}.{storage_suffix}"
        assert params["privateDnsZoneId"].endswith(
            f"/providers/Microsoft.Network/privateDnsZones/{zone_name}"
        )
        zone_symbol, zone_params = zones[zone_name]
        assert zone_params["virtualNetworkId"] == _expr(template, "vnet.id")
        assert zone_symbol in template.body(template.modules[symbol])["dependsOn"]
        # What the module makes of those parameters: the endpoint to that service, and its zone group.
        endpoint = Template(AZURE_DIR / PRIVATE_ENDPOINT_MODULE, params)
        (pe_symbol, pe) = _one(endpoint, "Microsoft.Network/privateEndpoints")
        (connection,) = pe["properties"]["privateLinkServiceConnections"]
        assert connection["properties"] == {
            "privateLinkServiceId": params["storageAccountId"],
            "groupIds": [group],
        }
        assert pe["properties"]["subnet"] == {"id": params["subnetId"]}
        group_symbol, zone_group = _one(endpoint, "Microsoft.Network/privateEndpoints/privateDnsZoneGroups")
        assert endpoint.body(endpoint.resources[group_symbol])["parent"] == pe_symbol
        (config,) = zone_group["properties"]["privateDnsZoneConfigs"]
        assert config["properties"] == {"privateDnsZoneId": params["privateDnsZoneId"]}
    assert found == PRIVATE_ENDPOINTS
    # The host starts (app settings) only once it can reach its storage.
    settings_depend_on = set(template.body(template.resources["appSettings"])["dependsOn"])
    assert set(_deployed_modules(template, PRIVATE_ENDPOINT_MODULE)) <= settings_depend_on


def test_azure_ml_compute_reaches_the_share_through_the_workspace_managed_network() -> None:
    """The share account has no public endpoint: Azure ML's clusters (which the app creates in the
    workspace) reach it through a private endpoint of the workspace's managed network, which the
    workspace identity may approve."""
    template = _main(batchAiResourceGroupName="rg-training")
    params = template.value(template.body(template.modules["azureMlWorkspace"])["params"])
    assert params["privateNetworking"] is True
    assert params["shareStorageAccountId"] == _expr(template, "shareStorage.id")
    workspace = Template(AZURE_DIR / template.modules["azureMlWorkspace"]["detail"]["path"], params)
    _, body = _one(workspace, "Microsoft.MachineLearningServices/workspaces")
    network = body["properties"]["managedNetwork"]
    assert network["isolationMode"] == "AllowInternetOutbound"
    (rule,) = network["outboundRules"].values()
    assert rule["type"] == "PrivateEndpoint"
    assert rule["destination"]["serviceResourceId"] == params["shareStorageAccountId"]
    assert rule["destination"]["subresourceTarget"] == "file"

    approver_call = workspace.modules["networkApprover"]
    assert workspace.is_deployed("networkApprover")
    scope = workspace.value(workspace.body(approver_call)["scope"])
    assert scope.properties["name"] == params["storageResourceGroupName"] == RESOURCE_GROUP
    approver_params = workspace.value(workspace.body(approver_call)["params"])
    assert approver_params["principalId"] == _expr(workspace, "workspace.identity.principalId")
    approver = Template(AZURE_DIR / "modules" / approver_call["detail"]["path"], approver_params)
    granted = set()
    for assignment in _assignments(approver):
        assert assignment["principalId"] == approver_params["principalId"]
        assert assignment["principalType"] == "ServicePrincipal"
        account = approver.value(approver.body(approver.resources[assignment["scope"].symbol])["name"])
        granted.add((account, BUILT_IN_ROLES[assignment["role"]]))
    role = "Azure AI Enterprise Network Connection Approver"
    assert granted == {
        (template.resource_name("dataStorage"), role),
        (template.resource_name("shareStorage"), role),
    }

    public = Template(workspace.path, {**params, "privateNetworking": False})
    assert (
        _one(public, "Microsoft.MachineLearningServices/workspaces")[1]["properties"]["managedNetwork"]
        is None
    )
    assert not public.is_deployed("networkApprover")


# --- Event Grid -----------------------------------------------------------------------------------------


def _ingest_events(template: Template) -> Template:
    module = template.modules["ingestEvents"]
    return Template(AZURE_DIR / module["detail"]["path"], template.value(template.body(module)["params"]))


def test_system_topic_on_the_data_account() -> None:
    template = _main()
    _, topic = _one(template, "Microsoft.EventGrid/systemTopics")
    assert topic["properties"]["topicType"] == "Microsoft.Storage.StorageAccounts"
    assert topic["properties"]["source"] == _expr(template, "dataStorage.id")
    assert topic["identity"] == {"type": "SystemAssigned"}


def test_ingest_subscription_is_a_second_pass() -> None:
    assert not _main().is_deployed("ingestEvents")
    assert _main(enableIngestEventSubscription=True).is_deployed("ingestEvents")


def test_ingest_subscription_delivers_training_data_blob_created_to_the_blob_trigger_webhook() -> None:
    template = _main(enableIngestEventSubscription=True)
    events = _ingest_events(template)
    (symbol,) = events.resources_of_type("Microsoft.EventGrid/systemTopics/eventSubscriptions")
    subscription = events.value(events.body(events.resources[symbol]))
    assert events.value(events.body(events.resources["systemTopic"])["name"]) == template.resource_name(
        "systemTopic"
    )
    properties = subscription["properties"]
    assert properties["filter"]["includedEventTypes"] == ["Microsoft.Storage.BlobCreated"]
    assert properties["filter"]["subjectBeginsWith"] == "/blobServices/default/containers/training-data/"
    destination = properties["destination"]
    assert destination["endpointType"] == "WebHook"
    url = urlsplit(destination["properties"]["endpointUrl"])
    assert url.scheme == "https"
    assert url.netloc == _expr(template, "functionApp.properties.defaultHostName")
    assert url.path == "/runtime/webhooks/blobs"
    query = parse_qs(url.query)
    function_name = template.value(template.parameters["ingestFunctionName"]["default"])
    assert query["functionName"] == [f"Host.Functions.{function_name}"]
    assert query["code"] == [
        "simulated-blobs-extension-key"
    ]  # listKeys(host/default).systemKeys.blobs_extension
    dead_letter = properties["deadLetterWithResourceIdentity"]
    assert dead_letter["identity"] == {"type": "SystemAssigned"}
    destination = dead_letter["deadLetterDestination"]["properties"]
    assert destination["resourceId"] == _expr(template, "dataStorage.id")
    assert destination["blobContainerName"] == _expr(template, "deadLetterContainerName")


def test_subscription_follows_the_training_container_parameter() -> None:
    events = _ingest_events(_main(enableIngestEventSubscription=True, trainingContainerName="datasets"))
    (symbol,) = events.resources_of_type("Microsoft.EventGrid/systemTopics/eventSubscriptions")
    subscription = events.value(events.body(events.resources[symbol]))
    assert (
        subscription["properties"]["filter"]["subjectBeginsWith"]
        == "/blobServices/default/containers/datasets/"
    )


def _blob_triggers() -> list[tuple[Any, dict[str, Any]]]:
    """(function, binding) for every blob trigger declared by a blueprint in the functions/ package."""
    import azure.functions as func

    import functions

    app = func.FunctionApp()
    for info in pkgutil.iter_modules(functions.__path__):
        module = importlib.import_module(f"functions.{info.name}")
        for value in vars(module).values():
            if isinstance(value, func.Blueprint):
                app.register_functions(value)
    return [
        (function, binding.get_dict_repr())
        for function in app.get_functions()
        for binding in function.get_bindings()
        if binding.type == "blobTrigger"
    ]


def test_ingest_function_matches_the_webhook() -> None:
    """The function main.bicep routes events to is the app's Event Grid blob trigger on training-data."""
    triggers = _blob_triggers()
    if not triggers:
        pytest.skip("no blueprint in functions/ declares a blob trigger yet")
    template = _main()
    app_settings = template.value(template.body(template.resources["appSettings"])["properties"])
    default_name = template.value(template.parameters["ingestFunctionName"]["default"])
    matching = [binding for function, binding in triggers if function.get_function_name() == default_name]
    assert matching, f"no blob trigger named {default_name!r}: {[f.get_function_name() for f, _ in triggers]}"
    (binding,) = matching
    # Flex Consumption runs blob triggers only with the Event Grid source.
    assert binding.get("source") == "EventGrid", binding
    # A connection string, or the identity-based form the host reads as `<connection>__accountName`.
    connection = binding["connection"]
    assert connection in app_settings or f"{connection}__accountName" in app_settings
    container = re.sub(r"%(\w+)%", lambda m: app_settings[m.group(1)], binding["path"]).split("/")[0]
    assert container == app_settings["TRAINING_CONTAINER"]


@pytest.mark.parametrize(
    "path", sorted(AZURE_DIR.rglob("*.bicep")), ids=lambda p: str(p.relative_to(AZURE_DIR))
)
def test_no_unused_parameters_or_variables(path: Path) -> None:
    """What Bicep's linter (no-unused-params, no-unused-vars) would flag, since it cannot run here."""
    document = parse(path)
    code = "\n".join(_without_comment(line) for line in path.read_text().splitlines())
    for kind in ("parameters", "variables"):
        for name in document.get(kind, {}):
            uses = len(re.findall(rf"(?<![\w.]){re.escape(name)}\b", code)) - 1  # minus the declaration
            assert uses > 0, f"{path.name}: {kind[:-1]} {name} is never used"


def _without_comment(line: str) -> str:
    """The line up to a `//` comment that is not inside a '...' string (URLs in strings stay)."""
    quoted = False
    for index, char in enumerate(line):
        if char == "'":
            quoted = not quoted
        elif not quoted and line.startswith("//", index):
            return line[:index]
    return line
