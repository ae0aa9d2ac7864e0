"""Every app setting, read from the environment and validated in one place, at first use.

Why one module: a missing or malformed setting should fail with one clear message naming the setting
and what it expects, not deep inside an SDK call minutes later. Secrets are `pydantic.SecretStr`, so
`repr`, `str` and logs show `**********`; call `.get_secret_value()` only where the secret is sent.

`get_settings()` reads `os.environ` once and caches the result; tests call `reset_settings()` after
changing the environment (or pass a mapping to `Settings.from_env`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import threading
import uuid
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "ComputeBackendKind",
    "CredentialKind",
    "Settings",
    "SettingsError",
    "StorageAccount",
    "get_settings",
    "is_loopback_url",
    "local_stack_values",
    "reset_settings",
]

EXAMPLE_FILE = Path(__file__).resolve().parents[1] / "local.settings.json.example"


class SettingsError(ValueError):
    """One or more app settings are missing or malformed; the message names each one."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = [f"{name}: {message}" for name, message in problems]
        super().__init__("invalid app settings:\n  " + "\n  ".join(lines))


class ClusterIdleAction(StrEnum):
    """What the monitor does with a cluster idle for CLUSTER_IDLE_MINUTES (idle release)."""

    # Resize a manually scaled cluster to zero nodes: no node bills, and the next run of the dataset
    # starts by asking for nodes again instead of creating the cluster.
    SCALE_TO_ZERO = "scale_to_zero"
    # Delete the cluster: nothing is left; the next run creates it again.
    DELETE = "delete"


class ComputeBackendKind(StrEnum):
    """Which training service runs the jobs (shared.compute_port.build_backend)."""

    # Azure Batch AI 2018-05-01: the local stack's default (retired in Azure since 2019).
    BATCHAI = "batchai"
    # Azure Machine Learning (Microsoft.MachineLearningServices 2024-10-01): Azure today.
    AZUREML = "azureml"


class CredentialKind(StrEnum):
    """How the app authenticates to Azure Resource Manager."""

    # azure-identity's DefaultAzureCredential: managed identity in Azure, developer login locally.
    DEFAULT = "default"
    # The local ARM emulator's per-stack bearer token (LOCAL_ARM_TOKEN; `make up` generates it).
    LOCAL_DEV_TOKEN = "local-dev-token"


# --- reusable checks ----------------------------------------------------------------------------------

_STORAGE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?!-)){1,61}[a-z0-9]$")  # containers and shares
_AZUREML_WORKSPACE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{2,32}$")  # Workspaces_Get's pattern
_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")
# Batch AI 2018-05-01 resource names: ^[-\w_]+$, 1..64 characters (workspace) and resource groups.
_BATCHAI_NAME = re.compile(r"^[-\w_]{1,64}$")
_RESOURCE_GROUP = re.compile(r"^[-\w._()]{1,90}$")
_LOCATION = re.compile(r"^[a-z0-9]{2,40}$")
_VM_SIZE = re.compile(r"^[A-Za-z0-9_]{2,64}$")
_ADMIN_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_NCRONTAB_FIELD = re.compile(r"^[0-9A-Za-z*/,\-]+$")
_SSH_KEY = re.compile(r"^(ssh-rsa|ssh-ed25519|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+( .*)?$")
_KEY_VAULT_REF = re.compile(r"^@Microsoft\.KeyVault\(", re.IGNORECASE)


def _storage_name(kind: str) -> Any:
    def check(value: str) -> str:
        if not _STORAGE_NAME.match(value):
            raise ValueError(
                f"expected a {kind} name: 3-63 lowercase letters, digits and single hyphens, "
                "starting and ending with a letter or digit"
            )
        return value

    return AfterValidator(check)


def _ncrontab(value: str) -> str:
    fields = value.split()
    if len(fields) != 6 or not all(_NCRONTAB_FIELD.match(f) for f in fields):
        raise ValueError(
            "expected a six-field NCRONTAB expression '{second} {minute} {hour} {day} {month} {day-of-week}',"
            " e.g. '0 */5 * * * *'"
        )
    return " ".join(fields)


def _https_or_loopback_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an absolute http(s) URL")
    if parts.scheme == "http" and not is_loopback_url(value):
        raise ValueError("expected an https URL (plain http is allowed only for loopback hosts)")
    return value.rstrip("/")


