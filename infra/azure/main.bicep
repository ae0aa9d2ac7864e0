// Puts the Batch AI training automation into one resource group of a subscription:
//   - a data storage account (training-data container, the runs table of the run registry, the reports
//     container) that the app reaches with its managed identity only (shared keys off),
//   - a file share account holding only the batchaiquickstart share the clusters mount with its key
//     (every node holds that key, so the account holds nothing else),
//   - a separate host storage account (Functions host state and the Flex Consumption deployment
//     package; identity only, shared keys off),
//   - a Python 3.11 function app on the Flex Consumption plan with a system-assigned identity,
//   - Application Insights on a Log Analytics workspace (Entra ID ingestion only),
//   - a Key Vault in RBAC mode holding every secret the app settings reference,
//   - least-privilege role assignments for the app's identity,
//   - an Event Grid system topic on the data account and (second pass, once the code is deployed and
//     the blob extension's system key exists) the subscription that pushes BlobCreated events under
//     training-data/ to the ingest function's Event Grid blob trigger.
//   - with privateNetworking (the default): a virtual network, the app integrated into it (a subnet delegated
//     to Microsoft.App/environments), private endpoints for the storage services the app uses (data account
//     blob/queue/table, host account blob/queue/table, share account file) with their privatelink DNS zones,
//     the host and share accounts closed to the public network, the data account's public endpoint denying
//     everyone but uploaderIpRanges and trusted Azure services, and the Azure ML workspace's managed network
//     reaching the share account through a private endpoint of its own (docs/security.md, "Network").
// The app settings below are exactly the settings that shared/settings.py reads (plus the host's own);
// tests/deploy/ checks that, and docs/deploy.md walks through the deployment.

targetScope = 'resourceGroup'

// --- parameters -----------------------------------------------------------------------------------------

@description('Azure region of every resource in this group (Flex Consumption must be available there).')
param location string = resourceGroup().location

@description('Short prefix of resource names; a hash of the subscription and group makes them unique.')
@minLength(2)
@maxLength(10)
param baseName string = 'batchai'

@description('Data and file share account SKU: redundancy of the training data, the run registry and the share.')
@allowed(['Standard_LRS', 'Standard_ZRS', 'Standard_GRS'])
param dataStorageSku string = 'Standard_LRS'

@description('Blob container that ingest watches: <dataset>/<file>, <dataset>/run.json is the manifest.')
param trainingContainerName string = 'training-data'

@description('Azure File share the clusters mount at $AZ_BATCHAI_MOUNT_ROOT/azurefileshare.')
param fileShareName string = 'batchaiquickstart'

@description('Quota of the file share in GiB.')
@minValue(1)
@maxValue(5120)
param fileShareQuotaGiB int = 100

@description('Table of the run registry.')
param runsTableName string = 'runs'

@description('Blob container for cleanup reports.')
param reportsContainerName string = 'reports'

@description('Queue (data account) of HTTP starts staged out of band by the queue-triggered stage function.')
param stagingQueueName string = 'staging-requests'

@description('Resource group that holds the Batch AI workspace, clusters and jobs. It must exist before this deployment (az group create); the app gets a custom role there listing only the operations it calls (modules/batchai-access.bicep), and nothing wider.')
param batchAiResourceGroupName string = '${resourceGroup().name}-batchai'

@description('Region of the Batch AI workspace and clusters.')
param batchAiLocation string = 'eastus'

@description('Batch AI workspace name (the app creates it if missing).')
param batchAiWorkspaceName string = 'batchai-workspace'

@description('Training service: azureml (Azure Machine Learning, the one that works in Azure today) or batchai (retired by Microsoft in 2019; kept for the local stack).')
@allowed([
  'azureml'
  'batchai'
])
param computeBackend string = 'azureml'

@description('Azure ML workspace name (computeBackend azureml), created by this template in batchAiResourceGroupName.')
param azureMlWorkspaceName string = 'aml-workspace'

@description('VM size when a run spec names none; must be in allowedVmSizes. With computeBackend azureml use a GPU size Azure sells today, e.g. Standard_NC4as_T4_v3 (the K80 STANDARD_NC6 is retired); the subscription needs quota for its family in the region (docs/deploy.md).')
param defaultVmSize string = 'Standard_NC4as_T4_v3'

