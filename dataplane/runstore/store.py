"""The run store's operations. Every write by a lease holder is fenced: it applies only
while the run's fencing token is still the holder's, in the same transaction as the
write itself, so an executor that lost its lease can never overwrite the new holder."""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from dataplane import fastjson
from dataplane.runstore.errors import IdempotencyConflict, LeaseLost, RunNotFound
from dataplane.runstore.model import (
    CallEntry,
    CallState,
    Checkpoint,
    Lease,
    NewEvent,
    Run,
    RunEvent,
    RunState,
    StepCheckpoint,
    StopReason,
    ToolCallRecord,
    UnsettledModelCall,
    stopped,
)
from dataplane.runstore.schema import checkpoints, outbox, run_events, runs, tool_calls
from storekit import prepared
from storekit.database import Database
from storekit.loop import Uninterrupted

_RUN_COLUMNS = tuple(runs.c[name] for name in Run.__dataclass_fields__)

EventListener = Callable[[str, Sequence[RunEvent]], None]
"""Hears of a run's events once the transaction that wrote them has committed."""

_WRITTEN = "pilothouse.written_events"
"""Key of ``Connection.info`` under which a write transaction collects its events."""

T = TypeVar("T")

# The statements of every step, built once: building and keying a statement afresh costs
# more than running it.
_INSERT_RUN = runs.insert()
_INSERT_EVENT = run_events.insert()
_NEXT_EVENT_SEQ = sa.select(runs.c.next_event_seq, runs.c.tenant).where(
    runs.c.id == sa.bindparam("run_id")
)
_INSERT_CHECKPOINT = checkpoints.insert()
_INSERT_CALL = tool_calls.insert()
_INSERT_OUTBOX = outbox.insert()
_WAITING_FOR_A_PERSON = [CallState.AWAITING_APPROVAL.value, CallState.OUTCOME_UNKNOWN.value]


def _pg_inserts(source: str) -> str:
    """Common table expressions inserting a write's events (``types``, ``payloads``), their
    telemetry into the outbox (``o_ords``: which events, from 1; ``o_kinds``,
    ``o_payloads``, ``o_executors``) and checkpoints (``cp_steps``, ``cp_deltas``),
    numbered from the run's row as ``source`` (the update before them) returns it, its
    counters already advanced past them."""
    return f"""new_events AS (
        INSERT INTO run_events (run_id, seq, time, type, payload)
        SELECT :run, {source}.next_event_seq - :n_events + e.ord - 1, :now, e.type, e.payload
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
        INSERT INTO outbox (id, tenant, run_id, kind, type, payload, created_at, claimed_by,
            claim_expires_at, executor)
        SELECT :run || ':' || CAST({source}.next_event_seq - :n_events + o.ord - 1 AS text),
            {source}.tenant, :run, o.kind, o.type, o.payload, :now, '', NULL, o.executor
        FROM {source},
            unnest(CAST(:o_ords AS integer[]), CAST(:o_kinds AS text[]),
                CAST(:o_types AS text[]), CAST(:o_payloads AS text[]),
                CAST(:o_executors AS text[])) AS o(ord, kind, type, payload, executor)
    )"""


