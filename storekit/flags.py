"""Values of settings that the control plane and executors parse alike."""

from __future__ import annotations


def retention_days(value: str | float | None, flag: str) -> float | None:
    """A retention in days (more than 0), or None (keep for ever) when not set."""
    if value is None:
        return None
    try:
        days = float(value)
    except ValueError:
        raise SystemExit(f"{flag} {value!r}: give a number of days") from None
    if not days > 0:
        raise SystemExit(f"{flag} {value!r}: must be more than 0 days")
    return days
