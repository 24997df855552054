"""A run's usage on this executor, and the events that account for each call in it: the
``model_call_finished`` and ``tool_call_finished`` events with the usage records they
carry to the control plane's ledger."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from dataplane.models.gateway import GatewayResult
from dataplane.models.types import ToolCall
from dataplane.orchestrator.calls import Usage
from dataplane.runstore.model import CallState, NewEvent, ToolCallRecord
from dataplane.telemetry import records
from dataplane.telemetry.records import RunLabels
from dataplane.tools.router import ToolOutcome
from pilothouse.decimals import plain

DECIDED = frozenset({CallState.APPROVED, CallState.DENIED, CallState.RESOLVED})
"""Journal states of a call a person decided on."""


@dataclass
class RunAccount:
    labels: RunLabels
    usage: Usage = field(default_factory=Usage)
    queued_for: float = 0.0
    """Time the run waited for an executor before this one took it, not told yet: it
    goes with the first usage record this executor writes for the run."""

    def waited(self) -> float:
        waited, self.queued_for = self.queued_for, 0.0
        return waited

    def model_call(self, result: GatewayResult, step: int, seconds: float) -> NewEvent:
        """Add a model call to the run's usage: its ``model_call_finished`` event."""
        answer = result.result
        usage = answer.usage
        self.usage.input_tokens += usage.input_tokens
        self.usage.output_tokens += usage.output_tokens
        self.usage.cached_input_tokens += usage.cached_input_tokens
        self.usage.cost_usd += result.cost
        self.usage.model_calls += 1
        return NewEvent(
            "model_call_finished",
            {
                "step": step,
                "model": result.model.name,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cost_usd": plain(result.cost),
                "finish_reason": answer.finish_reason,
                "latency_seconds": round(seconds, 6),
                "attempts": result.attempts,
                "usage_estimated": usage.estimated,
            },
            records.model_usage(
                self.labels,
                step=step,
                model=result.model,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cached_input_tokens=usage.cached_input_tokens,
                cost_usd=result.cost,
                queue_seconds=self.waited(),
                model_seconds=seconds,
                attempts=result.attempts,
                finish_reason=answer.finish_reason,
                usage_estimated=usage.estimated,
            ),
        )

    def tool_call(
        self,
        step: int,
        call: ToolCall,
        outcome: ToolOutcome,
        seconds: float,
        waited_for_person: float = 0.0,
    ) -> NewEvent:
        """A tool call's ``tool_call_finished`` event (``waited_for_person``: the time
        it waited for a person's decision)."""
        return NewEvent(
            "tool_call_finished",
            {
                "step": step,
                "call_id": call.id,
                "tool": call.name,
                "ok": outcome.ok,
                "executed": outcome.executed,
                "result": json.dumps(outcome.result),
                "latency_seconds": round(seconds, 6),
            },
            records.tool_usage(
                self.labels,
                step=step,
                tool=call.name,
                call_id=call.id,
                ok=outcome.ok,
                executed=outcome.executed,
                tool_seconds=seconds,
                approval_wait_seconds=waited_for_person,
                queue_seconds=self.waited(),
            ),
        )


def waited_for_person(record: ToolCallRecord | None, available_at_seconds: float) -> float:
    """How long a call a person decided on waited: from when it was filed
    (``record.started_at``) until the decision made the run claimable again."""
    if record is None or record.state not in DECIDED or record.started_at is None:
        return 0.0
    return max(available_at_seconds - record.started_at.timestamp(), 0.0)
