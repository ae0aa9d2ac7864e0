"""Pipeline fixtures: app settings for the session stack with names unique to each test (container,
share, table, resource group), the pipeline's services built from them, and quickstart data."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.data.tables import TableClient
from azure.storage.blob import BlobServiceClient

from shared import sdk_clients
from shared.compute_port import build_backend
from shared.registry import RunRegistry
from shared.services import Services
from shared.settings import Settings, local_stack_values

HERE = Path(__file__).resolve().parent
TRAIN_SCRIPT = (HERE / "train_stand_in.py").read_bytes()
FAST_ARM = {"provisioning_delay": 1.0, "operation_delay": 0.1, "retry_after": 0}


def cntk_text(samples: int, seed: int) -> bytes:
    """MNIST-shaped CNTK text data: one-hot labels, 784 features (small, synthetic, learnable)."""
    rng = random.Random(seed)
    lines = []
    for i in range(samples):
        label = i % 10
        one_hot = " ".join("1" if d == label else "0" for d in range(10))
        features = " ".join(str(255 if (p % 10 == label and rng.random() < 0.8) else 0) for p in range(784))
        lines.append(f"|labels {one_hot} |features {features}")
    return ("\n".join(lines) + "\n").encode()


QUICKSTART_FILES = {
    "Train-28x28_cntk_text.txt": cntk_text(40, 1),
    "Test-28x28_cntk_text.txt": cntk_text(20, 2),
    "ConvNet_MNIST.py": TRAIN_SCRIPT,
}
# The quickstart's job (CNTK toolkit, its image, script and arguments are the spec defaults); the
# emulator runs the script with its own interpreter.
QUICKSTART_MANIFEST = {"files": sorted(QUICKSTART_FILES)}


def settings_values(local_stack: Any, **overrides: str) -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    values = local_stack_values(
        AzureWebJobsStorage=local_stack.connection_string,
        STORAGE_CONNECTION_STRING=local_stack.connection_string,
        ARM_ENDPOINT=local_stack.arm_endpoint,
        LOCAL_ARM_TOKEN=local_stack.arm_token,
        # A container of its own: a Functions host another test area runs on this session's Azurite
        # watches training-data, and must not ingest this pipeline's blobs.
        TRAINING_CONTAINER=f"training-{tag}",
        FILE_SHARE_NAME=f"share-{tag}",
        RUNS_TABLE=f"runs{tag}",
        BATCHAI_RESOURCE_GROUP=f"rg-{tag}",
        REPORTS_CONTAINER=f"reports-{tag}",
        STAGING_QUEUE=f"staging-{tag}",
        STAGING_TIMEOUT_MINUTES="60",
        COPY_TIMEOUT_SECONDS="60",
    )
    values.update(overrides)
    return values


class Pipeline:
    """One isolated pipeline on the session stack: settings, services, and helpers for tests."""

    def __init__(self, local_stack: Any, **overrides: str) -> None:
        self.stack = local_stack
        self.values = settings_values(local_stack, **overrides)
        self.settings = Settings.from_env(self.values)
        blobs = BlobServiceClient.from_connection_string(local_stack.connection_string)
        self.container = blobs.get_container_client(self.settings.training_container)
        self.registry = RunRegistry(
            TableClient.from_connection_string(local_stack.connection_string, self.settings.runs_table)
        )
        self.services = Services(
            settings=self.settings,
            registry=self.registry,
            container=self.container,
            share=sdk_clients.share_client(self.settings),
            cloud=build_backend(self.settings),  # COMPUTE_BACKEND of the overrides
        )

    @property
    def share_root(self) -> Path:
        return Path(self.stack.files_root) / "devstoreaccount1" / self.settings.file_share_name

    def upload(
        self, dataset: str, files: dict[str, bytes], manifest: dict[str, Any] | None = None
    ) -> list[str]:
        names = []
        for name, data in files.items():
            self.container.upload_blob(f"{dataset}/{name}", data, overwrite=True)
            names.append(f"{dataset}/{name}")
        if manifest is not None:
            self.container.upload_blob(f"{dataset}/run.json", json.dumps(manifest), overwrite=True)
            names.append(f"{dataset}/run.json")
        return names

    def arm(self, path: str, method: str = "GET", body: Any = None) -> Any:
        response = requests.request(method, f"{self.stack.arm_endpoint}{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()


@pytest.fixture
def pipeline(local_stack) -> Iterator[Pipeline]:
    yield from isolated_pipeline(local_stack)


@pytest.fixture
def azureml_pipeline(local_stack) -> Iterator[Pipeline]:
    """The same isolated pipeline with COMPUTE_BACKEND=azureml (the emulator's Azure ML provider)."""
    yield from isolated_pipeline(local_stack, COMPUTE_BACKEND="azureml")


def isolated_pipeline(local_stack: Any, **overrides: str) -> Iterator[Pipeline]:
    """A Pipeline with these setting overrides on the session stack, the ARM emulator fast while it
    lives (its settings and faults as they were afterwards): for fixtures, ``yield from`` it."""
    local_stack.ensure("azurite", "files", "arm")
    p = Pipeline(local_stack, **overrides)
    saved = p.arm("/_emulator/settings")
    p.arm("/_emulator/settings", "POST", FAST_ARM)
    with __import__("contextlib").suppress(Exception):
        p.container.create_container()
    try:
        yield p
    finally:
        p.arm("/_emulator/faults", "DELETE")
        p.arm("/_emulator/settings", "POST", {k: saved[k] for k in FAST_ARM if k in saved})
