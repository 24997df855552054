"""Executor status as seen over xDS: connections, acknowledgements, rejections."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from controlplane.store.schema import executors


@dataclass(frozen=True)
class ExecutorRow:
    node_id: str
    cluster: str
    connected: bool
    connected_since: datetime
    last_seen_time: datetime
    acked_version: str
    nacked_versions: str
    """JSON list of the versions this node rejected, newest last."""
    last_nack_version: str
    last_nack_error: str
    last_nack_time: datetime | None
    view: str = ""


_COLUMNS = tuple(executors.c[name] for name in ExecutorRow.__dataclass_fields__)


def _row(r: Sequence[Any]) -> ExecutorRow:
    return ExecutorRow(*r)


async def get(conn: AsyncConnection, node_id: str) -> ExecutorRow | None:
    row = (await conn.execute(sa.select(*_COLUMNS).where(executors.c.node_id == node_id))).first()
    return None if row is None else _row(row)


async def list_page(conn: AsyncConnection, *, after: str, limit: int) -> list[ExecutorRow]:
    query = sa.select(*_COLUMNS)
    if after:
        query = query.where(executors.c.node_id > after)
    query = query.order_by(executors.c.node_id).limit(limit)
    return [_row(r) for r in await conn.execute(query)]


async def connect(
    conn: AsyncConnection, node_id: str, cluster: str, now: datetime, view: str = ""
) -> None:
    """Mark a node connected (seeing ``view``'s configuration, "" for every tenant's),
    creating its row on first sight."""
    updated = await conn.execute(
        executors.update()
        .where(executors.c.node_id == node_id)
        .values(cluster=cluster, connected=True, connected_since=now, last_seen_time=now, view=view)
    )
    if updated.rowcount == 0:
        await conn.execute(
            executors.insert().values(
                node_id=node_id,
                cluster=cluster,
                connected=True,
                connected_since=now,
                last_seen_time=now,
                acked_version="",
                nacked_versions="[]",
                last_nack_version="",
                last_nack_error="",
                last_nack_time=None,
                view=view,
            )
        )


async def update(conn: AsyncConnection, node_id: str, **values: Any) -> None:
    await conn.execute(executors.update().where(executors.c.node_id == node_id).values(**values))
