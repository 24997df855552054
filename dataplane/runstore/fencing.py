"""Fenced writes: a lease holder's change to its run applies only while the run's fencing
token is still the holder's, in the same statement that reserves the sequence numbers
of the events and checkpoints written with it."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dataplane.runstore.errors import LeaseLost
from dataplane.runstore.model import Lease, NewEvent, RunState
from dataplane.runstore.rows import as_written, now, stored_payloads, telemetry_rows
from dataplane.runstore.schema import outbox, run_events, runs
from dataplane.runstore.writer import WRITTEN
from storekit import prepared

_INSERT_EVENT = run_events.insert()
_INSERT_OUTBOX = outbox.insert()
_NEXT_EVENT_SEQ = sa.select(runs.c.next_event_seq, runs.c.tenant).where(
    runs.c.id == sa.bindparam("run_id")
)


@dataclass(frozen=True)
class Fenced:
    first_event_seq: int
    checkpoint_seq: int
    cancel_requested: bool


def reserving() -> dict[str, Any]:
    """Values that advance a run's counters past ``n_events`` events and ``n_checkpoints``
    checkpoints (a statement returning the counters tells where they start)."""
    return {
        "next_event_seq": runs.c.next_event_seq + sa.bindparam("n_events", type_=sa.Integer),
        "next_checkpoint_seq": runs.c.next_checkpoint_seq
        + sa.bindparam("n_checkpoints", type_=sa.Integer),
    }


def held() -> sa.ColumnElement[bool]:
    """The run (``f_run``) is running under the holder's lease (``f_token``, ``f_owner``)."""
    return sa.and_(
        runs.c.id == sa.bindparam("f_run"),
        runs.c.fencing_token == sa.bindparam("f_token"),
        runs.c.lease_owner == sa.bindparam("f_owner"),
        runs.c.state == RunState.RUNNING.value,
    )


@functools.cache
def _fence_statement(columns: tuple[str, ...]) -> sa.Update:
    """Set ``columns`` (parameters ``v_{column}``) on a run whose lease is still the
    holder's (``f_run``, ``f_token``, ``f_owner``), reserving ``n_events`` event numbers
    and ``n_checkpoints`` checkpoint numbers."""
    values: dict[str, Any] = {c: sa.bindparam(f"v_{c}", type_=runs.c[c].type) for c in columns}
    return (
        runs.update()
        .where(held())
        .values({**values, **reserving()})
        .returning(
            runs.c.tenant,
            runs.c.next_event_seq,
            runs.c.next_checkpoint_seq,
            runs.c.cancel_requested,
        )
    )


def fence(
    conn: Connection,
    lease: Lease,
    *,
    events: Sequence[NewEvent] = (),
    checkpoints: int = 0,
    at: datetime | None = None,
    **values: Any,
) -> Fenced:
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
    insert_events(conn, lease.run_id, tenant, first, events, at or now())
    return Fenced(first, int(next_checkpoint) - checkpoints, bool(cancel))


def insert_events(
    conn: Connection,
    run_id: str,
    tenant: str,
    first_seq: int,
    events: Sequence[NewEvent],
    at: datetime,
) -> None:
    """Insert the events numbered from ``first_seq``, and their telemetry."""
    if not events:
        return
    texts, payloads = stored_payloads(events)
    prepared.run(
        conn,
        _INSERT_EVENT,
        [
            {"run_id": run_id, "seq": first_seq + i, "time": at, "type": e.type, "payload": text}
            for i, (e, text) in enumerate(zip(events, texts, strict=True))
        ],
    )
    outbound = telemetry_rows(run_id, tenant, first_seq, events, at)
    if outbound:
        prepared.run(conn, _INSERT_OUTBOX, outbound)
    written = conn.info.get(WRITTEN)
    if written is not None:
        written.extend(as_written(run_id, first_seq, events, payloads, at))


def append_events(conn: Connection, run_id: str, events: Sequence[NewEvent], at: datetime) -> int:
    """Insert events after the run's last; the next free sequence number."""
    seq, tenant = prepared.run(conn, _NEXT_EVENT_SEQ, {"run_id": run_id}).rows[0]
    seq = int(seq)
    insert_events(conn, run_id, tenant, seq, events, at)
    return seq + len(events)


def insert_outbox(conn: Connection, rows: dict[str, Any] | list[dict[str, Any]]) -> None:
    prepared.run(conn, _INSERT_OUTBOX, rows)
