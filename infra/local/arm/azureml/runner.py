"""Azure ML command jobs as local processes, through the same job runner as Batch AI jobs.

Why an adapter: ``infra.local.arm.jobrunner.JobRunner`` runs a node's processes (process groups,
ranks, kill on cancel, exit codes) for a Batch AI-shaped job. A command job is handed to it as one:
its command, with ``${{inputs.X}}`` replaced by the input's directory on the Files emulator's tree
(resolved through the job's datastore) and ``${{outputs.X}}`` by a local output directory, runs as
``customToolkit`` (one process) or ``customMpi`` (a distribution's process count). When it exits, the
outputs are uploaded to the blob datastore the output names (by default ``workspaceblobstore`` at
``azureml/<job>/<output>/``) and stdout then stderr to ``ExperimentRun/dcid.<job>/user_logs/std_log.txt``
in the workspace's ``azureml`` container: where Azure ML puts them, read back through Azurite. A
PyTorch or Mpi distribution of several processes logs each process apart, as Azure ML does:
``user_logs/std_log_process_<rank>.txt`` (the runner's ``stdout-<rank>.txt`` then ``stderr-<rank>.txt``),
and its ranks get NODE_RANK, LOCAL_RANK and LOCAL_WORLD_SIZE of ``processCountPerInstance`` per instance.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra.local.arm.azureml.models import (
    ARTIFACT_CONTAINER,
    PER_PROCESS_LOG_DISTRIBUTIONS,
    Job,
    log_blob_name,
    substitute,
)
from infra.local.arm.blobfs import account_endpoint
from infra.local.arm.errors import resource_error
from infra.local.arm.jobrunner import JobCallbacks, JobRunner

if TYPE_CHECKING:
    from infra.local.arm.azureml.models import AzureMLBackend

log = logging.getLogger(__name__)

STREAM_SECONDS = 1.0


class AzureMLJobs:
    def __init__(self, backend: AzureMLBackend) -> None:
        self.backend = backend
        # Inputs and outputs are resolved from the job's datastores: no mount volumes, no pid log.
        self.runner = JobRunner(JobCallbacks(exited=self._exited), python=backend.config.job_python)
        self.by_key: dict[str, Job] = {}
        self.uploads = threading.Lock()

    def _exited(self, key: str, exit_code: int | None, errors: list[dict[str, Any]]) -> None:
        job = self.by_key.pop(key, None)
        if job is not None:
            self.backend.job_exited(job, exit_code, errors)

    @property
    def root(self) -> Path:
        return Path(self.backend.config.data_dir) / "azureml"

    def running(self, job: Job) -> bool:
        return job.key in self.by_key

    def start(self, job: Job) -> None:
        """Resolve inputs and outputs, then start the job's processes (caller holds the lock)."""
        props = job.props
        workspace = next(w for k, w in self.backend.workspaces.items() if k == job.workspace_key)
        job_dir = self.root / "jobs" / job.key
        values: dict[str, dict[str, str]] = {"inputs": {}, "outputs": {}}
        errors: list[dict[str, Any]] = []
        for name, spec in (props.get("inputs") or {}).items():
            if spec.get("jobInputType") == "literal":
                values["inputs"][name] = str(spec.get("value", ""))
                continue
            path = self.backend.resolve_uri(workspace, spec.get("uri", ""))
            if path is None or not path.exists():
                errors.append(resource_error("InputNotFound", f"input {name}: {spec.get('uri')} not found"))
                continue
            values["inputs"][name] = str(path)
        for name in props.get("outputs") or {}:
            path = job_dir / "outputs" / name
            path.mkdir(parents=True, exist_ok=True)
            values["outputs"][name] = str(path)
        job.paths = {"outputs": dict(values["outputs"]), "job_dir": str(job_dir)}
        command = substitute(props.get("command") or "true", values)
        count = job.process_count
        parts = job.id.strip("/").split(
            "/"
        )  # subscriptions/<sub>/resourceGroups/<rg>/.../workspaces/<ws>/jobs/<n>
        experiment = props.get("experimentName") or "Default"
        segment = (
            f"{parts[1]}/{parts[3]}/workspaces/{parts[7]}/experiments/{experiment}/jobs/{job.name}/{job.key}"
        )
        # The environment's python is the emulator's job interpreter (images are recorded, not pulled).
        python_bin = str(Path(self.backend.config.job_python or sys.executable).parent)
        env = {
            **(props.get("environmentVariables") or {}),
            "PATH": os.pathsep.join([python_bin, os.environ.get("PATH", "")]),
        }
        body = {
            "jobOutputDirectoryPathSegment": segment,
            "cluster": {"id": props.get("computeId", "")},
            "nodeCount": job.instance_count,
            "stdOutErrPathPrefix": str(job_dir),
            "environmentVariables": [{"name": k, "value": v} for k, v in env.items()],
        }
        tool = "custommpi" if count > 1 else "customtoolkit"
        if tool == "custommpi":
            body["customMpiSettings"] = {"commandLine": command, "processCount": count}
        else:
            body["customToolkitSettings"] = {"commandLine": command}
        meta: dict[str, Any] = {"uuid": job.key, "tool": tool, "secrets": {}}
        if job.distribution_type in PER_PROCESS_LOG_DISTRIBUTIONS:
            # Ranks laid out over the instances (NODE_RANK, LOCAL_RANK, LOCAL_WORLD_SIZE), one
            # stdout-<rank>.txt each: uploaded as the process's std_log_process_<rank>.txt.
            meta["processes_per_node"] = job.processes_per_instance
            meta["rank_logs"] = bool(job.process_logs)
        record = {"body": {"properties": body}, "meta": meta}
        self.by_key[job.key] = job
        job_dir.mkdir(parents=True, exist_ok=True)
        if errors:
            job.errors.extend(errors)
        paths = self.runner.start(job.key, record, job_dir / "mounts", job_dir / "node")
        job.paths["stdouterr"] = paths["stdouterr"]
        threading.Thread(target=self._stream, args=(job,), name=f"log-{job.name}", daemon=True).start()

    @staticmethod
    def _logs(job: Job) -> list[tuple[str, str]]:
        """(log name in user_logs/, runner's file suffix) of each log the job writes: one per process
        of a distribution that logs per process (the runner's stdout-<rank>.txt), else std_log.txt."""
        names = job.process_logs
        if not names:
            return [("std_log.txt", "")]
        return [(name, f"-{rank}") for rank, name in enumerate(names)]

    def _stream(self, job: Job) -> None:
        """While the job runs, each log's stdout so far goes to its blob every STREAM_SECONDS, as Azure
        ML streams them (stderr follows at the end: a file only grows, so readers' offsets hold)."""
        workspace = self.backend.workspaces.get(job.workspace_key)
        stdouterr = Path(job.paths["stdouterr"])
        sent: dict[str, int] = {}
        while self.running(job) and workspace is not None:
            time.sleep(STREAM_SECONDS)
            try:
                with self.uploads:  # never after the final upload of the whole logs
                    for name, suffix in self._logs(job):
                        try:
                            data = (stdouterr / f"stdout{suffix}.txt").read_bytes()
                        except FileNotFoundError:
                            continue
                        if len(data) != sent.get(name, -1) and self.running(job):
                            container = self._container(workspace.storage_account, ARTIFACT_CONTAINER)
                            container.upload_blob(log_blob_name(job.name, name), data, overwrite=True)
                            sent[name] = len(data)
            except Exception:  # the final upload at Finalizing still happens
                log.debug("azureml job %s: streaming its log failed", job.name, exc_info=True)

    def kill(self, job: Job) -> None:
        self.runner.kill(job.key)

    def shutdown(self) -> None:
        self.runner.shutdown()

    # --- uploads -----------------------------------------------------------------------------------
    def _container(self, account: str, container: str) -> Any:
        import base64

        from azure.storage.blob import BlobServiceClient

        key = self.backend.config.storage_keys.get(account)
        endpoint = account_endpoint(self.backend.config.storage_endpoints.get("blob"), account)
        if endpoint is None:
            raise RuntimeError("the local stack has no blob endpoint for this emulator (--blob-endpoint)")
        service = BlobServiceClient(
            endpoint,
            credential={"account_name": account, "account_key": base64.b64encode(key or b"").decode()},
        )
        client = service.get_container_client(container)
        with contextlib.suppress(Exception):
            client.create_container()
        return client

    def upload(self, job: Job) -> None:
        """Outputs to their blob datastores, logs to the artifact store (errors are the job's)."""
        workspace = self.backend.workspaces.get(job.workspace_key)
        if workspace is None or not job.paths:
            return
        with self.uploads:
            self._upload(job, workspace)

    def _upload(self, job: Job, workspace: Any) -> None:
        try:
            for name, local in (job.paths.get("outputs") or {}).items():
                spec = (job.props.get("outputs") or {}).get(name) or {}
                uri = (
                    spec.get("uri")
                    or f"azureml://datastores/workspaceblobstore/paths/azureml/{job.name}/{name}/"
                )
                where = self.backend.blob_location(workspace, uri)
                if where is None:
                    job.errors.append(
                        resource_error(
                            "OutputUploadFailed", f"output {name}: {uri} is not a blob datastore path"
                        )
                    )
                    continue
                account, container, prefix = where
                client = self._container(account, container)
                for path in sorted(Path(local).rglob("*")):
                    if path.is_file():
                        rel = path.relative_to(local).as_posix()
                        with open(path, "rb") as data:
                            client.upload_blob(f"{prefix}/{rel}".lstrip("/"), data, overwrite=True)
            stdouterr = Path(job.paths.get("stdouterr") or "")
            artifacts = self._container(workspace.storage_account, ARTIFACT_CONTAINER)
            for log_name, suffix in self._logs(job):
                combined = b""
                for stream in ("stdout", "stderr"):
                    with contextlib.suppress(OSError):
                        combined += (stdouterr / f"{stream}{suffix}.txt").read_bytes()
                artifacts.upload_blob(log_blob_name(job.name, log_name), combined, overwrite=True)
        except Exception as exc:  # the job fails with the reason; the emulator goes on
            log.exception("azureml job %s: upload failed", job.name)
            job.errors.append(resource_error("OutputUploadFailed", f"{type(exc).__name__}: {exc}"))
