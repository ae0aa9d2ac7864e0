# Microsoft's quickstart "Run a CNTK training job using the Azure Python SDK"
# (MicrosoftDocs/azure-docs, articles/batch-ai/quickstart-python.md, October 2017), step by step as
# written for azure-mgmt-batchai 0.2.0 (api-version 2017-09-01-preview) and azure-storage-file.
# Only credentials and endpoints are replaced (lines marked "LOCAL:"): the values come from the
# environment the test sets, the service principal becomes a bearer token the local ARM emulator
# accepts, and the clients get the local stack's endpoints. tests/legacy runs it in its own virtual
# environment with that SDK generation. Kept as written: ruff does not touch this folder.
import os
import time

# credentials used for authentication
aad_client_id = 'local'
aad_secret = 'local'
aad_tenant = 'local'
subscription_id = os.environ['QUICKSTART_SUBSCRIPTION_ID']  # LOCAL

# credentials used for storage
storage_account_name = os.environ['QUICKSTART_STORAGE_ACCOUNT']  # LOCAL
storage_account_key = os.environ['QUICKSTART_STORAGE_KEY']  # LOCAL

# specify the credentials used to remote login your GPU node
admin_user_name = 'demoUser'
admin_user_password = 'Dem0Pa55'

arm_endpoint = os.environ['QUICKSTART_ARM_ENDPOINT']  # LOCAL: the ARM emulator
file_endpoint = os.environ['QUICKSTART_FILE_ENDPOINT']  # LOCAL: the Files emulator

## Create Batch AI Client
from msrest.authentication import BasicTokenAuthentication  # LOCAL: for ServicePrincipalCredentials
import azure.mgmt.batchai as batchai
import azure.mgmt.batchai.models as models

creds = BasicTokenAuthentication({'access_token': os.environ['QUICKSTART_ARM_TOKEN']})  # LOCAL

batchai_client = batchai.BatchAIManagementClient(
    credentials=creds, subscription_id=subscription_id, base_url=arm_endpoint)  # LOCAL: base_url

## Create a resource group
from azure.mgmt.resource import ResourceManagementClient

resource_group_name = 'myresourcegroup'
resource_management_client = ResourceManagementClient(
        credentials=creds, subscription_id=subscription_id, base_url=arm_endpoint)  # LOCAL: base_url
resource = resource_management_client.resource_groups.create_or_update(
        resource_group_name, {'location': 'eastus'})

## Prepare Azure file share
from azure.storage.file import FileService
azure_file_share_name = 'batchaiquickstart'
service = FileService(connection_string='DefaultEndpointsProtocol=http;AccountName={0};AccountKey={1};FileEndpoint={2}'.format(
    storage_account_name, storage_account_key, file_endpoint))  # LOCAL: endpoint
service.create_share(azure_file_share_name, fail_on_exist=False)

mnist_dataset_directory = 'mnistcntksample'
service.create_directory(azure_file_share_name, mnist_dataset_directory,
                         fail_on_exist=False)

for f in ['Train-28x28_cntk_text.txt', 'Test-28x28_cntk_text.txt',
          'ConvNet_MNIST.py']:
     service.create_file_from_path(
             azure_file_share_name, mnist_dataset_directory, f, f)

## Create GPU cluster
cluster_name = 'mycluster'

relative_mount_point = 'azurefileshare'

parameters = models.ClusterCreateParameters(
    # Location where the cluster will physically be deployed
    location='eastus',
    # VM size. Use NC or NV series for GPU
    vm_size='STANDARD_NC6',
    # Configure the ssh users
    user_account_settings=models.UserAccountSettings(
        admin_user_name=admin_user_name,
        admin_user_password=admin_user_password),
    # Number of VMs in the cluster
    scale_settings=models.ScaleSettings(
        manual=models.ManualScaleSettings(target_node_count=1)
    ),
    # Configure each node in the cluster
    node_setup=models.NodeSetup(
        # Mount shared volumes to the host
        mount_volumes=models.MountVolumes(
            azure_file_shares=[
                models.AzureFileShareReference(
                    account_name=storage_account_name,
                    credentials=models.AzureStorageCredentialsInfo(
                        account_key=storage_account_key),
                    azure_file_url='https://{0}/{1}'.format(
                        service.primary_endpoint, azure_file_share_name),
                    relative_mount_path=relative_mount_point)],
        ),
    ),
)
batchai_client.clusters.create(resource_group_name, cluster_name,
                               parameters).result()

