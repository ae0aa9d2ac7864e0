"""The `function_app` fixture: the session's local stack with the Functions host serving function_app.py."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from cli.client import Settings


@pytest.fixture(scope="session")
def function_app(local_stack) -> Iterator[Settings]:  # type: ignore[no-untyped-def]
    """CLI settings for the stack's function app (started here unless another area started it)."""
    if "functions" not in local_stack.processes and "STORAGE_CONNECTION_STRING" not in local_stack.env():
        # The host reads the app settings from the example file, whose endpoints use the fixed ports:
        # point storage at this stack's free ports (services started from now on see it).
        local_stack.extra_env = {
            **local_stack.extra_env,
            "STORAGE_CONNECTION_STRING": local_stack.connection_string,
            "AzureWebJobsStorage": local_stack.connection_string,
            "ARM_EMULATOR_PROVISIONING_DELAY": "1",
        }
    stack = local_stack.ensure("azurite", "files", "arm", "functions", "eventgrid")
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"{stack.functions_url}/api/openapi.json", timeout=5).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Functions host at {stack.functions_url} did not answer")
        time.sleep(0.2)
    yield Settings(stack.functions_url, stack.functions_key, stack.connection_string, "training-data", "test")
