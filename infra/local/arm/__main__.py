"""`python -m infra.local.arm`: the ARM / Batch AI emulator on plain HTTP.

Every flag also reads an environment variable (flag wins), so the local stack launcher and tests can
tune it without changing the command line:

  --provisioning-delay  ARM_EMULATOR_PROVISIONING_DELAY  seconds nodes spend preparing (default 5)
  --operation-delay     ARM_EMULATOR_OPERATION_DELAY     seconds a long-running operation runs (0.5)
  --retry-after         ARM_EMULATOR_RETRY_AFTER         Retry-After on 202 answers, seconds (1)
  --job-python          ARM_EMULATOR_JOB_PYTHON          interpreter for python toolkits (this one's)
  --location            ARM_EMULATOR_LOCATION            location in operation URLs (eastus)
  --fault-429 / --fault-500 / --fault-drop   ARM_EMULATOR_FAULT_429 / _500 / _DROP   fractions 0..1
  --fault-latency-ms    ARM_EMULATOR_FAULT_LATENCY_MS
  --fault-retry-after   ARM_EMULATOR_FAULT_RETRY_AFTER   Retry-After on injected 429s (1)
  --fault-seed          ARM_EMULATOR_FAULT_SEED          (also seeds node failures)
  --node-failure-rate   ARM_EMULATOR_NODE_FAILURE_RATE   fraction of new nodes left unusable (0)

The one bearer token it accepts is ARM_EMULATOR_TOKEN (environment only, never a flag: command lines
are visible to every user); without it a random token is made and written to <data-dir>/token (0600).
Requests whose Host is not a loopback name are refused (infra/local/loopback.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
import threading
from pathlib import Path

from werkzeug.serving import make_server

from infra.local.arm.batchai.backend import Backend
from infra.local.arm.common import Config
from infra.local.arm.faults import FaultInjector, FaultSettings
from infra.local.arm.server import ArmEmulator
from infra.local.arm.storage import accounts_from_env
from infra.local.loopback import LoopbackHostOnly


def _env(name: str, default: str | None) -> str | None:
    return os.environ.get(f"ARM_EMULATOR_{name}", default)


def _token(data_dir: Path) -> str:
    """ARM_EMULATOR_TOKEN, else a fresh random token written where only this user can read it."""
    token = os.environ.get("ARM_EMULATOR_TOKEN", "").strip()
    if token:
        return token
    token = secrets.token_urlsafe(32)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "token"
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    print(f"ARM_EMULATOR_TOKEN is not set: the bearer token is in {path}", flush=True)
    return token


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m infra.local.arm",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=10005)
    p.add_argument("--data-dir", type=Path, required=True, help="state.json, node mount roots, job temp dirs")
    p.add_argument("--files-root", type=Path, required=True, help="the Files emulator's <data-dir>/shares")
    p.add_argument("--files-endpoint", default="http://127.0.0.1:10004/devstoreaccount1")
    p.add_argument("--blob-endpoint", default=_env("BLOB_ENDPOINT", None), help="Azurite's blob endpoint")
    p.add_argument("--queue-endpoint", default=_env("QUEUE_ENDPOINT", None))
    p.add_argument("--table-endpoint", default=_env("TABLE_ENDPOINT", None))
    p.add_argument(
        "--storage-resource-group",
        default=_env("STORAGE_RESOURCE_GROUP", "local-storage"),
        help="the resource group Microsoft.Storage shows the stack's storage accounts in",
    )
    p.add_argument("--provisioning-delay", type=float, default=float(_env("PROVISIONING_DELAY", "5")))
    p.add_argument("--operation-delay", type=float, default=float(_env("OPERATION_DELAY", "0.5")))
    p.add_argument("--retry-after", type=int, default=int(_env("RETRY_AFTER", "1")))
    p.add_argument("--job-python", default=_env("JOB_PYTHON", sys.executable))
    p.add_argument("--location", default=_env("LOCATION", "eastus"))
    p.add_argument("--fault-429", type=float, default=float(_env("FAULT_429", "0")))
    p.add_argument("--fault-500", type=float, default=float(_env("FAULT_500", "0")))
    p.add_argument("--fault-drop", type=float, default=float(_env("FAULT_DROP", "0")))
    p.add_argument("--fault-latency-ms", type=float, default=float(_env("FAULT_LATENCY_MS", "0")))
    p.add_argument("--fault-retry-after", type=int, default=int(_env("FAULT_RETRY_AFTER", "1")))
    seed = _env("FAULT_SEED", None)
    p.add_argument("--fault-seed", type=int, default=int(seed) if seed else None)
    p.add_argument("--node-failure-rate", type=float, default=float(_env("NODE_FAILURE_RATE", "0")))
    p.add_argument("--verbose", action="store_true", help="log every HTTP request")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        faults = FaultSettings.from_json(
            {
                "rate_429": args.fault_429,
                "rate_500": args.fault_500,
                "rate_drop": args.fault_drop,
                "latency_ms": args.fault_latency_ms,
                "retry_after": args.fault_retry_after,
                "seed": args.fault_seed,
            }
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = Config(
        data_dir=args.data_dir.resolve(),
        files_root=args.files_root.resolve(),
        files_endpoint=args.files_endpoint,
        provisioning_delay=args.provisioning_delay,
        operation_delay=args.operation_delay,
        retry_after=args.retry_after,
        job_python=args.job_python,
        location=args.location,
        node_failure_rate=args.node_failure_rate,
        node_failure_seed=args.fault_seed,
        storage_accounts=accounts_from_env(),
        storage_resource_group=args.storage_resource_group,
        storage_endpoints={
            service: url
            for service, url in (
                ("blob", args.blob_endpoint),
                ("queue", args.queue_endpoint),
                ("table", args.table_endpoint),
                ("file", args.files_endpoint),
            )
            if url
        },
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.INFO if args.verbose else logging.WARNING)
    backend = Backend(config)
    app = ArmEmulator(backend, FaultInjector(faults), token=_token(config.data_dir))
    server = make_server(args.host, args.port, LoopbackHostOnly(app, "The ARM emulator"), threaded=True)
    backend.start()
    app.azureml.start()

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(
        f"ARM emulator on http://{args.host}:{args.port} (data {config.data_dir}, files {config.files_root})",
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        app.azureml.stop()
        backend.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
