"""A run's life in the store: created (queued, or leased to its creator), claimed (queued
and due, or orphaned by an expired lease), given back, released after a failure,
cancelled, and ended, with the ``run.stopped`` audit record. Each function is the body of
one write transaction; ``store.RunStore`` runs them."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dataplane import fastjson
from dataplane.runstore.checkpoints import EncodedCheckpoint, insert_checkpoint
from dataplane.runstore.errors import LeaseLost, RunNotFound
from dataplane.runstore.fencing import (
    append_events,
    fence,
    held,
    insert_events,
    insert_outbox,
    reserving,
)
from dataplane.runstore.journal import write_call
from dataplane.runstore.model import (
    Lease,
    NewEvent,
    Run,
    RunState,
    StepCheckpoint,
    StopReason,
    UnsettledModelCall,
    stopped,
)
from dataplane.runstore.rows import RUN_COLUMNS, audit_row, executor_of, run_of, stopped_audit
from dataplane.runstore.schema import runs
from storekit import prepared


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


@dataclass(frozen=True)
class End:
    """How a run ends, and the events that say so."""

    reason: StopReason
    detail: str
    final_answer: str
    events: Sequence[NewEvent]


def run_values(
    new: NewRun, run_id: str, owner: str, at: datetime, expires: datetime
) -> dict[str, Any]:
    """The new run's row; leased to ``owner`` unless it is queued."""
    leased = not new.queued
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
        "available_at": at,
        "deadline_at": new.deadline_at,
        "cancel_requested": False,
        "next_event_seq": 1,
        "next_checkpoint_seq": 1,
        "created_at": at,
        "updated_at": at,
        "ended_at": None,
        "model_call": new.model_call.text() if leased and new.model_call else "",
    }
    if leased and new.opening is not None:
        values["usage"] = fastjson.dumps_text(new.opening.usage, sort_keys=True)
        values["next_event_seq"] = 1 + len(new.opening.events)
        values["next_checkpoint_seq"] = 2
    return values


def claim(
    conn: Connection,
    owner: str,
    run_id: str | None,
    at: datetime,
    expires: datetime,
    max_attempts: int,
) -> tuple[Lease, Run] | None:
    """Claim ``run_id``, or else the oldest claimable run; a run lost ``max_attempts``
    times is dead-lettered instead."""
    row = _claimable(conn, at, run_id)
    if row is None:
        return None
    run = run_of(row)
    orphaned = run.state is RunState.RUNNING
    attempts = run.attempts + (1 if orphaned else 0)
    # An orphaned run became claimable when its holder's lease expired.
    available = run.lease_expires_at if orphaned else run.available_at
    assert available is not None
    settled, usage = settle_lost_call(conn, run)
    if attempts >= max_attempts:
        why = f"lost or failed {attempts} times"
        events = [*settled, stopped(StopReason.DEAD_LETTERED, why, usage, steps=run.step)]
        end_run(conn, run.id, run.fencing_token, End(StopReason.DEAD_LETTERED, why, "", events), at)
        return None
    next_event_seq = append_events(conn, run.id, settled, at) if settled else None
    claimed = replace(
        run,
        state=RunState.RUNNING,
        lease_owner=owner,
        lease_expires_at=expires,
        fencing_token=run.fencing_token + 1,
        attempts=attempts,
        available_at=available,
        updated_at=at,
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
            updated_at=at,
            **({"next_event_seq": next_event_seq} if next_event_seq else {}),
        )
    )
    return Lease(run.id, owner, claimed.fencing_token, expires), claimed


def _claimable(conn: Connection, at: datetime, run_id: str | None) -> Sequence[Any] | None:
    due = sa.or_(
        sa.and_(runs.c.state == RunState.QUEUED.value, runs.c.available_at <= at),
        sa.and_(runs.c.state == RunState.RUNNING.value, runs.c.lease_expires_at < at),
    )
    query = sa.select(*RUN_COLUMNS).where(due)
    if run_id is not None:
        query = query.where(runs.c.id == run_id)
    else:
        query = query.order_by(runs.c.available_at).limit(1)
    if conn.dialect.name == "postgresql":
        # Claimers skip the rows others are claiming instead of queueing behind them.
        query = query.with_for_update(skip_locked=True)
    return conn.execute(query).first()


