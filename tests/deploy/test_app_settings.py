"""The app settings the app reads, local.settings.json.example and the Bicep app settings agree exactly.

Source of truth for what the app reads: `Settings.setting_names()` in shared/settings.py (every field
alias of the settings model). The documented exceptions, each with its reason, are the allow-lists
below; anything else missing on either side fails.

Beyond the names, the settings an Azure deployment would produce (main.bicep evaluated for the
example parameters, Key Vault references resolved to the secrets the template stores) are fed to
`Settings.from_env`: the app must accept them as they are.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from shared.settings import CredentialKind, Settings, SettingsError
from tests.deploy.bicep import AZURE_DIR, MAIN, ROOT, SUBSCRIPTION_ID, Template, key_vault_secret_uri

LOCAL_SETTINGS_EXAMPLE = ROOT / "local.settings.json.example"
PARAMETERS_EXAMPLE = AZURE_DIR / "main.parameters.example.json"

# Host settings in local.settings.json.example that Azure must NOT get as app settings: on Flex
# Consumption the worker runtime is functionAppConfig.runtime, and FUNCTIONS_WORKER_RUNTIME (like
# FUNCTIONS_EXTENSION_VERSION) is on the plan's list of deprecated app settings.
LOCAL_ONLY = {"FUNCTIONS_WORKER_RUNTIME"}

# Settings the app reads under one name locally and that Azure gets in identity-based form: the host
# storage account is reached with the managed identity (shared keys are off on that account), so
# AzureWebJobsStorage (a connection string locally, Azurite) becomes AzureWebJobsStorage__accountName.
# The data account likewise (its shared keys are off): STORAGE_CONNECTION_STRING (a connection string with
# the key locally, Azurite) becomes STORAGE_CONNECTION_STRING__accountName, which the app reads too.
IDENTITY_FORM = {
    "AzureWebJobsStorage": "AzureWebJobsStorage__accountName",
    "STORAGE_CONNECTION_STRING": "STORAGE_CONNECTION_STRING__accountName",
}

# Host settings that exist only in Azure: telemetry to Application Insights with Entra ID
# authentication (its local auth is off). The local stack has no Application Insights.
AZURE_ONLY = {"APPLICATIONINSIGHTS_CONNECTION_STRING", "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"}

# Settings Flex Consumption deprecates (moved to functionAppConfig or gone): none may appear in main.bicep.
FLEX_REJECTED = {
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTSHARE",
    "WEBSITE_NODE_DEFAULT_VERSION",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
}

# Settings whose deployed default is not the app's: Azure trains through Azure ML (Batch AI is retired
# there), the local stack keeps Batch AI, the quickstart's service, as its default.
DEPLOYED_DEFAULTS = {
    "COMPUTE_BACKEND": "azureml",
    "DEFAULT_VM_SIZE": "Standard_NC4as_T4_v3",  # a GPU size Azure sells today (STANDARD_NC6 is retired)
    "ALLOWED_VM_SIZES": "Standard_NC4as_T4_v3,Standard_NC8as_T4_v3,Standard_NC16as_T4_v3,"
    "Standard_NC24ads_A100_v4,Standard_D2s_v3",
}

CALLBACK_SECRET = "0123456789abcdef0123456789abcdef"


def _example_parameters() -> dict[str, Any]:
    document = json.loads(PARAMETERS_EXAMPLE.read_text())
    return {name: entry["value"] for name, entry in document["parameters"].items()}


def _deployment(**overrides: Any) -> Template:
    """main.bicep for the example parameters plus the secrets given on the command line."""
    return Template(MAIN, {**_example_parameters(), "callbackSigningSecret": CALLBACK_SECRET, **overrides})


def _bicep_app_settings(template: Template) -> dict[str, str]:
    app_settings = template.resources_of_type("Microsoft.Web/sites/config")
    (symbol,) = [
        s for s, r in app_settings.items() if template.value(template.body(r)["name"]) == "appsettings"
    ]
    values = template.value(template.body(app_settings[symbol])["properties"])
    assert all(isinstance(v, str) for v in values.values()), values
    return values


def _resolve_key_vault_references(template: Template, app_settings: dict[str, str]) -> dict[str, str]:
    """What the platform hands the app: each Key Vault reference replaced by the stored secret value."""
    secrets: dict[str, str] = {}
    for symbol, declaration in template.resources_of_type("Microsoft.KeyVault/vaults/secrets").items():
        if template.is_deployed(symbol):
            properties = template.value(template.body(declaration)["properties"])
            uri = template.value(f"${{{symbol}.properties.secretUri}}")
            secrets[uri] = properties["value"]
    resolved = {}
    for name, value in app_settings.items():
        uri = key_vault_secret_uri(value)
        if uri is not None:
            assert uri in secrets, f"{name} refers to {uri}, which the template does not store"
            value = secrets[uri]
        resolved[name] = value
    return resolved


def _secret_settings() -> set[str]:
    """Aliases of the settings whose type is a SecretStr (optional or not)."""
    names = set()
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if annotation is SecretStr or SecretStr in typing.get_args(annotation):
            names.add(field.alias or name)
    return names


# --- the three lists agree ------------------------------------------------------------------------------


def test_the_settings_module_lists_what_it_reads() -> None:
    names = Settings.setting_names()
    assert len(names) == len(set(names)), "duplicate setting names"
    assert "STORAGE_CONNECTION_STRING" in names and "AzureWebJobsStorage" in names


def test_local_settings_example_lists_exactly_the_settings_the_app_reads() -> None:
    values = json.loads(LOCAL_SETTINGS_EXAMPLE.read_text())["Values"]
    listed = {name for name in values if not name.startswith("_")}
    expected = set(Settings.setting_names()) | LOCAL_ONLY
    assert sorted(expected - listed) == [], "settings the app reads but local.settings.json.example lacks"
    assert sorted(listed - expected) == [], (
        "settings in local.settings.json.example that the app does not read"
    )


def test_bicep_app_settings_are_exactly_the_settings_the_app_reads() -> None:
    bicep = set(_bicep_app_settings(_deployment()))
    read = set(Settings.setting_names())
    expected = {IDENTITY_FORM.get(name, name) for name in read} | AZURE_ONLY
    assert sorted(expected - bicep) == [], "settings the app reads but main.bicep does not set"
    assert sorted(bicep - expected) == [], "settings main.bicep sets that the app does not read"
    assert not bicep & FLEX_REJECTED


def test_allow_lists_name_real_settings() -> None:
    """The exceptions stay honest: each names a setting that exists where it says."""
    local = set(json.loads(LOCAL_SETTINGS_EXAMPLE.read_text())["Values"])
    bicep = set(_bicep_app_settings(_deployment()))
    assert local >= LOCAL_ONLY and not LOCAL_ONLY & bicep
    assert set(IDENTITY_FORM) <= set(Settings.setting_names()) and set(IDENTITY_FORM.values()) <= bicep
    assert bicep >= AZURE_ONLY and not AZURE_ONLY & local


# --- secrets live in Key Vault --------------------------------------------------------------------------


def test_every_secret_setting_is_a_key_vault_reference_or_empty() -> None:
    deployments = {
        "defaults": _deployment(),
        "all secrets given": _deployment(
            clusterAdminPassword="Adm1n-password-for-test",
            containerRegistryServer="myregistry.azurecr.io",
            containerRegistryUsername="puller",
            containerRegistryPassword="registry-password-for-test",
            mountShareWithKeyVaultSecret=True,
        ),
    }
    secret_names = (_secret_settings() - set(IDENTITY_FORM)) | {"CLUSTER_SSH_PUBLIC_KEY"}
    for label, template in deployments.items():
        app_settings = _bicep_app_settings(template)
        for name in secret_names:
            value = app_settings[name]
            assert value == "" or key_vault_secret_uri(value), (
                f"{label}: {name} is neither empty nor a reference"
            )
        for name in ("FILE_SHARE_CONNECTION_STRING", "CALLBACK_SIGNING_SECRET", "CLUSTER_SSH_PUBLIC_KEY"):
            assert key_vault_secret_uri(app_settings[name]), f"{label}: {name} must come from Key Vault"
    given = _bicep_app_settings(deployments["all secrets given"])
    assert key_vault_secret_uri(given["CLUSTER_ADMIN_PASSWORD"])
    assert key_vault_secret_uri(given["CONTAINER_REGISTRY_PASSWORD"])


# --- the app accepts what Azure hands it ----------------------------------------------------------------


def _azure_settings(template: Template) -> Settings:
    app_settings = _resolve_key_vault_references(template, _bicep_app_settings(template))
    return Settings.from_env({k: v for k, v in app_settings.items() if k not in AZURE_ONLY})


def test_deployed_settings_validate_with_the_app_settings_module() -> None:
    template = _deployment()
    settings = _azure_settings(template)
    data_account = template.resource_name("dataStorage")
    share_account = template.resource_name("shareStorage")
    assert settings.credential is CredentialKind.DEFAULT
    assert settings.arm_endpoint == "https://management.azure.com"
    assert settings.subscription_id == SUBSCRIPTION_ID
    assert settings.resource_group == _example_parameters()["batchAiResourceGroupName"]
    # The data account by the app's identity (no key anywhere); the share's account by its key.
    assert settings.storage.account_name == data_account
    assert settings.storage.account_key is None
    assert settings.storage.table_endpoint == f"https://{data_account}.table.core.windows.net"
    assert settings.storage.blob_endpoint == f"https://{data_account}.blob.core.windows.net"
    assert settings.file_share_storage.account_name == share_account != data_account
    assert settings.file_share_storage.account_key is not None
    assert settings.file_share_url == f"https://{share_account}.file.core.windows.net/batchaiquickstart"
    assert settings.callback_signing_secret is not None
    assert settings.callback_signing_secret.get_secret_value() == CALLBACK_SECRET
    assert settings.cluster_ssh_public_key == _example_parameters()["clusterSshPublicKey"]
    assert settings.host_storage is None  # identity-based host storage: no connection string anywhere
    assert settings.callback_allow_loopback_http is False
    assert settings.cleanup_dry_run is False


def test_deployed_settings_with_every_option_validate() -> None:
    template = _deployment(
        clusterAdminPassword="Adm1n-password-for-test",
        containerRegistryServer="myregistry.azurecr.io",
        containerRegistryUsername="puller",
        containerRegistryPassword="registry-password-for-test",
        mountShareWithKeyVaultSecret=True,
        cleanupDryRun=True,
    )
    settings = _azure_settings(template)
    vault = template.resource_name("vault")
    assert settings.cluster_admin_password is not None
    assert settings.cluster_admin_password.get_secret_value() == "Adm1n-password-for-test"
    assert settings.container_registry_password is not None
    assert settings.file_share_key_vault_secret_url == (
        f"https://{vault}.vault.azure.net/secrets/file-share-account-key"
    )
    assert settings.key_vault_resource_id is not None
    assert settings.key_vault_resource_id.endswith(f"/providers/Microsoft.KeyVault/vaults/{vault}")
    assert settings.cleanup_dry_run is True


def test_bicep_defaults_are_the_app_defaults() -> None:
    """A setting that main.bicep takes straight from a parameter has the app's default as that default."""
    template = Template(
        MAIN, {"clusterSshPublicKey": "ssh-ed25519 AAAA x", "callbackSigningSecret": CALLBACK_SECRET}
    )
    properties = template.body(template.resources["appSettings"])["properties"]
    fields = {field.alias: field for field in Settings.model_fields.values()}
    compared = []
    for name, node in properties.items():
        param = node if isinstance(node, str) and node in template.parameters else None
        if (
            param is None and isinstance(node, dict) and "function" in node
        ):  # join(param, ',') or string(param)
            inner = next(iter((node["function"].get("parameters") or {}).values()))
            param = inner if isinstance(inner, str) and inner in template.parameters else None
        if param is None or "default" not in template.parameters[param]:
            continue
        if name not in fields or fields[name].is_required():
            continue
        default = fields[name].default
        app_default = ",".join(default) if isinstance(default, tuple) else default
        if app_default is None:
            app_default = ""  # an empty app setting counts as missing
        bicep_default = template.value(node)
        if name in DEPLOYED_DEFAULTS:  # Azure's default differs from the local stack's on purpose
            assert bicep_default == DEPLOYED_DEFAULTS[name], name
            compared.append(name)
            continue
        if isinstance(app_default, int | float) and not isinstance(app_default, bool):
            bicep_default = float(bicep_default)
        assert bicep_default == app_default, (
            f"{name}: main.bicep default {bicep_default!r}, app {app_default!r}"
        )
        compared.append(name)
    assert len(compared) >= 10, compared