@description('VM sizes a run spec may ask for (GPU sizes Azure ML offers today; the K80 NC sizes are retired).')
param allowedVmSizes array = [
  'Standard_NC4as_T4_v3'
  'Standard_NC8as_T4_v3'
  'Standard_NC16as_T4_v3'
  'Standard_NC24ads_A100_v4'
  'Standard_D2s_v3'
]

@description('Admin user name on cluster nodes.')
param clusterAdminUser string = 'batchai'

@description('OpenSSH public key of the cluster admin account (e.g. the contents of ~/.ssh/id_ed25519.pub).')
@minLength(16)
param clusterSshPublicKey string

@description('Optional admin password of cluster nodes, only for setups that cannot use the SSH key. Empty: no password.')
@secure()
param clusterAdminPassword string = ''

@description('Key from which each run\'s callback signing secret is derived and which seals callback URLs (at least 16 characters; e.g. openssl rand -hex 32).')
@secure()
@minLength(16)
param callbackSigningSecret string

@description('true: store the data account key in Key Vault and have clusters mount the share through that secret (FILE_SHARE_KEY_VAULT_SECRET_URL); the Batch AI service principal then needs read access to the vault. false: the app passes the account key in the mount settings.')
param mountShareWithKeyVaultSecret bool = false

@description('Optional private container registry server; images whose name starts with it get its credentials.')
param containerRegistryServer string = ''

@description('User name for containerRegistryServer.')
param containerRegistryUsername string = ''

@description('Password for containerRegistryServer (stored in Key Vault). Empty: none.')
@secure()
param containerRegistryPassword string = ''

@description('Six-field NCRONTAB schedule of the monitor timer.')
param monitorSchedule string = '0 */1 * * * *'

@description('Six-field NCRONTAB schedule of the nightly cleanup timer.')
param cleanupSchedule string = '0 0 2 * * *'

@description('true: cleanup only reports what it would do.')
param cleanupDryRun bool = false

@description('Finished jobs older than this many hours are deleted by cleanup.')
@minValue(0)
param jobRetentionHours int = 72

@description('Snapshots (and dataset directories) of runs finished longer ago than this many hours are deleted by cleanup.')
@minValue(0)
param stagedDataRetentionHours int = 72

@description('A cluster idle for this many minutes has its nodes released by the monitor; the nightly cleanup deletes it.')
@minValue(0)
param clusterIdleMinutes int = 30

@description('What the monitor does with an idle cluster: scale_to_zero (kept, no nodes) or delete.')
@allowed(['scale_to_zero', 'delete'])
param clusterIdleAction string = 'scale_to_zero'

@description('A run still staging after this many minutes fails.')
@minValue(1)
param stagingTimeoutMinutes int = 60

@description('Longest wait for one server-side blob-to-share copy, in seconds.')
@minValue(1)
param copyTimeoutSeconds int = 600

@description('How much of a job stdout/stderr tail a run record keeps, in bytes.')
@minValue(0)
@maxValue(1048576)
param maxStdoutTailBytes int = 4096

@description('false: uploaded run.json files may not carry command_line or job_preparation (HTTP starts still may).')
param manifestCommandsAllowed bool = true

@description('Most nodes one run may ask for (node_count and the cluster node counts).')
@minValue(1)
@maxValue(1000)
param maxNodesPerRun int = 16

@description('true: run specs may not name their cluster; each dataset uses the cluster derived from its name.')
param clustersByDerivedNameOnly bool = false

@description('Flex Consumption: most instances the app scales out to.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Flex Consumption: memory of each instance in MB.')
@allowed([512, 2048, 4096])
param instanceMemoryMB int = 2048

@description('Name of the ingest function (its Event Grid blob trigger), as registered in functions/ingest.py.')
param ingestFunctionName string = 'ingest'

@description('Second pass, after the code is deployed: create the Event Grid subscription to the ingest function. Its endpoint needs the blobs_extension system key, which exists only once the host has loaded the blob trigger.')
param enableIngestEventSubscription bool = false

@description('Days a deleted Key Vault (or secret) stays recoverable; purge protection is always on, so nobody can shorten this by purging.')
@minValue(30)
@maxValue(90)
param keyVaultSoftDeleteRetentionDays int = 90

@description('true: VNet-integrate the app, reach storage through private endpoints and close the storage accounts to the public network (docs/security.md, "Network"). false: every storage account keeps a public endpoint, reached by identity or key only.')
param privateNetworking bool = true

@description('Address space of the virtual network (privateNetworking).')
param vnetAddressPrefix string = '10.40.0.0/16'

