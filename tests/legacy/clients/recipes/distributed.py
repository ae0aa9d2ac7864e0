"""Microsoft's Batch AI distributed recipes' job definitions (github Azure/BatchAI,
recipes/PyTorch/PyTorch-GPU-Distributed-Gloo and recipes/TensorFlow/TensorFlow-GPU notebooks), their SDK
calls as written but for credentials, endpoints and stand-in scripts (standins/: no GPU frameworks
here), against the local stack, streamed with the recipes' `utilities` as the notebooks do:
`stdout-0.txt` of the PyTorch job, `stdout-wk-0.txt` of the TensorFlow job. Then the PyTorch job with
rank 1 failing. Prints `RESULT <json>` for tests/legacy/test_recipes.py.
"""
from __future__ import print_function

import json
import os
import sys
import time

import azure.mgmt.batchai as training
import azure.mgmt.batchai.models as models
import requests
from azure.mgmt.resource import ResourceManagementClient
from azure.storage.file import FileService
from msrest.authentication import BasicTokenAuthentication

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
import utilities as utils  # noqa: E402

env = os.environ
subscription_id = env["RECIPES_SUBSCRIPTION_ID"]
account, key = env["RECIPES_STORAGE_ACCOUNT"], env["RECIPES_STORAGE_KEY"]
file_endpoint = env["RECIPES_FILE_ENDPOINT"]
resource_group, workspace, location = env["RECIPES_RESOURCE_GROUP"], "distributed", "eastus"
creds = BasicTokenAuthentication({"access_token": env["RECIPES_ARM_TOKEN"]})
client = training.BatchAIManagementClient(credentials=creds, subscription_id=subscription_id,
                                          base_url=env["RECIPES_ARM_ENDPOINT"])
ResourceManagementClient(credentials=creds, subscription_id=subscription_id, base_url=env["RECIPES_ARM_ENDPOINT"]) \
    .resource_groups.create_or_update(resource_group, {"location": location})
client.workspaces.create(resource_group, workspace, location).result()

azure_file_share_name = "batchaidistributed"
file_service = FileService(connection_string=env["RECIPES_STORAGE_CONNECTION_STRING"])
file_service.create_share(azure_file_share_name, fail_on_exist=False)
for directory, script in (("PyTorchSamples", "mnist_trainer.py"), ("mnist_script", "convolutional.py")):
    file_service.create_directory(azure_file_share_name, directory, fail_on_exist=False)
    file_service.create_file_from_path(azure_file_share_name, directory, script,
                                       os.path.join(here, "standins", script))

cluster_name = "nc6"
client.clusters.create(resource_group, workspace, cluster_name, models.ClusterCreateParameters(
    vm_size="STANDARD_NC6",
    scale_settings=models.ScaleSettings(manual=models.ManualScaleSettings(target_node_count=2)),
    user_account_settings=models.UserAccountSettings(admin_user_name="demo", admin_user_password="Dem0Pa55"),
)).result()
while client.clusters.get(resource_group, workspace, cluster_name).node_state_counts.idle_node_count != 2:
    time.sleep(0.5)
cluster = client.clusters.get(resource_group, workspace, cluster_name)
azure_file_share = "afs"


def share_mounts():
    return models.MountVolumes(azure_file_shares=[models.AzureFileShareReference(
        account_name=account, credentials=models.AzureStorageCredentialsInfo(account_key=key),
        azure_file_url="{0}/{1}".format(file_endpoint, azure_file_share_name),
        relative_mount_path=azure_file_share)])


