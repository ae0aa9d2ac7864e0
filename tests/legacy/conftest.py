"""Fixtures for client code of the older SDK generation: a local stack of its own, used through its
named storage account (the older azure-storage-file refuses `devstoreaccount1` for the file service),
and the cached virtual environments of tests/legacy/venvs.py."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from infra.local.stack import NAMED_ACCOUNT, LocalStack, Ports
from tests.legacy import venvs

FAST = {"provisioning_delay": 0.3, "operation_delay": 0.1, "retry_after": 0}


@dataclass
class NamedStack:
    """A stack of its own, used through its named storage account (NAMED_ACCOUNT, with the stack's
    random key) and its ARM token."""

    stack: LocalStack
    account: str = NAMED_ACCOUNT

    @property
    def key(self) -> str:
        return self.stack.secrets.account_keys[self.account]

    @property
    def arm_token(self) -> str:
        return self.stack.arm_token

    @property
    def file_host(self) -> str:
        return f"127.0.0.1:{self.stack.ports.files}/{self.account}"

    @property
    def connection_string(self) -> str:
        p = self.stack.ports
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account};AccountKey={self.key};"
            f"BlobEndpoint=http://127.0.0.1:{p.blob}/{self.account};"
            f"FileEndpoint=http://127.0.0.1:{p.files}/{self.account};"
        )


@pytest.fixture(scope="session")
def named_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NamedStack]:
    stack = LocalStack(data_dir=tmp_path_factory.mktemp("legacy-stack"), ports=Ports.free())
    try:
        stack.start(["azurite", "files", "arm"])
        requests.post(f"{stack.arm_endpoint}/_emulator/settings", json=FAST, timeout=10).raise_for_status()
        yield NamedStack(stack)
    finally:
        stack.stop()


def _python(name: str, requirements: tuple[str, ...]) -> Path:
    try:
        return venvs.ensure(name, requirements)
    except (venvs.VenvError, OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"the {name} environment (older Azure SDKs) could not be built: {exc}")


@pytest.fixture(scope="session")
def quickstart_python() -> Path:
    return _python("quickstart", venvs.QUICKSTART)


@pytest.fixture(scope="session")
def recipes_python() -> Path:
    return _python("recipes", venvs.RECIPES)


def run_client(python: Path, script: Path, cwd: Path, env: dict[str, str], timeout: float = 180) -> str:
    """Run a client script in its environment; its output, or a failure showing it."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    full_env.update(env)
    done = subprocess.run(
        [str(python), str(script)], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{script.name} exited with {done.returncode}:\n{output[-6000:]}"
    return output
