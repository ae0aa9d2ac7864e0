"""Batch AI models: every body we build validates against Microsoft's 2018-05-01 definitions, the
quickstart is reproduced field by field, and resource names are valid and deterministic."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from typing import Any

import pytest

from infra.local.arm.specvalidator import SPEC_DIR, validate
from shared import batchai_requests
from shared.runspec import RunSpecError, SpecContext, Toolkit, parse_run_spec
from shared.settings import Settings, local_stack_values

EXAMPLES = SPEC_DIR / "examples"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHY043yG8lQAkJnhe6hCsIcrOIVQ/9AyVJO/t1EEpScb local-dev"
VAULT_ID = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/batchaiquickstart"
    "/providers/Microsoft.KeyVault/vaults/kv1"
)
NAME = re.compile(r"^[-\w_]+$")  # Batch AI's name pattern (with 1..64 characters)


def make_settings(**overrides: str) -> Settings:
    return Settings.from_env(local_stack_values(**overrides))


SETTINGS = make_settings()
CTX = SpecContext.from_settings(SETTINGS)
CLUSTER_ID = batchai_requests.cluster_id(SETTINGS, "c1")


def spec_of(data: dict[str, Any]) -> Any:
    return parse_run_spec(data, CTX)


def assert_valid(definition: str, model: Any) -> dict[str, Any]:
    body = model.serialize()
    errors = validate(definition, body)
    assert not errors, (definition, [str(e) for e in errors], json.dumps(body, indent=1))
    return body


# --- the validator itself -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("example", "definition"),
    [("PutCluster.json", "ClusterCreateParameters"), ("PutJob.json", "JobCreateParameters")],
)
def test_microsofts_request_examples_validate(example: str, definition: str) -> None:
    body = json.loads((EXAMPLES / example).read_text())["parameters"]["parameters"]
    assert validate(definition, body) == []


def test_the_validator_rejects_a_broken_body() -> None:
    body = batchai_requests.job_parameters(spec_of({}), "ds", CLUSTER_ID, SETTINGS).serialize()
    body["properties"]["nodeCount"] = "1"
    del body["properties"]["stdOutErrPathPrefix"]
    paths = {e.path for e in validate("JobCreateParameters", body)}
    assert any("nodeCount" in p for p in paths) and any(
        "stdOutErrPathPrefix" in str(e) for e in validate("JobCreateParameters", body)
    )


# --- the quickstart ------------------------------------------------------------------------------


def quickstart_mount() -> dict[str, Any]:
    return {
        "accountName": "devstoreaccount1",
        "azureFileUrl": "http://127.0.0.1:10004/devstoreaccount1/batchaiquickstart",
        "credentials": {"accountKey": DEV_KEY},
        "relativeMountPath": "azurefileshare",
        # The SDK's documented defaults, sent by the quickstart's SDK too.
        "fileMode": "0777",
        "directoryMode": "0777",
    }


def test_quickstart_cluster_from_an_empty_manifest() -> None:
    # The quickstart's cluster: STANDARD_NC6, one node (manual scale), admin user with a password,
    # the Azure File share mounted at azurefileshare with the account key.
    settings = make_settings(CLUSTER_SSH_PUBLIC_KEY="", CLUSTER_ADMIN_PASSWORD="quickstart-Passw0rd")
    body = assert_valid("ClusterCreateParameters", batchai_requests.cluster_parameters(spec_of({}), settings))
    assert body == {
        "properties": {
            "vmSize": "STANDARD_NC6",
            # nodeDeallocationOption: the SDK default of ManualScaleSettings(target_node_count=1).
            "scaleSettings": {"manual": {"targetNodeCount": 1, "nodeDeallocationOption": "requeue"}},
            "userAccountSettings": {"adminUserName": "batchai", "adminUserPassword": "quickstart-Passw0rd"},
            "nodeSetup": {"mountVolumes": {"azureFileShares": [quickstart_mount()]}},
        }
    }


def test_ssh_key_is_preferred_over_a_password() -> None:
    settings = make_settings(CLUSTER_ADMIN_PASSWORD="also-a-Passw0rd")
    body = assert_valid("ClusterCreateParameters", batchai_requests.cluster_parameters(spec_of({}), settings))
    assert body["properties"]["userAccountSettings"] == {
        "adminUserName": "batchai",
        "adminUserSshPublicKey": SSH_KEY,
    }


def test_quickstart_job_from_an_empty_manifest() -> None:
    cluster_id = batchai_requests.cluster_id(
        SETTINGS, batchai_requests.cluster_name(spec_of({}), "mnistcntksample")
    )
    body = assert_valid(
        "JobCreateParameters",
        batchai_requests.job_parameters(spec_of({}), "mnistcntksample", cluster_id, SETTINGS),
    )
    assert body == {
        "properties": {
            "cluster": {"id": cluster_id},
            "nodeCount": 1,
            "containerSettings": {
                "imageSourceRegistry": {"image": "microsoft/cntk:2.1-gpu-python3.5-cuda8.0-cudnn6.0"}
            },
            "cntkSettings": {
                "pythonScriptFilePath": "$AZ_BATCHAI_INPUT_SAMPLE/ConvNet_MNIST.py",
                "commandLineArgs": "$AZ_BATCHAI_INPUT_SAMPLE $AZ_BATCHAI_OUTPUT_MODEL",
            },
            "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/azurefileshare",
            "inputDirectories": [
                {"id": "SAMPLE", "path": "$AZ_BATCHAI_MOUNT_ROOT/azurefileshare/mnistcntksample"}
            ],
            "outputDirectories": [
                {"id": "MODEL", "pathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/azurefileshare", "pathSuffix": "Models"}
            ],
        }
    }
    assert cluster_id.startswith(
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/batchaiquickstart"
        "/providers/Microsoft.BatchAI/workspaces/batchai-workspace/clusters/"
    )


def test_workspace_and_resize_bodies_validate() -> None:
    assert assert_valid("WorkspaceCreateParameters", batchai_requests.workspace_parameters(SETTINGS)) == {
        "location": "eastus"
    }
    body = assert_valid("ClusterUpdateParameters", batchai_requests.cluster_scale_parameters(0))
    assert body == {
        "properties": {
            "scaleSettings": {
                "manual": {"targetNodeCount": 0, "nodeDeallocationOption": "waitforjobcompletion"}
            }
        }
    }


# --- every toolkit and option -------------------------------------------------------------------------

TOOLKIT_BASE: dict[Toolkit, dict[str, Any]] = {
    Toolkit.CNTK: {},
    Toolkit.PYTORCH: {"script": "train.py", "communication_backend": "Gloo"},
    Toolkit.TENSORFLOW: {"script": "train.py", "parameter_server_count": 1},
    Toolkit.HOROVOD: {"script": "train.py"},
    Toolkit.CHAINER: {"script": "train.py"},
    Toolkit.CAFFE2: {"script": "train.py"},
    Toolkit.CUSTOMMPI: {"command_line": "python $AZ_BATCHAI_INPUT_SAMPLE/train.py"},
    Toolkit.CUSTOM: {"command_line": "echo hi | tee $AZ_BATCHAI_OUTPUT_MODEL/hi.txt"},
}
SETTINGS_KEY = {
    Toolkit.CNTK: "cntkSettings",
    Toolkit.PYTORCH: "pyTorchSettings",
    Toolkit.TENSORFLOW: "tensorFlowSettings",
    Toolkit.HOROVOD: "horovodSettings",
    Toolkit.CHAINER: "chainerSettings",
    Toolkit.CAFFE2: "caffe2Settings",
    Toolkit.CUSTOMMPI: "customMpiSettings",
    Toolkit.CUSTOM: "customToolkitSettings",
}
OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "container": {"image": "myreg.azurecr.io/team/train:1.0", "shm_size": "8g"},
    "public-image": {"image": "pytorch/pytorch:1.0-cuda10.0-cudnn7-runtime"},
    "directories": {
        "input_directories": [{"id": "DATA", "path": "data"}, {"id": "ROOT", "path": "."}],
        "output_directories": [{"id": "MODEL", "path_prefix": "outputs", "path_suffix": "m"}, {"id": "LOGS"}],
    },
    "no-directories": {"input_directories": [], "output_directories": []},
    "environment": {
        "environment_variables": {"EPOCHS": "3", "MODE": "fast run"},
        "secret_environment_variables": {
            "TOKEN": "s3cret",
            "KV": {
                "key_vault_secret_url": "https://kv1.vault.azure.net/secrets/kv",
                "key_vault_resource_id": VAULT_ID,
            },
        },
    },
    "constraints": {
        "max_wall_clock_time": "PT3H",
        "job_preparation": "apt-get install -y x",
        "scheduling_priority": "low",
    },
    "distributed": {"node_count": 2, "process_count": 4},
    "arguments": {"python_interpreter": "/usr/bin/python3", "arguments": ["--lr", "0.1", "two words"]},
}
COMMAND_LINE = {Toolkit.CUSTOM, Toolkit.CUSTOMMPI}


def combination(toolkit: Toolkit, option: str) -> dict[str, Any] | None:
    data = {"toolkit": toolkit.value, **TOOLKIT_BASE[toolkit], **OPTIONS[option]}
    if option == "distributed" and toolkit in (Toolkit.CUSTOM, Toolkit.CAFFE2):
        data.pop("process_count")
    if option == "arguments" and toolkit in COMMAND_LINE:
        return None
    if toolkit is Toolkit.TENSORFLOW and option == "distributed":
        data["parameter_server_count"] = 2
    return data


CASES = [(t, o) for t, o in itertools.product(Toolkit, OPTIONS) if combination(t, o) is not None]


@pytest.mark.parametrize(("toolkit", "option"), CASES, ids=[f"{t.value}-{o}" for t, o in CASES])
def test_every_toolkit_and_option_builds_a_valid_job_and_cluster(toolkit: Toolkit, option: str) -> None:
    settings = make_settings(
        CONTAINER_REGISTRY_SERVER="myreg.azurecr.io",
        CONTAINER_REGISTRY_USERNAME="puller",
        CONTAINER_REGISTRY_PASSWORD="registry-Passw0rd",
    )
    spec = spec_of(combination(toolkit, option) or {})
    body = assert_valid(
        "JobCreateParameters", batchai_requests.job_parameters(spec, "ds-1", CLUSTER_ID, settings)
    )["properties"]
    toolkit_keys = [k for k in body if k.endswith("Settings") and k != "containerSettings"]
    assert toolkit_keys == [SETTINGS_KEY[toolkit]]
    if toolkit not in COMMAND_LINE:
        assert body[SETTINGS_KEY[toolkit]]["pythonScriptFilePath"].endswith(
            "/train.py" if spec.script == "train.py" else spec.script
        )
    if option == "container":
        registry = body["containerSettings"]["imageSourceRegistry"]
        assert registry == {
            "serverUrl": "myreg.azurecr.io",
            "image": "myreg.azurecr.io/team/train:1.0",
            "credentials": {"username": "puller", "password": "registry-Passw0rd"},
        }
        assert body["containerSettings"]["shmSize"] == "8g"
    if option == "public-image":
        assert body["containerSettings"] == {
            "imageSourceRegistry": {"image": "pytorch/pytorch:1.0-cuda10.0-cudnn7-runtime"}
        }
    if option == "environment":
        assert body["environmentVariables"] == [
            {"name": "EPOCHS", "value": "3"},
            {"name": "MODE", "value": "fast run"},
        ]
        assert body["secrets"] == [
            {
                "name": "KV",
                "valueSecretReference": {
                    "sourceVault": {"id": VAULT_ID},
                    "secretUrl": "https://kv1.vault.azure.net/secrets/kv",
                },
            },
            {"name": "TOKEN", "value": "s3cret"},
        ]
    if option == "constraints":
        assert body["constraints"] == {"maxWallClockTime": "PT3H"}
        assert body["jobPreparation"] == {"commandLine": "apt-get install -y x"}
        assert body["schedulingPriority"] == "low"
    if option == "directories":
        assert body["inputDirectories"] == [
            {"id": "DATA", "path": "$AZ_BATCHAI_MOUNT_ROOT/azurefileshare/ds-1/data"},
            {"id": "ROOT", "path": "$AZ_BATCHAI_MOUNT_ROOT/azurefileshare/ds-1"},
        ]
        assert body["outputDirectories"] == [
            {"id": "MODEL", "pathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/azurefileshare/outputs", "pathSuffix": "m"},
            {"id": "LOGS", "pathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/azurefileshare"},
        ]
        if toolkit not in COMMAND_LINE:
            assert body[SETTINGS_KEY[toolkit]]["pythonScriptFilePath"].startswith("$AZ_BATCHAI_INPUT_ROOT/")
    if option == "no-directories":
        assert "inputDirectories" not in body and "outputDirectories" not in body
        if toolkit not in COMMAND_LINE:
            assert body[SETTINGS_KEY[toolkit]]["pythonScriptFilePath"].startswith(
                "$AZ_BATCHAI_MOUNT_ROOT/azurefileshare/ds-1/"
            )
    assert_valid("ClusterCreateParameters", batchai_requests.cluster_parameters(spec, settings))


@pytest.mark.parametrize(
    ("cluster", "expected"),
    [
        (
            {"vm_priority": "lowpriority"},
            {"manual": {"targetNodeCount": 1, "nodeDeallocationOption": "requeue"}},
        ),
        (
            {"manual": {"target_node_count": 3, "node_deallocation_option": "waitforjobcompletion"}},
            {"manual": {"targetNodeCount": 3, "nodeDeallocationOption": "waitforjobcompletion"}},
        ),
        (
            {"auto_scale": {"minimum_node_count": 0, "maximum_node_count": 4, "initial_node_count": 1}},
            {"autoScale": {"minimumNodeCount": 0, "maximumNodeCount": 4, "initialNodeCount": 1}},
        ),
    ],
)
def test_cluster_scale_and_priority(cluster: dict[str, Any], expected: dict[str, Any]) -> None:
    body = assert_valid(
        "ClusterCreateParameters",
        batchai_requests.cluster_parameters(spec_of({"cluster": cluster}), SETTINGS),
    )
    assert body["properties"]["scaleSettings"] == expected
    assert body["properties"].get("vmPriority") == cluster.get("vm_priority")


def test_file_share_mounted_by_key_vault_reference() -> None:
    settings = make_settings(
        FILE_SHARE_KEY_VAULT_SECRET_URL="https://kv1.vault.azure.net/secrets/storage-key",
        KEY_VAULT_RESOURCE_ID=VAULT_ID,
    )
    body = assert_valid("ClusterCreateParameters", batchai_requests.cluster_parameters(spec_of({}), settings))
    mount = body["properties"]["nodeSetup"]["mountVolumes"]["azureFileShares"][0]
    assert mount["credentials"] == {
        "accountKeySecretReference": {
            "sourceVault": {"id": VAULT_ID},
            "secretUrl": "https://kv1.vault.azure.net/secrets/storage-key",
        }
    }
    assert DEV_KEY not in json.dumps(body)


def test_key_vault_secret_without_a_vault_names_the_field() -> None:
    # Parsing refuses this spec when KEY_VAULT_RESOURCE_ID is unset (tests/foundation/test_runspec.py);
    # a spec parsed while it was set, built after it was unset, is still refused here.
    spec = parse_run_spec(
        {
            "secret_environment_variables": {
                "KV": {"key_vault_secret_url": "https://kv1.vault.azure.net/secrets/x"}
            }
        },
        dataclasses.replace(CTX, key_vault_resource_id=VAULT_ID),
    )
    with pytest.raises(RunSpecError) as info:
        batchai_requests.job_parameters(spec, "ds", CLUSTER_ID, SETTINGS)
    assert info.value.errors[0]["field"] == "secret_environment_variables.KV.key_vault_resource_id"
    # The app's KEY_VAULT_RESOURCE_ID is the default vault.
    settings = make_settings(
        FILE_SHARE_KEY_VAULT_SECRET_URL="https://kv1.vault.azure.net/secrets/storage-key",
        KEY_VAULT_RESOURCE_ID=VAULT_ID,
    )
    body = assert_valid(
        "JobCreateParameters", batchai_requests.job_parameters(spec, "ds", CLUSTER_ID, settings)
    )
    assert body["properties"]["secrets"][0]["valueSecretReference"]["sourceVault"] == {"id": VAULT_ID}


def test_registry_credentials_only_for_the_configured_registry() -> None:
    settings = make_settings(
        CONTAINER_REGISTRY_SERVER="https://myreg.azurecr.io", CONTAINER_REGISTRY_USERNAME="u"
    )
    other = batchai_requests.job_parameters(
        spec_of({"image": "otherreg.io/x:1"}), "ds", CLUSTER_ID, settings
    ).serialize()
    assert other["properties"]["containerSettings"] == {"imageSourceRegistry": {"image": "otherreg.io/x:1"}}
    mine = batchai_requests.job_parameters(
        spec_of({"image": "myreg.azurecr.io/x:1"}), "ds", CLUSTER_ID, settings
    )
    assert_valid("JobCreateParameters", mine)
    assert mine.serialize()["properties"]["containerSettings"]["imageSourceRegistry"]["credentials"] == {
        "username": "u"
    }


# --- names --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "mnistcntksample",
        "My.Data",
        "data set",
        "x" * 200,
        "Ünïcode-data",
        "-lead",
        "a",
        "20261127-000101-abcdef12",
    ],
)
def test_names_are_valid_batchai_names(text: str) -> None:
    for name in (
        batchai_requests.experiment_name(text),
        batchai_requests.job_name(text),
        batchai_requests.cluster_name(spec_of({}), text),
    ):
        assert NAME.match(name) and 1 <= len(name) <= 64, name
        assert name.isascii()


def test_names_are_deterministic_and_distinct() -> None:
    assert batchai_requests.experiment_name("mnistcntksample") == "mnistcntksample"
    assert batchai_requests.job_name("20261127-000101-abcdef12") == "20261127-000101-abcdef12"
    assert batchai_requests.experiment_name("Data") != batchai_requests.experiment_name("data")
    assert batchai_requests.experiment_name("a.b") != batchai_requests.experiment_name("a-b")
    assert batchai_requests.experiment_name("x" * 100 + "1") != batchai_requests.experiment_name(
        "x" * 100 + "2"
    )
    spec = spec_of({})
    assert batchai_requests.cluster_name(spec, "ds") == batchai_requests.cluster_name(spec_of({}), "ds")
    assert batchai_requests.cluster_name(spec, "ds") != batchai_requests.cluster_name(spec, "ds2")
    assert batchai_requests.cluster_name(spec, "ds") != batchai_requests.cluster_name(
        spec_of({"vm_size": "STANDARD_NC12"}), "ds"
    )
    assert batchai_requests.cluster_name(spec, "ds") != batchai_requests.cluster_name(
        spec_of({"cluster": {"vm_priority": "lowpriority"}}), "ds"
    )
    # Job-only settings do not change the cluster.
    assert batchai_requests.cluster_name(spec, "ds") == batchai_requests.cluster_name(
        spec_of({"environment_variables": {"A": "1"}}), "ds"
    )
    assert batchai_requests.cluster_name(spec_of({"cluster_name": "shared-gpu"}), "ds") == "shared-gpu"


def test_resource_ids_round_trip() -> None:
    job = batchai_requests.job_id(SETTINGS, "exp", "job1")
    parts = batchai_requests.parse_resource_id(job)
    assert parts["resourcegroups"] == "batchaiquickstart"
    assert parts["workspaces"] == "batchai-workspace"
    assert (parts["experiments"], parts["jobs"]) == ("exp", "job1")


def test_cluster_differences() -> None:
    from azure.mgmt.batchai import models

    wanted = batchai_requests.cluster_parameters(spec_of({}), SETTINGS)
    same = models.Cluster.deserialize(wanted.serialize())
    assert batchai_requests.cluster_differences(same, wanted) == []
    scaled_to_zero = models.Cluster.deserialize(
        batchai_requests.cluster_parameters(spec_of({}), SETTINGS).serialize()
    )
    scaled_to_zero.scale_settings.manual.target_node_count = 0
    assert batchai_requests.cluster_differences(scaled_to_zero, wanted) == []  # compute resizes it back
    bigger = models.Cluster.deserialize(
        batchai_requests.cluster_parameters(spec_of({"vm_size": "STANDARD_NC12"}), SETTINGS).serialize()
    )
    assert any("vm_size" in p for p in batchai_requests.cluster_differences(bigger, wanted))
    low = models.Cluster.deserialize(
        batchai_requests.cluster_parameters(
            spec_of({"cluster": {"vm_priority": "lowpriority"}}), SETTINGS
        ).serialize()
    )
    assert any("vm_priority" in p for p in batchai_requests.cluster_differences(low, wanted))
    small_auto = models.Cluster.deserialize(
        batchai_requests.cluster_parameters(
            spec_of({"cluster": {"auto_scale": {"minimum_node_count": 0, "maximum_node_count": 1}}}), SETTINGS
        ).serialize()
    )
    wanted_two = batchai_requests.cluster_parameters(spec_of({"node_count": 2}), SETTINGS)
    assert any("auto-scale" in p for p in batchai_requests.cluster_differences(small_auto, wanted_two))


def test_output_file_options() -> None:
    options = batchai_requests.list_output_files_options("stdouterr", link_expiry_minutes=5)
    assert (options.outputdirectoryid, options.directory, options.linkexpiryinminutes) == (
        "stdouterr",
        ".",
        5,
    )
