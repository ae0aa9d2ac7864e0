"""Fixtures for the Files emulator tests: SDK clients on the session stack, and a private emulator
process (own port and data directory) for tests that restart it or slow its copies down."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient
from azure.storage.fileshare import ShareClient, ShareServiceClient

from infra.local.stack import DEV_ACCOUNT, DEV_KEY, HOST, free_port, launch, stop_process


@pytest.fixture(scope="module")
def stack(local_stack):
    return local_stack.ensure("azurite", "files")


@pytest.fixture(scope="module")
def file_service(stack) -> Iterator[ShareServiceClient]:
    with ShareServiceClient.from_connection_string(stack.connection_string) as client:
        yield client


@pytest.fixture(scope="module")
def blob_service(stack) -> Iterator[BlobServiceClient]:
    # Closed afterwards: Azurite waits for open keep-alive connections before it exits on SIGTERM.
    with BlobServiceClient.from_connection_string(stack.connection_string) as client:
        yield client


@pytest.fixture
def share(file_service: ShareServiceClient) -> Iterator[ShareClient]:
    """A fresh share per test, deleted afterwards."""
    client = file_service.get_share_client(f"t-{uuid.uuid4().hex[:12]}")
    client.create_share()
    yield client
    with contextlib.suppress(Exception):  # the test may have deleted it already
        client.delete_share()


@dataclass
class PrivateEmulator:
    """One Files emulator process of our own, which a test may stop and start again."""

    data_dir: Path
    port: int
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}/{DEV_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
            f"FileEndpoint={self.endpoint};"
        )

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "infra.local.files", "--host", HOST, "--port", str(self.port),
            "--data-dir", str(self.data_dir), *self.extra_args,
        ]  # fmt: skip
        log = self.data_dir.parent / f"files-{self.port}.log"
        self.process = launch("Files emulator", cmd, [self.port], log)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


@pytest.fixture
def private_emulator(tmp_path: Path) -> Iterator[Callable[..., PrivateEmulator]]:
    started: list[PrivateEmulator] = []

    def start(*extra_args: str) -> PrivateEmulator:
        emulator = PrivateEmulator(tmp_path / "files", free_port(), tuple(extra_args))
        emulator.start()
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        emulator.stop()
