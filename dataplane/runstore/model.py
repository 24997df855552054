"""Runs as the run store hands them out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from dataplane import fastjson


class RunState(StrEnum):
    QUEUED = "queued"
    """Waiting for an executor to claim it."""
    RUNNING = "running"
    """Held by an executor under a lease."""
    WAITING_APPROVAL = "waiting_approval"
    """Paused on a tool call a person must decide on; no executor holds it."""
    FINISHED = "finished"


class StopReason(StrEnum):
    NONE = ""
    COMPLETED = "completed"
    MAX_STEPS = "max_steps"
    BUDGET_EXCEEDED = "budget_exceeded"
    CANCELLED = "cancelled"
    DENIED = "denied"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"
    GUARDRAIL = "guardrail"
    INVALID_OUTPUT = "invalid_output"


class CallState(StrEnum):
    STARTED = "started"
    """Written before the call is made: it may have had its effect."""
    COMPLETED = "completed"
    FAILED = "failed"
    """It ran (or may have) and failed: its output is the tool's, and untrusted."""
    REFUSED = "refused"
    """Nothing ran: not the agent's tool, invalid arguments, denied, over a budget."""
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    """A person let it run (or, for a call whose outcome was unknown, run again)."""
    DENIED = "denied"
    OUTCOME_UNKNOWN = "outcome_unknown"
    """It may have had its effect and no answer came (its executor died, or it timed out
    in flight); a person is asked what became of it. ``error`` says why it is unknown."""
    RESOLVED = "resolved"
    """A person said what became of a call whose outcome was unknown: ``result`` is what
    the model is told; ``error`` is empty when it was marked done, the reason when it was
    marked failed."""


@dataclass(frozen=True)
class Run:
    id: str
    tenant: str
    agent: str
    state: RunState
    stop_reason: StopReason
    stop_detail: str
    request: dict[str, Any]
    """What the run was started with: input, variables, budget, the resolved configuration."""
    idempotency_key: str | None
    session_id: str
    user_id: str
    step: int
    """Steps completed and checkpointed."""
    usage: dict[str, Any]
    final_answer: str
    attempts: int
    """Times an executor lost the run (crashed, stuck) or failed it and it was retried."""
    lease_owner: str
    lease_expires_at: datetime | None
    fencing_token: int
    available_at: datetime
    """When it became claimable: queued (again), or its holder's lease expired."""
    deadline_at: datetime | None
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    model_call: str = ""
    """An ``UnsettledModelCall`` as text: a model call its holder announced and has not
    recorded the result of; "" when none is in flight."""


@dataclass(frozen=True)
class Lease:
    """An executor's hold on a run. Every write it makes for the run carries ``token``."""

    run_id: str
    owner: str
    token: int
    expires_at: datetime
    cancel_requested: bool = False
    """Someone asked the run to stop (seen at the holder's last fenced write)."""


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    step: int
    delta: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class CallEntry:
    """A tool call's journal entry as its holder writes it."""

    step: int
    call_index: int
    call_id: str
    tool: str
    arguments: dict[str, Any]
    state: CallState
    result: Any = None
    error: str = ""


@dataclass(frozen=True)
class ToolCallRecord(CallEntry):
    """A journal entry as the store keeps it."""

    attempts: int = 0
    started_at: datetime | None = None
    """When it last started; for a call filed for approval, when it began to wait."""
    finished_at: datetime | None = None


@dataclass(frozen=True)
class RunEvent:
    seq: int
    time: datetime
    type: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Telemetry:
    """What of an event leaves the executor, through the outbox: a field of the contract's
    ``TelemetryEvent`` (``kind``, such as ``model_usage``) and its values. Never prompt,
    completion or tool text: those stay in the run store."""

    kind: str
    fields: dict[str, Any]
    executor: str = ""
    """The executor (xDS node id) that holds the run; empty when none does."""


@dataclass(frozen=True)
class NewEvent:
    """An event to append in a fenced write. With ``telemetry``, the same write puts that
    in the outbox, under the id "{run}:{sequence}"."""

    type: str
    payload: dict[str, Any]
    telemetry: Telemetry | None = None


@dataclass(frozen=True)
class StepCheckpoint:
    """A checkpoint to write: the step reached, what it added, the usage so far, and the
    events that go with it."""

    step: int
    delta: dict[str, Any]
    usage: dict[str, Any]
    events: Sequence[NewEvent] = ()


def stopped(
    reason: StopReason,
    detail: str = "",
    usage: dict[str, Any] | None = None,
    *,
    steps: int,
    executor: str = "",
) -> NewEvent:
    """The ``run_stopped`` event, with the reason as the contract names it, and its
    telemetry (``run_ended``): ``steps`` completed, by ``executor`` when one holds it."""
    payload: dict[str, Any] = {"reason": f"STOP_REASON_{reason.name}", "detail": detail}
    if usage is not None:
        payload["usage"] = usage
    ended: dict[str, Any] = {**payload, "steps": steps}
    return NewEvent("run_stopped", payload, Telemetry("run_ended", ended, executor))


@dataclass(frozen=True)
class UnsettledModelCall:
    """A model call, written before it is made: what the run records for it if its
    executor dies before the result is written. Whoever next takes the run (another
    executor resuming it, the claim that dead-letters it) or the holder that cancels it
    mid-call settles it as this ``model_call_finished`` event and ``model_usage`` record,
    at the call's worst case and marked ``usage_estimated``: a provider may have served
    and billed it, and the ledger must not miss it."""

    payload: dict[str, Any]
    """The ``model_call_finished`` event's payload."""
    telemetry: dict[str, Any]
    """Its ``model_usage`` record."""
    executor: str
    usage: dict[str, Any]
    """The run's usage with the call counted at its worst case."""

    def text(self) -> str:
        return fastjson.dumps_text(
            {
                "payload": self.payload,
                "telemetry": self.telemetry,
                "executor": self.executor,
                "usage": self.usage,
            }
        )

    @classmethod
    def parse(cls, text: str) -> UnsettledModelCall:
        data = fastjson.loads(text)
        return cls(data["payload"], data["telemetry"], data["executor"], data["usage"])

    def event(self, executor: str | None = None) -> NewEvent:
        """The event that settles it; ``executor``: who settles it, if not its holder."""
        by = self.executor if executor is None else executor
        return NewEvent(
            "model_call_finished", self.payload, Telemetry("model_usage", self.telemetry, by)
        )


@dataclass(frozen=True)
class OutboxEvent:
    """Something that must leave the executor: an event's telemetry (``kind`` is its
    ``TelemetryEvent`` field) or an audit record (``kind`` "audit", ``type`` its action)."""

    id: str
    tenant: str
    run_id: str
    kind: str
    type: str
    payload: dict[str, Any]
    created_at: datetime
    executor: str = ""

    @property
    def sequence(self) -> int:
        """The run event's sequence number it goes with; 0 for an audit record."""
        _, sep, seq = self.id.rpartition(":")
        return int(seq) if sep else 0
