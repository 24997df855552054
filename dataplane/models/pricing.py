"""Cost of a model call from the model's prices (USD per million tokens), exact."""

from __future__ import annotations

from decimal import Decimal

from dataplane.models.types import Usage
from pilothouse.v1 import model_pb2

MILLION = Decimal(1_000_000)


def _price(text: str) -> Decimal:
    return Decimal(text) if text else Decimal(0)


def cost(model: model_pb2.Model, usage: Usage) -> Decimal:
    return (
        Decimal(usage.input_tokens) * _price(model.input_price_per_million)
        + Decimal(usage.output_tokens) * _price(model.output_price_per_million)
    ) / MILLION
