"""Fixtures for the ARM emulator tests: azure-mgmt-resource and azure-mgmt-batchai clients on the
session stack (plain HTTP, a static token), a policy that checks every Batch AI response against the
published spec, file shares made through azure-storage-file-share, and a private emulator process
for tests that restart it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import requests
from azure.core.credentials import AccessToken
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.mgmt.batchai import BatchAI
from azure.mgmt.resource.resources import ResourceManagementClient
from azure.storage.fileshare import ShareClient, ShareServiceClient

from infra.local.arm import urls
from infra.local.arm.specvalidator import load_spec, validate
from infra.local.stack import DEV_SUBSCRIPTION, HOST, free_port, launch, stop_process
from infra.local.waiting import wait_for  # noqa: F401 (the one polling helper; the arm tests import it from here)

SUB = DEV_SUBSCRIPTION
# Fast but still real timings for the shared emulator while these tests run (restored afterwards).
FAST = {"provisioning_delay": 0.5, "operation_delay": 0.1, "retry_after": 0}


# The bearer token of the private emulators these tests start (the session stack has a random one).
PRIVATE_ARM_TOKEN = "private-arm-test-token"


@dataclass
class StaticCredential:
    """The emulator's token (it accepts its stack's token and nothing else)."""

    token: str

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self.token, int(time.time()) + 3600)


def auth(stack: Any) -> dict[str, str]:
    """The Authorization header of the session stack's ARM emulator."""
    return {"Authorization": f"Bearer {stack.arm_token}"}


class AllowHttp(SansIOHTTPPolicy):
    """azure-core refuses bearer tokens over http unless told otherwise, per request."""

    def on_request(self, request: Any) -> None:
        request.context["enforce_https"] = False


def _response_definitions() -> dict[str, str]:
    spec = load_spec()
    out = {}
    for ops in spec["paths"].values():
        for method, op in ops.items():
            if method == "parameters":
                continue
            schema = op["responses"].get("200", {}).get("schema", {})
            if "$ref" in schema:
                out[op["operationId"]] = schema["$ref"].rsplit("/", 1)[-1]
    return out


RESPONSE_DEFINITIONS = _response_definitions()


@dataclass
class SpecCheck(SansIOHTTPPolicy):
    """Validates every Batch AI response body (200s against the operation's definition, errors against
    CloudError) and records the violations; tests assert there are none."""

    errors: list[str] = field(default_factory=list)
    checked: int = 0

    def on_response(self, request: Any, response: Any) -> None:
        http_request, http_response = request.http_request, response.http_response
        path = urlparse(http_request.url).path
        try:
            route = urls.match(http_request.method, path)
        except LookupError:
            return
        if route is None or "/providers/microsoft.batchai" not in path.lower():
            return
        operation = route[1]
        status = http_response.status_code
        definition = RESPONSE_DEFINITIONS.get(operation) if status == 200 else None
        if status >= 400:
            definition = "CloudError"
        if not definition:
            return
        body = json.loads(http_response.text() or "null")
        self.checked += 1
        for error in validate(definition, body):
            self.errors.append(f"{operation} ({definition}): {error}")


def sdk_kwargs(endpoint: str, *policies: SansIOHTTPPolicy, **extra: Any) -> dict[str, Any]:
    return {
        "base_url": endpoint,
        "per_call_policies": [AllowHttp(), *policies],
        "polling_interval": 0.2,
        "retry_backoff_factor": 0.05,
        "retry_backoff_max": 1,
        **extra,
    }


@dataclass
class Clients:
    resources: ResourceManagementClient
    batchai: BatchAI
    spec: SpecCheck
    endpoint: str


def make_clients(endpoint: str, token: str, **extra: Any) -> Clients:
    spec = SpecCheck()
    kwargs = sdk_kwargs(endpoint, spec, **extra)
    return Clients(
        ResourceManagementClient(StaticCredential(token), SUB, **kwargs),
        BatchAI(StaticCredential(token), SUB, **kwargs),
        spec,
        endpoint,
    )


@pytest.fixture(scope="module")
def arm_stack(local_stack):
    stack = local_stack.ensure("files", "arm")
    settings_url = f"{stack.arm_endpoint}/_emulator/settings"
    before = requests.get(settings_url, timeout=10).json()
    requests.post(settings_url, json=FAST, timeout=10).raise_for_status()
    yield stack
    requests.post(settings_url, json=before, timeout=10)


@pytest.fixture(scope="module")
def clients(arm_stack) -> Clients:
    return make_clients(arm_stack.arm_endpoint, arm_stack.arm_token)


@pytest.fixture(scope="module")
def file_service(arm_stack) -> ShareServiceClient:
    return ShareServiceClient.from_connection_string(arm_stack.connection_string)


@pytest.fixture
def make_share(file_service: ShareServiceClient) -> Iterator[Callable[[dict[str, bytes]], ShareClient]]:
    """Create a share holding the given files ({"dir/name": bytes}) through the Files emulator."""
    made: list[ShareClient] = []

    def make(files: dict[str, bytes], prefix: str = "batchaiquickstart") -> ShareClient:
        share = file_service.get_share_client(f"{prefix}-{uuid.uuid4().hex[:8]}")
        share.create_share()
        made.append(share)
        for name, data in files.items():
            parts = name.split("/")
            for i in range(1, len(parts)):
                with contextlib.suppress(Exception):
                    share.get_directory_client("/".join(parts[:i])).create_directory()
            share.get_file_client(name).upload_file(data)
        return share

    yield make
    for share in made:
        with contextlib.suppress(Exception):
            share.delete_share()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class PrivateArm:
    """An ARM emulator process of our own, which a test may stop and start again, beside a Files
    emulator of its own that serves its shares (output download links point there)."""

    data_dir: Path
    files_root: Path
    port: int
    files_port: int = 0
    process: subprocess.Popen | None = None
    files_process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        if self.files_process is None:
            self.files_port = self.files_port or free_port()
            files_cmd = [
                sys.executable, "-m", "infra.local.files", "--host", HOST, "--port", str(self.files_port),
                "--data-dir", str(self.files_root.parent),
            ]  # fmt: skip
            log = self.data_dir.parent / f"files-{self.files_port}.log"
            self.files_process = launch("Files emulator", files_cmd, [self.files_port], log)
        cmd = [
            sys.executable, "-m", "infra.local.arm", "--host", HOST, "--port", str(self.port),
            "--data-dir", str(self.data_dir), "--files-root", str(self.files_root),
            "--files-endpoint", f"http://{HOST}:{self.files_port}/devstoreaccount1",
            "--provisioning-delay", "0.3", "--operation-delay", "0.1", "--retry-after", "0",
        ]  # fmt: skip
        env = {**os.environ, "ARM_EMULATOR_TOKEN": PRIVATE_ARM_TOKEN}
        log = self.data_dir.parent / f"arm-{self.port}.log"
        self.process = launch("ARM emulator", cmd, [self.port], log, env=env)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


@pytest.fixture
def private_arm(tmp_path: Path) -> Iterator[PrivateArm]:
    emulator = PrivateArm(tmp_path / "arm", tmp_path / "shares", free_port())
    emulator.files_root.mkdir()
    emulator.start()
    yield emulator
    emulator.stop()
    if emulator.files_process is not None:
        stop_process(emulator.files_process)
