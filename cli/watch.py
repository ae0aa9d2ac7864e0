"""Follow a run to its end: state transitions with times, cluster status, live tail of stdout, and
each new epoch's metric values (from the JSON lines the job prints; docs/run-spec.md).

Polls `GET /api/runs/{id}` (and `/logs`, `/clusters`): the API is the one source of truth, so the same
command works against the local stack and a deployment.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from cli.client import ApiClient, ApiError, CliError
from shared.run_states import ACTIVE_STATES, STATES, TERMINAL_STATES
from shared.times import parse_time

STATE_ORDER = list(STATES)  # the order a run passes through its states
TRANSIENT_GRACE_S = 60.0  # how long the API may be unreachable (host restart) before watch gives up


def cluster_status_line(cluster: dict[str, Any]) -> str:
    """The quickstart's cluster line: allocation state, target, allocated and node counts by state."""
    counts = cluster.get("node_state_counts") or {}
    scale = cluster.get("scale_settings") or {}
    manual = scale.get("manual") or {}
    auto = scale.get("auto_scale") or {}
    target = manual.get("target_node_count", auto.get("maximum_node_count", "?"))

    def count(name: str) -> Any:
        return counts.get(f"{name}_node_count", counts.get(f"{name}NodeCount", 0))

    return (
        f"Cluster state: {cluster.get('allocation_state') or '?'} Target: {target}; "
        f"Allocated: {cluster.get('current_node_count') or 0}; Idle: {count('idle')}; "
        f"Unusable: {count('unusable')}; Running: {count('running')}; Preparing: {count('preparing')}; "
        f"Leaving: {count('leaving')}"
    )


def cluster_idle_line(cluster: dict[str, Any]) -> str:
    """How long the cluster has been idle and its node time, as GET /api/clusters reports them."""
    minutes = cluster.get("node_minutes")
    node_time = f"; node time {minutes:g} node-min" if isinstance(minutes, int | float) else ""
    idle = cluster.get("idle_minutes")
    if idle is None:
        return f"In use{node_time}"
    released = cluster.get("nodes_released_at")
    return f"Idle for {idle:g} min{f' (nodes released at {released})' if released else ''}{node_time}"


class LogFollower:
    """Prints only the stdout lines not printed yet, from successive `tail` windows of the log."""

    def __init__(self, out: TextIO, prefix: str = "  | ") -> None:
        self.out = out
        self.prefix = prefix
        self.seen: list[str] = []

    def feed(self, text: str, final: bool = False) -> None:
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n") and not final:
            lines = lines[:-1]  # a line still being written: print it once it is complete
        lines = [line.rstrip("\r\n") for line in lines]
        overlap = 0
        for k in range(min(len(lines), len(self.seen)), 0, -1):
            if self.seen[-k:] == lines[:k]:
                overlap = k
                break
        fresh = lines[overlap:]
        for line in fresh:
            self.out.write(f"{self.prefix}{line}\n")
        self.out.flush()
        self.seen = (self.seen + fresh)[-2000:]


class MetricsPrinter:
    """Prints one line per new x (epoch, step or record number) of the run's metrics, once."""

    def __init__(self, out: TextIO, prefix: str = "  metrics ") -> None:
        self.out = out
        self.prefix = prefix
        self.printed: set[float] = set()
        self.latest: Any = None

    def feed(self, series: dict[str, list[dict[str, Any]]]) -> None:
        by_x: dict[float, dict[str, Any]] = {}
        for name, points in series.items():
            for point in points:
                if point.get("x") not in self.printed:
                    by_x.setdefault(point["x"], {})[name] = point.get("value")
        for x in sorted(by_x):
            values = "  ".join(f"{name} {_number(value)}" for name, value in sorted(by_x[x].items()))
            self.out.write(f"{self.prefix}{_number(x)}: {values}\n")
            self.printed.add(x)


class TrialPrinter:
    """A sweep's parent: one line per trial each time its state or primary metric changes, and the
    best trial once the sweep ends (the parent has no job, so no log of its own)."""

    def __init__(self, out: TextIO, prefix: str = "  trial ") -> None:
        self.out = out
        self.prefix = prefix
        self.seen: dict[str, tuple[Any, Any]] = {}
        self.best_printed = False

    def feed(self, record: dict[str, Any]) -> None:
        sweep = record.get("sweep") or {}
        metric_name = sweep.get("primary_metric", "metric")
        for row in sorted(record.get("leaderboard") or [], key=lambda r: r.get("index", 0)):
            key = (row.get("state"), row.get("metric"))
            if self.seen.get(row.get("id", "")) == key:
                continue
            self.seen[row.get("id", "")] = key
            params = " ".join(f"{k}={_number(v)}" for k, v in sorted((row.get("parameters") or {}).items()))
            state = str(row.get("state")) + (" (stopped early)" if row.get("early_terminated") else "")
            metric = f"  {metric_name} {_number(row['metric'])}" if row.get("metric") is not None else ""
            self.out.write(f"{self.prefix}{row.get('index', '?')} {params}: {state}{metric}\n")
        best = sweep.get("best")
        if best and not self.best_printed:
            params = " ".join(f"{k}={_number(v)}" for k, v in sorted((best.get("parameters") or {}).items()))
            value = (best.get("metric") or {}).get("value")
            self.out.write(f"  best: {best.get('trial')} {params}  {metric_name} {_number(value)}\n")
            self.best_printed = True