def settle_lost_call(conn: Connection, run: Run) -> tuple[list[NewEvent], dict[str, Any]]:
    """Settle the model call ``run``'s last holder announced and never recorded (it died,
    or gave the run back mid-call): its event and usage record at the call's worst case,
    marked estimated, and the run's usage with it (written here). No events and the usage
    unchanged when no call was in flight."""
    if not run.model_call:
        return [], run.usage
    lost = UnsettledModelCall.parse(run.model_call)
    conn.execute(
        runs.update()
        .where(runs.c.id == run.id)
        .values(usage=fastjson.dumps_text(lost.usage, sort_keys=True), model_call="")
    )
    return [lost.event()], lost.usage


def _ended() -> dict[str, Any]:
    """The values that end a run (``v_stop_reason``, ``v_stop_detail``,
    ``v_final_answer``, at ``v_now``)."""
    at = sa.bindparam("v_now", type_=runs.c.updated_at.type)
    return {
        "state": RunState.FINISHED.value,
        "stop_reason": sa.bindparam("v_stop_reason"),
        "stop_detail": sa.bindparam("v_stop_detail"),
        "final_answer": sa.bindparam("v_final_answer"),
        "lease_owner": "",
        "lease_expires_at": None,
        "ended_at": at,
        "updated_at": at,
        "model_call": "",
    }


_AUDITED = (
    runs.c.tenant,
    runs.c.agent,
    runs.c.step,
    runs.c.usage,
    runs.c.attempts,
    runs.c.created_at,
)
"""What the ``run.stopped`` audit record needs of the ended run."""


@functools.cache
def _end_statement(fenced: bool) -> sa.Update:
    """End a run that is not finished yet (``f_run``); ``fenced``: only if the lease is
    still the holder's (``f_token``, ``f_owner``). Returns what the audit record needs."""
    condition = runs.c.id == sa.bindparam("f_run")
    if fenced:
        condition = (
            condition
            & (runs.c.fencing_token == sa.bindparam("f_token"))
            & (runs.c.lease_owner == sa.bindparam("f_owner"))
        )
    return (
        runs.update()
        .where(condition, runs.c.state != RunState.FINISHED.value)
        .values({**_ended(), "next_event_seq": sa.bindparam("v_next_event_seq")})
        .returning(*_AUDITED)
    )


def end_run(
    conn: Connection, run_id: str, token: int, end: End, at: datetime, *, owner: str | None = None
) -> None:
    """End the run with ``end``, its events and its ``run.stopped`` audit record; with
    ``owner``, fenced by the lease (``token``), otherwise whoever holds it."""
    seq = append_events(conn, run_id, end.events, at)
    row = conn.execute(
        _end_statement(owner is not None),
        {
            "f_run": run_id,
            "f_token": token,
            "f_owner": owner or "",
            "v_stop_reason": end.reason.value,
            "v_stop_detail": end.detail,
            "v_final_answer": end.final_answer,
            "v_now": at,
            "v_next_event_seq": seq,
        },
    ).first()
    if row is None:
        raise LeaseLost(f"run {run_id}: could not finish it with token {token}")
    tenant, agent, steps, usage, attempts, created_at = row
    payload = stopped_audit(
        run_id, agent, end.reason, end.detail, steps, json.loads(usage), attempts, created_at, at
    )
    insert_outbox(
        conn, audit_row(tenant, run_id, "run.stopped", payload, at, executor_of(end.events))
    )


@functools.cache
def _holder_end_statement(with_checkpoint: bool) -> sa.Update:
    """The lease holder's end of its run (``f_run``, ``f_token``, ``f_owner``) in one
    statement, with its last checkpoint's step and usage when ``with_checkpoint``:
    reserves ``n_events`` event and ``n_checkpoints`` checkpoint numbers and returns what
    the audit record needs."""
    values = {**_ended(), **reserving()}
    if with_checkpoint:
        values["step"] = sa.bindparam("v_step", type_=runs.c.step.type)
        values["usage"] = sa.bindparam("v_usage", type_=runs.c.usage.type)
    return (
        runs.update()
        .where(held())
        .values(values)
        .returning(*_AUDITED, runs.c.next_event_seq, runs.c.next_checkpoint_seq)
    )


