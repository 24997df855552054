"""Plain-data encoding of the registry's dataclasses, for storage and content hashing.

``encode`` turns a spec into JSON-compatible data; ``decode`` turns it back, guided by the
dataclass's type hints. Decimals travel as strings (exact), durations as whole
microseconds, enums as their values. ``canonical_json`` is the byte-stable form hashes
are taken of.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import types
import typing
from datetime import timedelta
from decimal import Decimal
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")


def encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, timedelta):
        return value // timedelta(microseconds=1)
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    return value


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def decode(cls: type[T], data: Any) -> T:
    """Rebuild a value of type ``cls`` from ``encode``'s output. Unknown keys are ignored,
    missing ones take the field's default, so stored specs survive added fields."""
    return typing.cast(T, _decode(cls, data))


def _decode(tp: Any, data: Any) -> Any:
    if data is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _decode(args[0], data)
    if origin is tuple:
        (item, _) = typing.get_args(tp)
        return tuple(_decode(item, v) for v in data)
    if origin is dict:
        _, item = typing.get_args(tp)
        if item is Any:
            return dict(data)
        return {k: _decode(item, v) for k, v in data.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = _hints(tp)
        kwargs = {
            f.name: _decode(hints[f.name], data[f.name])
            for f in dataclasses.fields(tp)
            if f.name in data
        }
        return tp(**kwargs)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(data)
    if tp is Decimal:
        return Decimal(data)
    if tp is timedelta:
        return timedelta(microseconds=data)
    return data


def canonical_json(value: Any) -> bytes:
    return json.dumps(
        encode(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


def content_hash(value: Any) -> str:
    """SHA-256 (hex) of the value's canonical JSON."""
    return hashlib.sha256(canonical_json(value)).hexdigest()


def json_loads(text: str) -> Any:
    return json.loads(text)
