"""The audit log: append-only, one hash chain per tenant ("-" for records of no tenant).

Appending locks the chain's head row, so records of one chain get their sequence numbers
one transaction at a time; several chains are locked in name order, so two writers never
wait on each other in a circle.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from controlplane.store.schema import audit_events, audit_heads
from pilothouse.auditchain import GENESIS, Record, link
from storekit import prepared

NO_TENANT = "-"


@dataclass(frozen=True)
class NewAudit:
    time: datetime
    tenant: str | None
    actor: str
    action: str
    resource: str
    details: str
    """JSON text."""
    event_id: str | None = None
    """The executor's telemetry event it came in; a record whose event is already in is
    not appended again."""


def chain_of(tenant: str | None) -> str:
    return tenant or NO_TENANT


_COLUMNS = (
    "time",
    "tenant",
    "actor",
    "action",
    "resource",
    "details",
    "event_id",
    "chain",
    "seq",
    "prev_hash",
    "hash",
)


@dataclass(frozen=True)
class _Statements:
    """Appending's statements, built once per dialect: every record an executor reports
    passes here, and on SQLite ``prepared.run`` runs a statement built once for a
    fraction of SQLAlchemy's per-execution cost."""

    seen: Any
    head_insert: Any
    head_select: Any
    head_update: Any
    insert: Any


@functools.cache
def _statements(dialect: str) -> _Statements:
    insert = (postgresql if dialect == "postgresql" else sqlite).insert
    chain = sa.bindparam("head", type_=audit_heads.c.chain.type)
    head = sa.select(audit_heads.c.seq, audit_heads.c.hash).where(audit_heads.c.chain == chain)
    return _Statements(
        sa.select(audit_events.c.event_id).where(
            audit_events.c.event_id.in_(sa.bindparam("ids", expanding=True))
        ),
        insert(audit_heads)
        .values(chain=chain, seq=0, hash=GENESIS)
        .on_conflict_do_nothing(index_elements=["chain"]),
        head.with_for_update() if dialect == "postgresql" else head,
        audit_heads.update()
        .where(audit_heads.c.chain == chain)
        .values(seq=sa.bindparam("head_seq"), hash=sa.bindparam("head_hash")),
        audit_events.insert().values(
            {c: sa.bindparam(c, type_=audit_events.c[c].type) for c in _COLUMNS}
        ),
    )


def append(conn: Connection, records: Sequence[NewAudit]) -> int:
    """Append ``records`` in order, in the caller's transaction; the number appended."""
    statements = _statements(conn.dialect.name)
    seen: set[str] = set()
    if any(r.event_id for r in records):
        ids = [r.event_id for r in records if r.event_id]
        seen = {str(i) for i in conn.execute(statements.seen, {"ids": ids}).scalars()}
    by_chain: dict[str, list[NewAudit]] = {}
    for r in records:
        if r.event_id and r.event_id in seen:
            continue
        if r.event_id:
            seen.add(r.event_id)
        by_chain.setdefault(chain_of(r.tenant), []).append(r)
    rows = []
    for chain in sorted(by_chain):
        seq, prev = _lock_head(conn, statements, chain)
        for r in by_chain[chain]:
            seq += 1
            digest = link(
                chain,
                seq,
                r.time,
                r.actor,
                r.action,
                r.resource,
                r.details,
                r.event_id or "",
                prev,
            )
            rows.append(
                {
                    "time": r.time,
                    "tenant": r.tenant,
                    "actor": r.actor,
                    "action": r.action,
                    "resource": r.resource,
                    "details": r.details,
                    "event_id": r.event_id,
                    "chain": chain,
                    "seq": seq,
                    "prev_hash": prev,
                    "hash": digest,
                }
            )
            prev = digest
        prepared.run(
            conn, statements.head_update, {"head": chain, "head_seq": seq, "head_hash": prev}
        )
    if rows:
        prepared.run(conn, statements.insert, rows)
    return len(rows)


