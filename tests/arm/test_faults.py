"""Injected faults: with 20% of ARM requests throttled, failed or dropped, the SDK walk still completes
(azure-core's retry policy absorbs them); the faults are replayable from their seed."""

from __future__ import annotations

import pytest
import requests

from tests.arm.conftest import PRIVATE_ARM_TOKEN, make_clients, unique
from tests.arm.quickstart import SAMPLE_FILES, Names, walk

pytestmark = pytest.mark.e2e

FAULTS = {
    "rate_429": 0.08,
    "rate_500": 0.06,
    "rate_drop": 0.06,
    "latency_ms": 5,
    "retry_after": 0,
    "seed": 20180501,
}


@pytest.fixture
def faults(arm_stack):
    url = f"{arm_stack.arm_endpoint}/_emulator/faults"
    requests.post(url, json=FAULTS, timeout=10).raise_for_status()
    yield url
    requests.delete(url, timeout=10).raise_for_status()


def test_walk_survives_twenty_percent_faults(arm_stack, make_share, faults) -> None:
    share = make_share(SAMPLE_FILES)
    requests.delete(f"{arm_stack.arm_endpoint}/_emulator/requests", timeout=10)
    # Generous retry counts: with 20% faults a request sometimes fails several times in a row.
    clients = make_clients(
        arm_stack.arm_endpoint,
        arm_stack.arm_token,
        retry_total=30,
        retry_connect=30,
        retry_read=30,
        retry_status=30,
        retry_backoff_factor=0.01,
        retry_backoff_max=0.2,
    )

    walk(clients, share, f"{arm_stack.file_endpoint}/{share.share_name}", Names(group=unique("faulty")))

    log = requests.get(f"{arm_stack.arm_endpoint}/_emulator/requests", timeout=10).json()
    assert log["faults"].get("429", 0) > 0 and log["faults"].get("drop", 0) > 0
    assert log["faults"].get("500", 0) + log["faults"].get("503", 0) > 0
    injected = sum(log["faults"].values())
    assert 0.1 < injected / log["total"] < 0.3, log["faults"]
    assert clients.spec.errors == []


def test_fault_settings_are_validated_and_replayable(private_arm) -> None:
    """On an emulator of its own: every ARM request draws from the one seeded stream, so another
    client of a shared emulator (a Functions host's monitor passes) would shift the sequence."""
    faults = f"{private_arm.endpoint}/_emulator/faults"
    bad = requests.post(faults, json={"rate_429": 2}, timeout=10)
    assert bad.status_code == 400 and "rate_429" in bad.json()["error"]["message"]
    unknown = requests.post(faults, json={"rate_404": 0.1}, timeout=10)
    assert unknown.status_code == 400 and "rate_404" in unknown.json()["error"]["message"]

    def statuses() -> list[int]:
        settings = {"rate_429": 0.3, "rate_500": 0.3, "seed": 7, "retry_after": 3}
        requests.post(faults, json=settings, timeout=10).raise_for_status()
        url = f"{private_arm.endpoint}/providers/Microsoft.BatchAI/operations?api-version=2018-05-01"
        headers = {"Authorization": f"Bearer {PRIVATE_ARM_TOKEN}"}
        answers = [requests.get(url, headers=headers, timeout=10) for _ in range(12)]
        throttled = [a for a in answers if a.status_code == 429]
        assert throttled and all(a.headers["Retry-After"] == "3" for a in throttled)
        return [a.status_code for a in answers]

    first = statuses()
    assert first == statuses()
    assert set(first) == {200, 429, 500}
