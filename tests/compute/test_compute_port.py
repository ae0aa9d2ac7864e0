"""The compute port: one backend per process, received by every entry point, and only the backend
modules know a training service."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from shared import runs_api, services
from shared.batchai_backend import BatchAIBackend
from shared.cleanup import Cleanup
from shared.compute_port import ClusterStatus, ComputeBackend
from shared.settings import reset_settings

ROOT = Path(__file__).resolve().parents[2]
# The modules allowed to know Batch AI (its SDK, request builders and client).
BATCHAI_MODULES = {
    "shared/batchai_backend.py",
    "shared/batchai_sdk.py",
    "shared/batchai_requests.py",
    "shared/sdk_clients.py",
}
SERVICE_MODULES = (
    "shared.batchai_sdk",
    "shared.batchai_requests",
    "azure.mgmt.batchai",
    "shared.batchai_backend",
)


def test_every_entry_point_receives_the_one_backend(app_settings: None) -> None:
    backend = services.get_services().cloud
    assert isinstance(backend, BatchAIBackend) and isinstance(backend, ComputeBackend)
    assert services.get_services().cloud is backend  # built once per process
    assert runs_api._compute() is backend  # the API: no Compute per call
    assert Cleanup().compute is backend  # cleanup: no clients of its own


def test_services_follow_the_settings(app_settings: None, monkeypatch: pytest.MonkeyPatch) -> None:
    first = services.get_services()
    monkeypatch.setenv("BATCHAI_WORKSPACE", "another-ws")
    reset_settings()
    second = services.get_services()
    assert second is not first and second.cloud.settings.workspace == "another-ws"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_only_the_backend_modules_know_batchai() -> None:
    """Ingest, the monitor, the API, cleanup and the functions reach the service only through the
    port (shared.compute_port, with the backend chosen by build_backend)."""
    offenders = {}
    for path in [*ROOT.glob("shared/*.py"), *ROOT.glob("functions/*.py"), ROOT / "function_app.py"]:
        rel = str(path.relative_to(ROOT))
        if rel in BATCHAI_MODULES or rel == "shared/compute_port.py":
            continue
        found = {
            m for m in imported_modules(path) if any(m == s or m.startswith(s + ".") for s in SERVICE_MODULES)
        }
        found |= {m for m in imported_modules(path) if m == "shared.sdk_clients.batchai_client"}
        if found:
            offenders[rel] = sorted(found)
    assert offenders == {}


def test_usable_nodes_counts_idle_running_and_preparing() -> None:
    counts = {
        "idle_node_count": 1,
        "running_node_count": 2,
        "preparing_node_count": 3,
        "unusable_node_count": 4,
    }
    assert ClusterStatus("c", "id", node_state_counts=counts).usable_nodes == 6
    assert ClusterStatus("c", "id").usable_nodes is None


def test_the_lead_process_log_is_found_per_toolkit() -> None:
    """Batch AI wrote one stdout.txt for most toolkits, stdout-<rank>.txt for PyTorch and
    stdout-wk-<i>.txt for TensorFlow: the app reads the lead process's (listing and Range reads)."""
    from azure.mgmt.batchai import models

    from shared.batchai_backend import job_status
    from shared.compute_port import lead_log_name

    assert lead_log_name(["stderr.txt", "stdout.txt", "stdout-job_prep.txt"]) == "stdout.txt"
    assert lead_log_name(["stdout-1.txt", "stdout-0.txt", "stderr-0.txt"], "stderr") == "stderr-0.txt"
    assert lead_log_name(["stdout-ps-0.txt", "stdout-wk-0.txt", "stdout-wk-1.txt"]) == "stdout-wk-0.txt"
    assert lead_log_name(["stdout-job_prep.txt"]) is None

    def job(**settings: object) -> models.Job:
        found = models.Job.deserialize({"name": "j", "properties": {"jobOutputDirectoryPathSegment": "s/j/"}})
        for key, value in settings.items():
            setattr(found, key, value)
        return found

    py = models.PyTorchSettings(python_script_file_path="t.py")
    tf = models.TensorFlowSettings(python_script_file_path="t.py")
    assert job_status(job(py_torch_settings=py), "e").log_location == "s/j/stdouterr/stdout-0.txt"
    assert job_status(job(tensor_flow_settings=tf), "e").log_location == "s/j/stdouterr/stdout-wk-0.txt"
    assert job_status(job(tool_type="cntk"), "e").log_location == "s/j/stdouterr/stdout.txt"
