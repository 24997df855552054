"""List pagination (AIP-158): page sizes and opaque page tokens.

A token records only where the previous page ended and which collection it belongs to;
it grants nothing, since every page is read with the caller's own scope. A token used
with another collection is refused.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TypeVar

from controlplane.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

T = TypeVar("T")


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument.of("page_size", "must not be negative")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def encode_token(collection: str, after: str) -> str:
    raw = json.dumps({"c": collection, "a": after}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, collection: str) -> str:
    """The position a token resumes after; "" for the first page."""
    if not token:
        return ""
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(data, dict):
            raise ValueError("not an object")
        coll, after = data["c"], data["a"]
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        raise InvalidArgument.of("page_token", "is not a token this API issued") from e
    if coll != collection or not isinstance(after, str):
        raise InvalidArgument.of("page_token", "belongs to a different list request")
    return after


def paginate(
    rows: Sequence[T], limit: int, collection: str, key: Callable[[T], str]
) -> tuple[list[T], str]:
    """Given up to ``limit + 1`` rows, the page and the token of the next one."""
    if len(rows) > limit:
        page = list(rows[:limit])
        return page, encode_token(collection, key(page[-1]))
    return list(rows), ""


def time_key(time: datetime, id_: str) -> str:
    """The position of a row in a list ordered by time, then id."""
    return f"{time.isoformat()}|{id_}"


def decode_time_key(token: str, collection: str) -> tuple[datetime, str] | None:
    """The time and id a token of a list ordered by time resumes after; None for the
    first page."""
    after = decode_token(token, collection)
    if not after:
        return None
    time, _, id_ = after.partition("|")
    try:
        return datetime.fromisoformat(time), id_
    except ValueError as e:
        raise InvalidArgument.of("page_token", "is not a token this API issued") from e