def _number(value: Any) -> str:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.4g}"
    return str(int(value)) if isinstance(value, float) else str(value)


def watch_run(api: ApiClient, run_id: str, out: TextIO = sys.stdout, interval: float = 2.0,
              timeout: float | None = None, logs: bool = True,
              clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:  # fmt: skip
    """Follow one run until it is terminal; returns the final record. Raises CliError on timeout."""
    started = clock()
    printed_states: set[str] = set()
    last_cluster_line = ""
    follower = LogFollower(out)
    metrics_printer = MetricsPrinter(out)
    trial_printer = TrialPrinter(out)
    unreachable_since: float | None = None
    header_done = False
    while True:
        try:
            record = api.get_run(run_id)
            unreachable_since = None
        except ApiError as exc:
            if exc.status < 500:
                raise
            record = None
        except CliError:
            if not header_done:
                raise  # never reached it: a wrong URL or a stack that is down, not a restart
            record = None
        if record is None:  # host restarting or a transient server error: keep trying for a while
            unreachable_since = unreachable_since or clock()
            if clock() - unreachable_since > TRANSIENT_GRACE_S:
                raise CliError(
                    f"lost the function app for {TRANSIENT_GRACE_S:.0f}s while watching run {run_id}"
                )
            time.sleep(interval)
            continue
        if not header_done:
            out.write(f"run {record.get('id', run_id)} on dataset {record.get('dataset')}\n")
            header_done = True
        state = record.get("state", "?")
        created = parse_time(record.get("created_at"))
        times = record.get("times") or {}
        fresh = sorted(
            (s for s in set(times) | {state} if s not in printed_states),
            key=lambda s: STATE_ORDER.index(s) if s in STATE_ORDER else len(STATE_ORDER),
        )
        for s in fresh:
            at = parse_time(times.get(s))
            since = f"+{(at - created).total_seconds():6.1f}s" if at and created else "        "
            stamp = at.strftime("%H:%M:%S") if at else time.strftime("%H:%M:%S")
            out.write(f"{stamp} {since}  {s}\n")
            printed_states.add(s)
        cluster_name = record.get("cluster")
        if (
            cluster_name
            and state in ACTIVE_STATES
            and (state != "running" or not last_cluster_line.startswith("Cluster state: steady"))
        ):
            line = _cluster_line(api, cluster_name)
            if line and line != last_cluster_line:
                out.write(f"         {line}\n")
                last_cluster_line = line
        is_sweep = (record.get("sweep") or {}).get("role") == "parent"
        if is_sweep:
            trial_printer.feed(record)
        if logs and not is_sweep and (state == "running" or state in TERMINAL_STATES):
            with contextlib.suppress(CliError):  # logs are best effort while the job runs
                follower.feed(api.logs(run_id).get("stdout") or "", final=state in TERMINAL_STATES)
        latest = record.get("metrics")
        if latest and latest != metrics_printer.latest:  # new values: fetch the series, print new x
            with contextlib.suppress(CliError):
                metrics_printer.feed(api.metrics(run_id))
                metrics_printer.latest = latest
        out.flush()
        if state in TERMINAL_STATES:
            return record
        if timeout is not None and clock() - started > timeout:
            raise CliError(f"timed out after {timeout:.0f}s waiting for run {run_id} (state {state})")
        time.sleep(interval)


def _cluster_line(api: ApiClient, name: str) -> str | None:
    try:
        clusters = api.clusters()
    except CliError:
        return None
    for cluster in clusters:
        if cluster.get("name") == name:
            return cluster_status_line(cluster)
    return None


def wait_for_dataset_run(api: ApiClient, dataset: str, newer_than: set[str] | None = None,
                         timeout: float = 120.0, interval: float = 1.0) -> str:  # fmt: skip
    """The id of the newest run of `dataset` not in `newer_than` (ingest creates it on the first blob)."""
    deadline = time.monotonic() + timeout
    known = newer_than or set()
    while True:
        runs = api.list_runs(dataset=dataset, limit=1000).get("runs") or []
        fresh = [r for r in runs if r.get("id") not in known]
        if fresh:
            fresh.sort(key=lambda r: r.get("created_at") or "")
            newest: str = fresh[-1]["id"]
            return newest
        if time.monotonic() > deadline:
            raise CliError(
                f"no run of dataset {dataset!r} appeared within {timeout:.0f}s (is ingest running?)"
            )
        time.sleep(interval)
