"""What every benchmark shares: the figure record, medians, the local stack, ARM request-log helpers.

Why one `Figure` shape: `__main__` prints every benchmark's figures in one table and writes them to
`bench/results.json`, each next to the baseline measured in the same run and its target, so a
reader never compares an absolute time from a noisy machine with a number from another day.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import statistics
import sys
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from infra.local.stack import REPO_ROOT, LocalStack, Ports

PY = sys.executable


@dataclass
class Figure:
    """One line of the results table: a median over `runs` samples, its baseline, its target."""

    key: str  # stable id, e.g. "staging.throughput_ratio" (names carry sizes and change)
    name: str
    value: float  # the figure compared to the target (a ratio, seconds, bytes, a count)
    unit: str
    target: str  # the target the figure is held to, e.g. "<= 2 s"
    met: bool | None  # None: no target for this line (a supporting measurement)
    baseline: str = ""  # what the figure is compared to, with its measured value
    runs: int = 1
    samples: list[float] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("no samples to take a median of")
    return float(statistics.median(values))


def mib(n_bytes: float) -> float:
    return n_bytes / (1024 * 1024)


@dataclass
class BenchOptions:
    """What `python -m bench` was asked for (see `__main__`)."""

    quick: bool = False
    blob_size: int = 1024**3
    work_dir: Path = Path("/tmp")
    datasets: int = 20
    monitor_runs: int = 1000
    monitor_experiments: int = 10
    monitor_cycles: int = 5
    idle_seconds: int = 15
    idle_repeats: int = 3
    import_runs: int = 7
    demo_repeats: int = 3
    demo_train: int = 6000
    demo_test: int = 1000
    demo_epochs: int = 3
    staging_repeats: int = 3
    sweep_trials: int = 4
    sweep_concurrency: int = 2
    sweep_repeats: int = 1
    # --quick: one stack with every service serves all benchmarks (a smoke test pays one start-up).
    shared_stack: LocalStack | None = None


@contextlib.contextmanager
def local_stack(
    data_dir: Path,
    services: Sequence[str],
    extra_env: Mapping[str, str] | Callable[[LocalStack], Mapping[str, str]] | None = None,
    *,
    shared: LocalStack | None = None,
) -> Iterator[LocalStack]:
    """A stack of its own on free ports (never the developer's `make up` stack) in a fresh data
    directory, stopped and removed on exit; or `shared` (--quick), left running."""
    if shared is not None:
        missing = [s for s in services if s not in shared.processes]
        if missing:
            raise RuntimeError(f"the shared stack lacks {', '.join(missing)}")
        yield shared
        return
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    stack = LocalStack(data_dir=data_dir, ports=Ports.free())
    stack.extra_env = dict((extra_env(stack) if callable(extra_env) else extra_env) or {})
    try:
        stack.start(services, timeout=120)
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def stack_env(stack: LocalStack, **overrides: str) -> dict[str, str]:
    """App settings (the example's values) pointed at `stack`: for in-process shared/ code."""
    from shared.settings import local_stack_values

    values = local_stack_values(
        AzureWebJobsStorage=stack.connection_string,
        STORAGE_CONNECTION_STRING=stack.connection_string,
        ARM_ENDPOINT=stack.arm_endpoint,
        LOCAL_ARM_TOKEN=stack.arm_token,
    )
    values.update(overrides)
    return values


# --- the ARM emulator's admin endpoints --------------------------------------------------------------
def check_disk(work: Path, size: int, copies: int, doing: str) -> None:
    """Refuse to start a benchmark that would fill the disk: ``copies`` copies of ``size`` bytes plus
    512 MiB of slack must fit where it works."""
    free = shutil.disk_usage(work).free
    need = copies * size + 512 * 1024 * 1024
    if free < need:
        raise RuntimeError(
            f"{work} has {mib(free):.0f} MiB free; {doing} a {mib(size):.0f} MiB dataset needs "
            f"{mib(need):.0f} MiB (use --blob-size or --quick)"
        )


def arm_admin(stack: LocalStack, path: str, method: str = "GET", body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{stack.arm_endpoint}/_emulator/{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"} if data else {},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def arm_requests_since(stack: LocalStack, since: int) -> tuple[list[dict[str, Any]], int]:
    """ARM requests the emulator logged after sequence number `since`, and the last sequence number."""
    log = arm_admin(stack, f"requests?since={since}")
    return log["requests"], int(log["last_seq"])


def arm_last_seq(stack: LocalStack) -> int:
    return int(arm_admin(stack, "requests?since=999999999999")["last_seq"])


def repo_env() -> dict[str, str]:
    """The environment for child interpreters: this repository importable, output unbuffered."""
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


GEN_CHUNK = 4 * 1024 * 1024  # bytes generated and hashed at a time


def upload_varied_blob(container: Any, name: str, size: int, work: Path) -> None:
    """A blob of ``size`` varied bytes uploaded as the CLI uploads (Content-MD5 set), through a
    temporary file in ``work`` that is deleted once uploaded. Each chunk differs (its offset is
    written into it), so nothing downstream can dedupe or compress it away."""
    from azure.storage.blob import ContentSettings

    source = work / "varied.bin"
    digest = hashlib.md5(usedforsecurity=False)
    block = os.urandom(GEN_CHUNK)
    with open(source, "wb") as handle:
        written = 0
        while written < size:
            chunk = block[: min(GEN_CHUNK, size - written)]
            chunk = written.to_bytes(8, "little") + chunk[8:] if len(chunk) > 8 else chunk
            handle.write(chunk)
            digest.update(chunk)
            written += len(chunk)
    try:
        with open(source, "rb") as handle:
            container.upload_blob(
                name,
                handle,
                length=size,
                overwrite=True,
                max_concurrency=2,
                content_settings=ContentSettings(content_md5=bytearray(digest.digest())),
            )
    finally:
        source.unlink()
