"""The only module that instantiates `azure.mgmt.batchai.models` (Batch AI API 2018-05-01).

Why one place: what we send Batch AI is decided by a run spec plus app settings, and tests validate
every body built here against Microsoft's published API definition. Everything else asks this
module for parameters and deterministic resource names.

Names are deterministic so that a retried trigger maps to the same Azure resource: the experiment is
the dataset, the job is the run id, and the cluster is the dataset plus a hash of the cluster settings
(unless the spec names a cluster). A name Azure would reject (pattern `^[-\\w_]+$`, 1-64 characters)
is turned into a valid one with a hash suffix, so different inputs never collide.

The SDK is imported inside each builder: `import function_app` stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import TYPE_CHECKING, Any, cast

from shared.runspec import RunSpec, RunSpecError, Toolkit

if TYPE_CHECKING:  # pragma: no cover
    from azure.mgmt.batchai import models

    from shared.settings import Settings

__all__ = [
    "MOUNT_PATH",
    "RELATIVE_MOUNT_PATH",
    "STDOUTERR_DIRECTORY_ID",
    "cluster_differences",
    "cluster_id",
    "cluster_name",
    "cluster_parameters",
    "cluster_scale_parameters",
    "experiment_id",
    "experiment_name",
    "file_share_mount",
    "job_id",
    "job_name",
    "job_parameters",
    "list_output_files_options",
    "parse_resource_id",
    "resource_name",
    "workspace_id",
    "workspace_parameters",
]

# The quickstart's mount: the share appears at $AZ_BATCHAI_MOUNT_ROOT/azurefileshare on every node.
RELATIVE_MOUNT_PATH = "azurefileshare"
MOUNT_PATH = f"$AZ_BATCHAI_MOUNT_ROOT/{RELATIVE_MOUNT_PATH}"
# The output directory id Batch AI reserves for a job's stdout/stderr files.
STDOUTERR_DIRECTORY_ID = "stdouterr"
MAX_NAME = 64
_VALID_NAME = re.compile(r"^[a-z0-9][-a-z0-9_]*$")


# --- names and ids ---------------------------------------------------------------------------------


def _digest(text: str, length: int = 8) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def resource_name(text: str, max_length: int = MAX_NAME) -> str:
    """A valid Batch AI name for `text`: itself when already valid (lowercase), else a slug + hash.

    Lowercase because Azure compares these names case-insensitively: 'Data' and 'data' must not share
    a resource, so any change (case included) adds a hash of the original.
    """
    if text and len(text) <= max_length and _VALID_NAME.match(text):
        return text
    slug = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_") or "x"
    suffix = _digest(text)
    return f"{slug[: max_length - len(suffix) - 1].rstrip('-_') or 'x'}-{suffix}"


def experiment_name(dataset: str) -> str:
    """The experiment that holds a dataset's jobs."""
    return resource_name(dataset)


def job_name(run_id: str) -> str:
    """The job of a run (run ids are already valid names; others get a hash suffix)."""
    return resource_name(run_id)


def _cluster_fingerprint(spec: RunSpec) -> dict[str, Any]:
    scale = spec.cluster
    if scale.auto_scale is not None:
        scaling: dict[str, Any] = {"auto": scale.auto_scale.model_dump(exclude_none=True)}
    else:
        target = scale.manual.target_node_count if scale.manual is not None else spec.node_count
        scaling = {"manual": target}
    return {"vm_size": spec.vm_size, "vm_priority": scale.vm_priority or "dedicated", **scaling}


def cluster_name(spec: RunSpec, dataset: str) -> str:
    """The cluster a run of `dataset` uses: the spec's `cluster_name`, or one derived from the dataset
    and the cluster settings (VM size, priority, scale), so a changed spec gets a fresh cluster and a
    retry gets the same one."""
    if spec.cluster_name:
        return spec.cluster_name
    fingerprint = json.dumps([dataset, _cluster_fingerprint(spec)], sort_keys=True)
    suffix = _digest(fingerprint)
    base = re.sub(r"[^a-z0-9_-]+", "-", dataset.lower()).strip("-_") or "x"
    return f"{base[: MAX_NAME - len(suffix) - 1].rstrip('-_') or 'x'}-{suffix}"


def workspace_id(settings: Settings) -> str:
    return (
        f"/subscriptions/{settings.subscription_id}/resourceGroups/{settings.resource_group}"
        f"/providers/Microsoft.BatchAI/workspaces/{settings.workspace}"
    )


def cluster_id(settings: Settings, name: str) -> str:
    return f"{workspace_id(settings)}/clusters/{name}"


def experiment_id(settings: Settings, experiment: str) -> str:
    return f"{workspace_id(settings)}/experiments/{experiment}"


