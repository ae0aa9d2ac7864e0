"""Settings: every app setting validated at first use, errors naming the setting, secrets hidden."""

from __future__ import annotations

import pytest

from shared.settings import (
    CredentialKind,
    Settings,
    SettingsError,
    StorageAccount,
    get_settings,
    is_loopback_url,
    local_stack_values,
    reset_settings,
)

SECRET_PASSWORD = "Sup3r-Secret-Passw0rd!"
SECRET_SIGNING = "signing-secret-0123456789abcdef"


def values(**overrides: str) -> dict[str, str]:
    return local_stack_values(**overrides)


def problems(env: dict[str, str]) -> dict[str, str]:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    return dict(info.value.problems)


def test_example_settings_are_valid_for_the_local_stack() -> None:
    s = Settings.from_env(values())
    assert s.credential is CredentialKind.LOCAL_DEV_TOKEN
    assert s.arm_endpoint == "http://127.0.0.1:10005"
    assert s.subscription_id == "00000000-0000-0000-0000-000000000000"
    assert s.file_share_url == "http://127.0.0.1:10004/devstoreaccount1/batchaiquickstart"
    assert s.storage.account_name == "devstoreaccount1"
    assert s.default_vm_size == "STANDARD_NC6" and "STANDARD_NC6" in s.allowed_vm_sizes
    assert s.monitor_schedule == "*/2 * * * * *"
    assert s.callback_allow_loopback_http is True


def test_every_setting_is_documented_in_the_example() -> None:
    import json

    from shared.settings import EXAMPLE_FILE

    document = json.loads(EXAMPLE_FILE.read_text())
    for name in Settings.setting_names():
        assert name in document["Values"], name
        assert name in document["_comment"], name


def test_reports_container_is_documented_as_holding_cleanup_reports_only() -> None:
    """Only cleanup writes to REPORTS_CONTAINER (run outputs and stdout tails live on the run record)."""
    import json

    from shared.settings import EXAMPLE_FILE

    comment = json.loads(EXAMPLE_FILE.read_text())["_comment"]["REPORTS_CONTAINER"]
    docs = (EXAMPLE_FILE.parent / "docs" / "settings.md").read_text()
    row = next(line for line in docs.splitlines() if line.startswith("| `REPORTS_CONTAINER`"))
    for text in (comment, row):
        assert "cleanup report" in text, text
        assert "stdout" not in text and "run report" not in text, text


@pytest.mark.parametrize(
    "name",
    ["STORAGE_CONNECTION_STRING", "AZURE_SUBSCRIPTION_ID", "BATCHAI_RESOURCE_GROUP", "BATCHAI_LOCATION"],
)
def test_missing_required_setting_is_named(name: str) -> None:
    env = values()
    del env[name]
    found = problems(env)
    assert list(found) == [name]
    assert found[name].startswith("missing")


def test_empty_value_counts_as_missing() -> None:
    assert "BATCHAI_LOCATION" in problems(values(BATCHAI_LOCATION="  "))


