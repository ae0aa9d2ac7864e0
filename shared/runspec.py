"""The run spec: what one training run is, for both `<dataset>/run.json` manifests and the HTTP API body.

Why pydantic: validation is the product's first line of defence (a manifest is user input that ends
up in a job's command line), and every error must name the field. Unknown fields are errors
(`extra="forbid"`); counts, names and paths are checked against what Azure Batch AI accepts.

An empty manifest (`{}`) is Microsoft's quickstart: CNTK running `ConvNet_MNIST.py` with arguments
`$AZ_BATCHAI_INPUT_SAMPLE $AZ_BATCHAI_OUTPUT_MODEL` in `microsoft/cntk:2.1-gpu-python3.5-cuda8.0-cudnn6.0`
on one `STANDARD_NC6` node, input directory `SAMPLE` = the run's snapshot of the dataset on the share, output
directory `MODEL` with suffix `Models`.

Paths in a spec are relative: `files`, `script`, input directory paths and `job_preparation_files`
to the run's snapshot of the dataset on the share, output directory prefixes to the share root. None may
escape them (no `..`, no absolute paths, no shell metacharacters).

Use `parse_run_spec(data)` (a dict) or `parse_run_spec_json(text)`: both raise `RunSpecError`, whose
`.errors` is a list of `{"field": "a.b.0", "message": ...}` for the API.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    StrictInt,
    StrictStr,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_serializer,
    field_validator,
    model_validator,
)

from shared.settings import check_key_vault_secret_url, is_key_vault_resource_id, is_loopback_url
from shared.sweep import SweepSpec, placeholders

if TYPE_CHECKING:  # annotations only
    from shared.settings import Settings

__all__ = [
    "QUICKSTART_ARGUMENTS",
    "QUICKSTART_IMAGE",
    "QUICKSTART_SCRIPT",
    "AutoScale",
    "ClusterSpec",
    "InputDirectorySpec",
    "KeyVaultSecret",
    "ManualScale",
    "OutputDirectorySpec",
    "RunSpec",
    "RunSpecError",
    "SpecContext",
    "Toolkit",
    "parse_run_spec",
    "parse_run_spec_json",
    "validation_errors",
]

QUICKSTART_SCRIPT = "ConvNet_MNIST.py"
QUICKSTART_ARGUMENTS = "$AZ_BATCHAI_INPUT_SAMPLE $AZ_BATCHAI_OUTPUT_MODEL"
QUICKSTART_IMAGE = "microsoft/cntk:2.1-gpu-python3.5-cuda8.0-cudnn6.0"
DEFAULT_VM_SIZE = "STANDARD_NC6"
MAX_NODES = 1000
MAX_MANIFEST_BYTES = 256 * 1024


class Toolkit(StrEnum):
    CNTK = "cntk"
    PYTORCH = "pytorch"
    TENSORFLOW = "tensorflow"
    HOROVOD = "horovod"
    CUSTOMMPI = "custommpi"
    CUSTOM = "custom"
    CHAINER = "chainer"
    CAFFE2 = "caffe2"


COMMAND_LINE_TOOLKITS = frozenset({Toolkit.CUSTOM, Toolkit.CUSTOMMPI})
# Toolkits whose Batch AI settings have no processCount.
NO_PROCESS_COUNT = frozenset({Toolkit.CUSTOM, Toolkit.CAFFE2})


class SpecFieldError(ValueError):
    """A cross-field error that belongs to one named field (reported under that field's path)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class RunSpecError(ValueError):
    """The spec is invalid; `errors` names each offending field."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        super().__init__("invalid run spec: " + "; ".join(f"{e['field']}: {e['message']}" for e in errors))


@dataclass(frozen=True)
class SpecContext:
    """What validation needs from the app settings (kept separate so the parser is testable alone)."""

    allowed_vm_sizes: tuple[str, ...] = (DEFAULT_VM_SIZE,)
    default_vm_size: str = DEFAULT_VM_SIZE
    allow_loopback_http_callbacks: bool = False
    # The operator's narrowing of the trust (docs/security.md): uploaded manifests may not carry
    # shell commands (command_line, job_preparation) unless allowed; no run may ask for more nodes
    # than the cap; a spec may not name its cluster when clusters go by derived name only.
    from_manifest: bool = False
    manifest_commands_allowed: bool = True
    max_nodes_per_run: int = MAX_NODES
    clusters_by_derived_name_only: bool = False
    # A callback URL's query (often a token) is kept sealed with CALLBACK_SIGNING_SECRET: without
    # that setting such a URL is refused.
    callback_query_allowed: bool = True
    # KEY_VAULT_RESOURCE_ID: the vault of a Key Vault secret that names none. Checked when the spec is
    # parsed, so a spec the submission cannot build is refused before a run exists.
    key_vault_resource_id: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> SpecContext:
        if settings is None:
            from shared.settings import get_settings

            settings = get_settings()
        return cls(
            allowed_vm_sizes=tuple(settings.allowed_vm_sizes),
            default_vm_size=settings.default_vm_size,
            allow_loopback_http_callbacks=settings.callback_allow_loopback_http,
            callback_query_allowed=settings.callback_signing_secret is not None,
            manifest_commands_allowed=settings.manifest_commands_allowed,
            max_nodes_per_run=settings.max_nodes_per_run,
            clusters_by_derived_name_only=settings.clusters_by_derived_name_only,
            key_vault_resource_id=settings.key_vault_resource_id or None,
        )


# --- field types -----------------------------------------------------------------------------------

_SAFE_PATH_CHARS = re.compile(r"^[A-Za-z0-9._+@=,/-]+$")
_NAME_64 = re.compile(r"^[-A-Za-z0-9_]{1,64}$")  # Batch AI ^[-\w_]+$, 1..64 (ASCII only)
_DIR_ID = re.compile(r"^[A-Za-z0-9_]{1,32}$")  # becomes part of AZ_BATCHAI_INPUT_<id>
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_VM_SIZE = re.compile(r"^[A-Za-z0-9_]{2,64}$")
_IMAGE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]{1,5})?/)?"  # optional registry host
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"  # repository
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"  # tag, digest
)
_SHM_SIZE = re.compile(r"^[0-9]{1,12}[bkmgBKMG]?$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _relative_path(value: str, *, allow_root: bool = False) -> str:
    """A relative path below some directory: no escape, no shell metacharacters."""
    if allow_root and value in (".", "./", ""):
        return "."
    if not value:
        raise ValueError("must not be empty")
    if len(value) > 1024:
        raise ValueError("must be at most 1024 characters")
    if value.startswith("/") or value.startswith("~"):
        raise ValueError("must be a relative path (no leading '/' or '~')")
    if "\\" in value:
        raise ValueError("must use '/' as separator (no '\\')")
    if not _SAFE_PATH_CHARS.match(value):
        raise ValueError("may contain only letters, digits and . _ - + @ = , /")
    segments = value.split("/")
    while segments and segments[0] == ".":
        segments = segments[1:]
    if not segments or any(s in ("", ".", "..") for s in segments):
        raise ValueError("must stay inside its directory (no '..', '.' or empty segments)")
    if any(len(s) > 255 for s in segments):
        raise ValueError("each path segment must be at most 255 characters")
    return "/".join(segments)


_AZURE_FILES_FORBIDDEN = re.compile(r'[\x00-\x1f\x7f"\\:|<>*?]')


def _file_path(value: str) -> str:
    return _relative_path(value)


def _dataset_file(value: str) -> str:
    """A file the dataset must contain: any name Azure Files accepts, inside the dataset directory."""
    if not value or len(value) > 1024:
        raise ValueError("must be 1-1024 characters")
    if value.startswith("/"):
        raise ValueError("must be a relative path (no leading '/')")
    bad = _AZURE_FILES_FORBIDDEN.search(value)
    if bad:
        raise ValueError(f"contains {bad.group()!r}, which Azure Files does not allow")
    segments = value.split("/")
    if any(s in ("", ".", "..") for s in segments):
        raise ValueError("must stay inside its directory (no '..', '.' or empty segments)")
    if any(len(s) > 255 or s.endswith((".", " ")) for s in segments):
        raise ValueError("each segment must be at most 255 characters and not end with '.' or ' '")
    return value


def _dir_path(value: str) -> str:
    return _relative_path(value, allow_root=True)


def _plain_text(limit: int) -> Any:
    def check(value: str) -> str:
        if len(value) > limit:
            raise ValueError(f"must be at most {limit} characters")
        if _CONTROL.search(value) or "\n" in value:
            raise ValueError("must not contain control characters or newlines")
        return value

    return AfterValidator(check)


def _command_text(limit: int) -> Any:
    def check(value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        if len(value) > limit:
            raise ValueError(f"must be at most {limit} characters")
        if _CONTROL.search(value):
            raise ValueError("must not contain control characters")
        return value

    return AfterValidator(check)


def _pattern(regex: re.Pattern[str], expected: str) -> Any:
    def check(value: str) -> str:
        if not regex.match(value):
            raise ValueError(f"expected {expected}")
        return value

    return AfterValidator(check)


FilePath = Annotated[StrictStr, AfterValidator(_file_path)]
DirPath = Annotated[StrictStr, AfterValidator(_dir_path)]
DirectoryId = Annotated[StrictStr, _pattern(_DIR_ID, "1-32 letters, digits and '_'")]
EnvName = Annotated[StrictStr, _pattern(_ENV_NAME, "an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")]
Count = Annotated[StrictInt, Field(ge=1, le=MAX_NODES)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class InputDirectorySpec(_Strict):
    """An input directory: the job sees it as $AZ_BATCHAI_INPUT_<id>."""

    id: DirectoryId
    path: DirPath = Field(
        default=".", description="relative to the run's snapshot of the dataset; '.' is the whole snapshot"
    )


class OutputDirectorySpec(_Strict):
    """An output directory: the job sees it as $AZ_BATCHAI_OUTPUT_<id>."""

    id: DirectoryId
    path_prefix: DirPath = Field(default=".", description="relative to the share root; '.' is the root")
    path_suffix: Annotated[StrictStr, AfterValidator(_file_path)] | None = None

    @field_validator("id")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value.lower() == "stdouterr":
            raise ValueError("'stdouterr' is reserved by Batch AI for the job's stdout/stderr")
        return value


class ManualScale(_Strict):
    target_node_count: Annotated[StrictInt, Field(ge=0, le=MAX_NODES)]
    node_deallocation_option: Literal["requeue", "terminate", "waitforjobcompletion"] | None = None


class AutoScale(_Strict):
    minimum_node_count: Annotated[StrictInt, Field(ge=0, le=MAX_NODES)]
    maximum_node_count: Annotated[StrictInt, Field(ge=1, le=MAX_NODES)]
    initial_node_count: Annotated[StrictInt, Field(ge=0, le=MAX_NODES)] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> AutoScale:
        if self.minimum_node_count > self.maximum_node_count:
            raise SpecFieldError("minimum_node_count", "must not exceed maximum_node_count")
        initial = self.initial_node_count
        if initial is not None and not self.minimum_node_count <= initial <= self.maximum_node_count:
            raise SpecFieldError("initial_node_count", "must lie between minimum and maximum node count")
        return self


class ClusterSpec(_Strict):
    """Cluster settings: VM priority and either manual or auto scale (default: manual = node_count)."""

    vm_priority: Literal["dedicated", "lowpriority"] | None = None
    manual: ManualScale | None = None
    auto_scale: AutoScale | None = None

    @model_validator(mode="after")
    def _one_scale(self) -> ClusterSpec:
        if self.manual is not None and self.auto_scale is not None:
            raise SpecFieldError("auto_scale", "give either manual or auto_scale, not both")
        return self


class KeyVaultSecret(_Strict):
    """A secret held in Key Vault: the cluster reads it, the function app never sees the value."""

    key_vault_secret_url: StrictStr
    key_vault_resource_id: StrictStr | None = Field(
        default=None, description="default: KEY_VAULT_RESOURCE_ID"
    )

    @field_validator("key_vault_secret_url")
    @classmethod
    def _secret_url(cls, value: str) -> str:
        return check_key_vault_secret_url(value)

    @field_validator("key_vault_resource_id")
    @classmethod
    def _vault_id(cls, value: str | None) -> str | None:
        if value is not None and not is_key_vault_resource_id(value):
            raise ValueError("expected a Key Vault resource id")
        return value


_DURATION = TypeAdapter(timedelta)


def _secret_kind(value: Any) -> str:
    return "<key-vault>" if isinstance(value, dict | KeyVaultSecret) else "<value>"


# A secret environment variable's value: the secret itself (a string) or a Key Vault reference.
SecretValue = Annotated[
    Annotated[SecretStr, Tag("<value>")] | Annotated[KeyVaultSecret, Tag("<key-vault>")],
    Discriminator(_secret_kind),
]


class RunSpec(_Strict):
    """One training run. Field names are the JSON keys of run.json and of the API body."""

    toolkit: Toolkit = Toolkit.CNTK
    script: FilePath | None = Field(default=None, description="relative to the dataset directory")
    arguments: (
        Annotated[
            StrictStr,
            _plain_text(8192),
            WithJsonSchema(
                {
                    "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                    "description": "one command line, or a list of arguments (quoted where needed)",
                }
            ),
        ]
        | None
    ) = None
    python_interpreter: Annotated[StrictStr, _plain_text(1024)] | None = None
    command_line: Annotated[StrictStr, _command_text(16384)] | None = None
    image: StrictStr | None = None
    shm_size: Annotated[StrictStr, _pattern(_SHM_SIZE, "a size such as '8g' or '512m'")] | None = None
    vm_size: StrictStr | None = None
    node_count: Count = 1
    process_count: Annotated[StrictInt, Field(ge=1, le=MAX_NODES * 64)] | None = None
    parameter_server_count: Count | None = None
    communication_backend: Literal["TCP", "Gloo", "MPI"] | None = None
    scheduling_priority: Literal["low", "normal", "high"] | None = None
    cluster_name: Annotated[StrictStr, _pattern(_NAME_64, "1-64 letters, digits, '-' and '_'")] | None = None
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    input_directories: Annotated[list[InputDirectorySpec], Field(min_length=0, max_length=32)] = Field(
        default_factory=lambda: [InputDirectorySpec(id="SAMPLE", path=".")]
    )
    output_directories: Annotated[list[OutputDirectorySpec], Field(max_length=32)] = Field(
        default_factory=lambda: [OutputDirectorySpec(id="MODEL", path_prefix=".", path_suffix="Models")]
    )
    environment_variables: Annotated[
        dict[EnvName, Annotated[StrictStr, _plain_text(32768)]], Field(max_length=128)
    ] = Field(default_factory=dict)
    secret_environment_variables: Annotated[dict[EnvName, SecretValue], Field(max_length=64)] = Field(
        default_factory=dict
    )
    max_wall_clock_time: timedelta | None = None
    job_preparation: Annotated[StrictStr, _command_text(16384)] | None = None
    callback_url: StrictStr | None = None
    files: Annotated[list[Annotated[StrictStr, AfterValidator(_dataset_file)]], Field(max_length=10_000)] = (
        Field(default_factory=list)
    )
    sweep: SweepSpec | None = Field(
        default=None, description="a hyperparameter sweep: this run becomes the parent of trial runs"
    )

    # --- defaults that depend on other fields ------------------------------------------------------
    @model_validator(mode="before")
    @classmethod
    def _quickstart_defaults(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        is_cntk = data.get("toolkit", Toolkit.CNTK.value) == Toolkit.CNTK.value
        if is_cntk and "script" not in data and "command_line" not in data:
            data["script"] = QUICKSTART_SCRIPT
            data.setdefault("arguments", QUICKSTART_ARGUMENTS)
        if is_cntk and "image" not in data:
            data["image"] = QUICKSTART_IMAGE
        if data.get("vm_size") is None:
            data["vm_size"] = _context(info).default_vm_size
        if isinstance(data.get("arguments"), list):
            data["arguments"] = _join_arguments(data["arguments"])
        return data

    # --- single-field checks that need context ----------------------------------------------------------
    @field_validator("vm_size")
    @classmethod
    def _allowed_vm_size(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if not _VM_SIZE.match(value):
            raise ValueError("expected a VM size name such as 'STANDARD_NC6'")
        value = value.upper()
        allowed = _context(info).allowed_vm_sizes
        if value not in allowed:
            raise ValueError(f"{value!r} is not an allowed VM size; allowed: {', '.join(allowed)}")
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 512 or not _IMAGE.match(value)):
            raise ValueError("expected a container image reference such as 'pytorch/pytorch:1.0-cuda10.0'")
        return value

    @field_validator("max_wall_clock_time", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        # ISO 8601 ('PT2H', 'P1D') or seconds; booleans and floats-as-strings are not durations.
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float | timedelta):
            raise ValueError("expected an ISO 8601 duration such as 'PT2H' or a number of seconds")
        if isinstance(value, float) and value != value:  # NaN
            raise ValueError("expected a finite number of seconds")
        try:
            return _DURATION.validate_python(value)
        except (ValidationError, OverflowError):
            raise ValueError("expected an ISO 8601 duration such as 'PT2H' or a number of seconds") from None

    @field_validator("max_wall_clock_time")
    @classmethod
    def _duration_range(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and not timedelta(seconds=1) <= value <= timedelta(days=30):
            raise ValueError("must be between 1 second and 30 days")
        return value

    @field_validator("callback_url")
    @classmethod
    def _callback(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if len(value) > 2048:
            raise ValueError("must be at most 2048 characters")
        try:
            parts = urlsplit(value)
            port = parts.port  # raises on a malformed port
        except ValueError:
            raise ValueError("expected an absolute https URL") from None
        del port
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("expected an absolute https URL")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials (user:password@)")
        if parts.scheme == "http" and not (
            _context(info).allow_loopback_http_callbacks and is_loopback_url(value)
        ):
            raise ValueError(
                "must be https (http only to loopback hosts when CALLBACK_ALLOW_LOOPBACK_HTTP is true)"
            )
        if parts.query and not _context(info).callback_query_allowed:
            raise ValueError("a query string needs CALLBACK_SIGNING_SECRET (the app keeps it sealed with it)")
        return value

    @field_validator("files")
    @classmethod
    def _unique_files(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for path in value:
            if path in seen:
                raise ValueError(f"{path!r} is listed twice")
            seen.add(path)
        return value

    @field_validator("environment_variables", "secret_environment_variables")
    @classmethod
    def _not_reserved_env(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if name.upper().startswith("AZ_BATCHAI_"):
                raise ValueError(f"{name!r}: names starting with AZ_BATCHAI_ are set by Batch AI")
        return value

    @field_validator("secret_environment_variables")
    @classmethod
    def _secret_vault_known(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # A Key Vault secret without its vault takes KEY_VAULT_RESOURCE_ID; with that unset the job
        # could never be built, so refuse the spec now instead of failing the run at submission.
        if _context(info).key_vault_resource_id:
            return value
        for name, secret in value.items():
            if isinstance(secret, KeyVaultSecret) and not secret.key_vault_resource_id:
                raise SpecFieldError(
                    f"{name}.key_vault_resource_id",
                    "required: the app setting KEY_VAULT_RESOURCE_ID is not set",
                )
        return value

    # --- cross-field checks ------------------------------------------------------------------------------
    @model_validator(mode="after")
    def _consistent(self) -> RunSpec:
        toolkit = self.toolkit
        if toolkit in COMMAND_LINE_TOOLKITS:
            if self.command_line is None:
                raise SpecFieldError("command_line", f"required for toolkit {toolkit.value!r}")
            for name in ("script", "arguments", "python_interpreter"):
                if getattr(self, name) is not None:
                    raise SpecFieldError(
                        name, f"not used by toolkit {toolkit.value!r}: put it in command_line"
                    )
        else:
            if self.command_line is not None:
                raise SpecFieldError("command_line", "only for toolkits 'custom' and 'custommpi'; use script")
            if self.script is None:
                raise SpecFieldError("script", f"required for toolkit {toolkit.value!r}")
        if self.process_count is not None and toolkit in NO_PROCESS_COUNT:
            raise SpecFieldError("process_count", f"not supported by toolkit {toolkit.value!r}")
        if self.parameter_server_count is not None:
            if toolkit is not Toolkit.TENSORFLOW:
                raise SpecFieldError("parameter_server_count", "only for toolkit 'tensorflow'")
            if self.parameter_server_count > self.node_count:
                raise SpecFieldError("parameter_server_count", "must not exceed node_count")
        if self.shm_size is not None and self.image is None:
            raise SpecFieldError("shm_size", "needs an image (it sizes the container's /dev/shm)")
        if self.communication_backend is not None and toolkit is not Toolkit.PYTORCH:
            raise SpecFieldError("communication_backend", "only for toolkit 'pytorch'")
        for field, dirs in (
            ("input_directories", self.input_directories),
            ("output_directories", self.output_directories),
        ):
            ids = [d.id.upper() for d in dirs]
            for index, ident in enumerate(ids):
                if ident in ids[:index]:
                    raise SpecFieldError(f"{field}.{index}.id", f"duplicate id {dirs[index].id!r}")
        clashing = set(self.environment_variables) & set(self.secret_environment_variables)
        if clashing:
            raise SpecFieldError(
                "secret_environment_variables", f"{sorted(clashing)} also in environment_variables"
            )
        self._sweep_consistent()
        cluster = self.cluster
        if cluster.manual is not None and cluster.manual.target_node_count < self.node_count:
            raise SpecFieldError(
                "cluster.manual.target_node_count", f"must be at least node_count ({self.node_count})"
            )
        if cluster.auto_scale is not None and cluster.auto_scale.maximum_node_count < self.node_count:
            raise SpecFieldError(
                "cluster.auto_scale.maximum_node_count", f"must be at least node_count ({self.node_count})"
            )
        return self

    def _sweep_consistent(self) -> None:
        """`${{search_space.<name>}}` only names a parameter of the sweep; SWEEP_<NAME> is the sweep's."""
        names = set(self.sweep.parameters) if self.sweep is not None else set()
        for field in ("arguments", "command_line"):
            for name in placeholders(getattr(self, field)):
                if self.sweep is None:
                    raise SpecFieldError(field, f"${{{{search_space.{name}}}}} needs a sweep section")
                if name not in names:
                    raise SpecFieldError(
                        field, f"${{{{search_space.{name}}}}}: no such parameter in sweep.parameters"
                    )
        if self.sweep is not None:
            taken = {f"SWEEP_{name.upper()}" for name in names}
            for field in ("environment_variables", "secret_environment_variables"):
                clash = sorted(taken & {n.upper() for n in getattr(self, field)})
                if clash:
                    raise SpecFieldError(field, f"{clash} are set by the sweep for each trial")

    @model_validator(mode="after")
    def _operator_limits(self, info: ValidationInfo) -> RunSpec:
        """What the operator's settings refuse (each error names the field and the setting)."""
        context = _context(info)
        if context.from_manifest and not context.manifest_commands_allowed:
            for name in ("command_line", "job_preparation"):
                if getattr(self, name) is not None:
                    raise SpecFieldError(
                        name,
                        "not allowed in an uploaded run.json (MANIFEST_COMMANDS_ALLOWED is false); "
                        "start the run over the HTTP API or use a script",
                    )
        cap = context.max_nodes_per_run
        cluster = self.cluster
        counts = [("node_count", self.node_count)]
        if cluster.manual is not None:
            counts.append(("cluster.manual.target_node_count", cluster.manual.target_node_count))
        scale = cluster.auto_scale
        if scale is not None:
            counts.append(("cluster.auto_scale.maximum_node_count", scale.maximum_node_count))
            if scale.initial_node_count is not None:
                counts.append(("cluster.auto_scale.initial_node_count", scale.initial_node_count))
        for name, count in counts:
            if count > cap:
                raise SpecFieldError(name, f"{count} nodes is more than MAX_NODES_PER_RUN ({cap})")
        if self.cluster_name is not None and context.clusters_by_derived_name_only:
            raise SpecFieldError(
                "cluster_name",
                "not allowed: clusters are named after their dataset (CLUSTERS_BY_DERIVED_NAME_ONLY is true)",
            )
        return self

    # --- derived values ---------------------------------------------------------------------------------
    def required_files(self) -> list[str]:
        """Files the dataset must hold before the job is submitted: `files` plus the script."""
        wanted = list(self.files)
        if self.script is not None and self.script not in wanted:
            wanted.append(self.script)
        return wanted

    def to_json_dict(self, *, reveal_secrets: bool = False) -> dict[str, Any]:
        """JSON-ready dict that parses back to an equal spec; secrets are masked unless revealed.

        Every field is written, nulls included: `"image": null` (run on the node, no container) must
        not come back as the quickstart's default image."""
        return self.model_dump(mode="json", context={"reveal_secrets": reveal_secrets})

    @field_serializer("max_wall_clock_time")
    def _serialize_duration(self, value: timedelta | None) -> float | None:
        return None if value is None else value.total_seconds()

    @field_serializer("callback_url")
    def _serialize_callback(self, value: str | None, info: Any) -> str | None:
        # The query often carries the receiver's token: a stored or returned spec shows it redacted
        # (the run keeps the full URL sealed, see shared.callbacks.seal_callback).
        if value is None or (info.context or {}).get("reveal_secrets"):
            return value
        from shared.callbacks import redact_url

        return redact_url(value)

    @field_serializer("secret_environment_variables")
    def _serialize_secrets(self, value: dict[str, SecretStr | KeyVaultSecret], info: Any) -> dict[str, Any]:
        reveal = bool((info.context or {}).get("reveal_secrets"))
        out: dict[str, Any] = {}
        for name, secret in value.items():
            if isinstance(secret, KeyVaultSecret):
                out[name] = secret.model_dump(exclude_none=True)
            else:
                out[name] = secret.get_secret_value() if reveal else "**********"
        return out


def _context(info: ValidationInfo) -> SpecContext:
    context = info.context
    if isinstance(context, SpecContext):
        return context
    spec = context.get("spec") if isinstance(context, dict) else None
    if isinstance(spec, SpecContext):
        return spec
    return SpecContext()


_SAFE_ARG = re.compile(r"^[A-Za-z0-9_$/.:=,+@%{}-]+$")


def _join_arguments(arguments: list[Any]) -> Any:
    """A list of arguments as one command line; ones with spaces are double-quoted ($VARS still expand)."""
    if not all(isinstance(a, str) for a in arguments):
        return arguments  # let the str type check report it
    parts = []
    for arg in arguments:
        if _SAFE_ARG.match(arg):
            parts.append(arg)
        else:
            parts.append('"' + re.sub(r'(["\\`])', r"\\\1", arg) + '"')
    return " ".join(parts)


# --- parsing ---------------------------------------------------------------------------------------


def validation_errors(exc: ValidationError) -> list[dict[str, str]]:
    """A pydantic ValidationError as `[{"field": "a.b.0", "message": ...}]` (for API error bodies)."""
    out: list[dict[str, str]] = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = [str(part) for part in error["loc"]]
        # Tagged-union branches add their tag ('<value>', '<key-vault>') to the path: drop them.
        loc = [part for part in loc if not (part.startswith("<") and part.endswith(">"))]
        original = (error.get("ctx") or {}).get("error")
        if isinstance(original, SpecFieldError):
            loc = [*loc, original.field]
            message = original.message
        elif isinstance(original, ValueError):
            message = str(original)
        else:
            message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        out.append({"field": ".".join(loc) or "(root)", "message": message})
    # One entry per field and message (union branches repeat themselves).
    unique = {(e["field"], e["message"]): e for e in out}
    return list(unique.values())


def parse_run_spec(data: Any, context: SpecContext | None = None) -> RunSpec:
    """Validate a decoded manifest/API body. `context` defaults to the app settings' allow-lists."""
    if context is None:
        context = SpecContext.from_settings()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RunSpecError([{"field": "(root)", "message": "expected a JSON object"}])
    try:
        return RunSpec.model_validate(data, context=context)
    except ValidationError as exc:
        raise RunSpecError(validation_errors(exc)) from None


def parse_run_spec_json(text: str | bytes, context: SpecContext | None = None) -> RunSpec:
    """Decode and validate run.json (or an API body); empty text is the empty manifest (the quickstart)."""
    if len(text) > MAX_MANIFEST_BYTES:
        raise RunSpecError([{"field": "(root)", "message": f"larger than {MAX_MANIFEST_BYTES} bytes"}])
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise RunSpecError([{"field": "(root)", "message": "not UTF-8 text"}]) from None
    if not text.strip():
        return parse_run_spec({}, context)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise RunSpecError([{"field": "(root)", "message": f"invalid JSON: {exc}"}]) from None
    return parse_run_spec(data, context)
