"""The CLI against the function app on the local stack: API errors as one line; upload, then watch a run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli.client import Settings
from samples.mnist import make_dataset

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e
DATASET = "cli-e2e"


def cli(settings: Settings, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO_ROOT),
        "FUNCTIONS_URL": settings.functions_url or "",
        "FUNCTIONS_KEY": settings.functions_key or "",
        "AZURE_STORAGE_CONNECTION_STRING": settings.connection_string or "",
    }
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT, env=env)  # fmt: skip


def test_unknown_run_is_a_one_line_404(function_app: Settings) -> None:
    for args in (
        ["watch", "no-such-run"],
        ["outputs", "no-such-run"],
        ["teardown", "no-such-run"],
        ["resubmit", "no-such-run"],
    ):
        result = cli(function_app, *args)
        assert result.returncode == 1, result
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and ": 404 " in lines[0], lines


def test_wrong_key_is_a_one_line_401(function_app: Settings) -> None:
    wrong = Settings(function_app.functions_url, "not-the-key", None, "training-data", "test")
    result = cli(wrong, "runs")
    assert result.returncode == 1
    assert result.stderr.startswith("error: GET /api/runs: 401") and len(result.stderr.splitlines()) == 1


def test_runs_and_clusters_list(function_app: Settings) -> None:
    result = cli(function_app, "runs")
    assert result.returncode == 0, result.stderr
    result = cli(function_app, "clusters")
    assert result.returncode == 0, result.stderr
    result = cli(function_app, "health")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok\n") and "  ok   " in result.stdout


@pytest.fixture(scope="module")
def uploaded(function_app: Settings, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The sample itself, tiny, uploaded with `upload --watch`: (its run id, the CLI's output)."""
    data = tmp_path_factory.mktemp("cli-e2e")
    make_dataset.main([str(data), "--train", "60", "--test", "20"])
    shutil.copy2(REPO_ROOT / "samples" / "mnist" / "ConvNet_MNIST.py", data)
    manifest = json.loads((REPO_ROOT / "samples" / "mnist" / "run.json").read_text())
    manifest["arguments"] = "$AZ_BATCHAI_INPUT_SAMPLE $AZ_BATCHAI_OUTPUT_MODEL --epochs 1 --width 0.5"
    (data / "run.json").write_text(json.dumps(manifest))
    result = cli(function_app, "upload", str(data), "--dataset", DATASET, "--watch", timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    return result.stdout.split("run ", 1)[1].split()[0], result.stdout


def test_upload_then_watch_a_run_to_success(function_app: Settings, uploaded: tuple[str, str],
                                            tmp_path: Path) -> None:  # fmt: skip
    """upload (manifest last) -> ingest -> job -> monitor -> succeeded, watched live; then the outputs."""
    run_id, out = uploaded
    assert "uploaded 4 files" in out
    for state in ("staging", "queued", "running", "succeeded"):
        assert f"  {state}\n" in out, out
    assert "Epoch 1/1: loss " in out  # the live tail of stdout
    download = tmp_path / "out"
    result = cli(function_app, "outputs", run_id, "--download", str(download))
    assert result.returncode == 0, result.stderr
    metrics = json.loads(next(download.rglob("metrics.json")).read_text())
    assert metrics["epochs"] == 1 and metrics["train_samples"] == 60
    assert any(p.name == "ConvNet_MNIST.pt" for p in download.rglob("*"))
    assert any(p.name == "stdout-0.txt" for p in download.rglob("*"))  # Batch AI PyTorch: per rank


def test_resubmit_the_uploaded_run_idempotently(function_app: Settings, uploaded: tuple[str, str]) -> None:
    """`resubmit`: a new run on the uploaded run's snapshot; the same key gives the same run."""
    first = cli(function_app, "resubmit", uploaded[0], "--idempotency-key", "resubmit-e2e-1")
    again = cli(function_app, "resubmit", uploaded[0], "--idempotency-key", "resubmit-e2e-1")
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    new_id = first.stdout.split()[4].rstrip(":")
    assert again.stdout.split()[4].rstrip(":") == new_id != uploaded[0]
    watched = cli(function_app, "watch", new_id, "--no-logs", timeout=240)
    assert watched.returncode == 0, watched.stdout[-2000:] + watched.stderr


def test_start_idempotent_then_teardown(
    function_app: Settings, uploaded: tuple[str, str], tmp_path: Path
) -> None:
    """An HTTP-started run on the staged dataset: same key, same run; torn down while it trains."""
    spec = tmp_path / "spec.json"
    manifest = json.loads((REPO_ROOT / "samples" / "mnist" / "run.json").read_text())
    manifest["arguments"] = "$AZ_BATCHAI_INPUT_SAMPLE $AZ_BATCHAI_OUTPUT_MODEL --epochs 500 --width 0.5"
    spec.write_text(json.dumps(manifest))
    first = cli(function_app, "start", DATASET, "--spec", str(spec), "--idempotency-key", "sample-e2e-1")
    again = cli(function_app, "start", DATASET, "--spec", str(spec), "--idempotency-key", "sample-e2e-1")
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    run_id = first.stdout.split()[1]
    assert again.stdout.split()[1] == run_id != uploaded[0]

    listed = cli(function_app, "runs", "--dataset", DATASET)
    assert listed.returncode == 0 and run_id in listed.stdout and uploaded[0] in listed.stdout

    runs = json.loads(cli(function_app, "runs", "--dataset", DATASET, "--json").stdout)
    cluster = next(r["cluster"] for r in runs if r["id"] == run_id)
    clusters = cli(function_app, "clusters")
    assert (
        clusters.returncode == 0
        and f"{cluster} (" in clusters.stdout
        and "Cluster state: " in clusters.stdout
    )
    refused = cli(function_app, "delete-cluster", cluster)
    assert refused.returncode == 1
    assert (
        refused.stderr.startswith(f"error: DELETE /api/clusters/{cluster}: 409 ")
        and len(refused.stderr.splitlines()) == 1
    ), refused.stderr

    down = cli(function_app, "teardown", run_id)
    assert down.returncode == 0, down.stderr
    assert down.stdout.startswith(f"run {run_id}: cancelled"), down.stdout
    assert "terminated and deleted)" in down.stdout and "job deleted" not in down.stdout, down.stdout
    watched = cli(function_app, "watch", run_id, "--interval", "0.5")
    assert watched.returncode == 1
    assert watched.stderr.splitlines() == [f"error: run {run_id} ended cancelled"]
    assert "error: Cancelled: cancelled on request" in watched.stdout

    # The CLI says what the API said. Deleting a cluster is long-running: the API answers
    # `deleting` (202), so the CLI must not claim it is deleted.
    gone = cli(function_app, "delete-cluster", cluster, "--force")
    assert gone.returncode == 0, gone.stderr
    assert gone.stdout.startswith(f"cluster {cluster}: deleting"), gone.stdout
    assert "deleted" not in gone.stdout


def test_callback_secrets_from_the_cli(
    function_app: Settings, uploaded: tuple[str, str], tmp_path: Path
) -> None:
    """`start` prints the run's callback secret (the only answer that carries it); `callback-secret`
    says plainly when a run has none to give."""
    run_id, _ = uploaded
    refused = cli(function_app, "callback-secret", run_id)
    assert refused.returncode == 1 and "NoCallbackSecret" in refused.stderr, refused.stderr
    spec = tmp_path / "spec.json"
    manifest = json.loads((REPO_ROOT / "samples" / "mnist" / "run.json").read_text())
    manifest["callback_url"] = "http://127.0.0.1:9/hook?token=t0ken"
    spec.write_text(json.dumps(manifest))
    started = cli(function_app, "start", DATASET, "--spec", str(spec))
    assert started.returncode == 0, started.stderr
    secret_line = next(line for line in started.stdout.splitlines() if line.startswith("callback secret"))
    assert len(secret_line.rsplit(" ", 1)[1]) == 64 and "t0ken" not in started.stdout
    new_run = started.stdout.split()[1]
    again = cli(function_app, "callback-secret", new_run)
    assert again.returncode == 1 and "CallbackSecretIssued" in again.stderr, again.stderr
    assert cli(function_app, "teardown", new_run).returncode == 0
