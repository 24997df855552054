"""The approval queue: runs paused on a call that waits for a person (to approve it, or
to say what became of a call whose outcome is unknown), and that person's decision."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from dataplane.runstore.fencing import fence
from dataplane.runstore.journal import RECORD_COLUMNS, record_of
from dataplane.runstore.model import CallState, Lease, NewEvent, Run, RunState, ToolCallRecord
from dataplane.runstore.rows import RUN_COLUMNS, result_text, run_of
from dataplane.runstore.schema import runs, tool_calls

_WAITING_FOR_A_PERSON = [CallState.AWAITING_APPROVAL.value, CallState.OUTCOME_UNKNOWN.value]


def wait_for_approval(
    conn: Connection, lease: Lease, events: Sequence[NewEvent], at: datetime
) -> None:
    """Pause the run: its lease is released, no executor holds it."""
    fence(
        conn,
        lease,
        events=events,
        at=at,
        state=RunState.WAITING_APPROVAL.value,
        lease_owner="",
        lease_expires_at=None,
        updated_at=at,
    )


async def waiting_calls(conn: AsyncConnection, limit: int) -> list[tuple[Run, ToolCallRecord]]:
    query = (
        sa.select(*RUN_COLUMNS, *RECORD_COLUMNS)
        .join(tool_calls, tool_calls.c.run_id == runs.c.id)
        .where(
            runs.c.state == RunState.WAITING_APPROVAL.value,
            tool_calls.c.state.in_(_WAITING_FOR_A_PERSON),
        )
        .order_by(runs.c.updated_at)
        .limit(limit)
    )
    n = len(RUN_COLUMNS)
    return [(run_of(r[:n]), record_of(r[n:])) for r in await conn.execute(query)]


def decide_call(
    conn: Connection,
    run_id: str,
    step: int,
    call_index: int,
    at: datetime,
    *,
    state: CallState,
    note: str,
    result: Any,
    attempt: int,
) -> bool:
    """Record the decision and queue the run; False when nothing was waiting."""
    waiting = tool_calls.c.state == (
        CallState.OUTCOME_UNKNOWN.value if attempt else CallState.AWAITING_APPROVAL.value
    )
    if attempt:
        waiting = waiting & (tool_calls.c.attempts == attempt)
    values: dict[str, Any] = {"state": state.value, "error": note}
    if state is not CallState.APPROVED:
        values["finished_at"] = at
    if state is CallState.RESOLVED:
        values["result"] = result_text(result)
    updated = conn.execute(
        tool_calls.update()
        .where(
            tool_calls.c.run_id == run_id,
            tool_calls.c.step == step,
            tool_calls.c.call_index == call_index,
            waiting,
        )
        .values(**values)
    )
    if updated.rowcount != 1:
        return False
    conn.execute(
        runs.update()
        .where(runs.c.id == run_id, runs.c.state == RunState.WAITING_APPROVAL.value)
        .values(state=RunState.QUEUED.value, available_at=at, updated_at=at)
    )
    return True
