// One private endpoint of one storage service (blob, queue, table or file) of one storage account, in the
// private endpoint subnet, with its DNS zone group: the zone group writes the endpoint's A record into the
// service's privatelink zone, so `<account>.<service>.core.windows.net` resolves to the private address
// inside the virtual network (Microsoft's Flex Consumption samples, storage-PrivateEndpoint.bicep).

targetScope = 'resourceGroup'

@description('Region of the endpoint (the virtual network\'s).')
param location string

@description('Tags on the endpoint.')
param tags object = {}

@description('Resource id of the storage account.')
param storageAccountId string

@description('Name of the storage account (names the endpoint).')
param storageAccountName string

@description('The storage service this endpoint reaches.')
@allowed(['blob', 'queue', 'table', 'file'])
param groupId string

@description('Resource id of the subnet the endpoint takes its address from.')
param subnetId string

@description('Resource id of the private DNS zone privatelink.<groupId>.<storage suffix>, linked to the virtual network.')
param privateDnsZoneId string

resource endpoint 'Microsoft.Network/privateEndpoints@2023-11-01' = {
  name: 'pe-${storageAccountName}-${groupId}'
  location: location
  tags: tags
  properties: {
    subnet: {
      id: subnetId
    }
    privateLinkServiceConnections: [
      {
        name: 'pe-${storageAccountName}-${groupId}'
        properties: {
          privateLinkServiceId: storageAccountId
          groupIds: [
            groupId
          ]
        }
      }
    ]
  }
}

resource dnsZoneGroup 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2023-11-01' = {
  parent: endpoint
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: 'privatelink-${groupId}'
        properties: {
          privateDnsZoneId: privateDnsZoneId
        }
      }
    ]
  }
}

output endpointName string = endpoint.name