@description('Subnet the function app is integrated into, delegated to Microsoft.App/environments (Flex Consumption); size it for maximumInstanceCount.')
param appSubnetPrefix string = '10.40.1.0/24'

@description('Subnet the storage private endpoints take their addresses from.')
param privateEndpointSubnetPrefix string = '10.40.2.0/24'

@description('With privateNetworking: true closes the data account\'s public endpoint to all but uploaderIpRanges, trusted Azure services and the Azure ML workspace. false (the default) keeps it open to the network, Entra ID or a user delegation SAS still required, while everything else stays private: whether ingest\'s server-side copies from a firewalled data account into the share work is unverified (public reports say they fail with CannotVerifyCopySource; docs/deploy.md), so the firewall is opt-in until tried.')
param dataAccountFirewall bool = false

@description('Public IPv4 addresses or CIDR ranges (e.g. 203.0.113.0/24) allowed through the data account\'s firewall: where uploaders write training-data from. Empty: only the virtual network and trusted Azure services reach it (privateNetworking).')
param uploaderIpRanges array = []

@description('Log Analytics retention in days.')
@minValue(30)
@maxValue(730)
param logRetentionDays int = 30

@description('Tags on every resource.')
param tags object = {}

// --- names ----------------------------------------------------------------------------------------------

var token = toLower(uniqueString(subscription().id, resourceGroup().id, baseName))
var prefix = toLower(baseName)
var dataStorageAccountName = take('st${prefix}d${token}', 24)
var hostStorageAccountName = take('st${prefix}h${token}', 24)
var shareStorageAccountName = take('st${prefix}s${token}', 24)
var functionAppName = 'func-${prefix}-${token}'
var planName = 'plan-${prefix}-${token}'
var keyVaultName = take('kv-${prefix}-${token}', 24)
var logAnalyticsName = 'log-${prefix}-${token}'
var appInsightsName = 'appi-${prefix}-${token}'
var systemTopicName = 'evgt-${dataStorageAccountName}'
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}'
var deadLetterContainerName = 'eventgrid-deadletter'
var vnetName = 'vnet-${prefix}-${token}'
var appSubnetName = 'app'
var privateEndpointSubnetName = 'private-endpoints'
var appSubnetId = resourceId('Microsoft.Network/virtualNetworks/subnets', vnetName, appSubnetName)
var privateEndpointSubnetId = resourceId('Microsoft.Network/virtualNetworks/subnets', vnetName, privateEndpointSubnetName)
// The Azure ML workspace (modules/azureml-workspace.bicep) by id, for the data account's resource instance
// rule: computed, not referenced, since the workspace is created after (and uses) the account.
var azureMlWorkspaceId = '${subscription().id}/resourceGroups/${batchAiResourceGroupName}/providers/Microsoft.MachineLearningServices/workspaces/${azureMlWorkspaceName}'
var workspaceReachesDataAccount = privateNetworking && (computeBackend == 'azureml')
var dataAccountClosed = privateNetworking && dataAccountFirewall

// --- built-in role definitions (GUIDs of Azure's built-in roles) ---------------------------------------

var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

// --- data storage account -------------------------------------------------------------------------------
// Training data, the run registry and the cleanup reports. Shared keys are off: the app reaches it with its
// managed identity (Entra ID) only, and its server-side copies into the share read the source blob through a
// user delegation SAS. No cluster node ever holds a credential of this account.
// Network (privateNetworking): the app reaches it through private endpoints (blob, queue, table); its public
// endpoint denies everyone except uploaderIpRanges (uploaders write training-data from there), trusted Azure
// services (Event Grid dead-lettering with its identity) and the Azure ML workspace (resource instance rule:
// the workspace keeps jobs' outputs and logs here). It is not disabled outright: uploaders outside the
// virtual network need the IP rules, and those apply only while public network access is enabled.
// Without privateNetworking the public endpoint is open to the network, and only Entra ID identities with a
// role here, or a user delegation SAS they issue, get in.

resource dataStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: dataStorageAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: dataStorageSku
  }
  properties: {
    accessTier: 'Hot'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: dataAccountClosed ? 'Deny' : 'Allow'
      bypass: 'AzureServices'
      ipRules: [for ipRange in uploaderIpRanges: {
        value: ipRange
        action: 'Allow'
      }]
      resourceAccessRules: workspaceReachesDataAccount ? [
        {
          tenantId: subscription().tenantId
          resourceId: azureMlWorkspaceId
        }
      ] : []
    }
  }
}

