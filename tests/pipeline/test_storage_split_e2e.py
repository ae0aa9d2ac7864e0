"""Storage split on the local stack: the share in an account of its own (the stack's named account on
the Files emulator), the blobs and the run registry in devstoreaccount1 (Azurite). Ingest copies across
accounts, the cluster mounts the share account's share, and the job trains on what was staged there."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from infra.local.stack import DEV_ACCOUNT, NAMED_ACCOUNT
from shared.ingest import ingest_blob

from .conftest import QUICKSTART_FILES, QUICKSTART_MANIFEST, Pipeline, isolated_pipeline
from .test_pipeline import monitor_until_done

pytestmark = pytest.mark.e2e


@pytest.fixture
def split(local_stack) -> Iterator[Pipeline]:
    yield from isolated_pipeline(
        local_stack, FILE_SHARE_CONNECTION_STRING=local_stack.named_connection_string
    )


def test_a_dataset_trains_from_the_share_account_while_blobs_and_registry_stay_in_the_data_account(
    split: Pipeline,
) -> None:
    p = split
    assert p.settings.storage.account_name == DEV_ACCOUNT
    assert p.settings.file_share_storage.account_name == NAMED_ACCOUNT
    dataset = f"split-{uuid.uuid4().hex[:8]}"
    for name in p.upload(dataset, QUICKSTART_FILES, QUICKSTART_MANIFEST):
        ingest_blob(name, p.services)
    share = p.settings.file_share_name
    staged = sorted(f.name for f in (p.stack.files_root / NAMED_ACCOUNT / share).rglob("*") if f.is_file())
    assert set(QUICKSTART_FILES) <= set(staged)
    assert not (p.stack.files_root / DEV_ACCOUNT / share).exists()  # nothing in the data account's files

    (record,) = list(p.registry.iter_runs(dataset=dataset))  # the registry: devstoreaccount1's table
    cluster = p.services.cloud.compute.get_cluster(record.cluster)
    (mount,) = cluster.node_setup.mount_volumes.azure_file_shares
    assert mount.account_name == NAMED_ACCOUNT
    assert mount.azure_file_url == f"http://127.0.0.1:{p.stack.ports.files}/{NAMED_ACCOUNT}/{share}"
    done = monitor_until_done(p, [record.run_id])[record.run_id]
    assert done.state == "succeeded", done.errors
    assert "test accuracy" in (done.stdout_tail or "")
