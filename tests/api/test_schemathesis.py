"""Schemathesis against the running app: generated requests for every read and delete operation of the
OpenAPI document, each response checked against the document (status code, content type, body schema,
headers) and for server errors. Starting runs is left to the targeted tests (it creates clusters and
jobs). Driven through Hypothesis directly: schemathesis' lazy pytest fixture loader does not work with
this pytest version."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
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


def test_invalid_start_requests_are_refused(api: Api) -> None:
    """Negative mode on POST /runs: bodies, headers and parameters that break the document must get a
    4xx (never a started run, never a 5xx)."""
    schema = schemathesis.openapi.from_url(f"{api.base}/openapi.json")
    schema.config.update(base_url=api.base)
    (operation,) = [r.ok() for r in schema.include(method="POST", path="/runs").get_all_operations()]

    @given(case=operation.as_strategy(GenerationMode.NEGATIVE))
    @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case) -> None:
        response = case.call(headers={"x-functions-key": api.key}, timeout=60)
        assert 400 <= response.status_code < 500, (case.body, response.status_code, response.text[:500])
        assert response.headers["content-type"][0].startswith("application/json")
        assert set(response.json()) == {"error"}

    check()
