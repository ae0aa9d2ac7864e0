"""The compute port: what the pipeline needs from a training service, and nothing more.

Why: ingest, the monitor, the HTTP API and cleanup must not know which service trains a run. They
talk to one ``ComputeBackend`` (built once, in ``shared.services.build_services``, from the settings)
and see only the plain values declared here: job and cluster states in the pipeline's own words,
output files with download URLs, and one error type, ``ComputeError``. Each backend module (today
``shared.batchai_backend``) is the only code that knows its service; adding a backend means adding
one module that implements this protocol and naming it in ``build_backend``.

Conventions every implementation keeps (callers rely on them instead of handling not-found):
- ``get_*`` answer None for something missing; ``list_*`` answer empty when the workspace (or the
  experiment) does not exist yet; deletes and terminations of something missing answer False.
- Long-running operations the pipeline must not block on (cluster create/delete, job create,
  terminate, delete) are sent and not waited for; ``ensure_workspace`` is waited for.
- Every failure is a ``ComputeError`` carrying the service's error code and message.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from shared.errors import compute_error_kind

if TYPE_CHECKING:  # pragma: no cover
    from shared.runspec import RunSpec
    from shared.settings import Settings

__all__ = [
    "JOB_STATES",
    "ClusterRef",
    "ClusterStatus",
    "ComputeBackend",
    "ComputeError",
    "ExperimentStatus",
    "JobNames",
    "JobRef",
    "JobStatus",
    "OutputItem",
    "ServiceError",
    "build_backend",
]

# A job's state in the pipeline's words (a backend maps its own onto these).
JOB_STATES = ("queued", "running", "terminating", "succeeded", "failed")


class ComputeError(RuntimeError):
    """A call to the training service failed.

    `code` is the service's error code ('ResourceNotFound', 'Conflict', ...) or one of ours
    ('ServiceUnavailable' for network failures, 'AuthenticationFailed', 'BatchAIUnavailable',
    'ClusterMismatch', 'ClusterDeleting', 'UnsupportedSpec'); `status` the HTTP status when there was
    a response. `public_message`, when a backend sets it, is a plain explanation safe to show to
    anyone (no endpoint, account or upstream text), e.g. why the service is not available at all.
    """

    def __init__(
        self,
        operation: str,
        code: str,
        message: str,
        status: int | None = None,
        *,
        public_message: str | None = None,
    ) -> None:
        self.operation = operation
        self.code = code
        self.message = message
        self.status = status
        self.public_message = public_message
        super().__init__(f"{operation} failed: {code}: {message}")

    @property
    def retryable(self) -> bool:
        """True for throttling, server errors and network failures: try again later."""
        return compute_error_kind(self.code, self.status).retryable

    @property
    def permanent(self) -> bool:
        """No retry changes this answer (a retired service, a cluster with other settings): a
        submission that meets it fails the run now."""
        return compute_error_kind(self.code, self.status).permanent

    @property
    def http_status(self) -> int:
        """What the HTTP API answers it with (shared.errors)."""
        return compute_error_kind(self.code, self.status).http_status

    @property
    def not_found(self) -> bool:
        return self.status == 404 or self.code in ("ResourceNotFound", "NotFound", "ResourceGroupNotFound")


@dataclass(frozen=True)
class JobNames:
    """Where a run's job lives: the names the backend derives from the run id and dataset."""

    resource_group: str
    workspace: str
    experiment: str
    job: str
    job_id: str


@dataclass(frozen=True)
class ClusterRef:
    """The answer of ``ensure_cluster``."""

    name: str
    id: str
    created: bool  # True when this call sent the create request
    provisioning_state: str | None = None
    allocation_state: str | None = None


@dataclass(frozen=True)
class JobRef:
    """The answer of ``create_job``."""

    experiment: str
    name: str
    id: str
    created: bool  # True when this call sent the create request
    execution_state: str | None = None


@dataclass(frozen=True)
class ServiceError:
    code: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class JobStatus:
    """A job as the monitor and cleanup see it. ``state`` is one of JOB_STATES."""

    name: str
    experiment: str
    state: str
    cluster: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    exit_code: int | None = None
    errors: tuple[ServiceError, ...] = ()
    max_wall_clock: timedelta | None = None
    # Where the service writes the job's logs, in the backend's own terms (Batch AI: the job's
    # output directory segment on the share); read by the backend's read_stdout only.
    log_location: str | None = None


