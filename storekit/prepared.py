"""Statements of a hot path, run with less than SQLAlchemy's per-execution work.

On SQLite a statement is compiled once and then run straight on the driver's cursor,
with the same bound-parameter conversions SQLAlchemy would apply; an execution costs a
few microseconds instead of a few dozen. On other databases ``run`` is an ordinary
``Connection.execute``. ``pg_fetchrow`` runs one textual statement (untyped parameters,
so there are no conversions to apply) straight on asyncpg. Only for statements built once
and kept (module constants or cached builders): the compiled form is remembered per
statement object.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection


@dataclass(frozen=True)
class Outcome:
    rows: list[tuple[Any, ...]]
    """What a SELECT or RETURNING gave back (empty for other statements)."""
    rowcount: int


@dataclass(frozen=True)
class _Compiled:
    statement: sa.Executable
    """Kept so the statement, whose id keys the cache, outlives its entry."""
    sql: str
    names: tuple[str, ...]
    constants: Mapping[str, Any]
    processors: Mapping[str, Callable[[Any], Any]]
    returns_rows: bool

    def bind(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        values = []
        for name in self.names:
            value = params[name] if name in params else self.constants[name]
            process = self.processors.get(name)
            values.append(process(value) if process is not None and value is not None else value)
        return tuple(values)


_compiled: dict[int, _Compiled] = {}


def run(
    conn: Connection,
    statement: sa.Executable,
    params: Mapping[str, Any] | Sequence[Mapping[str, Any]],
) -> Outcome:
    """Execute ``statement`` with ``params`` (a list of them: once per entry)."""
    if conn.dialect.name != "sqlite":
        result = conn.execute(statement, params)
        rows = [tuple(r) for r in result] if result.returns_rows else []
        return Outcome(rows, result.rowcount)
    compiled = _compiled.get(id(statement))
    if compiled is None:
        compiled = _compile(conn, statement)
        _compiled[id(statement)] = compiled
    driver: Any = conn.connection.dbapi_connection
    cursor = driver.cursor()
    try:
        if isinstance(params, Mapping):
            cursor.execute(compiled.sql, compiled.bind(params))
            rows = cursor.fetchall() if compiled.returns_rows else []
        else:
            cursor.executemany(compiled.sql, [compiled.bind(p) for p in params])
            rows = []
        return Outcome([tuple(r) for r in rows], cursor.rowcount)
    except conn.dialect.loaded_dbapi.Error as e:
        # As SQLAlchemy would raise it (IntegrityError for a duplicate key, and so on).
        raise sa.exc.DBAPIError.instance(
            compiled.sql, None, e, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect
        ) from e
    finally:
        cursor.close()


_readers: dict[tuple[str, int], Callable[[Any], Any] | None] = {}


def read(conn: Connection, column: sa.Column[Any], value: Any) -> Any:
    """A value of ``column`` as ``run`` gives it back (on SQLite, as the driver returns
    it: a timestamp is text), read as SQLAlchemy would read it."""
    if value is None or conn.dialect.name != "sqlite":
        return value
    key = (conn.dialect.name, id(column))
    if key not in _readers:
        impl = column.type.dialect_impl(conn.dialect)
        _readers[key] = impl.result_processor(conn.dialect, None)
    process = _readers[key]
    return process(value) if process is not None else value


def _compile(conn: Connection, statement: sa.Executable) -> _Compiled:
    compiled: Any = statement.compile(dialect=conn.dialect)  # type: ignore[attr-defined]
    names = tuple(compiled.positiontup or ())
    return _Compiled(
        statement,
        compiled.string,
        names,
        {n: b.effective_value for n, b in compiled.binds.items() if not b.required},
        dict(compiled._bind_processors),
        bool(compiled.returning) or bool(getattr(statement, "is_select", False)),
    )


_pg_compiled: dict[int, tuple[sa.TextClause, str, tuple[str, ...]]] = {}


async def pg_fetchrow(
    conn: AsyncConnection, statement: sa.TextClause, params: Mapping[str, Any]
) -> tuple[Any, ...] | None:
    """The first row of ``statement`` run on asyncpg itself, on a connection outside any
    transaction (``Database.single_statement``), without SQLAlchemy's async layer, which
    cost a tenth more a checkpoint (docs/benchmarks.md). Driver errors come back as
    SQLAlchemy's ``DBAPIError``; a connection that died or was left mid-statement is
    dropped from the pool."""
    entry = _pg_compiled.get(id(statement))
    if entry is None:
        compiled: Any = statement.compile(dialect=conn.dialect)
        entry = (statement, compiled.string, tuple(compiled.positiontup or ()))
        _pg_compiled[id(statement)] = entry
    _, sql, names = entry
    fairy = await conn.get_raw_connection()
    driver: Any = fairy.driver_connection
    try:
        row = await driver.fetchrow(sql, *(params[name] for name in names))
    except BaseException as e:
        closed = bool(driver.is_closed())
        if closed or not isinstance(e, Exception):
            # Dead, or left mid-statement by a cancellation: not fit for the pool.
            await conn.invalidate()
        if isinstance(e, Exception):
            raise sa.exc.DBAPIError(sql, None, e, connection_invalidated=closed) from e
        raise
    return tuple(row) if row is not None else None
