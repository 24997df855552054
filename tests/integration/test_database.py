"""Database: each write is atomic and committed when its caller hears back, also when
many writes share a transaction (SQLite's group commit); pooled PostgreSQL connections
the server dropped are replaced."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError

from dataplane.runstore.database import open_run_database
from storekit import database as database_module
from storekit import prepared
from storekit.database import Database
from tests.conftest import PG_ENV, fresh_pg_database


@pytest.fixture
async def own_db(own_run_database_url: str) -> AsyncIterator[Database]:
    """A database of this test alone: the tables made here must not reach the shared
    run store, whose schema another test compares with the migrations."""
    database = open_run_database(own_run_database_url)
    await database.migrate()
    yield database
    await database.aclose()


async def test_concurrent_writes_fail_alone_and_the_rest_commit(own_db: Database) -> None:
    run_db = own_db
    table = f"w_{uuid.uuid4().hex[:8]}"
    await run_db.write(
        lambda conn: conn.exec_driver_sql(f"CREATE TABLE {table} (k INTEGER PRIMARY KEY)")
    )

    def insert(k: int, *, then_fail: bool, twice: bool) -> Callable[[Connection], int]:
        def body(conn: Connection) -> int:
            conn.execute(sa.text(f"INSERT INTO {table} (k) VALUES (:k)"), {"k": k})
            if twice:
                conn.execute(sa.text(f"INSERT INTO {table} (k) VALUES (:k)"), {"k": k})
            if then_fail:
                raise ValueError(f"write {k} refused after its insert")
            return k

        return body

    results = await asyncio.gather(
        *(run_db.write(insert(k, then_fail=k == 25, twice=k == 40)) for k in range(60)),
        return_exceptions=True,
    )
    assert isinstance(results[25], ValueError)
    assert isinstance(results[40], IntegrityError)
    assert [r for i, r in enumerate(results) if i not in (25, 40)] == [
        k for k in range(60) if k not in (25, 40)
    ]
    async with run_db.snapshot() as conn:
        stored = [k for (k,) in await conn.execute(sa.text(f"SELECT k FROM {table} ORDER BY k"))]
    assert stored == [k for k in range(60) if k not in (25, 40)]


async def test_on_sqlite_a_caller_that_stops_waiting_does_not_undo_its_write(
    tmp_path: Path,
) -> None:
    """SQLite's writes run on the writer thread whatever the caller does; on PostgreSQL a
    cancelled caller's transaction is rolled back (the run store shields its writes)."""
    run_db = open_run_database(f"sqlite:///{tmp_path / 'runs.db'}")
    await run_db.migrate()
    table = f"w_{uuid.uuid4().hex[:8]}"
    await run_db.write(
        lambda conn: conn.exec_driver_sql(f"CREATE TABLE {table} (k INTEGER PRIMARY KEY)")
    )
    writes = [
        asyncio.ensure_future(
            run_db.write(
                lambda conn, k=k: conn.execute(
                    sa.text(f"INSERT INTO {table} (k) VALUES (:k)"), {"k": k}
                )
            )
        )
        for k in range(20)
    ]
    await asyncio.sleep(0)
    writes[3].cancel()
    await asyncio.gather(*writes, return_exceptions=True)
    await run_db.write(lambda conn: None)  # after every write queued before it
    async with run_db.snapshot() as conn:
        count = (await conn.execute(sa.text(f"SELECT count(*) FROM {table}"))).scalar_one()
    assert count == 20
    await run_db.aclose()


