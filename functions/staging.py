"""Queue trigger on STAGING_QUEUE: stage a run that `POST /api/runs` started with `stage_from_prefix`
(the request answers at once; see shared.staging_queue). Thin: decode, call shared/, log."""

from __future__ import annotations

import logging

import azure.functions as func

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name("stage")
@bp.queue_trigger(arg_name="msg", queue_name="%STAGING_QUEUE%", connection="STORAGE_CONNECTION_STRING")
def stage(msg: func.QueueMessage) -> None:
    """One queued HTTP start (at least once; retried by the queue, then poisoned)."""
    from shared.staging_queue import handle

    state = handle(msg.get_body())
    log.info("staging message %s (try %s): run now %s", msg.id, msg.dequeue_count, state)