def job_id(settings: Settings, experiment: str, job: str) -> str:
    return f"{experiment_id(settings, experiment)}/jobs/{job}"


def parse_resource_id(resource_id: str) -> dict[str, str]:
    """The names in an ARM id, keyed by lowercase segment type ('resourcegroups', 'workspaces',
    'clusters', 'experiments', 'jobs', ...)."""
    parts = [p for p in resource_id.split("/") if p]
    out: dict[str, str] = {}
    for key, value in zip(parts[0::2], parts[1::2], strict=False):
        out[key.lower()] = value
    return out


# --- workspace ---------------------------------------------------------------------------------------


def workspace_parameters(
    settings: Settings, tags: dict[str, str] | None = None
) -> models.WorkspaceCreateParameters:
    from azure.mgmt.batchai import models

    return models.WorkspaceCreateParameters(location=settings.location, tags=tags)


# --- cluster -----------------------------------------------------------------------------------------


def file_share_mount(settings: Settings) -> models.AzureFileShareReference:
    """The file share, mounted at $AZ_BATCHAI_MOUNT_ROOT/azurefileshare: its own account's (never the
    data account's: every node holds the key it mounts with).

    Credentials: a Key Vault secret reference when FILE_SHARE_KEY_VAULT_SECRET_URL is set (the key never
    passes through the app), else the share account's key from its connection string.
    """
    from azure.mgmt.batchai import models

    storage = settings.file_share_storage
    if settings.file_share_key_vault_secret_url and settings.key_vault_resource_id:
        credentials = models.AzureStorageCredentialsInfo(
            account_key_secret_reference=models.KeyVaultSecretReference(
                source_vault=models.ResourceId(id=settings.key_vault_resource_id),
                secret_url=settings.file_share_key_vault_secret_url,
            )
        )
    else:
        assert storage.account_key is not None  # settings require an AccountKey
        credentials = models.AzureStorageCredentialsInfo(account_key=storage.account_key.get_secret_value())
    return models.AzureFileShareReference(
        account_name=storage.account_name,
        azure_file_url=settings.file_share_url,
        credentials=credentials,
        relative_mount_path=RELATIVE_MOUNT_PATH,
    )


def _scale_settings(spec: RunSpec) -> models.ScaleSettings:
    from azure.mgmt.batchai import models

    if spec.cluster.auto_scale is not None:
        auto = spec.cluster.auto_scale
        return models.ScaleSettings(
            auto_scale=models.AutoScaleSettings(
                minimum_node_count=auto.minimum_node_count,
                maximum_node_count=auto.maximum_node_count,
                initial_node_count=auto.initial_node_count,
            )
        )
    manual = spec.cluster.manual
    if manual is None:  # the quickstart's ManualScaleSettings(target_node_count=1), SDK defaults included
        return models.ScaleSettings(manual=models.ManualScaleSettings(target_node_count=spec.node_count))
    options = (
        {"node_deallocation_option": manual.node_deallocation_option}
        if manual.node_deallocation_option
        else {}
    )
    return models.ScaleSettings(
        manual=models.ManualScaleSettings(target_node_count=manual.target_node_count, **options)
    )


def cluster_parameters(spec: RunSpec, settings: Settings) -> models.ClusterCreateParameters:
    """The cluster for a run: VM size and priority, scale, admin account (SSH key preferred), the share."""
    from azure.mgmt.batchai import models

    if settings.cluster_ssh_public_key:
        account = models.UserAccountSettings(
            admin_user_name=settings.cluster_admin_user,
            admin_user_ssh_public_key=settings.cluster_ssh_public_key,
        )
    else:
        assert settings.cluster_admin_password is not None  # settings require one of the two
        account = models.UserAccountSettings(
            admin_user_name=settings.cluster_admin_user,
            admin_user_password=settings.cluster_admin_password.get_secret_value(),
        )
    return models.ClusterCreateParameters(
        vm_size=spec.vm_size,
        vm_priority=spec.cluster.vm_priority,
        scale_settings=_scale_settings(spec),
        user_account_settings=account,
        node_setup=models.NodeSetup(
            mount_volumes=models.MountVolumes(azure_file_shares=[file_share_mount(settings)])
        ),
    )


def cluster_scale_parameters(
    target_node_count: int = 0, node_deallocation_option: str = "waitforjobcompletion"
) -> models.ClusterUpdateParameters:
    """A manual resize (the monitor releases idle clusters' nodes with it). Shrinking waits for running
    jobs by default, so a job that started after the caller last looked is not killed."""
    from azure.mgmt.batchai import models

    manual = models.ManualScaleSettings(
        target_node_count=target_node_count, node_deallocation_option=node_deallocation_option
    )
    return models.ClusterUpdateParameters(scale_settings=models.ScaleSettings(manual=manual))