@dataclass(frozen=True)
class ClusterStatus:
    """A cluster as the monitor, the API and cleanup see it. ``allocation_state`` is 'steady' or
    'resizing'; ``node_state_counts`` uses the keys idle/running/preparing/unusable/leaving
    ``_node_count``; ``usable_nodes`` is None when the service did not say."""

    name: str
    id: str
    vm_size: str | None = None
    vm_priority: str | None = None
    allocation_state: str | None = None
    provisioning_state: str | None = None
    current_node_count: int | None = None
    node_state_counts: dict[str, int] | None = None
    scale_settings: dict[str, Any] | None = None
    created_at: datetime | None = None
    errors: tuple[ServiceError, ...] = ()

    @property
    def allocated_nodes(self) -> int:
        """Nodes the service holds for the cluster now, whatever their state: what bills."""
        return self.current_node_count or 0

    @property
    def running_nodes(self) -> int:
        """Nodes running a job now (0 when the service did not say)."""
        return int((self.node_state_counts or {}).get("running_node_count") or 0)

    @property
    def manual_target(self) -> int | None:
        """The node count a manually scaled cluster is held at; None for an auto-scale cluster."""
        manual = (self.scale_settings or {}).get("manual")
        return None if manual is None else int(manual.get("target_node_count") or 0)

    @property
    def auto_scale(self) -> bool:
        """The service scales this cluster to its jobs itself (the monitor leaves its nodes alone)."""
        return bool((self.scale_settings or {}).get("auto_scale"))

    @property
    def usable_nodes(self) -> int | None:
        """Nodes that are or may become usable (idle, running, preparing)."""
        if self.node_state_counts is None:
            return None
        counts = self.node_state_counts
        return sum(
            counts.get(name, 0) or 0
            for name in ("idle_node_count", "running_node_count", "preparing_node_count")
        )


@dataclass(frozen=True)
class ExperimentStatus:
    name: str
    created_at: datetime | None = None


# The lead process's log files in a job's `stdouterr` listing, in order of preference: one log for all
# processes (`stdout.txt`), a log per rank (Batch AI's PyTorch toolkit: `stdout-0.txt`) or per role
# (its TensorFlow toolkit: worker 0, `stdout-wk-0.txt`). The same suffix names the stderr file.
LEAD_LOG_SUFFIXES = ("", "-0", "-wk-0")


def lead_log_name(names: Iterable[str], stream: str = "stdout") -> str | None:
    """The lead process's `stream` ('stdout' or 'stderr') file among a job's stdouterr file names."""
    present = set(names)
    return next((f"{stream}{s}.txt" for s in LEAD_LOG_SUFFIXES if f"{stream}{s}.txt" in present), None)


@dataclass(frozen=True)
class OutputItem:
    """One entry of a job's output directory ('stdouterr' or an output directory id)."""

    name: str
    is_directory: bool = False
    size: int | None = None
    download_url: str | None = None


@dataclass
class JobListing:
    """Jobs of several experiments listed at once: the jobs per experiment, or why an experiment's
    listing failed (the monitor goes on with the others)."""

    jobs: dict[str, list[JobStatus]] = field(default_factory=dict)
    errors: dict[str, ComputeError] = field(default_factory=dict)


