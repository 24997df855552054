"""A database for both servers: SQLite or PostgreSQL behind one interface. Reads go
through a SQLAlchemy async engine (aiosqlite, asyncpg); on SQLite, writes run on one
writer thread of the database's own with group commit (``Database.write``), and on
PostgreSQL one-statement writes may run on asyncpg itself (``storekit.prepared``).
Transactions, one-statement reads, consistent snapshots, and Alembic migrations that
several processes may start at once."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

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


T = TypeVar("T")


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
            # A fixed set of connections: each aiosqlite connection is a thread, and one
            # opened for a moment of overflow costs a thread and the set-up pragmas.
            kwargs.update(
                connect_args={"timeout": 30, "factory": _RollbackOnClose},
                pool_reset_on_return=None,
                pool_size=pool_size,
                max_overflow=0,
            )
        else:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.dialect == "postgresql":
            _ping_when_idle(self.engine.sync_engine)
        self._write_turn = asyncio.Lock()
        self._sync_writer: sa.Engine | None = None
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine.sync_engine)
        if self.dialect == "sqlite" and self.url.database not in (None, "", ":memory:"):
            # ``write`` bodies run whole on one thread that owns one connection: a
            # transaction costs one hand-off to that thread, not one per statement.
            self._sync_writer = sa.create_engine(
                self.url.set(drivername="sqlite+pysqlite"),
                connect_args={
                    "timeout": 30,
                    "check_same_thread": False,
                    "factory": _RollbackOnClose,
                },
                pool_size=1,
                max_overflow=0,
                pool_reset_on_return=None,
            )
            _configure_sqlite(self._sync_writer, on_thread=True)
            self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
            self._writer_conn: Connection | None = None
            """The writer thread's connection, kept for its life (a checkout per group
            cost the pool's bookkeeping and events on every transaction)."""
            self._queue: collections.deque[_Queued] = collections.deque()
            self._queue_lock = threading.Lock()
            self._draining = False

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A read-write transaction, committed when the block exits cleanly.

        On SQLite it starts with BEGIN IMMEDIATE: the write lock is taken up front, so two
        writers queue on the busy timeout instead of failing on a lock upgrade. Writers of
        this process take turns on an asyncio lock first: SQLite admits one writer at a
        time anyway, and its busy handler waits by sleeping (for up to 100 ms a try), which
        under many concurrent writers costs far more than the writes. Other processes
        sharing the file still queue on the busy timeout.
        """
        if self.dialect != "sqlite":
            async with self.engine.connect() as conn, conn.begin():
                yield conn
            return
        async with self._write_turn, self.engine.connect() as conn:
            conn = await conn.execution_options(pilothouse_write=True)
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def single_statement(self) -> AsyncIterator[AsyncConnection]:
        """A connection for one statement outside any transaction (a read, or on
        PostgreSQL a write whose parts are all in that statement): it skips the
        BEGIN/COMMIT round trips one statement does not need."""
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
        async with self.transaction() as conn:
            if self.dialect == "postgresql":
                await conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": self.migration_lock}
                )
            await conn.run_sync(self._upgrade)

    async def current_revision(self) -> str | None:
        async with self.snapshot() as conn:
            return await conn.run_sync(_current_revision)

    async def write(self, body: Callable[[Connection], T]) -> T:
        """Run ``body`` atomically in a read-write transaction; return once it is committed.

        ``body`` is synchronous SQLAlchemy Core. On SQLite it runs on the writer thread,
        in the order the writes were asked for, with group commit: the writes that queued
        while the thread was busy run in one transaction (BEGIN IMMEDIATE to COMMIT), each
        in its own savepoint, so a body that raises undoes only its own writes. On
        PostgreSQL it runs on a pooled connection in a transaction of its own.
        """
        if self._sync_writer is None:
            async with self.transaction() as conn:
                return await conn.run_sync(body)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        with self._queue_lock:
            self._queue.append((body, future))
            start = not self._draining
            self._draining = True
        if start:
            self._write_thread.submit(self._drain)
        result: T = await future
        return result

    async def write_in_batches(self, body: Callable[[Connection, int], int], batch: int) -> int:
        """Run ``body(conn, batch)``, which changes at most ``batch`` rows and says how
        many, each time in a transaction of its own, until it changes fewer; the total.
        For work too large for one transaction (pruning): writers never wait long."""
        total = 0
        while True:
            n = await self.write(lambda conn: body(conn, batch))
            total += n
            if n < batch:
                return total

    def _drain(self) -> None:
        """On the writer thread: write what is queued, a group at a time, until nothing is."""
        while True:
            with self._queue_lock:
                if not self._queue:
                    self._draining = False
                    return
                group = [self._queue.popleft() for _ in range(min(len(self._queue), GROUP))]
            by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
            for outcome in self._write_group(group):
                by_loop.setdefault(outcome[0].get_loop(), []).append(outcome)
            for loop, outcomes in by_loop.items():
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    loop.call_soon_threadsafe(_settle, outcomes)

    def _write_group(self, group: list[_Queued]) -> list[_Outcome]:
        assert self._sync_writer is not None
        outcomes: list[_Outcome] = []
        try:
            conn = self._writer_connection()
            try:
                with conn.begin():
                    if len(group) == 1:
                        body, future = group[0]
                        outcomes.append((future, body(conn), None))
                    else:
                        driver = conn.connection.dbapi_connection
                        assert driver is not None
                        for body, future in group:
                            driver.execute("SAVEPOINT pilothouse_write")
                            try:
                                result = body(conn)
                            except Exception as e:
                                driver.execute("ROLLBACK TO pilothouse_write")
                                driver.execute("RELEASE pilothouse_write")
                                outcomes.append((future, None, e))
                                continue
                            driver.execute("RELEASE pilothouse_write")
                            outcomes.append((future, result, None))
            finally:
                if conn.invalidated:  # the connection broke: the next group opens another
                    self._close_writer_connection()
        except BaseException as e:
            # Nothing of the group was committed: every write of it failed.
            return [(future, None, e) for _, future in group]
        return outcomes

    def _writer_connection(self) -> Connection:
        """On the writer thread: its connection, opened on first use."""
        assert self._sync_writer is not None
        if self._writer_conn is None or self._writer_conn.closed:
            conn = self._sync_writer.connect()
            self._writer_conn = conn.execution_options(pilothouse_write=True)
        return self._writer_conn

    def _dispose_writer(self) -> None:
        self._close_writer_connection()
        assert self._sync_writer is not None
        self._sync_writer.dispose()

    def _close_writer_connection(self) -> None:
        conn, self._writer_conn = self._writer_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    async def aclose(self) -> None:
        await self.engine.dispose()
        if self._sync_writer is not None:
            # Closed on the writer thread, after the writes queued before it.
            await asyncio.get_running_loop().run_in_executor(
                self._write_thread, self._dispose_writer
            )
            self._write_thread.shutdown(wait=False)

    def _upgrade(self, connection: Connection) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(self.migrations))
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")


GROUP = 100
"""At most this many writes share a transaction (and SQLite's write lock)."""

_Queued = tuple[Callable[[Connection], Any], "asyncio.Future[Any]"]
_Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]


