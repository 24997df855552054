"""The tool-call journal: every call of a run, written before it runs (when it may act)
and when it ends, so that a resumed run never repeats a completed call; and the run's
history as a resuming executor reads it back."""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from dataplane.runstore.model import CallEntry, CallState, Checkpoint, ToolCallRecord
from dataplane.runstore.rows import result_text
from dataplane.runstore.schema import checkpoints, tool_calls
from storekit import prepared

_INSERT_CALL = tool_calls.insert()
_ENDED = (CallState.COMPLETED, CallState.FAILED, CallState.REFUSED, CallState.DENIED)
_WAITS = (CallState.STARTED, CallState.AWAITING_APPROVAL, CallState.OUTCOME_UNKNOWN)
RECORD_COLUMNS = (
    tool_calls.c.step,
    tool_calls.c.call_index,
    tool_calls.c.call_id,
    tool_calls.c.tool,
    tool_calls.c.arguments,
    tool_calls.c.state,
    tool_calls.c.result,
    tool_calls.c.error,
    tool_calls.c.attempts,
    tool_calls.c.started_at,
    tool_calls.c.finished_at,
)


@functools.cache
def _call_update_statement(columns: tuple[str, ...], started: bool) -> sa.Update:
    """Set ``columns`` of a journal entry (``k_run``, ``k_step``, ``k_index``); a start
    also counts an attempt."""
    values: dict[str, Any] = {
        c: sa.bindparam(f"v_{c}", type_=tool_calls.c[c].type) for c in columns
    }
    if started:
        values["attempts"] = tool_calls.c.attempts + 1
    return (
        tool_calls.update()
        .where(
            tool_calls.c.run_id == sa.bindparam("k_run"),
            tool_calls.c.step == sa.bindparam("k_step"),
            tool_calls.c.call_index == sa.bindparam("k_index"),
        )
        .values(values)
    )


def write_call(conn: Connection, run_id: str, entry: CallEntry, at: datetime) -> None:
    """The journal entry, inserted or brought up to date (its caller fences it)."""
    values: dict[str, Any] = {
        "state": entry.state.value,
        "result": result_text(entry.result),
        "error": entry.error,
    }
    started = entry.state is CallState.STARTED
    if entry.state in _WAITS:
        values["started_at"] = at  # for a call filed for a person: since when it waits
    elif entry.state in _ENDED:
        values["finished_at"] = at
    params = {f"v_{column}": value for column, value in values.items()}
    params.update(k_run=run_id, k_step=entry.step, k_index=entry.call_index)
    updated = prepared.run(conn, _call_update_statement(tuple(sorted(values)), started), params)
    if updated.rowcount == 0:
        prepared.run(
            conn,
            _INSERT_CALL,
            {
                "run_id": run_id,
                "step": entry.step,
                "call_index": entry.call_index,
                "call_id": entry.call_id,
                "tool": entry.tool,
                "arguments": json.dumps(entry.arguments, sort_keys=True),
                "started_at": None,
                "finished_at": None,
                **values,
                "attempts": 1 if started else 0,
            },
        )


def record_of(row: Any) -> ToolCallRecord:
    """A journal entry from its row (``RECORD_COLUMNS``)."""
    step, index, call_id, tool, args, state, result, error, attempts, started, finished = row
    return ToolCallRecord(
        step,
        index,
        call_id,
        tool,
        json.loads(args),
        CallState(state),
        json.loads(result) if result else None,
        error,
        attempts,
        started,
        finished,
    )


async def read_history(
    conn: AsyncConnection, run_id: str
) -> tuple[list[Checkpoint], list[ToolCallRecord]]:
    """The run's checkpoints in order, and its journal."""
    cps = await conn.execute(
        sa.select(
            checkpoints.c.seq, checkpoints.c.step, checkpoints.c.delta, checkpoints.c.created_at
        )
        .where(checkpoints.c.run_id == run_id)
        .order_by(checkpoints.c.seq)
    )
    calls = await conn.execute(
        sa.select(*RECORD_COLUMNS)
        .where(tool_calls.c.run_id == run_id)
        .order_by(tool_calls.c.step, tool_calls.c.call_index)
    )
    return (
        [Checkpoint(seq, step, json.loads(delta), at) for seq, step, delta, at in cps],
        [record_of(row) for row in calls],
    )
