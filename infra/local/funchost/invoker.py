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


class FunctionTimeoutError(TimeoutError):
    """The invocation ran past host.json `functionTimeout`: abandoned and counted as failed."""


class ResponseCutOff(TimeoutError):
    """An HTTP invocation did not answer within Azure's front-end limit (230 s); it runs on."""


class Invoker:
    """Runs handlers and counts the ones running, so that shutdown can wait for them.

    Each invocation runs in a thread of its own, so that the host can stop waiting for it: past
    `function_timeout` seconds (host.json `functionTimeout`) it is abandoned and fails with
    FunctionTimeoutError, as Azure's host fails it (Python threads cannot be killed: the handler's
    thread runs on, still counted as running, and its late result is dropped); past `answer_within`
    seconds an HTTP caller gets ResponseCutOff while the invocation goes on to its own end or timeout.
    """

    def __init__(self, app_dir: str, function_timeout: float | None = None) -> None:
        self.app_dir = app_dir
        self.function_timeout = function_timeout
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
        self,
        spec: FunctionSpec,
        value: Any,
        reason: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        answer_within: float | None = None,
    ) -> Any:
        """Run the handler; its exception propagates after being logged with its trace."""
        invocation_id = str(uuid.uuid4())
        started = time.monotonic()
        log.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", spec.name, reason, invocation_id)
        outcome: dict[str, Any] = {}
        done = threading.Event()
        abandoned = threading.Event()

        def run() -> None:
            try:
                kwargs = self.arguments(spec, value, metadata or {}, invocation_id)
                result = spec.handler(**kwargs)
                if inspect.isawaitable(result):
                    result = asyncio.run(_await(result))
                outcome["result"] = result
            except BaseException as exc:
                outcome["error"] = exc
            finally:
                try:  # logged before the caller resumes: its "Executed" line precedes the answer
                    self._finished(spec, invocation_id, started, outcome, abandoned.is_set())
                finally:
                    done.set()

        with self._idle:
            self._running += 1
        threading.Thread(target=run, name=f"invocation-{spec.name}", daemon=True).start()
        limit = self.function_timeout
        if answer_within is not None and (limit is None or answer_within < limit):
            if not done.wait(answer_within):
                if limit is not None:
                    rest = limit - answer_within
                    threading.Thread(
                        target=self._enforce, args=(spec, invocation_id, done, abandoned, rest), daemon=True
                    ).start()
                raise ResponseCutOff(f"no response from {spec.name} within {answer_within:.0f}s")
        elif not done.wait(limit):
            self._abandon(spec, invocation_id, abandoned)
        if abandoned.is_set():
            raise FunctionTimeoutError(_timeout_message(limit, spec, invocation_id))
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("result")

    def _enforce(
        self,
        spec: FunctionSpec,
        invocation_id: str,
        done: threading.Event,
        abandoned: threading.Event,
        rest: float,
    ) -> None:
        if not done.wait(rest):
            self._abandon(spec, invocation_id, abandoned)

    def _abandon(self, spec: FunctionSpec, invocation_id: str, abandoned: threading.Event) -> None:
        abandoned.set()
        log.error("%s Initiating cancellation.", _timeout_message(self.function_timeout, spec, invocation_id))
        log.error("Executed 'Functions.%s' (Failed, Id=%s): timeout", spec.name, invocation_id)

    def _finished(
        self, spec: FunctionSpec, invocation_id: str, started: float, outcome: dict[str, Any], abandoned: bool
    ) -> None:
        duration = (time.monotonic() - started) * 1000
        try:
            if abandoned:
                log.warning(
                    "'Functions.%s' (Id=%s) ended after its timeout (Duration=%.0fms); its result is dropped",
                    spec.name, invocation_id, duration,
                )  # fmt: skip
            elif "error" in outcome:
                log.error(
                    "Executed 'Functions.%s' (Failed, Id=%s, Duration=%.0fms)",
                    spec.name, invocation_id, duration, exc_info=outcome["error"],
                )  # fmt: skip
            else:
                log.info(
                    "Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%.0fms)",
                    spec.name, invocation_id, duration,
                )  # fmt: skip
        finally:
            with self._idle:
                self._running -= 1
                self._idle.notify_all()


def _timeout_message(limit: float | None, spec: FunctionSpec, invocation_id: str) -> str:
    seconds = int(limit or 0)
    stamp = f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return f"Timeout value of {stamp} exceeded by function 'Functions.{spec.name}' (Id: '{invocation_id}')."


async def _await(awaitable: Any) -> Any:
    return await awaitable
