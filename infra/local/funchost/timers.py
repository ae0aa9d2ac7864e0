"""Timer triggers: NCRONTAB six-field schedules (seconds first, via croniter) or `hh:mm:ss`
intervals, `%SETTING%` expressions, runOnStartup, past-due detection from the last recorded status,
one run at a time per function.

Status is kept as the real host's monitor keeps it: blob
`azure-webjobs-hosts/timers/<hostId>/<functionId>/status` holding `{"Last", "Next", "LastUpdated"}`
in the AzureWebJobsStorage account, or a file of the same shape when that setting is absent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.functions.timer import TimerRequest
from azure.storage.blob import BlobServiceClient
from croniter import croniter

from .app import FunctionSpec
from .config import STORAGE, TIMER_STATUS_DIR, ConfigError, HostConfig
from .invoker import Invoker

log = logging.getLogger("funchost")
HOSTS_CONTAINER = "azure-webjobs-hosts"
_TIMESPAN = re.compile(r"(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})")


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


def _parse_iso(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass
class Schedule:
    """An NCRONTAB expression (`sec min hour day month dow`) or a `[d.]hh:mm:ss` interval."""

    expression: str
    interval: timedelta | None = None

    @classmethod
    def parse(cls, expression: str, function: str) -> Schedule:
        text = expression.strip()
        span = _TIMESPAN.fullmatch(text)
        if span:
            days, hours, minutes, seconds = (int(g or 0) for g in span.groups())
            interval = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
            if interval <= timedelta(0):
                raise ConfigError(f"function {function}: timer interval {expression!r} must be positive")
            return cls(text, interval)
        if len(text.split()) != 6 or not croniter.is_valid(text, second_at_beginning=True):
            raise ConfigError(
                f"function {function}: timer schedule {expression!r} is not a six-field NCRONTAB expression "
                "('{second} {minute} {hour} {day} {month} {day-of-week}') nor an hh:mm:ss interval"
            )
        return cls(text)

    def next_after(self, moment: datetime) -> datetime:
        if self.interval is not None:
            return moment + self.interval
        return croniter(self.expression, moment, second_at_beginning=True).get_next(datetime)

    def recurrence(self, moment: datetime) -> timedelta:
        first = self.next_after(moment)
        return self.next_after(first) - first


class StatusStore:
    """Last/Next of each timer, in blob storage (as the real host) or in files."""

    def __init__(self, config: HostConfig) -> None:
        self.host_id = config.host_id
        conn = config.get(STORAGE)
        self.service = BlobServiceClient.from_connection_string(conn) if conn else None
        self.directory = Path(
            config.get(TIMER_STATUS_DIR) or config.app_dir / ".local" / "funchost" / "timers"
        )

    def _name(self, spec: FunctionSpec) -> str:
        return f"timers/{self.host_id}/{spec.function_id}/status"

    def read(self, spec: FunctionSpec) -> dict[str, Any] | None:
        try:
            if self.service is not None:
                raw = (
                    self.service.get_blob_client(HOSTS_CONTAINER, self._name(spec)).download_blob().readall()
                )
            else:
                raw = (self.directory / self._name(spec)).read_bytes()
            data = json.loads(raw)
        except (ResourceNotFoundError, FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write(self, spec: FunctionSpec, status: dict[str, Any]) -> None:
        body = json.dumps(status).encode()
        if self.service is None:
            path = self.directory / self._name(spec)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
            return
        blob = self.service.get_blob_client(HOSTS_CONTAINER, self._name(spec))
        try:
            blob.upload_blob(body, overwrite=True)
        except ResourceNotFoundError:
            with contextlib.suppress(ResourceExistsError):
                self.service.create_container(HOSTS_CONTAINER)
            blob.upload_blob(body, overwrite=True)


@dataclass
class TimerTrigger:
    spec: FunctionSpec
    schedule: Schedule
    run_on_startup: bool
    use_monitor: bool
    lock: threading.Lock = field(default_factory=threading.Lock)
    last: datetime | None = None


class TimerTriggers:
    """One scheduling thread per timer function: runs are sequential, so never overlap."""

    def __init__(self, config: HostConfig, specs: list[FunctionSpec], invoker: Invoker) -> None:
        self.invoker = invoker
        self.triggers: dict[str, TimerTrigger] = {}
        now = datetime.now(UTC)
        for spec in specs:
            if spec.trigger_type != "timerTrigger":
                continue
            expression = config.resolve(
                str(spec.trigger.get("schedule", "")), f"function {spec.name}: schedule"
            )
            schedule = Schedule.parse(expression, spec.name)
            use_monitor = spec.trigger.get("useMonitor")
            if use_monitor is None:  # the real host's default: monitor schedules of a minute or more
                use_monitor = schedule.recurrence(now) >= timedelta(minutes=1)
            self.triggers[spec.name] = TimerTrigger(
                spec, schedule, bool(spec.trigger.get("runOnStartup", False)), bool(use_monitor)
            )
        self.store = StatusStore(config) if any(t.use_monitor for t in self.triggers.values()) else None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for trigger in self.triggers.values():
            thread = threading.Thread(
                target=self._run, args=(trigger,), name=f"timer-{trigger.spec.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()

    def describe(self, name: str) -> str:
        trigger = self.triggers[name]
        return f"timerTrigger ({trigger.schedule.expression})"

    def fire(self, trigger: TimerTrigger, past_due: bool, status: dict[str, Any] | None = None) -> None:
        """One run, under the function's lock (singleton); a failure is logged, not raised."""
        request = TimerRequest(
            past_due=past_due, schedule_status=status or {}, schedule={"AdjustForDST": True}
        )
        # A failure is logged by the invoker; the schedule goes on.
        with trigger.lock, contextlib.suppress(Exception):
            self.invoker.invoke(trigger.spec, request, "Timer fired", {})

    def _save(self, trigger: TimerTrigger, next_run: datetime) -> dict[str, Any]:
        status = {"Last": _iso(trigger.last), "Next": _iso(next_run), "LastUpdated": _iso(datetime.now(UTC))}
        if trigger.use_monitor and self.store is not None:
            try:
                self.store.write(trigger.spec, status)
            except Exception as exc:
                log.warning("timer status of %s not saved: %s", trigger.spec.name, exc)
        return status

    def _run(self, trigger: TimerTrigger) -> None:
        try:
            self._schedule(trigger)
        except Exception:
            log.exception("timer %s stopped", trigger.spec.name)

    def _schedule(self, trigger: TimerTrigger) -> None:
        now = datetime.now(UTC)
        status: dict[str, Any] | None = None
        if trigger.use_monitor and self.store is not None:
            try:
                status = self.store.read(trigger.spec)
            except Exception as exc:
                log.warning("timer status of %s not read: %s", trigger.spec.name, exc)
        recorded_next = _parse_iso((status or {}).get("Next"))
        trigger.last = _parse_iso((status or {}).get("Last"))
        if recorded_next is not None and recorded_next < now:
            log.info(
                "Function 'Functions.%s' is past due (was due %s)", trigger.spec.name, _iso(recorded_next)
            )
            self.fire(trigger, True, status)
            trigger.last = now
        elif trigger.run_on_startup:
            self.fire(trigger, False, status)
            trigger.last = now
        while not self._stop.is_set():
            now = datetime.now(UTC)
            next_run = trigger.schedule.next_after(now)
            status = self._save(trigger, next_run)
            while not self._stop.is_set():
                remaining = (next_run - datetime.now(UTC)).total_seconds()
                if remaining <= 0:
                    break
                self._stop.wait(min(remaining, 1.0))
            if self._stop.is_set():
                return
            trigger.last = next_run
            self.fire(trigger, False, status)
