"""Helpers of the API's end-to-end tests: an HTTP client with the function key, dataset staging, and
the app settings for a test stack."""

from __future__ import annotations

import contextlib
from typing import Any

import requests

from shared.settings import Settings, local_stack_values

# A tiny stand-in for the quickstart's training script: reads its input directory, prints three
# "epochs", optionally runs long (TRAIN_SECONDS), writes a model file into its output directory.
TRAIN_PY = b"""import os, sys, time
data, out = sys.argv[1], sys.argv[2]
print("inputs", sorted(os.listdir(data)), flush=True)
for epoch in range(3):
    print(f"epoch {epoch}", flush=True)
time.sleep(float(os.environ.get("TRAIN_SECONDS", "0")))
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "model.txt"), "w") as f:
    f.write("weights")
print("done", flush=True)
print("no warnings", file=sys.stderr)
"""


# The run spec of TRAIN_PY: the quickstart's arguments (input and output directories).
TRAIN_SPEC: dict[str, Any] = {
    "script": "train.py",
    "arguments": "$AZ_BATCHAI_INPUT_SAMPLE $AZ_BATCHAI_OUTPUT_MODEL",
}


def app_settings(stack: Any) -> dict[str, str]:
    """The function app's settings for a local stack on its own ports."""
    return local_stack_values(**stack.app_settings())


def stage_dataset(
    stack: Any, dataset: str, files: dict[str, bytes] | None = None, *, share_name: str | None = None
) -> None:
    """Put a dataset straight onto the file share (as an earlier staging would have)."""
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.fileshare import ShareClient

    settings = Settings.from_env(app_settings(stack))
    share = ShareClient.from_connection_string(
        stack.connection_string, share_name or settings.file_share_name
    )
    with contextlib.suppress(ResourceExistsError):
        share.create_share()
    share.get_directory_client(dataset).create_directory()
    for name, data in (files or {"train.py": TRAIN_PY, "data.txt": b"1 2 3\n"}).items():
        share.get_file_client(f"{dataset}/{name}").upload_file(data)


class Api:
    """requests against `<functions url>/api` with the function key."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.base = f"{stack.functions_url}/api"
        self.key = stack.functions_key
        self.settings = Settings.from_env(app_settings(stack))
        self.rg_ws = (self.settings.resource_group, self.settings.workspace)

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"x-functions-key": self.key, **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.base}{path}", headers=headers, timeout=60, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def stack_batchai(self) -> Any:
        """A Batch AI SDK client on the stack's ARM emulator (to check what the API did)."""
        from shared.sdk_clients import batchai_client

        return batchai_client(self.settings)