resource dataBlobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: dataStorage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource trainingContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: dataBlobService
  name: trainingContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource reportsContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: dataBlobService
  name: reportsContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: dataBlobService
  name: deadLetterContainerName
  properties: {
    publicAccess: 'None'
  }
}

// --- file share account ---------------------------------------------------------------------------------
// Only the share the clusters mount. Batch AI mounts it with the account key (or a Key Vault secret holding
// it), so every cluster node, and every job on it, holds this key: with it a job can read and write the
// share (every staged dataset) and nothing else of this deployment. Hence an account of its own.
// Network (privateNetworking): no public endpoint at all. The app reaches the share through a file private
// endpoint, Azure ML compute through the workspace managed network's own private endpoint to it; a key taken
// off a node opens nothing from outside those networks.

resource shareStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: shareStorageAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: dataStorageSku
  }
  properties: {
    accessTier: 'Hot'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: true
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: false
    publicNetworkAccess: privateNetworking ? 'Disabled' : 'Enabled'
    networkAcls: {
      defaultAction: privateNetworking ? 'Deny' : 'Allow'
      bypass: privateNetworking ? 'None' : 'AzureServices'
    }
  }
}

resource shareFileService 'Microsoft.Storage/storageAccounts/fileServices@2023-05-01' = {
  parent: shareStorage
  name: 'default'
}

resource fileShare 'Microsoft.Storage/storageAccounts/fileServices/shares@2023-05-01' = {
  parent: shareFileService
  name: fileShareName
  properties: {
    shareQuota: fileShareQuotaGiB
    enabledProtocols: 'SMB'
    accessTier: 'TransactionOptimized'
  }
}

resource dataTableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: dataStorage
  name: 'default'
}

resource runsTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: dataTableService
  name: runsTableName
}

resource dataQueueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: dataStorage
  name: 'default'
}

// POST /api/runs with stage_from_prefix queues its staging here (an HTTP response must come within
// 230 s); the stage function (queue trigger, connection STORAGE_CONNECTION_STRING) does it.
resource stagingQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: dataQueueService
  name: stagingQueueName
}

// --- host storage account -------------------------------------------------------------------------------
// The Functions host's own state (keys, leases, timer status, blob receipts) and the deployment package.
// The app reaches it with its managed identity only (AzureWebJobsStorage__accountName), and with
// privateNetworking only through its private endpoints (blob, queue, table), as Microsoft's Flex Consumption
// VNet samples configure the host account: public network access disabled, no bypass.

resource hostStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: hostStorageAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    publicNetworkAccess: privateNetworking ? 'Disabled' : 'Enabled'
    networkAcls: {
      defaultAction: privateNetworking ? 'Deny' : 'Allow'
      bypass: privateNetworking ? 'None' : 'AzureServices'
    }
  }
}

resource hostBlobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: hostStorage
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: hostBlobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

// --- private network (privateNetworking) ----------------------------------------------------------------
// As Microsoft's Flex Consumption samples (azure-functions-flex-consumption-samples, vnet.bicep and
// storage-PrivateEndpoint.bicep): one subnet delegated to Microsoft.App/environments for the app's VNet
// integration, one for private endpoints; a privatelink DNS zone per storage service, linked to the network.

resource vnet 'Microsoft.Network/virtualNetworks@2023-11-01' = if (privateNetworking) {
  name: vnetName
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        vnetAddressPrefix
      ]
    }
    subnets: [
      {
        name: appSubnetName
        properties: {
          addressPrefix: appSubnetPrefix
          delegations: [
            {
              name: 'flex-consumption'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
        }
      }
      {
        name: privateEndpointSubnetName
        properties: {
          addressPrefix: privateEndpointSubnetPrefix
          privateEndpointNetworkPolicies: 'Disabled'
        }
      }
    ]
  }
}

module blobDnsZone 'modules/private-dns-zone.bicep' = if (privateNetworking) {
  name: 'dns-blob-${token}'
  params: {
    zoneName: 'privatelink.blob.${environment().suffixes.storage}'
    virtualNetworkId: vnet.id
    virtualNetworkName: vnetName
    tags: tags
  }
}