## Get cluster status
cluster = batchai_client.clusters.get(resource_group_name, cluster_name)
print('Cluster state: {0} Target: {1}; Allocated: {2}; Idle: {3}; '
      'Unusable: {4}; Running: {5}; Preparing: {6}; Leaving: {7}'.format(
    cluster.allocation_state,
    cluster.scale_settings.manual.target_node_count,
    cluster.current_node_count,
    cluster.node_state_counts.idle_node_count,
    cluster.node_state_counts.unusable_node_count,
    cluster.node_state_counts.running_node_count,
    cluster.node_state_counts.preparing_node_count,
    cluster.node_state_counts.leaving_node_count))

## Create training job
job_name = 'myjob'

parameters = models.job_create_parameters.JobCreateParameters(
    # The job and cluster must be created in the same location
    location=cluster.location,
    # The cluster this job will run on
    cluster=models.ResourceId(id=cluster.id),
    # The number of VMs in the cluster to use
    node_count=1,
    # Write job's standard output and execution log to Azure File Share
    std_out_err_path_prefix='$AZ_BATCHAI_MOUNT_ROOT/{0}'.format(
        relative_mount_point),
    # Configure location of the training script and MNIST dataset
    input_directories=[models.InputDirectory(
        id='SAMPLE',
        path='$AZ_BATCHAI_MOUNT_ROOT/{0}/{1}'.format(
            relative_mount_point, mnist_dataset_directory))],
    # Specify location where generated model will be stored
    output_directories=[models.OutputDirectory(
        id='MODEL',
        path_prefix='$AZ_BATCHAI_MOUNT_ROOT/{0}'.format(relative_mount_point),
        path_suffix="Models")],
    # Container configuration
    container_settings=models.ContainerSettings(
        image_source_registry=models.ImageSourceRegistry(
            image='microsoft/cntk:2.1-gpu-python3.5-cuda8.0-cudnn6.0')),
    # Toolkit specific settings
    cntk_settings=models.CNTKsettings(
        python_script_file_path='$AZ_BATCHAI_INPUT_SAMPLE/ConvNet_MNIST.py',
        command_line_args='$AZ_BATCHAI_INPUT_SAMPLE $AZ_BATCHAI_OUTPUT_MODEL')
)

# Create the job
batchai_client.jobs.create(resource_group_name, job_name, parameters).result()

## Monitor job
job = batchai_client.jobs.get(resource_group_name, job_name)

print('Job state: {0} '.format(job.execution_state.name))

# (The quickstart has the reader run the snippet above again until the job is done.)
while job.execution_state.name not in ('succeeded', 'failed'):
    time.sleep(0.5)
    job = batchai_client.jobs.get(resource_group_name, job_name)
print('Job state: {0} '.format(job.execution_state.name))

## List stdout and stderr output
files = batchai_client.jobs.list_output_files(
    resource_group_name, job_name,
    models.JobsListOutputFilesOptions(outputdirectoryid="stdouterr"))

for file in (f for f in files if f.download_url):
    print('file: {0}, download url: {1}'.format(file.name, file.download_url))

## List generated model files
files = batchai_client.jobs.list_output_files(
    resource_group_name, job_name,
    models.JobsListOutputFilesOptions(outputdirectoryid="MODEL"))

for file in (f for f in files if f.download_url):
    print('file: {0}, download url: {1}'.format(file.name, file.download_url))

## Delete resources
batchai_client.jobs.delete(resource_group_name, job_name)

batchai_client.clusters.delete(resource_group_name, cluster_name)

resource_management_client.resource_groups.delete('myresourcegroup')
print('QUICKSTART DONE')
