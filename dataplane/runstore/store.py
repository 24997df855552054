"""The run store: one interface over both backends. Every write by a lease holder is
fenced: it applies only while the run's fencing token is still the holder's, in the same
transaction as the write itself, so an executor that lost its lease can never overwrite
the new holder.

What each write does lives with its part of the store: ``lifecycle.py`` (creating,
claiming, giving back, ending), ``checkpoints.py``, ``journal.py``, ``approvals.py``;
``fencing.py`` the fence and the events it writes; ``rows.py`` every row and payload
built. The writes whose shape differs by backend are ``sqlite.py`` and ``postgres.py``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from dataplane.runstore import approvals, lifecycle
from dataplane.runstore.backend import Backend
from dataplane.runstore.checkpoints import encode
from dataplane.runstore.errors import IdempotencyConflict, RunNotFound
from dataplane.runstore.fencing import fence, insert_outbox
from dataplane.runstore.journal import read_history, write_call
from dataplane.runstore.lifecycle import End, NewRun
from dataplane.runstore.model import (
    CallEntry,
    CallState,
    Checkpoint,
    Lease,
    NewEvent,
    Run,
    RunEvent,
    StepCheckpoint,
    StopReason,
    ToolCallRecord,
    UnsettledModelCall,
)
from dataplane.runstore.postgres import PostgresWrites
from dataplane.runstore.rows import RUN_COLUMNS, audit_row, now, opened_events, run_of
from dataplane.runstore.schema import run_events, runs
from dataplane.runstore.sqlite import SqliteWrites
from dataplane.runstore.writer import EventListener, Writer
from storekit.database import Database

__all__ = ["EventListener", "NewRun", "RunStore", "opened_events"]


class RunStore:
    def __init__(
        self, db: Database, *, lease_ttl: timedelta = timedelta(seconds=15), max_attempts: int = 3
    ) -> None:
        """``lease_ttl``: how long a claim lasts without renewal. ``max_attempts``: how
        many times a run may be lost or failed before it is dead-lettered."""
        self._db = db
        self.lease_ttl = lease_ttl
        self.max_attempts = max_attempts
        self._writer = Writer(db)
        self.listeners: list[EventListener] = self._writer.listeners
        """Hear of a run's events once the write that wrote them has committed."""
        self._backend: Backend = (
            PostgresWrites(self._writer)
            if db.dialect == "postgresql"
            else SqliteWrites(self._writer)
        )
        self._write = self._writer.write

    async def drain(self) -> None:
        """Wait for the writes still running for callers that were cancelled."""
        await self._writer.drain()

    # -- creating and reading ----------------------------------------------------------

    async def create(self, new: NewRun, *, owner: str = "") -> tuple[Run, Lease | None, bool]:
        """Create a run; with ``new.queued`` False it is created claimed by ``owner``.

        With an idempotency key already used in the tenant, returns the existing run
        (and no lease) instead: the third value says whether this call created it.
        """
        at = now()
        run_id = new.id or str(uuid.uuid4())
        expires = at + self.lease_ttl
        values = lifecycle.run_values(new, run_id, owner, at, expires)
        try:
            await self._backend.create(values, None if new.queued else new.opening)
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
        run = run_of(tuple(values[name] for name in Run.__dataclass_fields__))
        lease = None if new.queued else Lease(run_id, owner, 1, expires)
        return run, lease, True

    async def get(self, run_id: str) -> Run:
        async with self._db.single_statement() as conn:
            row = (await conn.execute(sa.select(*RUN_COLUMNS).where(runs.c.id == run_id))).first()
        if row is None:
            raise RunNotFound(run_id)
        return run_of(row)

    async def find_by_idempotency_key(self, tenant: str, key: str) -> Run | None:
        query = sa.select(*RUN_COLUMNS).where(
            runs.c.tenant == tenant, runs.c.idempotency_key == key
        )
        async with self._db.single_statement() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else run_of(row)

    async def list_runs(
        self, tenant: str, *, before: tuple[datetime, str] | None, limit: int
    ) -> list[Run]:
        """A tenant's runs, newest first; ``before`` continues after a (created_at, id)."""
        query = sa.select(*RUN_COLUMNS).where(runs.c.tenant == tenant)
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
            return [run_of(r) for r in await conn.execute(query)]

    async def history(self, run_id: str) -> tuple[list[Checkpoint], list[ToolCallRecord]]:
        """Everything a resuming executor needs: the checkpoints in order and the journal."""
        async with self._db.snapshot() as conn:
            return await read_history(conn, run_id)

    async def events(self, run_id: str, *, after: int = 0, limit: int = 1000) -> list[RunEvent]:
        query = (
            sa.select(run_events.c.seq, run_events.c.time, run_events.c.type, run_events.c.payload)
            .where(run_events.c.run_id == run_id, run_events.c.seq > after)
            .order_by(run_events.c.seq)
            .limit(limit)
        )
        async with self._db.single_statement() as conn:
            rows = await conn.execute(query)
            return [RunEvent(seq, t, kind, json.loads(p)) for seq, t, kind, p in rows]

    # -- claiming ----------------------------------------------------------------------

    async def claim(self, owner: str, *, run_id: str | None = None) -> tuple[Lease, Run] | None:
        """Claim a run: ``run_id``, or else the oldest claimable one (queued and due, or
        running under an expired lease: orphaned). A run lost ``max_attempts`` times is
        dead-lettered instead. None when there is nothing to claim."""
        at = now()
        expires = at + self.lease_ttl
        return await self._write(
            lambda conn: lifecycle.claim(conn, owner, run_id, at, expires, self.max_attempts)
        )

    async def renew(self, lease: Lease) -> Lease:
        """Extend a lease while a long step runs; LeaseLost once it is no longer ours."""
        return await self._fenced_renewal(lease)

    async def announce_model_call(self, lease: Lease, model_call: UnsettledModelCall) -> Lease:
        """Record, fenced, the model call about to be made, where no checkpoint goes with
        it (``checkpoint``'s ``model_call`` otherwise); renews the lease."""
        return await self._fenced_renewal(lease, model_call=model_call.text())

    async def _fenced_renewal(self, lease: Lease, **values: Any) -> Lease:
        at = now()
        expires = at + self.lease_ttl
        fenced = await self._write(
            lambda conn: fence(conn, lease, lease_expires_at=expires, updated_at=at, **values)
        )
        return Lease(lease.run_id, lease.owner, lease.token, expires, fenced.cancel_requested)

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
        cp = encode(lease, parts, self.lease_ttl, call, model_call)
        fenced = await self._backend.checkpoint(cp)
        return Lease(lease.run_id, lease.owner, lease.token, cp.expires, fenced.cancel_requested)

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
        at = now()
        entry = CallEntry(step, call_index, call_id, tool, arguments, state, result, error)

        def tx(conn: Connection) -> None:
            fence(conn, lease, events=events, at=at, updated_at=at)
            write_call(conn, lease.run_id, entry, at)

        await self._write(tx)

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
        last = encode(lease, [checkpoint], self.lease_ttl) if checkpoint is not None else None
        await self._backend.finish(lease, End(reason, detail, final_answer, events), last)

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
        row = audit_row(tenant, "", action, {**details, "resource": resource}, now(), executor)
        await self._write(lambda conn: insert_outbox(conn, row))

    async def wait_for_approval(self, lease: Lease, events: Sequence[NewEvent] = ()) -> None:
        """Pause the run on an approval: the lease is released, no executor holds it."""
        at = now()
        await self._write(lambda conn: approvals.wait_for_approval(conn, lease, events, at))

    async def release(
        self, lease: Lease, *, retry_after: timedelta, error: str, executor: str = ""
    ) -> Run:
        """Give a run back after a failure: queued again after ``retry_after``, counted as
        a failed attempt; dead-lettered once it has failed ``max_attempts`` times.
        ``executor``: the node id of the holder, for the telemetry of a dead letter."""
        at = now()
        await self._write(
            lambda conn: lifecycle.release(
                conn,
                lease,
                at,
                retry_after=retry_after,
                error=error,
                executor=executor,
                max_attempts=self.max_attempts,
            )
        )
        return await self.get(lease.run_id)

    async def hand_back(self, lease: Lease, *, delay: timedelta = timedelta(0)) -> None:
        """Give a run back untouched (the executor is shutting down, or cannot start it
        now): queued for any executor after ``delay``, not counted as a failure."""
        at = now()
        await self._write(lambda conn: lifecycle.hand_back(conn, lease, at, delay))

    # -- the approval queue ------------------------------------------------------------

    async def waiting_calls(self, *, limit: int = 100) -> list[tuple[Run, ToolCallRecord]]:
        """Calls that wait for a person, with their runs (to file the requests)."""
        async with self._db.single_statement() as conn:
            return await approvals.waiting_calls(conn, limit)

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
        at = now()
        return await self._write(
            lambda conn: approvals.decide_call(
                conn,
                run_id,
                step,
                call_index,
                at,
                state=state,
                note=note,
                result=result,
                attempt=attempt,
            )
        )

    # -- from outside the lease --------------------------------------------------------

    async def make_claimable(self, run_id: str, events: Sequence[NewEvent] = ()) -> bool:
        """A decision came for a run waiting on approval: queue it for any executor.
        False when the run was not waiting."""
        at = now()
        return await self._write(lambda conn: lifecycle.make_claimable(conn, run_id, events, at))

    async def request_cancel(self, run_id: str) -> Run:
        """Ask a run to stop. A run no executor holds (queued, waiting) stops at once; a
        running one stops at its holder's next check."""
        at = now()
        await self._write(lambda conn: lifecycle.request_cancel(conn, run_id, at))
        return await self.get(run_id)
