"""The compute port implemented on Azure Machine Learning (``COMPUTE_BACKEND=azureml``).

Speaks ARM REST ``Microsoft.MachineLearningServices`` api-version 2024-10-01 through azure-mgmt-core's
``ARMPipelineClient`` (ARM retries, the app's credential; not azure-ai-ml: about 110 MB and seconds of
import at every cold start). The only module that knows Azure ML. Batch AI's concepts map as
Microsoft's migration guide says:

- workspace -> the Azure ML workspace ``AZUREML_WORKSPACE`` in ``BATCHAI_RESOURCE_GROUP`` (Bicep makes
  it in Azure; when missing it is created with a minimal body, which only the local stack accepts);
  the file share -> an Azure File datastore (``FILE_SHARE_NAME``) registered by ``ensure_workspace``.
- cluster -> an ``AmlCompute`` compute: VM size, priority, ``minNodeCount`` 0 and
  ``nodeIdleTimeBeforeScaleDown`` from CLUSTER_IDLE_MINUTES unless the spec pins nodes; names follow
  Azure ML's rule (2-16 characters), derived deterministically as Batch AI's are.
- image -> an environment version named from the image's digest; job -> a Command job whose command
  exports the ``AZ_BATCHAI_*`` variables from ``${{inputs.*}}``/``${{outputs.*}}``, so Batch AI scripts
  run unchanged; experiment -> the job's ``experimentName`` (no resource of its own).
- stdout/stderr: Azure ML writes both to ``ExperimentRun/dcid.<job>/user_logs/std_log.txt`` in the
  workspace storage's ``azureml`` container; the port shows it as ``stdouterr/stdout.txt``. A PyTorch or
  Mpi distribution of several processes writes one ``std_log_process_<rank>.txt`` each, shown as
  ``stdout-<rank>.txt``; the lead (rank 0) log is the one read for metrics and log tails. Outputs:
  ``uri_folder`` outputs on ``workspaceblobstore`` at ``azureml/<job>/<output id>/<path_suffix>``.
  The workspace's storage is the app's data account (STORAGE_CONNECTION_STRING), as Bicep makes it;
  read URLs are SAS links valid for an hour (account key, else a user delegation key).

Job states: NotStarted/Starting/Provisioning/Preparing/Queued/Paused/Unknown -> queued;
Running/Finalizing/NotResponding -> running; CancelRequested -> terminating; Completed -> succeeded;
Failed -> failed; Canceled -> failed with the error JobCancelled (a run cancelled through this app
is already ``cancelled`` before its job is). Azure ML reports no exit code and no start/end times.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shlex
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

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
from shared.runspec import KeyVaultSecret, RunSpec, RunSpecError, Toolkit

if TYPE_CHECKING:  # annotations only
    from shared.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["AzureMLBackend"]

API_VERSION = "2024-10-01"
RESOURCES_API_VERSION = "2021-04-01"
PROVIDER = "Microsoft.MachineLearningServices"
ARTIFACT_CONTAINER = "azureml"
BLOB_DATASTORE = "workspaceblobstore"
DEFAULT_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"
TERMINATE_WAIT_SECONDS = 30.0
LINK_MINUTES = 60
_COMPUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,14}[A-Za-z0-9]$")
_DATASTORE_URI = re.compile(r"^azureml://datastores/(?P<ds>[^/]+)/paths/(?P<path>.*)$")
# A distribution whose processes Azure ML logs one file each, `user_logs/std_log_process_<rank>.txt`
# (the rank zero-padded to the width of the highest one); a single process logs `std_log.txt`.
_PER_PROCESS_LOGS = frozenset({"pytorch", "mpi"})
_PROCESS_LOG = re.compile(r"^std_log_process_(?P<rank>\d+)\.txt$")


def lead_log_blob(body: dict[str, Any]) -> str:
    """The user_logs file of a job's lead process (rank 0): what the monitor reads metrics from and a
    run's log tail shows."""
    props = body.get("properties") or {}
    distribution = props.get("distribution") or {}
    count = int((props.get("resources") or {}).get("instanceCount") or 1) * int(
        distribution.get("processCountPerInstance") or 1
    )
    if str(distribution.get("distributionType") or "").lower() in _PER_PROCESS_LOGS and count > 1:
        return f"std_log_process_{0:0{len(str(count - 1))}d}.txt"
    return "std_log.txt"


