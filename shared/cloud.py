"""The pipeline's view of Batch AI: names per run, and the calls ingest and monitor make.

A thin layer over ``shared.compute.Compute`` (which owns the SDK calls and turns every failure into
``ComputeError``) and ``shared.batchai_models`` (names and request bodies): it adds what the
pipeline needs on top, namely the run -> (experiment, job) naming, a per-process cache of "the
resource group and workspace exist" (a burst of uploads must not repeat those requests), and
job teardown as one step.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from shared import batchai_models as bm
from shared.compute import ClusterRef, Compute, ComputeError
from shared.runspec import RunSpec

log = logging.getLogger(__name__)

__all__ = ["Cloud", "ClusterRef", "ComputeError", "JobNames"]

TERMINATE_WAIT_SECONDS = 30.0
STDOUT_FILE = "stdouterr/stdout.txt"


@dataclass(frozen=True)
class JobNames:
    resource_group: str
    workspace: str
    experiment: str
    job: str
    job_id: str


class Cloud:
    """Batch AI operations for runs, in the settings' resource group and workspace."""

    def __init__(self, settings: Any, compute: Compute | None = None, share: Any = None) -> None:
        self.settings = settings
        self.compute = compute or Compute(settings)
        self._share = share
        self._lock = threading.Lock()
        self._workspace_lock = threading.Lock()
        self._workspace_ready = False

    def cluster_name(self, spec: RunSpec, dataset: str) -> str:
        return bm.cluster_name(spec, dataset)

    def job_names(self, run_id: str, dataset: str) -> JobNames:
        experiment = bm.experiment_name(dataset)
        job = bm.job_name(run_id)
        return JobNames(
            self.settings.resource_group,
            self.settings.workspace,
            experiment,
            job,
            bm.job_id(self.settings, experiment, job),
        )

    def ensure_workspace(self) -> None:
        """The resource group and workspace, made once per process: concurrent first invocations wait
        for the one that makes them rather than each sending its own create and polling it."""
        if self._workspace_ready:
            return
        with self._workspace_lock:
            if self._workspace_ready:
                return
            self.compute.ensure_workspace()
            with self._lock:
                self._workspace_ready = True

    def ensure_cluster(self, spec: RunSpec, dataset: str) -> ClusterRef:
        """The run's cluster: reused when one with the same settings exists, else its creation is
        sent (not waited for). The workspace cache is dropped when ARM says it is gone."""
        self.ensure_workspace()
        name = self.cluster_name(spec, dataset)
        params = bm.cluster_parameters(spec, self.settings)
        try:
            return self.compute.ensure_cluster(name, params)
        except ComputeError as exc:
            if not exc.not_found:
                raise
            with self._lock:
                self._workspace_ready = False
            self.ensure_workspace()
            return self.compute.ensure_cluster(name, params)

    def request_experiment(self, dataset: str) -> None:
        """Send the creation of the dataset's experiment when it is missing, without waiting for it
        (a job can be created in an experiment that is still provisioning)."""
        self.ensure_workspace()
        self.compute.ensure_experiment(bm.experiment_name(dataset), wait=False)

    @staticmethod
    def is_steady(cluster: ClusterRef) -> bool:
        return (cluster.allocation_state or "").lower() == "steady" and not cluster.created

    def list_clusters(self) -> dict[str, Any]:
        """Every cluster of the workspace by name (one call per page; none when no workspace)."""
        try:
            return {c.name: c for c in self.compute.list_clusters()}
        except ComputeError as exc:
            if exc.not_found:
                return {}
            raise

    def delete_cluster(self, name: str) -> bool:
        return self.compute.delete_cluster(name)

    def create_job(self, names: JobNames, spec: RunSpec, dataset: str, cluster_id: str) -> Any:
        """Create the experiment (waited for) and the job (not waited for); idempotent."""
        self.ensure_workspace()
        self.compute.ensure_experiment(names.experiment)
        params = bm.job_parameters(spec, dataset, cluster_id, self.settings)
        return self.compute.create_job(names.experiment, names.job, params)

    def list_jobs(self, resource_group: str, workspace: str, experiment: str) -> list[Any]:
        """Every job of an experiment: one ARM call per page. None when the experiment is missing."""
        try:
            return self.compute.list_jobs(experiment)
        except ComputeError as exc:
            if exc.not_found:
                return []
            raise

    def terminate_and_delete_job(self, names: JobNames) -> None:
        """Terminate (stops its processes) then delete a job; a missing job is fine."""
        job = self.compute.get_job(names.experiment, names.job)
        if job is None:
            return
        state = str(getattr(job.execution_state, "value", job.execution_state) or "").lower()
        if state in ("queued", "running"):
            self.compute.terminate_job(names.experiment, names.job)
            deadline = time.monotonic() + TERMINATE_WAIT_SECONDS
            while time.monotonic() < deadline:
                job = self.compute.get_job(names.experiment, names.job)
                state = (
                    str(getattr(job.execution_state, "value", job.execution_state) or "").lower()
                    if job
                    else ""
                )
                if state not in ("queued", "running", "terminating"):
                    break
                time.sleep(0.5)
        self.compute.delete_job(names.experiment, names.job)
        log.info("job %s/%s terminated and deleted", names.experiment, names.job)

    def list_output_files(self, names: JobNames, directory_id: str, directory: str = ".") -> list[Any]:
        try:
            return self.compute.list_output_files(
                names.experiment, names.job, directory_id, directory=directory
            )
        except ComputeError as exc:
            if exc.not_found:
                return []
            raise

    def read_stdout(self, job: Any, offset: int, length: int) -> bytes:
        """Bytes ``offset`` to ``offset + length`` of a job's stdout as far as it is written (b"" when
        there is nothing there yet). Batch AI writes a job's stdout, while it runs, to
        ``<stdOutErrPathPrefix>/<jobOutputDirectoryPathSegment>/stdouterr/stdout.txt``, and our jobs'
        prefix is the root of the file share they mount: one Range GET on the share, no ARM request
        (the monitor reads every running job's new output on every pass)."""
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        segment = getattr(job, "job_output_directory_path_segment", None)
        if not segment or length <= 0:
            return b""
        if self._share is None:
            from shared import clients

            self._share = clients.share_client(self.settings)
        file = self._share.get_file_client(f"{segment.strip('/')}/{STDOUT_FILE}")
        try:
            return file.download_file(offset=offset, length=length).readall()
        except ResourceNotFoundError:
            return b""
        except HttpResponseError as exc:
            if exc.status_code == 416:  # nothing at or past the offset yet
                return b""
            raise
