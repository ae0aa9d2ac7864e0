"""`python -m infra.local.eventgrid --host H --port P [--subscriptions FILE] [--poll-interval S]`: watch
the storage account of EVENTGRID_STORAGE_CONNECTION_STRING and push BlobCreated events to the
subscriptions in FILE (a JSON list of `Subscription` fields), until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from werkzeug.serving import make_server

from infra.local.loopback import LoopbackHostOnly

from .models import Subscription
from .publisher import EventGridStandIn
from .server import AdminApp

CONNECTION_SETTING = "EVENTGRID_STORAGE_CONNECTION_STRING"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.eventgrid", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=10006)
    parser.add_argument("--subscriptions", type=Path, help="JSON list of subscriptions to create at start")
    parser.add_argument("--poll-interval", type=float, default=0.5, help="seconds between listings (0.5)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", stream=sys.stdout)
    logging.getLogger("azure").setLevel(logging.WARNING)
    connection = os.environ.get(CONNECTION_SETTING)
    if not connection:
        print(f"error: {CONNECTION_SETTING} is not set", file=sys.stderr)
        return 1
    try:
        subscriptions = [
            Subscription.from_dict(item)
            for item in (json.loads(args.subscriptions.read_text()) if args.subscriptions else [])
        ]
    except (OSError, ValueError, TypeError) as exc:
        print(f"error: subscriptions file {args.subscriptions}: {exc}", file=sys.stderr)
        return 1
    grid = EventGridStandIn(connection, subscriptions, poll_interval=args.poll_interval).start()
    # Only requests addressed to a loopback name reach the admin API (DNS rebinding).
    app = LoopbackHostOnly(AdminApp(grid), "The Event Grid stand-in")
    server = make_server(args.host, args.port, app, threaded=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for subscription in subscriptions:
        endpoint = subscription.endpoint.split("?")[0]  # the query holds the key
        print(f"subscription {subscription.name}: {subscription.container} -> {endpoint}")
    print(f"Event Grid stand-in listening on {args.host}:{server.server_port}", flush=True)
    stop.wait()
    server.shutdown()
    grid.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
