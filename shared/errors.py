"""What callers decide on about an error, by its code, in one place.

A staging or compute error carries a code (the service's, or one of ours). What the pipeline does
with it follows from the code, not from the caller: whether trying again later can change the
outcome (``retryable``: the blob trigger lets such a staging failure propagate, so the host tries
again), whether no retry can (``permanent``: a submission that meets it fails the run at once
instead of waiting for the staging timeout), and the HTTP status the API answers it with.
``shared.staging.StagingError`` and ``shared.compute_port.ComputeError`` read their properties here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorKind:
    """The decisions an error code implies."""

    http_status: int  # what the HTTP API answers
    retryable: bool = False  # transient: the same call may succeed later
    permanent: bool = False  # no retry changes it: a submission meeting it fails the run now


STAGING_ERRORS: dict[str, ErrorKind] = {
    # The request names something that cannot run as it is (422, as a run that failed before its
    # job existed).
    "DatasetNotStaged": ErrorKind(422),
    "NothingToStage": ErrorKind(422),
    "MissingFiles": ErrorKind(422),
    "FileListTooLarge": ErrorKind(422),
    # A bad name.
    "InvalidDatasetName": ErrorKind(400),
    "InvalidBlobName": ErrorKind(400),
    # The copy itself failed or timed out: tried again (the trigger's retries, then its poison queue).
    "CopyTimeout": ErrorKind(502, retryable=True),
    "CopyFailed": ErrorKind(502, retryable=True),
}
STAGING_OTHER = ErrorKind(502)  # any other staging failure (verification, a vanished blob, ...)

COMPUTE_ERRORS: dict[str, ErrorKind] = {
    "ServiceUnavailable": ErrorKind(503, retryable=True),  # the service could not be reached
    "BatchAIUnavailable": ErrorKind(503, permanent=True),  # the service is retired
    "ClusterMismatch": ErrorKind(409, permanent=True),  # the named cluster has other settings
    "ClusterDeleting": ErrorKind(409),
    "Conflict": ErrorKind(409),
}
COMPUTE_OTHER = ErrorKind(502)  # any other answer of the service


def staging_error_kind(code: str) -> ErrorKind:
    return STAGING_ERRORS.get(code, STAGING_OTHER)


def compute_error_kind(code: str, status: int | None) -> ErrorKind:
    """Throttling (429) and server errors (5xx) are retryable whatever their code."""
    kind = COMPUTE_ERRORS.get(code, COMPUTE_OTHER)
    if not kind.retryable and (status == 429 or (status or 0) >= 500):
        return ErrorKind(kind.http_status, retryable=True, permanent=kind.permanent)
    return kind
