"""The registry revision: a counter every registry write bumps in its own transaction."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from controlplane.store.schema import registry_revision

NOTIFY_CHANNEL = "pilothouse_registry"
"""On PostgreSQL, every bump notifies this channel on commit (other replicas listen)."""


async def bump(conn: AsyncConnection) -> None:
    await conn.execute(
        registry_revision.update()
        .where(registry_revision.c.id == 1)
        .values(revision=registry_revision.c.revision + 1)
    )
    if conn.dialect.name == "postgresql":
        await conn.execute(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL, "")))


async def current(conn: AsyncConnection) -> int:
    query = sa.select(registry_revision.c.revision).where(registry_revision.c.id == 1)
    return int((await conn.execute(query)).scalar_one())
