"""The telemetry of a run's events: what the control plane learns of them through the
outbox. Only names, numbers and times: never prompt, completion, tool argument or tool
result text, which stay in the run store."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from dataplane.runstore.model import Telemetry
from pilothouse.v1 import model_pb2


@dataclass(frozen=True)
class RunLabels:
    """What every usage record of a run carries, to group usage by."""

    agent: str
    prompt_version: str
    executor: str
    variant: str = ""


def run_opened(
    labels: RunLabels,
    config_version: str,
    created_at: datetime | None = None,
    trace_id: str = "",
) -> Telemetry:
    fields: dict[str, Any] = {
        "agent": labels.agent,
        "prompt_version": labels.prompt_version,
        "variant": labels.variant,
        "config_version": config_version,
        "trace_id": trace_id,
    }
    if created_at is not None:
        fields["create_time"] = created_at.isoformat()
    return Telemetry("run_opened", fields, labels.executor)


def provider_name(model: model_pb2.Model) -> str:
    return model_pb2.ModelProvider.Name(model.provider).removeprefix("MODEL_PROVIDER_").lower()


def model_usage(
    labels: RunLabels,
    *,
    step: int,
    model: model_pb2.Model,
    input_tokens: int,
    output_tokens: int,
    cached_input_tokens: int,
    cost_usd: Decimal,
    queue_seconds: float,
    model_seconds: float,
    attempts: int,
    finish_reason: str,
    usage_estimated: bool = False,
) -> Telemetry:
    return Telemetry(
        "model_usage",
        {
            "agent": labels.agent,
            "step": step,
            "model": model.name,
            "provider": provider_name(model),
            "prompt_version": labels.prompt_version,
            "variant": labels.variant,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cached_input_tokens": cached_input_tokens,
            "cost_usd": str(cost_usd),
            "queue_seconds": round(queue_seconds, 6),
            "model_seconds": round(model_seconds, 6),
            "attempts": attempts,
            "finish_reason": finish_reason,
            "usage_estimated": usage_estimated,
        },
        labels.executor,
    )


def tool_usage(
    labels: RunLabels,
    *,
    step: int,
    tool: str,
    call_id: str,
    ok: bool,
    executed: bool,
    tool_seconds: float,
    approval_wait_seconds: float = 0.0,
    queue_seconds: float = 0.0,
) -> Telemetry:
    return Telemetry(
        "tool_usage",
        {
            "agent": labels.agent,
            "step": step,
            "tool": tool,
            "call_id": call_id,
            "prompt_version": labels.prompt_version,
            "variant": labels.variant,
            "ok": ok,
            "executed": executed,
            "tool_seconds": round(tool_seconds, 6),
            "approval_wait_seconds": round(approval_wait_seconds, 6),
            "queue_seconds": round(queue_seconds, 6),
        },
        labels.executor,
    )


def run_waiting(labels: RunLabels, *, step: int, tool: str) -> Telemetry:
    return Telemetry("run_waiting", {"step": step, "tool": tool}, labels.executor)
