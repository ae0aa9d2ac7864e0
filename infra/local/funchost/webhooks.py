"""`/runtime/webhooks/blobs`: the blob extension's Event Grid endpoint, as the host serves it in
Azure. Event Grid POSTs `Microsoft.Storage.BlobCreated` events to
`/runtime/webhooks/blobs?functionName=Host.Functions.<name>&code=<blobs_extension system key>`.

Answers: 401 without the blobs_extension key (or the master key); the subscription validation
handshake (`aeg-event-type: SubscriptionValidation`) answers `{"validationResponse": code}`;
`Unsubscribe` 202; a `functionName` that is no Event Grid blob trigger 404 `cannot find function:
'<name>'`; a body that is not events, or another `aeg-event-type`, 400. Notifications run the
handler once per BlobCreated event before answering: 202 when every invocation succeeded, 500 when
one failed (Event Grid then retries the delivery on its schedule, and dead-letters it after the
subscription's max attempts).
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from werkzeug.wrappers import Request, Response

from .blobs import BlobTriggers, EventError
from .config import BLOBS_EXTENSION_KEY, MASTER_KEY, HostConfig

log = logging.getLogger("funchost")

PATH = "/runtime/webhooks/blobs"
BLOB_CREATED = "Microsoft.Storage.BlobCreated"


def handle_blob_webhook(request: Request, config: HostConfig, blobs: BlobTriggers) -> Response:
    given = request.args.get("code") or request.headers.get("x-functions-key") or ""
    keys = (config.get(BLOBS_EXTENSION_KEY), config.get(MASTER_KEY))
    if not any(key and hmac.compare_digest(given.encode(), key.encode()) for key in keys):
        return _text(401, "Unauthorized")
    if request.method != "POST":
        return _text(405, "Method Not Allowed")
    kind = request.headers.get("aeg-event-type", "").lower()
    try:
        body = json.loads(request.get_data() or b"null")
    except ValueError:
        return _text(400, "request body is not JSON")
    events: list[Any] = body if isinstance(body, list) else [body]
    if kind == "subscriptionvalidation":
        data = events[0].get("data") if events and isinstance(events[0], dict) else None
        code = data.get("validationCode") if isinstance(data, dict) else None
        if not isinstance(code, str):
            return _text(400, "subscription validation event without data.validationCode")
        log.info("performed the Event Grid handshake for %s", request.args.get("functionName"))
        return Response(json.dumps({"validationResponse": code}), status=200, mimetype="application/json")
    if kind == "unsubscribe":
        return Response(b"", status=202)
    if kind != "notification":
        return _text(400, "aeg-event-type must be SubscriptionValidation, Notification or Unsubscribe")
    function_name = request.args.get("functionName", "")
    trigger = blobs.event_grid_trigger(function_name)
    if trigger is None:
        return _text(404, f"cannot find function: '{function_name}'")
    if not all(isinstance(e, dict) for e in events):
        return _text(400, "events must be JSON objects")
    failed = 0
    for event in events:
        if event.get("eventType") != BLOB_CREATED:
            continue
        try:
            blobs.deliver_event(trigger, event)
        except EventError as exc:
            return _text(400, str(exc))
        except Exception:  # logged with its trace by the invoker; this event's failure only
            failed += 1
    return Response(b"", status=500 if failed else 202)


def _text(status: int, text: str) -> Response:
    return Response(text, status=status, mimetype="text/plain")