module queueDnsZone 'modules/private-dns-zone.bicep' = if (privateNetworking) {
  name: 'dns-queue-${token}'
  params: {
    zoneName: 'privatelink.queue.${environment().suffixes.storage}'
    virtualNetworkId: vnet.id
    virtualNetworkName: vnetName
    tags: tags
  }
}

module tableDnsZone 'modules/private-dns-zone.bicep' = if (privateNetworking) {
  name: 'dns-table-${token}'
  params: {
    zoneName: 'privatelink.table.${environment().suffixes.storage}'
    virtualNetworkId: vnet.id
    virtualNetworkName: vnetName
    tags: tags
  }
}

module fileDnsZone 'modules/private-dns-zone.bicep' = if (privateNetworking) {
  name: 'dns-file-${token}'
  params: {
    zoneName: 'privatelink.file.${environment().suffixes.storage}'
    virtualNetworkId: vnet.id
    virtualNetworkName: vnetName
    tags: tags
  }
}

// Every storage service the app uses, through a private endpoint in the network: the data account's blobs
// (training data, reports, Azure ML outputs), queue (staging) and table (registry); the host account's blobs,
// queues and tables (the Functions host and the deployment package); the share account's files.

module dataBlobEndpoint 'modules/storage-private-endpoint.bicep' = if (privateNetworking) {
  name: 'pe-data-blob-${token}'
  params: {
    location: location
    tags: tags
    storageAccountId: dataStorage.id
    storageAccountName: dataStorage.name
    groupId: 'blob'
    subnetId: privateEndpointSubnetId
    privateDnsZoneId: resourceId('Microsoft.Network/privateDnsZones', 'privatelink.blob.${environment().suffixes.storage}')
  }
  dependsOn: [
    vnet
    blobDnsZone
  ]
}

module dataQueueEndpoint 'modules/storage-private-endpoint.bicep' = if (privateNetworking) {
  name: 'pe-data-queue-${token}'
  params: {
    location: location
    tags: tags
    storageAccountId: dataStorage.id
    storageAccountName: dataStorage.name
    groupId: 'queue'
    subnetId: privateEndpointSubnetId
    privateDnsZoneId: resourceId('Microsoft.Network/privateDnsZones', 'privatelink.queue.${environment().suffixes.storage}')
  }
  dependsOn: [
    vnet
    queueDnsZone
  ]
}

module dataTableEndpoint 'modules/storage-private-endpoint.bicep' = if (privateNetworking) {
  name: 'pe-data-table-${token}'
  params: {
    location: location
    tags: tags
    storageAccountId: dataStorage.id
    storageAccountName: dataStorage.name
    groupId: 'table'
    subnetId: privateEndpointSubnetId
    privateDnsZoneId: resourceId('Microsoft.Network/privateDnsZones', 'privatelink.table.${environment().suffixes.storage}')
  }
  dependsOn: [
    vnet
    tableDnsZone
  ]
}

module hostBlobEndpoint 'modules/storage-private-endpoint.bicep' = if (privateNetworking) {
  name: 'pe-host-blob-${token}'
  params: {
    location: location
    tags: tags
    storageAccountId: hostStorage.id
    storageAccountName: hostStorage.name
    groupId: 'blob'
    subnetId: privateEndpointSubnetId
    privateDnsZoneId: resourceId('Microsoft.Network/privateDnsZones', 'privatelink.blob.${environment().suffixes.storage}')
  }
  dependsOn: [
    vnet
    blobDnsZone
  ]
}

module hostQueueEndpoint 'modules/storage-private-endpoint.bicep' = if (privateNetworking) {
  name: 'pe-host-queue-${token}'
  params: {
    location: location
    tags: tags
    storageAccountId: hostStorage.id
    storageAccountName: hostStorage.name
    groupId: 'queue'
    subnetId: privateEndpointSubnetId
    privateDnsZoneId: resourceId('Microsoft.Network/privateDnsZones', 'privatelink.queue.${environment().suffixes.storage}')
  }
  dependsOn: [
    vnet
    queueDnsZone
  ]
}

module hostTableEndpoint 'modules/storage-private-endpoint.bicep' = if (privateNetworking) {
  name: 'pe-host-table-${token}'
  params: {
    location: location
    tags: tags
    storageAccountId: hostStorage.id
    storageAccountName: hostStorage.name
    groupId: 'table'
    subnetId: privateEndpointSubnetId
    privateDnsZoneId: resourceId('Microsoft.Network/privateDnsZones', 'privatelink.table.${environment().suffixes.storage}')
  }
  dependsOn: [
    vnet
    tableDnsZone
  ]
}

