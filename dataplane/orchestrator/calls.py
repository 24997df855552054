"""A model call before it is made: the models it may go to, the most it may cost, and the
record that accounts for it if its executor dies before its result is written."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from dataplane.config.snapshot import ExecutorConfig
from dataplane.models.estimate import MESSAGE_TOKENS, estimate_tokens
from dataplane.models.pricing import cost as price
from dataplane.models.types import ChatMessage
from dataplane.models.types import Usage as CallUsage
from dataplane.orchestrator.context import RunContext, prompt_bound
from dataplane.runstore.model import UnsettledModelCall
from dataplane.telemetry import records
from dataplane.telemetry.records import RunLabels
from pilothouse.decimals import plain
from pilothouse.v1 import model_pb2

BUDGETED_MAX_OUTPUT = 4096
"""Output tokens a call is held to when a USD limit applies and neither its prompt
version nor its model bounds them; and a call's worst case where nothing bounds it."""

UNKNOWN_FINISH = "unknown"
"""The finish reason of a call settled without its result."""


@dataclass
class Usage:
    """A run's usage so far."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    model_calls: int = 0
    tool_calls: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cost_usd": plain(self.cost_usd),
            "model_calls": self.model_calls,
            "tool_calls": self.tool_calls,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Usage:
        return cls(
            int(data.get("input_tokens", 0)),
            int(data.get("output_tokens", 0)),
            int(data.get("cached_input_tokens", 0)),
            Decimal(data.get("cost_usd", "0")),
            int(data.get("model_calls", 0)),
            int(data.get("tool_calls", 0)),
        )

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def route_models(config: ExecutorConfig, route_name: str) -> list[model_pb2.Model]:
    """The models a call over ``route_name`` may go to, its first target first."""
    route = config.get(model_pb2.ModelRoute, route_name)
    if route is None:
        return []
    names = [t.model for t in route.targets] + list(route.fallbacks)
    return [m for n in names if (m := config.get(model_pb2.Model, n)) is not None]


@dataclass(frozen=True)
class CallBounds:
    """What a model call of a run may use, before it is made."""

    models: list[model_pb2.Model]
    max_output: int
    """The output tokens it asks for at most; 0: the model's own limit, unknown here."""
    prompt_estimate: int
    """Its prompt's tokens, estimated (for the run's token budget)."""
    prompt_bound: int
    """Its prompt's tokens at most (a token covers at least one byte)."""

    def worst(self, max_output: int | None = None) -> tuple[Decimal, model_pb2.Model | None]:
        """Its cost at most, and the model that would charge that: the prompt's bound
        and ``max_output`` (this call's own bound unless given) at the dearest model."""
        out = self.max_output if max_output is None else max_output
        priced = [(price(m, CallUsage(self.prompt_bound, out)), m) for m in self.models]
        if not priced:
            return Decimal(0), None
        return max(priced, key=lambda p: p[0])


def call_bounds(
    config: ExecutorConfig,
    ctx: RunContext,
    messages: Sequence[ChatMessage],
    *,
    usd_limited: bool,
) -> CallBounds:
    """The bounds of a run's next model call. ``usd_limited``: the run or its tenant has a
    USD limit, so a call must have a worst case (``BUDGETED_MAX_OUTPUT`` if nothing else
    bounds its output)."""
    params = ctx.version.parameters
    models = route_models(config, ctx.route)
    max_out = (
        params.max_output_tokens
        if params.HasField("max_output_tokens")
        else (models[0].max_output_tokens if models else 0)
    )
    if not max_out and usd_limited:
        max_out = BUDGETED_MAX_OUTPUT
    estimate = sum(estimate_tokens(m.content) + MESSAGE_TOKENS for m in messages)
    return CallBounds(models, max_out, estimate + ctx.tool_spec_tokens, prompt_bound(messages, ctx))


def unsettled(
    bounds: CallBounds, usage: Usage, labels: RunLabels, step: int
) -> UnsettledModelCall | None:
    """The record of the call at its worst case, to be written before it is made; None
    when the route has no model (no call will be made)."""
    out = bounds.max_output or BUDGETED_MAX_OUTPUT
    worst, model = bounds.worst(out)
    if model is None:
        return None
    after = Usage(
        usage.input_tokens + bounds.prompt_bound,
        usage.output_tokens + out,
        usage.cached_input_tokens,
        usage.cost_usd + worst,
        usage.model_calls + 1,
        usage.tool_calls,
    )
    payload = {
        "step": step,
        "model": model.name,
        "input_tokens": bounds.prompt_bound,
        "output_tokens": out,
        "cost_usd": plain(worst),
        "finish_reason": UNKNOWN_FINISH,
        "latency_seconds": 0.0,
        "attempts": 1,
        "usage_estimated": True,
    }
    telemetry = records.model_usage(
        labels,
        step=step,
        model=model,
        input_tokens=bounds.prompt_bound,
        output_tokens=out,
        cached_input_tokens=0,
        cost_usd=worst,
        queue_seconds=0.0,
        model_seconds=0.0,
        attempts=1,
        finish_reason=UNKNOWN_FINISH,
        usage_estimated=True,
    )
    return UnsettledModelCall(payload, telemetry.fields, labels.executor, after.to_dict())
