"""Monitor timer (schedule from MONITOR_SCHEDULE): reconcile active runs with Batch AI, report finished."""

from __future__ import annotations

import logging

import azure.functions as func

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name("monitor")
@bp.timer_trigger(schedule="%MONITOR_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
def monitor(timer: func.TimerRequest) -> None:
    """One pass: staging timeouts, job states, outputs, callbacks."""
    from shared.monitor import run_monitor

    if timer.past_due:
        log.info("monitor timer is past due; running now")
    report = run_monitor()
    if report.errors:
        log.warning("monitor pass had %d error(s); the next pass retries", len(report.errors))
