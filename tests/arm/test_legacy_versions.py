"""Batch AI api-versions 2018-03-01 and 2017-09-01-preview: clusters and jobs directly in a resource
group, the same resources 2018-05-01 shows in the group's `default` workspace, each answer in its own
version's published shape."""

from __future__ import annotations

import pytest
import requests

from infra.local.arm.specvalidator import validate
from tests.arm.conftest import SUB, Clients, auth, unique, wait_for

pytestmark = pytest.mark.e2e


def cluster_body(share_url: str) -> dict:
    return {
        "location": "eastus",
        "properties": {
            "vmSize": "STANDARD_NC6",
            "scaleSettings": {"manual": {"targetNodeCount": 1}},
            "userAccountSettings": {"adminUserName": "demo", "adminUserPassword": "Dem0Pa55"},
            "nodeSetup": {"mountVolumes": {"azureFileShares": [{
                "accountName": "devstoreaccount1", "azureFileUrl": share_url,
                "credentials": {"accountKey": "x"}, "relativeMountPath": "afs"}]}},
        },
    }  # fmt: skip


@pytest.mark.parametrize("version", ["2018-03-01", "2017-09-01-preview"])
def test_group_level_resources_in_each_version(clients: Clients, arm_stack, make_share, version) -> None:
    share = make_share({"data/in.txt": b"x"})
    group = unique("legacy")
    clients.resources.resource_groups.create_or_update(group, {"location": "eastus"})
    base = f"{arm_stack.arm_endpoint}/subscriptions/{SUB}/resourceGroups/{group}/providers/Microsoft.BatchAI"
    q = {"api-version": version}
    put = requests.put(f"{base}/clusters/c1", params=q, headers=auth(arm_stack), timeout=10,
                       json=cluster_body(f"{arm_stack.file_endpoint}/{share.share_name}"))  # fmt: skip
    assert put.status_code in (200, 201, 202), put.text

    def get_cluster() -> dict | None:
        body = requests.get(f"{base}/clusters/c1", params=q, headers=auth(arm_stack), timeout=10).json()
        return body if body["properties"].get("allocationState") == "steady" else None

    cluster = wait_for(get_cluster, what="the cluster to be steady")
    assert validate("Cluster", cluster, version) == []
    assert (
        cluster["id"]
        == f"/subscriptions/{SUB}/resourceGroups/{group}/providers/Microsoft.BatchAI/clusters/c1"
    )
    assert cluster["type"] == "Microsoft.BatchAI/Clusters" and cluster["location"] == "eastus"
    job = {
        "location": "eastus",
        "properties": {
            "cluster": {"id": cluster["id"]}, "nodeCount": 1, "priority": 100,
            "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
            "customToolkitSettings": {"commandLine": "cat $AZ_BATCHAI_MOUNT_ROOT/afs/data/in.txt"},
        },
    }  # fmt: skip
    assert (
        requests.put(f"{base}/jobs/j1", params=q, headers=auth(arm_stack), json=job, timeout=10).status_code
        == 202
    )

    def finished() -> dict | None:
        body = requests.get(f"{base}/jobs/j1", params=q, headers=auth(arm_stack), timeout=10).json()
        return body if body["properties"]["executionState"] in ("succeeded", "failed") else None

    done = wait_for(finished, what="the job to finish")
    assert done["properties"]["executionState"] == "succeeded", done
    assert validate("Job", done, version) == []
    assert done["properties"]["priority"] == 1 and "schedulingPriority" not in done["properties"]
    assert done["properties"]["cluster"]["id"] == cluster["id"]
    listed = requests.get(f"{base}/jobs", params=q, headers=auth(arm_stack), timeout=10).json()["value"]
    assert [j["name"] for j in listed] == ["j1"]
    files = requests.post(f"{base}/jobs/j1/listOutputFiles", headers=auth(arm_stack), timeout=10,
                          params={**q, "outputdirectoryid": "stdouterr"}).json()["value"]  # fmt: skip
    stdout = next(f for f in files if f["name"] == "stdout.txt")
    assert requests.get(stdout["downloadUrl"], timeout=10).content == b"x"

    # The same cluster, seen through 2018-05-01: in the group's `default` workspace.
    current = clients.batchai.clusters.get(group, "default", "c1")
    assert current.vm_size == "STANDARD_NC6"
    # Each path belongs to its generation: workspaces are not a type of the older versions.
    wrong = requests.get(f"{base}/workspaces", params=q, headers=auth(arm_stack), timeout=10)
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "NoRegisteredProviderFound"
    wrong = requests.get(
        f"{base}/clusters", params={"api-version": "2018-05-01"}, headers=auth(arm_stack), timeout=10
    )
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "NoRegisteredProviderFound"
    # Bodies are checked against the version's own definition.
    bad = requests.put(f"{base}/jobs/j2", params=q, headers=auth(arm_stack), timeout=10,
                       json={"location": "eastus", "properties": {"nodeCount": 1}})  # fmt: skip
    assert bad.status_code == 400 and "cluster" in bad.json()["error"]["message"]
    assert requests.delete(f"{base}/jobs/j1", params=q, headers=auth(arm_stack), timeout=10).status_code in (
        200,
        202,
        204,
    )
    assert (
        requests.delete(f"{base}/jobs/nope", params=q, headers=auth(arm_stack), timeout=10).status_code == 204
    )
    clients.resources.resource_groups.begin_delete(group).result()