module shareFileEndpoint 'modules/storage-private-endpoint.bicep' = if (privateNetworking) {
  name: 'pe-share-file-${token}'
  params: {
    location: location
    tags: tags
    storageAccountId: shareStorage.id
    storageAccountName: shareStorage.name
    groupId: 'file'
    subnetId: privateEndpointSubnetId
    privateDnsZoneId: resourceId('Microsoft.Network/privateDnsZones', 'privatelink.file.${environment().suffixes.storage}')
  }
  dependsOn: [
    vnet
    fileDnsZone
  ]
}

// --- monitoring -----------------------------------------------------------------------------------------

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: logRetentionDays
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    DisableLocalAuth: true
  }
}

// --- Key Vault (RBAC mode) ------------------------------------------------------------------------------
// Secrets are written through ARM (control plane), so the deployer needs no data-plane role; the app
// reads them through Key Vault references resolved by the platform with its system-assigned identity.

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: keyVaultName
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    // A deleted vault or secret is recoverable for the retention period, and purge protection (which
    // cannot be turned off again) means nobody, not even an owner, can purge it sooner.
    enableSoftDelete: true
    softDeleteRetentionInDays: keyVaultSoftDeleteRetentionDays
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource fileShareConnectionSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'file-share-connection-string'
  properties: {
    contentType: 'Azure Storage connection string of the file share account'
    value: 'DefaultEndpointsProtocol=https;AccountName=${shareStorage.name};AccountKey=${shareStorage.listKeys().keys[0].value};EndpointSuffix=${environment().suffixes.storage}'
  }
}

resource sshPublicKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'cluster-ssh-public-key'
  properties: {
    contentType: 'OpenSSH public key of the cluster admin account'
    value: clusterSshPublicKey
  }
}

resource clusterAdminPasswordSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(clusterAdminPassword)) {
  parent: vault
  name: 'cluster-admin-password'
  properties: {
    contentType: 'Cluster admin password'
    value: clusterAdminPassword
  }
}

resource callbackSigningSecretSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'callback-signing-secret'
  properties: {
    contentType: 'HMAC-SHA256 key of callback signatures'
    value: callbackSigningSecret
  }
}

resource containerRegistryPasswordSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(containerRegistryPassword)) {
  parent: vault
  name: 'container-registry-password'
  properties: {
    contentType: 'Private container registry password'
    value: containerRegistryPassword
  }
}

resource shareKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (mountShareWithKeyVaultSecret) {
  parent: vault
  name: 'file-share-account-key'
  properties: {
    contentType: 'File share account key for the Batch AI Azure File mount'
    value: shareStorage.listKeys().keys[0].value
  }
}

// --- the function app (Flex Consumption, Python 3.11) ---------------------------------------------------

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: functionAppName
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${hostStorage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
    // Flex Consumption VNet integration (privateNetworking): the app's outbound traffic goes through the
    // delegated subnet, so it reaches storage by the private endpoints.
    virtualNetworkSubnetId: privateNetworking ? appSubnetId : null
  }
  dependsOn: [
    deploymentContainer
    vnet
  ]
}

// A Key Vault reference for an app setting: the platform resolves it with the app's identity.
var kvRef = '@Microsoft.KeyVault(SecretUri='

