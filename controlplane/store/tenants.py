"""Tenants: the root of every scoped query."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from controlplane.store.errors import DuplicateKey, ReferenceViolation
from controlplane.store.rows import ResourceRow
from controlplane.store.schema import (
    feedback,
    quota_accounts,
    quota_leases,
    resource_refs,
    tenants,
)

TENANT_KIND = "Tenant"
_COLUMNS = (
    tenants.c.id,
    tenants.c.spec,
    tenants.c.etag,
    tenants.c.create_time,
    tenants.c.update_time,
)


def _row(r: Sequence[Any]) -> ResourceRow:
    id_, spec, etag, create_time, update_time = r
    return ResourceRow(id_, TENANT_KIND, id_, spec, etag, create_time, update_time)


async def get(conn: AsyncConnection, tenant: str) -> ResourceRow | None:
    row = (await conn.execute(sa.select(*_COLUMNS).where(tenants.c.id == tenant))).first()
    return None if row is None else _row(row)


async def list_page(
    conn: AsyncConnection, *, after: str, limit: int, only: Sequence[str] | None = None
) -> list[ResourceRow]:
    """Tenants with ids greater than ``after``, in id order; ``only`` restricts to those ids."""
    query = sa.select(*_COLUMNS)
    if after:
        query = query.where(tenants.c.id > after)
    if only is not None:
        query = query.where(tenants.c.id.in_(list(only)))
    query = query.order_by(tenants.c.id).limit(limit)
    return [_row(r) for r in await conn.execute(query)]


async def insert(conn: AsyncConnection, row: ResourceRow) -> None:
    try:
        await conn.execute(
            tenants.insert().values(
                id=row.id,
                spec=row.spec,
                etag=row.etag,
                create_time=row.create_time,
                update_time=row.update_time,
            )
        )
    except IntegrityError as e:
        raise DuplicateKey(row.id) from e


async def update(conn: AsyncConnection, row: ResourceRow, expected_etag: str) -> bool:
    result = await conn.execute(
        tenants.update()
        .where(tenants.c.id == row.id, tenants.c.etag == expected_etag)
        .values(spec=row.spec, etag=row.etag, update_time=row.update_time)
    )
    return result.rowcount == 1


async def delete(conn: AsyncConnection, tenant: str) -> int:
    """Delete a tenant and everything it holds: references first (they guard resources
    against deletion one by one), then the tenant, whose rows go by cascade."""
    await conn.execute(resource_refs.delete().where(resource_refs.c.tenant == tenant))
    await conn.execute(quota_leases.delete().where(quota_leases.c.tenant == tenant))
    await conn.execute(feedback.delete().where(feedback.c.tenant == tenant))
    await conn.execute(quota_accounts.delete().where(quota_accounts.c.tenant == tenant))
    try:
        result = await conn.execute(tenants.delete().where(tenants.c.id == tenant))
    except IntegrityError as e:
        raise ReferenceViolation(tenant) from e
    return result.rowcount
