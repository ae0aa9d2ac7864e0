"""The monitor's end-to-end tests run on an isolated pipeline of the session stack (`pipeline`)."""

from tests.pipeline.conftest import pipeline  # noqa: F401
