"""Admin HTTP API of the Event Grid stand-in (routing table apart from the backend), under
`/_emulator/` as the other emulators have theirs:

| method and path | what |
| --- | --- |
| `GET /_emulator/subscriptions` | the subscriptions (endpoints without their query: it holds a key) |
| `PUT /_emulator/subscriptions/<name>` | create or replace one (JSON: `Subscription` fields) |
| `DELETE /_emulator/subscriptions/<name>` | delete one |
| `POST /_emulator/faults` | `{"duplicate": n, "out_of_order": n}` for the next n events |
| `DELETE /_emulator/faults` | clear faults (held events are released) |
| `GET /_emulator/deliveries` | `{"attempts": [...], "dead_lettered": [...], "idle": bool}` |
"""

from __future__ import annotations

import json
from typing import Any

from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from .models import Subscription
from .publisher import EventGridStandIn

URLS = Map(
    [
        Rule("/_emulator/subscriptions", methods=["GET"], endpoint="list_subscriptions"),
        Rule("/_emulator/subscriptions/<name>", methods=["PUT"], endpoint="put_subscription"),
        Rule("/_emulator/subscriptions/<name>", methods=["DELETE"], endpoint="delete_subscription"),
        Rule("/_emulator/faults", methods=["POST"], endpoint="set_faults"),
        Rule("/_emulator/faults", methods=["DELETE"], endpoint="clear_faults"),
        Rule("/_emulator/deliveries", methods=["GET"], endpoint="deliveries"),
    ]
)


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status=status, mimetype="application/json")


def _error(status: int, message: str) -> Response:
    return _json(
        {"error": {"code": "BadRequest" if status == 400 else "NotFound", "message": message}}, status
    )


class AdminApp:
    """The WSGI application over one `EventGridStandIn`."""

    def __init__(self, grid: EventGridStandIn) -> None:
        self.grid = grid

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        try:
            endpoint, args = URLS.bind_to_environ(environ).match()
            response = getattr(self, endpoint)(request, **args)
        except NotFound:
            response = _error(404, f"no such path: {request.path}")
        except HTTPException as exc:
            response = _error(exc.code or 400, exc.description or "bad request")
        return response(environ, start_response)

    def list_subscriptions(self, request: Request) -> Response:
        return _json([s.to_dict() for s in self.grid.subscriptions.values()])

    def put_subscription(self, request: Request, name: str) -> Response:
        try:
            body = json.loads(request.get_data() or b"{}")
            subscription = Subscription.from_dict({**body, "name": name})
        except (ValueError, TypeError) as exc:
            return _error(400, f"subscription {name}: {exc}")
        self.grid.subscribe(subscription)
        return _json(subscription.to_dict(), 201)

    def delete_subscription(self, request: Request, name: str) -> Response:
        self.grid.unsubscribe(name)
        return Response(b"", status=204)

    def set_faults(self, request: Request) -> Response:
        try:
            body = json.loads(request.get_data() or b"{}")
            duplicate, reorder = int(body.get("duplicate", 0)), int(body.get("out_of_order", 0))
        except (ValueError, TypeError, AttributeError) as exc:
            return _error(400, f"faults: {exc}")
        if duplicate:
            self.grid.duplicate(duplicate)
        if reorder:
            self.grid.out_of_order(reorder)
        return _json({"duplicate": duplicate, "out_of_order": reorder})

    def clear_faults(self, request: Request) -> Response:
        self.grid.clear_faults()
        return Response(b"", status=204)

    def deliveries(self, request: Request) -> Response:
        return _json(
            {
                "attempts": list(self.grid.attempts),
                "dead_lettered": [d["id"] for d in self.grid.dead_lettered],
                "idle": self.grid.idle(),
            }
        )
