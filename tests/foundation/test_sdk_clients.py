"""Clients: the credential AZURE_CREDENTIAL selects, and bearer tokens over http only to loopback hosts."""

from __future__ import annotations

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ServiceRequestError
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.pipeline.policies import BearerTokenCredentialPolicy
from azure.core.rest import HttpRequest

from shared import sdk_clients
from shared.settings import Settings, local_stack_values


def settings(**overrides: str) -> Settings:
    return Settings.from_env(local_stack_values(**overrides))


def authorize(url: str) -> PipelineRequest:
    """Run the loopback policy, then azure-core's bearer token policy, on one request to `url`."""
    request = PipelineRequest(HttpRequest("GET", url), PipelineContext(None))
    sdk_clients.make_loopback_http_policy().on_request(request)
    BearerTokenCredentialPolicy(sdk_clients.LocalDevTokenCredential(), "scope/.default").on_request(request)
    return request


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:10005/subscriptions", "http://localhost:10005/x", "http://[::1]:10005/x"]
)
def test_bearer_token_allowed_over_http_to_loopback(url: str) -> None:
    request = authorize(url)
    assert request.http_request.headers["Authorization"] == "Bearer local-dev-token"


@pytest.mark.parametrize(
    "url", ["http://management.example.com/x", "http://10.1.2.3/x", "http://127.0.0.1.nip.io/x"]
)
def test_bearer_token_refused_over_http_elsewhere(url: str) -> None:
    with pytest.raises(ServiceRequestError, match="non-TLS"):
        authorize(url)


def test_https_is_untouched() -> None:
    request = authorize("https://management.azure.com/x")
    assert "enforce_https" not in request.context
    assert request.http_request.headers["Authorization"] == "Bearer local-dev-token"


def test_local_dev_token_credential() -> None:
    token = sdk_clients.LocalDevTokenCredential().get_token("https://management.azure.com/.default")
    assert isinstance(token, AccessToken) and token.token == "local-dev-token"
    assert sdk_clients.LocalDevTokenCredential().get_token_info("x").token == "local-dev-token"


def test_credential_follows_the_setting() -> None:
    sdk_clients.reset_clients()
    assert isinstance(sdk_clients.credential(settings()), sdk_clients.LocalDevTokenCredential)
    azure = settings(AZURE_CREDENTIAL="default", ARM_ENDPOINT="https://management.azure.com")
    assert type(sdk_clients.credential(azure)).__name__ == "DefaultAzureCredential"


def test_clients_point_at_the_configured_endpoints() -> None:
    s = settings()
    sdk_clients.reset_clients()
    assert sdk_clients.batchai_client(s) is sdk_clients.batchai_client(s)  # cached per settings
    assert sdk_clients.batchai_client(s)._client._base_url == "http://127.0.0.1:10005"
    assert sdk_clients.resource_client(s)._config.base_url == "http://127.0.0.1:10005"
    assert sdk_clients.share_client(s).url == "http://127.0.0.1:10004/devstoreaccount1/batchaiquickstart"
    assert sdk_clients.training_container(s).url == "http://127.0.0.1:10000/devstoreaccount1/training-data"
    assert sdk_clients.runs_table(s).table_name == "runs"
    assert sdk_clients.runs_table(s).url.startswith("http://127.0.0.1:10002/devstoreaccount1")
    assert sdk_clients.blob_service(s).account_name == "devstoreaccount1"
    sdk_clients.reset_clients()
    assert sdk_clients.batchai_client(s) is not None


def test_sovereign_cloud_scope_follows_the_arm_endpoint() -> None:
    s = settings(AZURE_CREDENTIAL="default", ARM_ENDPOINT="https://management.chinacloudapi.cn")
    client = sdk_clients.batchai_client(s)
    assert client._config.credential_scopes == ["https://management.chinacloudapi.cn/.default"]


def test_the_token_scope_follows_the_arm_endpoint_also_on_loopback() -> None:
    """One rule for every endpoint (no "if local" branch): the local dev token ignores the scope."""
    s = settings()
    assert s.arm_is_loopback
    client = sdk_clients.batchai_client(s)
    assert client._config.credential_scopes == ["http://127.0.0.1:10005/.default"]


def test_importing_the_app_modules_does_not_import_the_sdks() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import shared.sdk_clients, shared.batchai_requests, shared.batchai_sdk; "
        "heavy = [m for m in ('azure.mgmt.batchai', 'azure.mgmt.resource', 'azure.identity', "
        "'azure.storage.blob', 'azure.storage.fileshare', 'azure.data.tables') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
