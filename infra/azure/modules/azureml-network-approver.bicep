// The Azure ML workspace's identity may approve private endpoint connections to the storage accounts its
// managed network reaches (the data account, its own storage; the share account, an outbound rule): Azure
// ML creates those private endpoints with the workspace identity and no longer approves them without this
// permission. Azure AI Enterprise Network Connection Approver holds the privateEndpointConnectionsApproval
// actions of the services Azure ML connects to, and nothing that reads or writes data.

targetScope = 'resourceGroup'

@description('Principal (object) id of the workspace system-assigned identity.')
param principalId string

@description('The data storage account (the workspace storage), in this resource group.')
param dataStorageAccountName string

@description('The share storage account, in this resource group.')
param shareStorageAccountName string

var networkConnectionApproverRoleId = 'b556d68e-0be0-4f35-a333-ad7ee1ce17ea'

resource dataStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: dataStorageAccountName
}

resource shareStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: shareStorageAccountName
}

resource dataApprover 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(dataStorage.id, principalId, networkConnectionApproverRoleId)
  scope: dataStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', networkConnectionApproverRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Approve the private endpoints of the workspace managed network to its storage'
  }
}

resource shareApprover 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(shareStorage.id, principalId, networkConnectionApproverRoleId)
  scope: shareStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', networkConnectionApproverRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Approve the private endpoint of the workspace managed network to the file share'
  }
}
