"""The compute port implemented on Batch AI (``COMPUTE_BACKEND=batchai``, the default).

A thin layer over ``shared.batchai_sdk.BatchAISdk`` (which owns the SDK calls and turns every failure into
``ComputeError``) and ``shared.batchai_requests`` (names and request bodies): it adds what the
pipeline needs on top, namely the run -> (experiment, job) naming, a per-process cache of "the
resource group and workspace exist" (a burst of uploads must not repeat those requests), job
teardown as one step, the not-found conventions of the port, and the translation of SDK objects
into the port's plain values (``JobStatus``, ``ClusterStatus``, ``OutputItem``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from shared import batchai_requests
from shared.batchai_sdk import BatchAISdk
from shared.compute_port import (
    ClusterRef,
    ClusterStatus,
    ComputeError,
    ExperimentStatus,
    JobListing,
    JobNames,
    JobRef,
    JobStatus,
    OutputItem,
    ServiceError,
)
from shared.registry import parse_time
from shared.runspec import RunSpec

if TYPE_CHECKING:  # annotations only
    from azure.storage.fileshare import ShareClient

    from shared.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["BatchAIBackend"]

TERMINATE_WAIT_SECONDS = 30.0
# Where Batch AI writes the lead process's stdout, by toolkit (others: stdout.txt for all processes):
# a file per rank for PyTorch (the PyTorch-GPU-Distributed-Gloo recipe streams stdout-0.txt), per role
# for TensorFlow (the TensorFlow-GPU recipes stream stdout-wk-0.txt, one node or several).
LEAD_STDOUT_BY_TOOL = {"pytorch": "stdout-0.txt", "tensorflow": "stdout-wk-0.txt"}


def _enum_value(value: Any) -> str | None:
    """An SDK enum (or plain string) as its value."""
    return None if value is None else str(getattr(value, "value", value))


def _text(value: Any) -> str | None:
    """An SDK enum (or plain string) as its lowercase value."""
    text = _enum_value(value)
    return None if text is None else text.lower()


def _last_segment(resource_id: str | None) -> str | None:
    return resource_id.rstrip("/").rsplit("/", 1)[-1] if resource_id else None


def _errors(items: Any) -> tuple[ServiceError, ...]:
    return tuple(ServiceError(e.code or "", e.message or "") for e in (items or []))


def job_status(job: Any, experiment: str) -> JobStatus:
    """An azure-mgmt-batchai Job in the port's words."""
    info = job.execution_info
    constraints = job.constraints
    limit = getattr(constraints, "max_wall_clock_time", None) if constraints is not None else None
    return JobStatus(
        name=job.name,
        experiment=experiment,
        state=_text(job.execution_state) or "unknown",
        cluster=_last_segment(job.cluster.id if job.cluster is not None else None),
        created_at=parse_time(job.creation_time),
        started_at=parse_time(getattr(info, "start_time", None)),
        ended_at=parse_time(getattr(info, "end_time", None)),
        exit_code=getattr(info, "exit_code", None),
        errors=_errors(getattr(info, "errors", None)),
        max_wall_clock=limit if isinstance(limit, timedelta) else None,
        log_location=_lead_stdout(job),
    )


def _lead_stdout(job: Any) -> str | None:
    """The share path of the job's lead stdout: its output segment, `stdouterr/` and the file name."""
    segment = getattr(job, "job_output_directory_path_segment", None)
    if not segment:
        return None
    # The settings say which toolkit (the 2018-05-01 ToolType enum has no 'pytorch', though the
    # service reported it): the lead's file follows from them.
    if getattr(job, "py_torch_settings", None) is not None:
        tool = "pytorch"
    elif getattr(job, "tensor_flow_settings", None) is not None:
        tool = "tensorflow"
    else:
        tool = _text(getattr(job, "tool_type", None)) or ""
    name = LEAD_STDOUT_BY_TOOL.get(tool, "stdout.txt")
    return f"{segment.strip('/')}/stdouterr/{name}"


