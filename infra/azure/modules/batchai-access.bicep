// Contributor for the function app's identity on the resource group that holds the Batch AI workspace,
// clusters and jobs, and on nothing wider. Deployed by main.bicep with scope resourceGroup(<that group>).

targetScope = 'resourceGroup'

@description('Principal (object) id of the function app system-assigned identity.')
param principalId string

// Built-in role: Contributor.
var contributorRoleId = 'b24988ac-6180-42a0-ab88-20f7382dd24c'

resource batchAiContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, principalId, contributorRoleId)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', contributorRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Batch AI workspaces, experiments, clusters and jobs of the training automation'
  }
}
