"""Drives Microsoft's Batch AI recipes' `utilities` helpers (vendored unmodified in ./utilities) against
the local stack, the way the recipes' notebooks use them (RandomSearch.ipynb above all): status
printing, job submission, wait and stream, a random-search and a grid parameter sweep over a dataset in
a blob container mounted into each job, metric extraction from each job's log, and resubmission of
failed jobs (which looks the storage account's key up through ARM's Microsoft.Storage).

Run by tests/legacy/test_recipes.py in the recipes' SDK generation (azure-mgmt-batchai 2.0.0,
msrestazure, azure-mgmt-storage 2.0.0, azure-storage-blob/file 1.x). Only credentials and endpoints are
local. Prints `RESULT <json>` for the test to check.
"""
from __future__ import print_function

import json
import math
import os
import sys
import time

import azure.mgmt.batchai as training
import azure.mgmt.batchai.models as models
from azure.mgmt.resource import ResourceManagementClient
from azure.storage.blob import BlockBlobService
from azure.storage.file import FileService
from msrest.authentication import BasicTokenAuthentication

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import utilities as utils  # noqa: E402
from utilities.job_factory import DiscreteParameter, NumericParameter, ParameterSweep  # noqa: E402

env = os.environ
subscription_id = env["RECIPES_SUBSCRIPTION_ID"]
arm = env["RECIPES_ARM_ENDPOINT"]
account, key = env["RECIPES_STORAGE_ACCOUNT"], env["RECIPES_STORAGE_KEY"]
connection_string = env["RECIPES_STORAGE_CONNECTION_STRING"]
file_endpoint = env["RECIPES_FILE_ENDPOINT"]  # http://host:port/<account>
resource_group, workspace, location = env["RECIPES_RESOURCE_GROUP"], "recipes", "eastus"

creds = BasicTokenAuthentication({"access_token": env["RECIPES_ARM_TOKEN"]})
client = training.BatchAIManagementClient(credentials=creds, subscription_id=subscription_id, base_url=arm)
ResourceManagementClient(credentials=creds, subscription_id=subscription_id, base_url=arm) \
    .resource_groups.create_or_update(resource_group, {"location": location})
client.workspaces.create(resource_group, workspace, location).result()

# The dataset in a blob container, the training script in a file share (as in RandomSearch.ipynb).
container = "batchaisample"
blob_service = BlockBlobService(connection_string=connection_string)
blob_service.create_container(container, fail_on_exist=False)
samples = [(i, (i * 7) % 10) for i in range(50)]
blob_service.create_blob_from_text(container, "mnist_dataset/train.txt",
                                   "".join("%d %d\n" % s for s in samples))
