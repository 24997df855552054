"""The order of the interceptors around a run's calls, in one place.

Model calls: the quota hold outermost (a call refused by the tenant's quota opens no
span), then the span, then content capture on it. Tool calls: the output guardrails
outermost (the injection classifier's own model call is not inside the tool's span),
then the span, then content capture. With no telemetry configured (``Tracing.recording``)
the span and capture interceptors are left out: what they record would go nowhere."""

from __future__ import annotations

from dataplane.orchestrator.intercept.capture import ModelCapture, ToolCapture
from dataplane.orchestrator.intercept.chain import (
    ModelInterceptor,
    ModelNext,
    ToolInterceptor,
    ToolNext,
    model_chain,
    tool_chain,
)
from dataplane.orchestrator.intercept.guardrails import OutputGuard
from dataplane.orchestrator.intercept.quota import QuotaHold
from dataplane.orchestrator.intercept.tracing import ModelTracing, ToolTracing
from dataplane.quota.leases import Quotas
from dataplane.telemetry.otel import Tracing


def model_calls(
    complete: ModelNext, *, tracing: Tracing, quotas: Quotas | None, capture: bool
) -> ModelNext:
    """``complete`` (the gateway) with a run's model-call interceptors around it."""
    interceptors: list[ModelInterceptor] = []
    if quotas is not None:
        interceptors.append(QuotaHold(quotas, tracing))
    if tracing.recording:
        interceptors.append(ModelTracing(tracing))
        if capture:
            interceptors.append(ModelCapture())
    return model_chain(interceptors, complete)


def tool_calls(
    execute: ToolNext, *, tracing: Tracing, capture: bool, guard: OutputGuard
) -> ToolNext:
    """``execute`` (the tool router) with a run's tool-call interceptors around it."""
    interceptors: list[ToolInterceptor] = [guard] if guard.active else []
    if tracing.recording:
        interceptors.append(ToolTracing(tracing))
        if capture:
            interceptors.append(ToolCapture())
    return tool_chain(interceptors, execute)
