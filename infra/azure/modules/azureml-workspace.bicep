// The Azure Machine Learning workspace the app trains in (COMPUTE_BACKEND=azureml), in the training
// resource group, with what Azure ML requires: the data storage account (also where jobs' outputs and
// logs go, which the app reads back), the Key Vault and Application Insights of main.bicep. The file
// share ingest stages datasets into (in the file share account of its own) is registered as a
// datastore, identity-based (no key in it).
// The function identity gets two built-in roles on the workspace only: AzureML Data Scientist (jobs,
// environments, datastores) and AzureML Compute Operator (AmlCompute clusters).
// With privateNetworking the workspace gets a managed virtual network (isolation mode "allow internet
// outbound": jobs may still pull packages and images): every AmlCompute cluster the app creates lands in it,
// Azure ML itself makes private endpoints there to the workspace's own storage (the data account), and the
// outbound rule below makes one to the share account's file service, which has no public endpoint. The
// workspace's identity gets Azure AI Enterprise Network Connection Approver on both accounts so those
// private endpoint connections are approved (modules/azureml-network-approver.bicep).

targetScope = 'resourceGroup'

@description('Region of the workspace (the Batch AI location parameter).')
param location string

@description('Workspace name (AZUREML_WORKSPACE).')
param workspaceName string

@description('Resource id of the data storage account (the workspace storage).')
param storageAccountId string

@description('Name of the data storage account.')
param storageAccountName string

@description('Resource group of the data and share storage accounts (main.bicep\'s).')
param storageResourceGroupName string

@description('Resource id of the Key Vault.')
param keyVaultId string

@description('Resource id of the Application Insights component.')
param applicationInsightsId string

@description('Name of the storage account that holds the file share (its own account: main.bicep shareStorage).')
param shareStorageAccountName string

@description('Resource id of the share storage account.')
param shareStorageAccountId string

@description('true: a managed virtual network for the workspace\'s compute, with a private endpoint to the share account (main.bicep privateNetworking).')
param privateNetworking bool = false

@description('The file share ingest stages datasets into (FILE_SHARE_NAME).')
param fileShareName string

@description('Principal (object) id of the function app system-assigned identity.')
param principalId string

// Built-in roles.
var dataScientistRoleId = 'f6c7c914-8db3-469d-8ca1-694a8f32e121'
var computeOperatorRoleId = 'e503ece1-11d0-4e8e-8e2c-7a6c3bf38815'

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-10-01' = {
  name: workspaceName
  location: location
  identity: {
    type: 'SystemAssigned'
  }
  sku: {
    name: 'Basic'
    tier: 'Basic'
  }
  properties: {
    friendlyName: workspaceName
    storageAccount: storageAccountId
    keyVault: keyVaultId
    applicationInsights: applicationInsightsId
    systemDatastoresAuthMode: 'identity'
    managedNetwork: privateNetworking ? {
      isolationMode: 'AllowInternetOutbound'
      outboundRules: {
        'share-file': {
          type: 'PrivateEndpoint'
          category: 'UserDefined'
          destination: {
            serviceResourceId: shareStorageAccountId
            subresourceTarget: 'file'
            sparkEnabled: false
          }
        }
      }
    } : null
  }
}

// In the storage accounts' resource group: a role assignment is scoped to the resource it grants on.
module networkApprover 'azureml-network-approver.bicep' = if (privateNetworking) {
  name: 'azureml-network-approver-${uniqueString(workspace.id)}'
  scope: resourceGroup(storageResourceGroupName)
  params: {
    principalId: workspace.identity.principalId
    dataStorageAccountName: storageAccountName
    shareStorageAccountName: shareStorageAccountName
  }
}

// The same name the app registers when it finds none: share_<FILE_SHARE_NAME with '-' as '_'>.
resource shareDatastore 'Microsoft.MachineLearningServices/workspaces/datastores@2024-10-01' = {
  parent: workspace
  name: 'share_${replace(fileShareName, '-', '_')}'
  properties: {
    datastoreType: 'AzureFile'
    accountName: shareStorageAccountName
    fileShareName: fileShareName
    credentials: {
      credentialsType: 'None'
    }
    description: 'the share ingest stages datasets into'
  }
}

resource dataScientist 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, principalId, dataScientistRoleId)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', dataScientistRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Jobs, environments and datastores of the training automation'
  }
}

resource computeOperator 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, principalId, computeOperatorRoleId)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', computeOperatorRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'AmlCompute clusters of the training automation'
  }
}

output workspaceId string = workspace.id