def shown_log_name(name: str) -> str:
    """A user_logs file as the port shows it in ``stdouterr``: ``std_log.txt`` as ``stdout.txt``, a
    process's ``std_log_process_<rank>.txt`` as ``stdout-<rank>.txt`` (Batch AI's per-rank names, which
    ``compute_port.lead_log_name`` picks the lead from); others as they are."""
    if name == "std_log.txt":
        return "stdout.txt"
    m = _PROCESS_LOG.match(name)
    return f"stdout-{int(m['rank'])}.txt" if m else name


STATES = {
    "notstarted": "queued",
    "starting": "queued",
    "provisioning": "queued",
    "preparing": "queued",
    "queued": "queued",
    "paused": "queued",
    "unknown": "queued",
    "running": "running",
    "finalizing": "running",
    "notresponding": "running",
    "cancelrequested": "terminating",
    "completed": "succeeded",
    "failed": "failed",
    "canceled": "failed",
}
TERMINAL = frozenset({"completed", "failed", "canceled"})
PROBE_OPTIONS: dict[str, Any] = {"retry_total": 1, "connection_timeout": 5, "read_timeout": 10}


def unsupported(field: str, message: str) -> RunSpecError:
    """A run spec field this backend cannot map: the run fails naming the field and the backend."""
    return RunSpecError([{"field": field, "message": f"not supported by the azureml backend: {message}"}])