@pytest.mark.parametrize(
    ("name", "bad", "expected"),
    [
        ("AZURE_SUBSCRIPTION_ID", "not-a-guid", "GUID"),
        ("ARM_ENDPOINT", "ftp://example.com", "http(s) URL"),
        ("ARM_ENDPOINT", "http://management.example.com", "https"),
        ("AZURE_CREDENTIAL", "password", "default"),
        ("TRAINING_CONTAINER", "Training_Data", "container name"),
        ("FILE_SHARE_NAME", "a", "file share name"),
        ("RUNS_TABLE", "1runs", "table name"),
        ("REPORTS_CONTAINER", "re--ports", "container name"),
        ("BATCHAI_RESOURCE_GROUP", "bad/group", "resource group"),
        ("BATCHAI_LOCATION", "east-us!", "region"),
        ("BATCHAI_WORKSPACE", "work space", "workspace"),
        ("DEFAULT_VM_SIZE", "STANDARD NC6", "VM size"),
        ("ALLOWED_VM_SIZES", " , ", "comma-separated"),
        ("ALLOWED_VM_SIZES", "STANDARD_NC6,bad size", "bad size"),
        ("CLUSTER_ADMIN_USER", "root", "user name"),
        ("CLUSTER_SSH_PUBLIC_KEY", "not a key", "OpenSSH public key"),
        ("FILE_SHARE_KEY_VAULT_SECRET_URL", "http://vault/secrets/x", "Key Vault secret URL"),
        ("KEY_VAULT_RESOURCE_ID", "/subscriptions/x/vaults/y", "Key Vault resource id"),
        ("MONITOR_SCHEDULE", "*/5 * * * *", "six-field NCRONTAB"),
        ("CLEANUP_SCHEDULE", "0 0 2 * * * *", "six-field NCRONTAB"),
        ("CLEANUP_DRY_RUN", "maybe", "boolean"),
        ("JOB_RETENTION_HOURS", "-1", "greater than or equal to 0"),
        ("STAGED_DATA_RETENTION_HOURS", "forever", "number"),
        ("CLUSTER_IDLE_MINUTES", "x", "number"),
        ("CLUSTER_IDLE_ACTION", "shrink", "scale_to_zero"),
        ("STAGING_TIMEOUT_MINUTES", "0", "greater than 0"),
        ("COPY_TIMEOUT_SECONDS", "-5", "greater than 0"),
        ("CALLBACK_SIGNING_SECRET", "short", "16 characters"),
        ("CALLBACK_ALLOW_LOOPBACK_HTTP", "perhaps", "boolean"),
        ("MAX_STDOUT_TAIL_BYTES", "99999999", "less than or equal"),
        ("STORAGE_CONNECTION_STRING", "AccountName=x", "AccountKey"),
        ("STORAGE_CONNECTION_STRING", "UseDevelopmentStorage=true", "file endpoint"),
        ("STORAGE_CONNECTION_STRING", "garbage", "Key=Value"),
        (
            "STORAGE_CONNECTION_STRING",
            "@Microsoft.KeyVault(SecretUri=https://v/secrets/s)",
            "Key Vault reference",
        ),
        ("CLUSTER_ADMIN_PASSWORD", "@Microsoft.KeyVault(VaultName=v;SecretName=pw)", "Key Vault reference"),
        (
            "CALLBACK_SIGNING_SECRET",
            "@Microsoft.KeyVault(SecretUri=https://v/secrets/cb)",
            "Key Vault reference",
        ),
    ],
)
def test_malformed_setting_is_named_with_what_is_expected(name: str, bad: str, expected: str) -> None:
    found = problems(values(**{name: bad}))
    assert name in found, found
    assert expected.lower() in found[name].lower(), found[name]


def test_cross_setting_rules_name_the_setting() -> None:
    assert "DEFAULT_VM_SIZE" in problems(
        values(DEFAULT_VM_SIZE="STANDARD_NC24", ALLOWED_VM_SIZES="STANDARD_NC6")
    )
    assert "CLUSTER_SSH_PUBLIC_KEY" in problems(values(CLUSTER_SSH_PUBLIC_KEY="", CLUSTER_ADMIN_PASSWORD=""))
    assert "FILE_SHARE_KEY_VAULT_SECRET_URL" in problems(
        values(FILE_SHARE_KEY_VAULT_SECRET_URL="https://v.vault.azure.net/secrets/key")
    )
    assert "AZURE_CREDENTIAL" in problems(
        values(ARM_ENDPOINT="https://management.azure.com", AZURE_CREDENTIAL="local-dev-token")
    )
    assert "CONTAINER_REGISTRY_SERVER" in problems(values(CONTAINER_REGISTRY_SERVER="myreg.azurecr.io"))
    assert "CONTAINER_REGISTRY_PASSWORD" in problems(values(CONTAINER_REGISTRY_PASSWORD="x"))