_KEY_VAULT_SECRET_PATH = re.compile(r"^/secrets/[0-9A-Za-z-]{1,127}(/[0-9A-Za-z]{1,64})?/?$")


_KEY_VAULT_RESOURCE_ID = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.KeyVault/vaults/[^/]+$", re.IGNORECASE
)


def is_key_vault_resource_id(value: str) -> bool:
    """``/subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.KeyVault/vaults/<name>``: the one
    check (run specs and settings use it)."""
    return _KEY_VAULT_RESOURCE_ID.match(value) is not None


def check_key_vault_secret_url(value: str) -> str:
    """The one check of a Key Vault secret URL (run specs and settings use it):
    ``https://<vault host>/secrets/<name>[/<version>]``, nothing before ``/secrets/``, no query or
    fragment; ValueError naming the expected form otherwise."""
    parts = urlsplit(value)
    if (
        parts.scheme != "https"
        or not parts.hostname
        or parts.query
        or parts.fragment
        or not _KEY_VAULT_SECRET_PATH.match(parts.path)
    ):
        raise ValueError(
            "expected a Key Vault secret URL 'https://<vault>.vault.azure.net/secrets/<name>[/<version>]'"
        )
    return value


def is_loopback_url(url: str) -> bool:
    """True for URLs whose host is localhost, 127.0.0.0/8 or ::1 (the local stack)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


StorageName = Annotated[str, _storage_name("container")]
ShareName = Annotated[str, _storage_name("file share")]
Schedule = Annotated[str, AfterValidator(_ncrontab)]
Endpoint = Annotated[str, AfterValidator(_https_or_loopback_url)]


class StorageAccount(BaseModel):
    """What a storage connection string says: account name and key, and each service's endpoint."""

    model_config = ConfigDict(frozen=True)

    account_name: str
    account_key: SecretStr | None
    blob_endpoint: str
    file_endpoint: str
    table_endpoint: str
    queue_endpoint: str

    @classmethod
    def identity_based(cls, account_name: str) -> StorageAccount:
        """An account the app reaches with its managed identity (no key): Azure's public endpoints."""
        return cls(
            account_name=account_name,
            account_key=None,
            **{
                f"{s}_endpoint": f"https://{account_name}.{s}.core.windows.net"
                for s in ("blob", "file", "table", "queue")
            },
        )

    @classmethod
    def parse(cls, connection_string: str) -> StorageAccount:
        parts: dict[str, str] = {}
        for position, segment in enumerate(connection_string.strip().split(";"), start=1):
            if not segment.strip():
                continue
            key, sep, value = segment.partition("=")
            if not sep:
                # Only the position: a ';' inside an account key makes the segment a piece of the key,
                # and this message reaches logs and the anonymous /api/health body.
                raise ValueError(f"expected Key=Value pairs separated by ';': segment {position} has no '='")
            parts[key.strip().lower()] = value.strip()
        if parts.get("usedevelopmentstorage", "").lower() == "true":
            raise ValueError(
                "UseDevelopmentStorage=true has no file endpoint: give the full connection string "
                "with AccountName, AccountKey, BlobEndpoint, TableEndpoint and FileEndpoint"
            )
        name = parts.get("accountname")
        if not name:
            raise ValueError("expected an AccountName in the connection string")
        account_key = parts.get("accountkey")
        if not account_key:
            raise ValueError(
                "expected an AccountKey in the connection string (Batch AI mounts the share with the key; "
                "for a data account reached by the app's identity, give only its name in "
                "STORAGE_CONNECTION_STRING__accountName)"
            )
        protocol = parts.get("defaultendpointsprotocol", "https")
        suffix = parts.get("endpointsuffix", "core.windows.net")

        def endpoint(service: str) -> str:
            explicit = parts.get(f"{service}endpoint")
            return (explicit or f"{protocol}://{name}.{service}.{suffix}").rstrip("/")

        return cls(
            account_name=name,
            account_key=SecretStr(account_key),
            blob_endpoint=endpoint("blob"),
            file_endpoint=endpoint("file"),
            table_endpoint=endpoint("table"),
            queue_endpoint=endpoint("queue"),
        )


# --- the settings -------------------------------------------------------------------------------------