def _settle(outcomes: list[_Outcome]) -> None:
    """On the event loop: hand each write's result (or error) to its caller, unless the
    caller stopped waiting (the write was committed all the same)."""
    for future, result, error in outcomes:
        if future.cancelled():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _current_revision(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


PING_AFTER_IDLE = 10.0
"""Seconds a pooled PostgreSQL connection may idle before it is checked on checkout."""


def _ping_when_idle(engine: sa.Engine) -> None:
    """Check a pooled connection on checkout only when it has idled a while.

    SQLAlchemy's ``pool_pre_ping`` checks on every checkout, and with asyncpg a check is
    a transaction begun and rolled back: two round trips before every statement of the
    hot path. A connection in steady use is known to be alive; one that idled may have
    been dropped (a server restart, an idle timeout on the way), and a failed check makes
    the pool replace it (SQLAlchemy's disconnect handling covers the rest).
    """

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["pilothouse_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("pilothouse_idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as e:
            raise sa.exc.DisconnectionError(f"a pooled connection failed its check: {e}") from e


class _RollbackOnClose(sqlite3.Connection):
    """A SQLite connection that ends its open transaction before it closes.

    A task cancelled while its statement runs on the driver's thread has its connection
    invalidated and closed, but the statement's cursor stays referenced (by the
    cancelled task's traceback, say). ``sqlite3`` then closes lazily: the connection
    lives on until that cursor is freed, still inside its BEGIN IMMEDIATE, and every
    other writer of the file waits out its busy timeout. Rolling back first releases the
    lock at once; SQLite aborts the pending statement with it.
    """

    def close(self) -> None:
        if self.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.rollback()
        super().close()


BUSY_TIMEOUT_MS = 30_000
"""How long a statement waits for another writer of the file before it fails."""


def _configure_sqlite(engine: sa.Engine, *, on_thread: bool = False) -> None:
    """``on_thread``: the engine's connections run on a thread of their own, where a
    write may wait for its lock by sleeping (``_begin_immediate``)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver: BEGIN is ours (see below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA foreign_keys=ON",
            f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
            "PRAGMA synchronous=NORMAL",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get("pilothouse_write") and on_thread:
            _begin_immediate(conn.connection.dbapi_connection)
        elif options.get("pilothouse_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif not options.get("pilothouse_autocommit"):
            conn.exec_driver_sql("BEGIN")


def _begin_immediate(driver: Any) -> None:
    """BEGIN IMMEDIATE on the writer thread, waiting for a writer of another process in
    steps of 50 µs doubling to 1 ms.

    SQLite's own busy handler retries a locked BEGIN after sleeping 1, 2, 5, 10 … up to
    100 ms: with several processes writing one file (an executor's workers), each lost
    milliseconds for every write it waited behind, where that write took a fraction of
    one, and the machine's cores stood idle. The wait is bounded by the same timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 50e-6
    driver.execute("PRAGMA busy_timeout=0")
    try:
        while True:
            try:
                driver.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 1e-3)
    finally:
        driver.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
