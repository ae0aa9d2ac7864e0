"""The CLI: help for every command, one-line errors, upload to Azurite, the log tail and status lines."""

from __future__ import annotations

import hashlib
import io
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cli.app import COMMANDS, main, resubmitted_line
from cli.client import Settings
from cli.upload import plan_upload, upload_dataset
from cli.watch import LogFollower, MetricsPrinter, TrialPrinter, cluster_status_line

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=60,
        cwd=cwd or REPO_ROOT, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), **(env or {})},
    )  # fmt: skip


@pytest.fixture
def empty_env_file(tmp_path: Path) -> Path:
    path = tmp_path / "empty.env"
    path.write_text("# nothing here\n")
    return path


def test_help_for_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: python -m cli {command}"), out[:80]


def test_missing_settings_is_one_line(empty_env_file: Path) -> None:
    result = run_cli("--env-file", str(empty_env_file), "runs")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: missing setting FUNCTIONS_URL, FUNCTIONS_KEY: set it in the environment or in "
        ".local/stack.env (`make up` writes that file for the local stack)"
    ]
    result = run_cli(
        "--env-file", str(empty_env_file), "upload", str(REPO_ROOT / "samples"), "--dataset", "x"
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: missing setting AZURE_STORAGE_CONNECTION_STRING")
    assert len(result.stderr.splitlines()) == 1


def test_bad_env_file_and_unreachable_app(tmp_path: Path) -> None:
    bad = tmp_path / "bad.env"
    bad.write_text("FUNCTIONS_URL\n")
    result = run_cli("--env-file", str(bad), "runs")
    assert (result.returncode, result.stderr) == (1, f"error: {bad}:1: expected KEY=VALUE\n")
    result = run_cli("--env-file", str(tmp_path / "nope.env"), "clusters")
    assert result.returncode == 1 and result.stderr.startswith(f"error: cannot read settings file {tmp_path}")

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"FUNCTIONS_URL": f"http://127.0.0.1:{port}", "FUNCTIONS_KEY": "k"}
    result = run_cli("watch", "run-1", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: cannot reach the function app at http://127.0.0.1:{port}/api (is the stack up? `make up`)"
    ]
    result = run_cli("watch", env=env, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (1, "error: give either RUN_ID or --dataset NAME\n")


def test_upload_plan_puts_the_manifest_last_and_checks_names(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("run.json", "a.txt", "sub/z.bin", ".hidden"):
        (tmp_path / name).write_text(name)
    names = [item.blob_name for item in plan_upload(tmp_path, "ds1")]
    assert names == ["ds1/a.txt", "ds1/sub/z.bin", "ds1/run.json"]
    for bad in ("../x", "a/b", ""):
        with pytest.raises(Exception, match="invalid dataset name"):
            plan_upload(tmp_path, bad)
    with pytest.raises(Exception, match="is not a directory"):
        plan_upload(tmp_path / "missing", "ds1")


@pytest.mark.e2e
def test_upload_to_azurite_with_md5_manifest_last(local_stack, tmp_path: Path) -> None:
    from azure.storage.blob import BlobServiceClient

    local_stack.ensure("azurite")
    data = tmp_path / "data"
    data.mkdir()
    (data / "run.json").write_text("{}")
    (data / "Train.txt").write_bytes(b"x" * 300_000)
    (data / "ConvNet_MNIST.py").write_text("print('hi')\n")
    settings = Settings(None, None, local_stack.connection_string, "sample-upload-test", "test")
    order: list[str] = []
    progress = io.StringIO()
    upload_dataset(
        settings, data, "mnist", stream=progress, on_file=lambda item: order.append(item.blob_name)
    )
    assert order == ["mnist/ConvNet_MNIST.py", "mnist/Train.txt", "mnist/run.json"]
    assert "100.0%" in progress.getvalue().splitlines()[-1]
    container = BlobServiceClient.from_connection_string(local_stack.connection_string).get_container_client(
        "sample-upload-test"
    )
    blob = container.get_blob_client("mnist/Train.txt")
    props = blob.get_blob_properties()
    assert props.size == 300_000
    assert bytes(props.content_settings.content_md5) == hashlib.md5(b"x" * 300_000).digest()
    assert blob.download_blob().readall() == b"x" * 300_000


def test_log_follower_prints_each_line_once() -> None:
    out = io.StringIO()
    follower = LogFollower(out, prefix="")
    follower.feed("a\nb\nc")  # "c" is still being written
    follower.feed("b\nc\nd\n")  # window slid: only c and d are new
    follower.feed("c\nd\n")  # nothing new
    follower.feed("d\ne", final=True)
    assert out.getvalue() == "a\nb\nc\nd\ne\n"


def test_cluster_status_line_is_the_quickstarts() -> None:
    cluster = {
        "allocation_state": "steady",
        "current_node_count": 1,
        "scale_settings": {"manual": {"target_node_count": 1}},
        "node_state_counts": {"idle_node_count": 0, "running_node_count": 1, "preparing_node_count": 0,
                              "unusable_node_count": 0, "leaving_node_count": 0},
    }  # fmt: skip
    assert cluster_status_line(cluster) == (
        "Cluster state: steady Target: 1; Allocated: 1; Idle: 0; Unusable: 0; Running: 1; Preparing: 0; "
        "Leaving: 0"
    )


def test_cluster_idle_line_says_how_long_it_has_been_idle() -> None:
    from cli.watch import cluster_idle_line

    assert cluster_idle_line({"idle_minutes": None, "node_minutes": 3.5}) == "In use; node time 3.5 node-min"
    assert (
        cluster_idle_line(
            {"idle_minutes": 42.25, "node_minutes": 60, "nodes_released_at": "2026-01-01T03:30:00.000Z"}
        )
        == "Idle for 42.25 min (nodes released at 2026-01-01T03:30:00.000Z); node time 60 node-min"
    )
    assert cluster_idle_line({"idle_minutes": 1.5, "node_minutes": None}) == "Idle for 1.5 min"


def test_watch_prints_each_new_epochs_metrics_once() -> None:
    out = io.StringIO()
    printer = MetricsPrinter(out)

    def point(x: int, value: float) -> dict[str, object]:
        return {"x": x, "value": value, "time": "2026-01-01T00:00:00.000Z"}

    printer.feed({"loss": [point(1, 1.44006)], "accuracy": [point(1, 0.475)]})
    printer.feed({"loss": [point(1, 1.44006), point(2, 0.5)], "accuracy": [point(1, 0.475), point(2, 0.9)]})
    printer.feed({"loss": [point(1, 1.44006), point(2, 0.5)], "accuracy": [point(1, 0.475), point(2, 0.9)]})
    assert out.getvalue().splitlines() == [
        "  metrics 1: accuracy 0.475  loss 1.44",
        "  metrics 2: accuracy 0.9  loss 0.5",
    ]


def test_watch_follows_a_sweeps_trials_and_names_the_best() -> None:
    out = io.StringIO()
    printer = TrialPrinter(out)

    def row(
        index: int, lr: float, state: str, metric: float | None, stopped: bool = False
    ) -> dict[str, object]:
        return {
            "id": f"p-t00{index}",
            "index": index,
            "parameters": {"lr": lr},
            "state": state,
            "metric": metric,
            "early_terminated": stopped,
        }

    sweep = {"role": "parent", "primary_metric": "loss"}
    printer.feed({"sweep": sweep, "leaderboard": [row(0, 0.01, "running", None)]})
    printer.feed({"sweep": sweep, "leaderboard": [row(0, 0.01, "running", None)]})  # unchanged: silent
    done = {**sweep, "best": {"trial": "p-t000", "parameters": {"lr": 0.01}, "metric": {"value": 0.25}}}
    board = [row(0, 0.01, "succeeded", 0.25), row(1, 3.0, "cancelled", 9.5, stopped=True)]
    printer.feed({"sweep": done, "leaderboard": board})
    printer.feed({"sweep": done, "leaderboard": board})
    assert out.getvalue().splitlines() == [
        "  trial 0 lr=0.01: running",
        "  trial 0 lr=0.01: succeeded  loss 0.25",
        "  trial 1 lr=3: cancelled (stopped early)  loss 9.5",
        "  best: p-t000 lr=0.01  loss 0.25",
    ]


def test_resubmit_says_which_trials_of_a_sweep_run_again() -> None:
    assert resubmitted_line("a", {"id": "b", "state": "queued"}) == "run a resubmitted as b: queued"
    sweep = {"resubmits": [{"round": 1, "reran": {"1": "p-t001"}, "started": [2]}]}
    assert resubmitted_line("p", {"id": "p", "state": "running", "sweep": sweep}) == (
        "sweep p resubmitted (round 1): 1 failed or cancelled trial(s) run again (p-t001-r1); "
        "1 never started now start: running"
    )
    again = {"resubmits": [sweep["resubmits"][0], {"round": 2, "reran": {"1": "p-t001-r1"}, "started": []}]}
    assert resubmitted_line("p", {"id": "p", "state": "running", "sweep": again}) == (
        "sweep p resubmitted (round 2): 1 failed or cancelled trial(s) run again (p-t001-r2): running"
    )
