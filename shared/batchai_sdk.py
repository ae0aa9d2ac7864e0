"""A thin, typed wrapper over the Batch AI and resource-group SDK sdk_clients.

Why: the pipeline, API and cleanup code should say "ensure the cluster", "submit the job", "delete the
experiment" without repeating resource group and workspace names, SDK option objects, paging, LRO
handling and error translation. Every Azure failure surfaces as one exception type, `ComputeError`,
carrying the ARM error code and message.

Long-running operations that the callers must not block on (cluster create/delete, job create,
terminate, delete) are sent with `polling=False`: the request is accepted by ARM and the call returns;
the monitor timer observes progress later. Prerequisites that are quick and needed right away
(resource group, workspace, experiment) are waited for.

Idempotent by design (triggers are at-least-once): ensure_* GET first and create only what is
missing, create_job returns the existing job when a retry finds it, deletes of missing resources
return False on 404 instead of failing (ARM itself answers 204 for most).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

from shared import batchai_requests
from shared.compute_port import ClusterRef, ComputeError, JobRef
from shared.settings import Settings, get_settings

if TYPE_CHECKING:  # pragma: no cover
    from azure.mgmt.batchai import BatchAI, models
    from azure.mgmt.resource.resources import ResourceManagementClient

__all__ = ["BatchAISdk", "ClusterRef", "ComputeError", "JobRef"]

log = logging.getLogger(__name__)

_Resource = TypeVar("_Resource")


def _items(paged: object) -> list[Any]:
    """Every item of a pager. azure-mgmt-batchai 7.0.0 annotates its list operations as iterating
    over the page model (``ClusterListResult``...), though the pager yields the items."""
    return list(cast("Iterable[Any]", paged))


RETIRED_PROVIDER_CODES = frozenset(
    {"NoRegisteredProviderFound", "InvalidResourceNamespace", "MissingSubscriptionRegistration"}
)
RETIRED_MESSAGE = (
    "Azure Batch AI (Microsoft.BatchAI) is not available at {endpoint}: Microsoft retired the service on "
    "2019-03-31, so Azure answers '{code}'. To train in Azure, set COMPUTE_BACKEND=azureml (Azure Machine "
    "Learning, its successor; see docs/deploy.md); for Batch AI, point ARM_ENDPOINT at the local ARM "
    "emulator (http://127.0.0.1:10005, see local.settings.json.example)."
)
RETIRED_PUBLIC_MESSAGE = (
    "Microsoft.BatchAI was retired by Microsoft on 2019-03-31 (Azure answers {code}); set "
    "COMPUTE_BACKEND=azureml to train on Azure Machine Learning, or point ARM_ENDPOINT at the local "
    "ARM emulator"
)
WAIT_SECONDS = 120  # the longest wait for a quick prerequisite (workspace, experiment)
# A health probe answers fast or fails: one retry, short timeouts (azure-core takes these per call).
PROBE_OPTIONS: dict[str, Any] = {"retry_total": 1, "connection_timeout": 5, "read_timeout": 10}


def _error_code(exc: Any) -> tuple[str, str]:
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    message = getattr(error, "message", None)
    if not code:
        response = getattr(exc, "response", None)
        with contextlib.suppress(Exception):
            body = response.json() if response is not None else None
            if isinstance(body, dict) and isinstance(body.get("error"), dict):
                code = body["error"].get("code")
                message = body["error"].get("message")
    status = getattr(exc, "status_code", None)
    return (code or (f"Http{status}" if status else type(exc).__name__)), (
        message or str(exc).splitlines()[0]
    )


class BatchAISdk:
    """Batch AI operations in the settings' subscription, resource group and workspace."""

    def __init__(
        self,
        settings: Settings | None = None,
        batchai: BatchAI | None = None,
        resources: ResourceManagementClient | None = None,
    ) -> None:
        self.settings = settings if settings is not None else get_settings()
        self._batchai = batchai
        self._resources = resources

    # --- plumbing ----------------------------------------------------------------------------------
    @property
    def batchai(self) -> BatchAI:
        if self._batchai is None:
            from shared import sdk_clients

            self._batchai = sdk_clients.batchai_client(self.settings)
        return self._batchai

    @property
    def resources(self) -> ResourceManagementClient:
        if self._resources is None:
            from shared import sdk_clients

            self._resources = sdk_clients.resource_client(self.settings)
        return self._resources

    @property
    def _rg(self) -> str:
        return self.settings.resource_group

    @property
    def _ws(self) -> str:
        return self.settings.workspace

    @contextlib.contextmanager
    def _arm(self, operation: str, *, batchai: bool = True) -> Iterator[None]:
        """Translate every azure-core failure into ComputeError with ARM's code and message.

        `batchai`: the call goes to Microsoft.BatchAI, so "no such provider" answers mean the retired
        service (any call for resource groups passes False)."""
        from azure.core.exceptions import (
            AzureError,
            ClientAuthenticationError,
            HttpResponseError,
            ServiceRequestError,
            ServiceResponseError,
        )

        try:
            yield
        except ComputeError:
            raise
        except ClientAuthenticationError as exc:
            raise ComputeError(
                operation, "AuthenticationFailed", str(exc).splitlines()[0], exc.status_code
            ) from exc
        except HttpResponseError as exc:
            code, message = _error_code(exc)
            if code in RETIRED_PROVIDER_CODES and (batchai or "batchai" in message.lower()):
                message = (
                    RETIRED_MESSAGE.format(endpoint=self.settings.arm_endpoint, code=code) + f" ({message})"
                )
                raise ComputeError(
                    operation,
                    "BatchAIUnavailable",
                    message,
                    exc.status_code,
                    public_message=RETIRED_PUBLIC_MESSAGE.format(code=code),
                ) from exc
            raise ComputeError(operation, code, message, exc.status_code) from exc
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise ComputeError(
                operation, "ServiceUnavailable", f"{self.settings.arm_endpoint}: {str(exc).splitlines()[0]}"
            ) from exc
        except AzureError as exc:
            raise ComputeError(operation, type(exc).__name__, str(exc).splitlines()[0]) from exc

    def _get_or_none(
        self, operation: str, call: Callable[..., _Resource], *args: Any, batchai: bool = True
    ) -> _Resource | None:
        from azure.core.exceptions import ResourceNotFoundError

        with self._arm(operation, batchai=batchai):
            try:
                return call(*args)
            except ResourceNotFoundError:
                return None

    def _send_no_wait(
        self, operation: str, begin: Any, *args: Any, missing_ok: bool = False, batchai: bool = True
    ) -> bool:
        """Send a long-running request and return once ARM accepted it (no polling thread)."""
        from azure.core.exceptions import ResourceNotFoundError

        with self._arm(operation, batchai=batchai):
            try:
                begin(*args, polling=False)
            except ResourceNotFoundError:
                if missing_ok:
                    return False
                raise
        return True

    def probe(self) -> None:
        """One cheap read of Microsoft.BatchAI (the location's usages): the health check."""
        with self._arm("probe Microsoft.BatchAI"):
            usages = self.batchai.usages.list(self.settings.location, **PROBE_OPTIONS)
            # The SDK annotates the pager as a plain iterable; it is an ItemPaged.
            next(iter(usages.by_page()), None)  # type: ignore[attr-defined]

    # --- resource group, workspace, file share ---------------------------------------------------------
    def ensure_resource_group(self) -> None:
        """Create BATCHAI_RESOURCE_GROUP in BATCHAI_LOCATION unless it exists (GET first: an identity
        with rights only inside the group can still use it)."""
        groups = self.resources.resource_groups
        if self._get_or_none("get resource group", groups.get, self._rg, batchai=False) is None:
            with self._arm("create resource group", batchai=False):
                groups.create_or_update(self._rg, {"location": self.settings.location})
            log.info("created resource group %s in %s", self._rg, self.settings.location)

    def delete_resource_group(self) -> bool:
        """Begin deleting the resource group and everything in it (the quickstart's last step)."""
        return self._send_no_wait(
            "delete resource group",
            self.resources.resource_groups.begin_delete,
            self._rg,
            missing_ok=True,
            batchai=False,
        )

    def get_workspace(self) -> models.Workspace | None:
        return self._get_or_none("get workspace", self.batchai.workspaces.get, self._rg, self._ws)

    def ensure_workspace(self) -> models.Workspace:
        """The resource group and BATCHAI_WORKSPACE, created and waited for when missing."""
        self.ensure_resource_group()
        workspace = self.get_workspace()
        if workspace is not None and (workspace.provisioning_state or "succeeded") != "deleting":
            return workspace
        with self._arm("create workspace"):
            poller = self.batchai.workspaces.begin_create(
                self._rg, self._ws, batchai_requests.workspace_parameters(self.settings), polling_interval=1
            )
            workspace = poller.result(timeout=WAIT_SECONDS)
        if workspace is None:
            workspace = self.get_workspace()
        if workspace is None:
            raise ComputeError("create workspace", "WorkspaceNotReady", f"{self._ws} did not appear in time")
        log.info("created Batch AI workspace %s", self._ws)
        return workspace

    # --- clusters ------------------------------------------------------------------------------------
    def get_cluster(self, name: str) -> models.Cluster | None:
        return self._get_or_none(f"get cluster {name}", self.batchai.clusters.get, self._rg, self._ws, name)

    def list_clusters(self) -> list[models.Cluster]:
        with self._arm("list clusters"):
            return _items(self.batchai.clusters.list_by_workspace(self._rg, self._ws))

    def ensure_cluster(self, name: str, parameters: models.ClusterCreateParameters) -> ClusterRef:
        """Reuse cluster `name` when its settings fit, else send the create request (no waiting for
        provisioning). A cluster resized to fewer nodes than wanted is resized back; one that differs
        in VM size, priority or mount raises ComputeError('ClusterMismatch')."""
        cluster_id = batchai_requests.cluster_id(self.settings, name)
        existing = self.get_cluster(name)
        if existing is not None:
            if existing.provisioning_state == "deleting":
                raise ComputeError(
                    f"ensure cluster {name}",
                    "ClusterDeleting",
                    "the cluster is being deleted; retry later",
                    409,
                )
            problems = batchai_requests.cluster_differences(existing, parameters)
            if problems:
                raise ComputeError(
                    f"ensure cluster {name}",
                    "ClusterMismatch",
                    "an existing cluster of that name has other settings: " + "; ".join(problems),
                    409,
                )
            wanted_manual = getattr(parameters.scale_settings, "manual", None)
            have_manual = getattr(existing.scale_settings, "manual", None)
            if (
                wanted_manual is not None
                and have_manual is not None
                and (have_manual.target_node_count or 0) < wanted_manual.target_node_count
            ):
                self.scale_cluster(name, wanted_manual.target_node_count)
                log.info(
                    "cluster %s asked for %d node(s) again (it had %d)",
                    name,
                    wanted_manual.target_node_count,
                    have_manual.target_node_count or 0,
                )
                # Its nodes are only now being allocated: the run waits in provisioning.
                state = existing.provisioning_state
                return ClusterRef(name, existing.id or cluster_id, False, state, "resizing")
            return ClusterRef(
                name, existing.id or cluster_id, False, existing.provisioning_state, existing.allocation_state
            )
        self._send_no_wait(
            f"create cluster {name}", self.batchai.clusters.begin_create, self._rg, self._ws, name, parameters
        )
        log.info("requested cluster %s (%s)", name, parameters.vm_size)
        return ClusterRef(name, cluster_id, True, "creating")

    def scale_cluster(self, name: str, target_node_count: int) -> models.Cluster:
        """Manual resize (e.g. to zero nodes for an idle cluster)."""
        with self._arm(f"scale cluster {name}"):
            return self.batchai.clusters.update(
                self._rg, self._ws, name, batchai_requests.cluster_scale_parameters(target_node_count)
            )

    def delete_cluster(self, name: str) -> bool:
        """Begin deleting a cluster. True when ARM accepted it (204 if already gone), False on 404."""
        return self._send_no_wait(
            f"delete cluster {name}",
            self.batchai.clusters.begin_delete,
            self._rg,
            self._ws,
            name,
            missing_ok=True,
        )

    # --- experiments ---------------------------------------------------------------------------------
    def get_experiment(self, name: str) -> models.Experiment | None:
        return self._get_or_none(
            f"get experiment {name}", self.batchai.experiments.get, self._rg, self._ws, name
        )

    def list_experiments(self) -> list[models.Experiment]:
        with self._arm("list experiments"):
            return _items(self.batchai.experiments.list_by_workspace(self._rg, self._ws))

    def ensure_experiment(self, name: str, *, wait: bool = True) -> models.Experiment | None:
        """The experiment, created when missing (a job needs it to exist). With ``wait`` the creation
        is waited for and the experiment returned; without, the request is only sent (a job can be
        created in an experiment that is still provisioning) and None is returned when it was."""
        existing = self.get_experiment(name)
        if existing is not None and existing.provisioning_state != "deleting":
            return existing
        if not wait:
            self._send_no_wait(
                f"create experiment {name}", self.batchai.experiments.begin_create, self._rg, self._ws, name
            )
            log.info("requested experiment %s", name)
            return None
        with self._arm(f"create experiment {name}"):
            experiment = self.batchai.experiments.begin_create(
                self._rg, self._ws, name, polling_interval=1
            ).result(timeout=WAIT_SECONDS)
        created = experiment or self.get_experiment(name)
        if created is None:
            raise ComputeError(f"create experiment {name}", "ExperimentNotReady", "did not appear in time")
        return created

    def delete_experiment(self, name: str) -> bool:
        """Begin deleting an experiment and its jobs. True when ARM accepted it, False on 404."""
        return self._send_no_wait(
            f"delete experiment {name}",
            self.batchai.experiments.begin_delete,
            self._rg,
            self._ws,
            name,
            missing_ok=True,
        )

    # --- jobs ------------------------------------------------------------------------------------------
    def get_job(self, experiment: str, job: str) -> models.Job | None:
        return self._get_or_none(
            f"get job {experiment}/{job}", self.batchai.jobs.get, self._rg, self._ws, experiment, job
        )

    def list_jobs(self, experiment: str) -> list[models.Job]:
        """Every job of an experiment (all pages)."""
        with self._arm(f"list jobs of {experiment}"):
            return _items(self.batchai.jobs.list_by_experiment(self._rg, self._ws, experiment))

    def create_job(self, experiment: str, job: str, parameters: models.JobCreateParameters) -> JobRef:
        """Submit a job (no waiting); when a retry finds the job already there, return it unchanged."""
        job_id = batchai_requests.job_id(self.settings, experiment, job)
        existing = self.get_job(experiment, job)
        if existing is not None:
            return JobRef(experiment, job, existing.id or job_id, False, existing.execution_state)
        self._send_no_wait(
            f"create job {experiment}/{job}",
            self.batchai.jobs.begin_create,
            self._rg,
            self._ws,
            experiment,
            job,
            parameters,
        )
        log.info("submitted job %s/%s", experiment, job)
        return JobRef(experiment, job, job_id, True, "queued")

    def list_output_files(
        self,
        experiment: str,
        job: str,
        directory_id: str,
        *,
        directory: str = ".",
        link_expiry_minutes: int = 60,
    ) -> list[models.File]:
        """Files (with download URLs) in one output directory of a job: 'stdouterr' or an output id."""
        options = batchai_requests.list_output_files_options(
            directory_id, directory=directory, link_expiry_minutes=link_expiry_minutes
        )
        with self._arm(f"list output files of {experiment}/{job}/{directory_id}"):
            return _items(self.batchai.jobs.list_output_files(self._rg, self._ws, experiment, job, options))

    def terminate_job(self, experiment: str, job: str) -> bool:
        """Begin terminating a job; False when it does not exist."""
        return self._send_no_wait(
            f"terminate job {experiment}/{job}",
            self.batchai.jobs.begin_terminate,
            self._rg,
            self._ws,
            experiment,
            job,
            missing_ok=True,
        )

    def delete_job(self, experiment: str, job: str) -> bool:
        """Begin deleting a job. True when ARM accepted it (204 if already gone), False on 404."""
        return self._send_no_wait(
            f"delete job {experiment}/{job}",
            self.batchai.jobs.begin_delete,
            self._rg,
            self._ws,
            experiment,
            job,
            missing_ok=True,
        )
