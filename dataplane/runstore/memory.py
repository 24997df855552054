"""The builtin memory tool's storage: small JSON values by key, one namespace per tenant
and agent, shared by every run of that agent on every executor of the pool."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from dataplane.runstore.schema import memory
from storekit.database import Database

MAX_KEYS = 1000
MAX_VALUE_BYTES = 16_384


class MemoryFull(Exception):
    pass


class Memory:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, tenant: str, agent: str, key: str) -> Any:
        query = sa.select(memory.c.value).where(
            memory.c.tenant == tenant, memory.c.agent == agent, memory.c.key == key
        )
        async with self._db.single_statement() as conn:
            value = (await conn.execute(query)).scalar_one_or_none()
        return None if value is None else json.loads(value)

    async def keys(self, tenant: str, agent: str) -> list[str]:
        query = (
            sa.select(memory.c.key)
            .where(memory.c.tenant == tenant, memory.c.agent == agent)
            .order_by(memory.c.key)
        )
        async with self._db.single_statement() as conn:
            return list((await conn.execute(query)).scalars())

    async def set(self, tenant: str, agent: str, key: str, value: Any) -> None:
        text = json.dumps(value, sort_keys=True)
        if len(text.encode()) > MAX_VALUE_BYTES:
            raise MemoryFull(f"a value may take at most {MAX_VALUE_BYTES} bytes")
        where = (memory.c.tenant == tenant) & (memory.c.agent == agent) & (memory.c.key == key)
        now = datetime.now(UTC)
        async with self._db.transaction() as conn:
            updated = await conn.execute(
                memory.update().where(where).values(value=text, updated_at=now)
            )
            if updated.rowcount:
                return
            count = (
                await conn.execute(
                    sa.select(sa.func.count()).where(
                        memory.c.tenant == tenant, memory.c.agent == agent
                    )
                )
            ).scalar_one()
            if count >= MAX_KEYS:
                raise MemoryFull(f"an agent may keep at most {MAX_KEYS} keys")
            await conn.execute(
                memory.insert().values(
                    tenant=tenant, agent=agent, key=key, value=text, updated_at=now
                )
            )

    async def delete(self, tenant: str, agent: str, key: str) -> bool:
        where = (memory.c.tenant == tenant) & (memory.c.agent == agent) & (memory.c.key == key)
        async with self._db.transaction() as conn:
            return bool((await conn.execute(memory.delete().where(where))).rowcount)
