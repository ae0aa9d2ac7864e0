"""Times as the app writes and reads them, declared once: ISO 8601 in UTC with milliseconds and a
`Z` (`2026-12-07T14:20:00.123Z`), the form of every time in a run record, a cluster ledger, a
metrics point and a callback.

Why a module of its own: it imports nothing of the SDKs, so pure modules (node time, metrics) and the
CLI use it without importing the registry's Table client.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["iso_utc", "iso_utc_from_ms", "parse_time", "utcnow"]


def iso_utc(value: datetime) -> str:
    """``value`` in the app's form; a naive datetime is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_utc_from_ms(ms: float) -> str:
    """Epoch milliseconds (a metrics point's time) in the app's form."""
    return iso_utc(datetime.fromtimestamp(ms / 1000, UTC))


def utcnow() -> str:
    """Now, in the app's form."""
    return iso_utc(datetime.now(UTC))


def parse_time(value: object) -> datetime | None:
    """A time as the app writes it (``iso_utc``), as the SDKs return it (a datetime), or None for
    nothing or garbage; naive times are taken as UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
