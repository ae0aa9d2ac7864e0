"""The `api` fixture: the local stack with the Functions host serving function_app.py."""

from __future__ import annotations

import time

import pytest
import requests

from tests.api.stackapp import Api


@pytest.fixture(scope="session")
def api(local_stack) -> Api:  # type: ignore[no-untyped-def]
    stack = local_stack.ensure("azurite", "files", "arm", "functions", "eventgrid")
    api = Api(stack)
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"{api.base}/openapi.json", timeout=5).status_code == 200:
                return api
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Functions host at {api.base} did not answer")
        time.sleep(0.2)
