"""Telemetry as the control plane takes it in: usage records for the ledger, changes to
the run index, executors' audit records, and the events it could not take."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

PICO = Decimal(10) ** 12
"""The ledger's cost unit is 10^-12 USD."""

QUEUED, RUNNING, WAITING_APPROVAL, FINISHED = "queued", "running", "waiting_approval", "finished"


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One model call (``kind`` "model") or tool call ("tool")."""

    id: str
    tenant: str
    time_us: int
    """When, in microseconds since the epoch (UTC)."""
    kind: str
    run_id: str
    step: int
    agent: str
    executor: str
    prompt_version: str = ""
    variant: str = ""
    model: str = ""
    provider: str = ""
    tool: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    queue_seconds: float = 0.0
    model_seconds: float = 0.0
    tool_seconds: float = 0.0
    approval_wait_seconds: float = 0.0
    estimated: bool = False
    """The usage is the executor's estimate (``ModelUsage.usage_estimated``)."""

    def problem(self) -> str:
        """Why the ledger cannot take this record; "" when it can."""
        if self.cost_usd < 0 or not self.cost_usd.is_finite():
            return f"cost_usd must be a non-negative decimal (is {self.cost_usd})"
        if (self.cost_usd * PICO) % 1 != 0:
            return f"cost_usd may have at most 12 decimal places (is {self.cost_usd})"
        counts = (self.input_tokens, self.output_tokens, self.cached_input_tokens)
        if min(counts) < 0:
            return "token counts must not be negative"
        total = (
            self.queue_seconds + self.model_seconds + self.tool_seconds
        ) + self.approval_wait_seconds
        lowest = min(
            self.queue_seconds, self.model_seconds, self.tool_seconds, self.approval_wait_seconds
        )
        if lowest < 0 or not math.isfinite(total):  # NaN and infinities make the sum so
            return "durations must be non-negative and finite"
        return ""

    @property
    def cost_pico(self) -> int:
        return int(self.cost_usd * PICO)


@dataclass(frozen=True, slots=True)
class RunChange:
    """What one event tells of a run. ``sequence`` orders a run's events: the state (and
    stop reason, end time, executor) of the newest wins; the rest fill in what is known."""

    tenant: str
    run_id: str
    sequence: int
    time: datetime
    state: str
    executor: str = ""
    agent: str = ""
    prompt_version: str = ""
    variant: str = ""
    trace_id: str = ""
    create_time: datetime | None = None
    """When the run was created, if the event says; else taken as ``time``."""
    steps: int = 0
    stop_reason: str = ""
    stop_detail: str = ""
    end_time: datetime | None = None

    def merged(self, other: RunChange) -> RunChange:
        """Both changes as one, whichever order they arrived in (the store applies the
        same rule to the row it holds)."""
        newer, older = (other, self) if other.sequence > self.sequence else (self, other)
        return RunChange(
            newer.tenant,
            newer.run_id,
            newer.sequence,
            max(older.time, newer.time),
            newer.state,
            newer.executor or older.executor,
            older.agent or newer.agent,
            older.prompt_version or newer.prompt_version,
            older.variant or newer.variant,
            older.trace_id or newer.trace_id,
            min(older.create_time or older.time, newer.create_time or newer.time),
            max(older.steps, newer.steps),
            newer.stop_reason,
            newer.stop_detail,
            newer.end_time,
        )


def folded(changes: Iterable[RunChange]) -> list[RunChange]:
    """One change per run."""
    by_run: dict[tuple[str, str], RunChange] = {}
    for change in changes:
        key = (change.tenant, change.run_id)
        known = by_run.get(key)
        by_run[key] = change if known is None else known.merged(change)
    return list(by_run.values())


@dataclass(frozen=True)
class ExecutorAudit:
    """An audit record an executor wrote (such as a run's end)."""

    id: str
    tenant: str
    time: datetime
    executor: str
    action: str
    resource: str
    details: str


@dataclass(frozen=True)
class Rejected:
    id: str
    reason: str
    event: str
    """The event as JSON, kept for whoever looks into it."""


@dataclass
class Batch:
    """One batch of a relay's stream, sorted by what each event feeds."""

    executor: str
    usage: list[UsageRecord] = field(default_factory=list)
    runs: list[RunChange] = field(default_factory=list)
    audits: list[ExecutorAudit] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    pending_events: int = 0
    oldest_pending_time: datetime | None = None

    def add_usage(self, record: UsageRecord, change: RunChange) -> None:
        """A usage record and what it tells of its run; ValueError (and nothing added)
        when the ledger cannot take it."""
        problem = record.problem()
        if problem:
            raise ValueError(problem)
        self.usage.append(record)
        self.runs.append(change)
