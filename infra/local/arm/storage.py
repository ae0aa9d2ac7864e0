"""`Microsoft.Storage` storage accounts of the local stack, as ARM shows them: get, list (subscription
and resource group), listKeys.

The accounts are the ones the stack's storage services serve (Azurite and the Files emulator):
`devstoreaccount1` and those in `AZURITE_ACCOUNTS`, with their keys. They are not created through
ARM; they live in the resource group `Config.storage_resource_group` of every subscription, so
clients that find an account by listing, take its group from its resource id and then ask for its
keys (the Batch AI recipes' `resubmit_failed_jobs`) work as against Azure. Creating, updating or
deleting them through ARM is refused (405): the local stack's accounts are fixed by its settings.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from infra.local.arm.common import Config
from infra.local.arm.errors import ArmError

PROVIDER = "Microsoft.Storage"
# api-versions of Microsoft.Storage that answer listKeys with {"keys": [...]} (2016-01-01 and later),
# as azure-mgmt-storage releases send them.
API_VERSIONS = frozenset(
    {
        "2016-01-01", "2016-05-01", "2016-12-01", "2017-06-01", "2017-10-01", "2018-02-01",
        "2018-03-01-preview", "2018-07-01", "2018-11-01", "2019-04-01", "2019-06-01",
        "2020-08-01-preview", "2021-01-01",
        "2021-02-01", "2021-04-01", "2021-06-01", "2021-08-01", "2021-09-01", "2022-05-01", "2022-09-01",
        "2023-01-01", "2023-04-01", "2023-05-01", "2024-01-01", "2025-01-01", "2025-06-01", "2026-09-01",
    }
)  # fmt: skip


def accounts_from_env(environ: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Account name -> its keys (base64, as ARM shows them): the same accounts the Files emulator and
    Azurite serve, i.e. those of `AZURITE_ACCOUNTS` (`name:key1[:key2];...`) when it is set (a stack
    sets it, with random keys), else devstoreaccount1 with Azurite's published key."""
    from infra.local.stack import DEV_ACCOUNT, DEV_KEY

    environ = os.environ if environ is None else environ
    accounts: dict[str, list[str]] = {}
    for entry in environ.get("AZURITE_ACCOUNTS", "").split(";"):
        name, _, keys = entry.strip().partition(":")
        if name and keys:
            accounts[name] = [key for key in keys.split(":") if key]
    return accounts or {DEV_ACCOUNT: [DEV_KEY]}


class StorageAccounts:
    def __init__(self, config: Config) -> None:
        self.config = config

    def account_id(self, sub: str, name: str) -> str:
        return (
            f"/subscriptions/{sub}/resourceGroups/{self.config.storage_resource_group}"
            f"/providers/{PROVIDER}/storageAccounts/{name}"
        )

    def _endpoint(self, service: str, account: str) -> str | None:
        base = self.config.storage_endpoints.get(service)
        if not base:
            return None
        parts = urlsplit(base)
        return f"{parts.scheme}://{parts.netloc}/{account}/"

    def body(self, sub: str, name: str) -> dict[str, Any]:
        endpoints = {
            service: url
            for service in ("blob", "queue", "table", "file")
            if (url := self._endpoint(service, name))
        }
        return {
            "id": self.account_id(sub, name),
            "name": name,
            "type": f"{PROVIDER}/storageAccounts",
            "location": self.config.location,
            "kind": "StorageV2",
            "sku": {"name": "Standard_LRS", "tier": "Standard"},
            "tags": {},
            "properties": {
                "provisioningState": "Succeeded",
                "primaryEndpoints": endpoints,
                "primaryLocation": self.config.location,
                "statusOfPrimary": "available",
                "accessTier": "Hot",
                "supportsHttpsTrafficOnly": False,
                "creationTime": "2017-09-01T00:00:00.0000000Z",
            },
        }

    def _find(self, rg: str, name: str) -> str:
        for account in self.config.storage_accounts:
            if account == name and rg.lower() == self.config.storage_resource_group.lower():
                return account
        raise ArmError(
            "ResourceNotFound",
            f"The Resource '{PROVIDER}/storageAccounts/{name}' under resource group '{rg}' was not found.",
        )

    def list(self, sub: str, rg: str | None = None) -> list[dict[str, Any]]:
        if rg is not None and rg.lower() != self.config.storage_resource_group.lower():
            return []
        return [self.body(sub, name) for name in sorted(self.config.storage_accounts)]

    def get(self, sub: str, rg: str, name: str) -> dict[str, Any]:
        return self.body(sub, self._find(rg, name))

    def list_keys(self, sub: str, rg: str, name: str) -> dict[str, Any]:
        keys = self.config.storage_accounts[self._find(rg, name)]
        pairs = keys if len(keys) > 1 else keys * 2  # Azure always has two keys
        return {
            "keys": [
                {"keyName": f"key{i + 1}", "value": value, "permissions": "FULL"}
                for i, value in enumerate(pairs[:2])
            ]
        }