share = "batchaisample"
file_service = FileService(connection_string=connection_string)
file_service.create_share(share, fail_on_exist=False)
file_service.create_directory(share, "hyperparam_samples", fail_on_exist=False)
file_service.create_file_from_text(share, "hyperparam_samples", "train.py", open(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")).read())

cluster_name = "nc6"
cluster = client.clusters.create(resource_group, workspace, cluster_name, models.ClusterCreateParameters(
    vm_size="STANDARD_NC6",
    scale_settings=models.ScaleSettings(manual=models.ManualScaleSettings(target_node_count=2)),
    user_account_settings=models.UserAccountSettings(admin_user_name="demo", admin_user_password="Dem0Pa55"),
)).result()
while True:
    cluster = client.clusters.get(resource_group, workspace, cluster_name)
    utils.cluster.print_cluster_status(cluster)  # status printing
    if cluster.node_state_counts.idle_node_count == 2:
        break
    time.sleep(0.5)

experiment_name = "random_search_experiment"
client.experiments.create(resource_group, workspace, experiment_name).result()
experiment_utils = utils.experiment.ExperimentUtils(client, resource_group, workspace, experiment_name)

afs, bfs = "afs", "bfs"


def mounts():
    return models.MountVolumes(
        azure_file_shares=[models.AzureFileShareReference(
            account_name=account, credentials=models.AzureStorageCredentialsInfo(account_key=key),
            azure_file_url="{0}/{1}".format(file_endpoint, share), relative_mount_path=afs)],
        azure_blob_file_systems=[models.AzureBlobFileSystemReference(
            account_name=account, credentials=models.AzureStorageCredentialsInfo(account_key=key),
            container_name=container, relative_mount_path=bfs)])


def job_parameters(command_line_args):
    return models.JobCreateParameters(
        cluster=models.ResourceId(id=cluster.id),
        node_count=1,
        std_out_err_path_prefix="$AZ_BATCHAI_JOB_MOUNT_ROOT/{0}".format(afs),
        input_directories=[models.InputDirectory(
            id="SCRIPT", path="$AZ_BATCHAI_JOB_MOUNT_ROOT/{0}/mnist_dataset".format(bfs))],
        output_directories=[models.OutputDirectory(
            id="ALL", path_prefix="$AZ_BATCHAI_JOB_MOUNT_ROOT/{0}".format(afs))],
        mount_volumes=mounts(),
        container_settings=models.ContainerSettings(image_source_registry=models.ImageSourceRegistry(
            image="microsoft/cntk:2.5.1-gpu-python2.7-cuda9.0-cudnn7.0")),
        cntk_settings=models.CNTKsettings(
            python_script_file_path="$AZ_BATCHAI_JOB_MOUNT_ROOT/{0}/hyperparam_samples/train.py".format(afs),
            command_line_args=command_line_args))


# Parameter sweeps: random search (as the notebook) and a grid.
param_specs = [
    NumericParameter(parameter_name="FEEDFORWARD_CONSTANT", data_type="REAL", start=0.001, end=10, scale="LOG"),
    DiscreteParameter(parameter_name="HIDDEN_LAYERS_DIMENSION", values=[100, 200, 300]),
]
parameters = ParameterSweep(param_specs)
jcp = job_parameters(
    "--feedforward_const {0} --hidden_layers_dim {1} --datadir $AZ_BATCHAI_INPUT_SCRIPT "
    "--outputdir $AZ_BATCHAI_OUTPUT_ALL".format(
        parameters["FEEDFORWARD_CONSTANT"], parameters["HIDDEN_LAYERS_DIMENSION"]))
num_configs = int(env.get("RECIPES_NUM_CONFIGS", "4"))
jobs_to_submit, param_combinations = parameters.generate_jobs_random_search(jcp, num_configs)
for idx, comb in enumerate(param_combinations):
    print("Parameters {0}: {1}".format(idx + 1, comb))
jobs = experiment_utils.submit_jobs(jobs_to_submit, "mnist_hyperparam_job").result()
assert len(jobs) == num_configs, jobs

grid = ParameterSweep([DiscreteParameter(parameter_name="HIDDEN_LAYERS_DIMENSION", values=[100, 300])])
grid_jobs, grid_combinations = grid.generate_jobs(job_parameters(
    "--feedforward_const 1 --hidden_layers_dim {0} --datadir $AZ_BATCHAI_INPUT_SCRIPT "
    "--outputdir $AZ_BATCHAI_OUTPUT_ALL".format(grid["HIDDEN_LAYERS_DIMENSION"])))
assert [c["PARAM_HIDDEN_LAYERS_DIMENSION"] for c in grid_combinations] == [100, 300], grid_combinations
jobs += experiment_utils.submit_jobs(grid_jobs, "grid_job").result()

# Wait and stream one job's stdout as the recipes do.
utils.job.wait_for_job_completion(client, resource_group, workspace, experiment_name, jobs[0].name,
                                  cluster_name, "stdouterr", "stdout.txt")



def wait_done(names):
    # (The utilities' wait_all_jobs polls every 45 s; the local stack is faster, so wait here first.)
    while True:
        states = [client.jobs.get(resource_group, workspace, experiment_name, n).execution_state for n in names]
        if all(s in (models.ExecutionState.succeeded, models.ExecutionState.failed) for s in states):
            return
        time.sleep(0.5)


wait_done([j.name for j in jobs])
metric_extractor = utils.job.MetricExtractor(output_dir_id="ALL", logfile="progress.log",
                                             regex=r"metric =(.*?)\%")
results = experiment_utils.get_metrics_for_jobs(jobs, metric_extractor)
results.sort(key=lambda r: r["metric_value"])
for result in results:
    print("Job {0} completed with metric value {1}".format(result["job_name"], result["metric_value"]))
best = results[0]
print("Best job: {0} with parameters {1}".format(
    best["job_name"], {ev.name: ev.value for ev in best["job"].environment_variables or []}))

# A job that fails the first time (its marker file is not there yet), then resubmission.
flaky = job_parameters("--fail-once $AZ_BATCHAI_JOB_MOUNT_ROOT/{0}/flaky.marker --datadir "
                       "$AZ_BATCHAI_INPUT_SCRIPT --outputdir $AZ_BATCHAI_OUTPUT_ALL".format(afs))
flaky_job = experiment_utils.submit_jobs([flaky], "flaky").result()[0]
wait_done([flaky_job.name])
first_state = client.jobs.get(resource_group, workspace, experiment_name, flaky_job.name).execution_state
utils.job.print_job_status(client.jobs.get(resource_group, workspace, experiment_name, flaky_job.name))
resubmitted = experiment_utils.resubmit_failed_jobs()
resubmitted_names = [j.name for j in resubmitted or []]
wait_done([flaky_job.name])
final = experiment_utils.wait_all_jobs(job_names=[flaky_job.name])

print("RESULT " + json.dumps({
    "metrics": [r["metric_value"] for r in results],
    "finite": all(isinstance(r["metric_value"], float) and math.isfinite(r["metric_value"]) for r in results),
    "jobs": [r["job_name"] for r in results],
    "states": [str(client.jobs.get(resource_group, workspace, experiment_name, n).execution_state)
               for n in [r["job_name"] for r in results]],
    "flaky_first": str(first_state),
    "resubmitted": resubmitted_names,
    "flaky_final": [str(j.execution_state) for j in final],
}))
client.clusters.delete(resource_group, workspace, cluster_name).result()
