"""The benchmark harness runs end to end at tiny sizes and produces every figure (no timing asserted:
benchmarks print figures, tests don't judge speed); bad sizes are refused with a clear message."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import FIGURE_KEYS, main, parse_size, table
from bench.common import Figure
from infra.local.stack import REPO_ROOT

TINY = [
    "--quick",
    "--blob-size", "2M",
    "--staging-repeats", "1",
    "--datasets", "2",
    "--monitor-runs", "20",
    "--monitor-experiments", "2",
    "--monitor-cycles", "2",
    "--idle-seconds", "2",
    "--idle-repeats", "1",
    "--import-runs", "1",
    "--demo-repeats", "1",
    "--demo-train", "40",
    "--demo-test", "20",
    "--demo-epochs", "1",
    "--sweep-trials", "2",
    "--sweep-concurrency", "2",
    "--sweep-repeats", "1",
]  # fmt: skip


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_quick_run_produces_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *TINY, "--out", str(out), "--work-dir", str(tmp_path / "work")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["quick"] is True and results["failures"] == {}
    figures = {f["key"]: f for f in results["figures"]}
    expected = {key for keys in FIGURE_KEYS.values() for key in keys}
    assert set(figures) == expected
    for key, figure in figures.items():
        assert isinstance(figure["value"], int | float) and math.isfinite(figure["value"]), key
        assert figure["samples"] and figure["runs"] >= 1, key
        assert figure["met"] in (True, False, None), key
    # The table names every figure; the staging figures are about the 2 MiB blob asked for.
    for figure in figures.values():
        assert figure["name"].strip() in proc.stdout
    assert figures["staging.throughput_ratio"]["details"]["blob_bytes"] == 2 * 1024 * 1024
    assert figures["monitor.arm_requests"]["details"]["runs_checked"] == [20, 20]
    # Scratch space is cleaned up.
    assert not any((tmp_path / "work").iterdir())


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1G", 1024**3), ("64M", 64 * 1024**2), ("2MiB", 2 * 1024**2), ("1048576", 1048576)],
)
def test_blob_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--blob-size", "lots"], "blob size 'LOTS' is not a size such as 1G, 64M or 4096"),
        (["--blob-size", "4K"], "blob size must be at least 1 MiB"),
        (["--datasets", "0"], "--datasets: must be at least 1, not 0"),
        (["--monitor-runs", "many"], "--monitor-runs: 'many' is not a whole number"),
        (["--only", "nothing"], "invalid choice: 'nothing'"),
    ],
)
def test_bad_arguments_are_refused_naming_the_problem(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_table_lists_figures_with_target_and_verdict() -> None:
    figures = [
        Figure("a.x", "first", 1.5, "s", "<= 2 s", True, "none", runs=3, samples=[1, 1.5, 2]),
        Figure("a.y", "  second", 0.7, "x", ">= 0.8x", False, "download 100 MiB/s", runs=3),
        Figure("a.z", "  third", 4.0, "MiB", "(reported)", None, "peak 30 MiB"),
    ]
    text = table(figures).splitlines()
    assert text[0].startswith("figure") and set(text[1]) <= {"-", "+"}
    assert "first" in text[2] and "1.50 s" in text[2] and "yes" in text[2]
    assert "0.7 x" in text[3] and "NO" in text[3] and "download 100 MiB/s" in text[3]
    assert "| -   |" in text[4]


def test_report_renders_results_as_markdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench import report

    figures = [
        Figure("a.x", "first", 1.5, "s", "<= 2 s", True, "none", runs=3, samples=[1, 1.5, 2]),
        Figure("a.y", "  second", 0.7, "x", ">= 0.8x", False, "download 100 MiB/s", runs=3, samples=[0.7]),
    ]
    results = {
        "command": "python -m bench",
        "started_at": "2026-01-01T00:00:00+00:00",
        "quick": False,
        "machine": {"cpus": 2, "load_average_1m_at_start_and_end": [1.0, 2.0]},
        "figures": [f.to_json() for f in figures],
        "failures": {"demo": "RuntimeError: boom"},
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert report.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "`python -m bench` at 2026-01-01T00:00:00+00:00" in out
    assert "| first | 1.50 s | <= 2 s | yes | 3 | none | 1, 1.5, 2 |" in out
    assert "| &nbsp;&nbsp;second | 0.7 x | >= 0.8x | **no** |" in out
    assert "demo did not run: RuntimeError: boom" in out
    assert report.main([str(tmp_path / "missing.json")]) == 1
    assert "cannot read results" in capsys.readouterr().err
