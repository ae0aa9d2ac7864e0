"""`make demo`, shrunk: its own stack, generate, upload, follow, outputs, accuracy; non-zero on failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_demo_runs_end_to_end_and_fails_below_the_accuracy_target(tmp_path: Path) -> None:
    # Tiny data cannot reach an accuracy above 100%: every step must run, and the exit must be 1.
    result = subprocess.run(
        [sys.executable, "-m", "samples.mnist.demo", "--train", "60", "--test", "20", "--epochs", "1",
         "--data-dir", str(tmp_path / "demo"), "--min-accuracy", "1.01", "--timeout", "180"],
        capture_output=True, text=True, timeout=280, cwd=REPO_ROOT,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 1, out[-3000:] + result.stderr[-3000:]
    for expected in ("starting the local stack", "uploading", "  running\n", "  succeeded\n", "Epoch 1/1",
                     "MODEL      ConvNet_MNIST.pt", "stdouterr  stdout-0.txt", "final test accuracy: ",
                     "stopping the local stack", "demo finished in ", "  metrics 1: accuracy ",
                     "watch it in a browser: http", "dashboard of this run: http"):  # fmt: skip
        assert expected in out, (expected, out[-3000:])
    assert "error: test accuracy " in result.stderr and "is below the 101% target" in result.stderr
    assert (tmp_path / "demo" / "outputs" / "MODEL" / "metrics.json").is_file()
    url = out.split("dashboard of this run: ", 1)[1].split()[0]
    assert url.endswith("/api/ui#/run/" + out.split("following run ", 1)[1].split(";")[0])
    assert "the page asks for the function key: FUNCTIONS_KEY in " in out
    assert "code=" not in out  # the key itself is never printed
    env = dict(line.split("=", 1) for line in (tmp_path / "demo" / "stack.env").read_text().splitlines())
    assert env["FUNCTIONS_KEY"] and env["FUNCTIONS_KEY"] not in out
