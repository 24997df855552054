"""A run's first messages and its first checkpoint."""

from __future__ import annotations

from datetime import datetime

from dataplane.guardrails.untrusted import NOTICE
from dataplane.models.types import ChatMessage
from dataplane.orchestrator.calls import Usage
from dataplane.orchestrator.context import Limits, RunContext
from dataplane.runstore.model import NewEvent, StepCheckpoint
from dataplane.telemetry import records
from dataplane.telemetry.records import RunLabels


def opening(
    ctx: RunContext,
    config_version: str,
    run_input: str,
    labels: RunLabels,
    limits: Limits,
    *,
    created_at: datetime | None = None,
    trace_id: str = "",
) -> tuple[list[ChatMessage], StepCheckpoint]:
    """A run's first messages, and its first checkpoint: step 0, those messages, no usage
    yet, and the ``run_started`` event with the limits in force (``created_at``: when the
    run was created, if that was before now)."""
    system = f"{ctx.system_prompt}\n\n{NOTICE}" if ctx.tools else ctx.system_prompt
    messages = [ChatMessage("system", system), ChatMessage("user", run_input)]
    return messages, StepCheckpoint(
        0,
        {"messages": [m.to_dict() for m in messages]},
        Usage().to_dict(),
        [
            NewEvent(
                "run_started",
                {
                    "prompt_version": ctx.version.name,
                    "config_version": config_version,
                    "budget": limits.budget(),
                },
                records.run_opened(labels, config_version, created_at, trace_id),
            )
        ],
    )
