"""Bad requests get ARM errors that name the problem: missing token, unsupported api-version, bodies the
spec rejects, references to things that don't exist, a share that isn't there."""

from __future__ import annotations

import azure.mgmt.batchai.models as bai
import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError

from tests.arm.conftest import Clients, auth, unique, wait_for
from tests.arm.quickstart import cluster_parameters, cntk_job

pytestmark = pytest.mark.e2e

SUB = "00000000-0000-0000-0000-000000000000"


@pytest.fixture(scope="module")
def workspace(clients: Clients):
    group = unique("errors")
    clients.resources.resource_groups.create_or_update(group, {"location": "eastus"})
    clients.batchai.workspaces.begin_create(
        group, "ws", bai.WorkspaceCreateParameters(location="eastus")
    ).result()
    clients.batchai.experiments.begin_create(group, "ws", "exp").result()
    yield group
    clients.resources.resource_groups.begin_delete(group).result()


def test_missing_or_empty_token_is_401(arm_stack) -> None:
    url = f"{arm_stack.arm_endpoint}/subscriptions/{SUB}/resourcegroups?api-version=2025-04-01"
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Basic abc"}):
        answer = requests.get(url, headers=headers, timeout=10)
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "AuthenticationFailed"
        assert "Authorization" in answer.json()["error"]["message"]


def test_sdk_without_token_is_refused(arm_stack) -> None:
    from azure.mgmt.resource.resources import ResourceManagementClient

    from tests.arm.conftest import AllowHttp

    class EmptyToken:
        def get_token(self, *scopes, **kwargs):
            from azure.core.credentials import AccessToken

            return AccessToken("", 2**31)

    client = ResourceManagementClient(
        EmptyToken(), SUB, base_url=arm_stack.arm_endpoint, per_call_policies=[AllowHttp()]
    )
    with pytest.raises(ClientAuthenticationError):
        client.resource_groups.check_existence("anything")


def test_api_version_is_required_and_checked(arm_stack) -> None:
    headers = auth(arm_stack)
    ws = f"{arm_stack.arm_endpoint}/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.BatchAI"
    ws += "/workspaces"
    missing = requests.get(ws, headers=headers, timeout=10)
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "MissingApiVersionParameter"
    wrong = requests.get(f"{ws}?api-version=2016-01-01", headers=headers, timeout=10)
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "InvalidApiVersionParameter"
    assert "2018-05-01" in wrong.json()["error"]["message"]
    # An older version exists, but workspaces are not one of its resource types.
    older = requests.get(f"{ws}?api-version=2017-09-01-preview", headers=headers, timeout=10)
    assert older.status_code == 400 and older.json()["error"]["code"] == "NoRegisteredProviderFound"
    groups = f"{arm_stack.arm_endpoint}/subscriptions/{SUB}/resourcegroups?api-version=2018-05-01-x"
    assert requests.get(groups, headers=headers, timeout=10).status_code == 400


def test_bodies_the_spec_rejects_name_the_field(arm_stack, clients: Clients, workspace: str) -> None:
    url = (
        f"{arm_stack.arm_endpoint}/subscriptions/{SUB}/resourceGroups/{workspace}/providers/Microsoft.BatchAI"
        "/workspaces/ws/clusters/bad?api-version=2018-05-01"
    )
    headers = {**auth(arm_stack), "Content-Type": "application/json"}
    body = {
        "properties": {
            "vmSize": "STANDARD_NC6",
            "userAccountSettings": {"adminUserName": "u", "adminUserPassword": "p"},
            "scaleSettings": {"manual": {"targetNodeCount": "two"}},
        }
    }
    answer = requests.put(url, json=body, headers=headers, timeout=10)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "InvalidRequestContent"
    assert "targetNodeCount" in error["message"] and error["target"].endswith("targetNodeCount")
    no_vm = requests.put(
        url, json={"properties": {"userAccountSettings": {"adminUserName": "u"}}}, headers=headers, timeout=10
    )
    assert no_vm.status_code == 400 and "vmSize" in no_vm.json()["error"]["message"]
    not_json = requests.put(url, data=b"{nope", headers=headers, timeout=10)
    assert not_json.status_code == 400 and "JSON" in not_json.json()["error"]["message"]
    bad_name = requests.put(url.replace("/clusters/bad", "/clusters/bad%20name"), json=body, headers=headers)
    assert bad_name.status_code == 400 and "clusterName" in bad_name.json()["error"]["message"]


def test_semantic_errors_through_the_sdk(clients: Clients, workspace: str, tmp_path) -> None:
    group = workspace
    both = bai.ScaleSettings(
        manual=bai.ManualScaleSettings(target_node_count=1),
        auto_scale=bai.AutoScaleSettings(minimum_node_count=0, maximum_node_count=1),
    )
    params = cluster_parameters("http://127.0.0.1:1/devstoreaccount1/none")
    params.scale_settings = both
    with pytest.raises(HttpResponseError) as exc:
        clients.batchai.clusters.begin_create(group, "ws", "c", params)
    assert exc.value.status_code == 400 and "scaleSettings" in exc.value.message

    missing_cluster = (
        f"/subscriptions/{SUB}/resourceGroups/{group}/providers/Microsoft.BatchAI/workspaces/ws/clusters/no"
    )
    with pytest.raises(HttpResponseError) as exc:
        clients.batchai.jobs.begin_create(group, "ws", "exp", "j", cntk_job(missing_cluster))
    assert exc.value.status_code == 400 and "cluster.id" in exc.value.message

    two_toolkits = cntk_job(missing_cluster)
    two_toolkits.custom_toolkit_settings = bai.CustomToolkitSettings(command_line="true")
    with pytest.raises(HttpResponseError) as exc:
        clients.batchai.jobs.begin_create(group, "ws", "exp", "j", two_toolkits)
    assert "exactly one toolkit" in exc.value.message

    with pytest.raises(ResourceNotFoundError):
        clients.batchai.jobs.get(group, "ws", "exp", "nope")
    with pytest.raises(ResourceNotFoundError) as exc:
        clients.batchai.workspaces.get(unique("nogroup"), "ws")
    assert "ResourceGroupNotFound" in str(exc.value)
    assert clients.spec.errors == []


def test_missing_share_is_a_cluster_error(clients: Clients, workspace: str, arm_stack) -> None:
    url = f"{arm_stack.file_endpoint}/{unique('absent')}"
    clients.batchai.clusters.begin_create(workspace, "ws", "noshare", cluster_parameters(url)).result()
    cluster = wait_for(
        lambda: (
            (c := clients.batchai.clusters.get(workspace, "ws", "noshare")).allocation_state == "steady" and c
        ),
        what="allocation to finish",
    )
    assert (
        cluster.node_state_counts.unusable_node_count == 1 and cluster.node_state_counts.idle_node_count == 0
    )
    assert [e.code for e in cluster.errors] == ["AzureFileShareMountFailed"]
    assert url in cluster.errors[0].message and "ShareNotFound" in cluster.errors[0].message
    clients.batchai.clusters.begin_delete(workspace, "ws", "noshare").result()
