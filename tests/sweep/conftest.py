"""Sweeps end to end run on an isolated pipeline of the session stack (`pipeline`)."""

from tests.pipeline.conftest import pipeline  # noqa: F401
