"""Microsoft.Storage in the ARM emulator: the local stack's storage accounts through azure-mgmt-storage,
found by listing, their group taken from their id and their keys listed, as clients do against Azure."""

from __future__ import annotations

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.mgmt.storage import StorageManagementClient
from azure.storage.fileshare import ShareServiceClient

from infra.local.stack import DEV_ACCOUNT, NAMED_ACCOUNT
from tests.arm.conftest import SUB, StaticCredential, sdk_kwargs

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def storage(arm_stack) -> StorageManagementClient:
    return StorageManagementClient(
        StaticCredential(arm_stack.arm_token), SUB, **sdk_kwargs(arm_stack.arm_endpoint)
    )


def test_accounts_are_listed_with_their_endpoints_and_keys(storage, arm_stack) -> None:
    accounts = {a.name: a for a in storage.storage_accounts.list()}
    account = accounts[DEV_ACCOUNT]
    assert account.type == "Microsoft.Storage/storageAccounts" and account.provisioning_state == "Succeeded"
    assert account.primary_endpoints.file == arm_stack.file_endpoint + "/"
    assert account.primary_endpoints.blob == arm_stack.blob_endpoint + "/"
    group = account.id.split("/")[4]
    assert [a.name for a in storage.storage_accounts.list_by_resource_group(group)] == sorted(accounts)
    assert storage.storage_accounts.get_properties(group, DEV_ACCOUNT).id == account.id
    keys = storage.storage_accounts.list_keys(group, DEV_ACCOUNT)["keys"]  # `.keys` is the mapping's method
    assert [k["keyName"] for k in keys] == ["key1", "key2"]
    assert (
        keys[0]["value"] == arm_stack.secrets.account_keys[DEV_ACCOUNT]
    )  # the stack's, not the published key
    # The key ARM hands out is the one the storage services accept.
    service = ShareServiceClient(account.primary_endpoints.file, credential={
        "account_name": DEV_ACCOUNT, "account_key": keys[0]["value"]})  # fmt: skip
    service.get_service_properties()


def test_the_named_account_is_listed_with_its_key(storage, arm_stack) -> None:
    """The stack's second, named account, with the key the storage services accept."""
    account = {a.name: a for a in storage.storage_accounts.list()}[NAMED_ACCOUNT]
    assert account.primary_endpoints.file == f"http://127.0.0.1:{arm_stack.ports.files}/{NAMED_ACCOUNT}/"
    keys = storage.storage_accounts.list_keys(account.id.split("/")[4], NAMED_ACCOUNT)["keys"]
    assert keys[0]["value"] == arm_stack.secrets.account_keys[NAMED_ACCOUNT]
    service = ShareServiceClient(account.primary_endpoints.file, credential={
        "account_name": NAMED_ACCOUNT, "account_key": keys[0]["value"]})  # fmt: skip
    service.get_service_properties()


def test_unknown_accounts_and_groups_are_not_found(storage, arm_stack) -> None:
    arm_url = arm_stack.arm_endpoint
    group = next(iter(storage.storage_accounts.list())).id.split("/")[4]
    with pytest.raises(ResourceNotFoundError):
        storage.storage_accounts.list_keys(group, "nosuchaccount")
    with pytest.raises(ResourceNotFoundError):
        storage.storage_accounts.get_properties("another-group", DEV_ACCOUNT)
    assert list(storage.storage_accounts.list_by_resource_group("another-group")) == []
    # 2015-06-15 answered listKeys in another shape: ARM refuses versions this emulator does not speak.
    old = StorageManagementClient(
        StaticCredential(arm_stack.arm_token), SUB, api_version="2015-06-15", **sdk_kwargs(arm_url)
    )
    with pytest.raises(HttpResponseError) as caught:
        old.storage_accounts.list_keys(group, DEV_ACCOUNT)
    assert caught.value.error.code == "InvalidApiVersionParameter"
