"""Waiting for the local stack to reach a state: the one polling helper of the tests and benchmarks.

Why one: each test area had grown its own (argument orders, defaults and failure messages differed).
A timeout is an AssertionError, so in a test it reads as the failure it is, naming what was awaited
and the last value seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["WaitTimeout", "wait_for"]

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A condition not reached in time."""


def wait_for(
    check: Callable[[], T],
    timeout: float = 60.0,
    interval: float = 0.1,
    *,
    what: str = "condition",
    detail: Callable[[], str] | None = None,
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``check`` every ``interval`` seconds until it returns a truthy value, and return that.
    After ``timeout`` seconds raise WaitTimeout naming ``what``, the last value and ``detail()``
    (a log tail, say). An exception of ``retry_on`` from ``check`` counts as not yet."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
        except retry_on as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            message = f"timed out after {timeout:g}s waiting for {what}; last: {last!r}"
            if detail is not None:
                message += "\n" + detail()
            raise WaitTimeout(message)
        time.sleep(interval)
