"""Amounts as both servers write them: plain notation, no trailing zeros ("0.0000267",
"12", "0"), so that the same amount is the same text wherever a caller reads it."""

from __future__ import annotations

from decimal import Decimal


def plain(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return text if text != "-0" else "0"
