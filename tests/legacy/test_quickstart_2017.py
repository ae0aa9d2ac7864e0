"""The seed quickstart, unchanged but for credentials and endpoints, with the SDK it was written for
(azure-mgmt-batchai 0.2.0: api-version 2017-09-01-preview, clusters and jobs directly in a resource
group; azure-storage-file's FileService), against the local stack."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import requests

from infra.local.stack import DEV_SUBSCRIPTION
from tests.arm.quickstart import TEST_DATA, TRAIN_DATA, TRAIN_SCRIPT
from tests.legacy.conftest import run_client

pytestmark = pytest.mark.e2e
CLIENTS = Path(__file__).with_name("clients")


def test_quickstart_runs_unchanged(named_stack, quickstart_python, tmp_path: Path) -> None:
    # The sample package the quickstart downloads (BatchAIQuickStart.zip), here a small stand-in.
    (tmp_path / "ConvNet_MNIST.py").write_bytes(TRAIN_SCRIPT)
    (tmp_path / "Train-28x28_cntk_text.txt").write_bytes(TRAIN_DATA)
    (tmp_path / "Test-28x28_cntk_text.txt").write_bytes(TEST_DATA)
    script = tmp_path / "quickstart.py"
    shutil.copy(CLIENTS / "quickstart_2017.py", script)
    output = run_client(
        quickstart_python,
        script,
        tmp_path,
        {
            "QUICKSTART_SUBSCRIPTION_ID": DEV_SUBSCRIPTION,
            "QUICKSTART_STORAGE_ACCOUNT": named_stack.account,
            "QUICKSTART_STORAGE_KEY": named_stack.key,
            "QUICKSTART_ARM_ENDPOINT": named_stack.stack.arm_endpoint,
            "QUICKSTART_ARM_TOKEN": named_stack.arm_token,
            "QUICKSTART_FILE_ENDPOINT": f"http://{named_stack.file_host}",
        },
    )
    assert "Cluster state: AllocationState." in output
    assert "Job state: succeeded" in output, output
    urls = dict(re.findall(r"file: (\S+), download url: (\S+)", output))
    assert {"stdout.txt", "stderr.txt", "ConvNet_MNIST_0.dnn"} <= set(urls), output
    model = requests.get(urls["ConvNet_MNIST_0.dnn"], timeout=10)
    assert model.content == b"model trained on 5 samples\n"
    assert "training on 5 samples" in requests.get(urls["stdout.txt"], timeout=10).text
    assert "QUICKSTART DONE" in output
