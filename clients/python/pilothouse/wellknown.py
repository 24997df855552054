"""Durations and timestamps read from a caller's message, checked first.

protobuf's own conversions raise OverflowError or ValueError on a value outside the
well-known types' ranges (a Duration of 10^15 seconds, a Timestamp in the year 10^9),
which a server would report as INTERNAL; these raise ``OutOfRange`` naming the field, for
an INVALID_ARGUMENT.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

MAX_DURATION_SECONDS = 315_576_000_000
"""±10,000 years: the range protobuf's Duration allows."""
MIN_TIMESTAMP_SECONDS = -62_135_596_800
"""0001-01-01T00:00:00Z."""
MAX_TIMESTAMP_SECONDS = 253_402_300_799
"""9999-12-31T23:59:59Z."""


class OutOfRange(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def duration(value: duration_pb2.Duration, field: str) -> timedelta:
    seconds, nanos = value.seconds, value.nanos
    if (
        abs(seconds) > MAX_DURATION_SECONDS
        or abs(nanos) >= 1_000_000_000
        or (seconds > 0 > nanos)
        or (seconds < 0 < nanos)
    ):
        raise OutOfRange(field, f"is not a valid duration ({seconds} s, {nanos} ns)")
    return value.ToTimedelta()


def timestamp(value: timestamp_pb2.Timestamp, field: str) -> datetime:
    seconds, nanos = value.seconds, value.nanos
    if not MIN_TIMESTAMP_SECONDS <= seconds <= MAX_TIMESTAMP_SECONDS or not (
        0 <= nanos < 1_000_000_000
    ):
        raise OutOfRange(
            field, "is not a valid timestamp (years 0001 to 9999, nanos 0 to 999,999,999)"
        )
    return value.ToDatetime(tzinfo=UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp_of(when: datetime) -> timestamp_pb2.Timestamp:
    """``when`` as a Timestamp, exactly (a naive time is taken as UTC, as
    ``Timestamp.FromDatetime`` takes it), without ``FromDatetime``'s cost: about half of
    converting a run's event, and every event sent is converted."""
    since = (when if when.tzinfo is not None else when.replace(tzinfo=UTC)) - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=since.days * 86400 + since.seconds, nanos=since.microseconds * 1000
    )
