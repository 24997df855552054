"""Plain-data encoding of the registry's dataclasses, for storage and content hashing.

``encode`` turns a spec into JSON-compatible data; ``decode`` turns it back, guided by the
dataclass's type hints. Decimals travel as strings (exact), durations as whole
microseconds, timestamps in ISO 8601, enums as their values. ``canonical_json`` is the
byte-stable form hashes are taken of.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import types
import typing
from collections.abc import Callable
from datetime import datetime, timedelta
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
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    return value


def decode(cls: type[T], data: Any) -> T:
    """Rebuild a value of type ``cls`` from ``encode``'s output. Unknown keys are ignored,
    missing ones take the field's default, so stored specs survive added fields."""
    decoder: Decoder = _decoder(typing.cast(Any, cls))
    return typing.cast(T, decoder(data))


Decoder = Callable[[Any], Any]


def _identity(data: Any) -> Any:
    return data


@cache
def _decoder(tp: Any) -> Decoder:
    """A decoder for ``tp``, built once per type from its hints (listing is hot: a page
    of a thousand resources decodes a thousand specs)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = _decoder(args[0])
        return lambda data: None if data is None else inner(data)
    if origin is tuple:
        item = _decoder(typing.get_args(tp)[0])
        return lambda data: tuple(item(v) for v in data)
    if origin is dict:
        value_type = typing.get_args(tp)[1]
        if value_type is Any:
            return dict
        value = _decoder(value_type)
        return lambda data: {k: value(v) for k, v in data.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = typing.get_type_hints(tp)
        fields = [(f.name, _decoder(hints[f.name])) for f in dataclasses.fields(tp)]
        cls = tp

        def build(data: Any) -> Any:
            return cls(**{name: dec(data[name]) for name, dec in fields if name in data})

        return build
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp
    if tp is Decimal:
        return Decimal
    if tp is timedelta:
        return lambda data: None if data is None else timedelta(microseconds=data)
    if tp is datetime:
        return lambda data: None if data is None else datetime.fromisoformat(data)
    return _identity


def canonical_json(value: Any) -> bytes:
    return json.dumps(
        encode(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


def content_hash(value: Any) -> str:
    """SHA-256 (hex) of the value's canonical JSON."""
    return hashlib.sha256(canonical_json(value)).hexdigest()
