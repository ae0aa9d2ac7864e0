// A private DNS zone (privatelink.<service>.<storage suffix>) linked to the virtual network, so that names
// of storage accounts with a private endpoint resolve to their private addresses inside it. Auto-registration
// stays off: only the private endpoints' zone groups write records here.

targetScope = 'resourceGroup'

@description('Zone name, e.g. privatelink.blob.core.windows.net.')
param zoneName string

@description('Resource id of the virtual network the zone is linked to.')
param virtualNetworkId string

@description('Name of the virtual network (names the link).')
param virtualNetworkName string

@description('Tags on the zone and its link.')
param tags object = {}

resource zone 'Microsoft.Network/privateDnsZones@2020-06-01' = {
  name: zoneName
  location: 'global'
  tags: tags
  properties: {}
}

resource link 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = {
  parent: zone
  name: 'link-${virtualNetworkName}'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: virtualNetworkId
    }
  }
}

output zoneId string = zone.id
