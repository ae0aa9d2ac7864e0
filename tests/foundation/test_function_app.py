"""The entry point: every blueprint registered, host.json as the issue asks, and a cheap import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_trigger_family_is_registered() -> None:
    # In a fresh interpreter: azure-functions' app.get_functions() may be called only once per app
    # (a second call reports every function as a duplicate), and other tests call it too.
    code = (
        "import json, function_app; "
        "print(json.dumps({f.get_function_name(): sorted(b.type for b in f.get_bindings()) "
        "for f in function_app.app.get_functions()}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    bindings = json.loads(result.stdout.strip().splitlines()[-1])
    kinds = set().union(*map(set, bindings.values()))
    assert {"blobTrigger", "timerTrigger", "httpTrigger"} <= kinds
    assert "ingest" in bindings and "monitor" in bindings and "cleanup" in bindings


def test_host_json() -> None:
    host = json.loads((ROOT / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensionBundle"] == {
        "id": "Microsoft.Azure.Functions.ExtensionBundle",
        "version": "[4.*, 5.0.0)",
    }
    assert host["extensions"]["http"]["routePrefix"] == "api"
    assert host["extensions"]["blobs"]["maxDegreeOfParallelism"] >= 1
    assert host["functionTimeout"] and host["logging"]["logLevel"]["default"]


def test_import_function_app_loads_no_sdk_and_no_pydantic() -> None:
    """The host imports function_app at every cold start: SDKs and pydantic wait for the first call."""
    code = (
        "import sys, function_app; "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] == 'pydantic' or m.startswith(("
        "'azure.mgmt', 'azure.identity', 'azure.storage', 'azure.data'))); "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
