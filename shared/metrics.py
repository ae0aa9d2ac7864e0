"""Metrics from a job's stdout: the convention, incremental parsing and bounded series. Pure logic.

The convention (docs/run-spec.md): a line of stdout that is a JSON object is a metrics record. Its
numeric fields (JSON numbers, not booleans; finite) are metric values; ``epoch``, else ``step``, when
numeric, is the record's x value and is not a series itself; a record without either takes its
order (1, 2, ...) among the job's records. Everything else is ignored, never an error: lines that are
not JSON objects, malformed JSON, strings and nested values, names over ``MAX_NAME_CHARS``.

Why incremental: the monitor reads only the bytes of stdout written since its last pass (``offset``)
and at most ``READ_BYTES_PER_PASS`` of them, so a chatty job costs one bounded read per pass. A read
ends anywhere, often inside a line: ``feed`` consumes only up to the last newline and the offset stays
at the start of the unfinished line, which the next read gets whole (parsed once). A line longer than
``MAX_LINE_BYTES`` is no metrics record: it is skipped to its newline without being held in memory.

Why bounded: the series live in one Table entity (at most 1 MiB). Each run keeps at most
``MAX_SERIES`` metric names (the first seen) and at most ``MAX_POINTS`` points per series; past that
the older half of a series is thinned to every other point, so recent points stay dense, old ones
grow sparse, and the first and the last point of each series are always kept.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from shared.times import iso_utc_from_ms

__all__ = [
    "MAX_LINE_BYTES",
    "MAX_POINTS",
    "MAX_SERIES",
    "READ_BYTES_PER_PASS",
    "MetricsState",
    "downsample",
    "latest",
    "parse_record",
]

MAX_SERIES = 20  # metric names per run; later names are ignored
MAX_POINTS = 250  # points per series before older points are thinned
MAX_NAME_CHARS = 64
MAX_LINE_BYTES = 16 * 1024  # a longer line is not a metrics record
READ_BYTES_PER_PASS = 256 * 1024  # stdout bytes the monitor reads per run per pass
# The stored state's worst case (every series full of 25-digit numbers) is about 340,000 characters:
# 680 KB as the UTF-16 a Table entity counts, under its 1 MiB.
MAX_STATE_CHARS = 400_000
X_FIELDS = ("epoch", "step")

Point = list[float]  # [x, value, time in epoch milliseconds]


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int) and abs(value) > 2**53:  # keep stored numbers short: a float
        try:
            value = float(value)
        except OverflowError:
            return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def parse_record(line: bytes | str) -> dict[str, Any] | None:
    """The JSON object of a metrics line, or None when the line is none (never raises)."""
    text = line.strip()
    if not text or text[:1] not in (b"{", "{") or len(text) > MAX_LINE_BYTES:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # malformed JSON, bad UTF-8, absurd nesting
        return None
    return value if isinstance(value, dict) else None


def record_values(record: dict[str, Any]) -> tuple[float | None, dict[str, float]]:
    """(x from epoch/step or None, {metric name: value}) of a metrics record."""
    x = None
    for name in X_FIELDS:
        x = _number(record.get(name))
        if x is not None:
            break
    values = {}
    for name, raw in record.items():
        if name in X_FIELDS or not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
            continue
        number = _number(raw)
        if number is not None:
            values[name] = number
    return x, values


def downsample(points: list[Point], limit: int = MAX_POINTS) -> list[Point]:
    """Thin the older half of ``points`` to every other point until at most ``limit`` remain; the
    first and last points always stay."""
    if limit < 4:
        raise ValueError("limit must be at least 4")
    while len(points) > limit:
        recent = limit // 2
        old, new = points[:-recent], points[-recent:]
        thinned = old[::2]
        if len(thinned) == len(old):  # one old point: drop the oldest recent one instead
            new = new[1:]
        points = thinned + new
    return points


@dataclass
class MetricsState:
    """A run's metrics as the monitor stores them between passes (``to_json``/``from_json``)."""

    offset: int = 0  # stdout bytes consumed: the start of the first line not parsed yet
    records: int = 0  # metrics records seen (the x of a record without epoch/step)
    skipping: bool = False  # inside a line over MAX_LINE_BYTES: drop bytes up to its newline
    series: dict[str, list[Point]] = field(default_factory=dict)

    def feed(self, data: bytes, *, now_ms: int, final: bool = False, limit: int = MAX_POINTS) -> int:
        """Parse ``data``, the stdout bytes from ``offset`` on; advance ``offset`` past the complete
        lines (with ``final``, the job has ended: an unterminated last line counts as complete).
        Returns how many metrics records were added."""
        end = len(data) if final else data.rfind(b"\n") + 1
        if end == 0:
            if len(data) > MAX_LINE_BYTES:  # no newline in sight: an overlong line, skip what we have
                self.offset += len(data)
                self.skipping = True
            return 0
        lines = data[:end].split(b"\n")
        if self.skipping:
            lines = lines[1:]  # the rest of the overlong line
            self.skipping = False
        self.offset += end
        added = 0
        touched: set[str] = set()
        for line in lines:
            record = parse_record(line)
            if record is None:
                continue
            x, values = record_values(record)
            if not values:
                continue
            self.records += 1
            if x is None:
                x = self.records
            for name, value in values.items():
                points = self.series.get(name)
                if points is None:
                    if len(self.series) >= MAX_SERIES:
                        continue
                    points = self.series[name] = []
                points.append([x, value, now_ms])
                touched.add(name)
            added += 1
        for name in touched:
            self.series[name] = downsample(self.series[name], limit)
        return added

    def latest(self) -> dict[str, dict[str, Any]]:
        return latest(self.series)

    def to_json(self) -> str:
        data = {"offset": self.offset, "records": self.records, "skipping": self.skipping}
        return json.dumps({**data, "series": self.series}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> MetricsState:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(
            offset=int(data.get("offset", 0)),
            records=int(data.get("records", 0)),
            skipping=bool(data.get("skipping", False)),
            series={str(k): [list(p) for p in v] for k, v in (data.get("series") or {}).items()},
        )


def point_json(point: Point) -> dict[str, Any]:
    """A point as the API shows it: {"x", "value", "time"} (time: when the monitor read it)."""
    return {"x": point[0], "value": point[1], "time": iso_utc_from_ms(point[2])}


def latest(series: dict[str, list[Point]]) -> dict[str, dict[str, Any]]:
    """The last point of each series (what the run record and callbacks carry)."""
    return {name: point_json(points[-1]) for name, points in series.items() if points}
