"""Cold start: `import function_app` in a fresh interpreter vs `import azure.functions` in a fresh one.

The Functions host imports function_app.py at every cold start; whatever it imports beyond the
programming model itself (SDKs, pydantic models) is paid before the first invocation. Each sample is
a new interpreter timing the import statement alone (interpreter start-up is the same for both and
left out); the two kinds alternate so machine noise hits both alike. The whole process's wall time is
kept as a supporting figure. `python -X importtime -c "import function_app"` shows where time goes.
"""

from __future__ import annotations

import subprocess
import time

from bench.common import PY, BenchOptions, Figure, median, repo_env
from infra.local.stack import REPO_ROOT

TARGET_RATIO = 1.3
PROBE = (
    "import time, sys; t = time.perf_counter(); import {module}; d = time.perf_counter() - t; "
    "print(d, len(sys.modules))"
)


def time_import(module: str) -> tuple[float, float, int]:
    """(import seconds, process wall seconds, modules loaded) of one fresh interpreter."""
    started = time.perf_counter()
    out = subprocess.run(
        [PY, "-c", PROBE.format(module=module)],
        cwd=REPO_ROOT,
        env=repo_env(),
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.split()
    wall = time.perf_counter() - started
    return float(out[0]), wall, int(out[1])


def heaviest_imports(module: str, top: int = 10) -> list[tuple[str, float]]:
    """The slowest imports `module` makes itself or through its direct imports (`-X importtime`,
    cumulative seconds), for the report: where a cold start's time goes."""
    err = subprocess.run(
        [PY, "-X", "importtime", "-c", f"import {module}"],
        cwd=REPO_ROOT,
        env=repo_env(),
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stderr
    rows = []
    for line in err.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2].rstrip()
        depth = (len(name) - len(name.lstrip()) - 1) // 2  # function_app is depth 0
        if 1 <= depth <= 2:
            rows.append((name.strip(), round(int(parts[1]) / 1e6, 4)))
    return sorted(rows, key=lambda r: r[1], reverse=True)[:top]


def run(options: BenchOptions) -> list[Figure]:
    runs = max(1, options.import_runs)
    time_import("function_app")  # warm the page cache and .pyc files: cold interpreter, warm disk
    time_import("azure.functions")
    app, base, app_wall, base_wall = [], [], [], []
    app_modules = base_modules = 0
    for _ in range(runs):
        seconds, wall, base_modules = time_import("azure.functions")
        base.append(seconds)
        base_wall.append(wall)
        seconds, wall, app_modules = time_import("function_app")
        app.append(seconds)
        app_wall.append(wall)
    ratio = median(app) / median(base)
    wall_ratio = median(app_wall) / median(base_wall)
    heavy = heaviest_imports("function_app")
    return [
        Figure(
            key="import.ratio",
            name="import function_app (cold) / import azure.functions (cold)",
            value=round(ratio, 3),
            unit="x",
            target=f"<= {TARGET_RATIO}x",
            met=ratio <= TARGET_RATIO,
            baseline=f"import azure.functions {median(base) * 1000:.0f} ms; "
            f"import function_app {median(app) * 1000:.0f} ms",
            runs=runs,
            samples=[round(a / b, 3) for a, b in zip(app, base, strict=True)],
            details={
                "function_app_import_s": [round(x, 4) for x in app],
                "azure_functions_import_s": [round(x, 4) for x in base],
                "modules_loaded": {"function_app": app_modules, "azure.functions": base_modules},
                "slowest_imports_cumulative_s": [list(r) for r in heavy],
            },
        ),
        Figure(
            key="import.process_wall_ratio",
            name="  process wall time, same interpreters",
            value=round(wall_ratio, 3),
            unit="x",
            target="(supporting)",
            met=None,
            baseline=f"azure.functions {median(base_wall) * 1000:.0f} ms; "
            f"function_app {median(app_wall) * 1000:.0f} ms",
            runs=runs,
            samples=[round(a / b, 3) for a, b in zip(app_wall, base_wall, strict=True)],
        ),
    ]
