"""`python -m infra.local.files --host H --port P --data-dir D`: serve the Files emulator."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from .server import close_server, create_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.files", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=10004)
    parser.add_argument(
        "--data-dir",
        type=Path,
        required=True,
        help="share bytes go to <data-dir>/shares/<account>/<share>, properties to <data-dir>/meta",
    )
    parser.add_argument(
        "--copy-chunk-delay",
        type=float,
        default=0.0,
        help="seconds to sleep after each 1 MiB chunk of a server-side copy (to test pending copies)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    server = create_server(args.host, args.port, args.data_dir, copy_chunk_delay=args.copy_chunk_delay)

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        close_server(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
