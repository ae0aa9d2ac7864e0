"""`python -m bench` (`make bench`): every speed and cost benchmark (ingest latency, staging,
re-run, monitor pass, idle nodes, cold import, demo overhead, data-parallel scaling, sweep overhead) on
local stacks of its own, a table, and `bench/results.json`.

    python -m bench [--quick] [--only NAME ...] [--blob-size BYTES] [--out PATH] [--work-dir DIR]

Each benchmark starts the services it needs on free ports in a fresh directory under --work-dir and
stops them when done, so it never touches a developer's `make up` stack. `--quick` runs everything at
tiny sizes (a 64 MiB blob, 100 runs, 5 datasets, a tiny demo) on one shared stack: a smoke test of the
harness, not figures to quote. Exit status 0 when every benchmark produced its figures (missed targets
included: benchmarks report, they do not fail), 1 when one could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench import (
    cold_import,
    ddp_scaling,
    demo_overhead,
    idle_nodes,
    ingest_latency,
    monitor_cycle,
    rerun,
    staging,
    sweep_overhead,
)
from bench.common import BenchOptions, Figure
from infra.local.stack import REPO_ROOT, LocalStack, Ports

BENCHMARKS: dict[str, Callable[[BenchOptions], list[Figure]]] = {
    "ingest": ingest_latency.run,
    "staging": staging.run,
    "rerun": rerun.run,
    "monitor": monitor_cycle.run,
    "idle": idle_nodes.run,
    "import": cold_import.run,
    "demo": demo_overhead.run,
    "ddp": ddp_scaling.run,
    "sweep": sweep_overhead.run,
}
DEFAULT_OUT = REPO_ROOT / "bench" / "results.json"
# Every figure's key, by benchmark (the smoke test checks that a run produces all of them).
FIGURE_KEYS = {
    "ingest": ("ingest.one_at_a_time_s", "ingest.burst_s"),
    "staging": (
        "staging.throughput_ratio",
        "staging.rss_growth_mib",
        "staging.files_emulator_rss_growth_mib",
    ),
    "rerun": ("rerun.changed_small_file_s", "rerun.bytes_from_blob"),
    "monitor": (
        "monitor.arm_requests",
        "monitor.pass_s",
        "monitor.metrics_arm_requests",
        "monitor.metrics_pass_s",
        "monitor.azureml.arm_requests",
        "monitor.azureml.pass_s",
    ),
    "idle": ("idle.after_node_minutes", "idle.emulated_after_node_minutes"),
    "import": ("import.ratio", "import.process_wall_ratio"),
    "demo": ("demo.overhead_s", "demo.overhead_inside_run_s"),
    "ddp": ("ddp.scaling_ratio",),
    "sweep": ("sweep.overhead_ratio",),
}
# Sizes that override the defaults (or --quick's); the smoke test shrinks every one of them.
SIZE_OPTIONS = {
    "blob_size": "",
    "staging_repeats": "download/stage pairs (default 3)",
    "datasets": "datasets dropped, one at a time and at once (default 20)",
    "monitor_runs": "active runs the monitor pass sees (default 1000)",
    "monitor_experiments": "experiments they spread over (default 10)",
    "monitor_cycles": "monitor passes timed (default 5)",
    "idle_seconds": "CLUSTER_IDLE_MINUTES of the idle benchmark, in seconds (default 15)",
    "idle_repeats": "runs whose idle node time is measured (default 3)",
    "import_runs": "fresh interpreters per import kind (default 7)",
    "demo_repeats": "direct/pipeline pairs of the demo benchmark, 1-rank/2-rank pairs of ddp (default 3)",
    "demo_train": "demo (and ddp) training samples (default 6000, the demo's)",
    "demo_test": "demo test samples (default 1000, the demo's)",
    "demo_epochs": "demo training epochs (default 3, the demo's)",
    "sweep_trials": "trials of the sweep benchmark (default 4; it uses the demo's data sizes)",
    "sweep_concurrency": "its max_concurrent_trials (default 2)",
    "sweep_repeats": "sweeps timed (default 1)",
}


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def parse_size(text: str) -> int:
    """Bytes from '1073741824', '64M', '1G' (binary units)."""
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        value = int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"blob size {text!r} is not a size such as 1G, 64M or 4096"
        ) from None
    if value < 1024 * 1024:
        raise argparse.ArgumentTypeError(f"blob size must be at least 1 MiB, not {value} bytes")
    return value


def options_from(args: argparse.Namespace) -> BenchOptions:
    options = BenchOptions(work_dir=args.work_dir)
    if args.quick:
        options = BenchOptions(
            quick=True,
            work_dir=args.work_dir,
            blob_size=64 * 1024**2,
            datasets=5,
            monitor_runs=100,
            monitor_cycles=3,
            idle_seconds=3,
            idle_repeats=1,
            import_runs=3,
            demo_repeats=1,
            demo_train=200,
            demo_test=50,
            demo_epochs=1,
            staging_repeats=1,
            sweep_trials=2,
        )
    for name in SIZE_OPTIONS:
        value = getattr(args, name)
        if value is not None:
            setattr(options, name, value)
    return options


def format_value(figure: Figure) -> str:
    value = f"{figure.value:g}" if figure.unit != "s" else f"{figure.value:.2f}"
    return f"{value} {figure.unit}"


def table(figures: list[Figure]) -> str:
    rows = [("figure", "median", "target", "met", "runs", "baseline (same run)")]
    for f in figures:
        met = "-" if f.met is None else ("yes" if f.met else "NO")
        rows.append((f.name, format_value(f), f.target, met, str(f.runs), f.baseline))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for n, row in enumerate(rows):
        lines.append(" | ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]).rstrip())
        if n == 0:
            lines.append("-+-".join("-" * w for w in [*widths, len(rows[0][-1])]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the harness")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    parser.add_argument("--blob-size", type=parse_size, help="staging blob size (default 1G; --quick 64M)")
    for name, help_text in SIZE_OPTIONS.items():
        if name != "blob_size":
            parser.add_argument("--" + name.replace("_", "-"), type=positive_int, help=help_text)
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="results JSON (default bench/results.json)"
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="scratch space (default: a temp dir)")
    args = parser.parse_args(argv)

    own_work_dir = args.work_dir is None
    args.work_dir = Path(tempfile.mkdtemp(prefix="bench-")) if own_work_dir else args.work_dir
    args.work_dir.mkdir(parents=True, exist_ok=True)
    options = options_from(args)
    print(f"disk: {shutil.disk_usage(args.work_dir).free / 1024**3:.1f} GiB free in {args.work_dir}")
    figures: list[Figure] = []
    failures: dict[str, str] = {}
    durations: dict[str, float] = {}
    started_at = datetime.now(UTC)
    load_at_start = round(os.getloadavg()[0], 2)
    try:
        if options.quick:
            options.shared_stack = start_shared_stack(args.work_dir / "stack")
        for name in args.only or list(BENCHMARKS):
            print(f"==> {name} ...", flush=True)
            started = time.monotonic()
            try:
                produced = BENCHMARKS[name](options)
            except Exception as exc:  # report the others; the exit status says one failed
                traceback.print_exc()
                failures[name] = f"{type(exc).__name__}: {exc}"[:2000]
                produced = []
            durations[name] = round(time.monotonic() - started, 1)
            for figure in produced:
                print(
                    f"    {figure.name.strip()}: {format_value(figure)} (target {figure.target})", flush=True
                )
            figures.extend(produced)
    finally:
        if options.shared_stack is not None:
            options.shared_stack.stop()
            shutil.rmtree(options.shared_stack.data_dir, ignore_errors=True)
        if own_work_dir:
            shutil.rmtree(args.work_dir, ignore_errors=True)

    command = "python -m bench" + (" " + " ".join(sys.argv[1:]) if argv is None and sys.argv[1:] else "")
    print()
    print(table(figures))
    for name, why in failures.items():
        print(f"\n{name}: did not run: {why}", file=sys.stderr)
    results = {
        "command": command if argv is None else "python -m bench " + " ".join(argv),
        "started_at": started_at.isoformat(timespec="seconds"),
        "quick": options.quick,
        "machine": {
            "python": platform.python_version(),
            "cpus": _cpus(),
            "platform": platform.platform(),
            "load_average_1m_at_start_and_end": [load_at_start, round(os.getloadavg()[0], 2)],
        },
        "seconds_per_benchmark": durations,
        "figures": [f.to_json() for f in figures],
        "failures": failures,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 1 if failures else 0


def start_shared_stack(data_dir: Path) -> LocalStack:
    """--quick: one stack with every service, set up as `make demo` sets it, for all benchmarks."""
    from samples.mnist.demo import demo_settings

    stack = LocalStack(data_dir=data_dir, ports=Ports.free())
    stack.extra_env = demo_settings(stack)
    try:
        stack.start(timeout=120)
    except BaseException:
        stack.stop()
        raise
    return stack


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
