"""Spans and metrics of a run's calls: a ``chat`` span around each model call, an
``execute_tool`` span around each tool call, with the GenAI conventions' metrics."""

from __future__ import annotations

from opentelemetry.trace import Span

from dataplane.models.gateway import GatewayResult, NoModelAvailable
from dataplane.models.types import ProviderError
from dataplane.orchestrator.calls import Usage
from dataplane.orchestrator.intercept.chain import (
    ModelInvocation,
    ModelNext,
    ToolAnswer,
    ToolInvocation,
    ToolNext,
)
from dataplane.runstore.model import StopReason
from dataplane.telemetry.otel import Tracing


class ModelTracing:
    def __init__(self, tracing: Tracing) -> None:
        self._tracing = tracing

    async def call_model(self, call: ModelInvocation, proceed: ModelNext) -> GatewayResult:
        first = call.models[0] if call.models else None
        with self._tracing.model_call(first, call.request) as traced:
            call.span = traced.span
            if call.usd_left is not None:
                traced.span.set_attribute("pilothouse.budget.usd_left", str(call.usd_left))
            try:
                result = await proceed(call)
            except (ProviderError, NoModelAvailable) as e:
                traced.failed(e)
                raise
            traced.answered(result)
            return result


class ToolTracing:
    def __init__(self, tracing: Tracing) -> None:
        self._tracing = tracing

    async def call_tool(self, call: ToolInvocation, proceed: ToolNext) -> ToolAnswer:
        with self._tracing.tool_call(call.tool, call.name, call.call_id) as span:
            call.span = span
            answer = await proceed(call)
            if not answer.outcome.ok:
                self._tracing.failed(span, "tool_error")
            return answer


def trace_run_end(
    tracing: Tracing,
    span: Span,
    tenant: str,
    reason: StopReason,
    detail: str,
    usage: Usage,
    steps: int,
) -> None:
    """What the run's span and metrics learn when it stops: why, its usage, and the
    guardrail that stopped it, if one did."""
    span.set_attribute("pilothouse.stop_reason", reason.value)
    span.set_attribute("pilothouse.steps", steps)
    span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
    span.set_attribute("pilothouse.cost_usd", str(usage.cost_usd))
    if reason in (StopReason.GUARDRAIL, StopReason.INVALID_OUTPUT):
        guardrail = detail.split(":", 1)[0].split("[", 1)[0] or reason.value
        span.add_event(
            "pilothouse.guardrail",
            {"pilothouse.guardrail.name": guardrail, "pilothouse.guardrail.decision": "block"},
        )
        span.set_attribute("pilothouse.guardrail.blocked", guardrail)
        tracing.guardrail_trips.add(
            1, {"pilothouse.guardrail.name": guardrail, "pilothouse.tenant": tenant}
        )
    tracing.runs.add(1, {"pilothouse.stop_reason": reason.value, "pilothouse.tenant": tenant})
