"""The migrations build exactly the schema the code declares, on both backends, and
running them again (or from several replicas at once) is harmless."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from controlplane.store.database import open_database
from controlplane.store.schema import metadata


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


async def test_migrations_match_the_schema(database_url: str) -> None:
    db = open_database(database_url)
    try:
        await asyncio.gather(db.migrate(), db.migrate())
        await db.migrate()
        assert await db.current_revision() == "0005"
        async with db.snapshot() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await db.aclose()


def _run_store_diff(connection: Connection) -> list[Any]:
    from dataplane.runstore.schema import metadata as run_metadata

    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, run_metadata))


async def test_run_store_migrations_match_its_schema(run_database_url: str) -> None:
    from dataplane.runstore.database import open_run_database

    db = open_run_database(run_database_url)
    try:
        await asyncio.gather(db.migrate(), db.migrate())
        assert await db.current_revision() == "0003"
        async with db.snapshot() as conn:
            assert await conn.run_sync(_run_store_diff) == []
    finally:
        await db.aclose()
