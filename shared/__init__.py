"""The domain: settings, run specs, Batch AI model construction, compute client, staging, registry."""
