"""API keys: only a hash of each secret is stored."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from controlplane.store.errors import DuplicateKey, ReferenceViolation
from controlplane.store.rows import ApiKeyRow
from controlplane.store.schema import api_keys, bootstrap_keys

_COLUMNS = (
    api_keys.c.id,
    api_keys.c.tenant,
    api_keys.c.role,
    api_keys.c.display_name,
    api_keys.c.secret_hash,
    api_keys.c.create_time,
    api_keys.c.expire_time,
    api_keys.c.scopes,
)


def _row(r: Sequence[Any]) -> ApiKeyRow:
    key_id, tenant, role, display_name, secret_hash, created, expires, scopes = r
    return ApiKeyRow(
        key_id,
        tenant,
        role,
        display_name,
        secret_hash,
        created,
        expires,
        tuple(json.loads(scopes or "[]")),
    )


async def get(conn: AsyncConnection, key_id: str) -> ApiKeyRow | None:
    row = (await conn.execute(sa.select(*_COLUMNS).where(api_keys.c.id == key_id))).first()
    return None if row is None else _row(row)


async def list_page(
    conn: AsyncConnection, *, after: str, limit: int, tenant: str | None
) -> list[ApiKeyRow]:
    """Keys with ids greater than ``after``; only ``tenant``'s when it is given."""
    query = sa.select(*_COLUMNS)
    if after:
        query = query.where(api_keys.c.id > after)
    if tenant is not None:
        query = query.where(api_keys.c.tenant == tenant)
    query = query.order_by(api_keys.c.id).limit(limit)
    return [_row(r) for r in await conn.execute(query)]


async def insert(conn: AsyncConnection, row: ApiKeyRow) -> None:
    try:
        await conn.execute(
            api_keys.insert().values(
                id=row.id,
                tenant=row.tenant,
                role=row.role,
                display_name=row.display_name,
                secret_hash=row.secret_hash,
                create_time=row.create_time,
                expire_time=row.expire_time,
                scopes=json.dumps(list(row.scopes)),
            )
        )
    except IntegrityError as e:
        if await get(conn, row.id) is not None:
            raise DuplicateKey(row.id) from e
        raise ReferenceViolation(row.tenant or "") from e


async def delete(conn: AsyncConnection, key_id: str) -> int:
    return (await conn.execute(api_keys.delete().where(api_keys.c.id == key_id))).rowcount


async def count_with_role(conn: AsyncConnection, role: str) -> int:
    query = sa.select(sa.func.count()).select_from(api_keys).where(api_keys.c.role == role)
    return int((await conn.execute(query)).scalar_one())


async def bootstrap_registered(conn: AsyncConnection, key_id: str) -> bool:
    """Whether ``key_id`` was ever registered as a bootstrap key (revoked or not)."""
    query = sa.select(bootstrap_keys.c.key_id).where(bootstrap_keys.c.key_id == key_id)
    return (await conn.execute(query)).first() is not None


async def record_bootstrap(conn: AsyncConnection, key_id: str, when: datetime) -> None:
    await conn.execute(bootstrap_keys.insert().values(key_id=key_id, register_time=when))
