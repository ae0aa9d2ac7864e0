"""`make demo`: a dataset dropped into blob storage becomes a trained model, end to end, on this machine.

Starts its own local stack (Azurite, Files and ARM emulators, the Functions host running function_app.py)
on free ports in `.local/demo/`, generates the MNIST-like dataset, uploads it with the CLI's upload
(run.json last), follows the run the ingest function starts (states, cluster, live stdout), lists the
output files, downloads metrics.json through its output URL and prints the final test accuracy and
the run's dashboard URL (printed as well when the run starts: open it to watch the run train), then
stops the stack, or with --keep-up leaves it up until Ctrl-C. Exits non-zero when any step fails;
`.local/demo/logs/` keeps every service's log.

    python -m samples.mnist.demo [--train N] [--test N] [--epochs N] [--timeout S] [--keep-up]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from cli.app import download_output, print_table
from cli.client import ApiClient, CliError, Settings
from cli.upload import upload_dataset
from cli.watch import wait_for_dataset_run, watch_run
from infra.local.stack import REPO_ROOT, LocalStack, Ports, StackError
from samples.mnist import make_dataset

SAMPLE_DIR = Path(__file__).resolve().parent
DATASET = "mnist"
TARGET_ACCURACY = 0.95


def step(message: str, started: float) -> None:
    print(f"\n==> [{time.monotonic() - started:6.1f}s] {message}", flush=True)


def shown(path: Path) -> Path:
    """A path as short as it is clear: relative to the repository when inside it."""
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path


def demo_settings(stack: LocalStack, backend: str = "batchai") -> dict[str, str]:
    """A monitor pass every second and short emulator delays, so the demo spends its time training,
    not waiting (the stack itself points the app at its own ports); COMPUTE_BACKEND picks the
    training service (the emulator speaks both)."""
    return {
        "COMPUTE_BACKEND": backend,
        "MONITOR_SCHEDULE": "* * * * * *",
        "ARM_EMULATOR_PROVISIONING_DELAY": "1",
        "ARM_EMULATOR_OPERATION_DELAY": "0.2",
    }


def prepare_dataset(directory: Path, train: int, test: int, epochs: int | None) -> None:
    """The three quickstart files plus run.json, as a user would drop them."""
    make_dataset.main([str(directory), "--train", str(train), "--test", str(test)])
    shutil.copy2(SAMPLE_DIR / "ConvNet_MNIST.py", directory / "ConvNet_MNIST.py")
    manifest = json.loads((SAMPLE_DIR / "run.json").read_text())
    args = manifest["arguments"].split()
    if epochs is not None and "--epochs" in args:
        args[args.index("--epochs") + 1] = str(epochs)
    manifest["arguments"] = " ".join(args)
    (directory / "run.json").write_text(json.dumps(manifest, indent=2) + "\n")


def report_outputs(api: ApiClient, record: dict[str, Any], download_dir: Path) -> float:
    """Print the output files, download metrics.json by its URL, return the final test accuracy."""
    files = [f for f in record.get("output_files") or [] if not f.get("is_directory")]
    if not files:
        raise CliError(f"run {record.get('id')} succeeded but lists no output files")
    print_table(
        ("DIRECTORY", "NAME", "BYTES"),
        [(f.get("directory_id", ""), f.get("name", ""), str(f.get("size", "-"))) for f in files],
    )
    metrics_file = next((f for f in files if str(f.get("name", "")).endswith("metrics.json")), None)
    if metrics_file is None:
        raise CliError("no metrics.json among the output files")
    fresh = api.get_run(record["id"])  # output URLs are short-lived: take fresh ones
    by_name = {(f.get("directory_id"), f.get("name")): f for f in fresh.get("output_files") or []}
    metrics_file = by_name.get((metrics_file.get("directory_id"), metrics_file.get("name")), metrics_file)
    path = download_output(api, metrics_file, download_dir)
    metrics = json.loads(path.read_text())
    print(f"downloaded {shown(path)}")
    return float(metrics["test_accuracy"])


def dashboard_url(stack: LocalStack, run_id: str) -> str:
    """The run's page on the stack's dashboard. The function key is not in it (a printed key is a
    leaked key): the page asks for it once, and it is FUNCTIONS_KEY in the stack's stack.env."""
    return f"{stack.functions_url}/api/ui#/run/{run_id}"


