"""Helpers of the local Functions host tests: run the host on the test app as a real process (the
command line `make up` uses), with settings written to a file, and read what the app recorded."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from infra.local.stack import free_port
from infra.local.waiting import wait_for

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
APP_DIR = Path(__file__).resolve().parent / "app"
FUNCTIONS_KEY = "test-functions-key"
ALL_FUNCTIONS = (
    "item_by_id", "item_by_name", "by_key", "echo", "secure", "admin_ping", "boom", "async_double", "plain",
    "sleepy", "work",
    "ingest", "eg_ingest", "always_fails", "client_binding", "tick", "slow",
)  # fmt: skip

BASE_SETTINGS = {
    "FUNCTIONS_KEY": FUNCTIONS_KEY,
    "TEST_BLOB_CONTAINER": "unused-data",
    "TEST_EG_CONTAINER": "unused-eg",
    "TEST_QUEUE": "unused-queue",
    "FUNCTIONS_BLOBS_EXTENSION_KEY": "test-blobs-extension-key",
    "TEST_FAIL_CONTAINER": "unused-fail",
    "TEST_CLIENT_CONTAINER": "unused-client",
    "TICK_SCHEDULE": "*/2 * * * * *",
    "SLOW_SCHEDULE": "* * * * * *",
    "FUNCHOST_BLOB_POLL_INTERVAL": "0.2",
}


_HOST_NUMBERS = itertools.count()


def only(*enabled: str) -> dict[str, str]:
    """Settings that disable every function of the test app but these (AzureWebJobs.X.Disabled)."""
    return {f"AzureWebJobs.{name}.Disabled": "true" for name in ALL_FUNCTIONS if name not in enabled}


class HostProcess:
    """`python -m infra.local.funchost` on the test app, in its own process group."""

    def __init__(self, work_dir: Path, settings: dict[str, str]) -> None:
        self.work_dir = work_dir
        self.records_dir = work_dir / "records"
        self.settings = {**BASE_SETTINGS, "FUNCHOST_TEST_RECORD_DIR": str(self.records_dir), **settings}
        self.settings_file = work_dir / "local.settings.json"
        self.log_file = work_dir / f"host-{next(_HOST_NUMBERS)}.log"  # one per process: restarts start clean
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> HostProcess:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.settings_file.write_text(json.dumps({"IsEncrypted": False, "Values": self.settings}))
        env = {
            k: v for k, v in os.environ.items() if k not in self.settings and not k.startswith("AzureWebJobs")
        }
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [sys.executable, "-m", "infra.local.funchost", "--app-dir", str(APP_DIR), "--host", "127.0.0.1",
               "--port", str(self.port), "--settings", str(self.settings_file)]  # fmt: skip
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while "Host started" not in self.log():
            if self.proc.poll() is not None:
                raise AssertionError(f"host exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"host did not start within {timeout}s:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        return self

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, as `make down` sends it; the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def records(self, function: str) -> list[dict[str, Any]]:
        path = self.records_dir / f"{function}.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def wait_for(
        self, check: Callable[[], T], timeout: float = 15.0, interval: float = 0.1, *, what: str = "condition"
    ) -> T:
        """``infra.local.waiting.wait_for``, with the tail of this host's log in a timeout's message."""
        return wait_for(
            check, timeout, interval, what=what, detail=lambda: f"host log:\n{self.log()[-4000:]}"
        )


@pytest.fixture
def host_factory(tmp_path: Path) -> Iterator[Callable[..., HostProcess]]:
    """Make hosts sharing one work dir (so records survive a restart); all stopped at the end."""
    started: list[HostProcess] = []

    def make(settings: dict[str, str] | None = None) -> HostProcess:
        host = HostProcess(tmp_path, settings or {})
        started.append(host)
        return host

    yield make
    for host in started:
        if host.proc is not None:
            host.stop()
