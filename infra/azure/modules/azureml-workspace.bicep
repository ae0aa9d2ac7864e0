// The Azure Machine Learning workspace the app trains in (COMPUTE_BACKEND=azureml), in the training
// resource group, with what Azure ML requires: the data storage account (also where jobs' outputs and
// logs go, which the app reads back), the Key Vault and Application Insights of main.bicep. The file
// share ingest stages datasets into (in the file share account of its own) is registered as a
// datastore, identity-based (no key in it).
// The function identity gets two built-in roles on the workspace only: AzureML Data Scientist (jobs,
// environments, datastores) and AzureML Compute Operator (AmlCompute clusters).

targetScope = 'resourceGroup'

@description('Region of the workspace (the Batch AI location parameter).')
param location string

@description('Workspace name (AZUREML_WORKSPACE).')
param workspaceName string

@description('Resource id of the data storage account (the workspace storage).')
param storageAccountId string

@description('Resource id of the Key Vault.')
param keyVaultId string

@description('Resource id of the Application Insights component.')
param applicationInsightsId string

@description('Name of the storage account that holds the file share (its own account: main.bicep shareStorage).')
param shareStorageAccountName string

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
