"""Nightly cleanup timer (schedule from CLEANUP_SCHEDULE): plan, act (or dry-run) and report."""

from __future__ import annotations

import logging

import azure.functions as func

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name("cleanup")
@bp.timer_trigger(schedule="%CLEANUP_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
def cleanup(timer: func.TimerRequest) -> None:
    """Terminate runaway jobs; delete old jobs, empty experiments, idle clusters and old staged data."""
    from shared.cleanup import run_cleanup  # at first run, not at `import function_app`

    if timer.past_due:
        log.info("cleanup timer is past due; running now")
    report, blob = run_cleanup()
    log.info("cleanup report %s: %s", blob, report["summary"])
