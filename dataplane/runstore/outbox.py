"""The outbox as its relays see it: claim a batch, delete it once delivered (with the
next claim), give it back when delivery failed. Rows are written by the run store, in the
transactions of what they record (``RunStore``); any executor of the pool may relay any
of them."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dataplane.runstore.model import OutboxEvent
from dataplane.runstore.schema import outbox
from storekit import prepared
from storekit.database import Database
from storekit.loop import Uninterrupted

T = TypeVar("T")

_COLUMNS = (
    outbox.c.id,
    outbox.c.tenant,
    outbox.c.run_id,
    outbox.c.kind,
    outbox.c.type,
    outbox.c.payload,
    outbox.c.created_at,
    outbox.c.executor,
)


def _event(row: Sequence[Any], created_at: datetime | None = None) -> OutboxEvent:
    """An event from its row (``_COLUMNS``); ``created_at``: its time, read already."""
    id_, tenant, run_id, kind, type_, payload, at, executor = row
    at = created_at or at
    return OutboxEvent(id_, tenant, run_id, kind, type_, json.loads(payload), at, executor)


_DELETE = outbox.delete().where(outbox.c.id == sa.bindparam("id"))


def _delete(conn: Connection, ids: Sequence[str]) -> None:
    if ids:
        prepared.run(conn, _DELETE, [{"id": id_} for id_ in ids])


@functools.cache
def _claim_statement(skip_locked: bool) -> sa.Update:
    """Claim (``owner``, until ``until``) up to ``limit`` of the oldest events no relay
    holds at ``now``; with ``skip_locked`` (PostgreSQL), skipping rows another relay is
    claiming rather than waiting for them."""
    at = sa.bindparam("now", type_=outbox.c.claim_expires_at.type)
    free = sa.or_(outbox.c.claim_expires_at.is_(None), outbox.c.claim_expires_at < at)
    chosen = (
        sa.select(outbox.c.id)
        .where(free)
        .order_by(outbox.c.created_at, outbox.c.id)
        .limit(sa.bindparam("limit", type_=sa.Integer))
    )
    if skip_locked:
        chosen = chosen.with_for_update(skip_locked=True)
    return (
        outbox.update()
        .where(outbox.c.id.in_(chosen.scalar_subquery()))
        .values(
            claimed_by=sa.bindparam("owner"),
            claim_expires_at=sa.bindparam("until", type_=outbox.c.claim_expires_at.type),
        )
        .returning(*_COLUMNS)
    )


@dataclass(frozen=True)
class Backlog:
    """What waits in the outbox: how many events, and since when."""

    events: int
    oldest: datetime | None


class Outbox:
    def __init__(self, db: Database) -> None:
        self._db = db
        # A relay stops at any moment; its database calls run to their end regardless.
        self._whole = Uninterrupted()

    async def _write(self, body: Callable[[Connection], T]) -> T:
        return await self._whole.run(self._db.write(body))

    async def drain(self) -> None:
        """Wait for the calls still running for callers that were cancelled."""
        await self._whole.drain()

    async def claim(
        self, owner: str, *, limit: int, ttl: timedelta, delivered: Sequence[str] = ()
    ) -> list[OutboxEvent]:
        """Take up to ``limit`` of the oldest events no relay holds (or whose claim has
        expired) for ``ttl``, oldest first. On PostgreSQL, relays claiming at the same
        time skip each other's rows rather than wait for them. ``delivered``: events the
        control plane has, deleted in the same transaction (one write, not two)."""
        now = datetime.now(UTC)

        def claim(conn: Connection) -> list[OutboxEvent]:
            _delete(conn, delivered)
            rows = prepared.run(
                conn,
                _claim_statement(conn.dialect.name == "postgresql"),
                {"owner": owner, "now": now, "until": now + ttl, "limit": limit},
            ).rows
            events = [_event(r, prepared.read(conn, outbox.c.created_at, r[6])) for r in rows]
            return sorted(events, key=lambda e: (e.created_at, e.id))

        return await self._write(claim)

    async def release(self, owner: str, delivered: Sequence[str] = ()) -> None:
        """``owner``'s delivery failed: any relay may take what it holds again at once
        (also a batch whose claim was still being written when its relay gave up), but
        ``delivered``, which the control plane has, leaves the outbox."""

        def release(conn: Connection) -> None:
            _delete(conn, delivered)
            conn.execute(
                outbox.update()
                .where(outbox.c.claimed_by == owner)
                .values(claimed_by="", claim_expires_at=None)
            )

        await self._write(release)

    async def backlog(self) -> Backlog:
        return await self._whole.run(self._count())

    async def _count(self) -> Backlog:
        async with self._db.single_statement() as conn:
            count, oldest = (
                await conn.execute(sa.select(sa.func.count(), sa.func.min(outbox.c.created_at)))
            ).one()
        return Backlog(int(count), oldest)

    async def peek(self, *, limit: int = 500, tenant: str | None = None) -> list[OutboxEvent]:
        """The oldest events (of ``tenant``), claimed or not, without claiming them."""
        query = sa.select(*_COLUMNS).order_by(outbox.c.created_at, outbox.c.id).limit(limit)
        if tenant is not None:
            query = query.where(outbox.c.tenant == tenant)
        async with self._db.single_statement() as conn:
            return [_event(r) for r in await conn.execute(query)]
