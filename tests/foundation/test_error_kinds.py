"""What callers decide on about a staging or compute error (shared.errors): the HTTP status the API
answers, whether a retry may succeed, whether a submission fails the run at once. The values are the
ones the API, ingest and submission decided by their own sets of codes before."""

from __future__ import annotations

import pytest

from shared.compute_port import ComputeError
from shared.staging import MissingFiles, StagingError, TooManyFiles


@pytest.mark.parametrize(
    ("code", "status", "retryable"),
    [
        ("DatasetNotStaged", 422, False),
        ("NothingToStage", 422, False),
        ("MissingFiles", 422, False),
        ("FileListTooLarge", 422, False),
        ("InvalidDatasetName", 400, False),
        ("InvalidBlobName", 400, False),
        ("CopyTimeout", 502, True),
        ("CopyFailed", 502, True),
        ("VerificationFailed", 502, False),
        ("CarryFailed", 502, False),
        ("BlobNotFound", 502, False),
        ("StagingFailed", 502, False),
    ],
)
def test_staging_errors(code: str, status: int, retryable: bool) -> None:
    exc = StagingError("x", code=code)
    assert (exc.http_status, exc.retryable, exc.blob_gone) == (status, retryable, code == "BlobNotFound")


def test_staging_refusals_carry_their_codes() -> None:
    assert MissingFiles("x").http_status == 422 and TooManyFiles("x").http_status == 422


@pytest.mark.parametrize(
    ("code", "status", "http_status", "retryable", "permanent"),
    [
        ("ServiceUnavailable", None, 503, True, False),
        ("BatchAIUnavailable", 400, 503, False, True),
        ("ClusterMismatch", None, 409, False, True),
        ("ClusterDeleting", None, 409, False, False),
        ("Conflict", 409, 409, False, False),
        ("ResourceNotFound", 404, 502, False, False),
        ("TooManyRequests", 429, 502, True, False),
        ("InternalServerError", 500, 502, True, False),
        ("AuthenticationFailed", 401, 502, False, False),
    ],
)
def test_compute_errors(
    code: str, status: int | None, http_status: int, retryable: bool, permanent: bool
) -> None:
    exc = ComputeError("op", code, "m", status)
    assert (exc.http_status, exc.retryable, exc.permanent) == (http_status, retryable, permanent)