# Checkpoints on PostgreSQL in one statement: the fenced update of the run, its events,
# the checkpoints (``cp_steps``, ``cp_deltas``: one, or all that queued behind the run) and
# (when given) the journal entry of the step's last call.
# Nothing is written when the fence fails: every insert selects from the update's row.
_PG_CHECKPOINT = sa.text(
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
    ), {_pg_inserts("fenced")}, journal AS (
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


# A fenced end of a run on PostgreSQL in one statement: the last checkpoint (when
# ``n_checkpoints`` is 1), the run's end, its events and its audit record, whose payload
# is built from the ended row as ``RunStore._finish`` builds it on SQLite.
_PG_FINISH = sa.text(
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
    ), {_pg_inserts("ended")}, audit AS (
        INSERT INTO outbox (id, tenant, run_id, kind, type, payload, created_at, claimed_by,
            claim_expires_at, executor)
        SELECT :audit_id, tenant, :run, 'audit', 'run.stopped',
            CAST(jsonb_build_object(
                'run', CAST(:run AS text), 'agent', agent,
                'stop_reason', CAST(:reason AS text), 'detail', CAST(:detail AS text),
                'steps', step, 'usage', CAST(usage AS jsonb), 'attempts', attempts,
                'created_at', to_char(created_at AT TIME ZONE 'UTC',
                    'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
                'ended_at', CAST(:ended_iso AS text)
            ) AS text),
            :now, '', NULL, :executor
        FROM ended
    )
    SELECT next_event_seq FROM ended
    """
)


_RUN_COLUMNS_SQL = [c.name for c in runs.columns]

# A queued run on PostgreSQL, in one statement: the run and the telemetry that says so.
_PG_CREATE_QUEUED = sa.text(
    f"""
    WITH new_run AS (
        INSERT INTO runs ({", ".join(_RUN_COLUMNS_SQL)})
        VALUES ({", ".join(":" + c for c in _RUN_COLUMNS_SQL)})
        RETURNING tenant
    )
    INSERT INTO outbox (id, tenant, run_id, kind, type, payload, created_at, claimed_by,
        claim_expires_at, executor)
    SELECT :q_id, tenant, :id, 'run_queued', 'run_queued', :q_payload, :created_at, '',
        NULL, ''
    FROM new_run
    """
)


# A run created with its opening checkpoint on PostgreSQL, in one statement: the run, the
# checkpoint (number 1) and its events (numbered from 1), its counters set past them.
_PG_CREATE_OPENED = sa.text(
    f"""
    WITH new_run AS (
        INSERT INTO runs ({", ".join(_RUN_COLUMNS_SQL)})
        VALUES ({", ".join(":" + c for c in _RUN_COLUMNS_SQL)})
        RETURNING tenant, next_event_seq, next_checkpoint_seq
    ), {_pg_inserts("new_run")}
    SELECT next_event_seq FROM new_run
    """
)


@functools.cache
def _fence_statement(columns: tuple[str, ...]) -> sa.Update:
    """Set ``columns`` (parameters ``v_{column}``) on a run whose lease is still the
    holder's (``f_run``, ``f_token``, ``f_owner``), reserving ``n_events`` event numbers
    and ``n_checkpoints`` checkpoint numbers."""
    values: dict[str, Any] = {c: sa.bindparam(f"v_{c}", type_=runs.c[c].type) for c in columns}
    values["next_event_seq"] = runs.c.next_event_seq + sa.bindparam("n_events", type_=sa.Integer)
    values["next_checkpoint_seq"] = runs.c.next_checkpoint_seq + sa.bindparam(
        "n_checkpoints", type_=sa.Integer
    )
    return (
        runs.update()
        .where(
            runs.c.id == sa.bindparam("f_run"),
            runs.c.fencing_token == sa.bindparam("f_token"),
            runs.c.lease_owner == sa.bindparam("f_owner"),
            runs.c.state == RunState.RUNNING.value,
        )
        .values(values)
        .returning(
            runs.c.tenant,
            runs.c.next_event_seq,
            runs.c.next_checkpoint_seq,
            runs.c.cancel_requested,
        )
    )


@functools.cache
def _finish_statement(fenced: bool) -> sa.Update:
    """End a run that is not finished yet (``f_run``); ``fenced``: only if the lease is
    still the holder's (``f_token``, ``f_owner``). Returns what the audit record needs."""
    condition = runs.c.id == sa.bindparam("f_run")
    if fenced:
        condition = (
            condition
            & (runs.c.fencing_token == sa.bindparam("f_token"))
            & (runs.c.lease_owner == sa.bindparam("f_owner"))
        )
    now = sa.bindparam("v_now", type_=runs.c.updated_at.type)
    return (
        runs.update()
        .where(condition, runs.c.state != RunState.FINISHED.value)
        .values(
            state=RunState.FINISHED.value,
            stop_reason=sa.bindparam("v_stop_reason"),
            stop_detail=sa.bindparam("v_stop_detail"),
            final_answer=sa.bindparam("v_final_answer"),
            lease_owner="",
            lease_expires_at=None,
            ended_at=now,
            updated_at=now,
            model_call="",
            next_event_seq=sa.bindparam("v_next_event_seq"),
        )
        .returning(
            runs.c.tenant,
            runs.c.agent,
            runs.c.step,
            runs.c.usage,
            runs.c.attempts,
            runs.c.created_at,
        )
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


def _stored_payloads(events: Sequence[NewEvent]) -> tuple[list[str], list[Any]]:
    """The events' payloads as stored, and as a read gives them back."""
    pairs = [fastjson.stored(e.payload) for e in events]
    return [text for text, _ in pairs], [value for _, value in pairs]


def _as_written(
    run_id: str, first_seq: int, events: Sequence[NewEvent], payloads: list[Any], now: datetime
) -> list[tuple[str, RunEvent]]:
    """Events as listeners hear them: the payloads as a read would give them back."""
    return [
        (run_id, RunEvent(first_seq + i, now, e.type, payload))
        for i, (e, payload) in enumerate(zip(events, payloads, strict=True))
    ]


def _insert_checkpoint(
    conn: Connection, run_id: str, seq: int, step: int, token: int, delta_text: str, now: datetime
) -> None:
    prepared.run(
        conn,
        _INSERT_CHECKPOINT,
        {
            "run_id": run_id,
            "seq": seq,
            "step": step,
            "fencing_token": token,
            "delta": delta_text,
            "created_at": now,
        },
    )


def opened_events(run: Run, opening: StepCheckpoint) -> list[RunEvent]:
    """The events of a run just created with ``opening`` (``NewRun.opening``), as a read
    would return them: numbered from 1, stamped with the run's creation time."""
    return [
        RunEvent(seq, run.created_at, e.type, e.payload)
        for seq, e in enumerate(opening.events, start=1)
    ]


def _pg_event_params(events: Sequence[NewEvent], texts: list[str]) -> dict[str, Any]:
    """The parameters of ``_pg_inserts`` that carry the events and their telemetry."""
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


def _pg_write_params(
    lease: Lease, events: Sequence[NewEvent], texts: list[str], now: datetime
) -> dict[str, Any]:
    """The parameters of a fenced one-statement write that ``_pg_inserts`` and the fence
    read: the lease, the time, the events."""
    return {
        "run": lease.run_id,
        "token": lease.token,
        "owner": lease.owner,
        "now": now,
        **_pg_event_params(events, texts),
    }


def _result_text(result: Any) -> str:
    return "" if result is None else json.dumps(result, sort_keys=True)


@dataclass(frozen=True)
class _EncodedCheckpoint:
    """Checkpoints ready to write together: their texts encoded and their times fixed.
    ``steps`` and ``delta_texts`` have one entry per checkpoint; the run's step and usage
    become the last one's; ``events`` are all of theirs, in order."""

    lease: Lease
    steps: tuple[int, ...]
    delta_texts: tuple[str, ...]
    usage_text: str
    events: Sequence[NewEvent]
    call: CallEntry | None
    now: datetime
    expires: datetime
    model_call: str = ""
    """The run's model call in flight once this is written (``Run.model_call``)."""

    def params(self) -> dict[str, Any]:
        """The parameters ``_PG_CHECKPOINT`` and ``_PG_FINISH`` share."""
        return {
            "n_checkpoints": len(self.steps),
            "cp_steps": list(self.steps),
            "cp_deltas": list(self.delta_texts),
            "step": self.steps[-1],
            "usage": self.usage_text,
            "model_call": self.model_call,
        }


_NO_CHECKPOINT = {"n_checkpoints": 0, "cp_steps": [], "cp_deltas": [], "step": 0, "usage": ""}


@dataclass(frozen=True)
class _End:
    """How a run ends, and the events that say so."""

    reason: StopReason
    detail: str
    final_answer: str
    events: Sequence[NewEvent]


@dataclass(frozen=True)
class _Fenced:
    first_event_seq: int
    checkpoint_seq: int
    cancel_requested: bool


def _queued_record(values: dict[str, Any]) -> dict[str, Any]:
    """The outbox record saying a run was queued: it comes before all of the run's events
    (sequence 0), so any of them supersedes it in the control plane's run index."""
    return {
        "id": f"{values['id']}:0",
        "tenant": values["tenant"],
        "run_id": values["id"],
        "kind": "run_queued",
        "type": "run_queued",
        "payload": fastjson.dumps_text({"agent": values["agent"]}),
        "created_at": values["created_at"],
        "claimed_by": "",
        "claim_expires_at": None,
        "executor": "",
    }


def _executor_of(events: Sequence[NewEvent]) -> str:
    """The executor that ends a run with ``events``, as their telemetry names it."""
    return next((e.telemetry.executor for e in events if e.telemetry is not None), "")


def _now() -> datetime:
    return datetime.now(UTC)


def _run(row: Sequence[Any]) -> Run:
    values = dict(zip(Run.__dataclass_fields__, row, strict=True))
    values["state"] = RunState(values["state"])
    values["stop_reason"] = StopReason(values["stop_reason"])
    values["request"] = json.loads(values["request"])
    values["usage"] = json.loads(values["usage"])
    return Run(**values)


@dataclass(frozen=True)
class NewRun:
    tenant: str
    agent: str
    request: dict[str, Any]
    idempotency_key: str | None = None
    session_id: str = ""
    user_id: str = ""
    deadline_at: datetime | None = None
    queued: bool = True
    """False for a run its creating executor will start itself (it is created leased)."""
    opening: StepCheckpoint | None = None
    """For a run created leased: its first checkpoint (step 0: the opening messages and
    the ``run_started`` event), written with it. Its events are numbered from 1 and
    stamped with the run's ``created_at``."""
    model_call: UnsettledModelCall | None = None
    """For a run created leased: the first model call, announced with the run."""
    id: str = ""
    """The run's id, when its creator chose it (a UUID); "" for a new one."""


class RunStore:
    def __init__(
        self, db: Database, *, lease_ttl: timedelta = timedelta(seconds=15), max_attempts: int = 3
    ) -> None:
        """``lease_ttl``: how long a claim lasts without renewal. ``max_attempts``: how
        many times a run may be lost or failed before it is dead-lettered."""
        self._db = db
        self.lease_ttl = lease_ttl
        self.max_attempts = max_attempts
        self.listeners: list[EventListener] = []
        self._whole = Uninterrupted()

    async def _write(self, body: Callable[[Connection], T]) -> T:
        """Run ``body`` as one write transaction. The events it inserts go to the
        listeners once it has committed (never when it rolls back), so watchers on this
        executor need not read them back. Once started, the transaction runs to its end
        even if the caller is cancelled meanwhile, and its events are still heard."""
        written: list[tuple[str, RunEvent]] = []

        def transaction(conn: Connection) -> T:
            conn.info[_WRITTEN] = written
            try:
                return body(conn)
            finally:
                del conn.info[_WRITTEN]

        return await self._shielded(self._db.write(transaction), written)

    async def _shielded(self, work: Awaitable[T], written: list[tuple[str, RunEvent]]) -> T:
        """Run ``work`` to its end whatever happens to the caller; once it has succeeded,
        tell the listeners of the events it wrote."""

        def publish(done: asyncio.Future[T]) -> None:
            if done.cancelled() or done.exception() is not None:
                return
            by_run: dict[str, list[RunEvent]] = {}
            for run_id, event in written:
                by_run.setdefault(run_id, []).append(event)
            for run_id, events in by_run.items():
                for listener in self.listeners:
                    listener(run_id, events)

        return await self._whole.run(work, publish)

    async def drain(self) -> None:
        """Wait for the writes still running for callers that were cancelled."""
        await self._whole.drain()

    @staticmethod
    def _insert_events(
        conn: Connection,
        run_id: str,
        tenant: str,
        first_seq: int,
        events: Sequence[NewEvent],
        now: datetime,
    ) -> None:
        """Insert the events numbered from ``first_seq``, and their telemetry."""
        if not events:
            return
        texts, payloads = _stored_payloads(events)
        prepared.run(
            conn,
            _INSERT_EVENT,
            [
                {
                    "run_id": run_id,
                    "seq": first_seq + i,
                    "time": now,
                    "type": e.type,
                    "payload": text,
                }
                for i, (e, text) in enumerate(zip(events, texts, strict=True))
            ],
        )
        outbound = [
            {
                "id": f"{run_id}:{first_seq + i}",
                "tenant": tenant,
                "run_id": run_id,
                "kind": e.telemetry.kind,
                "type": e.type,
                "payload": fastjson.dumps_text(e.telemetry.fields),
                "created_at": now,
                "claimed_by": "",
                "claim_expires_at": None,
                "executor": e.telemetry.executor,
            }
            for i, e in enumerate(events)
            if e.telemetry is not None
        ]
        if outbound:
            prepared.run(conn, _INSERT_OUTBOX, outbound)
        written = conn.info.get(_WRITTEN)
        if written is not None:
            written.extend(_as_written(run_id, first_seq, events, payloads, now))

    # -- creating and reading ----------------------------------------------------------

    async def create(self, new: NewRun, *, owner: str = "") -> tuple[Run, Lease | None, bool]:
        """Create a run; with ``new.queued`` False it is created claimed by ``owner``.

        With an idempotency key already used in the tenant, returns the existing run
        (and no lease) instead: the third value says whether this call created it.
        """
        now = _now()
        run_id = new.id or str(uuid.uuid4())
        leased = not new.queued
        expires = now + self.lease_ttl
        values: dict[str, Any] = {
            "id": run_id,
            "tenant": new.tenant,
            "agent": new.agent,
            "state": (RunState.RUNNING if leased else RunState.QUEUED).value,
            "stop_reason": "",
            "stop_detail": "",
            "request": fastjson.dumps_text(new.request, sort_keys=True),
            "idempotency_key": new.idempotency_key,
            "session_id": new.session_id,
            "user_id": new.user_id,
            "step": 0,
            "usage": "{}",
            "final_answer": "",
            "attempts": 0,
            "lease_owner": owner if leased else "",
            "lease_expires_at": expires if leased else None,
            "fencing_token": 1 if leased else 0,
            "available_at": now,
            "deadline_at": new.deadline_at,
            "cancel_requested": False,
            "next_event_seq": 1,
            "next_checkpoint_seq": 1,
            "created_at": now,
            "updated_at": now,
            "ended_at": None,
            "model_call": new.model_call.text() if leased and new.model_call else "",
        }
        opening = new.opening if leased else None
        if opening is not None:
            values["usage"] = fastjson.dumps_text(opening.usage, sort_keys=True)
            values["next_event_seq"] = 1 + len(opening.events)
            values["next_checkpoint_seq"] = 2
        try:
            if self._db.dialect == "postgresql":
                # One statement, committed on its own: no BEGIN and COMMIT round trips.
                texts, payloads = _stored_payloads(opening.events if opening else [])
                written = _as_written(run_id, 1, opening.events, payloads, now) if opening else []
                await self._shielded(self._insert_alone(values, opening, texts), written)
            else:
                await self._write(lambda conn: self._insert_run(conn, values, opening))
        except IntegrityError:
            if new.idempotency_key is None:
                raise
            existing = await self.find_by_idempotency_key(new.tenant, new.idempotency_key)
            if existing is None:
                raise
            if existing.agent != new.agent:
                raise IdempotencyConflict(
                    f"idempotency key {new.idempotency_key!r} was used for {existing.agent}"
                ) from None
            return existing, None, False
        run = _run(tuple(values[name] for name in Run.__dataclass_fields__))
        lease = Lease(run_id, owner, 1, expires) if leased else None
        return run, lease, True

    def _insert_run(
        self, conn: Connection, values: dict[str, Any], opening: StepCheckpoint | None
    ) -> None:
        prepared.run(conn, _INSERT_RUN, values)
        if values["state"] == RunState.QUEUED.value:
            prepared.run(conn, _INSERT_OUTBOX, _queued_record(values))
        if opening is None:
            return
        run_id, now = values["id"], values["created_at"]
        delta = fastjson.dumps_text(opening.delta, sort_keys=True)
        _insert_checkpoint(conn, run_id, 1, opening.step, 1, delta, now)
        self._insert_events(conn, run_id, values["tenant"], 1, opening.events, now)

    async def _insert_alone(
        self, values: dict[str, Any], opening: StepCheckpoint | None, texts: list[str]
    ) -> None:
        async with self._db.single_statement() as conn:
            if values["state"] == RunState.QUEUED.value:
                record = _queued_record(values)
                await conn.execute(
                    _PG_CREATE_QUEUED,
                    {**values, "q_id": record["id"], "q_payload": record["payload"]},
                )
                return
            if opening is None:
                await conn.execute(_INSERT_RUN, values)
                return
            await conn.execute(
                _PG_CREATE_OPENED,
                {
                    **values,
                    "run": values["id"],
                    "token": values["fencing_token"],
                    "now": values["created_at"],
                    **_pg_event_params(opening.events, texts),
                    "n_checkpoints": 1,
                    "cp_steps": [opening.step],
                    "cp_deltas": [fastjson.dumps_text(opening.delta, sort_keys=True)],
                },
            )

    async def get(self, run_id: str) -> Run:
        async with self._db.single_statement() as conn:
            row = (await conn.execute(sa.select(*_RUN_COLUMNS).where(runs.c.id == run_id))).first()
        if row is None:
            raise RunNotFound(run_id)
        return _run(row)

    async def find_by_idempotency_key(self, tenant: str, key: str) -> Run | None:
        async with self._db.single_statement() as conn:
            row = (
                await conn.execute(
                    sa.select(*_RUN_COLUMNS).where(
                        runs.c.tenant == tenant, runs.c.idempotency_key == key
                    )
                )
            ).first()
        return None if row is None else _run(row)

    async def list_runs(
        self, tenant: str, *, before: tuple[datetime, str] | None, limit: int
    ) -> list[Run]:
        """A tenant's runs, newest first; ``before`` continues after a (created_at, id)."""
        query = sa.select(*_RUN_COLUMNS).where(runs.c.tenant == tenant)
        if before is not None:
            created, run_id = before
            query = query.where(
                sa.or_(
                    runs.c.created_at < created,
                    sa.and_(runs.c.created_at == created, runs.c.id < run_id),
                )
            )
        query = query.order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit)
        async with self._db.single_statement() as conn:
            return [_run(r) for r in await conn.execute(query)]

    async def history(self, run_id: str) -> tuple[list[Checkpoint], list[ToolCallRecord]]:
        """Everything a resuming executor needs: the checkpoints in order and the journal."""
        async with self._db.snapshot() as conn:
            cps = await conn.execute(
                sa.select(
                    checkpoints.c.seq,
                    checkpoints.c.step,
                    checkpoints.c.delta,
                    checkpoints.c.created_at,
                )
                .where(checkpoints.c.run_id == run_id)
                .order_by(checkpoints.c.seq)
            )
            calls = await conn.execute(
                sa.select(
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
                .where(tool_calls.c.run_id == run_id)
                .order_by(tool_calls.c.step, tool_calls.c.call_index)
            )
            return (
                [Checkpoint(seq, step, json.loads(delta), at) for seq, step, delta, at in cps],
                [
                    ToolCallRecord(
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
                    for (
                        step,
                        index,
                        call_id,
                        tool,
                        args,
                        state,
                        result,
                        error,
                        attempts,
                        started,
                        finished,
                    ) in calls
                ],
            )

    async def events(self, run_id: str, *, after: int = 0, limit: int = 1000) -> list[RunEvent]:
        query = (
            sa.select(run_events.c.seq, run_events.c.time, run_events.c.type, run_events.c.payload)
            .where(run_events.c.run_id == run_id, run_events.c.seq > after)
            .order_by(run_events.c.seq)
            .limit(limit)
        )
        async with self._db.single_statement() as conn:
            return [
                RunEvent(seq, t, kind, json.loads(p))
                for seq, t, kind, p in await conn.execute(query)
            ]

    # -- claiming ----------------------------------------------------------------------

    async def claim(self, owner: str, *, run_id: str | None = None) -> tuple[Lease, Run] | None:
        """Claim a run: ``run_id``, or else the oldest claimable one (queued and due, or
        running under an expired lease: orphaned). A run lost ``max_attempts`` times is
        dead-lettered instead. None when there is nothing to claim."""
        now = _now()
        expires = now + self.lease_ttl

        def claim(conn: Connection) -> tuple[Lease, Run] | None:
            row = self._claimable(conn, now, run_id)
            if row is None:
                return None
            run = _run(row)
            orphaned = run.state is RunState.RUNNING
            attempts = run.attempts + (1 if orphaned else 0)
            # An orphaned run became claimable when its holder's lease expired.
            available = run.lease_expires_at if orphaned else run.available_at
            assert available is not None
            settled, usage = self._settle_lost_call(conn, run)
            if attempts >= self.max_attempts:
                why = f"lost or failed {attempts} times"
                self._finish(
                    conn,
                    run.id,
                    run.fencing_token,
                    StopReason.DEAD_LETTERED,
                    why,
                    "",
                    now,
                    [*settled, stopped(StopReason.DEAD_LETTERED, why, usage, steps=run.step)],
                    fenced=False,
                )
                return None
            next_event_seq = self._append_events(conn, run.id, settled, now) if settled else None
            claimed = replace(
                run,
                state=RunState.RUNNING,
                lease_owner=owner,
                lease_expires_at=expires,
                fencing_token=run.fencing_token + 1,
                attempts=attempts,
                available_at=available,
                updated_at=now,
                usage=usage,
                model_call="",
            )
            conn.execute(
                runs.update()
                .where(runs.c.id == run.id)
                .values(
                    state=claimed.state.value,
                    lease_owner=owner,
                    lease_expires_at=expires,
                    fencing_token=claimed.fencing_token,
                    attempts=attempts,
                    available_at=available,
                    updated_at=now,
                    **({"next_event_seq": next_event_seq} if next_event_seq else {}),
                )
            )
            return Lease(run.id, owner, claimed.fencing_token, expires), claimed

        return await self._write(claim)

    @staticmethod
    def _settle_lost_call(conn: Connection, run: Run) -> tuple[list[NewEvent], dict[str, Any]]:
        """Settle the model call ``run``'s last holder announced and never recorded (it
        died, or gave the run back mid-call): its event and usage record at the call's
        worst case, marked estimated, and the run's usage with it (written here). No
        events and the usage unchanged when no call was in flight."""
        if not run.model_call:
            return [], run.usage
        lost = UnsettledModelCall.parse(run.model_call)
        conn.execute(
            runs.update()
            .where(runs.c.id == run.id)
            .values(usage=fastjson.dumps_text(lost.usage, sort_keys=True), model_call="")
        )
        return [lost.event()], lost.usage

    @staticmethod
    def _claimable(conn: Connection, now: datetime, run_id: str | None) -> Sequence[Any] | None:
        due = sa.or_(
            sa.and_(runs.c.state == RunState.QUEUED.value, runs.c.available_at <= now),
            sa.and_(runs.c.state == RunState.RUNNING.value, runs.c.lease_expires_at < now),
        )
        query = sa.select(*_RUN_COLUMNS).where(due)
        if run_id is not None:
            query = query.where(runs.c.id == run_id)
        else:
            query = query.order_by(runs.c.available_at).limit(1)
        if conn.dialect.name == "postgresql":
            # Claimers skip the rows others are claiming instead of queueing behind them.
            query = query.with_for_update(skip_locked=True)
        return conn.execute(query).first()

    async def renew(self, lease: Lease) -> Lease:
        """Extend a lease while a long step runs; LeaseLost once it is no longer ours."""
        now = _now()
        expires = now + self.lease_ttl
        fenced = await self._write(
            lambda conn: self._fence(conn, lease, lease_expires_at=expires, updated_at=now)
        )
        return Lease(lease.run_id, lease.owner, lease.token, expires, fenced.cancel_requested)

    def _fence(
        self,
        conn: Connection,
        lease: Lease,
        *,
        events: Sequence[NewEvent] = (),
        checkpoints: int = 0,
        now: datetime | None = None,
        **values: Any,
    ) -> _Fenced:
        """Apply ``values`` to the run if the lease is still current (LeaseLost if not),
        reserving sequence numbers for ``events`` (inserted here) and ``checkpoints``, in
        one statement."""
        params = {f"v_{column}": value for column, value in values.items()}
        params.update(f_run=lease.run_id, f_token=lease.token, f_owner=lease.owner)
        params["n_events"] = len(events)
        params["n_checkpoints"] = checkpoints
        rows = prepared.run(conn, _fence_statement(tuple(sorted(values))), params).rows
        row = rows[0] if rows else None
        if row is None:
            raise LeaseLost(f"run {lease.run_id}: token {lease.token} is no longer current")
        tenant, next_event, next_checkpoint, cancel = row
        first = int(next_event) - len(events)
        self._insert_events(conn, lease.run_id, tenant, first, events, now or _now())
        return _Fenced(first, int(next_checkpoint) - checkpoints, bool(cancel))

    # -- fenced writes of a lease holder ---------------------------------------------

    async def checkpoint(
        self,
        lease: Lease,
        *,
        step: int,
        delta: dict[str, Any],
        usage: dict[str, Any],
        events: Sequence[NewEvent] = (),
        call: CallEntry | None = None,
        preceding: Sequence[StepCheckpoint] = (),
        model_call: UnsettledModelCall | None = None,
    ) -> Lease:
        """Record what a step (or a phase of one) added, with the run's usage so far and
        its events, in one fenced transaction that also renews the lease. ``call``: the
        journal entry of the step's last tool call, written in the same transaction.
        ``preceding``: checkpoints not written yet that come before this one (those
        queued behind the run, such as the step's model reply), written with it.
        ``model_call``: the model call about to be made (none is in flight otherwise)."""
        parts = [*preceding, StepCheckpoint(step, delta, usage, events)]
        return await self._checkpoint(self._encoded(lease, parts, call, model_call))

    async def announce_model_call(self, lease: Lease, model_call: UnsettledModelCall) -> Lease:
        """Record, fenced, the model call about to be made, where no checkpoint goes with
        it (``checkpoint``'s ``model_call`` otherwise); renews the lease."""
        now = _now()
        expires = now + self.lease_ttl
        text = model_call.text()
        fenced = await self._write(
            lambda conn: self._fence(
                conn, lease, model_call=text, lease_expires_at=expires, updated_at=now
            )
        )
        return Lease(lease.run_id, lease.owner, lease.token, expires, fenced.cancel_requested)

    async def _checkpoint(self, cp: _EncodedCheckpoint) -> Lease:
        if self._db.dialect == "postgresql":
            written: list[tuple[str, RunEvent]] = []
            fenced = await self._shielded(self._checkpoint_in_one_statement(cp, written), written)
        else:
            fenced = await self._write(lambda conn: self._write_checkpoint(conn, cp))
        lease = cp.lease
        return Lease(lease.run_id, lease.owner, lease.token, cp.expires, fenced.cancel_requested)

    def _encoded(
        self,
        lease: Lease,
        checkpoints: Sequence[StepCheckpoint],
        call: CallEntry | None = None,
        model_call: UnsettledModelCall | None = None,
    ) -> _EncodedCheckpoint:
        now = _now()
        return _EncodedCheckpoint(
            lease,
            tuple(c.step for c in checkpoints),
            tuple(fastjson.dumps_text(c.delta, sort_keys=True) for c in checkpoints),
            fastjson.dumps_text(checkpoints[-1].usage, sort_keys=True),
            [e for c in checkpoints for e in c.events],
            call,
            now,
            now + self.lease_ttl,
            model_call.text() if model_call is not None else "",
        )

    def _write_checkpoint(self, conn: Connection, cp: _EncodedCheckpoint) -> _Fenced:
        fenced = self._fence(
            conn,
            cp.lease,
            events=cp.events,
            checkpoints=len(cp.steps),
            now=cp.now,
            step=cp.steps[-1],
            usage=cp.usage_text,
            model_call=cp.model_call,
            lease_expires_at=cp.expires,
            updated_at=cp.now,
        )
        for i, (step, delta_text) in enumerate(zip(cp.steps, cp.delta_texts, strict=True)):
            _insert_checkpoint(
                conn,
                cp.lease.run_id,
                fenced.checkpoint_seq + i,
                step,
                cp.lease.token,
                delta_text,
                cp.now,
            )
        if cp.call is not None:
            self._write_call(conn, cp.lease.run_id, cp.call, cp.now)
        return fenced

    async def _checkpoint_in_one_statement(
        self, cp: _EncodedCheckpoint, written: list[tuple[str, RunEvent]]
    ) -> _Fenced:
        """The checkpoints as one statement, committed on its own: on PostgreSQL each
        statement is a round trip, and a transaction of five would cost five more."""
        lease, call, events = cp.lease, cp.call, cp.events
        texts, payloads = _stored_payloads(events)
        params: dict[str, Any] = {
            **cp.params(),
            **_pg_write_params(lease, events, texts, cp.now),
            "running": RunState.RUNNING.value,
            "expires": cp.expires,
            "has_call": call is not None,
            "c_step": call.step if call else 0,
            "c_index": call.call_index if call else 0,
            "c_id": call.call_id if call else "",
            "c_tool": call.tool if call else "",
            "c_args": json.dumps(call.arguments, sort_keys=True) if call else "",
            "c_state": call.state.value if call else "",
            "c_result": _result_text(call.result) if call else "",
            "c_error": call.error if call else "",
        }
        async with self._db.single_statement() as conn:
            row = await prepared.pg_fetchrow(conn, _PG_CHECKPOINT, params)
        if row is None:
            raise LeaseLost(f"run {lease.run_id}: token {lease.token} is no longer current")
        next_event, next_checkpoint, cancel = row
        first = int(next_event) - len(events)
        written.extend(_as_written(lease.run_id, first, events, payloads, cp.now))
        return _Fenced(first, int(next_checkpoint) - len(cp.steps), bool(cancel))

    def _append_events(
        self, conn: Connection, run_id: str, events: Sequence[NewEvent], now: datetime
    ) -> int:
        """Insert events after the run's last; the next free sequence number."""
        seq, tenant = prepared.run(conn, _NEXT_EVENT_SEQ, {"run_id": run_id}).rows[0]
        seq = int(seq)
        self._insert_events(conn, run_id, tenant, seq, events, now)
        return seq + len(events)

    async def record_call(
        self,
        lease: Lease,
        *,
        step: int,
        call_index: int,
        call_id: str,
        tool: str,
        arguments: dict[str, Any],
        state: CallState,
        result: Any = None,
        error: str = "",
        events: Sequence[NewEvent] = (),
    ) -> None:
        """Write a tool call's journal entry (before it runs, and when it ends), fenced."""
        now = _now()
        entry = CallEntry(step, call_index, call_id, tool, arguments, state, result, error)

        def tx(conn: Connection) -> None:
            self._fence(conn, lease, events=events, now=now, updated_at=now)
            self._write_call(conn, lease.run_id, entry, now)

        await self._write(tx)

    @staticmethod
    def _write_call(conn: Connection, run_id: str, entry: CallEntry, now: datetime) -> None:
        values: dict[str, Any] = {
            "state": entry.state.value,
            "result": _result_text(entry.result),
            "error": entry.error,
        }
        started = entry.state is CallState.STARTED
        if started or entry.state in (CallState.AWAITING_APPROVAL, CallState.OUTCOME_UNKNOWN):
            values["started_at"] = now  # for a call filed for a person: since when it waits
        elif entry.state in (
            CallState.COMPLETED,
            CallState.FAILED,
            CallState.REFUSED,
            CallState.DENIED,
        ):
            values["finished_at"] = now
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

    async def finish(
        self,
        lease: Lease,
        reason: StopReason,
        *,
        detail: str = "",
        final_answer: str = "",
        events: Sequence[NewEvent] = (),
        checkpoint: StepCheckpoint | None = None,
    ) -> None:
        """End the run with its stop reason, fenced. ``checkpoint``: a last checkpoint
        (the reply that ended the run), written in the same write as the end."""
        last = self._encoded(lease, [checkpoint]) if checkpoint is not None else None
        if self._db.dialect == "postgresql":
            end = _End(reason, detail, final_answer, events)
            written: list[tuple[str, RunEvent]] = []
            await self._shielded(self._finish_in_one_statement(lease, end, last, written), written)
            return

        def tx(conn: Connection) -> None:
            if last is not None:
                self._write_checkpoint(conn, last)
            self._finish(
                conn,
                lease.run_id,
                lease.token,
                reason,
                detail,
                final_answer,
                _now(),
                events,
                fenced=True,
                owner=lease.owner,
            )

        await self._write(tx)

    async def _finish_in_one_statement(
        self,
        lease: Lease,
        end: _End,
        last: _EncodedCheckpoint | None,
        written: list[tuple[str, RunEvent]],
    ) -> None:
        """The fenced end of a run, with its last checkpoint, as one statement committed
        on its own (``_PG_FINISH``): a transaction of its parts would be six round trips."""
        now = last.now if last is not None else _now()
        events = [*(last.events if last is not None else ()), *end.events]
        texts, payloads = _stored_payloads(events)
        params: dict[str, Any] = {
            **_pg_write_params(lease, events, texts, now),
            "finished": RunState.FINISHED.value,
            "reason": end.reason.value,
            "detail": end.detail,
            "answer": end.final_answer,
            "ended_iso": now.isoformat(timespec="microseconds"),
            **(last.params() if last is not None else _NO_CHECKPOINT),
            "audit_id": str(uuid.uuid4()),
            "executor": _executor_of(end.events),
        }
        async with self._db.single_statement() as conn:
            row = await prepared.pg_fetchrow(conn, _PG_FINISH, params)
        if row is None:
            raise LeaseLost(f"run {lease.run_id}: could not finish it with token {lease.token}")
        first = int(row[0]) - len(events)
        written.extend(_as_written(lease.run_id, first, events, payloads, now))

    def _finish(
        self,
        conn: Connection,
        run_id: str,
        token: int,
        reason: StopReason,
        detail: str,
        final_answer: str,
        now: datetime,
        events: Sequence[NewEvent],
        *,
        fenced: bool,
        owner: str = "",
    ) -> None:
        seq = self._append_events(conn, run_id, events, now)
        row = conn.execute(
            _finish_statement(fenced),
            {
                "f_run": run_id,
                "f_token": token,
                "f_owner": owner,
                "v_stop_reason": reason.value,
                "v_stop_detail": detail,
                "v_final_answer": final_answer,
                "v_now": now,
                "v_next_event_seq": seq,
            },
        ).first()
        if row is None:
            raise LeaseLost(f"run {run_id}: could not finish it with token {token}")
        tenant, agent, steps, usage, attempts, created_at = row
        prepared.run(
            conn,
            _INSERT_OUTBOX,
            {
                "id": str(uuid.uuid4()),
                "tenant": tenant,
                "run_id": run_id,
                "kind": "audit",
                "type": "run.stopped",
                "payload": json.dumps(
                    {
                        "run": run_id,
                        "agent": agent,
                        "stop_reason": reason.value,
                        "detail": detail,
                        "steps": steps,
                        "usage": json.loads(usage),
                        "attempts": attempts,
                        "created_at": created_at.isoformat(timespec="microseconds"),
                        "ended_at": now.isoformat(timespec="microseconds"),
                    },
                    sort_keys=True,
                ),
                "created_at": now,
                "claimed_by": "",
                "claim_expires_at": None,
                "executor": _executor_of(events),
            },
        )

    async def audit(
        self,
        tenant: str,
        action: str,
        resource: str,
        details: dict[str, Any],
        *,
        executor: str,
    ) -> None:
        """Put an audit record of a decision about no run (a run refused before it was
        created) in the outbox, for the control plane's audit log."""
        now = _now()
        row = {
            "id": str(uuid.uuid4()),
            "tenant": tenant,
            "run_id": "",
            "kind": "audit",
            "type": action,
            "payload": json.dumps({**details, "resource": resource}, sort_keys=True),
            "created_at": now,
            "claimed_by": "",
            "claim_expires_at": None,
            "executor": executor,
        }
        await self._write(lambda conn: prepared.run(conn, _INSERT_OUTBOX, row))

    async def wait_for_approval(self, lease: Lease, events: Sequence[NewEvent] = ()) -> None:
        """Pause the run on an approval: the lease is released, no executor holds it."""
        now = _now()

        def tx(conn: Connection) -> None:
            self._fence(
                conn,
                lease,
                events=events,
                now=now,
                state=RunState.WAITING_APPROVAL.value,
                lease_owner="",
                lease_expires_at=None,
                updated_at=now,
            )

        await self._write(tx)

    async def release(
        self, lease: Lease, *, retry_after: timedelta, error: str, executor: str = ""
    ) -> Run:
        """Give a run back after a failure: queued again after ``retry_after``, counted as
        a failed attempt; dead-lettered once it has failed ``max_attempts`` times.
        ``executor``: the node id of the holder, for the telemetry of a dead letter."""
        now = _now()

        def tx(conn: Connection) -> None:
            lost = _run(
                conn.execute(sa.select(*_RUN_COLUMNS).where(runs.c.id == lease.run_id)).one()
            )
            attempts = lost.attempts + 1
            if attempts >= self.max_attempts:
                why = f"failed {attempts} times; last: {error}"
                settled, usage = self._settle_lost_call(conn, lost)
                self._finish(
                    conn,
                    lease.run_id,
                    lease.token,
                    StopReason.DEAD_LETTERED,
                    why,
                    "",
                    now,
                    [
                        *settled,
                        stopped(
                            StopReason.DEAD_LETTERED,
                            why,
                            usage,
                            steps=lost.step,
                            executor=executor,
                        ),
                    ],
                    fenced=True,
                    owner=lease.owner,
                )
            else:
                self._fence(
                    conn,
                    lease,
                    state=RunState.QUEUED.value,
                    lease_owner="",
                    lease_expires_at=None,
                    attempts=attempts,
                    available_at=now + retry_after,
                    updated_at=now,
                )

        await self._write(tx)
        return await self.get(lease.run_id)

    async def hand_back(self, lease: Lease, *, delay: timedelta = timedelta(0)) -> None:
        """Give a run back untouched (the executor is shutting down, or cannot start it
        now): queued for any executor after ``delay``, not counted as a failure."""
        now = _now()

        def tx(conn: Connection) -> None:
            self._fence(
                conn,
                lease,
                state=RunState.QUEUED.value,
                lease_owner="",
                lease_expires_at=None,
                available_at=now + delay,
                updated_at=now,
            )

        await self._write(tx)

    async def waiting_calls(self, *, limit: int = 100) -> list[tuple[Run, ToolCallRecord]]:
        """Calls that wait for a person, with their runs (to file the requests)."""
        query = (
            sa.select(
                *_RUN_COLUMNS,
                tool_calls.c.step,
                tool_calls.c.call_index,
                tool_calls.c.call_id,
                tool_calls.c.tool,
                tool_calls.c.arguments,
                tool_calls.c.state,
                tool_calls.c.error,
                tool_calls.c.attempts,
            )
            .join(tool_calls, tool_calls.c.run_id == runs.c.id)
            .where(
                runs.c.state == RunState.WAITING_APPROVAL.value,
                tool_calls.c.state.in_(_WAITING_FOR_A_PERSON),
            )
            .order_by(runs.c.updated_at)
            .limit(limit)
        )
        n = len(_RUN_COLUMNS)
        async with self._db.single_statement() as conn:
            rows = list(await conn.execute(query))
        return [
            (
                _run(r[:n]),
                ToolCallRecord(
                    r[n],
                    r[n + 1],
                    r[n + 2],
                    r[n + 3],
                    json.loads(r[n + 4]),
                    CallState(r[n + 5]),
                    None,
                    r[n + 6],
                    r[n + 7],
                    None,
                    None,
                ),
            )
            for r in rows
        ]

    async def decide_call(
        self,
        run_id: str,
        step: int,
        call_index: int,
        *,
        state: CallState,
        note: str = "",
        result: Any = None,
        attempt: int = 0,
    ) -> bool:
        """Record a person's decision on a waiting call and queue its run for any executor.
        ``state``: APPROVED or DENIED for a call waiting to run; with ``attempt`` (the
        attempt whose outcome is unknown), APPROVED (run it again) or RESOLVED (``result``
        and ``note``, as ``CallState.RESOLVED`` says) for a call whose outcome is unknown.
        False when there was nothing waiting (decided already, another attempt, no such
        call)."""
        now = _now()
        waiting = tool_calls.c.state == (
            CallState.OUTCOME_UNKNOWN.value if attempt else CallState.AWAITING_APPROVAL.value
        )
        if attempt:
            waiting = waiting & (tool_calls.c.attempts == attempt)
        values: dict[str, Any] = {"state": state.value, "error": note}
        if state is not CallState.APPROVED:
            values["finished_at"] = now
        if state is CallState.RESOLVED:
            values["result"] = _result_text(result)

        def tx(conn: Connection) -> bool:
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
                .values(state=RunState.QUEUED.value, available_at=now, updated_at=now)
            )
            return True

        return await self._write(tx)

    # -- from outside the lease --------------------------------------------------------

    async def make_claimable(self, run_id: str, events: Sequence[NewEvent] = ()) -> bool:
        """A decision came for a run waiting on approval: queue it for any executor.
        False when the run was not waiting."""
        now = _now()

        def tx(conn: Connection) -> bool:
            result = conn.execute(
                runs.update()
                .where(runs.c.id == run_id, runs.c.state == RunState.WAITING_APPROVAL.value)
                .values(state=RunState.QUEUED.value, available_at=now, updated_at=now)
            )
            if result.rowcount != 1:
                return False
            seq = self._append_events(conn, run_id, events, now)
            conn.execute(runs.update().where(runs.c.id == run_id).values(next_event_seq=seq))
            return True

        return await self._write(tx)

    async def request_cancel(self, run_id: str) -> Run:
        """Ask a run to stop. A run no executor holds (queued, waiting) stops at once; a
        running one stops at its holder's next check."""
        now = _now()

        def tx(conn: Connection) -> None:
            row = (conn.execute(sa.select(*_RUN_COLUMNS).where(runs.c.id == run_id))).first()
            if row is None:
                raise RunNotFound(run_id)
            run = _run(row)
            if run.state in (RunState.QUEUED, RunState.WAITING_APPROVAL):
                settled, usage = self._settle_lost_call(conn, run)
                self._finish(
                    conn,
                    run_id,
                    run.fencing_token,
                    StopReason.CANCELLED,
                    "cancelled",
                    "",
                    now,
                    [*settled, stopped(StopReason.CANCELLED, "cancelled", usage, steps=run.step)],
                    fenced=False,
                )
            elif run.state is RunState.RUNNING:
                conn.execute(runs.update().where(runs.c.id == run_id).values(cancel_requested=True))

        await self._write(tx)
        return await self.get(run_id)
