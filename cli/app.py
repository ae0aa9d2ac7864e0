"""`python -m cli`: upload datasets, start, watch and tear down training runs, list clusters.

Settings come from the environment or `.local/stack.env` (written by `make up`): FUNCTIONS_URL,
FUNCTIONS_KEY, AZURE_STORAGE_CONNECTION_STRING, and optionally TRAINING_CONTAINER.
Errors are one line on stderr and exit status 1; a watched run that fails exits 1 too.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cli.client import ApiClient, CliError, Settings
from cli.upload import MANIFEST, upload_dataset
from cli.watch import wait_for_dataset_run, watch_run

PROG = "python -m cli"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog="Run `%(prog)s COMMAND --help` for a command's options.",
    )
    parser.add_argument("--env-file", type=Path, help="settings file (default: .local/stack.env)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser(
        "upload",
        help="upload a dataset folder to the training-data container",
        description="Upload every file of DIR as <dataset>/<path> to the training-data "
        f"container, with a progress bar; {MANIFEST} last, so the run starts when the data "
        "is complete.",
    )
    p.add_argument("directory", type=Path, metavar="DIR", help="the dataset folder")
    p.add_argument(
        "--dataset",
        required=True,
        help="dataset name (the blob prefix; each run gets its own snapshot on the share)",
    )
    p.add_argument("--watch", action="store_true", help="then follow the run the upload starts")

    p = commands.add_parser(
        "start",
        help="start a run over HTTP on a dataset",
        description="Start a run on a dataset already staged, or staged first from a "
        "blob prefix (--stage-from-prefix).",
    )
    p.add_argument("dataset", help="dataset name")
    p.add_argument("--spec", type=Path, help="run spec JSON file (same schema as run.json; default: {})")
    p.add_argument("--stage-from-prefix", help="blob prefix in the training container to stage first")
    p.add_argument("--idempotency-key", help="the same key and body give the same run")
    p.add_argument("--watch", action="store_true", help="then follow the run to its end")

    p = commands.add_parser(
        "resubmit",
        help="start a finished run again on the same snapshot",
        description="Start a new run with a finished run's spec on the same snapshot (nothing is "
        "copied); --spec gives run spec fields that replace the run's. Refused once cleanup "
        "deleted the snapshot. A sweep's parent runs its failed and cancelled trials again "
        "under it instead (no --spec).",
    )
    p.add_argument("run_id", metavar="RUN_ID", help="the finished run")
    p.add_argument("--spec", type=Path, help="JSON file of run spec fields to override")
    p.add_argument("--idempotency-key", help="the same key gives the same run")
    p.add_argument("--watch", action="store_true", help="then follow the new run to its end")

    p = commands.add_parser(
        "watch",
        help="follow a run: states, cluster status, live stdout",
        description="Print state transitions with times, the cluster's status and the "
        "job's stdout as it grows; exit 0 when the run succeeds, 1 when it fails or is "
        "cancelled.",
    )
    p.add_argument("run_id", nargs="?", metavar="RUN_ID", help="the run (or use --dataset)")
    p.add_argument("--dataset", help="follow the newest run of this dataset (waits for it to appear)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls (default 2)")
    p.add_argument("--timeout", type=float, help="give up after this many seconds")
    p.add_argument("--no-logs", action="store_true", help="do not tail stdout")

    p = commands.add_parser("runs", help="list runs", description="List runs, oldest first.")
    p.add_argument("--state", help="only runs in this state (comma-separated for several)")
    p.add_argument("--dataset", help="only runs of this dataset")
    p.add_argument("--json", action="store_true", help="print the API's JSON")

    p = commands.add_parser(
        "outputs",
        help="list a run's output files, optionally download them",
        description="List the output files of a run (stdouterr, MODEL, ...) and "
        "download them with --download.",
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--download", type=Path, metavar="DIR", help="download into DIR/<directory id>/<name>")

    p = commands.add_parser(
        "callback-secret",
        help="the callback signing secret of a run started by an upload (given once)",
        description="POST /api/runs/RUN_ID/callback-secret: print the run's callback signing secret. "
        "The API gives it once; an HTTP start (`start`) prints it instead.",
    )
    p.add_argument("run_id", metavar="RUN_ID")

    p = commands.add_parser(
        "teardown",
        help="cancel a run: terminate and delete its job",
        description="Terminate and delete the run's job (run becomes cancelled).",
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--cluster", action="store_true", help="also delete its cluster if no other run uses it")

    commands.add_parser(
        "clusters",
        help="list clusters with their status",
        description="List the workspace's clusters in the quickstart's status format.",
    )

    p = commands.add_parser(
        "delete-cluster",
        help="delete a cluster",
        description="Delete a cluster; refused (409) while runs use it, unless --force.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--force", action="store_true", help="delete even while runs use it")

    commands.add_parser(
        "health",
        help="check the function app, storage and ARM",
        description="GET /api/health/deep (function key; cached 30 s): exit 0 when everything answers.",
    )
    return parser


# --- commands ----------------------------------------------------------------------------------------


def cmd_upload(args: argparse.Namespace, settings: Settings) -> int:
    api = ApiClient(settings) if args.watch else None
    known = (
        {r["id"] for r in api.list_runs(dataset=args.dataset, limit=1000).get("runs", [])} if api else set()
    )
    items = upload_dataset(settings, args.directory, args.dataset)
    total = sum(item.size for item in items)
    has_manifest = items[-1].blob_name == f"{args.dataset}/{MANIFEST}"
    print(f"uploaded {len(items)} files ({total / 1e6:.1f} MB) to {settings.container}/{args.dataset}/")
    if not has_manifest:
        print(
            f"no {MANIFEST} in {args.directory}: ingest stages the files; start a run with "
            f"`{PROG} start {args.dataset}`"
        )
    if api is None:
        return 0
    run_id = wait_for_dataset_run(api, args.dataset, newer_than=known)
    return finish(watch_run(api, run_id))


def cmd_start(args: argparse.Namespace, settings: Settings) -> int:
    api = ApiClient(settings)
    body: dict[str, Any] = {"dataset": args.dataset}
    if args.spec:
        try:
            body["spec"] = json.loads(args.spec.read_text(encoding="utf-8"))
        except OSError as exc:
            raise CliError(f"cannot read {args.spec}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise CliError(f"{args.spec} is not valid JSON: {exc}") from None
    if args.stage_from_prefix:
        body["stage_from_prefix"] = args.stage_from_prefix
    run = api.start_run(body, args.idempotency_key)
    print(f"run {run['id']} on dataset {run.get('dataset')}: {run.get('state')}")
    if run.get("callback_secret"):  # given in this answer only: the receiver verifies with it
        print(f"callback secret (keep it for the receiver; not shown again): {run['callback_secret']}")
    if args.watch:
        return finish(watch_run(api, run["id"]))
    print(f"follow it with `{PROG} watch {run['id']}`")
    return 0


def resubmitted_line(run_id: str, run: dict[str, Any]) -> str:
    """What a resubmit did: a new run, or (a sweep) which of its trials run again under it."""
    rounds = (run.get("sweep") or {}).get("resubmits") or []
    if run.get("id") != run_id or not rounds:
        return f"run {run_id} resubmitted as {run['id']}: {run.get('state')}"
    last = rounds[-1]
    # the new attempts' ids, as the app derives them: <parent>-tNNN-r<round>
    reran = [f"{run_id}-t{int(index):03d}-r{last['round']}" for index in (last.get("reran") or {})]
    started = len(last.get("started") or [])
    parts = [f"{len(reran)} failed or cancelled trial(s) run again ({', '.join(reran) or 'none'})"]
    if started:
        parts.append(f"{started} never started now start")
    return f"sweep {run_id} resubmitted (round {last['round']}): {'; '.join(parts)}: {run.get('state')}"


def cmd_resubmit(args: argparse.Namespace, settings: Settings) -> int:
    api = ApiClient(settings)
    body: dict[str, Any] = {}
    if args.spec:
        try:
            body["overrides"] = json.loads(args.spec.read_text(encoding="utf-8"))
        except OSError as exc:
            raise CliError(f"cannot read {args.spec}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise CliError(f"{args.spec} is not valid JSON: {exc}") from None
    run = api.resubmit(args.run_id, body, args.idempotency_key)
    print(resubmitted_line(args.run_id, run))
    if args.watch:
        return finish(watch_run(api, run["id"]))
    print(f"follow it with `{PROG} watch {run['id']}`")
    return 0


def cmd_watch(args: argparse.Namespace, settings: Settings) -> int:
    if bool(args.run_id) == bool(args.dataset):
        raise CliError("give either RUN_ID or --dataset NAME")
    api = ApiClient(settings)
    run_id = args.run_id or wait_for_dataset_run(api, args.dataset)
    record = watch_run(api, run_id, interval=args.interval, timeout=args.timeout, logs=not args.no_logs)
    return finish(record)


def finish(record: dict[str, Any]) -> int:
    """Summarise a terminal run; 0 only when it succeeded."""
    state = record.get("state")
    times = record.get("times") or {}
    print(
        f"run {record.get('id')} {state}"
        + (f" (exit code {record['exit_code']})" if record.get("exit_code") is not None else "")
    )
    if times:
        print("  " + ", ".join(f"{name} {at}" for name, at in times.items()))
    for error in record.get("errors") or []:
        text = error.get("message") if isinstance(error, dict) else error
        code = error.get("code") if isinstance(error, dict) else None
        print(f"  error: {code + ': ' if code else ''}{text}")
    outputs = record.get("output_files") or []
    if outputs:
        print(f"  {len(outputs)} output files: `{PROG} outputs {record.get('id')}`")
    if state != "succeeded":
        raise CliError(f"run {record.get('id')} ended {state}")
    return 0


def cmd_runs(args: argparse.Namespace, settings: Settings) -> int:
    api = ApiClient(settings)
    runs: list[dict[str, Any]] = []
    continuation = None
    while True:
        page = api.list_runs(state=args.state, dataset=args.dataset, limit=1000, continuation=continuation)
        runs.extend(page.get("runs") or [])
        continuation = page.get("continuation")
        if not continuation:
            break
    if args.json:
        print(json.dumps(runs, indent=2))
        return 0
    if not runs:
        print("no runs")
        return 0
    rows = [(r.get("id", ""), r.get("dataset", ""), r.get("state", ""), r.get("cluster") or "-",
             r.get("created_at") or "-", "" if r.get("exit_code") is None else str(r["exit_code"]))
            for r in runs]  # fmt: skip
    print_table(("RUN", "DATASET", "STATE", "CLUSTER", "CREATED", "EXIT"), rows)
    return 0


def cmd_outputs(args: argparse.Namespace, settings: Settings) -> int:
    api = ApiClient(settings)
    record = api.get_run(args.run_id)
    files = [f for f in record.get("output_files") or [] if not f.get("is_directory")]
    if not files:
        print(f"run {args.run_id} ({record.get('state')}) has no output files yet")
        return 0
    rows = [(f.get("directory_id", ""), f.get("name", ""), "-" if f.get("size") is None else str(f["size"]))
            for f in files]  # fmt: skip
    print_table(("DIRECTORY", "NAME", "BYTES"), rows)
    if args.download:
        for f in files:
            target = download_output(api, f, args.download)
            print(f"downloaded {target}")
    return 0


def download_output(api: ApiClient, output: dict[str, Any], directory: Path) -> Path:
    """Fetch one output file from its (short-lived, signed) download URL; never writes outside DIR."""
    url = output.get("download_url")
    name = str(output.get("name") or "")
    parts = [p for p in f"{output.get('directory_id') or 'output'}/{name}".split("/") if p]
    if not url or not name or any(p in (".", "..") for p in parts):
        raise CliError(f"output {name!r} has no usable download URL")
    target = directory.joinpath(*parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    import requests

    try:
        with requests.get(url, stream=True, timeout=60) as response:
            if response.status_code != 200:
                raise CliError(f"download of {name} failed: HTTP {response.status_code}")
            with target.open("wb") as f:
                for chunk in response.iter_content(1024 * 1024):
                    f.write(chunk)
    except requests.RequestException as exc:
        raise CliError(f"download of {name} failed: {type(exc).__name__}") from None
    return target


def cmd_callback_secret(args: argparse.Namespace, settings: Settings) -> int:
    """The signing secret of a run started by an upload; the API gives it once."""
    print(ApiClient(settings).callback_secret(args.run_id))
    return 0


def cmd_teardown(args: argparse.Namespace, settings: Settings) -> int:
    """Print the run's state and the API's own account of what it did (its `message`: a cluster
    being deleted is `deleting`, never claimed deleted)."""
    result = ApiClient(settings).delete_run(args.run_id, cluster=args.cluster)
    message = f" ({result['message']})" if result.get("message") else ""
    print(f"run {result.get('id', args.run_id)}: {result.get('state')}{message}")
    return 0


def cmd_clusters(args: argparse.Namespace, settings: Settings) -> int:
    from cli.watch import cluster_idle_line, cluster_status_line

    clusters = ApiClient(settings).clusters()
    if not clusters:
        print("no clusters")
    for cluster in clusters:
        users = ", ".join(cluster.get("active_runs") or []) or "none"
        print(
            f"{cluster.get('name')} ({cluster.get('vm_size') or '?'}, {cluster.get('vm_priority') or '?'}; "
            f"provisioning {cluster.get('provisioning_state') or '?'}; active runs: {users})"
        )
        print(f"  {cluster_status_line(cluster)}")
        print(f"  {cluster_idle_line(cluster)}")
    return 0


def cmd_delete_cluster(args: argparse.Namespace, settings: Settings) -> int:
    """Print what the API answered: deletion is long-running, so the cluster is `deleting`, not gone."""
    result = ApiClient(settings).delete_cluster(args.name, force=args.force)
    state = "deleting" if result.get("deleting") else "deleted" if result.get("deleted") else "unchanged"
    line = f"cluster {result.get('name', args.name)}: {state}"
    if result.get("cancelled_runs"):
        line += f" (cancelled runs: {', '.join(result['cancelled_runs'])})"
    print(line)
    return 0


def cmd_health(args: argparse.Namespace, settings: Settings) -> int:
    status, body = ApiClient(settings).health()
    print(f"{body.get('status', status)}")
    for name, check in (body.get("checks") or {}).items():
        mark = "ok  " if check.get("ok") else "FAIL"
        print(f"  {mark} {name}: {check.get('message', '')}")
    if status != 200 or body.get("status") not in ("ok", None):
        raise CliError(f"health is {body.get('status', status)}")
    return 0


COMMANDS = {
    "upload": cmd_upload, "start": cmd_start, "watch": cmd_watch, "runs": cmd_runs, "outputs": cmd_outputs,
    "teardown": cmd_teardown, "clusters": cmd_clusters, "delete-cluster": cmd_delete_cluster,
    "health": cmd_health, "callback-secret": cmd_callback_secret, "resubmit": cmd_resubmit,
}  # fmt: skip


def print_table(headers: tuple[str, ...], rows: Sequence[tuple[object, ...]]) -> None:
    """Columns padded to their widest value (each value printed with str())."""
    widths = [max(len(str(v)) for v in column) for column in zip(headers, *rows, strict=True)]
    for row in (headers, *rows):
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.load(args.env_file)
        return COMMANDS[args.command](args, settings)
    except CliError as exc:
        sys.stdout.flush()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
