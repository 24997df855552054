"""The migrations build exactly the schema the code declares, on both backends, and
running them again (or from several replicas at once) is harmless."""

from __future__ import annotations

import asyncio
from pathlib import Path
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
        assert await db.current_revision() == "0015"
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
        assert await db.current_revision() == "0005"
        async with db.snapshot() as conn:
            assert await conn.run_sync(_run_store_diff) == []
    finally:
        await db.aclose()


async def test_audit_records_written_before_the_chain_are_chained_in_order(
    tmp_path: Path,
) -> None:
    from datetime import UTC, datetime

    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config

    from controlplane.store import audit as audit_store
    from pilothouse import auditchain

    db = open_database(f"sqlite:///{tmp_path / 'old.db'}")

    def to_0005(connection: Connection) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(db.migrations))
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "0005")

    try:
        async with db.transaction() as conn:
            await conn.run_sync(to_0005)
            events = sa.table(
                "audit_events",
                *(
                    sa.column(c)
                    for c in ("time", "tenant", "actor", "action", "resource", "details")
                ),
            )
            await conn.execute(
                events.insert(),
                [
                    {
                        "time": datetime(2026, 11, 30, 12, i, tzinfo=UTC),
                        "tenant": tenant,
                        "actor": "apiKeys/x",
                        "action": "Tool.create",
                        "resource": f"r{i}",
                        "details": "{}",
                    }
                    for i, tenant in enumerate(["a", "b", "a", None, "a"])
                ],
            )
        await db.migrate()
        async with db.snapshot() as conn:
            chain_a = await audit_store.page(conn, "a")
            system = await audit_store.page(conn, "-")
            head = await audit_store.head(conn, "a")
        assert [r.resource for r in chain_a] == ["r0", "r2", "r4"]
        assert [r.sequence for r in chain_a] == [1, 2, 3]
        verdict = auditchain.verify(chain_a)
        assert verdict.intact
        assert (verdict.head_sequence, verdict.head_hash) == (head.sequence, head.hash)
        assert [r.resource for r in system] == ["r3"] and auditchain.verify(system).intact
    finally:
        await db.aclose()
