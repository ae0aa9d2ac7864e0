"""Start and stop the local stack that stands in for Azure: Azurite, the Files and ARM emulators,
the local Functions host.

`python -m infra.local.stack up|down|status` is what `make up` / `make down` run. Tests use
`LocalStack` directly with free ports and a temporary data directory, so a developer's running
stack and the test suite never collide.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT / ".local"

# Azurite's published development account: public, documented, not a secret. A stack serves this
# name with a random key of its own (AZURITE_ACCOUNTS), so the published key opens nothing there.
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# The second account every storage service of a stack serves (blob, queue, table, file): a plain
# account name, for clients that refuse devstoreaccount1 (the quickstart's azure-storage-file).
NAMED_ACCOUNT = "batchailocal"
DEV_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
HOST = "127.0.0.1"

SERVICE_ORDER = ("azurite", "files", "arm", "functions", "eventgrid")
# Azurite keeps idle keep-alive sockets of SDK clients open and then waits out SIGTERM for ~15 s;
# its metadata autosaves every 5 s, so after 6 s nothing is lost by killing it.
SHUTDOWN_TIMEOUTS = {"azurite": 6.0}


@dataclass(frozen=True)
class Ports:
    blob: int = 10000
    queue: int = 10001
    table: int = 10002
    files: int = 10004
    arm: int = 10005
    functions: int = 7071
    eventgrid: int = 10006

    @classmethod
    def free(cls) -> Ports:
        """Ports free now: for tests that must not collide with `make up` (see ``free_port``)."""
        return cls(*free_ports(len(fields(cls))))


def _ephemeral_ports() -> range:
    """The ports the OS hands out as the source ports of outgoing connections."""
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(low, high + 1)


# Ports this process chose, each held by an exclusive lock on a file named after it until the
# process exits: another process (a second pytest worker, a benchmark) skips them even while the
# service they are for is not started yet.
_reserved: dict[int, int] = {}
_RESERVATIONS = Path(tempfile.gettempdir()) / "local-stack-ports"


def _reserve(port: int) -> bool:
    """Take this machine's reservation of ``port`` for this process (False: another process has it)."""
    _RESERVATIONS.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(_RESERVATIONS / str(port), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _reserved[port] = fd
    return True


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports a server can listen on, chosen at random below the OS's ephemeral
    range: a port the OS gives out for binding to port 0 lies inside that range, where any outgoing
    connection on the machine (thousands per second under a test suite) may take it as its source
    port before the server binds it, and the server then exits with EADDRINUSE. Each is reserved for
    this process (above), so parallel test workers never choose the same one; never the stack's
    default ports."""
    ephemeral = _ephemeral_ports()
    pool = range(15000, ephemeral.start) if ephemeral.start > 16000 else range(0)
    chosen: list[int] = []
    for _ in range(count):
        for _attempt in range(500):
            port = pool[secrets.randbelow(len(pool))] if pool else 0
            if port and port in _reserved:
                continue
            with contextlib.closing(socket.socket()) as s:
                try:
                    s.bind((HOST, port))
                except OSError:
                    continue
                port = s.getsockname()[1]
            if port in _reserved or not _reserve(port):
                continue
            chosen.append(port)
            break
        else:
            raise StackError(f"no free port found in {pool}")
    return chosen


def free_port() -> int:
    """One port a server can listen on (see ``free_ports``)."""
    return free_ports(1)[0]


@dataclass(frozen=True)
class StackSecrets:
    """Every key and token of one stack, random per stack: the storage accounts the storage services
    serve (name -> base64 key), the ARM emulator's bearer token and the function key. The one place
    the accounts live: Azurite and the Files emulator (and the ARM emulator, for ARM's view of the
    accounts) are all given `azurite_accounts`."""

    account_keys: Mapping[str, str]
    arm_token: str
    functions_key: str
    blobs_extension_key: str  # the Functions host's blobs_extension system key (Event Grid webhook)

    @classmethod
    def generate(cls) -> StackSecrets:
        return cls(
            account_keys={
                name: base64.b64encode(secrets.token_bytes(64)).decode()
                for name in (DEV_ACCOUNT, NAMED_ACCOUNT)
            },
            arm_token=secrets.token_urlsafe(32),
            functions_key=secrets.token_urlsafe(32),
            blobs_extension_key=secrets.token_urlsafe(32),
        )

    @property
    def azurite_accounts(self) -> str:
        """Azurite's `AZURITE_ACCOUNTS` format: `name:key;name:key`."""
        return ";".join(f"{name}:{key}" for name, key in self.account_keys.items())

    def __repr__(self) -> str:
        return f"StackSecrets(accounts={list(self.account_keys)}, ...)"


@dataclass
class LocalStack:
    """One local stack: which ports, which data directory, which keys, which processes it started."""

    data_dir: Path = DEFAULT_DATA_DIR
    ports: Ports = field(default_factory=Ports)
    secrets: StackSecrets = field(default_factory=StackSecrets.generate)
    extra_env: Mapping[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def functions_key(self) -> str:
        return self.secrets.functions_key

    @property
    def blobs_extension_key(self) -> str:
        return self.secrets.blobs_extension_key

    @property
    def arm_token(self) -> str:
        return self.secrets.arm_token

    # --- endpoints -------------------------------------------------------------------------------
    @property
    def blob_endpoint(self) -> str:
        return f"http://{HOST}:{self.ports.blob}/{DEV_ACCOUNT}"

    @property
    def queue_endpoint(self) -> str:
        return f"http://{HOST}:{self.ports.queue}/{DEV_ACCOUNT}"

    @property
    def table_endpoint(self) -> str:
        return f"http://{HOST}:{self.ports.table}/{DEV_ACCOUNT}"

    @property
    def file_endpoint(self) -> str:
        return f"http://{HOST}:{self.ports.files}/{DEV_ACCOUNT}"

    def account_connection_string(self, account: str = DEV_ACCOUNT) -> str:
        """A full connection string (blob, queue, table and file endpoints) of one of the stack's
        storage accounts, with its key."""
        key = self.secrets.account_keys[account]
        p = self.ports
        return (
            f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};"
            f"BlobEndpoint=http://{HOST}:{p.blob}/{account};QueueEndpoint=http://{HOST}:{p.queue}/{account};"
            f"TableEndpoint=http://{HOST}:{p.table}/{account};FileEndpoint=http://{HOST}:{p.files}/{account};"
        )

    @property
    def arm_endpoint(self) -> str:
        return f"http://{HOST}:{self.ports.arm}"

    @property
    def functions_url(self) -> str:
        return f"http://{HOST}:{self.ports.functions}"

    @property
    def connection_string(self) -> str:
        """devstoreaccount1 with this stack's key."""
        return self.account_connection_string(DEV_ACCOUNT)

    @property
    def named_connection_string(self) -> str:
        """The named second account (NAMED_ACCOUNT) with its key."""
        return self.account_connection_string(NAMED_ACCOUNT)

    @property
    def files_root(self) -> Path:
        """Where the Files emulator keeps share bytes: `<files_root>/<account>/<share>/<path>`."""
        return self.data_dir / "files" / "shares"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    def env(self) -> dict[str, str]:
        """What `.local/stack.env` holds: how a client reaches this stack, keys included."""
        return {
            "AZURE_STORAGE_CONNECTION_STRING": self.connection_string,
            "NAMED_STORAGE_ACCOUNT": NAMED_ACCOUNT,
            "NAMED_STORAGE_ACCOUNT_KEY": self.secrets.account_keys[NAMED_ACCOUNT],
            "NAMED_STORAGE_CONNECTION_STRING": self.named_connection_string,
            "AZURITE_ACCOUNTS": self.secrets.azurite_accounts,
            "ARM_ENDPOINT": self.arm_endpoint,
            "AZURE_SUBSCRIPTION_ID": DEV_SUBSCRIPTION,
            "LOCAL_ARM_TOKEN": self.arm_token,
            "FUNCTIONS_URL": self.functions_url,
            "FUNCTIONS_KEY": self.functions_key,
            "BLOBS_EXTENSION_KEY": self.blobs_extension_key,
        }

    @property
    def training_container(self) -> str:
        return self.extra_env.get("TRAINING_CONTAINER") or "training-data"

    def ingest_webhook(self, function: str = "ingest") -> str:
        """The blob extension's webhook for `function`, with its key, as Event Grid calls it."""
        return (
            f"{self.functions_url}/runtime/webhooks/blobs?functionName=Host.Functions.{function}"
            f"&code={self.blobs_extension_key}"
        )

    def event_subscriptions(self) -> list[dict[str, object]]:
        """What infra/azure/modules/ingest-events.bicep subscribes in Azure: BlobCreated events of
        the training container to the ingest function, dead letters in `eventgrid-deadletter`."""
        return [
            {
                "name": f"ingest-{self.training_container}",
                "container": self.training_container,
                "endpoint": self.ingest_webhook(),
                "dead_letter_container": "eventgrid-deadletter",
            }
        ]

    def app_settings(self) -> dict[str, str]:
        """App settings that point the function app at this stack. The host reads the rest from
        local.settings.json (else the example); the process environment wins, as in Azure."""
        return {
            "AzureWebJobsStorage": self.connection_string,
            "STORAGE_CONNECTION_STRING": self.connection_string,
            "ARM_ENDPOINT": self.arm_endpoint,
            "AZURE_SUBSCRIPTION_ID": DEV_SUBSCRIPTION,
            "AZURE_CREDENTIAL": "local-dev-token",
            "LOCAL_ARM_TOKEN": self.arm_token,
            "FUNCTIONS_KEY": self.functions_key,
            "FUNCTIONS_BLOBS_EXTENSION_KEY": self.blobs_extension_key,
        }

    # --- service commands ------------------------------------------------------------------------
    def command(self, name: str) -> tuple[list[str], list[int]]:
        """The command line that runs one service, and the ports that answer when it is up."""
        py = sys.executable
        p = self.ports
        if name == "azurite":
            azurite = REPO_ROOT / "node_modules" / ".bin" / "azurite"
            if not azurite.exists():
                raise StackError("Azurite is not installed: run `npm ci` (make setup) first")
            cmd = [
                str(azurite), "--silent", "--skipApiVersionCheck", "--loose",
                "--location", str(self.data_dir / "azurite"),
                "--blobHost", HOST, "--blobPort", str(p.blob),
                "--queueHost", HOST, "--queuePort", str(p.queue),
                "--tableHost", HOST, "--tablePort", str(p.table),
            ]  # fmt: skip
            return cmd, [p.blob, p.queue, p.table]
        if name == "files":
            cmd = [py, "-m", "infra.local.files", "--host", HOST, "--port", str(p.files),
                   "--data-dir", str(self.data_dir / "files")]  # fmt: skip
            return cmd, [p.files]
        if name == "arm":
            cmd = [py, "-m", "infra.local.arm", "--host", HOST, "--port", str(p.arm),
                   "--data-dir", str(self.data_dir / "arm"), "--files-root", str(self.files_root),
                   "--files-endpoint", self.file_endpoint, "--blob-endpoint", self.blob_endpoint,
                   "--queue-endpoint", self.queue_endpoint,
                   "--table-endpoint", self.table_endpoint]  # fmt: skip
            return cmd, [p.arm]
        if name == "functions":
            cmd = [py, "-m", "infra.local.funchost", "--app-dir", str(REPO_ROOT), "--host", HOST,
                   "--port", str(p.functions)]  # fmt: skip
            return cmd, [p.functions]
        if name == "eventgrid":
            subscriptions = self.data_dir / "eventgrid-subscriptions.json"
            subscriptions.parent.mkdir(parents=True, exist_ok=True)
            private_dir(subscriptions.parent)
            write_private(subscriptions, json.dumps(self.event_subscriptions()))  # webhook keys inside
            cmd = [py, "-m", "infra.local.eventgrid", "--host", HOST, "--port", str(p.eventgrid),
                   "--subscriptions", str(subscriptions)]  # fmt: skip
            return cmd, [p.eventgrid]
        raise StackError(f"unknown service {name!r}; known: {', '.join(SERVICE_ORDER)}")

    def service_env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in STACK_SECRET_VARIABLES}
        env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        if name in ("azurite", "files", "arm"):
            env["AZURITE_ACCOUNTS"] = self.secrets.azurite_accounts
        if name == "arm":
            env["ARM_EMULATOR_TOKEN"] = self.arm_token
        if name == "functions":
            env.update({k: v for k, v in self.env().items() if k not in STACK_SECRET_VARIABLES})
            env.update(self.app_settings())
        if name == "eventgrid":
            env["EVENTGRID_STORAGE_CONNECTION_STRING"] = self.connection_string
        env.update(self.extra_env)
        return env

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self, services: Iterable[str] = SERVICE_ORDER, timeout: float = 60.0) -> None:
        private_dir(self.data_dir)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        for name in services:
            cmd, ports = self.command(name)
            for port in ports:
                if port_open(port):
                    raise StackError(f"port {port} for {name} is already in use by another process")
            self.processes[name] = launch(
                name, cmd, ports, self.logs_dir / f"{name}.log", env=self.service_env(name), timeout=timeout
            )

    def stop(self, timeout: float = 15.0) -> None:
        for name in reversed(list(self.processes)):
            stop_process(self.processes.pop(name), SHUTDOWN_TIMEOUTS.get(name, timeout))

    def write_state(self) -> None:
        """Record pids and the env file so that `down` (another process) stops exactly these. The env
        file holds the stack's keys: only the user can read it, in a directory only the user can
        enter."""
        private_dir(self.data_dir)
        write_private(self.data_dir / "stack.env", "".join(f"{k}={v}\n" for k, v in self.env().items()))
        pids = {name: proc.pid for name, proc in self.processes.items()}
        (self.data_dir / "stack.pids.json").write_text(json.dumps(pids))