// Exactly the settings shared/settings.py reads (AzureWebJobsStorage in its identity-based form), plus the
// host's own Application Insights settings. FUNCTIONS_WORKER_RUNTIME and FUNCTIONS_EXTENSION_VERSION are not
// app settings on Flex Consumption (functionAppConfig.runtime says them). Optional settings are present
// and empty when unused: the app treats an empty value as missing.
resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: functionApp
  name: 'appsettings'
  properties: {
    AzureWebJobsStorage__accountName: hostStorage.name
    APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD'
    // The data account by identity (the Functions host's identity-based connection form, which the blob
    // trigger's connection uses too); the share's account by key, from Key Vault.
    STORAGE_CONNECTION_STRING__accountName: dataStorage.name
    FILE_SHARE_CONNECTION_STRING: '${kvRef}${fileShareConnectionSecret.properties.secretUri})'
    TRAINING_CONTAINER: trainingContainerName
    FILE_SHARE_NAME: fileShareName
    RUNS_TABLE: runsTableName
    REPORTS_CONTAINER: reportsContainerName
    STAGING_QUEUE: stagingQueueName
    ARM_ENDPOINT: environment().resourceManager
    AZURE_SUBSCRIPTION_ID: subscription().subscriptionId
    AZURE_CREDENTIAL: 'default'
    LOCAL_ARM_TOKEN: '' // the local ARM emulator's token: never in Azure
    BATCHAI_RESOURCE_GROUP: batchAiResourceGroupName
    BATCHAI_LOCATION: batchAiLocation
    BATCHAI_WORKSPACE: batchAiWorkspaceName
    COMPUTE_BACKEND: computeBackend
    AZUREML_WORKSPACE: azureMlWorkspaceName
    DEFAULT_VM_SIZE: defaultVmSize
    ALLOWED_VM_SIZES: join(allowedVmSizes, ',')
    CLUSTER_ADMIN_USER: clusterAdminUser
    CLUSTER_SSH_PUBLIC_KEY: '${kvRef}${sshPublicKeySecret.properties.secretUri})'
    CLUSTER_ADMIN_PASSWORD: empty(clusterAdminPassword) ? '' : '${kvRef}${clusterAdminPasswordSecret.properties.secretUri})'
    FILE_SHARE_KEY_VAULT_SECRET_URL: mountShareWithKeyVaultSecret ? shareKeySecret.properties.secretUri : ''
    KEY_VAULT_RESOURCE_ID: mountShareWithKeyVaultSecret ? vault.id : ''
    CONTAINER_REGISTRY_SERVER: containerRegistryServer
    CONTAINER_REGISTRY_USERNAME: containerRegistryUsername
    CONTAINER_REGISTRY_PASSWORD: empty(containerRegistryPassword) ? '' : '${kvRef}${containerRegistryPasswordSecret.properties.secretUri})'
    MONITOR_SCHEDULE: monitorSchedule
    CLEANUP_SCHEDULE: cleanupSchedule
    CLEANUP_DRY_RUN: cleanupDryRun ? 'true' : 'false'
    JOB_RETENTION_HOURS: string(jobRetentionHours)
    STAGED_DATA_RETENTION_HOURS: string(stagedDataRetentionHours)
    CLUSTER_IDLE_MINUTES: string(clusterIdleMinutes)
    CLUSTER_IDLE_ACTION: clusterIdleAction
    STAGING_TIMEOUT_MINUTES: string(stagingTimeoutMinutes)
    COPY_TIMEOUT_SECONDS: string(copyTimeoutSeconds)
    CALLBACK_SIGNING_SECRET: '${kvRef}${callbackSigningSecretSecret.properties.secretUri})'
    CALLBACK_ALLOW_LOOPBACK_HTTP: 'false'
    MAX_STDOUT_TAIL_BYTES: string(maxStdoutTailBytes)
    MANIFEST_COMMANDS_ALLOWED: manifestCommandsAllowed ? 'true' : 'false'
    MAX_NODES_PER_RUN: string(maxNodesPerRun)
    CLUSTERS_BY_DERIVED_NAME_ONLY: clustersByDerivedNameOnly ? 'true' : 'false'
  }
  dependsOn: [
    // Key Vault references and identity-based host storage resolve at the first start: grant first.
    vaultSecretsUser
    hostBlobOwner
    hostQueueContributor
    hostTableContributor
    appInsightsPublisher
    // With privateNetworking the host reaches its storage only through these, from its first start.
    hostBlobEndpoint
    hostQueueEndpoint
    hostTableEndpoint
    dataBlobEndpoint
    dataQueueEndpoint
    dataTableEndpoint
    shareFileEndpoint
  ]
}

// --- role assignments of the app's identity -------------------------------------------------------------

// Host account: the Functions host keeps keys, leases and blob receipts in blobs and uses queues for the
// blob trigger's bookkeeping; the deployment package lives in a container there too.
resource hostBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hostStorage.id, functionApp.id, roles.storageBlobDataOwner)
  scope: hostStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
    description: 'Functions host storage and deployment package'
  }
}

resource hostQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hostStorage.id, functionApp.id, roles.storageQueueDataContributor)
  scope: hostStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
    description: 'Functions host queues (blob trigger bookkeeping)'
  }
}

// The host also writes diagnostic events to Table storage in its account (Microsoft's Flex Consumption
// samples grant this role on the host account for it).
resource hostTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hostStorage.id, functionApp.id, roles.storageTableDataContributor)
  scope: hostStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
    description: 'Functions host diagnostic events (Table storage)'
  }
}

