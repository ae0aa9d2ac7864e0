"""SharedKey, SAS and name checks of the Files emulator: wrong keys, traversal and names Azure rejects."""

from __future__ import annotations

import base64
import http.client
import os
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from urllib.parse import urlsplit

import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.pipeline.transport import HttpRequest
from azure.storage.fileshare import (
    AccountSasPermissions,
    FileSasPermissions,
    ResourceTypes,
    ShareClient,
    ShareFileClient,
    ShareSasPermissions,
    ShareServiceClient,
    generate_account_sas,
    generate_file_sas,
    generate_share_sas,
)
from azure.storage.fileshare._shared.authentication import SharedKeyCredentialPolicy

from infra.local.stack import DEV_ACCOUNT

pytestmark = pytest.mark.e2e
WRONG_KEY = base64.b64encode(b"not the key" * 6).decode()


def signed_request(
    stack, method: str, raw_path: str, headers: dict[str, str] | None = None, key: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Send `raw_path` byte for byte (no client-side normalisation), signed by the SDK's own
    SharedKey policy, and return status, headers and body."""
    endpoint = urlsplit(stack.file_endpoint)
    request = HttpRequest(method, f"http://{endpoint.netloc}{raw_path}")
    request.headers.update(
        {"x-ms-version": "2025-05-05", "x-ms-date": formatdate(usegmt=True), **(headers or {})}
    )
    key = key if key is not None else stack.secrets.account_keys[DEV_ACCOUNT]
    SharedKeyCredentialPolicy(DEV_ACCOUNT, key).on_request(PipelineRequest(request, PipelineContext(None)))
    connection = http.client.HTTPConnection(endpoint.hostname, endpoint.port, timeout=30)
    try:
        connection.request(method, raw_path, body=b"", headers=dict(request.headers))
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def sas_file_client(stack, share: ShareClient, path: str, sas: str) -> ShareFileClient:
    return ShareFileClient(stack.file_endpoint, share.share_name, path, credential=sas, retry_total=0)


def test_wrong_key_is_refused_with_azure_error(stack, share: ShareClient) -> None:
    wrong = ShareServiceClient(
        stack.file_endpoint, credential={"account_name": DEV_ACCOUNT, "account_key": WRONG_KEY}
    )
    with pytest.raises(ClientAuthenticationError) as caught:
        list(wrong.list_shares())
    assert caught.value.status_code == 403 and caught.value.error_code == "AuthenticationFailed"
    with pytest.raises(ClientAuthenticationError):
        wrong.get_share_client(share.share_name).get_directory_client("d").create_directory()
    assert not (stack.files_root / DEV_ACCOUNT / share.share_name / "d").exists()

    status, headers, body = signed_request(stack, "GET", f"/{DEV_ACCOUNT}?comp=list", key=WRONG_KEY)
    assert status == 403 and headers["x-ms-error-code"] == "AuthenticationFailed"
    error = ET.fromstring(body)
    assert error.tag == "Error" and error.findtext("Code") == "AuthenticationFailed"
    assert "RequestId:" in error.findtext("Message")
    assert "string to sign" in error.findtext("AuthenticationErrorDetail")

    status, _, _ = signed_request(stack, "GET", f"/{DEV_ACCOUNT}?comp=list")
    assert status == 200
    connection = http.client.HTTPConnection(urlsplit(stack.file_endpoint).hostname, stack.ports.files)
    connection.request("GET", f"/{DEV_ACCOUNT}?comp=list")
    anonymous = connection.getresponse()
    assert anonymous.status == 401 and anonymous.getheader("x-ms-error-code") == "NoAuthenticationInformation"
    connection.close()


def test_sas_tokens_grant_reads_and_nothing_more(stack, share: ShareClient) -> None:
    share.get_directory_client("d").create_directory()
    file = share.get_file_client("d/model.bin")
    body = os.urandom(100_000)
    file.upload_file(body)
    expiry = datetime.now(UTC) + timedelta(hours=1)

    file_sas = generate_file_sas(
        DEV_ACCOUNT,
        share.share_name,
        ["d", "model.bin"],
        account_key=stack.secrets.account_keys[DEV_ACCOUNT],
        permission=FileSasPermissions(read=True),
        expiry=expiry,
    )
    # (ShareFileClient.from_file_url mis-parses path-style URLs: build the client from its parts.)
    by_sas = sas_file_client(stack, share, "d/model.bin", file_sas)
    assert by_sas.download_file().readall() == body
    assert by_sas.get_file_properties().size == len(body)
    with pytest.raises(HttpResponseError) as caught:
        by_sas.upload_file(b"overwrite")
    assert caught.value.status_code == 403 and caught.value.error_code == "AuthorizationPermissionMismatch"
    other = share.get_file_client("d/other.bin")
    other.upload_file(b"secret")
    with pytest.raises(ClientAuthenticationError):
        sas_file_client(stack, share, "d/other.bin", file_sas).download_file().readall()
    tampered = file_sas.replace("sig=", "sig=AAAA")
    with pytest.raises(ClientAuthenticationError) as caught:
        sas_file_client(stack, share, "d/model.bin", tampered).download_file().readall()
    assert caught.value.error_code == "AuthenticationFailed"
    expired = generate_file_sas(
        DEV_ACCOUNT,
        share.share_name,
        ["d", "model.bin"],
        account_key=stack.secrets.account_keys[DEV_ACCOUNT],
        permission=FileSasPermissions(read=True),
        expiry=datetime.now(UTC) - timedelta(minutes=1),
    )
    with pytest.raises(ClientAuthenticationError):
        sas_file_client(stack, share, "d/model.bin", expired).download_file().readall()

    share_sas = generate_share_sas(
        DEV_ACCOUNT,
        share.share_name,
        account_key=stack.secrets.account_keys[DEV_ACCOUNT],
        permission=ShareSasPermissions(read=True, list=True),
        expiry=expiry,
    )
    share_by_sas = ShareClient.from_share_url(f"{share.url}?{share_sas}")
    assert [item["name"] for item in share_by_sas.get_directory_client("d").list_directories_and_files()] == [
        "model.bin",
        "other.bin",
    ]
    assert share_by_sas.get_file_client("d/other.bin").download_file().readall() == b"secret"

    account_sas = generate_account_sas(
        DEV_ACCOUNT,
        stack.secrets.account_keys[DEV_ACCOUNT],
        ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions(read=True, list=True),
        expiry,
    )
    service_by_sas = ShareServiceClient(stack.file_endpoint, credential=account_sas)
    assert share.share_name in [s.name for s in service_by_sas.list_shares()]
    assert (
        service_by_sas.get_share_client(share.share_name)
        .get_file_client("d/model.bin")
        .download_file()
        .readall()
        == body
    )
    with pytest.raises(HttpResponseError) as caught:
        service_by_sas.get_share_client(share.share_name).get_directory_client("new").create_directory()
    assert caught.value.status_code == 403


TRAVERSALS = [
    "../escape.txt",
    "a/../../escape.txt",
    "%2e%2e/escape.txt",
    "%2E%2E%2Fescape.txt",
    "a%2F..%2F..%2Fescape.txt",
    "..%5Cescape.txt",
    "..%2f..%2f..%2fescape.txt",
    "./escape.txt",
    "a//escape.txt",
]


@pytest.mark.parametrize("query", ["", "?restype=directory"])
def test_traversal_names_are_refused_and_nothing_lands_outside(stack, share: ShareClient, query: str) -> None:
    share.get_directory_client("a").create_directory()
    for raw in TRAVERSALS:
        headers = {} if query else {"x-ms-type": "file", "x-ms-content-length": "1"}
        status, response_headers, _ = signed_request(
            stack, "PUT", f"/{DEV_ACCOUNT}/{share.share_name}/{raw}{query}", headers
        )
        assert status == 400, raw
        assert response_headers["x-ms-error-code"] == "InvalidResourceName", raw
    # The same names through the SDK (which may normalise dot segments on the way) are refused too.
    for name in ("../escape.txt", "a/../../escape.txt", "..\\escape.txt"):
        with pytest.raises(HttpResponseError):
            share.get_file_client(name).upload_file(b"x")
        with pytest.raises(HttpResponseError):
            share.get_directory_client(name).create_directory()
    assert list(stack.data_dir.rglob("escape*")) == []


def test_symlink_out_of_the_share_is_neither_listed_nor_followed(stack, share: ShareClient, tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (stack.files_root / DEV_ACCOUNT / share.share_name / "evil").symlink_to(outside)
    assert [item["name"] for item in share.list_directories_and_files()] == []
    with pytest.raises(HttpResponseError) as caught:
        share.get_file_client("evil/secret.txt").download_file().readall()
    assert caught.value.status_code == 400
    with pytest.raises(HttpResponseError):
        share.get_file_client("evil/new.txt").upload_file(b"x")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


@pytest.mark.parametrize(
    "name",
    [
        "bad:name",
        "bad|name",
        'bad"name',
        "bad*name",
        "bad?name",
        "bad<name",
        "bad>name",
        "bad\x01name",
        "x" * 256,
        "/".join(["y" * 250] * 9),
    ],
)
def test_names_azure_rejects_are_refused(stack, share: ShareClient, name: str) -> None:
    with pytest.raises(HttpResponseError) as caught:
        share.get_file_client(name).upload_file(b"x")
    assert caught.value.status_code == 400 and caught.value.error_code == "InvalidResourceName"
    assert os.listdir(stack.files_root / DEV_ACCOUNT / share.share_name) == []


@pytest.mark.parametrize("share_name", ["Upper", "a--b", "-ab", "ab-", "ab", "a" * 64, "under_score"])
def test_share_names_azure_rejects_are_refused(file_service, share_name: str) -> None:
    with pytest.raises(HttpResponseError) as caught:
        file_service.create_share(share_name)
    assert caught.value.status_code == 400
    assert caught.value.error_code in ("InvalidResourceName", "OutOfRangeInput")
