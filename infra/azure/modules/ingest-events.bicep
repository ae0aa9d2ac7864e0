// The Event Grid subscription that pushes BlobCreated events under training-data/ to the ingest function's
// Event Grid blob trigger (Flex Consumption runs blob triggers only with source EventGrid). Its endpoint is
// the blob extension's webhook, authorized by the host's blobs_extension system key, which exists only after
// the code is deployed and the host has loaded the trigger: main.bicep deploys this module on its second
// pass (enableIngestEventSubscription=true). Event Grid validates the endpoint when the subscription is
// created; the blob extension answers that handshake.

targetScope = 'resourceGroup'

@description('Event Grid system topic of the data storage account.')
param systemTopicName string

@description('Name of the function app.')
param functionAppName string

@description('Name of the ingest function (Host.Functions.<name> in the webhook URL).')
param ingestFunctionName string

@description('Blob container that ingest watches.')
param trainingContainerName string

@description('Resource id of the storage account that receives undeliverable events.')
param deadLetterStorageAccountId string

@description('Container for undeliverable events.')
param deadLetterContainerName string

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' existing = {
  name: systemTopicName
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

var blobsExtensionKey = listKeys('${functionApp.id}/host/default', '2024-04-01').systemKeys.blobs_extension
var webhookUrl = 'https://${functionApp.properties.defaultHostName}/runtime/webhooks/blobs?functionName=Host.Functions.${ingestFunctionName}&code=${blobsExtensionKey}'

resource ingestSubscription 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: systemTopic
  name: 'ingest-${trainingContainerName}'
  properties: {
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: webhookUrl
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    filter: {
      includedEventTypes: [
        'Microsoft.Storage.BlobCreated'
      ]
      // The trailing slash keeps containers that merely share the prefix (training-data-old) out.
      subjectBeginsWith: '/blobServices/default/containers/${trainingContainerName}/'
    }
    eventDeliverySchema: 'EventGridSchema'
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: deadLetterStorageAccountId
          blobContainerName: deadLetterContainerName
        }
      }
    }
  }
}

output subscriptionName string = ingestSubscription.name
