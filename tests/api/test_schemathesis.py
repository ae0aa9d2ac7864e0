"""Schemathesis against the running app: generated requests for every read and delete operation of the
OpenAPI document, each response checked against the document (status code, content type, body schema,
headers) and for server errors. Starting runs is left to the targeted tests (it creates clusters and
jobs). Driven through Hypothesis directly: schemathesis' lazy pytest fixture loader does not work with
this pytest version."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.api.stackapp import Api

pytestmark = pytest.mark.e2e


def test_api_conforms_to_its_openapi_document(api: Api) -> None:
    schema = schemathesis.openapi.from_url(f"{api.base}/openapi.json")
    schema.config.update(base_url=api.base)
    operations = [r.ok() for r in schema.include(method=["GET", "DELETE"]).get_all_operations()]
    assert {op.label for op in operations} >= {"GET /runs", "GET /runs/{id}", "DELETE /clusters/{name}"}
    failures: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=8, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            # A continuation token is opaque: one that matches its pattern yet was never issued is
            # rightly a 400, which this check would count as a valid request refused.
            excluded = [positive_data_acceptance] if "continuation" in (case.query or {}) else []
            case.call_and_validate(headers={"x-functions-key": api.key}, excluded_checks=excluded, timeout=60)

        try:
            check()
        except Exception as exc:
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