def _capacity(scale: Any) -> int | None:
    if scale is None:
        return None
    nodes: int | None = None
    if getattr(scale, "auto_scale", None) is not None:
        nodes = scale.auto_scale.maximum_node_count
    elif getattr(scale, "manual", None) is not None:
        nodes = scale.manual.target_node_count
    return nodes


def cluster_differences(existing: models.Cluster, wanted: models.ClusterCreateParameters) -> list[str]:
    """Why an existing cluster cannot serve `wanted` (empty when it can be reused as is).

    Compared: VM size, VM priority, the mounted share, and capacity (the existing cluster must be able
    to hold as many nodes as wanted). Other scale details may differ: a cluster resized by cleanup is
    still the same cluster.
    """
    problems: list[str] = []
    if (existing.vm_size or "").upper() != (wanted.vm_size or "").upper():
        problems.append(f"vm_size is {existing.vm_size!r}, wanted {wanted.vm_size!r}")
    if (existing.vm_priority or "dedicated") != (wanted.vm_priority or "dedicated"):
        problems.append(f"vm_priority is {existing.vm_priority!r}, wanted {wanted.vm_priority!r}")
    have, need = _capacity(existing.scale_settings), _capacity(wanted.scale_settings)
    if (
        have is not None
        and need is not None
        and have < need
        and getattr(existing.scale_settings, "auto_scale", None)
    ):
        problems.append(f"auto-scale maximum is {have} nodes, wanted {need}")

    def urls(setup: Any) -> set[str]:
        shares = getattr(getattr(setup, "mount_volumes", None), "azure_file_shares", None) or []
        return {(s.azure_file_url or "").rstrip("/").lower() for s in shares}

    missing = urls(wanted.node_setup) - urls(existing.node_setup)
    if missing:
        problems.append(f"does not mount {sorted(missing)}")
    return problems


# --- job -------------------------------------------------------------------------------------------


def _dataset_dir(dataset: str) -> str:
    return f"{MOUNT_PATH}/{dataset}"


def _join(base: str, relative: str | None) -> str:
    return base if relative in (None, "", ".") else f"{base}/{relative}"


def _script_path(spec: RunSpec, dataset: str) -> str | None:
    """The script as the job sees it: via the input directory at the dataset root when there is one
    (the quickstart's `$AZ_BATCHAI_INPUT_SAMPLE/ConvNet_MNIST.py`), else via the mount path."""
    if spec.script is None:
        return None
    for directory in spec.input_directories:
        if directory.path == ".":
            return f"$AZ_BATCHAI_INPUT_{directory.id}/{spec.script}"
    return f"{_dataset_dir(dataset)}/{spec.script}"


def _toolkit_settings(spec: RunSpec, dataset: str) -> dict[str, Any]:
    from azure.mgmt.batchai import models

    script = _script_path(spec, dataset)
    common: dict[str, Any] = {
        "python_script_file_path": script,
        "python_interpreter_path": spec.python_interpreter,
    }
    args = spec.arguments
    toolkit = spec.toolkit
    if toolkit is Toolkit.CNTK:
        return {
            "cntk_settings": models.CNTKsettings(
                **common, command_line_args=args, process_count=spec.process_count
            )
        }
    if toolkit is Toolkit.PYTORCH:
        return {
            "py_torch_settings": models.PyTorchSettings(
                **common,
                command_line_args=args,
                process_count=spec.process_count,
                communication_backend=spec.communication_backend,
            )
        }
    if toolkit is Toolkit.TENSORFLOW:
        distributed = spec.process_count is not None or spec.parameter_server_count is not None
        return {
            "tensor_flow_settings": models.TensorFlowSettings(
                **common,
                master_command_line_args=args,
                worker_command_line_args=args if distributed else None,
                parameter_server_command_line_args=args if distributed else None,
                worker_count=spec.process_count,
                parameter_server_count=spec.parameter_server_count,
            )
        }
    if toolkit is Toolkit.HOROVOD:
        return {
            "horovod_settings": models.HorovodSettings(
                **common, command_line_args=args, process_count=spec.process_count
            )
        }
    if toolkit is Toolkit.CHAINER:
        return {
            "chainer_settings": models.ChainerSettings(
                **common, command_line_args=args, process_count=spec.process_count
            )
        }
    if toolkit is Toolkit.CAFFE2:
        return {"caffe2_settings": models.Caffe2Settings(**common, command_line_args=args)}
    if toolkit is Toolkit.CUSTOMMPI:
        return {
            "custom_mpi_settings": models.CustomMpiSettings(
                command_line=cast(str, spec.command_line),  # the spec requires it for custommpi
                process_count=spec.process_count,
            )
        }
    if toolkit is Toolkit.CUSTOM:
        return {"custom_toolkit_settings": models.CustomToolkitSettings(command_line=spec.command_line)}
    raise AssertionError(f"unhandled toolkit {toolkit!r}")  # pragma: no cover - the enum is closed


