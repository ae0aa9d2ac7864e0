"""Run Batch AI jobs as local processes, the way a node ran them (minus the container).

One thread per running job: mount the job-level volumes, resolve and create the input/output/stdouterr
directories, run `jobPreparation` (bash), then the toolkit's processes, each in its own process group so
that terminate and maxWallClockTime stop the whole tree. The container image is recorded on the job,
never pulled.

Environment of every process (beyond the emulator's own environment):
- AZ_BATCHAI_MOUNT_ROOT: the node's mount root; each cluster mount volume is a symlink
  `<relativeMountPath>` in it pointing at the share's directory (`<files-root>/<account>/<share>`).
- AZ_BATCHAI_JOB_MOUNT_ROOT: the job's mount root (job-level mountVolumes).
- AZ_BATCHAI_JOB_TEMP_DIR (all jobs' temp dirs on the node), AZ_BATCHAI_JOB_TEMP (this job's, also the
  working directory), AZ_BATCHAI_SHARED_JOB_TEMP, AZ_BATCHAI_MPI_HOST_FILE (`localhost slots=N`).
- AZ_BATCHAI_INPUT_<ID>, AZ_BATCHAI_OUTPUT_<ID> (`<pathPrefix>/<jobOutputDirectoryPathSegment>/outputs/
  <pathSuffix>`), AZ_BATCHAI_STDOUTERR_DIR (`<stdOutErrPathPrefix>/<segment>/stdouterr`).
- AZ_BATCHAI_NUM_GPUS=0 (no GPU here), AZ_BATCHAI_NODE_IP / AZ_BATCHAI_JOB_MASTER_NODE_IP=127.0.0.1,
  AZ_BATCHAI_CLUSTER_NAME, AZ_BATCHAI_JOB_NAME, AZ_BATCHAI_EXPERIMENT_NAME, AZ_BATCHAI_WORKSPACE_NAME,
  AZ_BATCHAI_RESOURCE_GROUP, AZ_BATCHAI_JOB_IMAGE (the recorded container image, if any).
- Rank variables for each of the N processes (N = processCount, default nodeCount; TensorFlow: parameter
  servers + workers): AZ_BATCHAI_TASK_INDEX, OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK/LOCAL_SIZE,
  PMI_RANK/PMI_SIZE, RANK/WORLD_SIZE/LOCAL_RANK, MASTER_ADDR/MASTER_PORT (PyTorch-style rendezvous);
  TensorFlow also AZ_BATCHAI_PS_HOSTS, AZ_BATCHAI_WORKER_HOSTS and TF_CONFIG; PyTorch also
  AZ_BATCHAI_PYTORCH_INIT_METHOD (a `file://` rendezvous in the job's shared temp directory). An Azure
  ML distribution (the job's meta `processes_per_node`) lays the ranks out over nodes: LOCAL_RANK and
  the OMPI local rank/size per node, and NODE_RANK and LOCAL_WORLD_SIZE too.
- The job's environmentVariables and secrets ($VARS in their values expanded).
`$VAR`/`${VAR}` in paths are expanded with that environment; a Python toolkit's script path and
arguments with each process's own (rank variables included) at its launch.
stdout/stderr go where Batch AI wrote them: PyTorch `stdout-<rank>.txt`, TensorFlow `stdout-wk-<i>.txt`
and `stdout-ps-<i>.txt`, every other toolkit `stdout.txt` for all its processes (likewise stderr); the
preparation task's to `stdout-job_prep.txt`/`stderr-job_prep.txt`. A job whose process fails names it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.local.arm import blobfs
from infra.local.arm.blobfs import BlobMount
from infra.local.arm.errors import resource_error

KILL_GRACE_SECONDS = 2.0

# Environment of the emulator process that its jobs do not inherit.
EMULATOR_SECRET_VARIABLES = frozenset({"AZURITE_ACCOUNTS", "ARM_EMULATOR_TOKEN"})


_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def expand_vars(text: str, env: dict[str, str]) -> str:
    """Expand `$VAR` and `${VAR}` as the service did before handing paths to the node; unknown
    variables stay as written (a shell may still expand them)."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return env.get(name, m.group(0))

    return _VAR.sub(repl, text)


def _no_volumes(
    volumes: dict[str, Any], mount_root: Path, blob_mounts: list[BlobMount]
) -> list[dict[str, Any]]:
    return []


def _ignore_launch(key: str, job_uuid: str, pid: int) -> None:
    return None


