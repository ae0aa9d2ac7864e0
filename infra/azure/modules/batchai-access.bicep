// The function app identity's rights on the resource group that holds the Batch AI workspace, clusters and
// jobs: a custom role listing exactly the operations the app calls there (shared/compute.py), assignable
// to that group only, and nothing wider. Deployed by main.bicep with scope resourceGroup(<that group>).
// tests/deploy/test_bicep_template.py derives the list from the SDK calls in shared/ and checks it.

targetScope = 'resourceGroup'

@description('Principal (object) id of the function app system-assigned identity.')
param principalId string

// Read the group (the app GETs it before using it; the group exists before deployment, so no write), and
// the Batch AI workspace, clusters, experiments and jobs the app creates, reads, changes and deletes,
// plus the two job actions it posts (terminate, list output files).
var batchAiOperatorActions = [
  'Microsoft.Resources/subscriptions/resourceGroups/read'
  'Microsoft.BatchAI/workspaces/read'
  'Microsoft.BatchAI/workspaces/write'
  'Microsoft.BatchAI/workspaces/clusters/read'
  'Microsoft.BatchAI/workspaces/clusters/write'
  'Microsoft.BatchAI/workspaces/clusters/delete'
  'Microsoft.BatchAI/workspaces/experiments/read'
  'Microsoft.BatchAI/workspaces/experiments/write'
  'Microsoft.BatchAI/workspaces/experiments/delete'
  'Microsoft.BatchAI/workspaces/experiments/jobs/read'
  'Microsoft.BatchAI/workspaces/experiments/jobs/write'
  'Microsoft.BatchAI/workspaces/experiments/jobs/delete'
  'Microsoft.BatchAI/workspaces/experiments/jobs/terminate/action'
  'Microsoft.BatchAI/workspaces/experiments/jobs/listoutputfiles/action'
]

resource batchAiOperatorRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, 'batchai-training-automation-operator')
  properties: {
    roleName: 'Batch AI training automation (${subscription().subscriptionId}/${resourceGroup().name})'
    description: 'What the training automation function app does in its Batch AI resource group: read the group; create, read, update and delete the workspace, clusters, experiments and jobs; terminate jobs and list their output files.'
    type: 'CustomRole'
    permissions: [
      {
        actions: batchAiOperatorActions
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
    assignableScopes: [
      resourceGroup().id
    ]
  }
}

resource batchAiOperator 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, principalId, batchAiOperatorRole.id)
  properties: {
    roleDefinitionId: batchAiOperatorRole.id
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Batch AI workspace, experiments, clusters and jobs of the training automation'
  }
}