def _registry_host(image: str) -> str | None:
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first.lower()
    return None


def _container_settings(spec: RunSpec, settings: Settings) -> models.ContainerSettings | None:
    from azure.mgmt.batchai import models

    if spec.image is None:
        return None
    registry = models.ImageSourceRegistry(image=spec.image)
    server = settings.container_registry_server
    if server and settings.container_registry_username:
        server_host = re.sub(r"^https?://", "", server).rstrip("/").lower()
        if _registry_host(spec.image) == server_host:
            registry.server_url = server
            registry.credentials = models.PrivateRegistryCredentials(
                username=settings.container_registry_username,
                password=(
                    settings.container_registry_password.get_secret_value()
                    if settings.container_registry_password is not None
                    else None
                ),
            )
    return models.ContainerSettings(image_source_registry=registry, shm_size=spec.shm_size)


def _secrets(spec: RunSpec, settings: Settings) -> list[models.EnvironmentVariableWithSecretValue] | None:
    from azure.mgmt.batchai import models

    from shared.runspec import KeyVaultSecret

    out = []
    for name in sorted(spec.secret_environment_variables):
        secret = spec.secret_environment_variables[name]
        if isinstance(secret, KeyVaultSecret):
            vault = secret.key_vault_resource_id or settings.key_vault_resource_id
            if not vault:
                raise RunSpecError(
                    [
                        {
                            "field": f"secret_environment_variables.{name}.key_vault_resource_id",
                            "message": "required: the app setting KEY_VAULT_RESOURCE_ID is not set",
                        }
                    ]
                )
            out.append(
                models.EnvironmentVariableWithSecretValue(
                    name=name,
                    value_secret_reference=models.KeyVaultSecretReference(
                        source_vault=models.ResourceId(id=vault), secret_url=secret.key_vault_secret_url
                    ),
                )
            )
        else:
            out.append(models.EnvironmentVariableWithSecretValue(name=name, value=secret.get_secret_value()))
    return out or None


def job_parameters(
    spec: RunSpec, dataset: str, cluster_resource_id: str, settings: Settings
) -> models.JobCreateParameters:
    """The job for a run of `dataset` on a cluster: toolkit settings, container, input directories in
    the run's directory on the share (`dataset`: that directory, the run's snapshot), output
    directories and stdout/stderr under the mount,
    environment, secrets, constraints, job preparation."""
    from azure.mgmt.batchai import models

    dataset_dir = _dataset_dir(dataset)
    env = [
        models.EnvironmentVariable(name=k, value=spec.environment_variables[k])
        for k in sorted(spec.environment_variables)
    ]
    return models.JobCreateParameters(
        scheduling_priority=spec.scheduling_priority,
        cluster=models.ResourceId(id=cluster_resource_id),
        node_count=spec.node_count,
        container_settings=_container_settings(spec, settings),
        **_toolkit_settings(spec, dataset),
        job_preparation=(
            models.JobPreparation(command_line=spec.job_preparation)
            if spec.job_preparation is not None
            else None
        ),
        std_out_err_path_prefix=MOUNT_PATH,
        input_directories=[
            models.InputDirectory(id=d.id, path=_join(dataset_dir, d.path)) for d in spec.input_directories
        ]
        or None,
        output_directories=[
            models.OutputDirectory(
                id=d.id, path_prefix=_join(MOUNT_PATH, d.path_prefix), path_suffix=d.path_suffix
            )
            for d in spec.output_directories
        ]
        or None,
        environment_variables=env or None,
        secrets=_secrets(spec, settings),
        constraints=(
            models.JobBasePropertiesConstraints(max_wall_clock_time=spec.max_wall_clock_time)
            if spec.max_wall_clock_time is not None
            else None
        ),
    )


def list_output_files_options(
    directory_id: str, *, directory: str = ".", link_expiry_minutes: int = 60, max_results: int = 1000
) -> models.JobsListOutputFilesOptions:
    """Options for listing one output directory of a job (`stdouterr` or an output directory id)."""
    from azure.mgmt.batchai import models

    return models.JobsListOutputFilesOptions(
        outputdirectoryid=directory_id,
        directory=directory,
        linkexpiryinminutes=link_expiry_minutes,
        max_results=max_results,
    )