@dataclass(frozen=True)
class JobCallbacks:
    """How the runner reports to whoever owns the jobs (the Batch AI backend, the Azure ML provider):
    the runner keeps only its processes and threads, and never reads or writes its owner's state.

    - `exited(key, exit_code, errors)`: every process of the job has exited (not called at shutdown:
      the owner reports those jobs after its restart); `exit_code` None when none ran.
    - `launched(key, job_uuid, pid)`: a process started (the owner records it to stop orphans after a
      crash).
    - `mount_volumes(volumes, mount_root, blob_mounts)`: make the job-level mount volumes under
      `mount_root`; the errors the service reports for mounts that failed.
    """

    exited: Callable[[str, int | None, list[dict[str, Any]]], None]
    launched: Callable[[str, str, int], None] = _ignore_launch
    mount_volumes: Callable[[dict[str, Any], Path, list[BlobMount]], list[dict[str, Any]]] = _no_volumes


@dataclass(frozen=True)
class NodeBlobMounts:
    """The container mounts of the node a job runs on, which the job's end writes back: `read` gives
    them (as the owner last stored them), `written` stores them after the write-back."""

    read: Callable[[], list[BlobMount]]
    written: Callable[[list[BlobMount]], None]


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exit_code(returncode: int) -> int:
    """A process killed by signal N reports 128+N, as a shell on the node would."""
    return 128 - returncode if returncode < 0 else returncode


