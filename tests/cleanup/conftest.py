"""Cleanup's end-to-end tests run against the function app on the local stack (the `api` fixture)."""

from tests.api.conftest import api  # noqa: F401
