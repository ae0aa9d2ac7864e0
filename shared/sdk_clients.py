"""The one place Azure SDK clients are built from settings.

Why here: the credential choice (DefaultAzureCredential in Azure, a static development token for the
local ARM emulator) and the loopback-only relaxation of azure-core's "bearer tokens need https" rule
must live in exactly one place, and the SDKs are imported lazily so that `import function_app` stays
cheap (the Functions host imports it at every cold start).

Every builder takes an optional `Settings` (default: `get_settings()`) and caches the client per
settings object; `reset_clients()` forgets them (tests).
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any

from shared.settings import CredentialKind, Settings, get_settings, is_loopback_url

if TYPE_CHECKING:  # pragma: no cover - type names only; the SDKs are imported lazily at call time
    from azure.core.credentials import AccessToken, AccessTokenInfo, TokenCredential
    from azure.core.pipeline import PipelineRequest
    from azure.core.rest import HttpRequest, HttpResponse
    from azure.data.tables import TableClient, TableServiceClient
    from azure.mgmt.batchai import BatchAI
    from azure.mgmt.core import ARMPipelineClient
    from azure.mgmt.resource.resources import ResourceManagementClient
    from azure.storage.blob import BlobServiceClient, ContainerClient
    from azure.storage.fileshare import ShareClient, ShareServiceClient
    from azure.storage.queue import QueueClient

__all__ = [
    "LOCAL_DEV_TOKEN",
    "LocalDevTokenCredential",
    "arm_pipeline_client",
    "batchai_client",
    "blob_service",
    "credential",
    "make_loopback_http_policy",
    "reset_clients",
    "resource_client",
    "runs_table",
    "share_client",
    "share_service",
    "table_service",
    "training_container",
]

# What a LocalDevTokenCredential sends when LOCAL_ARM_TOKEN is not set: a stack's ARM emulator refuses
# it (each stack has a random token), so a missing LOCAL_ARM_TOKEN is a 401 naming the setting.
LOCAL_DEV_TOKEN = "local-dev-token"


class LocalDevTokenCredential:
    """A TokenCredential that always returns the same static token (LOCAL_ARM_TOKEN): for the local ARM
    emulator only, which accepts its stack's token and nothing else."""

    def __init__(self, token: str = LOCAL_DEV_TOKEN) -> None:
        self._token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        from azure.core.credentials import AccessToken

        return AccessToken(self._token, int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        from azure.core.credentials import AccessTokenInfo

        return AccessTokenInfo(self._token, int(time.time()) + 3600)

    def close(self) -> None:
        """Nothing to release (TokenCredential protocol)."""

    def __repr__(self) -> str:
        return "LocalDevTokenCredential()"


def make_loopback_http_policy() -> Any:
    """A per-call pipeline policy that lets bearer tokens go over plain http to loopback hosts only.

    azure-core refuses a bearer token on a non-https URL unless `request.context["enforce_https"]` is
    False. The local stack is http on 127.0.0.1; anything else keeps the https requirement.
    """
    from azure.core.pipeline.policies import SansIOHTTPPolicy

    # Any request and response types: the same policy serves the SDK clients and the ARM pipeline.
    class LoopbackHttpPolicy(SansIOHTTPPolicy[Any, Any]):
        def on_request(self, request: PipelineRequest[Any]) -> None:
            url = request.http_request.url
            if url.lower().startswith("http://") and is_loopback_url(url):
                request.context["enforce_https"] = False

    return LoopbackHttpPolicy()


def _settings(settings: Settings | None) -> Settings:
    return settings if settings is not None else get_settings()


@functools.lru_cache(maxsize=8)
def _credential(settings: Settings) -> TokenCredential:
    if settings.credential is CredentialKind.LOCAL_DEV_TOKEN:
        token = settings.local_arm_token
        return LocalDevTokenCredential(token.get_secret_value() if token else LOCAL_DEV_TOKEN)
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def credential(settings: Settings | None = None) -> TokenCredential:
    """The ARM credential AZURE_CREDENTIAL selects: DefaultAzureCredential, or the static dev token."""
    return _credential(_settings(settings))


def _arm_kwargs(settings: Settings) -> dict[str, Any]:
    # The token audience is the ARM endpoint itself (sovereign clouds); the local dev token ignores it.
    return {
        "base_url": settings.arm_endpoint,
        "per_call_policies": [make_loopback_http_policy()],
        "credential_scopes": [settings.arm_endpoint.rstrip("/") + "/.default"],
    }


@functools.lru_cache(maxsize=8)
def _batchai(settings: Settings) -> BatchAI:
    from azure.mgmt.batchai import BatchAI

    return BatchAI(_credential(settings), settings.subscription_id, **_arm_kwargs(settings))


def batchai_client(settings: Settings | None = None) -> BatchAI:
    """azure-mgmt-batchai 7.0.0 (API 2018-05-01) client on ARM_ENDPOINT."""
    return _batchai(_settings(settings))


@functools.lru_cache(maxsize=8)
def _resources(settings: Settings) -> ResourceManagementClient:
    from azure.mgmt.resource.resources import ResourceManagementClient

    return ResourceManagementClient(_credential(settings), settings.subscription_id, **_arm_kwargs(settings))


def resource_client(settings: Settings | None = None) -> ResourceManagementClient:
    """Resource groups client (azure-mgmt-resource) on ARM_ENDPOINT."""
    return _resources(_settings(settings))


@functools.lru_cache(maxsize=8)
def _arm_pipeline(settings: Settings) -> ARMPipelineClient[HttpRequest, HttpResponse]:
    from azure.core.pipeline import policies
    from azure.mgmt.core import ARMPipelineClient
    from azure.mgmt.core.policies import ARMChallengeAuthenticationPolicy, ARMHttpLoggingPolicy

    scope = settings.arm_endpoint.rstrip("/") + "/.default"
    return ARMPipelineClient(
        base_url=settings.arm_endpoint,
        policies=[
            policies.RequestIdPolicy(),
            policies.HeadersPolicy(),
            policies.UserAgentPolicy(sdk_moniker="batchai-serverless"),
            make_loopback_http_policy(),
            policies.RetryPolicy(),  # ARM's throttling and server errors, honouring Retry-After
            ARMChallengeAuthenticationPolicy(_credential(settings), scope),
            ARMHttpLoggingPolicy(),
        ],
    )


def arm_pipeline_client(settings: Settings | None = None) -> ARMPipelineClient[HttpRequest, HttpResponse]:
    """azure-mgmt-core's ARM pipeline client on ARM_ENDPOINT (REST calls of the Azure ML backend)."""
    return _arm_pipeline(_settings(settings))


@functools.lru_cache(maxsize=8)
def _data_identity(settings: Settings) -> TokenCredential:
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def _data_credential(settings: Settings, named: bool = False) -> Any:
    """How the app signs data account requests: its key where the settings give one (the local stack:
    Azurite needs a key), else the app's managed identity (Azure: the account's shared keys are off)."""
    storage = settings.storage
    if storage.account_key is None:
        return _data_identity(settings)
    key = storage.account_key.get_secret_value()
    if named:
        from azure.core.credentials import AzureNamedKeyCredential

        return AzureNamedKeyCredential(storage.account_name, key)
    return {"account_name": storage.account_name, "account_key": key}


@functools.lru_cache(maxsize=8)
def _blob_service(settings: Settings) -> BlobServiceClient:
    from azure.storage.blob import BlobServiceClient

    return BlobServiceClient(settings.storage.blob_endpoint, credential=_data_credential(settings))


def blob_service(settings: Settings | None = None) -> BlobServiceClient:
    """Blob service of the data account (STORAGE_CONNECTION_STRING, or its identity-based form)."""
    return _blob_service(_settings(settings))


def training_container(settings: Settings | None = None) -> ContainerClient:
    """The TRAINING_CONTAINER container client."""
    settings = _settings(settings)
    return blob_service(settings).get_container_client(settings.training_container)


@functools.lru_cache(maxsize=8)
def _share_service(settings: Settings) -> ShareServiceClient:
    from azure.storage.fileshare import ShareServiceClient

    share_account = settings.file_share_storage
    assert share_account.account_key is not None  # validated: the share is always reached by key
    return ShareServiceClient(
        share_account.file_endpoint,
        credential={
            "account_name": share_account.account_name,
            "account_key": share_account.account_key.get_secret_value(),
        },
    )


def share_service(settings: Settings | None = None) -> ShareServiceClient:
    """File service of the share's account (FILE_SHARE_CONNECTION_STRING, else the data account)."""
    return _share_service(_settings(settings))


def share_client(settings: Settings | None = None) -> ShareClient:
    """The FILE_SHARE_NAME share client (the share the clusters mount)."""
    settings = _settings(settings)
    return share_service(settings).get_share_client(settings.file_share_name)


@functools.lru_cache(maxsize=8)
def _table_service(settings: Settings) -> TableServiceClient:
    from azure.data.tables import TableServiceClient

    return TableServiceClient(
        settings.storage.table_endpoint, credential=_data_credential(settings, named=True)
    )


def table_service(settings: Settings | None = None) -> TableServiceClient:
    """Table service of the data account (run registry)."""
    return _table_service(_settings(settings))


def runs_table(settings: Settings | None = None) -> TableClient:
    """The RUNS_TABLE table client."""
    settings = _settings(settings)
    return table_service(settings).get_table_client(settings.runs_table)


def staging_queue(settings: Settings | None = None) -> QueueClient:
    """The STAGING_QUEUE queue client (data account): HTTP starts staged out of band."""
    from azure.storage.queue import QueueClient

    settings = _settings(settings)
    return QueueClient(
        settings.storage.queue_endpoint, settings.staging_queue, credential=_data_credential(settings)
    )


def reset_clients() -> None:
    """Forget every cached client and credential (tests that change settings)."""
    for cached in (
        _credential,
        _data_identity,
        _batchai,
        _resources,
        _arm_pipeline,
        _blob_service,
        _share_service,
        _table_service,
    ):
        cached.cache_clear()