def key_hint(stack: LocalStack) -> str:
    return f"(the page asks for the function key: FUNCTIONS_KEY in {shown(stack.data_dir / 'stack.env')})"


def keep_up(stack: LocalStack) -> None:
    """Wait until Ctrl-C with the stack running (then main's ``finally`` stops it)."""
    print(f"the local stack stays up (dashboard: {stack.functions_url}/api/ui); Ctrl-C stops it", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m samples.mnist.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--train", type=int, default=make_dataset.DEFAULT_TRAIN, help="training samples")
    parser.add_argument("--test", type=int, default=make_dataset.DEFAULT_TEST, help="test samples")
    parser.add_argument("--epochs", type=int, help="training epochs (default: run.json's)")
    parser.add_argument(
        "--backend", choices=("batchai", "azureml"), default="batchai", help="COMPUTE_BACKEND of the app"
    )
    parser.add_argument(
        "--timeout", type=float, default=600, help="give up on the run after this many seconds"
    )
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT / ".local" / "demo", help="wiped first")
    parser.add_argument("--keep-up", action="store_true",
                        help="keep the stack and its dashboard up after the run, until Ctrl-C")  # fmt: skip
    parser.add_argument("--min-accuracy", type=float, default=TARGET_ACCURACY,
                        help="fail below this final test accuracy (default %(default)s)")  # fmt: skip
    args = parser.parse_args(argv)

    started = time.monotonic()
    if args.data_dir.exists():
        shutil.rmtree(args.data_dir)
    args.data_dir.mkdir(parents=True)
    stack = LocalStack(data_dir=args.data_dir, ports=Ports.free())
    stack.extra_env = demo_settings(stack, args.backend)
    accuracy = None
    try:
        step("starting the local stack: Azurite, Files emulator, ARM emulator, Functions host", started)
        stack.start(timeout=90)
        stack.write_state()  # stack.env: the function key the dashboard asks for (readable by you only)
        print(f"Functions host at {stack.functions_url}; logs in {stack.logs_dir}")

        dataset_dir = args.data_dir / "dataset"
        step(f"generating the dataset ({args.train} training, {args.test} test samples)", started)
        prepare_dataset(dataset_dir, args.train, args.test, args.epochs)

        settings = Settings(stack.functions_url, stack.functions_key, stack.connection_string,
                            "training-data", "demo")  # fmt: skip
        api = ApiClient(settings)
        step(
            f"uploading {shown(dataset_dir)} to training-data/{DATASET}/ (run.json last)",
            started,
        )
        upload_dataset(settings, dataset_dir, DATASET, stream=sys.stdout)

        step("waiting for the ingest function to create the run", started)
        run_id = wait_for_dataset_run(api, DATASET, timeout=120)
        dashboard = dashboard_url(stack, run_id)
        step(f"following run {run_id}; watch it in a browser: {dashboard}", started)
        print(key_hint(stack))
        record = watch_run(api, run_id, interval=1.0, timeout=args.timeout)
        if record.get("state") != "succeeded":
            errors = "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e)
                               for e in record.get("errors") or [])  # fmt: skip
            raise CliError(f"run {run_id} ended {record.get('state')}" + (f": {errors}" if errors else ""))

        step("output files", started)
        accuracy = report_outputs(api, record, args.data_dir / "outputs")
        print(f"\nfinal test accuracy: {accuracy:.2%}")
        print(f"\ndashboard of this run: {dashboard}\n{key_hint(stack)}")
        if args.keep_up:
            keep_up(stack)
        if accuracy < args.min_accuracy:
            raise CliError(f"test accuracy {accuracy:.2%} is below the {args.min_accuracy:.0%} target")
    except (CliError, StackError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        print(f"service logs: {stack.logs_dir}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        step("stopping the local stack", started)
        stack.stop()
        print(f"demo finished in {time.monotonic() - started:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
