"""Eval reports."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from controlplane.store.schema import eval_reports


@dataclass(frozen=True)
class ReportRow:
    tenant: str
    id: str
    suite: str
    """The suite's id."""
    suite_etag: str
    prompt_version: str
    score: float
    passed_cases: int
    total_cases: int
    actor: str
    create_time: datetime
    cases: str
    """JSON text."""


_COLUMNS = [eval_reports.c[f] for f in ReportRow.__dataclass_fields__]
_SUMMARY = [c if c.name != "cases" else sa.literal("").label("cases") for c in _COLUMNS]


async def insert(conn: AsyncConnection, row: ReportRow) -> ReportRow:
    """Insert ``row``, unless a report with its id is there: then that one."""
    insert_ = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert
    await conn.execute(
        insert_(eval_reports)
        .values({c.name: getattr(row, c.name) for c in _COLUMNS})
        .on_conflict_do_nothing(index_elements=["tenant", "id"])
    )
    stored = await get(conn, row.tenant, row.id)
    assert stored is not None
    return stored


async def get(conn: AsyncConnection, tenant: str, id_: str) -> ReportRow | None:
    row = (
        await conn.execute(
            sa.select(*_COLUMNS).where(eval_reports.c.tenant == tenant, eval_reports.c.id == id_)
        )
    ).one_or_none()
    return ReportRow(*row) if row else None


async def page(
    conn: AsyncConnection,
    tenant: str,
    *,
    suite: str | None,
    prompt_version: str | None,
    before: tuple[datetime, str] | None,
    limit: int,
) -> list[ReportRow]:
    """Newest first, after ``before`` (its time and id) when given; without cases."""
    c = eval_reports.c
    query = sa.select(*_SUMMARY).where(c.tenant == tenant)
    if suite is not None:
        query = query.where(c.suite == suite)
    if prompt_version is not None:
        query = query.where(c.prompt_version == prompt_version)
    if before is not None:
        query = query.where(sa.tuple_(c.create_time, c.id) < sa.tuple_(*before))
    query = query.order_by(c.create_time.desc(), c.id.desc()).limit(limit)
    return [ReportRow(*r) for r in await conn.execute(query)]


async def newest(
    conn: AsyncConnection, tenant: str, suite: str, suite_etag: str, prompt_version: str
) -> ReportRow | None:
    """The newest report on ``prompt_version`` of the suite as it is at ``suite_etag``."""
    c = eval_reports.c
    query = (
        sa.select(*_SUMMARY)
        .where(
            c.tenant == tenant,
            c.suite == suite,
            c.prompt_version == prompt_version,
            c.suite_etag == suite_etag,
        )
        .order_by(c.create_time.desc(), c.id.desc())
        .limit(1)
    )
    row = (await conn.execute(query)).one_or_none()
    return ReportRow(*row) if row else None
