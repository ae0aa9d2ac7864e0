"""Calling a handler the way the Python worker does: the trigger value under its argument name,
`context` if declared, other declared names from the trigger's metadata; one log line before and
one after, with the invocation id, outcome and duration (as the real host logs them)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from .app import Context, FunctionSpec

log = logging.getLogger("funchost")


class BindingError(TypeError):
    """A handler declares an argument the local host cannot bind."""


class Invoker:
    """Runs handlers and counts the ones running, so that shutdown can wait for them."""

    def __init__(self, app_dir: str) -> None:
        self.app_dir = app_dir
        self._running = 0
        self._idle = threading.Condition()

    @property
    def running(self) -> int:
        return self._running

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no invocation runs; False if some still run after `timeout` seconds."""
        with self._idle:
            return self._idle.wait_for(lambda: self._running == 0, timeout)

    def arguments(
        self, spec: FunctionSpec, value: Any, metadata: Mapping[str, Any], invocation_id: str
    ) -> dict[str, Any]:
        trigger_arg = spec.trigger.get("name")
        kwargs: dict[str, Any] = {}
        lowered = {k.lower(): v for k, v in metadata.items()}
        for name, param in spec.parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            if name == trigger_arg:
                kwargs[name] = value
            elif name == "context":
                kwargs[name] = Context(invocation_id, spec.name, self.app_dir)
            elif name.lower() in lowered:
                kwargs[name] = lowered[name.lower()]
            elif param.default is inspect.Parameter.empty:
                raise BindingError(
                    f"function {spec.name}: argument {name!r} has no binding the local host provides "
                    f"(it binds the trigger argument {trigger_arg!r}, 'context' and trigger metadata)"
                )
        return kwargs

    def invoke(
        self, spec: FunctionSpec, value: Any, reason: str, metadata: Mapping[str, Any] | None = None
    ) -> Any:
        """Run the handler; its exception propagates after being logged with its trace."""
        invocation_id = str(uuid.uuid4())
        with self._idle:
            self._running += 1
        started = time.monotonic()
        log.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", spec.name, reason, invocation_id)
        try:
            kwargs = self.arguments(spec, value, metadata or {}, invocation_id)
            result = spec.handler(**kwargs)
            if inspect.isawaitable(result):
                result = asyncio.run(_await(result))
        except BaseException as exc:
            duration = (time.monotonic() - started) * 1000
            log.error(
                "Executed 'Functions.%s' (Failed, Id=%s, Duration=%.0fms)",
                spec.name, invocation_id, duration, exc_info=exc,
            )  # fmt: skip
            raise
        finally:
            with self._idle:
                self._running -= 1
                self._idle.notify_all()
        duration = (time.monotonic() - started) * 1000
        log.info(
            "Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%.0fms)", spec.name, invocation_id, duration
        )
        return result


async def _await(awaitable: Any) -> Any:
    return await awaitable
