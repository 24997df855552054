"""Approval requests. Every query is scoped by tenant, but the decision feed, which
executors of every tenant read in order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from controlplane.store.errors import DuplicateKey
from controlplane.store.schema import approvals, counters


@dataclass(frozen=True)
class ApprovalRow:
    tenant: str
    id: str
    run: str
    agent: str
    step: int
    call_index: int
    tool: str
    arguments: str
    reason: str
    state: str
    decided_by: str
    comment: str
    create_time: datetime
    decide_time: datetime | None
    decision_seq: int | None
    expire_time: datetime
    kind: str = "tool_call"
    decision: str = ""
    result: str = ""
    attempt: int = 0


_COLUMNS = tuple(approvals.c[name] for name in ApprovalRow.__dataclass_fields__)


def _row(r: Sequence[Any]) -> ApprovalRow:
    return ApprovalRow(*r)


async def get(
    conn: AsyncConnection, tenant: str, id_: str, *, for_update: bool = False
) -> ApprovalRow | None:
    query = sa.select(*_COLUMNS).where(approvals.c.tenant == tenant, approvals.c.id == id_)
    if for_update and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    return None if row is None else _row(row)


async def insert(conn: AsyncConnection, row: ApprovalRow) -> None:
    try:
        await conn.execute(approvals.insert().values(**row.__dict__))
    except IntegrityError as e:
        raise DuplicateKey(row.id) from e


async def list_page(
    conn: AsyncConnection, tenant: str, *, after: str, limit: int, state: str | None
) -> list[ApprovalRow]:
    query = sa.select(*_COLUMNS).where(approvals.c.tenant == tenant)
    if after:
        query = query.where(approvals.c.id > after)
    if state:
        query = query.where(approvals.c.state == state)
    query = query.order_by(approvals.c.id).limit(limit)
    return [_row(r) for r in await conn.execute(query)]


async def decide(
    conn: AsyncConnection,
    tenant: str,
    id_: str,
    *,
    state: str,
    decided_by: str,
    comment: str,
    now: datetime,
    decision: str = "",
    result: str = "",
) -> None:
    seq = (
        await conn.execute(
            counters.update()
            .where(counters.c.name == "approval_decisions")
            .values(value=counters.c.value + 1)
            .returning(counters.c.value)
        )
    ).scalar_one()
    await conn.execute(
        approvals.update()
        .where(approvals.c.tenant == tenant, approvals.c.id == id_)
        .values(
            state=state,
            decided_by=decided_by,
            comment=comment,
            decide_time=now,
            decision_seq=seq,
            decision=decision,
            result=result,
        )
    )


async def decided_after(
    conn: AsyncConnection, after: int, *, tenant: str | None, limit: int = 500
) -> list[ApprovalRow]:
    query = sa.select(*_COLUMNS).where(approvals.c.decision_seq > after)
    if tenant is not None:
        query = query.where(approvals.c.tenant == tenant)
    query = query.order_by(approvals.c.decision_seq).limit(limit)
    return [_row(r) for r in await conn.execute(query)]


async def expired(conn: AsyncConnection, now: datetime, *, limit: int = 100) -> list[ApprovalRow]:
    query = (
        sa.select(*_COLUMNS)
        .where(approvals.c.state == "pending", approvals.c.expire_time <= now)
        .order_by(approvals.c.expire_time)
        .limit(limit)
    )
    return [_row(r) for r in await conn.execute(query)]
