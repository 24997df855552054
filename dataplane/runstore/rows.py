"""The rows and payloads the run store writes, built in one place for both backends:
runs as read back, the outbox's rows (telemetry, the queued record, audit records) and
the ``run.stopped`` audit payload. PostgreSQL's one-statement writes build the same rows
in SQL from the column lists and field order here."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from dataplane import fastjson
from dataplane.runstore.model import NewEvent, Run, RunEvent, RunState, StepCheckpoint, StopReason
from dataplane.runstore.schema import runs

RUN_COLUMNS = tuple(runs.c[name] for name in Run.__dataclass_fields__)
RUN_COLUMN_NAMES = [c.name for c in runs.columns]

OUTBOX_COLUMNS = (
    "id",
    "tenant",
    "run_id",
    "kind",
    "type",
    "payload",
    "created_at",
    "claimed_by",
    "claim_expires_at",
    "executor",
)
"""The outbox's columns, in the order its rows are built (``outbox_row``)."""

STOPPED_AUDIT_FIELDS = (
    "run",
    "agent",
    "stop_reason",
    "detail",
    "steps",
    "usage",
    "attempts",
    "created_at",
    "ended_at",
)
"""The fields of the ``run.stopped`` audit payload (``stopped_audit``)."""


def now() -> datetime:
    return datetime.now(UTC)


def run_of(row: Sequence[Any]) -> Run:
    """A run from its row (``RUN_COLUMNS``)."""
    values = dict(zip(Run.__dataclass_fields__, row, strict=True))
    values["state"] = RunState(values["state"])
    values["stop_reason"] = StopReason(values["stop_reason"])
    values["request"] = json.loads(values["request"])
    values["usage"] = json.loads(values["usage"])
    return Run(**values)


def outbox_row(
    id: str,
    tenant: str,
    run_id: str,
    kind: str,
    type: str,
    payload: str,
    created_at: datetime,
    executor: str,
) -> dict[str, Any]:
    """A row of the outbox, unclaimed."""
    return {
        "id": id,
        "tenant": tenant,
        "run_id": run_id,
        "kind": kind,
        "type": type,
        "payload": payload,
        "created_at": created_at,
        "claimed_by": "",
        "claim_expires_at": None,
        "executor": executor,
    }


def telemetry_rows(
    run_id: str, tenant: str, first_seq: int, events: Sequence[NewEvent], at: datetime
) -> list[dict[str, Any]]:
    """The outbox rows of the events' telemetry, under the ids "{run}:{sequence}"."""
    return [
        outbox_row(
            f"{run_id}:{first_seq + i}",
            tenant,
            run_id,
            e.telemetry.kind,
            e.type,
            fastjson.dumps_text(e.telemetry.fields),
            at,
            e.telemetry.executor,
        )
        for i, e in enumerate(events)
        if e.telemetry is not None
    ]


def queued_record(values: dict[str, Any]) -> dict[str, Any]:
    """The outbox record saying a run was queued: it comes before all of the run's events
    (sequence 0), so any of them supersedes it in the control plane's run index."""
    return outbox_row(
        f"{values['id']}:0",
        values["tenant"],
        values["id"],
        "run_queued",
        "run_queued",
        fastjson.dumps_text({"agent": values["agent"]}),
        values["created_at"],
        "",
    )


def audit_row(
    tenant: str, run_id: str, action: str, payload: dict[str, Any], at: datetime, executor: str
) -> dict[str, Any]:
    """An audit record for the control plane's audit log."""
    text = json.dumps(payload, sort_keys=True)
    return outbox_row(str(uuid.uuid4()), tenant, run_id, "audit", action, text, at, executor)


def stopped_audit(
    run_id: str,
    agent: str,
    reason: StopReason,
    detail: str,
    steps: int,
    usage: dict[str, Any],
    attempts: int,
    created_at: datetime,
    ended_at: datetime,
) -> dict[str, Any]:
    """The payload of a run's ``run.stopped`` audit record (``STOPPED_AUDIT_FIELDS``)."""
    values = (
        run_id,
        agent,
        reason.value,
        detail,
        steps,
        usage,
        attempts,
        iso(created_at),
        iso(ended_at),
    )
    return dict(zip(STOPPED_AUDIT_FIELDS, values, strict=True))


def iso(at: datetime) -> str:
    return at.isoformat(timespec="microseconds")


def executor_of(events: Sequence[NewEvent]) -> str:
    """The executor that ends a run with ``events``, as their telemetry names it."""
    return next((e.telemetry.executor for e in events if e.telemetry is not None), "")


def result_text(result: Any) -> str:
    return "" if result is None else json.dumps(result, sort_keys=True)


def stored_payloads(events: Sequence[NewEvent]) -> tuple[list[str], list[Any]]:
    """The events' payloads as stored, and as a read gives them back."""
    pairs = [fastjson.stored(e.payload) for e in events]
    return [text for text, _ in pairs], [value for _, value in pairs]


def as_written(
    run_id: str, first_seq: int, events: Sequence[NewEvent], payloads: list[Any], at: datetime
) -> list[tuple[str, RunEvent]]:
    """Events as listeners hear them: the payloads as a read would give them back."""
    return [
        (run_id, RunEvent(first_seq + i, at, e.type, payload))
        for i, (e, payload) in enumerate(zip(events, payloads, strict=True))
    ]


def opened_events(run: Run, opening: StepCheckpoint) -> list[RunEvent]:
    """The events of a run just created with ``opening`` (``NewRun.opening``), as a read
    would return them: numbered from 1, stamped with the run's creation time."""
    return [
        RunEvent(seq, run.created_at, e.type, e.payload)
        for seq, e in enumerate(opening.events, start=1)
    ]
