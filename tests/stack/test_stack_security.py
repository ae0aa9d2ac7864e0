"""The local stack on a developer's machine: every service refuses a DNS-rebound Host, keys and tokens
are random per stack and kept where only the user can read them, the published Azurite key and a
guessed ARM token open nothing."""

from __future__ import annotations

import http.client
import stat
import uuid
from email.utils import formatdate
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.rest import HttpRequest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.fileshare import ShareServiceClient
from azure.storage.fileshare._shared.authentication import SharedKeyCredentialPolicy
from azure.storage.queue import QueueServiceClient

from infra.local.loopback import is_loopback_host
from infra.local.stack import DEV_ACCOUNT, DEV_KEY, DEV_SUBSCRIPTION, NAMED_ACCOUNT, LocalStack, Ports

REBIND = "rebind.attacker.example"


def raw(port: int, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
    """One request with exactly these headers (http.client sends our Host as given)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# --- unit: what counts as loopback -------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:10005",
        "127.0.0.1",
        "127.1.2.3:80",
        "localhost:7071",
        "LOCALHOST",
        "[::1]:10004",
        "a.localhost:1",
    ],
)
def test_loopback_hosts_pass(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host",
    [
        None,
        "",
        f"{REBIND}:10005",
        "127.0.0.1.attacker.example",
        "localhost.attacker.example:7071",
        "10.0.0.1:80",
        "[::2]:80",
        "0.0.0.0:10005",
    ],
)
def test_other_hosts_are_refused(host: str | None) -> None:
    assert not is_loopback_host(host)


# --- unit: keys and the env file ---------------------------------------------------------------------


def test_each_stack_has_its_own_random_keys_and_a_private_env_file(tmp_path: Path) -> None:
    first = LocalStack(data_dir=tmp_path / ".local", ports=Ports())
    second = LocalStack(data_dir=tmp_path / "other", ports=Ports())
    assert set(first.secrets.account_keys) == {DEV_ACCOUNT, NAMED_ACCOUNT}
    for mine, theirs in zip(
        (*first.secrets.account_keys.values(), first.arm_token, first.functions_key),
        (*second.secrets.account_keys.values(), second.arm_token, second.functions_key),
        strict=True,
    ):
        assert mine != theirs and len(mine) >= 32
    assert DEV_KEY not in first.connection_string
    assert first.functions_key != "local-functions-key"
    first.write_state()
    data_dir = tmp_path / ".local"
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    env_file = data_dir / "stack.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    text = env_file.read_text()
    for secret in (*first.secrets.account_keys.values(), first.arm_token, first.functions_key):
        assert secret in text
    assert f"NAMED_STORAGE_ACCOUNT={NAMED_ACCOUNT}\n" in text
    assert repr(first.secrets).count("=") == 1  # the keys never show in a repr or a log line


def test_the_app_gets_connection_strings_not_the_emulators_keys(tmp_path: Path) -> None:
    stack = LocalStack(data_dir=tmp_path, ports=Ports())
    functions = stack.service_env("functions")
    assert "AZURITE_ACCOUNTS" not in functions and "ARM_EMULATOR_TOKEN" not in functions
    assert functions["LOCAL_ARM_TOKEN"] == stack.arm_token
    assert functions["FUNCTIONS_KEY"] == stack.functions_key
    assert stack.service_env("arm")["ARM_EMULATOR_TOKEN"] == stack.arm_token
    for service in ("azurite", "files", "arm"):
        assert stack.service_env(service)["AZURITE_ACCOUNTS"] == stack.secrets.azurite_accounts


# --- end to end: a rebound Host is refused and runs nothing -------------------------------------------

e2e = pytest.mark.e2e


@e2e
def test_arm_emulator_refuses_a_rebound_host_and_creates_nothing(local_stack) -> None:
    stack = local_stack.ensure("files", "arm")
    port = stack.ports.arm
    group = f"rebind-{uuid.uuid4().hex[:8]}"
    path = f"/subscriptions/{DEV_SUBSCRIPTION}/resourcegroups/{group}?api-version=2021-04-01"
    token = {"Authorization": f"Bearer {stack.arm_token}", "Content-Type": "application/json"}
    status, body = raw(port, "PUT", path, {**token, "Host": f"{REBIND}:{port}"}, b'{"location": "eastus"}')
    assert status == 421 and b"loopback" in body
    status, _ = raw(port, "GET", path, {**token, "Host": f"127.0.0.1:{port}"})
    assert status == 404  # nothing was created
    # The admin endpoints (fault injection, settings) are behind the same check.
    status, _ = raw(port, "GET", "/_emulator/settings", {"Host": f"{REBIND}:{port}"})
    assert status == 421


@e2e
def test_arm_emulator_accepts_only_its_stacks_token(local_stack) -> None:
    stack = local_stack.ensure("files", "arm")
    port = stack.ports.arm
    path = f"/subscriptions/{DEV_SUBSCRIPTION}/resourcegroups?api-version=2021-04-01"
    for token in ("local-dev-token", "t", stack.arm_token + "x"):
        status, body = raw(
            port, "GET", path, {"Authorization": f"Bearer {token}", "Host": f"127.0.0.1:{port}"}
        )
        assert status == 401 and b"LOCAL_ARM_TOKEN" in body, token
    status, _ = raw(
        port, "GET", path, {"Authorization": f"Bearer {stack.arm_token}", "Host": f"localhost:{port}"}
    )
    assert status == 200


@e2e
def test_files_emulator_refuses_a_rebound_host_and_writes_nothing(local_stack) -> None:
    stack = local_stack.ensure("azurite", "files")
    port = stack.ports.files
    share = f"rebind-{uuid.uuid4().hex[:8]}"
    path = f"/{DEV_ACCOUNT}/{share}?restype=share"
    # Signed with the right key: only the Host is wrong.
    request = HttpRequest("PUT", f"http://127.0.0.1:{port}{path}")
    request.headers.update({"x-ms-version": "2025-05-05", "x-ms-date": formatdate(usegmt=True)})
    SharedKeyCredentialPolicy(DEV_ACCOUNT, stack.secrets.account_keys[DEV_ACCOUNT]).on_request(
        PipelineRequest(request, PipelineContext(None))
    )
    status, body = raw(port, "PUT", path, {**request.headers, "Host": f"{REBIND}:{port}"})
    assert status == 421 and b"loopback" in body
    assert not (stack.files_root / DEV_ACCOUNT / share).exists()


@e2e
def test_functions_host_refuses_a_rebound_host_and_invokes_nothing(local_stack) -> None:
    stack = local_stack.ensure("azurite", "files", "arm", "functions")
    port = stack.ports.functions
    log = stack.logs_dir / "functions.log"
    before = log.read_text(errors="replace").count("Executing 'Functions.")
    headers = {"x-functions-key": stack.functions_key, "Content-Type": "application/json"}
    for method, path in (("POST", "/api/runs"), ("GET", "/api/health"), ("GET", "/api/runs")):
        status, body = raw(port, method, path, {**headers, "Host": f"{REBIND}:{port}"}, b'{"dataset": "x"}')
        assert status == 421 and b"loopback" in body, path
    assert log.read_text(errors="replace").count("Executing 'Functions.") == before
    status, _ = raw(port, "GET", "/api/runs", {**headers, "Host": f"127.0.0.1:{port}"})
    assert status == 200


@e2e
def test_event_grid_stand_in_refuses_a_rebound_host_and_subscribes_nothing(local_stack) -> None:
    stack = local_stack.ensure("azurite", "eventgrid")
    port = stack.ports.eventgrid
    name = f"rebind-{uuid.uuid4().hex[:8]}"
    body = b'{"container": "x", "endpoint": "https://attacker.example/hook"}'
    path = f"/_emulator/subscriptions/{name}"
    status, answer = raw(
        port, "PUT", path, {"Host": f"{REBIND}:{port}", "Content-Type": "application/json"}, body
    )
    assert status == 421 and b"loopback" in answer
    status, listed = raw(port, "GET", "/_emulator/subscriptions", {"Host": f"127.0.0.1:{port}"})
    assert status == 200 and name.encode() not in listed


@e2e
def test_azurite_refuses_the_published_key(local_stack) -> None:
    """Azurite cannot check Host; what keeps a rebinding page out is the stack's random keys."""
    stack = local_stack.ensure("azurite")
    published = stack.connection_string.replace(stack.secrets.account_keys[DEV_ACCOUNT], DEV_KEY)
    tag = uuid.uuid4().hex[:12]
    attempts = (
        lambda: BlobServiceClient.from_connection_string(published, retry_total=0).create_container(
            f"c{tag}"
        ),
        lambda: QueueServiceClient.from_connection_string(published, retry_total=0).create_queue(f"q{tag}"),
        lambda: TableServiceClient.from_connection_string(published, retry_total=0).create_table(f"t{tag}"),
    )
    for attempt in attempts:
        with pytest.raises(HttpResponseError) as refused:
            attempt()
        assert refused.value.status_code == 403


# --- end to end: the second, named account -------------------------------------------------------


@e2e
def test_the_named_account_is_served_by_every_storage_service(local_stack) -> None:
    stack = local_stack.ensure("azurite", "files")
    named = stack.named_connection_string
    tag = uuid.uuid4().hex[:10]
    blobs = BlobServiceClient.from_connection_string(named)
    container = blobs.create_container(f"named-{tag}")
    container.upload_blob("a.txt", b"named account")
    assert container.download_blob("a.txt").readall() == b"named account"
    queue = QueueServiceClient.from_connection_string(named).create_queue(f"named-{tag}")
    queue.send_message("hello")
    assert [m.content for m in queue.receive_messages()] == ["hello"]
    table = TableServiceClient.from_connection_string(named).create_table(f"named{tag}")
    table.create_entity({"PartitionKey": "p", "RowKey": "r", "v": 1})
    assert table.get_entity("p", "r")["v"] == 1
    share = ShareServiceClient.from_connection_string(named).create_share(f"named-{tag}")
    share.get_file_client("f.txt").upload_file(b"on the named share")
    assert (stack.files_root / NAMED_ACCOUNT / f"named-{tag}" / "f.txt").read_bytes() == b"on the named share"
    # Its data is its own: devstoreaccount1 does not see it, and the other account's key does not open it.
    assert f"named-{tag}" not in [
        c.name for c in BlobServiceClient.from_connection_string(stack.connection_string).list_containers()
    ]
    wrong = named.replace(stack.secrets.account_keys[NAMED_ACCOUNT], stack.secrets.account_keys[DEV_ACCOUNT])
    with pytest.raises(HttpResponseError):
        ShareServiceClient.from_connection_string(wrong, retry_total=0).get_share_client(
            f"named-{tag}"
        ).get_share_properties()
