"""The pipeline's Batch AI operations: the few ARM calls ingest, monitor and teardown make.

Why a small facade: ingest and monitor need "ensure this run's cluster", "create this run's job",
"list an experiment's jobs" and so on, each idempotent and bounded; the request bodies and names come
from ``shared.batchai_models`` (the only module that builds Batch AI models) and the clients from
``shared.clients``; cluster creation/reuse from ``shared.compute`` when it offers it.

Resource group and workspace existence is cached per process, so a burst of uploads does not repeat
those PUTs; the cache is dropped when ARM says they are gone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from shared import batchai_models as bm
from shared.runspec import RunSpec

log = logging.getLogger(__name__)

LRO_TIMEOUT = 120.0


@dataclass(frozen=True)
class ClusterRef:
    name: str
    id: str
    allocation_state: str | None = None
    errors: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class JobNames:
    resource_group: str
    workspace: str
    experiment: str
    job: str
    job_id: str


def _state(value: Any) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "value", value)).lower()


def cluster_errors(cluster: Any) -> tuple[dict[str, Any], ...]:
    return tuple(
        {"code": e.code, "message": e.message, "details": [d.as_dict() for d in (e.details or [])]}
        for e in (getattr(cluster, "errors", None) or [])
    )


class Cloud:
    """Batch AI operations in the settings' resource group and workspace."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._ready: set[str] = set()

    # --- clients ---------------------------------------------------------------------------------------
    @property
    def batchai(self) -> Any:
        from shared import clients

        return clients.batchai_client(self.settings)

    @property
    def rg(self) -> str:
        return self.settings.resource_group

    @property
    def ws(self) -> str:
        return self.settings.workspace

    # --- names -----------------------------------------------------------------------------------------
    def cluster_name(self, spec: RunSpec, dataset: str) -> str:
        return bm.cluster_name(spec, dataset)

    def job_names(self, run_id: str, dataset: str) -> JobNames:
        experiment = bm.experiment_name(dataset)
        job = bm.job_name(run_id)
        return JobNames(self.rg, self.ws, experiment, job, bm.job_id(self.settings, experiment, job))

    # --- resource group, workspace, cluster ----------------------------------------------------------
    def ensure_workspace(self) -> None:
        """Resource group and workspace (created when missing; cached once seen)."""
        if "workspace" in self._ready:
            return
        from shared import clients

        resources = clients.resource_client(self.settings)
        try:
            self.batchai.workspaces.get(self.rg, self.ws)
        except ResourceNotFoundError:
            resources.resource_groups.create_or_update(self.rg, {"location": self.settings.location})
            self.batchai.workspaces.begin_create(
                self.rg, self.ws, bm.workspace_parameters(self.settings)
            ).result(timeout=LRO_TIMEOUT)
            log.info("created workspace %s in resource group %s", self.ws, self.rg)
        with self._lock:
            self._ready.add("workspace")

    def ensure_cluster(self, spec: RunSpec, dataset: str) -> ClusterRef:
        """The run's cluster: reused when it exists with compatible settings, else its creation is
        started (not waited for: provisioning overlaps the rest of the upload)."""
        self.ensure_workspace()
        name = self.cluster_name(spec, dataset)
        try:
            existing = self.batchai.clusters.get(self.rg, self.ws, name)
        except ResourceNotFoundError:
            existing = None
        if existing is not None:
            wanted = bm.cluster_parameters(spec, self.settings)
            differences = bm.cluster_differences(existing, wanted)
            if differences:
                log.warning(
                    "cluster %s differs from the spec (%s); using it as it is", name, "; ".join(differences)
                )
            return ClusterRef(
                name,
                existing.id or bm.cluster_id(self.settings, name),
                _state(existing.allocation_state),
                cluster_errors(existing),
            )
        try:
            self.batchai.clusters.begin_create(
                self.rg, self.ws, name, bm.cluster_parameters(spec, self.settings)
            )
        except ResourceNotFoundError:
            with self._lock:
                self._ready.discard("workspace")
            self.ensure_workspace()
            self.batchai.clusters.begin_create(
                self.rg, self.ws, name, bm.cluster_parameters(spec, self.settings)
            )
        log.info("creating cluster %s for dataset %s", name, dataset)
        return ClusterRef(name, bm.cluster_id(self.settings, name), "resizing")

    @staticmethod
    def is_steady(cluster: ClusterRef) -> bool:
        return cluster.allocation_state == "steady" and not cluster.errors

    def list_clusters(self) -> dict[str, Any]:
        """Every cluster of the workspace by name (one call per page)."""
        try:
            return {c.name: c for c in self.batchai.clusters.list_by_workspace(self.rg, self.ws)}
        except ResourceNotFoundError:
            return {}

    def delete_cluster(self, name: str) -> None:
        try:
            self.batchai.clusters.begin_delete(self.rg, self.ws, name).result(timeout=LRO_TIMEOUT)
            log.info("deleted cluster %s", name)
        except ResourceNotFoundError:
            pass

    # --- experiments and jobs --------------------------------------------------------------------------
    def create_job(self, names: JobNames, spec: RunSpec, dataset: str, cluster_id: str) -> Any:
        """Create the experiment (idempotent) and the job; a job that already exists is returned."""
        try:
            return self.batchai.jobs.get(names.resource_group, names.workspace, names.experiment, names.job)
        except ResourceNotFoundError:
            pass
        try:
            self.batchai.experiments.get(names.resource_group, names.workspace, names.experiment)
        except ResourceNotFoundError:
            self.ensure_workspace()
            self.batchai.experiments.begin_create(
                names.resource_group, names.workspace, names.experiment
            ).result(timeout=LRO_TIMEOUT)
        params = bm.job_parameters(spec, dataset, cluster_id, self.settings)
        try:
            return self.batchai.jobs.begin_create(
                names.resource_group, names.workspace, names.experiment, names.job, params
            ).result(timeout=LRO_TIMEOUT)
        except HttpResponseError as exc:
            if exc.status_code == 409:  # created meanwhile by a racing retry
                return self.batchai.jobs.get(
                    names.resource_group, names.workspace, names.experiment, names.job
                )
            raise

    def list_jobs(self, resource_group: str, workspace: str, experiment: str) -> Iterator[Any]:
        """Every job of an experiment: one ARM call per page (maxresults 1000)."""
        try:
            yield from self.batchai.jobs.list_by_experiment(resource_group, workspace, experiment)
        except ResourceNotFoundError:
            return

    def terminate_and_delete_job(self, names: JobNames) -> None:
        ops = self.batchai.jobs
        args = (names.resource_group, names.workspace, names.experiment, names.job)
        try:
            job = ops.get(*args)
        except ResourceNotFoundError:
            return
        if _state(job.execution_state) in ("queued", "running"):
            try:
                ops.begin_terminate(*args).result(timeout=LRO_TIMEOUT)
            except ResourceNotFoundError:
                return
        try:
            ops.begin_delete(*args).result(timeout=LRO_TIMEOUT)
            log.info("job %s terminated and deleted", names.job)
        except ResourceNotFoundError:
            pass

    def list_output_files(self, names: JobNames, directory_id: str, directory: str = ".") -> list[Any]:
        """The files of one output directory of a job (with download URLs)."""
        options = bm.list_output_files_options(directory_id, directory=directory)
        try:
            return list(
                self.batchai.jobs.list_output_files(
                    names.resource_group, names.workspace, names.experiment, names.job, options
                )
            )
        except ResourceNotFoundError:
            return []
