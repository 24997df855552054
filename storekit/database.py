"""A database behind one SQLAlchemy async engine: SQLite (aiosqlite) or PostgreSQL
(asyncpg), one code path. Transactions, one-statement reads, consistent snapshots, and
Alembic migrations that several processes may start at once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine


def async_url(url: str) -> sa.URL:
    """Accept plain ``sqlite:///file`` and ``postgresql://…`` URLs; pick the async drivers."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+asyncpg")
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:/// or postgresql://")


class Database:
    """One database, SQLite or PostgreSQL, behind one async engine."""

    def __init__(
        self, url: str, *, migrations: Path, migration_lock: int, pool_size: int = 10
    ) -> None:
        """``migrations``: the Alembic script directory of this database's schema.
        ``migration_lock``: a number naming the PostgreSQL advisory lock that makes
        processes starting together migrate one at a time."""
        self.migrations = migrations
        self.migration_lock = migration_lock
        self.url = async_url(url)
        self.dialect = self.url.get_backend_name()
        kwargs: dict[str, Any] = {}
        if self.dialect == "sqlite":
            database = self.url.database or ""
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
            kwargs["pool_reset_on_return"] = None
        else:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A read-write transaction, committed when the block exits cleanly.

        On SQLite it starts with BEGIN IMMEDIATE: the write lock is taken up front, so two
        writers queue on the busy timeout instead of failing on a lock upgrade.
        """
        async with self.engine.connect() as conn:
            if self.dialect == "sqlite":
                conn = await conn.execution_options(pilothouse_write=True)
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def single_read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for one read statement, outside any transaction: it skips the
        BEGIN/COMMIT round trips a one-statement read does not need."""
        async with self.engine.connect() as conn:
            if self.dialect == "sqlite":
                conn = await conn.execution_options(pilothouse_autocommit=True)
            else:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[AsyncConnection]:
        """A read-only transaction: a consistent view for several reads (REPEATABLE READ
        on PostgreSQL; SQLite's transactions read one snapshot already)."""
        async with self.engine.connect() as conn:
            if self.dialect == "postgresql":
                conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                yield conn

    async def migrate(self) -> None:
        """Bring the schema to the newest migration (safe with several replicas at once)."""
        async with self.engine.connect() as conn:
            if self.dialect == "sqlite":
                conn = await conn.execution_options(pilothouse_write=True)
            async with conn.begin():
                if self.dialect == "postgresql":
                    await conn.execute(
                        sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": self.migration_lock}
                    )
                await conn.run_sync(self._upgrade)

    async def current_revision(self) -> str | None:
        async with self.snapshot() as conn:
            return await conn.run_sync(_current_revision)

    async def aclose(self) -> None:
        await self.engine.dispose()

    def _upgrade(self, connection: Connection) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(self.migrations))
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")


def _current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver: BEGIN is ours (see below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA foreign_keys=ON",
            "PRAGMA busy_timeout=30000",
            "PRAGMA synchronous=NORMAL",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get("pilothouse_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif not options.get("pilothouse_autocommit"):
            conn.exec_driver_sql("BEGIN")
