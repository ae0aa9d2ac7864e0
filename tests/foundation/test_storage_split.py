"""The file share the clusters mount with a key lives in an account of its own; the data
account (training blobs, run registry, reports) is reached by the app's managed identity, with no key
anywhere in the app's settings, and no key of it ever reaches a cluster node."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from shared import batchai_requests, sdk_clients
from shared.runspec import SpecContext, parse_run_spec
from shared.settings import Settings, SettingsError, local_stack_values

DATA_KEY = base64.b64encode(hashlib.sha512(b"data-account-key").digest()).decode()
SHARE_KEY = base64.b64encode(hashlib.sha512(b"share-account-key").digest()).decode()
SHARE = (
    "DefaultEndpointsProtocol=https;AccountName=stshare;"
    f"AccountKey={SHARE_KEY};EndpointSuffix=core.windows.net"
)
DATA = (
    f"DefaultEndpointsProtocol=https;AccountName=stdata;AccountKey={DATA_KEY};EndpointSuffix=core.windows.net"
)
AZURE = {"ARM_ENDPOINT": "https://management.azure.com", "AZURE_CREDENTIAL": "default"}


def settings(**overrides: str) -> Settings:
    values = local_stack_values(**AZURE)
    values.pop("STORAGE_CONNECTION_STRING")
    values.update(overrides)
    return Settings.from_env(values)


def problems(**overrides: str) -> dict[str, str]:
    with pytest.raises(SettingsError) as info:
        settings(**overrides)
    return dict(info.value.problems)


def test_the_data_account_by_identity_and_the_share_by_its_own_key() -> None:
    s = settings(STORAGE_CONNECTION_STRING__accountName="stdata", FILE_SHARE_CONNECTION_STRING=SHARE)
    assert s.storage.account_name == "stdata" and s.storage.account_key is None
    assert s.storage.blob_endpoint == "https://stdata.blob.core.windows.net"
    assert s.storage.table_endpoint == "https://stdata.table.core.windows.net"
    assert s.file_share_storage.account_name == "stshare"
    assert s.file_share_url == "https://stshare.file.core.windows.net/batchaiquickstart"


def test_the_data_account_is_given_exactly_one_way() -> None:
    assert "STORAGE_CONNECTION_STRING" in problems(FILE_SHARE_CONNECTION_STRING=SHARE)
    both = problems(
        STORAGE_CONNECTION_STRING=DATA,
        STORAGE_CONNECTION_STRING__accountName="stdata",
        FILE_SHARE_CONNECTION_STRING=SHARE,
    )
    assert "exclusive" in both["STORAGE_CONNECTION_STRING"]
    assert "STORAGE_CONNECTION_STRING__accountName" in problems(
        STORAGE_CONNECTION_STRING__accountName="Not_An_Account", FILE_SHARE_CONNECTION_STRING=SHARE
    )


def test_an_identity_data_account_needs_a_share_account_with_a_key_and_not_itself() -> None:
    missing = problems(STORAGE_CONNECTION_STRING__accountName="stdata")
    assert "Batch AI mounts the share" in missing["FILE_SHARE_CONNECTION_STRING"]
    keyless = problems(
        STORAGE_CONNECTION_STRING__accountName="stdata",
        FILE_SHARE_CONNECTION_STRING="DefaultEndpointsProtocol=https;AccountName=stshare;EndpointSuffix=x",
    )
    assert "AccountKey" in keyless["FILE_SHARE_CONNECTION_STRING"]
    itself = problems(STORAGE_CONNECTION_STRING__accountName="stshare", FILE_SHARE_CONNECTION_STRING=SHARE)
    assert "data account" in itself["FILE_SHARE_CONNECTION_STRING"]
    assert SHARE_KEY not in json.dumps(itself)


def test_single_account_setups_still_work() -> None:
    """The local stack: one account with its key serves both (Azurite needs the key)."""
    s = settings(STORAGE_CONNECTION_STRING=DATA)
    assert s.file_share_storage == s.storage and s.storage.account_key is not None


def test_data_clients_use_the_identity_and_the_share_client_the_share_key() -> None:
    s = settings(STORAGE_CONNECTION_STRING__accountName="stdata", FILE_SHARE_CONNECTION_STRING=SHARE)
    try:
        from azure.identity import DefaultAzureCredential

        blob, table, share = (
            sdk_clients.blob_service(s),
            sdk_clients.table_service(s),
            sdk_clients.share_service(s),
        )
        assert blob.url.startswith("https://stdata.blob.core.windows.net")
        assert isinstance(blob.credential, DefaultAzureCredential)
        assert table.url.startswith("https://stdata.table.core.windows.net")
        assert isinstance(table.credential, DefaultAzureCredential)
        assert share.url.startswith("https://stshare.file.core.windows.net")
        assert share.credential.account_name == "stshare" and share.credential.account_key == SHARE_KEY
    finally:
        sdk_clients.reset_clients()


def test_the_cluster_mounts_the_share_account_and_no_node_gets_the_data_accounts_key() -> None:
    """What a job can reach: the share (by the share account's key), nothing of the data account."""
    s = settings(STORAGE_CONNECTION_STRING=DATA, FILE_SHARE_CONNECTION_STRING=SHARE)
    spec = parse_run_spec({}, SpecContext.from_settings(s))
    body = batchai_requests.cluster_parameters(spec, s).serialize()
    (mount,) = body["properties"]["nodeSetup"]["mountVolumes"]["azureFileShares"]
    assert mount["accountName"] == "stshare"
    assert mount["azureFileUrl"] == "https://stshare.file.core.windows.net/batchaiquickstart"
    assert mount["credentials"] == {"accountKey": SHARE_KEY}
    cluster_id = "/subscriptions/x/resourceGroups/rg/providers/Microsoft.BatchAI/workspaces/ws/clusters/c"
    job = batchai_requests.job_parameters(spec, "ds", cluster_id, s).serialize()
    for sent in (body, job):
        text = json.dumps(sent)
        assert DATA_KEY not in text and "stdata" not in text
