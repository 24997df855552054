"""The hot path's JSON reads back what the standard library's would."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from dataplane import fastjson


@dataclass
class Point:
    x: int


VALUES: list[Any] = [
    {"b": 1, "a": [1.5, 1e16, 1e-05, -0.0, True, None], "é": "naïve ☃", "n": {"z": {}, "y": []}},
    {"step": 3, "cost_usd": "0.0000045", "latency_seconds": 0.000312, "arguments": '{"q": 1}'},
    [2**63 - 1, -(2**63), 0],
    'text with \u2028 and \x00 and "quotes"',
]


@pytest.mark.parametrize("value", VALUES)
def test_text_reads_back_as_the_standard_librarys(value: Any) -> None:
    assert json.loads(fastjson.dumps(value)) == json.loads(json.dumps(value))
    assert fastjson.loads(json.dumps(value)) == value
    text, back = fastjson.stored(value)
    assert back == json.loads(json.dumps(value, sort_keys=True)) == json.loads(text)


def test_keys_are_sorted_when_asked() -> None:
    assert fastjson.dumps_text({"b": 1, "a": {"d": 2, "c": 3}}, sort_keys=True) == (
        '{"a":{"c":3,"d":2},"b":1}'
    )


def test_what_json_cannot_hold_goes_to_default_as_the_standard_library_sends_it() -> None:
    when = datetime(2026, 12, 1, 18, 0, tzinfo=UTC)
    value = {"at": when, "price": Decimal("0.10"), "point": Point(1)}
    _, back = fastjson.stored(value)
    assert back == json.loads(json.dumps(value, default=str))
    assert back == {"at": str(when), "price": "0.10", "point": "Point(x=1)"}
    with pytest.raises(TypeError):
        fastjson.dumps({"at": when})


def test_integers_beyond_64_bits_stay_integers() -> None:
    value = {"big": 2**70, "small": 1}
    text, back = fastjson.stored(value)
    assert back == value and isinstance(back["big"], int)
    assert json.loads(text) == value
    assert json.loads(fastjson.dumps(value)) == value