# Stack keys that only the service that needs them is given (the function app gets connection strings
# and its own key, not every account's key nor the ARM emulator's configuration).
STACK_SECRET_VARIABLES = frozenset(
    {"AZURITE_ACCOUNTS", "ARM_EMULATOR_TOKEN", "NAMED_STORAGE_ACCOUNT_KEY", "NAMED_STORAGE_CONNECTION_STRING"}
)


class StackError(RuntimeError):
    pass


def private_dir(path: Path) -> None:
    """Create `path` (and parents) and make it 0700: the stack's keys and state live under it."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)


def write_private(path: Path, text: str) -> None:
    """Write `text` to a file only the user can read, never readable by others even for a moment."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def port_open(port: int, host: str = HOST) -> bool:
    with contextlib.closing(socket.socket()) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def launch(
    name: str,
    cmd: list[str],
    ports: Iterable[int],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> subprocess.Popen:
    """Start one server in its own process group, its output appended to `log_path`, and return once
    every port answers; a server that exits or stays silent is a StackError with its log's tail."""
    ports = list(ports)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=dict(env) if env is not None else None, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while not all(port_open(port) for port in ports):
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise StackError(f"{name} exited with {proc.returncode} at start:\n{tail}")
        if time.monotonic() > deadline:
            stop_process(proc)
            raise StackError(f"{name} did not answer on {ports} within {timeout:.0f}s")
        time.sleep(0.05)
    return proc


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the service's process group, then SIGKILL what is left after `timeout`."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def up(data_dir: Path) -> int:
    pids_file = data_dir / "stack.pids.json"
    if pids_file.exists():
        pids = json.loads(pids_file.read_text())
        if pids and all(_pid_alive(pid) for pid in pids.values()):
            print(f"local stack already up ({', '.join(pids)}); settings in {data_dir / 'stack.env'}")
            return 0
        down(data_dir)
    stack = LocalStack(data_dir=data_dir)
    try:
        stack.start()
    except StackError as exc:
        stack.stop()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stack.write_state()
    for name, proc in stack.processes.items():
        print(f"{name:<10} pid {proc.pid}")
    print(f"local stack up; settings in {data_dir / 'stack.env'}, logs in {stack.logs_dir}")
    return 0


def down(data_dir: Path) -> int:
    pids_file = data_dir / "stack.pids.json"
    if not pids_file.exists():
        print("local stack is not up")
        return 0
    pids = json.loads(pids_file.read_text())
    for name, pid in reversed(list(pids.items())):
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + SHUTDOWN_TIMEOUTS.get(name, 15.0)
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            print(f"stopped {name} (pid {pid})")
    pids_file.unlink()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.stack", description=__doc__)
    parser.add_argument("action", choices=["up", "down", "env"])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    args = parser.parse_args(argv)
    if args.action == "up":
        return up(args.data_dir)
    if args.action == "down":
        return down(args.data_dir)
    env_file = args.data_dir / "stack.env"
    if not env_file.exists():  # the keys are the running stack's: there is nothing to print without one
        print(f"local stack is not up (no {env_file}); run `make up`", file=sys.stderr)
        return 1
    print(env_file.read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
