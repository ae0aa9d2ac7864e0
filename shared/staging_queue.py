"""Out-of-band staging of HTTP starts: `POST /api/runs` with `stage_from_prefix` answers at once.

Why: Azure's front end cuts an HTTP response off after 230 s whatever `functionTimeout` says, and
staging a folder copies every blob (each copy bounded by COPY_TIMEOUT_SECONDS): a large dataset
cannot be staged inside the request. So the request creates the run (in `staging`) and queues one
message naming it on STAGING_QUEUE; the queue-triggered `stage` function stages and submits it
(`run_starts.stage_run`). The queue gives the work Azure's retry semantics: a failed try comes back
(dequeue count), and after the host's maxDequeueCount the message goes to `<queue>-poison`; a run
whose staging never completes is failed by the monitor at its staging deadline.

Messages are base64-encoded JSON `{"run_id": ...}` (the queue extension's default encoding).
Handling is idempotent: a message for a run that has left `staging` (staged by an earlier try,
cancelled, failed) changes nothing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

from shared import sdk_clients
from shared.registry import STAGING, RunNotFound, RunRecord

if TYPE_CHECKING:  # annotations only
    from shared.services import Services

log = logging.getLogger(__name__)


def encode(run_id: str) -> str:
    return base64.b64encode(json.dumps({"run_id": run_id}).encode()).decode()


def run_id_of(body: bytes) -> str:
    """The run a message names; ValueError naming the problem for anything else."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        raise ValueError("staging message is not JSON") from None
    run_id = data.get("run_id") if isinstance(data, dict) else None
    if not isinstance(run_id, str) or not run_id:
        raise ValueError('staging message must be {"run_id": "<id>"}')
    return run_id


def enqueue(svc: Services, rec: RunRecord) -> None:
    """Queue the staging of a run started over HTTP (the queue is created on first use)."""
    queue = sdk_clients.staging_queue(svc.settings)
    try:
        queue.send_message(encode(rec.run_id))
    except ResourceNotFoundError:
        with contextlib.suppress(ResourceExistsError):
            queue.create_queue()
        queue.send_message(encode(rec.run_id))
    log.info("run %s: staging queued", rec.run_id, extra=rec.log_extra())


def handle(body: bytes, svc: Services | None = None) -> str:
    """Stage and submit the run a message names; the state it ends in. A StagingError has failed
    the run (named on it): the message is done. Anything else propagates, so the queue retries."""
    from shared import run_starts, services
    from shared.staging import StagingError

    svc = svc or services.get_services()
    run_id = run_id_of(body)
    try:
        rec: RunRecord = svc.registry.get(run_id)
    except RunNotFound:
        log.warning("staging message for run %s, which does not exist: dropped", run_id)
        return "missing"
    if rec.state != STAGING:
        log.info(
            "run %s is %s: its staging message changes nothing", run_id, rec.state, extra=rec.log_extra()
        )
        return rec.state
    try:
        return run_starts.stage_run(rec, svc).state
    except StagingError as exc:
        log.warning("run %s: staging failed: %s", run_id, exc, extra=rec.log_extra())
        now: RunRecord = svc.registry.get(run_id)
        return now.state
