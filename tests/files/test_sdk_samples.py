"""azure-storage-file-share's own samples (tests/files/sdk_samples, unmodified) run against the Files
emulator: every sample method passes, except those that need what a local HTTP emulator cannot be:

- `authentication_default_azure_credential` (sync and async): Entra ID. It signs in with
  DefaultAzureCredential (a token from Microsoft Entra ID, unreachable offline), and azure-core refuses
  to send a bearer token over plain HTTP; the emulator verifies SharedKey and SAS only.
- `copy_file_from_url` (sync and async): HTTPS to Azure's host. Its copy source is hard-coded as
  `https://<account>.file.core.windows.net/...`, a TLS endpoint of the real service.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from infra.local.stack import DEV_ACCOUNT, DEV_KEY
from tests.files.conftest import PrivateEmulator, free_port

pytestmark = pytest.mark.e2e
SAMPLES = Path(__file__).with_name("sdk_samples")
SAMPLES_VERSION = "12.27.1"
EXCLUDED = {
    "authentication_default_azure_credential": "Entra ID token (DefaultAzureCredential), HTTPS only",
    "authentication_default_azure_credential_async": "Entra ID token (DefaultAzureCredential), HTTPS only",
    "copy_file_from_url": "copy source is https://<account>.file.core.windows.net (HTTPS to Azure)",
    "copy_file_from_url_async": "copy source is https://<account>.file.core.windows.net (HTTPS to Azure)",
}
# Runs every public method of the sample module's sample class, in source order, and reports each.
DRIVER = r"""
import asyncio, inspect, json, sys, traceback
module = __import__(sys.argv[1])
excluded = set(json.loads(sys.argv[2]))
report = {}
for name, cls in vars(module).items():
    if not inspect.isclass(cls) or cls.__module__ != module.__name__:
        continue
    instance = cls()
    methods = [m for m in vars(cls) if not m.startswith("_") and callable(getattr(cls, m))]
    for method in methods:
        if method in excluded:
            report[method] = "excluded"
            continue
        try:
            result = getattr(instance, method)()
            if inspect.iscoroutine(result):
                asyncio.run(result)
            report[method] = "passed"
        except BaseException:
            report[method] = traceback.format_exc()
print("REPORT " + json.dumps(report))
"""


def test_samples_are_the_installed_versions() -> None:
    assert version("azure-storage-file-share") == SAMPLES_VERSION
    sums = dict(reversed(line.split()) for line in (SAMPLES / "SHA256SUMS").read_text().splitlines())
    assert sorted(sums) == sorted(p.name for p in SAMPLES.glob("file_samples_*.py"))


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateEmulator]:
    """One Files emulator of its own for the samples: they use fixed share names and account-wide
    service properties, which must not meet other tests' shares."""
    started = PrivateEmulator(tmp_path_factory.mktemp("samples") / "files", free_port())
    started.start()
    yield started
    started.stop()


@pytest.mark.parametrize("sample", sorted(p.stem for p in SAMPLES.glob("file_samples_*.py")))
def test_sdk_sample(emulator: PrivateEmulator, tmp_path: Path, sample: str) -> None:
    work = tmp_path / "samples"
    work.mkdir()
    shutil.copy(SAMPLES / f"{sample}.py", work)
    (work / "SampleSource.txt").write_text("Hello from the storage SDK's samples\n" * 100)
    env = {
        **os.environ,
        "STORAGE_CONNECTION_STRING": emulator.connection_string,
        "STORAGE_ACCOUNT_NAME": DEV_ACCOUNT,
        "STORAGE_ACCOUNT_KEY": DEV_KEY,
        "STORAGE_ACCOUNT_FILE_SHARE_URL": emulator.endpoint,
    }
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, sample, json.dumps(sorted(EXCLUDED))],
        cwd=work, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "REPORT " in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout.split("REPORT ", 1)[1].splitlines()[0])
    assert report, f"{sample} has no sample methods"
    failures = {name: outcome for name, outcome in report.items() if outcome not in ("passed", "excluded")}
    assert not failures, "\n\n".join(f"{name}:\n{trace}" for name, trace in failures.items())
    assert all(outcome == "passed" for name, outcome in report.items() if name not in EXCLUDED)
