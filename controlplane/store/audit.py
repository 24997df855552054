"""The audit log: an append-only record of who changed what."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from controlplane.store.rows import AuditRow
from controlplane.store.schema import audit_events


async def append(
    conn: AsyncConnection,
    *,
    time: datetime,
    tenant: str | None,
    actor: str,
    action: str,
    resource: str,
    details: str,
) -> None:
    await conn.execute(
        audit_events.insert().values(
            time=time, tenant=tenant, actor=actor, action=action, resource=resource, details=details
        )
    )


async def list_for_tenant(
    conn: AsyncConnection, tenant: str, *, after_id: int = 0, limit: int = 100
) -> list[AuditRow]:
    query = (
        sa.select(
            audit_events.c.id,
            audit_events.c.time,
            audit_events.c.tenant,
            audit_events.c.actor,
            audit_events.c.action,
            audit_events.c.resource,
            audit_events.c.details,
        )
        .where(audit_events.c.tenant == tenant, audit_events.c.id > after_id)
        .order_by(audit_events.c.id)
        .limit(limit)
    )
    return [AuditRow(*r) for r in await conn.execute(query)]
