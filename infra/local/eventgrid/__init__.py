"""Event Grid stand-in: blob changes in Azurite become `Microsoft.Storage.BlobCreated` events, pushed
to webhook subscriptions with Event Grid's retry schedule and dead-lettering."""

from .models import EVENT_GRID_RETRY_SCHEDULE, Subscription
from .publisher import EventGridStandIn

__all__ = ["EVENT_GRID_RETRY_SCHEDULE", "EventGridStandIn", "Subscription"]
