"""Leases that let one control-plane replica at a time run a background loop."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from controlplane.store.schema import loop_leases


async def hold(
    conn: AsyncConnection, name: str, holder: str, *, now: datetime, until: datetime
) -> bool:
    """Take or renew the lease ``name`` for ``holder`` until ``until``: True when it is
    ``holder``'s now, False while another holder's has not expired. One statement, so
    two replicas asking at once cannot both win."""
    insert = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert
    statement = insert(loop_leases).values(name=name, holder=holder, expire_time=until)
    statement = statement.on_conflict_do_update(
        index_elements=["name"],
        set_={"holder": statement.excluded.holder, "expire_time": statement.excluded.expire_time},
        where=sa.or_(loop_leases.c.holder == holder, loop_leases.c.expire_time < now),
    ).returning(loop_leases.c.holder)
    return (await conn.execute(statement)).scalar_one_or_none() == holder


async def release(conn: AsyncConnection, name: str, holder: str) -> None:
    await conn.execute(
        loop_leases.delete().where(loop_leases.c.name == name, loop_leases.c.holder == holder)
    )