def finish_held(
    conn: Connection, lease: Lease, end: End, last: EncodedCheckpoint | None, at: datetime
) -> None:
    """The lease holder ends its run, with ``last`` (its last checkpoint) when given: one
    fenced update that reserves the numbers of every event and checkpoint, then their
    rows and the ``run.stopped`` audit record."""
    events = [*(last.events if last is not None else ()), *end.events]
    params: dict[str, Any] = {
        "f_run": lease.run_id,
        "f_token": lease.token,
        "f_owner": lease.owner,
        "v_stop_reason": end.reason.value,
        "v_stop_detail": end.detail,
        "v_final_answer": end.final_answer,
        "v_now": at,
        "n_events": len(events),
        "n_checkpoints": len(last.steps) if last is not None else 0,
    }
    if last is not None:
        params.update(v_step=last.steps[-1], v_usage=last.usage_text)
    rows = prepared.run(conn, _holder_end_statement(last is not None), params).rows
    if not rows:
        raise LeaseLost(f"run {lease.run_id}: could not finish it with token {lease.token}")
    tenant, agent, steps, usage, attempts, created, next_event, next_checkpoint = rows[0]
    insert_events(conn, lease.run_id, tenant, int(next_event) - len(events), events, at)
    if last is not None:
        first = int(next_checkpoint) - len(last.steps)
        for i, (step, delta) in enumerate(zip(last.steps, last.delta_texts, strict=True)):
            insert_checkpoint(conn, lease.run_id, first + i, step, lease.token, delta, at)
        if last.call is not None:
            write_call(conn, lease.run_id, last.call, at)
    payload = stopped_audit(
        lease.run_id,
        agent,
        end.reason,
        end.detail,
        steps,
        json.loads(usage),
        attempts,
        prepared.read(conn, runs.c.created_at, created),
        at,
    )
    insert_outbox(
        conn, audit_row(tenant, lease.run_id, "run.stopped", payload, at, executor_of(end.events))
    )


def release(
    conn: Connection,
    lease: Lease,
    at: datetime,
    *,
    retry_after: timedelta,
    error: str,
    executor: str,
    max_attempts: int,
) -> None:
    """Give a run back after a failure: queued again after ``retry_after``, counted as a
    failed attempt; dead-lettered once it has failed ``max_attempts`` times."""
    lost = run_of(conn.execute(sa.select(*RUN_COLUMNS).where(runs.c.id == lease.run_id)).one())
    attempts = lost.attempts + 1
    if attempts < max_attempts:
        hand_back(conn, lease, at, retry_after, attempts=attempts)
        return
    why = f"failed {attempts} times; last: {error}"
    settled, usage = settle_lost_call(conn, lost)
    ended = stopped(StopReason.DEAD_LETTERED, why, usage, steps=lost.step, executor=executor)
    end = End(StopReason.DEAD_LETTERED, why, "", [*settled, ended])
    end_run(conn, lease.run_id, lease.token, end, at, owner=lease.owner)


def hand_back(
    conn: Connection, lease: Lease, at: datetime, delay: timedelta, **values: Any
) -> None:
    """Queue the run again for any executor after ``delay``, with ``values``."""
    fence(
        conn,
        lease,
        state=RunState.QUEUED.value,
        lease_owner="",
        lease_expires_at=None,
        available_at=at + delay,
        updated_at=at,
        **values,
    )


def request_cancel(conn: Connection, run_id: str, at: datetime) -> None:
    """A run no executor holds (queued, waiting) stops at once; a running one is flagged,
    and its holder hears of it with its next write."""
    row = (conn.execute(sa.select(*RUN_COLUMNS).where(runs.c.id == run_id))).first()
    if row is None:
        raise RunNotFound(run_id)
    run = run_of(row)
    if run.state in (RunState.QUEUED, RunState.WAITING_APPROVAL):
        settled, usage = settle_lost_call(conn, run)
        events = [*settled, stopped(StopReason.CANCELLED, "cancelled", usage, steps=run.step)]
        end_run(
            conn, run_id, run.fencing_token, End(StopReason.CANCELLED, "cancelled", "", events), at
        )
    elif run.state is RunState.RUNNING:
        conn.execute(runs.update().where(runs.c.id == run_id).values(cancel_requested=True))


def make_claimable(conn: Connection, run_id: str, events: Sequence[NewEvent], at: datetime) -> bool:
    """Queue a run waiting on a person for any executor; False when it was not waiting."""
    result = conn.execute(
        runs.update()
        .where(runs.c.id == run_id, runs.c.state == RunState.WAITING_APPROVAL.value)
        .values(state=RunState.QUEUED.value, available_at=at, updated_at=at)
    )
    if result.rowcount != 1:
        return False
    seq = append_events(conn, run_id, events, at)
    conn.execute(runs.update().where(runs.c.id == run_id).values(next_event_seq=seq))
    return True
