"""Fault injection and the request log, so tests can exercise a throttling, failing, slow cloud and
count what a client sent.

Faults apply to ARM requests only (never to `/_emulator/` admin and download paths). Each request draws
from one seeded random stream, so the same seed and the same request sequence give the same faults:
a failing test can be replayed. A dropped connection is dropped before the request is processed (what a
client sees as a reset connection), so a retry never applies a change twice.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class FaultSettings:
    rate_429: float = 0.0  # fraction answered 429 TooManyRequests with Retry-After
    rate_500: float = 0.0  # fraction answered 500 InternalServerError
    rate_drop: float = 0.0  # fraction whose connection is closed without an answer
    latency_ms: float = 0.0  # added to every ARM request
    retry_after: int = 1  # seconds, on 429 answers
    seed: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaultSettings:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault setting(s) {sorted(unknown)}; known: {sorted(known)}")
        settings = cls(**data)
        for name in ("rate_429", "rate_500", "rate_drop"):
            value = getattr(settings, name)
            if not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number from 0 to 1, not {value!r}")
        if settings.rate_429 + settings.rate_500 + settings.rate_drop > 1:
            raise ValueError("rate_429 + rate_500 + rate_drop must not exceed 1")
        if not isinstance(settings.latency_ms, int | float) or settings.latency_ms < 0:
            raise ValueError(f"latency_ms must be a non-negative number, not {settings.latency_ms!r}")
        if not isinstance(settings.retry_after, int) or settings.retry_after < 0:
            raise ValueError(f"retry_after must be a non-negative integer, not {settings.retry_after!r}")
        if settings.seed is not None and not isinstance(settings.seed, int):
            raise ValueError(f"seed must be an integer, not {settings.seed!r}")
        return settings


class FaultInjector:
    def __init__(self, settings: FaultSettings | None = None) -> None:
        self.lock = threading.Lock()
        self.configure(settings or FaultSettings())

    def configure(self, settings: FaultSettings) -> None:
        with self.lock:
            self.settings = settings
            self.random = random.Random(settings.seed)

    def draw(self) -> str | None:
        """The fault for the next request: '429', '500', 'drop' or None. Sleeps the added latency."""
        with self.lock:
            s = self.settings
            roll = self.random.random()
        if s.latency_ms:
            time.sleep(s.latency_ms / 1000)
        if roll < s.rate_429:
            return "429"
        if roll < s.rate_429 + s.rate_500:
            return "500"
        if roll < s.rate_429 + s.rate_500 + s.rate_drop:
            return "drop"
        return None

    def as_json(self) -> dict[str, Any]:
        return asdict(self.settings)


class RequestLog:
    """Counts of ARM requests by operation and status, and the most recent requests in order."""

    def __init__(self, keep: int = 5000) -> None:
        self.lock = threading.Lock()
        self.keep = keep
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.seq = 0
            self.total = 0
            self.by_operation: Counter[str] = Counter()
            self.by_status: Counter[str] = Counter()
            self.faults: Counter[str] = Counter()
            self.recent: deque[dict[str, Any]] = deque(maxlen=self.keep)

    def record(self, method: str, path: str, operation: str, status: int | str, fault: str | None) -> None:
        with self.lock:
            self.seq += 1
            self.total += 1
            self.by_operation[operation] += 1
            self.by_status[str(status)] += 1
            if fault:
                self.faults[fault] += 1
            self.recent.append(
                {
                    "seq": self.seq,
                    "time": time.time(),
                    "method": method,
                    "path": path,
                    "operation": operation,
                    "status": status,
                    "fault": fault,
                }
            )

    def as_json(self, since: int = 0) -> dict[str, Any]:
        """Totals since the last reset, and the requests after sequence number `since` with their counts
        by operation (`window`): read `last_seq`, run a cycle, ask again with `since` = that number."""
        with self.lock:
            recent = [r for r in self.recent if r["seq"] > since]
            return {
                "total": self.total,
                "last_seq": self.seq,
                "by_operation": dict(self.by_operation),
                "by_status": dict(self.by_status),
                "faults": dict(self.faults),
                "since": since,
                "window": {
                    "total": len(recent),
                    "by_operation": dict(Counter(r["operation"] for r in recent)),
                },
                "requests": recent,
            }