def cluster_status(cluster: Any) -> ClusterStatus:
    """An azure-mgmt-batchai Cluster in the port's words (``as_dict`` keeps the SDK's field names,
    which the API has always shown)."""
    counts = cluster.node_state_counts
    scale = cluster.scale_settings
    return ClusterStatus(
        name=cluster.name,
        id=cluster.id,
        vm_size=cluster.vm_size,
        vm_priority=_enum_value(cluster.vm_priority),
        allocation_state=_text(cluster.allocation_state),
        provisioning_state=_text(cluster.provisioning_state),
        current_node_count=cluster.current_node_count,
        node_state_counts=counts.as_dict() if counts is not None else None,
        scale_settings=scale.as_dict() if scale is not None else None,
        created_at=parse_time(cluster.creation_time),
        errors=_errors(cluster.errors),
    )


class BatchAIBackend:
    """Batch AI operations for runs, in the settings' resource group and workspace."""

    name = "batchai"

    def __init__(
        self, settings: Settings, compute: BatchAISdk | None = None, share: ShareClient | None = None
    ) -> None:
        self.settings = settings
        self.compute = compute or BatchAISdk(settings)
        self._share = share
        self._lock = threading.Lock()
        self._workspace_lock = threading.Lock()
        self._workspace_ready = False

    # --- names ---------------------------------------------------------------------------------------
    def cluster_name(self, spec: RunSpec, dataset: str) -> str:
        return batchai_requests.cluster_name(spec, dataset)

    def job_names(self, run_id: str, dataset: str) -> JobNames:
        return self.job_ref(batchai_requests.experiment_name(dataset), batchai_requests.job_name(run_id))

    def job_ref(self, experiment: str, job: str) -> JobNames:
        return JobNames(
            self.settings.resource_group,
            self.settings.workspace,
            experiment,
            job,
            batchai_requests.job_id(self.settings, experiment, job),
        )

    # --- workspace, clusters -------------------------------------------------------------------------
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
        params = batchai_requests.cluster_parameters(spec, self.settings)
        try:
            return self.compute.ensure_cluster(name, params)
        except ComputeError as exc:
            if not exc.not_found:
                raise
            with self._lock:
                self._workspace_ready = False
            self.ensure_workspace()
            return self.compute.ensure_cluster(name, params)

    def check_spec(self, spec: RunSpec) -> None:
        """Every run spec field maps onto Batch AI (the run spec is Batch AI's shape)."""

    @staticmethod
    def is_steady(cluster: ClusterRef) -> bool:
        return (cluster.allocation_state or "").lower() == "steady" and not cluster.created

    def get_cluster(self, name: str) -> ClusterStatus | None:
        try:
            cluster = self.compute.get_cluster(name)
        except ComputeError as exc:
            if exc.not_found:
                return None
            raise
        return None if cluster is None else cluster_status(cluster)

    def list_clusters(self) -> dict[str, ClusterStatus]:
        """Every cluster of the workspace by name (one call per page; none when no workspace)."""
        try:
            return {
                cast(str, c.name): cluster_status(c) for c in self.compute.list_clusters()
            }  # listed: named
        except ComputeError as exc:
            if exc.not_found:
                return {}
            raise

    def delete_cluster(self, name: str) -> bool:
        return self.compute.delete_cluster(name)

    def release_nodes(self, name: str) -> bool:
        """A manually scaled cluster is resized to zero nodes (``waitforjobcompletion``: a job that
        started since the caller looked is not killed); auto-scale clusters are the service's."""
        cluster = self.get_cluster(name)
        if cluster is None or cluster.auto_scale or cluster.provisioning_state == "deleting":
            return False
        if not cluster.manual_target and not cluster.allocated_nodes:
            return False
        self.compute.scale_cluster(name, 0)
        log.info("cluster %s: nodes released (scaled to zero)", name)
        return True

    def request_nodes(self, name: str, count: int) -> bool:
        cluster = self.get_cluster(name)
        if cluster is None or cluster.auto_scale or cluster.provisioning_state == "deleting":
            return False
        if (cluster.manual_target or 0) >= count:
            return False
        self.compute.scale_cluster(name, count)
        log.info("cluster %s: asked for %d node(s)", name, count)
        return True

    # --- experiments, jobs ---------------------------------------------------------------------------
    def request_experiment(self, dataset: str) -> None:
        """Send the creation of the dataset's experiment when it is missing, without waiting for it
        (a job can be created in an experiment that is still provisioning)."""
        self.ensure_workspace()
        self.compute.ensure_experiment(batchai_requests.experiment_name(dataset), wait=False)

    def list_experiments(self) -> list[ExperimentStatus]:
        try:
            return [
                ExperimentStatus(cast(str, e.name), parse_time(e.creation_time))
                for e in self.compute.list_experiments()
            ]
        except ComputeError as exc:
            if exc.not_found:
                return []
            raise

    def delete_experiment(self, name: str) -> bool:
        return self.compute.delete_experiment(name)

    def create_job(
        self, names: JobNames, spec: RunSpec, dataset: str, cluster_id: str, *, data_dir: str | None = None
    ) -> JobRef:
        """Create the experiment (waited for) and the job (not waited for); idempotent. The job's
        input directories are in ``data_dir`` (the run's snapshot), default the dataset's directory."""
        self.ensure_workspace()
        self.compute.ensure_experiment(names.experiment)
        params = batchai_requests.job_parameters(spec, data_dir or dataset, cluster_id, self.settings)
        return self.compute.create_job(names.experiment, names.job, params)

    def get_job(self, names: JobNames) -> JobStatus | None:
        try:
            job = self.compute.get_job(names.experiment, names.job)
        except ComputeError as exc:
            if exc.not_found:
                return None
            raise
        return None if job is None else job_status(job, names.experiment)

    def list_jobs(self, experiment: str) -> list[JobStatus]:
        """Every job of an experiment: one ARM call per page. None when the experiment is missing."""
        try:
            return [job_status(j, experiment) for j in self.compute.list_jobs(experiment)]
        except ComputeError as exc:
            if exc.not_found:
                return []
            raise

    def list_jobs_of(self, experiments: Iterable[str]) -> JobListing:
        """Batch AI lists jobs per experiment: one call (per page) for each."""
        listing = JobListing()
        for experiment in dict.fromkeys(experiments):
            try:
                listing.jobs[experiment] = self.list_jobs(experiment)
            except ComputeError as exc:
                listing.errors[experiment] = exc
        return listing

    def terminate_job(self, names: JobNames) -> bool:
        return self.compute.terminate_job(names.experiment, names.job)

    def delete_job(self, names: JobNames) -> bool:
        return self.compute.delete_job(names.experiment, names.job)

    def terminate_and_delete_job(self, names: JobNames) -> None:
        """Terminate (stops its processes) then delete a job; a missing job is fine."""
        job = self.get_job(names)
        if job is None:
            return
        if job.state in ("queued", "running"):
            self.compute.terminate_job(names.experiment, names.job)
            deadline = time.monotonic() + TERMINATE_WAIT_SECONDS
            while time.monotonic() < deadline:
                job = self.get_job(names)
                if job is None or job.state not in ("queued", "running", "terminating"):
                    break
                time.sleep(0.5)
        self.compute.delete_job(names.experiment, names.job)
        log.info("job %s/%s terminated and deleted", names.experiment, names.job)

    # --- outputs and logs ----------------------------------------------------------------------------
    def list_output_files(self, names: JobNames, directory_id: str, directory: str = ".") -> list[OutputItem]:
        try:
            files = self.compute.list_output_files(
                names.experiment, names.job, directory_id, directory=directory
            )
        except ComputeError as exc:
            if exc.not_found:
                return []
            raise
        return [
            OutputItem(
                name=cast(str, f.name),  # a listed file has a name
                is_directory=_text(getattr(f, "file_type", None)) == "directory",
                size=getattr(f, "content_length", None),
                download_url=f.download_url,
            )
            for f in files
        ]

    def read_stdout(self, job: JobStatus, offset: int, length: int) -> bytes:
        """Batch AI writes a job's stdout, while it runs, to
        ``<stdOutErrPathPrefix>/<jobOutputDirectoryPathSegment>/stdouterr/stdout.txt`` (the lead
        process's, for PyTorch and TensorFlow: ``LEAD_STDOUT_BY_TOOL``), and our jobs' prefix is the
        root of the file share they mount: one Range GET on the share, no ARM request."""
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        path = job.log_location
        if not path or length <= 0:
            return b""
        if self._share is None:
            from shared import sdk_clients

            self._share = sdk_clients.share_client(self.settings)
        file = self._share.get_file_client(path)
        try:
            data: bytes = file.download_file(offset=offset, length=length).readall()
            return data
        except ResourceNotFoundError:
            return b""
        except HttpResponseError as exc:
            if exc.status_code == 416:  # nothing at or past the offset yet
                return b""
            raise

    # --- health --------------------------------------------------------------------------------------
    def health(self) -> str:
        self.compute.probe()
        return f"Microsoft.BatchAI answers in {self.settings.location}"
