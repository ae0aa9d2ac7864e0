"""The Batch AI quickstart end to end through the real SDKs against the ARM emulator, with the sample
data staged on a share of the Files emulator."""

from __future__ import annotations

import pytest
import requests

from tests.arm.conftest import Clients, unique
from tests.arm.quickstart import SAMPLE_FILES, Names, walk

pytestmark = pytest.mark.e2e


def test_quickstart_walk(clients: Clients, arm_stack, make_share) -> None:
    share = make_share(SAMPLE_FILES)
    share_url = f"{arm_stack.file_endpoint}/{share.share_name}"
    before = requests.get(f"{arm_stack.arm_endpoint}/_emulator/requests", timeout=10).json()["last_seq"]

    seen = walk(clients, share, share_url, Names(group=unique("quickstart")))

    assert seen["first_allocation_state"] == "resizing"
    assert clients.spec.checked >= 15
    assert clients.spec.errors == []
    log = requests.get(f"{arm_stack.arm_endpoint}/_emulator/requests?since={before}", timeout=10).json()
    operations = {r["operation"] for r in log["requests"]}
    assert {"Jobs_Create", "Jobs_Terminate", "Jobs_ListOutputFiles", "OperationStatus_Get"} <= operations
    assert log["by_operation"]["ResourceGroups_Delete"] >= 1
    assert (
        log["window"]["total"] == len(log["requests"])
        and log["window"]["by_operation"]["Jobs_Terminate"] == 1
    )