async def test_on_sqlite_a_transaction_cancelled_mid_statement_releases_the_write_lock(
    tmp_path: Path,
) -> None:
    """The cancelled task stays referenced, and with it the cursor of its statement: the
    connection must still give up BEGIN IMMEDIATE's lock, or every later writer waits out
    the busy timeout."""
    db = open_run_database(f"sqlite:///{tmp_path / 'runs.db'}")
    await db.migrate()
    async with db.transaction() as conn:
        await conn.exec_driver_sql("CREATE TABLE cancelled_writes (k INTEGER PRIMARY KEY)")
    statement_sent = asyncio.Event()

    async def slow_writer() -> None:
        async with db.transaction() as conn:
            await conn.exec_driver_sql("INSERT INTO cancelled_writes (k) VALUES (1)")
            statement_sent.set()
            await conn.execute(
                sa.text(
                    "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r"
                    " WHERE i < 3000000) SELECT count(*) FROM r"
                )
            )

    writer = asyncio.ensure_future(slow_writer())
    await statement_sent.wait()
    await asyncio.sleep(0.05)
    writer.cancel()
    try:
        await writer
    except asyncio.CancelledError as cancelled:
        # Its traceback holds the statement's cursor, as a reference cycle waiting for
        # the garbage collector would.
        kept = cancelled

    async def write_again() -> None:
        async with db.transaction() as conn:
            await conn.exec_driver_sql("INSERT INTO cancelled_writes (k) VALUES (2)")

    await asyncio.wait_for(write_again(), timeout=10)  # the busy timeout is 30 s
    async with db.snapshot() as conn:
        stored = [k for (k,) in await conn.exec_driver_sql("SELECT k FROM cancelled_writes")]
    assert stored == [2]
    assert kept.__traceback__ is not None  # still referenced up to here
    await db.aclose()


async def test_postgresql_connections_dropped_while_idle_are_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(database_module, "PING_AFTER_IDLE", 0.0)
    async for url in fresh_pg_database():
        db = open_run_database(url)
        try:
            await db.migrate()
            async with db.single_statement() as conn:
                await conn.execute(sa.text("SELECT 1"))
            name = make_url(url).database
            admin = await asyncpg.connect(os.environ[PG_ENV])
            try:
                dropped = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = $1 AND pid <> pg_backend_pid()",
                    name,
                )
            finally:
                await admin.close()
            assert dropped >= 1
            async with db.single_statement() as conn:
                assert (await conn.execute(sa.text("SELECT 1"))).scalar_one() == 1
        finally:
            await db.aclose()


async def test_a_statement_on_asyncpg_that_finds_its_connection_dead_drops_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(database_module, "PING_AFTER_IDLE", 1e9)  # no check on checkout
    pid_of = sa.text("SELECT pg_backend_pid()")
    async for url in fresh_pg_database():
        db = open_run_database(url)
        try:
            async with db.single_statement() as conn:
                row = await prepared.pg_fetchrow(conn, pid_of, {})
            assert row is not None
            admin = await asyncpg.connect(os.environ[PG_ENV])
            try:
                await admin.execute("SELECT pg_terminate_backend($1)", row[0])
            finally:
                await admin.close()
            with pytest.raises(sa.exc.DBAPIError):
                async with db.single_statement() as conn:
                    await prepared.pg_fetchrow(conn, pid_of, {})
            async with db.single_statement() as conn:
                again = await prepared.pg_fetchrow(conn, pid_of, {})
            assert again is not None and again[0] != row[0]
        finally:
            await db.aclose()


def test_the_sqlite_writer_waits_for_another_process_writer_in_short_steps(
    tmp_path: Path,
) -> None:
    """A writer of another process holds the file's write lock for 180 ms: the writer
    thread's BEGIN IMMEDIATE gets in soon after it lets go (SQLite's own busy handler,
    sleeping 1, 2, 5 … 50 ms a try, would try next at 228 ms), then has its busy timeout
    back; a BEGIN that fails for another reason fails at once."""
    import sqlite3
    import threading
    import time

    path = tmp_path / "locked.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("PRAGMA journal_mode=WAL")
    other.execute("CREATE TABLE t (x)")
    mine = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    mine.execute("PRAGMA busy_timeout=30000")
    other.execute("BEGIN IMMEDIATE")
    released = 0.0

    def release() -> None:
        nonlocal released
        time.sleep(0.18)
        other.execute("INSERT INTO t VALUES (1)")
        released = time.monotonic()
        other.execute("COMMIT")

    holder = threading.Thread(target=release)
    holder.start()
    database_module._begin_immediate(mine)
    got_in = time.monotonic()
    holder.join()
    assert mine.in_transaction and got_in - released < 0.01
    mine.execute("INSERT INTO t VALUES (2)")
    mine.execute("COMMIT")
    assert mine.execute("PRAGMA busy_timeout").fetchone() == (database_module.BUSY_TIMEOUT_MS,)
    assert other.execute("SELECT count(*) FROM t").fetchone() == (2,)

    mine.execute("BEGIN")
    with pytest.raises(sqlite3.OperationalError, match="within a transaction"):
        database_module._begin_immediate(mine)
    mine.execute("ROLLBACK")
    for conn in (mine, other):
        conn.close()
