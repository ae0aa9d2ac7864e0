"""The emulator's SharedKey and SAS checks against signatures made by the SDK itself (no server)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from urllib.parse import parse_qsl, urlsplit

import pytest
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.pipeline.transport import HttpRequest
from azure.storage.fileshare import FileSasPermissions, generate_file_sas
from azure.storage.fileshare._shared.authentication import SharedKeyCredentialPolicy

from infra.local.files import auth
from infra.local.files.errors import StorageError
from infra.local.stack import DEV_ACCOUNT, DEV_KEY

ACCOUNTS = {DEV_ACCOUNT: base64.b64decode(DEV_KEY)}


def sdk_signed(method: str, url: str, headers: dict[str, str], key: str = DEV_KEY) -> HttpRequest:
    request = HttpRequest(method, url)
    request.headers.update(headers)
    SharedKeyCredentialPolicy(DEV_ACCOUNT, key).on_request(PipelineRequest(request, PipelineContext(None)))
    return request


def verify(request: HttpRequest) -> None:
    parts = urlsplit(request.url)
    headers = {name.lower(): value for name, value in request.headers.items()}
    auth.verify_shared_key(
        request.headers["Authorization"],
        request.method,
        headers,
        parts.path,
        parts.query,
        ACCOUNTS,
        DEV_ACCOUNT,
    )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        # Hyphens weigh less than letters in the service's header order: x-ms-meta-a < x-ms-metaa.
        {"x-ms-meta-a": "1", "x-ms-metaa": "2", "x-ms-meta-B_c": "3", "x-ms-meta-b": "4"},
        {"Content-Length": "0", "Content-Type": "application/octet-stream", "x-ms-range": "bytes=0-9"},
        {"Content-Length": "512", "Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg==", "x-ms-write": "update"},
    ],
)
def test_sdk_shared_key_signatures_verify(headers: dict[str, str]) -> None:
    base = {"x-ms-version": "2025-05-05", "x-ms-date": formatdate(usegmt=True)}
    url = "http://127.0.0.1:10004/devstoreaccount1/share/dir%20a/file%2Bname.txt?comp=range&timeout=30"
    verify(sdk_signed("PUT", url, {**base, **headers}))


def test_wrong_key_and_tampering_fail() -> None:
    base = {"x-ms-version": "2025-05-05", "x-ms-date": formatdate(usegmt=True)}
    url = "http://127.0.0.1:10004/devstoreaccount1/share/f.txt"
    with pytest.raises(StorageError) as caught:
        verify(sdk_signed("GET", url, base, key=base64.b64encode(b"x" * 64).decode()))
    assert (caught.value.status, caught.value.code) == (403, "AuthenticationFailed")
    request = sdk_signed("GET", url, base)
    request.headers["x-ms-version"] = "2019-02-02"
    with pytest.raises(StorageError):
        verify(request)
    stale = sdk_signed("GET", url, {**base, "x-ms-date": formatdate(0, usegmt=True)})
    with pytest.raises(StorageError, match="AuthenticationFailed"):
        verify(stale)


def test_sdk_file_sas_verifies_for_its_file_only() -> None:
    token = generate_file_sas(
        DEV_ACCOUNT,
        "share",
        ["dir", "f.txt"],
        account_key=DEV_KEY,
        permission=FileSasPermissions(read=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    params = dict(parse_qsl(token))
    key = ACCOUNTS[DEV_ACCOUNT]
    auth.verify_sas(params, DEV_ACCOUNT, key, "share", "dir/f.txt", "r", "o")
    with pytest.raises(StorageError) as caught:
        auth.verify_sas(params, DEV_ACCOUNT, key, "share", "dir/g.txt", "r", "o")
    assert caught.value.code == "AuthenticationFailed"
    with pytest.raises(StorageError) as caught:
        auth.verify_sas(params, DEV_ACCOUNT, key, "share", "dir/f.txt", "w", "o")
    assert caught.value.code == "AuthorizationPermissionMismatch"
