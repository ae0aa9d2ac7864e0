"""`python -m bench.report [results.json]`: the results as a Markdown table, for bench/README.md.

The README shows the latest committed `bench/results.json`; this prints it in the README's form so the
two never disagree (paste the output under "Latest results").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

DEFAULT = Path(__file__).resolve().parent / "results.json"


def _value(figure: dict[str, Any]) -> str:
    value = figure["value"]
    text = f"{value:.2f}" if figure["unit"] == "s" else f"{value:g}"
    return f"{text} {figure['unit']}"


def markdown(results: dict[str, Any]) -> str:
    machine = results.get("machine", {})
    load = machine.get("load_average_1m_at_start_and_end", ["?", "?"])
    lines = [
        f"`{results['command']}` at {results['started_at']} ({machine.get('cpus', '?')} CPUs, "
        f"1-minute load average {load[0]} at start, {load[1]} at end"
        + (", QUICK sizes: not figures to quote" if results.get("quick") else "")
        + "):",
        "",
        "| figure | median | target | met | runs | baseline (same run) | samples |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in results["figures"]:
        met = "-" if f["met"] is None else ("yes" if f["met"] else "**no**")
        name = f["name"].strip()
        if f["name"].startswith(" "):
            name = "&nbsp;&nbsp;" + name
        samples = ", ".join(f"{s:g}" for s in f["samples"])
        lines.append(
            f"| {name} | {_value(f)} | {f['target']} | {met} | {f['runs']} | {f['baseline']} | {samples} |"
        )
    for name, why in (results.get("failures") or {}).items():
        lines.append(f"\n{name} did not run: {why}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else DEFAULT
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"error: cannot read results {path}: {exc}", file=sys.stderr)
        return 1
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
