"""Virtual environments with the older Azure SDK generation, for client code written against it: the
Batch AI quickstart (azure-mgmt-batchai 0.2.0, api-version 2017-09-01-preview, azure-storage-file) and
Microsoft's Batch AI recipes' `utilities` (azure-mgmt-batchai 2.0.0, msrestazure, azure-mgmt-storage).

Each environment is made once from its pinned list and kept under `.cache/legacy-venvs/` (keyed by the
list's hash), so later runs only check it. A venv that cannot be built is an error, never a skip.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE = REPO_ROOT / ".cache" / "legacy-venvs"

# What the quickstart (October 2017) ran with, as PyPI still serves it.
QUICKSTART = (
    "azure-mgmt-batchai==0.2.0",
    "azure-mgmt-resource==1.2.2",
    "msrestazure==0.4.34",
    "msrest==0.6.21",
    "azure-common==1.1.28",
    "azure-storage-file==1.4.0",
    "azure-storage-common==1.4.2",
    "requests==2.32.3",
)
# The recipes' utilities/requirements.txt names azure-mgmt-batchai 2.0.0 and the `azure` bundle of its
# time; these are the bundle's parts that the utilities import.
RECIPES = (
    "azure-mgmt-batchai==2.0.0",
    "azure-mgmt-resource==2.0.0",
    "azure-mgmt-storage==2.0.0",
    "msrestazure==0.6.4.post1",
    "msrest==0.6.21",
    "azure-common==1.1.28",
    "azure-storage-blob==1.5.0",
    "azure-storage-file==1.4.0",
    "azure-storage-common==1.4.2",
    "requests==2.32.3",
    "six==1.17.0",
    "future==1.0.0",
    "jsonschema==4.26.0",
    "numpy==2.3.5",
)


class VenvError(RuntimeError):
    pass


def ensure(name: str, requirements: tuple[str, ...]) -> Path:
    """The python executable of the cached environment `name`, built first if needed."""
    digest = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:12]
    root = CACHE / f"{name}-{digest}"
    python = root / "bin" / "python"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / "READY").exists() and python.exists():
            return python
        shutil.rmtree(root, ignore_errors=True)
        steps = [
            [sys.executable, "-m", "venv", str(root)],
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                raise VenvError(f"building the {name} environment failed: {' '.join(step[:4])} ...\n"
                                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")  # fmt: skip
        (root / "READY").write_text("\n".join(requirements) + "\n")
    return python


if __name__ == "__main__":
    for env_name, reqs in (("quickstart", QUICKSTART), ("recipes", RECIPES)):
        print(env_name, ensure(env_name, reqs))