def test_password_alone_is_accepted_and_vm_sizes_are_normalised() -> None:
    s = Settings.from_env(
        values(
            CLUSTER_SSH_PUBLIC_KEY="",
            CLUSTER_ADMIN_PASSWORD=SECRET_PASSWORD,
            ALLOWED_VM_SIZES="standard_nc6, Standard_NC12,STANDARD_NC6",
            DEFAULT_VM_SIZE="Standard_NC12",
        )
    )
    assert s.cluster_ssh_public_key is None
    assert s.cluster_admin_password is not None
    assert s.cluster_admin_password.get_secret_value() == SECRET_PASSWORD
    assert s.allowed_vm_sizes == ("STANDARD_NC6", "STANDARD_NC12")
    assert s.default_vm_size == "STANDARD_NC12"


def test_secrets_are_absent_from_repr_str_and_errors() -> None:
    env = values(CLUSTER_ADMIN_PASSWORD=SECRET_PASSWORD, CALLBACK_SIGNING_SECRET=SECRET_SIGNING)
    s = Settings.from_env(env)
    account_key = s.storage.account_key
    assert account_key is not None
    shown = repr(s) + str(s) + repr(s.storage) + str(s.model_dump())
    for secret in (
        SECRET_PASSWORD,
        SECRET_SIGNING,
        account_key.get_secret_value(),
        env["STORAGE_CONNECTION_STRING"],
    ):
        assert secret not in shown
    # An error about a malformed connection string does not echo it.
    bad = "AccountName=x;SharedAccessSignature=sv=top-secret-sas"
    with pytest.raises(SettingsError) as info:
        Settings.from_env(values(STORAGE_CONNECTION_STRING=bad, CALLBACK_SIGNING_SECRET="tiny-secret"))
    assert "top-secret-sas" not in str(info.value)
    assert "tiny-secret" not in str(info.value)


def test_a_semicolon_in_the_account_key_is_reported_by_position_without_the_keys_text() -> None:
    """A ';' inside AccountKey splits the key into segments; the error names the segment's position
    only (it reaches logs and the anonymous /api/health body), never a fragment of the key."""
    key = "c2VjcmV0LWtleS1wYXJ0LW9uZQ;cGFydC10d28tb2YtdGhlLWtleQ;dGFpbC1vZi10aGUta2V5"
    bad = f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={key};EndpointSuffix=core.windows.net"
    with pytest.raises(ValueError) as parsed:
        StorageAccount.parse(bad)
    with pytest.raises(SettingsError) as settings_error:
        Settings.from_env(values(STORAGE_CONNECTION_STRING=bad))
    for message in (str(parsed.value), str(settings_error.value)):
        assert "segment 4" in message
        for fragment in key.split(";"):
            for start in range(len(fragment) - 3):  # not even four characters of it
                assert fragment[start : start + 4] not in message, message


def test_settings_are_frozen() -> None:
    s = Settings.from_env(values())
    with pytest.raises(ValueError):
        s.workspace = "other"  # type: ignore[misc]


def test_get_settings_reads_once_and_reset_reads_again(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in values().items():
        monkeypatch.setenv(key, value)
    reset_settings()
    try:
        first = get_settings()
        monkeypatch.setenv("BATCHAI_WORKSPACE", "second-workspace")
        assert get_settings() is first
        reset_settings()
        assert get_settings().workspace == "second-workspace"
        monkeypatch.delenv("BATCHAI_LOCATION")
        reset_settings()
        with pytest.raises(SettingsError, match="BATCHAI_LOCATION"):
            get_settings()
    finally:
        reset_settings()


def test_connection_string_without_explicit_endpoints_uses_the_account_name() -> None:
    account = StorageAccount.parse(
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.windows.net"
    )
    assert account.file_endpoint == "https://acct.file.core.windows.net"
    assert account.blob_endpoint == "https://acct.blob.core.windows.net"
    assert account.table_endpoint == "https://acct.table.core.windows.net"


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:10005", True),
        ("http://127.9.9.9/x", True),
        ("http://localhost:7071/api", True),
        ("http://[::1]:8080/", True),
        ("http://10.0.0.1/", False),
        ("https://management.azure.com", False),
        ("http://127.0.0.1.example.com/", False),
    ],
)
def test_loopback_detection(url: str, loopback: bool) -> None:
    assert is_loopback_url(url) is loopback