def _lock_head(conn: Connection, statements: _Statements, chain: str) -> tuple[int, str]:
    prepared.run(conn, statements.head_insert, {"head": chain})
    seq, digest = prepared.run(conn, statements.head_select, {"head": chain}).rows[0]
    return int(seq), str(digest)


async def append_one(conn: AsyncConnection, record: NewAudit) -> None:
    await conn.run_sync(lambda sync: append(sync, [record]))


_RECORD_COLUMNS = (
    audit_events.c.chain,
    audit_events.c.seq.label("sequence"),
    audit_events.c.time,
    audit_events.c.actor,
    audit_events.c.action,
    audit_events.c.resource,
    audit_events.c.details,
    sa.func.coalesce(audit_events.c.event_id, "").label("event_id"),
    audit_events.c.prev_hash,
    audit_events.c.hash,
)


async def page(
    conn: AsyncConnection,
    chain: str,
    *,
    after_seq: int = 0,
    limit: int = 100,
    action_prefix: str = "",
) -> list[Record]:
    query = (
        sa.select(*_RECORD_COLUMNS)
        .where(audit_events.c.chain == chain, audit_events.c.seq > after_seq)
        .order_by(audit_events.c.seq)
        .limit(limit)
    )
    if action_prefix:
        query = query.where(audit_events.c.action.startswith(action_prefix, autoescape=True))
    return [Record(**r._mapping) for r in await conn.execute(query)]


@dataclass(frozen=True)
class Head:
    sequence: int
    hash: str
    """The chain's last record (0 and the genesis hash for a chain with no records)."""
    pruned_sequence: int = 0
    pruned_hash: str = GENESIS
    """The last record retention removed from the chain's start (0 and the genesis hash
    when none was)."""


async def head(conn: AsyncConnection, chain: str) -> Head:
    """The chain's head row."""
    row = (
        await conn.execute(
            sa.select(
                audit_heads.c.seq,
                audit_heads.c.hash,
                audit_heads.c.pruned_seq,
                audit_heads.c.pruned_hash,
            ).where(audit_heads.c.chain == chain)
        )
    ).one_or_none()
    if row is None:
        return Head(0, GENESIS)
    return Head(int(row.seq), row.hash, int(row.pruned_seq), row.pruned_hash)


async def chains_older_than(conn: AsyncConnection, before: datetime) -> list[str]:
    """The chains whose first record (the one after the last pruned) is from before
    ``before``: those retention has something to remove from."""
    first = sa.and_(
        audit_events.c.chain == audit_heads.c.chain,
        audit_events.c.seq == audit_heads.c.pruned_seq + 1,
    )
    query = (
        sa.select(audit_heads.c.chain).join(audit_events, first).where(audit_events.c.time < before)
    )
    return list((await conn.execute(query)).scalars())


@dataclass(frozen=True)
class ChainPruned:
    records: int
    through_sequence: int
    through_hash: str


def prune(conn: Connection, chain: str, before: datetime, limit: int) -> ChainPruned | None:
    """Remove up to ``limit`` records from the chain's start, in sequence order, up to
    the first of ``before`` or later, and remember the last one removed; None when none
    was. The head stays locked until the transaction ends, so nothing is appended
    meanwhile."""
    _lock_head(conn, _statements(conn.dialect.name), chain)
    oldest = conn.execute(
        sa.select(audit_events.c.seq, audit_events.c.time, audit_events.c.hash)
        .where(audit_events.c.chain == chain)
        .order_by(audit_events.c.seq)
        .limit(limit)
    ).all()
    last: tuple[int, str] | None = None
    for seq, time, digest in oldest:
        if time >= before:
            break
        last = (int(seq), str(digest))
    if last is None:
        return None
    count = conn.execute(
        audit_events.delete().where(audit_events.c.chain == chain, audit_events.c.seq <= last[0])
    ).rowcount
    conn.execute(
        audit_heads.update()
        .where(audit_heads.c.chain == chain)
        .values(pruned_seq=last[0], pruned_hash=last[1])
    )
    return ChainPruned(count, *last)
