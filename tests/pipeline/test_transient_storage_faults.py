"""Never a 5xx for starts: a storage connection reset inside a start (Azurite under load
resets kept-alive connections; Azure's front ends do too) is retried, not answered 503. The
registry's table client talks to Azurite through a transport that sends each request for real and
then loses the answer of the first few POSTs (what a reset after the server acted does; azure-core
does not retry it for POST or PATCH): the retried insert finds its own entity and the start goes on."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from azure.core.exceptions import ServiceResponseError
from azure.core.pipeline.transport import RequestsTransport
from azure.data.tables import TableClient

from shared.registry import RunRegistry
from shared.run_starts import start_run

from .conftest import QUICKSTART_FILES, Pipeline

pytestmark = pytest.mark.e2e


class AnswerLosingTransport(RequestsTransport):
    """Sends every request; the answers of the first ``losses`` POSTs are lost as a reset would."""

    def __init__(self, losses: int) -> None:
        super().__init__()
        self.losses_left = losses
        self.lost = 0

    def send(self, request: Any, **kwargs: Any) -> Any:
        response = super().send(request, **kwargs)
        if request.method == "POST" and self.losses_left > 0:
            self.losses_left -= 1
            self.lost += 1
            raise ServiceResponseError(
                "Connection aborted: ConnectionResetError(104, 'Connection reset by peer')"
            )
        return response


SPEC = {"files": sorted(QUICKSTART_FILES), "arguments": "$AZ_BATCHAI_INPUT_SAMPLE $AZ_BATCHAI_OUTPUT_MODEL"}


@pytest.mark.parametrize("resets", [1, 3])
def test_a_start_whose_registry_inserts_lose_their_answers_still_makes_exactly_one_run(
    pipeline: Pipeline, resets: int
) -> None:
    p = pipeline
    folder = f"reset-{uuid.uuid4().hex[:6]}"
    for name, data in QUICKSTART_FILES.items():
        p.container.upload_blob(f"{folder}/{name}", data)
    transport = AnswerLosingTransport(resets)
    svc = p.services
    svc.registry = RunRegistry(
        TableClient.from_connection_string(
            p.stack.connection_string, p.settings.runs_table, transport=transport
        )
    )
    key = f"k-{folder}"
    rec = start_run(folder, SPEC, stage_from_prefix=folder, idempotency_key=key, svc=svc)
    assert transport.lost == resets  # the faults did happen, each after its request took effect
    assert rec.state in ("provisioning", "queued"), (rec.state, rec.errors)
    assert [r.run_id for r in p.registry.iter_runs(dataset=folder)] == [rec.run_id]
    assert p.registry.find_by_idempotency_key(key).run_id == rec.run_id
    assert sorted(f.name for f in p.registry.get(rec.run_id).staged_files) == sorted(QUICKSTART_FILES)
