"""Feedback on runs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from controlplane.store.schema import feedback


@dataclass(frozen=True)
class FeedbackRow:
    tenant: str
    id: str
    run_id: str
    score: float
    comment: str
    actor: str
    create_time: datetime


_COLUMNS = [feedback.c[f] for f in FeedbackRow.__dataclass_fields__]


async def insert(conn: AsyncConnection, row: FeedbackRow) -> FeedbackRow:
    """Insert ``row``, unless feedback with its id is there: then that one."""
    insert_ = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert
    await conn.execute(
        insert_(feedback)
        .values({c.name: getattr(row, c.name) for c in _COLUMNS})
        .on_conflict_do_nothing(index_elements=["tenant", "id"])
    )
    stored = (
        await conn.execute(
            sa.select(*_COLUMNS).where(feedback.c.tenant == row.tenant, feedback.c.id == row.id)
        )
    ).one()
    return FeedbackRow(*stored)


async def page(
    conn: AsyncConnection,
    tenant: str,
    *,
    run_id: str | None,
    before: tuple[datetime, str] | None,
    limit: int,
) -> list[FeedbackRow]:
    """Newest first, after ``before`` (its time and id) when given."""
    query = sa.select(*_COLUMNS).where(feedback.c.tenant == tenant)
    if run_id is not None:
        query = query.where(feedback.c.run_id == run_id)
    if before is not None:
        query = query.where(sa.tuple_(feedback.c.create_time, feedback.c.id) < sa.tuple_(*before))
    query = query.order_by(feedback.c.create_time.desc(), feedback.c.id.desc()).limit(limit)
    return [FeedbackRow(*r) for r in await conn.execute(query)]