def pytorch_parameters(extra_args=""):
    # The PyTorch-GPU-Distributed-Gloo notebook's JobCreateParameters.
    return models.JobCreateParameters(
        cluster=models.ResourceId(id=cluster.id),
        node_count=2,
        std_out_err_path_prefix="$AZ_BATCHAI_JOB_MOUNT_ROOT/{0}".format(azure_file_share),
        mount_volumes=share_mounts(),
        container_settings=models.ContainerSettings(
            image_source_registry=models.ImageSourceRegistry(image="pytorch/pytorch:0.4_cuda9_cudnn7")),
        py_torch_settings=models.PyTorchSettings(
            python_script_file_path="$AZ_BATCHAI_JOB_MOUNT_ROOT/{0}/{1}/mnist_trainer.py".format(
                azure_file_share, "PyTorchSamples"),
            command_line_args="--epochs 2 --world-size 2 --dist-backend gloo --dist-url "
                              "$AZ_BATCHAI_PYTORCH_INIT_METHOD --rank $AZ_BATCHAI_TASK_INDEX" + extra_args,
            communication_backend="gloo"))


def files_of(experiment_name, job_name):
    listed = client.jobs.list_output_files(resource_group, workspace, experiment_name, job_name,
                                           models.JobsListOutputFilesOptions(outputdirectoryid="stdouterr"))
    return {f.name: f.download_url for f in listed}


result = {}
experiment_name = "pytorch_experiment"
client.experiments.create(resource_group, workspace, experiment_name).result()
client.jobs.create(resource_group, workspace, experiment_name, "pytorch", pytorch_parameters()).result()
utils.job.wait_for_job_completion(client, resource_group, workspace, experiment_name, "pytorch",
                                  cluster_name, "stdouterr", "stdout-0.txt")
job = client.jobs.get(resource_group, workspace, experiment_name, "pytorch")
files = files_of(experiment_name, "pytorch")
result["pytorch"] = {"state": str(job.execution_state), "files": sorted(files),
                     "stdout_1": requests.get(files["stdout-1.txt"]).text if "stdout-1.txt" in files else None}

# The TensorFlow-GPU notebook's JobCreateParameters (one node, no counts).
experiment_name = "tensorflow_experiment"
client.experiments.create(resource_group, workspace, experiment_name).result()
client.jobs.create(resource_group, workspace, experiment_name, "tf", models.JobCreateParameters(
    cluster=models.ResourceId(id=cluster.id),
    node_count=1,
    std_out_err_path_prefix="$AZ_BATCHAI_JOB_MOUNT_ROOT/{0}".format(azure_file_share),
    mount_volumes=share_mounts(),
    container_settings=models.ContainerSettings(
        image_source_registry=models.ImageSourceRegistry(image="tensorflow/tensorflow:1.8.0-gpu")),
    tensor_flow_settings=models.TensorFlowSettings(
        python_script_file_path="$AZ_BATCHAI_JOB_MOUNT_ROOT/{0}/{1}/convolutional.py".format(
            azure_file_share, "mnist_script")),
)).result()
utils.job.wait_for_job_completion(client, resource_group, workspace, experiment_name, "tf",
                                  cluster_name, "stdouterr", "stdout-wk-0.txt")
job = client.jobs.get(resource_group, workspace, experiment_name, "tf")
result["tensorflow"] = {"state": str(job.execution_state), "files": sorted(files_of(experiment_name, "tf"))}

# The PyTorch job again, rank 1 failing after the rendezvous: the job fails naming it, rank 0 stopped.
experiment_name = "pytorch_experiment"
started = time.time()
client.jobs.create(resource_group, workspace, experiment_name, "pytorch_fail",
                   pytorch_parameters(" --fail-rank 1")).result()
utils.job.wait_for_job_completion(client, resource_group, workspace, experiment_name, "pytorch_fail",
                                  cluster_name, "stdouterr", "stdout-0.txt")
job = client.jobs.get(resource_group, workspace, experiment_name, "pytorch_fail")
result["failing"] = {"state": str(job.execution_state), "exit_code": job.execution_info.exit_code,
                     "errors": [e.message for e in job.execution_info.errors or []],
                     "seconds": round(time.time() - started, 1)}
print("RESULT " + json.dumps(result))
client.clusters.delete(resource_group, workspace, cluster_name).result()
