"""Sweeps end to end run on an isolated pipeline of the session stack (`pipeline`; `azureml_pipeline`
for the Azure ML backend)."""

from tests.pipeline.conftest import azureml_pipeline, pipeline  # noqa: F401
