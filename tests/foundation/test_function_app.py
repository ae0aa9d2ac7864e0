"""The entry point: every blueprint registered, host.json as the app needs it, and a cheap import."""

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


# Top-level packages of SDKs and pydantic: what a cold start should not pay for before the first call.
SDK_PACKAGES = ("azure.mgmt", "azure.identity", "azure.storage", "azure.data", "pydantic", "msal", "msrest")


def _sdk_modules_after(statement: str) -> set[str]:
    """The SDK and pydantic modules loaded by ``statement`` in a fresh interpreter."""
    code = (
        f"import json, sys; {statement}; pkgs = {SDK_PACKAGES!r}; subs = tuple(p + '.' for p in pkgs); "
        "print(json.dumps(sorted(m for m in sys.modules if m in pkgs or m.startswith(subs))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return set(json.loads(result.stdout))


def test_import_function_app_loads_only_what_the_blob_binding_needs() -> None:
    """The host imports function_app at every cold start: SDKs and pydantic wait for the first call,
    except what the ingest trigger's SDK-type binding (azurefunctions-extensions-bindings-blob) imports
    itself: azure-storage-blob's blob package and azure-identity (with msal) for its managed-identity
    client. Nothing beyond that: no management SDK, no tables, no file share client, no pydantic."""
    binding = _sdk_modules_after("import azurefunctions.extensions.bindings.blob")
    assert "azure.storage.blob" in binding and "azure.identity" in binding
    assert all(m.startswith(("azure.storage", "azure.identity", "msal")) for m in binding), binding
    app = _sdk_modules_after("import function_app")
    assert app - binding == set()
    forbidden = (
        "azure.mgmt",
        "azure.data",
        "azure.storage.fileshare",
        "azure.storage.queue",
        "pydantic",
        "msrest",
    )
    assert [m for m in app if m.startswith(forbidden)] == []


def test_ingest_trigger_binds_the_blob_client_sdk_type() -> None:
    """The blob trigger's binding as the Python worker indexes it (the extension's own code): a
    deferred binding, so in Azure the host sends the blob's reference, never its bytes."""
    code = (
        "import json, types, typing, function_app\n"
        "from azurefunctions.extensions.base import meta\n"
        "fn = next(f for f in function_app.app.get_functions() if f.get_function_name() == 'ingest')\n"
        "hints = typing.get_type_hints(fn.get_user_function())\n"
        "types_ = {n: types.SimpleNamespace(pytype=t) for n, t in hints.items()}\n"
        "raw, _ = meta.get_binding_registry().get_raw_bindings(fn, types_)\n"
        "print(json.dumps({'bindings': [json.loads(b) for b in raw],"
        " 'client': hints['client'].__module__}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = json.loads(result.stdout)
    (trigger,) = found["bindings"]
    assert trigger["type"] == "blobTrigger" and trigger["source"] == "EventGrid"
    assert trigger["properties"] == {"SupportsDeferredBinding": True}
    assert found["client"].startswith("azurefunctions.extensions.bindings.blob")