def _digest(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _slug(text: str, length: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not slug or not slug[0].isalpha():
        slug = "c" + slug
    return slug[:length].rstrip("-")


def _duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    return f"PT{seconds}S"


class AzureMLBackend:
    """Azure ML operations for runs, in the settings' resource group and Azure ML workspace."""

    name = "azureml"

    def __init__(self, settings: Settings, client: Any = None) -> None:
        self.settings = settings
        self._client = client
        self._lock = threading.Lock()
        self._workspace_ready = False
        self._environments: set[str] = set()
        self._containers: dict[str, str] = {}
        self._delegation: tuple[Any, float] | None = None

    # --- plumbing ------------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            from shared import sdk_clients

            self._client = sdk_clients.arm_pipeline_client(self.settings)
        return self._client

    @property
    def workspace_id(self) -> str:
        s = self.settings
        return (
            f"/subscriptions/{s.subscription_id}/resourceGroups/{s.resource_group}"
            f"/providers/{PROVIDER}/workspaces/{s.azureml_workspace}"
        )

    @property
    def datastore_name(self) -> str:
        return "share_" + re.sub(r"[^A-Za-z0-9_]", "_", self.settings.file_share_name)

    def _call(
        self,
        operation: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: str = "",
        api_version: str = API_VERSION,
        options: dict[str, Any] | None = None,
    ) -> tuple[int, Any, Any]:
        """One ARM request: (status, JSON body or None, headers); every failure a ComputeError."""
        from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError, ServiceResponseError
        from azure.core.rest import HttpRequest

        url = path if path.startswith("http") else f"{self.settings.arm_endpoint.rstrip('/')}{path}"
        if "api-version=" not in url:
            url += ("&" if "?" in url else "?") + f"api-version={api_version}{query}"
        request = HttpRequest(method, url, json=body) if body is not None else HttpRequest(method, url)
        try:
            response = self.client.send_request(request, **(options or {}))
        except ClientAuthenticationError as exc:
            raise ComputeError(operation, "AuthenticationFailed", str(exc).splitlines()[0], 401) from exc
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise ComputeError(
                operation, "ServiceUnavailable", f"{self.settings.arm_endpoint}: {str(exc).splitlines()[0]}"
            ) from exc
        data = None
        if response.content:
            try:
                data = response.json()
            except ValueError:
                data = None
        if response.status_code >= 400:
            error = (data or {}).get("error") if isinstance(data, dict) else None
            code = (error or {}).get("code") or f"Http{response.status_code}"
            message = (error or {}).get("message") or response.text()[:500]
            raise ComputeError(operation, code, message, response.status_code)
        return response.status_code, data, response.headers

    def _get(self, operation: str, path: str) -> Any:
        try:
            return self._call(operation, "GET", path)[1]
        except ComputeError as exc:
            if exc.not_found:
                return None
            raise

    # --- names ---------------------------------------------------------------------------------------
    def cluster_name(self, spec: RunSpec, dataset: str) -> str:
        """The spec's ``cluster_name`` (Azure ML's rule: 2-16 letters, digits and '-'), or one derived
        from the dataset and the cluster settings, so a changed spec gets a fresh compute."""
        if spec.cluster_name:
            if not _COMPUTE_NAME.match(spec.cluster_name):
                raise unsupported(
                    "cluster_name",
                    f"{spec.cluster_name!r}: Azure ML compute names are 2-16 letters, digits and '-', "
                    "starting with a letter and ending with a letter or digit",
                )
            return spec.cluster_name
        fingerprint = json.dumps([dataset, self._scale(spec), self._vm_size(spec), self._priority(spec)])
        return f"{_slug(dataset, 7)}-{_digest(fingerprint)}"

    def job_names(self, run_id: str, dataset: str) -> JobNames:
        return self.job_ref(_slug(dataset, 200) if dataset else "default", f"run-{run_id}".lower())

    def job_ref(self, experiment: str, job: str) -> JobNames:
        return JobNames(
            self.settings.resource_group,
            self.settings.azureml_workspace,
            experiment,
            job,
            f"{self.workspace_id}/jobs/{job}",
        )

    # --- workspace -----------------------------------------------------------------------------------
    def ensure_workspace(self) -> None:
        """The resource group, the workspace and the datastore of the file share (once per process)."""
        if self._workspace_ready:
            return
        with self._lock:
            if self._workspace_ready:
                return
            s = self.settings
            if self._get("get workspace", self.workspace_id) is None:
                # Only then the resource group: in Azure the app's roles are on the workspace alone.
                group = f"/subscriptions/{s.subscription_id}/resourcegroups/{s.resource_group}"
                if self._get("get resource group", group + f"?api-version={RESOURCES_API_VERSION}") is None:
                    self._call(
                        "create resource group",
                        "PUT",
                        group,
                        {"location": s.location},
                        api_version=RESOURCES_API_VERSION,
                    )
                # In Azure, infra/azure/main.bicep makes the workspace with its storage account, Key
                # Vault and Application Insights; this minimal body is what the local stack accepts.
                self._call(
                    "create workspace",
                    "PUT",
                    self.workspace_id,
                    {"location": s.location, "properties": {"friendlyName": s.azureml_workspace}},
                )
            datastore = f"{self.workspace_id}/datastores/{self.datastore_name}"
            if self._get("get the share's datastore", datastore) is not None:  # Bicep registers it
                self._workspace_ready = True
                return
            storage = s.file_share_storage  # the share's own account (FILE_SHARE_CONNECTION_STRING)
            key = storage.account_key.get_secret_value() if storage.account_key is not None else None
            credentials: dict[str, Any] = (
                {"credentialsType": "AccountKey", "secrets": {"secretsType": "AccountKey", "key": key}}
                if key
                else {"credentialsType": "None"}
            )
            self._call(
                "register the share's datastore",
                "PUT",
                datastore,
                {
                    "properties": {
                        "datastoreType": "AzureFile",
                        "accountName": storage.account_name,
                        "fileShareName": s.file_share_name,
                        "credentials": credentials,
                        "description": "the share ingest stages datasets into",
                    }
                },
            )
            self._workspace_ready = True

    # --- clusters ------------------------------------------------------------------------------------
    def _vm_size(self, spec: RunSpec) -> str:
        return spec.vm_size or self.settings.default_vm_size

    @staticmethod
    def _priority(spec: RunSpec) -> str:
        return "LowPriority" if spec.cluster.vm_priority == "lowpriority" else "Dedicated"

    def _scale(self, spec: RunSpec) -> dict[str, Any]:
        idle = f"PT{int(self.settings.cluster_idle_minutes)}M"
        if spec.cluster.manual is not None:  # pinned nodes
            if spec.cluster.manual.node_deallocation_option is not None:
                raise unsupported(
                    "cluster.manual.node_deallocation_option", "AmlCompute chooses how nodes are released"
                )
            count = spec.cluster.manual.target_node_count
            return {
                "minNodeCount": count,
                "maxNodeCount": max(count, spec.node_count),
                "nodeIdleTimeBeforeScaleDown": idle,
            }
        if spec.cluster.auto_scale is not None:
            auto = spec.cluster.auto_scale
            if auto.initial_node_count not in (None, auto.minimum_node_count):
                raise unsupported(
                    "cluster.auto_scale.initial_node_count", "AmlCompute starts at minimum_node_count"
                )
            return {
                "minNodeCount": auto.minimum_node_count,
                "maxNodeCount": auto.maximum_node_count,
                "nodeIdleTimeBeforeScaleDown": idle,
            }
        return {"minNodeCount": 0, "maxNodeCount": spec.node_count, "nodeIdleTimeBeforeScaleDown": idle}

    def compute_body(self, spec: RunSpec) -> dict[str, Any]:
        return {
            "location": self.settings.location,
            "properties": {
                "computeType": "AmlCompute",
                "description": "training cluster of batchai-serverless",
                "properties": {
                    "vmSize": self._vm_size(spec),
                    "vmPriority": self._priority(spec),
                    "scaleSettings": self._scale(spec),
                },
            },
        }

    def ensure_cluster(self, spec: RunSpec, dataset: str) -> ClusterRef:
        self.ensure_workspace()
        name = self.cluster_name(spec, dataset)
        path = f"{self.workspace_id}/computes/{name}"
        wanted = self.compute_body(spec)
        existing = self._get(f"get compute {name}", path)
        if existing is not None:
            props = existing.get("properties") or {}
            state = (props.get("provisioningState") or "").lower()
            if state == "deleting":
                raise ComputeError(
                    f"ensure cluster {name}",
                    "ClusterDeleting",
                    "the compute is being deleted; retry later",
                    409,
                )
            have = props.get("properties") or {}
            want = wanted["properties"]["properties"]
            problems = [
                f"{k}: {have.get(k)!r} != {want[k]!r}"
                for k in ("vmSize", "vmPriority")
                if have.get(k) is not None and str(have.get(k)).lower() != str(want[k]).lower()
            ]
            if problems:
                raise ComputeError(
                    f"ensure cluster {name}",
                    "ClusterMismatch",
                    "an existing compute of that name has other settings: " + "; ".join(problems),
                    409,
                )
            return ClusterRef(
                name,
                existing.get("id") or path,
                False,
                state or None,
                (have.get("allocationState") or "").lower() or None,
            )
        self._call(f"create compute {name}", "PUT", path, wanted)
        log.info("requested Azure ML compute %s (%s)", name, self._vm_size(spec))
        return ClusterRef(name, path, True, "creating")

    @staticmethod
    def is_steady(cluster: ClusterRef) -> bool:
        return (cluster.allocation_state or "").lower() == "steady" and not cluster.created

    @staticmethod
    def _cluster_status(body: dict[str, Any]) -> ClusterStatus:
        props = body.get("properties") or {}
        aml = props.get("properties") or {}
        counts = aml.get("nodeStateCounts")
        errors = tuple(
            ServiceError(
                str((e.get("error") or e).get("code") or ""), str((e.get("error") or e).get("message") or "")
            )
            for e in (aml.get("errors") or props.get("provisioningErrors") or [])
        )
        return ClusterStatus(
            name=body.get("name", ""),
            id=body.get("id", ""),
            vm_size=aml.get("vmSize"),
            vm_priority=(aml.get("vmPriority") or "").lower() or None,
            allocation_state=(aml.get("allocationState") or "").lower() or None,
            provisioning_state=(props.get("provisioningState") or "").lower() or None,
            current_node_count=aml.get("currentNodeCount"),
            node_state_counts=(
                {re.sub(r"(?<!^)([A-Z])", r"_\1", k).lower(): v for k, v in counts.items()}
                if counts
                else None
            ),
            # AmlCompute always scales itself between its bounds: shown as Batch AI's auto-scale.
            scale_settings={
                "auto_scale": {
                    "minimum_node_count": (aml.get("scaleSettings") or {}).get("minNodeCount", 0),
                    "maximum_node_count": (aml.get("scaleSettings") or {}).get("maxNodeCount"),
                    "node_idle_time_before_scale_down": (aml.get("scaleSettings") or {}).get(
                        "nodeIdleTimeBeforeScaleDown"
                    ),
                }
            },
            created_at=parse_time(props.get("createdOn")),
            errors=errors,
        )

    def get_cluster(self, name: str) -> ClusterStatus | None:
        body = self._get(f"get compute {name}", f"{self.workspace_id}/computes/{name}")
        return None if body is None else self._cluster_status(body)

    def list_clusters(self) -> dict[str, ClusterStatus]:
        out: dict[str, ClusterStatus] = {}
        url: str | None = f"{self.workspace_id}/computes"
        while url:
            try:
                _, page, _ = self._call("list computes", "GET", url)
            except ComputeError as exc:
                if exc.not_found:
                    return {}
                raise
            for item in (page or {}).get("value", []):
                if (item.get("properties") or {}).get("computeType") == "AmlCompute":
                    status = self._cluster_status(item)
                    out[status.name] = status
            url = (page or {}).get("nextLink")
        return out

    def request_nodes(self, name: str, count: int) -> bool:
        """AmlCompute adds nodes for waiting jobs itself (up to maxNodeCount): nothing to ask."""
        return False

    def release_nodes(self, name: str) -> bool:
        """AmlCompute removes idle nodes itself (nodeIdleTimeBeforeScaleDown): nothing to release."""
        return False

    def delete_cluster(self, name: str) -> bool:
        try:
            self._call(
                f"delete compute {name}",
                "DELETE",
                f"{self.workspace_id}/computes/{name}",
                query="&underlyingResourceAction=Delete",
            )
        except ComputeError as exc:
            if exc.not_found:
                return False
            raise
        return True

    # --- experiments -----------------------------------------------------------------------------------
    def request_experiment(self, dataset: str) -> None:
        """Azure ML experiments are names on jobs: nothing to create."""

    def list_experiments(self) -> list[ExperimentStatus]:
        first: dict[str, datetime | None] = {}
        for job in self._all_jobs():
            created = job.created_at
            if job.experiment not in first or (created and (first[job.experiment] or created) >= created):
                first[job.experiment] = created
        return [ExperimentStatus(name, created) for name, created in sorted(first.items())]

    def delete_experiment(self, name: str) -> bool:
        """Nothing to delete: an experiment disappears with its last job."""
        return True

    # --- jobs ----------------------------------------------------------------------------------------
    def _environment_id(self, spec: RunSpec) -> str:
        image = spec.image or DEFAULT_IMAGE
        name = f"img-{_digest(image, 16)}"
        path = f"{self.workspace_id}/environments/{name}/versions/1"
        if path not in self._environments:
            if self._get(f"get environment {name}", path) is None:
                body: dict[str, Any] = {
                    "properties": {
                        "image": image,
                        "description": f"the run spec's image {image}",
                        "osType": "Linux",
                    }
                }
                self._call(f"create environment {name}", "PUT", path, body)
            self._environments.add(path)
        return path

    def check_spec(self, spec: RunSpec) -> None:
        """Refuse, before anything is created, what this backend cannot map (RunSpecError naming the
        field and the backend): the same checks submission makes, without a request."""
        self.cluster_name(spec, "dataset")
        self._scale(spec)
        self.job_body(self.job_ref("experiment", "job"), spec, "dataset", "cluster", environment_id="check")

    def job_body(
        self,
        names: JobNames,
        spec: RunSpec,
        dataset: str,
        cluster_id: str,
        *,
        data_dir: str | None = None,
        environment_id: str | None = None,
    ) -> dict[str, Any]:
        """The Command job of a run: every run spec field mapped, or refused naming the field."""
        if spec.scheduling_priority is not None:
            raise unsupported("scheduling_priority", "Azure ML job tiers are not Batch AI priorities")
        if spec.communication_backend is not None:
            raise unsupported("communication_backend", "Azure ML's PyTorch distribution chooses it")
        for sname, secret in spec.secret_environment_variables.items():
            kind = "a Key Vault secret" if isinstance(secret, KeyVaultSecret) else "an inline secret"
            raise unsupported(
                f"secret_environment_variables.{sname}",
                f"{kind} has no secret-valued field in a 2024-10-01 command job (a value would be "
                "readable in the job's definition); read it in the script through the job's identity",
            )
        inputs: dict[str, Any] = {}
        exports = [
            f"AZ_BATCHAI_JOB_NAME={shlex.quote(names.job)}",
            f"AZ_BATCHAI_EXPERIMENT_NAME={shlex.quote(names.experiment)}",
            f"AZ_BATCHAI_WORKSPACE_NAME={shlex.quote(names.workspace)}",
            f"AZ_BATCHAI_RESOURCE_GROUP={shlex.quote(names.resource_group)}",
            "AZ_BATCHAI_NUM_GPUS=$(nvidia-smi -L 2>/dev/null | wc -l)",
        ]
        for directory in spec.input_directories:
            root = (data_dir or dataset).strip("/")
            path = root if directory.path in ("", ".") else f"{root}/{directory.path}"
            inputs[directory.id] = {
                "jobInputType": "uri_folder",
                "mode": "ReadOnlyMount",
                "uri": f"azureml://datastores/{self.datastore_name}/paths/{path}/",
            }
            exports.append(f"AZ_BATCHAI_INPUT_{directory.id}=${{{{inputs.{directory.id}}}}}")
        outputs: dict[str, Any] = {}
        for output in spec.output_directories:
            if output.path_prefix not in ("", "."):
                raise unsupported(
                    f"output_directories.{output.id}.path_prefix",
                    "Azure ML writes outputs to the workspace's blob datastore, not to a share path",
                )
            where = f"azureml/{names.job}/{output.id}"
            if output.path_suffix:
                where += f"/{output.path_suffix.strip('/')}"
            outputs[output.id] = {
                "jobOutputType": "uri_folder",
                "mode": "ReadWriteMount",
                "uri": f"azureml://datastores/{BLOB_DATASTORE}/paths/{where}/",
            }
            exports.append(f"AZ_BATCHAI_OUTPUT_{output.id}=${{{{outputs.{output.id}}}}}")
        main = self._main_command(spec, names)
        command = "export " + " ".join(exports) + "\n"
        if spec.job_preparation:
            command += f"( {spec.job_preparation}\n) || exit $?\n"
        command += main
        properties: dict[str, Any] = {
            "jobType": "Command",
            "experimentName": names.experiment,
            "displayName": names.job,
            "description": f"run of dataset {dataset}",
            "computeId": cluster_id,
            "environmentId": environment_id or self._environment_id(spec),
            "command": command,
            "inputs": inputs,
            "outputs": outputs,
            "environmentVariables": dict(sorted(spec.environment_variables.items())),
            "resources": {
                "instanceCount": spec.node_count,
                **({"shmSize": spec.shm_size} if spec.shm_size else {}),
            },
            "tags": {"dataset": dataset[:256]},
        }
        if spec.max_wall_clock_time is not None:
            properties["limits"] = {
                "jobLimitsType": "Command",
                "timeout": _duration(spec.max_wall_clock_time),
            }
        distribution = self._distribution(spec)
        if distribution is not None:
            properties["distribution"] = distribution
        return {"properties": properties}

    def _main_command(self, spec: RunSpec, names: JobNames) -> str:
        if spec.toolkit in (Toolkit.CUSTOM, Toolkit.CUSTOMMPI):
            return spec.command_line or "true"
        script = None
        if spec.script is not None:
            root = next((d.id for d in spec.input_directories if d.path in ("", ".")), None)
            if root is None:
                raise unsupported(
                    "script", "the script must live in an input directory at the dataset's root"
                )
            script = f'"$AZ_BATCHAI_INPUT_{root}"/{shlex.quote(spec.script)}'
        if script is None:
            raise unsupported("script", f"toolkit {spec.toolkit.value} needs a script")
        interpreter = shlex.quote(spec.python_interpreter) if spec.python_interpreter else "python"
        args = spec.arguments or ""
        # The arguments may name $AZ_BATCHAI_* variables: the shell expands them, as Batch AI did.
        return f"{interpreter} {script} {args}".rstrip()

    def _per_instance(self, spec: RunSpec) -> int:
        if spec.process_count is None:
            return 1
        if spec.process_count % spec.node_count:
            raise unsupported(
                "process_count",
                f"{spec.process_count} processes do not split evenly over "
                f"{spec.node_count} node(s) (Azure ML counts processes per instance)",
            )
        return spec.process_count // spec.node_count

    def _distribution(self, spec: RunSpec) -> dict[str, Any] | None:
        toolkit = spec.toolkit
        if toolkit is Toolkit.TENSORFLOW:
            if spec.process_count is None and spec.parameter_server_count is None:
                return None
            return {
                "distributionType": "TensorFlow",
                "workerCount": spec.process_count or spec.node_count,
                "parameterServerCount": spec.parameter_server_count or 0,
            }
        if spec.parameter_server_count is not None:
            raise unsupported("parameter_server_count", "only the tensorflow toolkit has parameter servers")
        if toolkit is Toolkit.PYTORCH:
            return {"distributionType": "PyTorch", "processCountPerInstance": self._per_instance(spec)}
        if toolkit in (Toolkit.HOROVOD, Toolkit.CUSTOMMPI, Toolkit.CNTK, Toolkit.CHAINER):
            if spec.node_count == 1 and spec.process_count in (None, 1):
                return None
            return {"distributionType": "Mpi", "processCountPerInstance": self._per_instance(spec)}
        if spec.process_count not in (None, 1):
            raise unsupported("process_count", f"toolkit {toolkit.value} runs one process")
        return None

    def create_job(
        self, names: JobNames, spec: RunSpec, dataset: str, cluster_id: str, *, data_dir: str | None = None
    ) -> JobRef:
        """Create the run's Command job (idempotent); its inputs are in ``data_dir`` on the share (the
        run's snapshot), default the dataset's directory."""
        self.ensure_workspace()
        path = f"{self.workspace_id}/jobs/{names.job}"
        existing = self._get(f"get job {names.job}", path)
        if existing is not None:
            status = (existing.get("properties") or {}).get("status")
            return JobRef(
                names.experiment,
                names.job,
                existing.get("id") or path,
                False,
                STATES.get((status or "").lower()),
            )
        body = self.job_body(names, spec, dataset, cluster_id, data_dir=data_dir)
        self._call(f"create job {names.job}", "PUT", path, body)
        log.info("submitted Azure ML job %s (experiment %s)", names.job, names.experiment)
        return JobRef(names.experiment, names.job, path, True, "queued")

    def _job_status(self, body: dict[str, Any]) -> JobStatus:
        props = body.get("properties") or {}
        raw = (props.get("status") or "Unknown").lower()
        state = STATES.get(raw, "queued")
        errors: tuple[ServiceError, ...] = ()
        if raw == "canceled":
            errors = (ServiceError("JobCancelled", "the job was cancelled in Azure ML"),)
        elif raw == "failed":
            lead = lead_log_blob(body)
            errors = (
                ServiceError("JobFailed", f"Azure ML reports the job Failed; its log is user_logs/{lead}"),
            )
        timeout = (props.get("limits") or {}).get("timeout")
        compute = props.get("computeId") or ""
        return JobStatus(
            name=body.get("name", ""),
            experiment=props.get("experimentName") or "Default",
            state=state,
            cluster=compute.rstrip("/").rsplit("/", 1)[-1] or None,
            created_at=parse_time((body.get("systemData") or {}).get("createdAt")),
            errors=errors,
            max_wall_clock=_parse_duration(timeout) if timeout else None,
            log_location=f"ExperimentRun/dcid.{body.get('name', '')}/user_logs/{lead_log_blob(body)}",
        )

    def get_job(self, names: JobNames) -> JobStatus | None:
        body = self._get(f"get job {names.job}", f"{self.workspace_id}/jobs/{names.job}")
        return None if body is None else self._job_status(body)

    def _all_jobs(self) -> list[JobStatus]:
        """Every Command job of the workspace: one ARM request per page (Jobs_List)."""
        jobs: list[JobStatus] = []
        url: str | None = f"{self.workspace_id}/jobs"
        query = "&jobType=Command"
        while url:
            try:
                _, page, _ = self._call("list jobs", "GET", url, query=query)
            except ComputeError as exc:
                if exc.not_found:
                    return []
                raise
            jobs.extend(self._job_status(item) for item in (page or {}).get("value", []))
            url, query = (page or {}).get("nextLink"), ""
        return jobs

    def list_jobs(self, experiment: str) -> list[JobStatus]:
        return [j for j in self._all_jobs() if j.experiment == experiment]

    def list_jobs_of(self, experiments: Iterable[str]) -> JobListing:
        """One listing of the workspace's jobs for every experiment (the monitor's flat cost)."""
        wanted = list(dict.fromkeys(experiments))
        listing = JobListing()
        try:
            jobs = self._all_jobs()
        except ComputeError as exc:
            listing.errors = dict.fromkeys(wanted, exc)
            return listing
        for experiment in wanted:
            listing.jobs[experiment] = []
        for job in jobs:
            if job.experiment in listing.jobs:
                listing.jobs[job.experiment].append(job)
        return listing

    def terminate_job(self, names: JobNames) -> bool:
        try:
            self._call(f"cancel job {names.job}", "POST", f"{self.workspace_id}/jobs/{names.job}/cancel")
        except ComputeError as exc:
            if exc.not_found:
                return False
            raise
        return True

    def delete_job(self, names: JobNames) -> bool:
        try:
            self._call(f"delete job {names.job}", "DELETE", f"{self.workspace_id}/jobs/{names.job}")
        except ComputeError as exc:
            if exc.not_found:
                return False
            raise
        return True

    def terminate_and_delete_job(self, names: JobNames) -> None:
        job = self.get_job(names)
        if job is None:
            return
        if job.state in ("queued", "running"):
            self.terminate_job(names)
            deadline = time.monotonic() + TERMINATE_WAIT_SECONDS
            while time.monotonic() < deadline:
                job = self.get_job(names)
                if job is None or job.state not in ("queued", "running", "terminating"):
                    break
                time.sleep(0.5)
        self.delete_job(names)
        log.info("Azure ML job %s cancelled and deleted", names.job)

    # --- outputs and logs ----------------------------------------------------------------------------
    def _blob_container(self, name: str) -> Any:
        from shared import sdk_clients

        return sdk_clients.blob_service(self.settings).get_container_client(name)

    def _datastore_container(self, datastore: str) -> str | None:
        if datastore not in self._containers:
            body = self._get(f"get datastore {datastore}", f"{self.workspace_id}/datastores/{datastore}")
            if body is None:
                return None
            self._containers[datastore] = (body.get("properties") or {}).get("containerName") or ""
        return self._containers[datastore] or None

    def _read_url(self, container: str, blob: str) -> str:
        """A read-only SAS link valid for LINK_MINUTES (account key, else a user delegation key)."""
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        storage = self.settings.storage
        expiry = datetime.now(UTC) + timedelta(minutes=LINK_MINUTES)
        kwargs: dict[str, Any] = {}
        if storage.account_key is not None:
            kwargs["account_key"] = storage.account_key.get_secret_value()
        else:
            if self._delegation is None or self._delegation[1] < time.time() + 300:
                from shared import sdk_clients

                key = sdk_clients.blob_service(self.settings).get_user_delegation_key(
                    datetime.now(UTC) - timedelta(minutes=5), expiry + timedelta(minutes=LINK_MINUTES)
                )
                self._delegation = (key, time.time() + 2 * LINK_MINUTES * 60)
            kwargs["user_delegation_key"] = self._delegation[0]
        sas = generate_blob_sas(
            storage.account_name,
            container,
            blob,
            permission=BlobSasPermissions(read=True),
            expiry=expiry,
            **kwargs,
        )
        base = self._blob_container(container).url.rstrip("/")
        return f"{base}/{quote(blob)}?{sas}"

    def _list_blobs(self, container: str, prefix: str) -> list[tuple[str, bool, int | None]]:
        from azure.core.exceptions import ResourceNotFoundError

        items = []
        try:
            for item in self._blob_container(container).walk_blobs(name_starts_with=prefix, delimiter="/"):
                name = item.name[len(prefix) :]
                is_dir = name.endswith("/")
                items.append((name.rstrip("/"), is_dir, None if is_dir else getattr(item, "size", None)))
        except ResourceNotFoundError:
            return []
        return items

    def list_output_files(self, names: JobNames, directory_id: str, directory: str = ".") -> list[OutputItem]:
        sub = "" if directory in ("", ".") else directory.strip("/") + "/"
        if directory_id == "stdouterr":
            prefix = f"ExperimentRun/dcid.{names.job}/user_logs/{sub}"
            out = []
            for name, is_dir, size in self._list_blobs(ARTIFACT_CONTAINER, prefix):
                shown = name if sub else shown_log_name(name)
                url = None if is_dir else self._read_url(ARTIFACT_CONTAINER, prefix + name)
                out.append(OutputItem(shown, is_dir, size, url))
            return out
        body = self._get(f"get job {names.job}", f"{self.workspace_id}/jobs/{names.job}")
        output = ((body or {}).get("properties") or {}).get("outputs", {}).get(directory_id) or {}
        m = _DATASTORE_URI.match(output.get("uri") or "")
        if m is None:
            return []
        container = self._datastore_container(m["ds"])
        if container is None:
            return []
        prefix = m["path"].strip("/") + "/" + sub
        return [
            OutputItem(name, is_dir, size, None if is_dir else self._read_url(container, prefix + name))
            for name, is_dir, size in self._list_blobs(container, prefix)
        ]

    def read_stdout(self, job: JobStatus, offset: int, length: int) -> bytes:
        """A Range GET of the job's lead log (std_log.txt, or rank 0's std_log_process_<0>.txt) in the
        artifact container (no ARM request)."""
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        if not job.log_location or length <= 0:
            return b""
        blob = self._blob_container(ARTIFACT_CONTAINER).get_blob_client(job.log_location)
        try:
            data: bytes = blob.download_blob(offset=offset, length=length).readall()
            return data
        except ResourceNotFoundError:
            return b""
        except HttpResponseError as exc:
            if exc.status_code == 416:
                return b""
            raise

    # --- health --------------------------------------------------------------------------------------
    def health(self) -> str:
        try:
            self._call("probe the Azure ML workspace", "GET", self.workspace_id, options=PROBE_OPTIONS)
        except ComputeError as exc:
            if exc.not_found:
                raise ComputeError(
                    exc.operation,
                    "WorkspaceNotFound",
                    f"Azure ML answers, but workspace {self.settings.azureml_workspace} does not exist in "
                    f"resource group {self.settings.resource_group} (infra/azure/main.bicep creates it; the "
                    "local stack makes it on first use)",
                    404,
                    public_message="the Azure ML workspace AZUREML_WORKSPACE does not exist yet "
                    "(infra/azure/main.bicep creates it; the local stack on first use)",
                ) from exc
            raise
        return f"Azure ML workspace {self.settings.azureml_workspace} answers in {self.settings.location}"


def _parse_duration(value: str) -> timedelta | None:
    m = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?", value or "")
    if not m or value in ("P", "PT"):
        return None
    days, hours, minutes, seconds = m.groups()
    return timedelta(
        days=int(days or 0),
        hours=int(hours or 0),
        minutes=int(minutes or 0),
        seconds=math.floor(float(seconds or 0)),
    )
