"""Share and file leases as the File service keeps them: a small state machine over a stored record.

A lease record is `{"id", "state", "duration", "expires", "broken_at"}` (times in seconds since the
epoch) kept with the share's or file's properties, so leases survive a restart as they do in Azure.
States: `leased` (until `expires`; -1 duration is infinite), then `expired`; `breaking` until
`broken_at`, then `broken`; a released lease is removed (`available`). File leases are always infinite
and break at once; share leases last 15..60 seconds or forever and break after a period (0..60 s).

While a lease is active (leased or breaking) the operations that need it (writes to a file; deleting
a share) are refused with 412 `LeaseIdMissing` unless they carry its id; any operation that carries a
lease id that is not the active one is refused with 412, as Azure does.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from .errors import StorageError

LEASE_ID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
ACTIONS = ("acquire", "renew", "change", "release", "break")


def state(lease: dict[str, Any] | None, now: float) -> str:
    """available, leased, expired, breaking or broken, at `now`."""
    if not lease:
        return "available"
    if lease["state"] == "leased" and lease["duration"] != -1 and now >= lease["expires"]:
        return "expired"
    if lease["state"] == "breaking" and now >= lease["broken_at"]:
        return "broken"
    return lease["state"]


def headers(lease: dict[str, Any] | None, now: float) -> dict[str, str]:
    """x-ms-lease-state / -status / -duration as Get Properties reports them."""
    current = state(lease, now)
    out = {
        "x-ms-lease-state": current,
        "x-ms-lease-status": "locked" if current in ("leased", "breaking") else "unlocked",
    }
    if current == "leased" and lease:
        out["x-ms-lease-duration"] = "infinite" if lease["duration"] == -1 else "fixed"
    return out


def _lease_id(value: str | None, header: str) -> str:
    if not value or not LEASE_ID.match(value):
        raise StorageError(
            "InvalidHeaderValue" if value else "MissingRequiredHeader",
            message=f"{header} must be a GUID string, not {value!r}." if value else f"{header} is required.",
            details={"HeaderName": header},
        )
    return value.lower()


def apply(
    lease: dict[str, Any] | None, action: str, request: dict[str, str | None], now: float, kind: str
) -> tuple[dict[str, Any] | None, int, dict[str, str]]:
    """One lease operation on a share (`kind="share"`) or file: (new record, status, response headers).

    `request` holds the lease headers as sent: x-ms-lease-id, x-ms-proposed-lease-id,
    x-ms-lease-duration, x-ms-lease-break-period."""
    action = (action or "").lower()
    if action not in ACTIONS:
        raise StorageError(
            "InvalidHeaderValue" if action else "MissingRequiredHeader",
            message=f"x-ms-lease-action must be one of {', '.join(ACTIONS)}, not {action!r}.",
            details={"HeaderName": "x-ms-lease-action"},
        )
    current = state(lease, now)
    held = lease["id"] if lease else None
    if action == "acquire":
        duration = _duration(request.get("x-ms-lease-duration"), kind)
        proposed = request.get("x-ms-proposed-lease-id")
        new_id = _lease_id(proposed, "x-ms-proposed-lease-id") if proposed else str(uuid.uuid4())
        if current == "breaking":
            raise StorageError("LeaseIsBreakingAndCannotBeAcquired")
        if current == "leased" and held != new_id:
            raise StorageError("LeaseAlreadyPresent")
        record = {"id": new_id, "state": "leased", "duration": duration, "expires": now + max(duration, 0)}
        return record, 201, {"x-ms-lease-id": new_id}
    if action == "break":
        if current == "available" or current == "expired":
            raise StorageError("LeaseNotPresentWithLeaseOperation")
        if current == "broken":
            return lease, 202, {"x-ms-lease-time": "0"}
        period = _break_period(request.get("x-ms-lease-break-period"), kind)
        if period is None:  # Azure: the remaining time of a fixed lease, at once for an infinite one
            period = 0 if lease["duration"] == -1 else max(0, int(lease["expires"] - now))
        if current == "breaking":
            period = min(period, max(0, int(lease["broken_at"] - now)))
        record = {**lease, "state": "breaking" if period else "broken", "broken_at": now + period}
        return record, 202, {"x-ms-lease-time": str(period)}
    given = _lease_id(request.get("x-ms-lease-id"), "x-ms-lease-id")
    if current == "available" or given != held:
        code = (
            "LeaseNotPresentWithLeaseOperation"
            if current == "available"
            else "LeaseIdMismatchWithLeaseOperation"
        )
        raise StorageError(code)
    if action == "release":
        return None, 200, {}
    if action == "renew":
        if kind != "share":
            raise StorageError(
                "InvalidHeaderValue",
                message="File leases are infinite: renew is not a file lease action.",
                details={"HeaderName": "x-ms-lease-action"},
            )
        if current in ("breaking", "broken"):
            raise StorageError("LeaseIsBrokenAndCannotBeRenewed")
        return (
            {**lease, "state": "leased", "expires": now + max(lease["duration"], 0)},
            200,
            {"x-ms-lease-id": held},
        )
    # change
    proposed = _lease_id(request.get("x-ms-proposed-lease-id"), "x-ms-proposed-lease-id")
    if current == "breaking":
        raise StorageError("LeaseIsBreakingAndCannotBeChanged")
    if current != "leased":
        raise StorageError("LeaseNotPresentWithLeaseOperation")
    return {**lease, "id": proposed}, 200, {"x-ms-lease-id": proposed}


def _duration(value: str | None, kind: str) -> int:
    try:
        duration = int(value) if value is not None else -1
    except ValueError:
        duration = 0
    ok = duration == -1 or (kind == "share" and 15 <= duration <= 60)
    if not ok:
        allowed = "-1 (infinite) or 15 to 60 seconds" if kind == "share" else "-1: file leases are infinite"
        raise StorageError(
            "InvalidHeaderValue",
            message=f"x-ms-lease-duration {value!r} is not valid: {allowed}.",
            details={"HeaderName": "x-ms-lease-duration"},
        )
    return duration


def _break_period(value: str | None, kind: str) -> int | None:
    if value is None:
        return None
    if kind != "share":
        raise StorageError(
            "InvalidHeaderValue",
            message="x-ms-lease-break-period is for share leases; a file lease breaks at once.",
            details={"HeaderName": "x-ms-lease-break-period"},
        )
    if not value.isdigit() or not 0 <= int(value) <= 60:
        raise StorageError(
            "InvalidHeaderValue",
            message=f"x-ms-lease-break-period must be 0 to 60 seconds, not {value!r}.",
            details={"HeaderName": "x-ms-lease-break-period"},
        )
    return int(value)


def check(lease: dict[str, Any] | None, given: str | None, now: float, kind: str, needs_lease: bool) -> None:
    """Refuse an operation on a leased share or file as Azure does (412 Precondition Failed)."""
    current = state(lease, now)
    active = current in ("leased", "breaking")
    target = "Container" if kind == "share" else "File"
    if given:
        if not active:
            raise StorageError(f"LeaseNotPresentWith{target}Operation")
        if given.lower() != lease["id"]:
            raise StorageError(f"LeaseIdMismatchWith{target}Operation")
    elif active and needs_lease:
        raise StorageError("LeaseIdMissing")
