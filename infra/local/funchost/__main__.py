"""`python -m infra.local.funchost --app-dir DIR --host H --port P [--settings FILE]`: run the app
until SIGTERM or SIGINT, then let running invocations finish (bounded) and exit."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from .config import ConfigError
from .host import FunctionHost


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.funchost", description=__doc__)
    parser.add_argument("--app-dir", type=Path, required=True, help="directory holding function_app.py")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7071, help="HTTP port (default 7071; 0 picks a free one)")
    parser.add_argument("--settings", type=Path, help="settings JSON (default <app-dir>/local.settings.json)")
    parser.add_argument("--verbose", action="store_true", help="log every HTTP request line too")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="[%(asctime)s] %(message)s",
        stream=sys.stdout,
    )
    logging.getLogger("azure").setLevel(logging.WARNING)
    if args.verbose:
        logging.getLogger("funchost.http").setLevel(logging.DEBUG)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    host = FunctionHost(args.app_dir, args.settings, host=args.host, port=args.port)
    try:
        host.start()
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stop.wait()
    for signum in (signal.SIGTERM, signal.SIGINT):  # a second signal: leave at once
        signal.signal(signum, lambda *_: os._exit(1))
    if host.stop():
        return 0
    # Invocations still running past the shutdown timeout: don't let their worker threads hold
    # the process open (the interpreter would join them at exit).
    logging.shutdown()
    os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
