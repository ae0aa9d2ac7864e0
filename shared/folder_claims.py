"""Folder claims: what happens when an HTTP start stages a top-level folder of the training container
whose blobs also fire the blob trigger (as a dataset of that name). The request's run becomes the
folder's current staging run, so the trigger's invocations join it (``staged_by_request``) instead
of making another run; a staging run the trigger made for these blobs with no manifest yet is
adopted by the request (``claim_folder``); the trigger's other staging runs of the folder are
cancelled as superseded. An invocation that finds its run adopted meanwhile raises ``Adopted`` and
joins it (``shared.ingest``); failing a staging run respects the same rule
(``shared.submission.fail_run`` with ``folder``)."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from shared.registry import (
    CANCELLED,
    STAGING,
    ConcurrencyError,
    RunError,
    RunRecord,
    TransitionRejected,
)
from shared.services import Services

log = logging.getLogger(__name__)


def started_from_folder(rec: RunRecord, folder: str) -> bool:
    """Whether ``rec`` was started over HTTP staging the training container's top-level ``folder``
    (its dataset's own, or another): it supersedes the trigger's run for the blobs (and the
    manifest) that were in the folder when it started."""
    return rec.source == "api" and (rec.stage_from_prefix or "").strip("/") == folder


def staged_by_request(rec: RunRecord, folder: str) -> bool:
    """Whether ``rec`` is a staging run started over HTTP from ``folder``: its request stages every
    blob under the folder (and submits), so the trigger's invocations for them join it."""
    return rec.state == STAGING and started_from_folder(rec, folder)


def claim_folder(
    svc: Services, folder: str, dataset: str, fields: dict[str, Any], run_id: str
) -> tuple[RunRecord, bool]:
    """The run for staging from the top-level ``folder``, whose blobs also fire the blob trigger (as
    a dataset named ``folder``): it becomes the folder's current staging run, so the trigger's
    invocations join it instead of making another run. When the folder is the dataset's own, a
    staging run the trigger already made for these blobs (no manifest yet) is adopted as this run;
    the trigger's other staging runs of the folder (with a manifest, or made for the folder as a
    dataset of its own) are cancelled as superseded, not left to time out. Another HTTP start's run
    from the same folder is left alone: both requests get their runs.

    Adoption is a compare-and-swap that rechecks the run: when the trigger takes a manifest between
    the claim and the adoption, the run is superseded instead and a new one is claimed. Returns the
    run and whether it is this request's (not the idempotency key's run of another request)."""
    reuse = _adoptable if folder == dataset else _never
    for _ in range(5):
        rec, created = svc.registry.claim_staging_run(
            folder, reuse=reuse, run_dataset=dataset, run_id=run_id, key_reserved=True, **fields
        )
        if rec.source == "api":  # ours (or, for a repeated idempotency key, the key's run)
            if created:
                why = f"run {rec.run_id}, started over HTTP, stages the folder {folder!r}"
                for other in svc.registry.iter_runs(state=STAGING, dataset=folder):
                    if other.source == "blob" and other.run_id != rec.run_id:
                        _supersede(svc, other, why)
            return rec, created

        def adopt(r: RunRecord) -> None:
            if not _adoptable(r):
                raise _NotAdoptable
            for name, value in fields.items():
                setattr(r, name, value)

        try:
            adopted = svc.registry.update(rec.run_id, adopt, expected_state=STAGING)
        except _NotAdoptable:
            _supersede(svc, rec, f"a run started over HTTP stages the folder {folder!r}")
            continue
        except TransitionRejected:
            continue  # the run left staging meanwhile: claim again
        log.info(
            "run %s (made by the blob trigger) adopted by an HTTP start",
            rec.run_id,
            extra=adopted.log_extra(),
        )
        key = fields["idempotency_key"]
        if key:
            svc.registry.point_idempotency_key(key, adopted.run_id)  # the key this request reserved
        return adopted, True
    raise ConcurrencyError(
        f"folder {folder!r}: could not claim its staging run (too many concurrent changes); retry "
        "the request with the same Idempotency-Key"
    )


class Adopted(Exception):
    """The trigger's run was adopted by an HTTP start while an invocation was taking the manifest
    (the invocation joins that run: the request's spec stays)."""

    def __init__(self, rec: RunRecord) -> None:
        super().__init__(rec.run_id)
        self.rec = rec


class _NotAdoptable(Exception):
    """The trigger's run took a manifest between the claim and the adoption."""


def _never(rec: RunRecord) -> bool:
    return False


def _adoptable(rec: RunRecord) -> bool:
    """A staging run the blob trigger made with no manifest yet: an HTTP start may make it its own."""
    return rec.source == "blob" and rec.spec is None and rec.manifest_etag is None


def _supersede(svc: Services, rec: RunRecord, why: str) -> None:
    """Cancel a staging run of the blob trigger that a run started over HTTP replaces (no-op if it
    left staging, or if another HTTP start adopted it meanwhile: that run is another request's)."""

    def still_the_triggers(r: RunRecord) -> None:
        if r.source == "api":
            raise TransitionRejected(f"run {r.run_id} was adopted by an HTTP start", r)

    with contextlib.suppress(TransitionRejected):
        svc.registry.transition(
            rec.run_id,
            CANCELLED,
            STAGING,
            guard=still_the_triggers,
            error=RunError("Superseded", why),
        )
        log.info("run %s superseded: %s", rec.run_id, why, extra=rec.log_extra())