class Settings(BaseModel):
    """Typed, frozen app settings. Field aliases are the app setting (environment variable) names."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    # Storage
    host_storage: SecretStr | None = Field(default=None, alias="AzureWebJobsStorage")
    # The data account (training blobs, run registry, reports): a connection string with its key (the
    # local stack: Azurite needs one), or, in Azure, only its name: the app's managed identity.
    storage_connection_string: SecretStr | None = Field(default=None, alias="STORAGE_CONNECTION_STRING")
    storage_account_name: str | None = Field(default=None, alias="STORAGE_CONNECTION_STRING__accountName")
    # The account of the file share the clusters mount with its key: its own account in Azure.
    file_share_connection_string: SecretStr | None = Field(default=None, alias="FILE_SHARE_CONNECTION_STRING")
    training_container: StorageName = Field(default="training-data", alias="TRAINING_CONTAINER")
    file_share_name: ShareName = Field(default="batchaiquickstart", alias="FILE_SHARE_NAME")
    runs_table: str = Field(default="runs", alias="RUNS_TABLE")
    reports_container: StorageName = Field(default="reports", alias="REPORTS_CONTAINER")
    staging_queue: StorageName = Field(default="staging-requests", alias="STAGING_QUEUE")

    # Azure Resource Manager and Batch AI
    arm_endpoint: Endpoint = Field(default="https://management.azure.com", alias="ARM_ENDPOINT")
    subscription_id: str = Field(alias="AZURE_SUBSCRIPTION_ID")
    credential: CredentialKind = Field(default=CredentialKind.DEFAULT, alias="AZURE_CREDENTIAL")
    local_arm_token: SecretStr | None = Field(default=None, alias="LOCAL_ARM_TOKEN")
    resource_group: str = Field(alias="BATCHAI_RESOURCE_GROUP")
    location: str = Field(alias="BATCHAI_LOCATION")
    workspace: str = Field(default="batchai-workspace", alias="BATCHAI_WORKSPACE")
    compute_backend: ComputeBackendKind = Field(default=ComputeBackendKind.BATCHAI, alias="COMPUTE_BACKEND")
    azureml_workspace: str = Field(default="aml-workspace", alias="AZUREML_WORKSPACE")

    # Cluster defaults
    default_vm_size: str = Field(default="STANDARD_NC6", alias="DEFAULT_VM_SIZE")
    allowed_vm_sizes: tuple[str, ...] = Field(
        default=("STANDARD_NC6", "STANDARD_NC12", "STANDARD_NC24", "STANDARD_NV6", "STANDARD_D1_V2"),
        alias="ALLOWED_VM_SIZES",
    )
    cluster_admin_user: str = Field(default="batchai", alias="CLUSTER_ADMIN_USER")
    cluster_ssh_public_key: str | None = Field(default=None, alias="CLUSTER_SSH_PUBLIC_KEY")
    cluster_admin_password: SecretStr | None = Field(default=None, alias="CLUSTER_ADMIN_PASSWORD")
    file_share_key_vault_secret_url: str | None = Field(default=None, alias="FILE_SHARE_KEY_VAULT_SECRET_URL")
    key_vault_resource_id: str | None = Field(default=None, alias="KEY_VAULT_RESOURCE_ID")
    container_registry_server: str | None = Field(default=None, alias="CONTAINER_REGISTRY_SERVER")
    container_registry_username: str | None = Field(default=None, alias="CONTAINER_REGISTRY_USERNAME")
    container_registry_password: SecretStr | None = Field(default=None, alias="CONTAINER_REGISTRY_PASSWORD")

    # Schedules, retention, timeouts
    monitor_schedule: Schedule = Field(default="0 */1 * * * *", alias="MONITOR_SCHEDULE")
    cleanup_schedule: Schedule = Field(default="0 0 2 * * *", alias="CLEANUP_SCHEDULE")
    cleanup_dry_run: bool = Field(default=False, alias="CLEANUP_DRY_RUN")
    job_retention_hours: float = Field(default=72.0, ge=0, alias="JOB_RETENTION_HOURS")
    staged_data_retention_hours: float = Field(default=72.0, ge=0, alias="STAGED_DATA_RETENTION_HOURS")
    cluster_idle_minutes: float = Field(default=30.0, ge=0, alias="CLUSTER_IDLE_MINUTES")
    cluster_idle_action: ClusterIdleAction = Field(
        default=ClusterIdleAction.SCALE_TO_ZERO, alias="CLUSTER_IDLE_ACTION"
    )
    staging_timeout_minutes: float = Field(default=60.0, gt=0, alias="STAGING_TIMEOUT_MINUTES")
    copy_timeout_seconds: float = Field(default=600.0, gt=0, alias="COPY_TIMEOUT_SECONDS")

    # What a run spec may ask for (docs/security.md, "Narrowing the trust")
    manifest_commands_allowed: bool = Field(default=True, alias="MANIFEST_COMMANDS_ALLOWED")
    max_nodes_per_run: int = Field(default=16, ge=1, le=1000, alias="MAX_NODES_PER_RUN")
    clusters_by_derived_name_only: bool = Field(default=False, alias="CLUSTERS_BY_DERIVED_NAME_ONLY")

    # Callbacks and outputs
    callback_signing_secret: SecretStr | None = Field(default=None, alias="CALLBACK_SIGNING_SECRET")
    callback_allow_loopback_http: bool = Field(default=False, alias="CALLBACK_ALLOW_LOOPBACK_HTTP")
    max_stdout_tail_bytes: int = Field(default=4096, ge=0, le=1_048_576, alias="MAX_STDOUT_TAIL_BYTES")

    # --- field checks -------------------------------------------------------------------------------
    @field_validator(
        "storage_connection_string",
        "file_share_connection_string",
        "host_storage",
        "local_arm_token",
        "cluster_admin_password",
        "container_registry_password",
        "callback_signing_secret",
        mode="before",
    )
    @classmethod
    def _not_unresolved_key_vault_reference(cls, value: Any) -> Any:
        if isinstance(value, str) and _KEY_VAULT_REF.match(value.strip()):
            raise ValueError(
                "is an unresolved Key Vault reference: grant the function app's identity 'get' on "
                "the secret (the platform substitutes the value when it can read it)"
            )
        return value

    @field_validator("storage_connection_string", "file_share_connection_string")
    @classmethod
    def _parsable_connection_string(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        try:
            StorageAccount.parse(value.get_secret_value())
        except ValueError as exc:  # the message never repeats the secret
            raise ValueError(str(exc)) from None
        return value

    @field_validator("storage_account_name")
    @classmethod
    def _account_name(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[a-z0-9]{3,24}$", value):
            raise ValueError("expected a storage account name: 3-24 lowercase letters and digits")
        return value

    @field_validator("runs_table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        if not _TABLE_NAME.match(value):
            raise ValueError("expected a table name: 3-63 letters and digits, starting with a letter")
        return value

    @field_validator("subscription_id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise ValueError("expected a subscription id (a GUID)") from None

    @field_validator("resource_group")
    @classmethod
    def _resource_group(cls, value: str) -> str:
        if not _RESOURCE_GROUP.match(value) or value.endswith("."):
            raise ValueError("expected a resource group name: 1-90 letters, digits, '-', '_', '.', '(', ')'")
        return value

    @field_validator("location")
    @classmethod
    def _location(cls, value: str) -> str:
        value = value.replace(" ", "").lower()
        if not _LOCATION.match(value):
            raise ValueError("expected an Azure region name such as 'eastus'")
        return value

    @field_validator("workspace")
    @classmethod
    def _workspace(cls, value: str) -> str:
        if not _BATCHAI_NAME.match(value):
            raise ValueError("expected a Batch AI workspace name: 1-64 letters, digits, '-' and '_'")
        return value

    @field_validator("azureml_workspace")
    @classmethod
    def _azureml_workspace(cls, value: str) -> str:
        if not _AZUREML_WORKSPACE.match(value):
            raise ValueError("expected an Azure ML workspace name: 3-33 letters, digits, '-' and '_'")
        return value

    @field_validator("allowed_vm_sizes", mode="before")
    @classmethod
    def _split_vm_sizes(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v for v in (p.strip() for p in value.split(",")) if v]
            if not value:
                raise ValueError(
                    "expected a comma-separated list of VM sizes, e.g. 'STANDARD_NC6,STANDARD_NC12'"
                )
        return value

    @field_validator("allowed_vm_sizes")
    @classmethod
    def _vm_sizes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for size in value:
            if not _VM_SIZE.match(size):
                raise ValueError(f"{size!r} is not a VM size name (letters, digits and '_')")
        return tuple(dict.fromkeys(size.upper() for size in value))

    @field_validator("default_vm_size")
    @classmethod
    def _vm_size(cls, value: str) -> str:
        if not _VM_SIZE.match(value):
            raise ValueError("expected a VM size name such as 'STANDARD_NC6'")
        return value.upper()

    @field_validator("cluster_admin_user")
    @classmethod
    def _admin_user(cls, value: str) -> str:
        if not _ADMIN_USER.match(value) or value in ("root", "admin", "administrator"):
            raise ValueError(
                "expected a Linux user name (lowercase letters, digits, '_', '-'; up to 32 characters; "
                "not root/admin)"
            )
        return value

    @field_validator("cluster_ssh_public_key")
    @classmethod
    def _ssh_key(cls, value: str | None) -> str | None:
        if value is not None and not _SSH_KEY.match(value.strip()):
            raise ValueError("expected an OpenSSH public key line such as 'ssh-rsa AAAA... user@host'")
        return value.strip() if value else value

    @field_validator("file_share_key_vault_secret_url")
    @classmethod
    def _secret_url(cls, value: str | None) -> str | None:
        return None if value is None else check_key_vault_secret_url(value)

    @field_validator("key_vault_resource_id")
    @classmethod
    def _vault_id(cls, value: str | None) -> str | None:
        if value is not None and not is_key_vault_resource_id(value):
            raise ValueError(
                "expected a Key Vault resource id "
                "'/subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.KeyVault/vaults/<name>'"
            )
        return value

    @field_validator("callback_signing_secret")
    @classmethod
    def _signing_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("expected at least 16 characters")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        problems: list[tuple[str, str]] = []
        problems.extend(self._storage_problems())
        if self.default_vm_size not in self.allowed_vm_sizes:
            problems.append(
                (
                    "DEFAULT_VM_SIZE",
                    f"{self.default_vm_size!r} is not in ALLOWED_VM_SIZES {list(self.allowed_vm_sizes)}",
                )
            )
        if self.cluster_ssh_public_key is None and self.cluster_admin_password is None:
            problems.append(
                (
                    "CLUSTER_SSH_PUBLIC_KEY",
                    "missing: the cluster's admin account needs an SSH public key "
                    "(preferred) or CLUSTER_ADMIN_PASSWORD",
                )
            )
        if (self.file_share_key_vault_secret_url is None) != (self.key_vault_resource_id is None):
            problems.append(
                (
                    "FILE_SHARE_KEY_VAULT_SECRET_URL",
                    "and KEY_VAULT_RESOURCE_ID must be set together (or both left empty to mount "
                    "the share with the account key)",
                )
            )
        if self.credential is CredentialKind.LOCAL_DEV_TOKEN and not is_loopback_url(self.arm_endpoint):
            problems.append(
                (
                    "AZURE_CREDENTIAL",
                    "'local-dev-token' is only for the local ARM emulator (a loopback ARM_ENDPOINT); "
                    "use 'default' for Azure",
                )
            )
        if self.local_arm_token is not None and self.credential is not CredentialKind.LOCAL_DEV_TOKEN:
            problems.append(
                ("LOCAL_ARM_TOKEN", "is only for AZURE_CREDENTIAL=local-dev-token (the local ARM emulator)")
            )
        registry = (self.container_registry_server, self.container_registry_username)
        if any(registry) and not all(registry):
            problems.append(
                ("CONTAINER_REGISTRY_SERVER", "and CONTAINER_REGISTRY_USERNAME must be set together")
            )
        if self.container_registry_password is not None and not all(registry):
            problems.append(
                (
                    "CONTAINER_REGISTRY_PASSWORD",
                    "needs CONTAINER_REGISTRY_SERVER and CONTAINER_REGISTRY_USERNAME",
                )
            )
        if problems:
            raise SettingsError(problems)
        return self

    def _storage_problems(self) -> list[tuple[str, str]]:
        """The data account is given one way; the share's account has the key Batch AI mounts with."""
        if (self.storage_connection_string is None) == (self.storage_account_name is None):
            return [
                (
                    "STORAGE_CONNECTION_STRING",
                    "missing: the data account's connection string with its key (local stack), or only "
                    "its name in STORAGE_CONNECTION_STRING__accountName (Azure: the app's managed identity)"
                    if self.storage_connection_string is None
                    else "and STORAGE_CONNECTION_STRING__accountName are exclusive: give one",
                )
            ]
        name = "FILE_SHARE_CONNECTION_STRING"
        if self.file_share_connection_string is None:
            if self.storage.account_key is None:
                return [
                    (
                        name,
                        "missing: the file share's account (with its key: Batch AI mounts the share with "
                        "it) is needed when the data account is reached by identity",
                    )
                ]
            return []
        share = self.file_share_storage
        if self.storage_account_name is not None and share.account_name == self.storage_account_name:
            return [
                (
                    name,
                    "names the data account: the share's account holds a key every cluster node gets, "
                    "so it must be another account than STORAGE_CONNECTION_STRING__accountName",
                )
            ]
        return []

    # --- derived values ------------------------------------------------------------------------------
    @property
    def storage(self) -> StorageAccount:
        """The data account (training blobs, run registry, reports): name, endpoints and, when it is
        reached by key (the local stack), its key; None as key means the app's managed identity."""
        if self.storage_connection_string is not None:
            return StorageAccount.parse(self.storage_connection_string.get_secret_value())
        assert self.storage_account_name is not None  # validated
        return StorageAccount.identity_based(self.storage_account_name)

    @property
    def file_share_storage(self) -> StorageAccount:
        """The account of the file share the clusters mount (always with its key):
        FILE_SHARE_CONNECTION_STRING, else the data account (single-account setups: the local stack)."""
        if self.file_share_connection_string is not None:
            return StorageAccount.parse(self.file_share_connection_string.get_secret_value())
        return self.storage

    @property
    def file_share_url(self) -> str:
        """`<file endpoint>/<share>`: the azureFileUrl a Batch AI cluster mounts."""
        return f"{self.file_share_storage.file_endpoint}/{self.file_share_name}"

    @property
    def arm_is_loopback(self) -> bool:
        return is_loopback_url(self.arm_endpoint)

    # --- loading -------------------------------------------------------------------------------------
    @classmethod
    def setting_names(cls) -> list[str]:
        """Every app setting name this app reads."""
        return [field.alias or name for name, field in cls.model_fields.items()]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate the settings; empty values count as missing."""
        environ = os.environ if environ is None else environ
        values = {name: environ[name] for name in cls.setting_names() if environ.get(name, "").strip() != ""}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise SettingsError(_problems(exc)) from None


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for error in exc.errors(include_input=False, include_url=False):
        if error["type"] == "missing":
            name = str(error["loc"][0])
            problems.append((name, f"missing: {_MISSING_HINTS.get(name, 'a value is required')}"))
            continue
        original = (error.get("ctx") or {}).get("error")
        if isinstance(original, SettingsError):
            problems.extend(original.problems)
            continue
        name = str(error["loc"][0]) if error["loc"] else "settings"
        message = str(original) if isinstance(original, ValueError) else error["msg"]
        problems.append((name, message.removeprefix("Value error, ")))
    return problems


_MISSING_HINTS = {
    "AZURE_SUBSCRIPTION_ID": "the Azure subscription id (a GUID) that holds the Batch AI resources",
    "BATCHAI_RESOURCE_GROUP": "the resource group name for the Batch AI workspace and clusters",
    "BATCHAI_LOCATION": "the Azure region for the Batch AI resources, e.g. 'eastus'",
}


_cache: Settings | None = None
_lock = threading.Lock()


def get_settings() -> Settings:
    """The app's settings, read from the environment at first call and cached."""
    global _cache
    if _cache is None:
        with _lock:
            if _cache is None:
                _cache = Settings.from_env()
    return _cache


def reset_settings() -> None:
    """Forget the cached settings, so the next `get_settings()` reads the environment again (tests)."""
    global _cache
    with _lock:
        _cache = None


def local_stack_values(**overrides: str) -> dict[str, str]:
    """The `Values` of local.settings.json.example, with `overrides` (e.g. the endpoints of a test stack).

    Tests use this to build an environment for a local stack on free ports without copying the
    list of settings.
    """
    values = json.loads(EXAMPLE_FILE.read_text())["Values"]
    values = {k: v for k, v in values.items() if not k.startswith("_")}
    values.update(overrides)
    return values