// Data account: the app's only way in (shared keys are off there): blobs (training data, reports; and the
// user delegation key that signs copy sources) and the runs table. The share's account needs no role: the
// app reaches it with the key Batch AI mounts it with.
resource dataBlobContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(dataStorage.id, functionApp.id, roles.storageBlobDataContributor)
  scope: dataStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
    description: 'Training data and reports containers'
  }
}

resource dataQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(dataStorage.id, functionApp.id, roles.storageQueueDataContributor)
  scope: dataStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
    description: 'Staging queue: HTTP starts queue their staging, the stage function reads it'
  }
}

resource dataTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(dataStorage.id, functionApp.id, roles.storageTableDataContributor)
  scope: dataStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
    description: 'Run registry table'
  }
}

resource vaultSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, functionApp.id, roles.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
    description: 'Key Vault references in app settings'
  }
}

resource appInsightsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, functionApp.id, roles.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
    description: 'Telemetry ingestion with Entra ID (local auth is off)'
  }
}

// Batch AI workspace, clusters and jobs live in their own resource group: a custom role there listing only
// the Batch AI and resource group operations the app calls, and nothing elsewhere (Contributor, even on
// that group alone, would let the app create any resource there and read any key in it). With Azure ML
// (computeBackend azureml) the app needs only its two roles on the workspace, so this is not granted.
module batchAiAccess 'modules/batchai-access.bicep' = if (computeBackend == 'batchai') {
  name: 'batchai-access-${token}'
  scope: resourceGroup(batchAiResourceGroupName)
  params: {
    principalId: functionApp.identity.principalId
  }
}

// Azure ML (computeBackend azureml, the default): the workspace and its datastore in the training resource
// group, and the app's two AzureML roles on that workspace only.
module azureMlWorkspace 'modules/azureml-workspace.bicep' = if (computeBackend == 'azureml') {
  name: 'azureml-workspace-${token}'
  scope: resourceGroup(batchAiResourceGroupName)
  params: {
    location: batchAiLocation
    workspaceName: azureMlWorkspaceName
    storageAccountId: dataStorage.id
    storageAccountName: dataStorage.name
    storageResourceGroupName: resourceGroup().name
    keyVaultId: vault.id
    applicationInsightsId: appInsights.id
    shareStorageAccountName: shareStorage.name
    shareStorageAccountId: shareStorage.id
    privateNetworking: privateNetworking
    fileShareName: fileShareName
    principalId: functionApp.identity.principalId
  }
}

// --- Event Grid -----------------------------------------------------------------------------------------

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: systemTopicName
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: dataStorage.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

// The system topic dead-letters undeliverable events into one container, with its own identity.
resource topicDeadLetterWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(deadLetterContainer.id, systemTopic.id, roles.storageBlobDataContributor)
  scope: deadLetterContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: systemTopic.identity.principalId
    principalType: 'ServicePrincipal'
    description: 'Event Grid dead-letter destination'
  }
}

// In a module so that nothing in it (the listKeys of the host's system keys) is evaluated on the first
// pass, when the code is not deployed and the blobs_extension key does not exist yet.
module ingestEvents 'modules/ingest-events.bicep' = if (enableIngestEventSubscription) {
  name: 'ingest-events-${token}'
  params: {
    systemTopicName: systemTopic.name
    functionAppName: functionApp.name
    ingestFunctionName: ingestFunctionName
    trainingContainerName: trainingContainerName
    deadLetterStorageAccountId: dataStorage.id
    deadLetterContainerName: deadLetterContainerName
  }
  dependsOn: [
    topicDeadLetterWriter
    trainingContainer
  ]
}

// --- outputs (no secrets) -------------------------------------------------------------------------------

output functionAppName string = functionApp.name
output functionAppHostName string = functionApp.properties.defaultHostName
output functionAppPrincipalId string = functionApp.identity.principalId
output dataStorageAccountName string = dataStorage.name
output hostStorageAccountName string = hostStorage.name
output shareStorageAccountName string = shareStorage.name
output keyVaultName string = vault.name
output systemTopicName string = systemTopic.name
output batchAiResourceGroupName string = batchAiResourceGroupName
output appInsightsName string = appInsights.name
output virtualNetworkName string = privateNetworking ? vnetName : ''