class JobRunner:
    """Runs jobs' processes; reports what happens through `callbacks`."""

    def __init__(self, callbacks: JobCallbacks, python: str = "") -> None:
        self.callbacks = callbacks
        self._python = python
        self.lock = threading.Lock()
        self.procs: dict[str, list[subprocess.Popen]] = {}
        self.killed: set[str] = set()
        self.threads: dict[str, threading.Thread] = {}
        self.shutting_down = False

    @property
    def python(self) -> str:
        return self._python or sys.executable

    # --- launch ----------------------------------------------------------------------------------
    def start(
        self,
        key: str,
        job: dict[str, Any],
        mount_root: Path,
        node_dir: Path,
        node_mounts: NodeBlobMounts | None = None,
    ) -> dict[str, Any]:
        """Resolve the job's paths and environment, then run it in a thread. `job` is the job's
        `body` and `meta` (read only). Returns the resolved paths: `stdouterr`, `outputs` (id -> path)
        and `job_temp`."""
        props, meta = job["body"]["properties"], job["meta"]
        parts = props["jobOutputDirectoryPathSegment"].split("/")
        job_temp = node_dir / "jobs" / meta["uuid"]
        job_mount_root = job_temp / "mounts"
        for path in (mount_root, job_temp / "shared", job_mount_root):
            path.mkdir(parents=True, exist_ok=True)
        env = {
            "AZ_BATCHAI_MOUNT_ROOT": str(mount_root),
            "AZ_BATCHAI_JOB_MOUNT_ROOT": str(job_mount_root),
            "AZ_BATCHAI_JOB_TEMP_DIR": str(node_dir / "jobs"),
            "AZ_BATCHAI_JOB_TEMP": str(job_temp),
            "AZ_BATCHAI_SHARED_JOB_TEMP": str(job_temp / "shared"),
            "AZ_BATCHAI_MPI_HOST_FILE": str(job_temp / "hostfile"),
            "AZ_BATCHAI_NUM_GPUS": "0",
            "AZ_BATCHAI_NODE_IP": "127.0.0.1",
            "AZ_BATCHAI_JOB_MASTER_NODE_IP": "127.0.0.1",
            "AZ_BATCHAI_CLUSTER_NAME": props["cluster"]["id"].rstrip("/").rsplit("/", 1)[-1],
            "AZ_BATCHAI_JOB_NAME": parts[7],
            "AZ_BATCHAI_EXPERIMENT_NAME": parts[5],
            "AZ_BATCHAI_WORKSPACE_NAME": parts[3],
            "AZ_BATCHAI_RESOURCE_GROUP": parts[1],
            "AZ_BATCHAI_EMULATOR_JOB": meta["uuid"],  # lets a restarted emulator find orphans safely
        }
        image = ((props.get("containerSettings") or {}).get("imageSourceRegistry") or {}).get("image")
        if image:
            env["AZ_BATCHAI_JOB_IMAGE"] = image
        # The request's volumes carry the credentials (the job's body shows them emptied).
        requested = ((meta.get("request") or {}).get("properties") or {}).get("mountVolumes")
        blob_mounts: list[BlobMount] = []
        mount_errors = self.callbacks.mount_volumes(
            requested or props.get("mountVolumes") or {}, job_mount_root, blob_mounts
        )
        for directory in props.get("inputDirectories") or []:
            env[f"AZ_BATCHAI_INPUT_{directory['id']}"] = expand_vars(directory["path"], env)
        segment = props["jobOutputDirectoryPathSegment"]
        outputs: dict[str, str] = {}
        for directory in props.get("outputDirectories") or []:
            prefix = Path(expand_vars(directory["pathPrefix"], env))
            path = prefix / segment / "outputs"
            if directory.get("pathSuffix"):
                path = path / expand_vars(directory["pathSuffix"], env).strip("/")
            env[f"AZ_BATCHAI_OUTPUT_{directory['id']}"] = str(path)
            outputs[directory["id"]] = str(path)
        stdouterr = (
            Path(expand_vars(props.get("stdOutErrPathPrefix") or str(job_temp), env)) / segment / "stdouterr"
        )
        env["AZ_BATCHAI_STDOUTERR_DIR"] = str(stdouterr)
        for var in props.get("environmentVariables") or []:
            env[var["name"]] = expand_vars(var.get("value", ""), env)
        for name, value in meta.get("secrets", {}).items():
            env[name] = expand_vars(value, env)
        errors = list(mount_errors)
        for path in [stdouterr, *map(Path, outputs.values())]:
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                errors.append(resource_error("OutputDirectoryCreationFailed", f"{path}: {exc}"))
        paths = {
            "stdouterr": os.path.realpath(stdouterr),
            "outputs": {k: os.path.realpath(v) for k, v in outputs.items()},
            "job_temp": str(job_temp),
        }
        plan = self._plan(meta["tool"], props, env, meta)
        with self.lock:
            self.killed.discard(key)
            self.procs[key] = []
        thread = threading.Thread(
            target=self._run,
            args=(
                key,
                env,
                plan,
                stdouterr,
                job_temp,
                props.get("jobPreparation"),
                errors,
                blob_mounts,
                node_mounts,
            ),
            name=f"job-{parts[7]}",
            daemon=True,
        )
        self.threads[key] = thread
        thread.start()
        return paths

    def _plan(
        self, tool: str, props: dict[str, Any], env: dict[str, str], meta: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """The processes to start: each {argv, env, waited} (parameter servers are not waited for).

        ``meta`` may carry ``processes_per_node`` (a `customMpi` job's ranks are laid out over nodes of
        that many processes: NODE_RANK, LOCAL_RANK, LOCAL_WORLD_SIZE as a PyTorch launcher sets them)
        and ``rank_logs`` (each rank writes its own ``stdout-<rank>.txt``): what Azure ML's
        distributions need from this runner; Batch AI bodies never carry either."""
        meta = meta or {}
        per_node = int(meta["processes_per_node"]) if meta.get("processes_per_node") else None
        node_count = int(props.get("nodeCount", 1))

        def python_argv(settings: dict[str, Any], args_key: str = "commandLineArgs") -> list[str]:
            """Interpreter, script and arguments, `$VARS` left for `_argv` to expand per process."""
            interpreter = settings.get("pythonInterpreterPath")
            if not interpreter or not Path(interpreter).is_file():
                interpreter = self.python
            return [interpreter, settings["pythonScriptFilePath"], settings.get(args_key) or ""]

        def bash(command: str) -> list[str]:
            return ["bash", "-c", command]

        def ranks(
            argv: list[str], count: int, per_rank_logs: bool = False, per_node: int | None = None
        ) -> list[dict[str, Any]]:
            python = argv[0] != "bash"
            port = _free_port()
            return [
                {
                    "argv": argv,
                    "python": python,
                    "env": _rank_env(rank, count, port, per_node),
                    "waited": True,
                    "label": f"rank {rank}",
                    "logs": str(rank) if per_rank_logs else "",
                }
                for rank in range(count)
            ]

        if tool == "cntk":
            s = props["cntkSettings"]
            count = int(s.get("processCount") or node_count)
            if s.get("pythonScriptFilePath") and (s.get("languageType") or "Python").lower() == "python":
                return ranks(python_argv(s), count)
            config = expand_vars(s.get("configFilePath") or "", env)
            args = expand_vars(s.get("commandLineArgs") or "", env)
            return ranks(bash(f"cntk configFile={shlex.quote(config)} {args}"), count)
        if tool == "caffe":
            s = props["caffeSettings"]
            count = int(s.get("processCount") or node_count)
            if s.get("pythonScriptFilePath"):
                return ranks(python_argv(s), count)
            config = expand_vars(s.get("configFilePath") or "", env)
            args = expand_vars(s.get("commandLineArgs") or "", env)
            return ranks(bash(f"caffe train --solver={shlex.quote(config)} {args}"), count)
        if tool in ("pytorch", "chainer", "horovod", "caffe2"):
            s = props[
                {
                    "pytorch": "pyTorchSettings",
                    "chainer": "chainerSettings",
                    "horovod": "horovodSettings",
                    "caffe2": "caffe2Settings",
                }[tool]
            ]
            count = int(s.get("processCount") or (1 if tool == "caffe2" else node_count))
            if tool != "pytorch":
                return ranks(python_argv(s), count)
            # Batch AI's PyTorch toolkit: one stdout-<rank>.txt per process (the PyTorch-GPU-Distributed-
            # Gloo recipe streams stdout-0.txt) and a shared file-system rendezvous for init_process_group.
            plan = ranks(python_argv(s), count, per_rank_logs=True)
            init = Path(env["AZ_BATCHAI_SHARED_JOB_TEMP"]) / f"pytorch_init_{time.time_ns()}"
            for step in plan:
                step["env"]["AZ_BATCHAI_PYTORCH_INIT_METHOD"] = init.as_uri()
            return plan
        if tool == "tensorflow":
            s = props["tensorFlowSettings"]
            workers = int(s.get("workerCount") or node_count)
            distributed = workers > 1 or node_count > 1 or bool(s.get("parameterServerCount"))
            if not distributed:  # the recipes stream stdout-wk-0.txt of a one-node job too
                (step,) = ranks(python_argv(s, "masterCommandLineArgs"), 1)
                return [{**step, "label": "worker 0 (master)", "logs": "wk-0"}]
            ps_count = int(s.get("parameterServerCount") or 1)
            ps_hosts = [f"127.0.0.1:{_free_port()}" for _ in range(ps_count)]
            worker_hosts = [f"127.0.0.1:{_free_port()}" for _ in range(workers)]
            common = {
                "AZ_BATCHAI_PS_HOSTS": ",".join(ps_hosts),
                "AZ_BATCHAI_WORKER_HOSTS": ",".join(worker_hosts),
            }
            plan = []
            for index in range(ps_count):
                tf_config = {
                    "cluster": {"ps": ps_hosts, "worker": worker_hosts},
                    "task": {"type": "ps", "index": index},
                    "environment": "cloud",
                }
                plan.append(
                    {
                        "argv": python_argv(s, "parameterServerCommandLineArgs"),
                        "python": True,
                        "env": {
                            **common,
                            "AZ_BATCHAI_TASK_INDEX": str(index),
                            "TF_CONFIG": json.dumps(tf_config),
                        },
                        "waited": False,
                        "label": f"parameter server {index}",
                        "logs": f"ps-{index}",
                    }
                )
            for index in range(workers):
                args_key = "masterCommandLineArgs" if index == 0 else "workerCommandLineArgs"
                if index and not s.get("workerCommandLineArgs"):
                    args_key = "masterCommandLineArgs"
                tf_config = {
                    "cluster": {"ps": ps_hosts, "worker": worker_hosts},
                    "task": {"type": "master" if index == 0 else "worker", "index": index},
                    "environment": "cloud",
                }
                plan.append(
                    {
                        "argv": python_argv(s, args_key),
                        "python": True,
                        "env": {
                            **common,
                            "AZ_BATCHAI_TASK_INDEX": str(index),
                            "TF_CONFIG": json.dumps(tf_config),
                        },
                        "waited": True,
                        "label": f"worker {index}" + (" (master)" if index == 0 else ""),
                        "logs": f"wk-{index}",
                    }
                )
            return plan
        if tool == "custommpi":
            s = props["customMpiSettings"]
            count = int(s.get("processCount") or node_count)
            return ranks(bash(s["commandLine"]), count, bool(meta.get("rank_logs")), per_node)
        command = (props.get("customToolkitSettings") or {}).get("commandLine") or "true"
        return ranks(bash(command), 1, per_node=per_node)

    # --- execution -------------------------------------------------------------------------------
    def _spawn(
        self, key: str, argv: list[str], env: dict[str, str], cwd: Path, out: Any, err: Any
    ) -> subprocess.Popen:
        with self.lock:
            if key in self.killed:
                raise _Killed
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            self.procs.setdefault(key, []).append(proc)
        self.callbacks.launched(key, env["AZ_BATCHAI_EMULATOR_JOB"], proc.pid)
        return proc

    def _run(
        self,
        key: str,
        env: dict[str, str],
        plan: list[dict[str, Any]],
        stdouterr: Path,
        cwd: Path,
        preparation: dict[str, Any] | None,
        errors: list[dict[str, Any]],
        blob_mounts: list[BlobMount] | None = None,
        node_mounts: NodeBlobMounts | None = None,
    ) -> None:
        exit_code: int | None = None
        mounted = False
        try:
            if errors:
                return
            for mount in blob_mounts or []:
                try:
                    blobfs.pull(mount)
                except blobfs.MountError as exc:
                    errors.append(exc.error)
                    return
                except Exception as exc:  # the job fails with the reason, never hangs
                    errors.append(blobfs.MountError(mount, f"unexpected failure: {exc!r}").error)
                    return
            mounted = True
            # The stack's keys and token are the emulator's, not the job's (in Azure a job sees none).
            inherited = {k: v for k, v in os.environ.items() if k not in EMULATOR_SECRET_VARIABLES}
            base_env = {**inherited, **env}
            (cwd / "hostfile").write_text(f"localhost slots={max(1, len(plan))}\n")
            if preparation:
                with (
                    open(stdouterr / "stdout-job_prep.txt", "ab") as out,
                    open(stdouterr / "stderr-job_prep.txt", "ab") as err,
                ):
                    proc = self._spawn(
                        key, ["bash", "-c", preparation["commandLine"]], base_env, cwd, out, err
                    )
                    code = _exit_code(proc.wait())
                if code != 0:
                    exit_code = code
                    errors.append(
                        resource_error(
                            "JobPreparationFailed", f"The job preparation task exited with code {code}."
                        )
                    )
                    return
            with contextlib.ExitStack() as files:
                streams: dict[str, tuple[Any, Any]] = {}
                procs = []
                for step in plan:
                    suffix = f"-{step['logs']}" if step.get("logs") else ""
                    if suffix not in streams:
                        streams[suffix] = (
                            files.enter_context(open(stdouterr / f"stdout{suffix}.txt", "ab")),
                            files.enter_context(open(stdouterr / f"stderr{suffix}.txt", "ab")),
                        )
                    out, err = streams[suffix]
                    step_env = {**base_env, **step["env"]}
                    argv = _argv(step, step_env)
                    procs.append((self._spawn(key, argv, step_env, cwd, out, err), step))
                exit_code, failed = self._wait(key, procs)
                if failed is not None:
                    count = sum(1 for _, step in procs if step["waited"])
                    suffix = f"-{failed['logs']}" if failed.get("logs") else ""
                    errors.append(
                        resource_error(
                            "JobFailed",
                            f"The job exited with non-zero exit code {exit_code}: "
                            f"{failed['label']} of {count} exited with code {exit_code} (its output: "
                            f"stdout{suffix}.txt, stderr{suffix}.txt); the job's other processes were "
                            "stopped.",
                        )
                    )
        except _Killed:
            exit_code = exit_code if exit_code is not None else 137
        except OSError as exc:
            errors.append(resource_error("JobLaunchFailed", f"Could not start the job's process: {exc}"))
        finally:
            if mounted and not self.shutting_down:
                errors.extend(self._write_back(blob_mounts or [], node_mounts))
            with self.lock:
                self.procs.pop(key, None)
                self.threads.pop(key, None)
            # At shutdown the job stays `running` in the saved state: the next start reports it failed
            # with an error saying why (see Backend._recover_after_restart).
            if not self.shutting_down:
                self.callbacks.exited(key, exit_code, errors)

    def _write_back(
        self, job_mounts: list[BlobMount], node_mounts: NodeBlobMounts | None
    ) -> list[dict[str, Any]]:
        """What the job wrote into blob containers (its own mounts and its node's) goes to the blobs."""
        on_node = node_mounts.read() if node_mounts else []
        errors = [error for mount in [*job_mounts, *on_node] for error in blobfs.push(mount)]
        if on_node and node_mounts:
            node_mounts.written(on_node)
        return errors

    def _wait(
        self, key: str, procs: list[tuple[subprocess.Popen, dict[str, Any]]]
    ) -> tuple[int, dict[str, Any] | None]:
        """Wait for the waited processes; the first non-zero exit stops the rest (as mpirun does).
        Returns the exit code and the step that failed first (None when all exited 0, or with more
        than one process none to name)."""
        result, first = 0, None
        while True:
            waited = [(p, step) for p, step in procs if step["waited"]]
            codes = [p.poll() for p, _ in waited]
            failed = [(c, step) for c, (_, step) in zip(codes, waited, strict=True) if c not in (None, 0)]
            if failed and result == 0:
                # Seen exiting in the same poll, a process killed by a signal is named before those
                # that then exited with an error (a lost peer fails every rank's collective).
                code, first = min(failed, key=lambda item: item[0] >= 0)
                result = _exit_code(code)
                self._signal_all([p for p, _ in procs], signal.SIGTERM)
            if all(c is not None for c in codes):
                break
            time.sleep(0.05)
        self._signal_all([p for p, step in procs if not step["waited"]], signal.SIGTERM)
        for proc, _ in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(KILL_GRACE_SECONDS)
        self._signal_all([p for p, _ in procs], signal.SIGKILL)
        if key in self.killed or len(procs) < 2:
            first = None  # a cancelled job, or a job of one process: nothing more to say than its code
        return result, first

    # --- stopping --------------------------------------------------------------------------------
    @staticmethod
    def _signal_all(procs: list[subprocess.Popen], sig: int) -> None:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)

    def kill(self, key: str) -> None:
        """Stop the job's whole process tree: SIGTERM to each process group, SIGKILL after a grace."""
        with self.lock:
            self.killed.add(key)
            procs = list(self.procs.get(key, []))
        if not procs:
            return
        self._signal_all(procs, signal.SIGTERM)

        def finish() -> None:
            time.sleep(KILL_GRACE_SECONDS)
            self._signal_all([p for p in procs if p.poll() is None], signal.SIGKILL)

        threading.Thread(target=finish, daemon=True).start()

    def kill_orphans(self, meta: dict[str, Any]) -> None:
        """After a restart: stop processes a previous emulator started for this job, if still alive (the
        job's id in the process environment proves the pid was not reused)."""
        marker = f"AZ_BATCHAI_EMULATOR_JOB={meta.get('uuid')}".encode()
        for pid in meta.get("pids") or []:
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)

    def shutdown(self) -> None:
        self.shutting_down = True
        with self.lock:
            keys = list(self.procs)
        for key in keys:
            self.kill(key)
        deadline = time.monotonic() + KILL_GRACE_SECONDS + 1
        for thread in list(self.threads.values()):
            thread.join(max(0.0, deadline - time.monotonic()))