@runtime_checkable
class ComputeBackend(Protocol):
    """What the pipeline needs from a training service (see the module doc for the conventions)."""

    name: str  # 'batchai', 'azureml': what health and logs call the service
    settings: Settings

    # --- names ---------------------------------------------------------------------------------------
    def cluster_name(self, spec: RunSpec, dataset: str) -> str: ...

    def job_names(self, run_id: str, dataset: str) -> JobNames: ...

    def job_ref(self, experiment: str, job: str) -> JobNames:
        """The names of a job known by experiment and job name (cleanup's inventory)."""
        ...

    # --- workspace, clusters ---------------------------------------------------------------------
    def ensure_workspace(self) -> None: ...

    def ensure_cluster(self, spec: RunSpec, dataset: str) -> ClusterRef:
        """The run's cluster, created when missing (not waited for). An existing cluster holding
        fewer nodes than the spec wants (e.g. scaled to zero while idle) is asked for them again, and
        the answer then says it is resizing, so the run waits in ``provisioning``."""
        ...

    def check_spec(self, spec: RunSpec) -> None:
        """Raise RunSpecError naming each field this service cannot map (checked when a run's spec is
        taken, before anything is created)."""
        ...

    def is_steady(self, cluster: ClusterRef) -> bool: ...

    def get_cluster(self, name: str) -> ClusterStatus | None: ...

    def list_clusters(self) -> dict[str, ClusterStatus]: ...

    def delete_cluster(self, name: str) -> bool: ...

    def release_nodes(self, name: str) -> bool:
        """Give back an idle cluster's nodes and keep the cluster, so nothing bills while it waits
        and the dataset's next run does not create it again (the monitor calls this once the cluster's
        last queued or running job ended CLUSTER_IDLE_MINUTES ago, CLUSTER_IDLE_ACTION=scale_to_zero,
        after checking that no active run uses it). Not waited for. True when this call asked the
        service to release nodes; False when there was nothing to do: the cluster is missing, holds
        no nodes already, or the service releases idle nodes by itself.

        Batch AI: a manually scaled cluster is resized to zero nodes (nodes running a job are waited
        for); an auto-scale cluster is left to the service's autoscale (False).
        Azure ML: AmlCompute with ``minNodeCount`` 0 scales itself to zero after
        ``nodeIdleTimeBeforeScaleDown``, so that backend may simply answer False (or, to honour
        CLUSTER_IDLE_MINUTES exactly, PATCH the compute's scale settings there).
        """
        ...

    def request_nodes(self, name: str, count: int) -> bool:
        """Ask for at least ``count`` nodes on a cluster whose nodes were released (scaled to zero
        while idle) or resized below what a run needs; not waited for. True when this call asked for
        nodes; False when the cluster is missing, already holds that target, or scales itself.
        ``ensure_cluster`` does the same for the run it ensures the cluster for; the monitor calls this
        for a queued job whose cluster has too few nodes (a release that raced a new run).

        Azure ML: AmlCompute allocates nodes for queued jobs by itself; answer False.
        """
        ...

    # --- experiments, jobs -------------------------------------------------------------------------
    def request_experiment(self, dataset: str) -> None:
        """Ask for the dataset's experiment without waiting (a no-op where experiments are names)."""
        ...

    def list_experiments(self) -> list[ExperimentStatus]: ...

    def delete_experiment(self, name: str) -> bool: ...

    def create_job(
        self, names: JobNames, spec: RunSpec, dataset: str, cluster_id: str, *, data_dir: str | None = None
    ) -> JobRef:
        """Create the run's job (idempotent). ``data_dir``: the share directory the job reads as its
        input (the run's snapshot, ``_snapshots/<run id>``; default the dataset's directory)."""
        ...

    def get_job(self, names: JobNames) -> JobStatus | None: ...

    def list_jobs(self, experiment: str) -> list[JobStatus]: ...

    def list_jobs_of(self, experiments: Iterable[str]) -> JobListing:
        """The jobs of each experiment, listed as cheaply as the service allows (the monitor's pass)."""
        ...

    def terminate_job(self, names: JobNames) -> bool: ...

    def delete_job(self, names: JobNames) -> bool: ...

    def terminate_and_delete_job(self, names: JobNames) -> None: ...

    # --- outputs and logs --------------------------------------------------------------------------
    def list_output_files(
        self, names: JobNames, directory_id: str, directory: str = "."
    ) -> list[OutputItem]: ...

    def read_stdout(self, job: JobStatus, offset: int, length: int) -> bytes:
        """Bytes ``offset`` to ``offset + length`` of a job's stdout as far as it is written (b"" when
        there is nothing there yet): the monitor reads running jobs' new output on every pass, so
        this costs no ARM request per run where the service allows."""
        ...

    # --- health --------------------------------------------------------------------------------------
    def health(self) -> str:
        """A one-line account of the service answering; raises when it does not."""
        ...


def build_backend(settings: Settings) -> ComputeBackend:
    """The backend COMPUTE_BACKEND names (one per process, built by ``shared.services.build_services``)."""
    if str(getattr(settings, "compute_backend", "batchai")) == "azureml":
        from shared.azureml_backend import AzureMLBackend

        return AzureMLBackend(settings)
    from shared.batchai_backend import BatchAIBackend

    return BatchAIBackend(settings)