def test_a_bad_parameter_fails_with_the_setting_named() -> None:
    """A deployment whose parameters the app would reject is caught here, naming the setting."""
    template = _deployment(defaultVmSize="STANDARD_NC6", allowedVmSizes=["STANDARD_NC12"])
    with pytest.raises(SettingsError, match="DEFAULT_VM_SIZE"):
        _azure_settings(template)


def test_parameters_example_is_valid_json_for_main_bicep() -> None:
    parameters = _example_parameters()
    declared = Template(
        MAIN, {"clusterSshPublicKey": "x" * 16, "callbackSigningSecret": CALLBACK_SECRET}
    ).parameters
    assert set(parameters) <= set(declared), sorted(set(parameters) - set(declared))
    types = {"string": str, "int": int, "bool": bool, "array": list, "object": dict}
    for name, value in parameters.items():
        assert isinstance(value, types[declared[name]["type"]]), f"{name}: {value!r}"
    required = {name for name, spec in declared.items() if "default" not in spec}
    secure = {
        name
        for name, spec in declared.items()
        if any(d.get("type") == "secure" for d in spec.get("decorators", []))
    }
    # Required parameters come from the file, except secure ones, which are given on the command line.
    assert required - secure <= set(parameters)
    assert not secure & set(parameters), "secrets do not belong in a committed parameters file"


def test_parameters_example_path() -> None:
    assert Path(PARAMETERS_EXAMPLE).is_file()