class _Killed(Exception):
    pass


def _argv(step: dict[str, Any], env: dict[str, str]) -> list[str]:
    """A step's command line: a Python toolkit's script path and arguments expanded with the process's
    own environment (so `--rank $AZ_BATCHAI_TASK_INDEX` is each process's rank), as the node's shell
    did; bash command lines expand themselves."""
    if not step.get("python"):
        return list(step["argv"])
    interpreter, script, args = step["argv"]
    return [interpreter, expand_vars(script, env), *shlex.split(expand_vars(args, env))]


def _rank_env(rank: int, size: int, port: int, per_node: int | None = None) -> dict[str, str]:
    """A process's rank variables. With ``per_node`` the ranks are laid out over nodes of that many
    processes (rank r on node r // per_node, local rank r % per_node) and NODE_RANK/LOCAL_WORLD_SIZE
    are set too, as Azure ML's PyTorch distribution does; without it all ranks share one node."""
    local_size = per_node or size
    local = rank % local_size
    env = {
        "AZ_BATCHAI_TASK_INDEX": str(rank),
        "OMPI_COMM_WORLD_RANK": str(rank),
        "OMPI_COMM_WORLD_SIZE": str(size),
        "OMPI_COMM_WORLD_LOCAL_RANK": str(local),
        "OMPI_COMM_WORLD_LOCAL_SIZE": str(local_size),
        "PMI_RANK": str(rank),
        "PMI_SIZE": str(size),
        "RANK": str(rank),
        "WORLD_SIZE": str(size),
        "LOCAL_RANK": str(local),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    if per_node:
        env["NODE_RANK"] = str(rank // per_node)
        env["LOCAL_WORLD_SIZE"] = str(per_node)
    return env
