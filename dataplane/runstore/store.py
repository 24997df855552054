"""The run store's operations. Every write by a lease holder is fenced: it applies only
while the run's fencing token is still the holder's, in the same transaction as the
write itself, so an executor that lost its lease can never overwrite the new holder."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from dataplane.runstore.errors import IdempotencyConflict, LeaseLost, RunNotFound
from dataplane.runstore.model import (
    CallState,
    Checkpoint,
    Lease,
    NewEvent,
    Run,
    RunEvent,
    RunState,
    StopReason,
    ToolCallRecord,
    stopped,
)
from dataplane.runstore.schema import checkpoints, run_events, runs, tool_calls
from storekit.database import Database

_RUN_COLUMNS = tuple(runs.c[name] for name in Run.__dataclass_fields__)


@dataclass(frozen=True)
class _Fenced:
    first_event_seq: int
    checkpoint_seq: int
    cancel_requested: bool


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


class RunStore:
    def __init__(
        self, db: Database, *, lease_ttl: timedelta = timedelta(seconds=15), max_attempts: int = 3
    ) -> None:
        """``lease_ttl``: how long a claim lasts without renewal. ``max_attempts``: how
        many times a run may be lost or failed before it is dead-lettered."""
        self._db = db
        self.lease_ttl = lease_ttl
        self.max_attempts = max_attempts

    # -- creating and reading ----------------------------------------------------------

    async def create(self, new: NewRun, *, owner: str = "") -> tuple[Run, Lease | None, bool]:
        """Create a run; with ``new.queued`` False it is created claimed by ``owner``.

        With an idempotency key already used in the tenant, returns the existing run
        (and no lease) instead: the third value says whether this call created it.
        """
        now = _now()
        run_id = str(uuid.uuid4())
        leased = not new.queued
        expires = now + self.lease_ttl
        values: dict[str, Any] = {
            "id": run_id,
            "tenant": new.tenant,
            "agent": new.agent,
            "state": (RunState.RUNNING if leased else RunState.QUEUED).value,
            "stop_reason": "",
            "stop_detail": "",
            "request": json.dumps(new.request, sort_keys=True),
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
        }
        try:
            async with self._db.transaction() as conn:
                await conn.execute(runs.insert().values(**values))
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
        run = await self.get(run_id)
        lease = Lease(run_id, owner, 1, expires) if leased else None
        return run, lease, True

    async def get(self, run_id: str) -> Run:
        async with self._db.single_read() as conn:
            row = (await conn.execute(sa.select(*_RUN_COLUMNS).where(runs.c.id == run_id))).first()
        if row is None:
            raise RunNotFound(run_id)
        return _run(row)

    async def find_by_idempotency_key(self, tenant: str, key: str) -> Run | None:
        async with self._db.single_read() as conn:
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
        async with self._db.single_read() as conn:
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
        async with self._db.single_read() as conn:
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
        async with self._db.transaction() as conn:
            row = await self._claimable(conn, now, run_id)
            if row is None:
                return None
            run = _run(row)
            orphaned = run.state is RunState.RUNNING
            attempts = run.attempts + (1 if orphaned else 0)
            if attempts >= self.max_attempts:
                why = f"lost or failed {attempts} times"
                await self._finish(
                    conn,
                    run.id,
                    run.fencing_token,
                    StopReason.DEAD_LETTERED,
                    why,
                    "",
                    now,
                    [stopped(StopReason.DEAD_LETTERED, why)],
                    fenced=False,
                )
                return None
            token = run.fencing_token + 1
            expires = now + self.lease_ttl
            await conn.execute(
                runs.update()
                .where(runs.c.id == run.id)
                .values(
                    state=RunState.RUNNING.value,
                    lease_owner=owner,
                    lease_expires_at=expires,
                    fencing_token=token,
                    attempts=attempts,
                    updated_at=now,
                )
            )
        claimed = await self.get(run.id)
        return Lease(run.id, owner, token, expires), claimed

    async def _claimable(
        self, conn: AsyncConnection, now: datetime, run_id: str | None
    ) -> Sequence[Any] | None:
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
        return (await conn.execute(query)).first()

    async def renew(self, lease: Lease) -> Lease:
        """Extend a lease while a long step runs; LeaseLost once it is no longer ours."""
        now = _now()
        expires = now + self.lease_ttl
        async with self._db.transaction() as conn:
            fenced = await self._fence(conn, lease, lease_expires_at=expires, updated_at=now)
        return Lease(lease.run_id, lease.owner, lease.token, expires, fenced.cancel_requested)

    async def _fence(
        self,
        conn: AsyncConnection,
        lease: Lease,
        *,
        events: Sequence[NewEvent] = (),
        checkpoint: bool = False,
        now: datetime | None = None,
        **values: Any,
    ) -> _Fenced:
        """Apply ``values`` to the run if the lease is still current (LeaseLost if not),
        reserving sequence numbers for ``events`` (inserted here) and a checkpoint, in
        one statement."""
        values["next_event_seq"] = runs.c.next_event_seq + len(events)
        if checkpoint:
            values["next_checkpoint_seq"] = runs.c.next_checkpoint_seq + 1
        row = (
            await conn.execute(
                runs.update()
                .where(
                    runs.c.id == lease.run_id,
                    runs.c.fencing_token == lease.token,
                    runs.c.lease_owner == lease.owner,
                    runs.c.state == RunState.RUNNING.value,
                )
                .values(**values)
                .returning(
                    runs.c.next_event_seq, runs.c.next_checkpoint_seq, runs.c.cancel_requested
                )
            )
        ).first()
        if row is None:
            raise LeaseLost(f"run {lease.run_id}: token {lease.token} is no longer current")
        next_event, next_checkpoint, cancel = row
        first = int(next_event) - len(events)
        if events:
            await conn.execute(
                run_events.insert(),
                [
                    {
                        "run_id": lease.run_id,
                        "seq": first + i,
                        "time": now or _now(),
                        "type": e.type,
                        "payload": json.dumps(e.payload, sort_keys=True, default=str),
                    }
                    for i, e in enumerate(events)
                ],
            )
        return _Fenced(first, int(next_checkpoint) - (1 if checkpoint else 0), bool(cancel))

    # -- fenced writes of a lease holder ---------------------------------------------

    async def checkpoint(
        self,
        lease: Lease,
        *,
        step: int,
        delta: dict[str, Any],
        usage: dict[str, Any],
        events: Sequence[NewEvent] = (),
    ) -> Lease:
        """Record what a step (or a phase of one) added, with the run's usage so far and
        its events, in one fenced transaction that also renews the lease."""
        now = _now()
        expires = now + self.lease_ttl
        async with self._db.transaction() as conn:
            fenced = await self._fence(
                conn,
                lease,
                events=events,
                checkpoint=True,
                now=now,
                step=step,
                usage=json.dumps(usage, sort_keys=True),
                lease_expires_at=expires,
                updated_at=now,
            )
            await conn.execute(
                checkpoints.insert().values(
                    run_id=lease.run_id,
                    seq=fenced.checkpoint_seq,
                    step=step,
                    fencing_token=lease.token,
                    delta=json.dumps(delta, sort_keys=True),
                    created_at=now,
                )
            )
        return Lease(lease.run_id, lease.owner, lease.token, expires, fenced.cancel_requested)

    async def _append_events(
        self,
        conn: AsyncConnection,
        lease: Lease | None,
        events: Sequence[NewEvent],
        now: datetime,
        run_id: str | None = None,
    ) -> int:
        """Insert events after the run's last; the next free sequence number."""
        target = run_id or (lease.run_id if lease else "")
        seq = int(
            (
                await conn.execute(sa.select(runs.c.next_event_seq).where(runs.c.id == target))
            ).scalar_one()
        )
        if events:
            await conn.execute(
                run_events.insert(),
                [
                    {
                        "run_id": target,
                        "seq": seq + i,
                        "time": now,
                        "type": e.type,
                        "payload": json.dumps(e.payload, sort_keys=True, default=str),
                    }
                    for i, e in enumerate(events)
                ],
            )
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
        async with self._db.transaction() as conn:
            await self._fence(conn, lease, events=events, now=now, updated_at=now)
            key = (
                (tool_calls.c.run_id == lease.run_id)
                & (tool_calls.c.step == step)
                & (tool_calls.c.call_index == call_index)
            )
            values: dict[str, Any] = {
                "state": state.value,
                "result": "" if result is None else json.dumps(result, sort_keys=True),
                "error": error,
            }
            if state is CallState.STARTED:
                values["started_at"] = now
                values["attempts"] = tool_calls.c.attempts + 1
            elif state in (CallState.COMPLETED, CallState.FAILED, CallState.DENIED):
                values["finished_at"] = now
            updated = await conn.execute(tool_calls.update().where(key).values(**values))
            if updated.rowcount == 0:
                first = {"started_at": None, "finished_at": None, **values}
                first["attempts"] = 1 if state is CallState.STARTED else 0
                await conn.execute(
                    tool_calls.insert().values(
                        run_id=lease.run_id,
                        step=step,
                        call_index=call_index,
                        call_id=call_id,
                        tool=tool,
                        arguments=json.dumps(arguments, sort_keys=True),
                        **first,
                    )
                )

    async def finish(
        self,
        lease: Lease,
        reason: StopReason,
        *,
        detail: str = "",
        final_answer: str = "",
        events: Sequence[NewEvent] = (),
    ) -> None:
        """End the run with its stop reason, fenced."""
        async with self._db.transaction() as conn:
            await self._finish(
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

    async def _finish(
        self,
        conn: AsyncConnection,
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
        seq = await self._append_events(conn, None, events, now, run_id=run_id)
        condition = runs.c.id == run_id
        if fenced:
            condition = condition & (runs.c.fencing_token == token) & (runs.c.lease_owner == owner)
        result = await conn.execute(
            runs.update()
            .where(condition, runs.c.state != RunState.FINISHED.value)
            .values(
                state=RunState.FINISHED.value,
                stop_reason=reason.value,
                stop_detail=detail,
                final_answer=final_answer,
                lease_owner="",
                lease_expires_at=None,
                ended_at=now,
                updated_at=now,
                next_event_seq=seq,
            )
        )
        if result.rowcount != 1:
            raise LeaseLost(f"run {run_id}: could not finish it with token {token}")

    async def wait_for_approval(self, lease: Lease, events: Sequence[NewEvent] = ()) -> None:
        """Pause the run on an approval: the lease is released, no executor holds it."""
        now = _now()
        async with self._db.transaction() as conn:
            await self._fence(
                conn,
                lease,
                events=events,
                now=now,
                state=RunState.WAITING_APPROVAL.value,
                lease_owner="",
                lease_expires_at=None,
                updated_at=now,
            )

    async def release(self, lease: Lease, *, retry_after: timedelta, error: str) -> Run:
        """Give a run back after a failure: queued again after ``retry_after``, counted as
        a failed attempt; dead-lettered once it has failed ``max_attempts`` times."""
        now = _now()
        async with self._db.transaction() as conn:
            attempts = (
                int(
                    (
                        await conn.execute(
                            sa.select(runs.c.attempts).where(runs.c.id == lease.run_id)
                        )
                    ).scalar_one()
                )
                + 1
            )
            if attempts >= self.max_attempts:
                why = f"failed {attempts} times; last: {error}"
                await self._finish(
                    conn,
                    lease.run_id,
                    lease.token,
                    StopReason.DEAD_LETTERED,
                    why,
                    "",
                    now,
                    [stopped(StopReason.DEAD_LETTERED, why)],
                    fenced=True,
                    owner=lease.owner,
                )
            else:
                await self._fence(
                    conn,
                    lease,
                    state=RunState.QUEUED.value,
                    lease_owner="",
                    lease_expires_at=None,
                    attempts=attempts,
                    available_at=now + retry_after,
                    updated_at=now,
                )
        return await self.get(lease.run_id)

    async def hand_back(self, lease: Lease) -> None:
        """Give a run back untouched (the executor is shutting down): queued at once for
        another executor, not counted as a failure."""
        now = _now()
        async with self._db.transaction() as conn:
            await self._fence(
                conn,
                lease,
                state=RunState.QUEUED.value,
                lease_owner="",
                lease_expires_at=None,
                available_at=now,
                updated_at=now,
            )

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
            )
            .join(tool_calls, tool_calls.c.run_id == runs.c.id)
            .where(
                runs.c.state == RunState.WAITING_APPROVAL.value,
                tool_calls.c.state == CallState.AWAITING_APPROVAL.value,
            )
            .order_by(runs.c.updated_at)
            .limit(limit)
        )
        n = len(_RUN_COLUMNS)
        async with self._db.single_read() as conn:
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
                    CallState.AWAITING_APPROVAL,
                    None,
                    "",
                    0,
                    None,
                    None,
                ),
            )
            for r in rows
        ]

    async def decide_call(
        self, run_id: str, step: int, call_index: int, *, approved: bool, note: str = ""
    ) -> bool:
        """Record a person's decision on a waiting call and queue its run for any executor.
        False when there was nothing waiting (decided already, or no such call)."""
        now = _now()
        state = CallState.APPROVED if approved else CallState.DENIED
        async with self._db.transaction() as conn:
            updated = await conn.execute(
                tool_calls.update()
                .where(
                    tool_calls.c.run_id == run_id,
                    tool_calls.c.step == step,
                    tool_calls.c.call_index == call_index,
                    tool_calls.c.state == CallState.AWAITING_APPROVAL.value,
                )
                .values(state=state.value, error=note, finished_at=None if approved else now)
            )
            if updated.rowcount != 1:
                return False
            await conn.execute(
                runs.update()
                .where(runs.c.id == run_id, runs.c.state == RunState.WAITING_APPROVAL.value)
                .values(state=RunState.QUEUED.value, available_at=now, updated_at=now)
            )
        return True

    # -- from outside the lease --------------------------------------------------------

    async def make_claimable(self, run_id: str, events: Sequence[NewEvent] = ()) -> bool:
        """A decision came for a run waiting on approval: queue it for any executor.
        False when the run was not waiting."""
        now = _now()
        async with self._db.transaction() as conn:
            result = await conn.execute(
                runs.update()
                .where(runs.c.id == run_id, runs.c.state == RunState.WAITING_APPROVAL.value)
                .values(state=RunState.QUEUED.value, available_at=now, updated_at=now)
            )
            if result.rowcount != 1:
                return False
            seq = await self._append_events(conn, None, events, now, run_id=run_id)
            await conn.execute(runs.update().where(runs.c.id == run_id).values(next_event_seq=seq))
        return True

    async def request_cancel(self, run_id: str) -> Run:
        """Ask a run to stop. A run no executor holds (queued, waiting) stops at once; a
        running one stops at its holder's next check."""
        now = _now()
        async with self._db.transaction() as conn:
            row = (await conn.execute(sa.select(*_RUN_COLUMNS).where(runs.c.id == run_id))).first()
            if row is None:
                raise RunNotFound(run_id)
            run = _run(row)
            if run.state in (RunState.QUEUED, RunState.WAITING_APPROVAL):
                await self._finish(
                    conn,
                    run_id,
                    run.fencing_token,
                    StopReason.CANCELLED,
                    "cancelled",
                    "",
                    now,
                    [stopped(StopReason.CANCELLED, "cancelled")],
                    fenced=False,
                )
            elif run.state is RunState.RUNNING:
                await conn.execute(
                    runs.update().where(runs.c.id == run_id).values(cancel_requested=True)
                )
        return await self.get(run_id)
