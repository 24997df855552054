"""The run store's writes on PostgreSQL: each one statement committed on its own, since
every statement is a round trip (a transaction of a checkpoint's five would cost five
more). Nothing is written when a fence fails: every insert selects from the update's row.
The outbox rows and the ``run.stopped`` audit payload are built in SQL from the column
and field lists of ``rows.py``, as its Python builders build them on SQLite."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from dataplane import fastjson
from dataplane.runstore.checkpoints import NO_CHECKPOINT, EncodedCheckpoint
from dataplane.runstore.errors import LeaseLost
from dataplane.runstore.fencing import Fenced
from dataplane.runstore.lifecycle import End
from dataplane.runstore.model import Lease, NewEvent, RunState, StepCheckpoint
from dataplane.runstore.rows import (
    OUTBOX_COLUMNS,
    RUN_COLUMN_NAMES,
    STOPPED_AUDIT_FIELDS,
    as_written,
    executor_of,
    iso,
    now,
    queued_record,
    result_text,
    stored_payloads,
)
from dataplane.runstore.schema import runs
from dataplane.runstore.writer import Writer, Written
from storekit import prepared

_INSERT_RUN = runs.insert()
_INSERT_OUTBOX = f"INSERT INTO outbox ({', '.join(OUTBOX_COLUMNS)})"


def _outbox_values(**sql: str) -> str:
    """An outbox row's values as SQL expressions, in ``OUTBOX_COLUMNS``' order; unclaimed."""
    sql = {"claimed_by": "''", "claim_expires_at": "NULL", **sql}
    return ", ".join(sql[column] for column in OUTBOX_COLUMNS)


def _inserts(source: str) -> str:
    """Common table expressions inserting a write's events (``types``, ``payloads``), their
    telemetry into the outbox (``o_ords``: which events, from 1; ``o_kinds``,
    ``o_payloads``, ``o_executors``) and checkpoints (``cp_steps``, ``cp_deltas``),
    numbered from the run's row as ``source`` (the update before them) returns it, its
    counters already advanced past them."""
    event_seq = f"{source}.next_event_seq - :n_events"
    return f"""new_events AS (
        INSERT INTO run_events (run_id, seq, time, type, payload)
        SELECT :run, {event_seq} + e.ord - 1, :now, e.type, e.payload
        FROM {source},
            unnest(CAST(:types AS text[]), CAST(:payloads AS text[]))
                WITH ORDINALITY AS e(type, payload, ord)
    ), new_checkpoints AS (
        INSERT INTO checkpoints (run_id, seq, step, fencing_token, delta, created_at)
        SELECT :run, {source}.next_checkpoint_seq - :n_checkpoints + c.ord - 1, c.step,
            :token, c.delta, :now
        FROM {source},
            unnest(CAST(:cp_steps AS integer[]), CAST(:cp_deltas AS text[]))
                WITH ORDINALITY AS c(step, delta, ord)
    ), new_outbox AS (
        {_INSERT_OUTBOX}
        SELECT {
        _outbox_values(
            id=f":run || ':' || CAST({event_seq} + o.ord - 1 AS text)",
            tenant=f"{source}.tenant",
            run_id=":run",
            kind="o.kind",
            type="o.type",
            payload="o.payload",
            created_at=":now",
            executor="o.executor",
        )
    }
        FROM {source},
            unnest(CAST(:o_ords AS integer[]), CAST(:o_kinds AS text[]),
                CAST(:o_types AS text[]), CAST(:o_payloads AS text[]),
                CAST(:o_executors AS text[])) AS o(ord, kind, type, payload, executor)
    )"""


# Checkpoints in one statement: the fenced update of the run, its events, the checkpoints
# (``cp_steps``, ``cp_deltas``: one, or all that queued behind the run) and (when given)
# the journal entry of the step's last call.
_CHECKPOINT = sa.text(
    f"""
    WITH fenced AS (
        UPDATE runs SET
            step = :step, usage = :usage, lease_expires_at = :expires, updated_at = :now,
            model_call = :model_call,
            next_event_seq = next_event_seq + :n_events,
            next_checkpoint_seq = next_checkpoint_seq + :n_checkpoints
        WHERE id = :run AND fencing_token = :token AND lease_owner = :owner
            AND state = :running
        RETURNING tenant, next_event_seq, next_checkpoint_seq, cancel_requested
    ), {_inserts("fenced")}, journal AS (
        INSERT INTO tool_calls (run_id, step, call_index, call_id, tool, arguments, state,
            result, error, attempts, started_at, finished_at)
        SELECT :run, :c_step, :c_index, :c_id, :c_tool, :c_args, :c_state, :c_result,
            :c_error, 0, NULL, :now
        FROM fenced WHERE :has_call
        ON CONFLICT (run_id, step, call_index) DO UPDATE SET state = excluded.state,
            result = excluded.result, error = excluded.error, finished_at = excluded.finished_at
    )
    SELECT next_event_seq, next_checkpoint_seq, cancel_requested FROM fenced
    """
)

_STOPPED_AUDIT = {
    "run": "CAST(:run AS text)",
    "agent": "agent",
    "stop_reason": "CAST(:reason AS text)",
    "detail": "CAST(:detail AS text)",
    "steps": "step",
    "usage": "CAST(usage AS jsonb)",
    "attempts": "attempts",
    "created_at": """to_char(created_at AT TIME ZONE 'UTC',
        'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')""",
    "ended_at": "CAST(:ended_iso AS text)",
}
"""The ``run.stopped`` audit payload's fields as SQL over the ended run's row."""
_STOPPED_AUDIT_PAYLOAD = "jsonb_build_object({})".format(
    ", ".join(f"'{name}', {_STOPPED_AUDIT[name]}" for name in STOPPED_AUDIT_FIELDS)
)

# A fenced end of a run in one statement: the last checkpoint (when ``n_checkpoints`` is
# 1), the run's end, its events and its audit record.
_FINISH = sa.text(
    f"""
    WITH ended AS (
        UPDATE runs SET
            step = CASE WHEN :n_checkpoints > 0 THEN :step ELSE step END,
            usage = CASE WHEN :n_checkpoints > 0 THEN :usage ELSE usage END,
            state = :finished, stop_reason = :reason, stop_detail = :detail,
            final_answer = :answer, lease_owner = '', lease_expires_at = NULL,
            ended_at = :now, updated_at = :now, model_call = '',
            next_event_seq = next_event_seq + :n_events,
            next_checkpoint_seq = next_checkpoint_seq + :n_checkpoints
        WHERE id = :run AND fencing_token = :token AND lease_owner = :owner
            AND state != :finished
        RETURNING tenant, agent, step, usage, attempts, created_at, next_event_seq,
            next_checkpoint_seq
    ), {_inserts("ended")}, audit AS (
        {_INSERT_OUTBOX}
        SELECT {
        _outbox_values(
            id=":audit_id",
            tenant="tenant",
            run_id=":run",
            kind="'audit'",
            type="'run.stopped'",
            payload=f"CAST({_STOPPED_AUDIT_PAYLOAD} AS text)",
            created_at=":now",
            executor=":executor",
        )
    }
        FROM ended
    )
    SELECT next_event_seq FROM ended
    """
)

_RUN_VALUES = ", ".join(":" + c for c in RUN_COLUMN_NAMES)

# A queued run in one statement: the run and the telemetry that says so.
_CREATE_QUEUED = sa.text(
    f"""
    WITH new_run AS (
        INSERT INTO runs ({", ".join(RUN_COLUMN_NAMES)}) VALUES ({_RUN_VALUES})
        RETURNING tenant
    )
    {_INSERT_OUTBOX}
    SELECT {
        _outbox_values(
            id=":q_id",
            tenant="tenant",
            run_id=":id",
            kind="'run_queued'",
            type="'run_queued'",
            payload=":q_payload",
            created_at=":created_at",
            executor="''",
        )
    }
    FROM new_run
    """
)

# A run created with its opening checkpoint in one statement: the run, the checkpoint
# (number 1) and its events (numbered from 1), its counters set past them.
_CREATE_OPENED = sa.text(
    f"""
    WITH new_run AS (
        INSERT INTO runs ({", ".join(RUN_COLUMN_NAMES)}) VALUES ({_RUN_VALUES})
        RETURNING tenant, next_event_seq, next_checkpoint_seq
    ), {_inserts("new_run")}
    SELECT next_event_seq FROM new_run
    """
)


class PostgresWrites:
    def __init__(self, writer: Writer) -> None:
        self._writer = writer
        self._db = writer.db

    async def create(self, values: dict[str, Any], opening: StepCheckpoint | None) -> None:
        texts, payloads = stored_payloads(opening.events if opening else [])
        run_id, at = values["id"], values["created_at"]
        written = as_written(run_id, 1, opening.events, payloads, at) if opening else []
        await self._writer.shielded(self._create(values, opening, texts), written)

    async def _create(
        self, values: dict[str, Any], opening: StepCheckpoint | None, texts: list[str]
    ) -> None:
        async with self._db.single_statement() as conn:
            if values["state"] == RunState.QUEUED.value:
                record = queued_record(values)
                params = {**values, "q_id": record["id"], "q_payload": record["payload"]}
                await conn.execute(_CREATE_QUEUED, params)
            elif opening is None:
                await conn.execute(_INSERT_RUN, values)
            else:
                await conn.execute(
                    _CREATE_OPENED,
                    {
                        **values,
                        "run": values["id"],
                        "token": values["fencing_token"],
                        "now": values["created_at"],
                        **_event_params(opening.events, texts),
                        "n_checkpoints": 1,
                        "cp_steps": [opening.step],
                        "cp_deltas": [fastjson.dumps_text(opening.delta, sort_keys=True)],
                    },
                )

    async def checkpoint(self, cp: EncodedCheckpoint) -> Fenced:
        written: Written = []
        return await self._writer.shielded(self._checkpoint(cp, written), written)

    async def _checkpoint(self, cp: EncodedCheckpoint, written: Written) -> Fenced:
        lease, call, events = cp.lease, cp.call, cp.events
        texts, payloads = stored_payloads(events)
        params: dict[str, Any] = {
            **cp.params(),
            **_write_params(lease, events, texts, cp.at),
            "running": RunState.RUNNING.value,
            "expires": cp.expires,
            "has_call": call is not None,
            "c_step": call.step if call else 0,
            "c_index": call.call_index if call else 0,
            "c_id": call.call_id if call else "",
            "c_tool": call.tool if call else "",
            "c_args": json.dumps(call.arguments, sort_keys=True) if call else "",
            "c_state": call.state.value if call else "",
            "c_result": result_text(call.result) if call else "",
            "c_error": call.error if call else "",
        }
        async with self._db.single_statement() as conn:
            row = await prepared.pg_fetchrow(conn, _CHECKPOINT, params)
        if row is None:
            raise LeaseLost(f"run {lease.run_id}: token {lease.token} is no longer current")
        next_event, next_checkpoint, cancel = row
        first = int(next_event) - len(events)
        written.extend(as_written(lease.run_id, first, events, payloads, cp.at))
        return Fenced(first, int(next_checkpoint) - len(cp.steps), bool(cancel))

    async def finish(self, lease: Lease, end: End, last: EncodedCheckpoint | None) -> None:
        written: Written = []
        await self._writer.shielded(self._finish(lease, end, last, written), written)

    async def _finish(
        self, lease: Lease, end: End, last: EncodedCheckpoint | None, written: Written
    ) -> None:
        at = last.at if last is not None else now()
        events = [*(last.events if last is not None else ()), *end.events]
        texts, payloads = stored_payloads(events)
        params: dict[str, Any] = {
            **_write_params(lease, events, texts, at),
            "finished": RunState.FINISHED.value,
            "reason": end.reason.value,
            "detail": end.detail,
            "answer": end.final_answer,
            "ended_iso": iso(at),
            **(last.params() if last is not None else NO_CHECKPOINT),
            "audit_id": str(uuid.uuid4()),
            "executor": executor_of(end.events),
        }
        async with self._db.single_statement() as conn:
            row = await prepared.pg_fetchrow(conn, _FINISH, params)
        if row is None:
            raise LeaseLost(f"run {lease.run_id}: could not finish it with token {lease.token}")
        first = int(row[0]) - len(events)
        written.extend(as_written(lease.run_id, first, events, payloads, at))


def _event_params(events: Sequence[NewEvent], texts: list[str]) -> dict[str, Any]:
    """The parameters of ``_inserts`` that carry the events and their telemetry."""
    outbound = [(i, e.telemetry, e.type) for i, e in enumerate(events, 1) if e.telemetry]
    return {
        "n_events": len(events),
        "types": [e.type for e in events],
        "payloads": texts,
        "o_ords": [i for i, _, _ in outbound],
        "o_kinds": [t.kind for _, t, _ in outbound],
        "o_types": [type_ for _, _, type_ in outbound],
        "o_payloads": [fastjson.dumps_text(t.fields) for _, t, _ in outbound],
        "o_executors": [t.executor for _, t, _ in outbound],
    }


def _write_params(
    lease: Lease, events: Sequence[NewEvent], texts: list[str], at: datetime
) -> dict[str, Any]:
    """The parameters of a fenced one-statement write that ``_inserts`` and the fence
    read: the lease, the time, the events."""
    return {
        "run": lease.run_id,
        "token": lease.token,
        "owner": lease.owner,
        "now": at,
        **_event_params(events, texts),
    }
