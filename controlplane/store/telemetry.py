"""The usage ledger, the run index and relay status: ingestion (idempotent by event id)
and the queries that read them back."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from controlplane.store import audit as audit_store
from controlplane.store.audit import NewAudit
from controlplane.store.schema import (
    rejected_events,
    relay_status,
    run_index,
    usage_events,
)
from controlplane.telemetry.records import PICO, Batch, RunChange, folded
from storekit import prepared


@dataclass(frozen=True)
class Ingested:
    duplicates: int
    """Usage and audit records that were already in."""


@dataclass(frozen=True)
class _Statements:
    """The statements of ingestion, built once per dialect: ingestion is a hot path, and
    on SQLite ``prepared.run`` runs a statement built once for a fraction of the cost."""

    usage: Any
    rejected: Any
    runs: Any
    relay: Any
    returning: bool
    """Whether inserts count what they added by RETURNING (PostgreSQL, whose driver gives
    no row count for a batch) or by the row count (SQLite)."""


@functools.cache
def _statements(dialect: str) -> _Statements:
    insert = (postgresql if dialect == "postgresql" else sqlite).insert
    returning = dialect == "postgresql"
    usage = insert(usage_events).on_conflict_do_nothing(index_elements=["id"])
    status = {
        c: sa.bindparam(c, type_=relay_status.c[c].type)
        for c in ("last_seen_time", "pending_events", "oldest_pending_time")
    }
    return _Statements(
        usage.returning(usage_events.c.id) if returning else usage,
        insert(rejected_events).on_conflict_do_nothing(index_elements=["id"]),
        _run_upsert(insert(run_index)),
        insert(relay_status)
        .values(executor=sa.bindparam("executor"), **status)
        .on_conflict_do_update(index_elements=["executor"], set_=status),
        returning,
    )


# BigInteger before Integer, which it is a kind of.
_PG_ARRAY_TYPES = {
    sa.String: "text",
    sa.BigInteger: "bigint",
    sa.Integer: "integer",
    sa.Float: "float8",
    sa.Boolean: "boolean",
}


def _pg_array_type(column: sa.Column[Any]) -> str:
    return next(t for kind, t in _PG_ARRAY_TYPES.items() if isinstance(column.type, kind))


# Usage rows on PostgreSQL in one statement, one array per column: far less work per row
# than a multi-row VALUES list. Counts the rows it added.
_USAGE_COLUMNS = tuple(c.name for c in usage_events.columns)
_PG_USAGE = sa.text(
    f"""
    WITH added AS (
        INSERT INTO usage_events ({", ".join(_USAGE_COLUMNS)})
        SELECT * FROM unnest({
        ", ".join(f"CAST(:{c.name} AS {_pg_array_type(c)}[])" for c in usage_events.columns)
    })
        ON CONFLICT (id) DO NOTHING
        RETURNING 1
    )
    SELECT count(*) FROM added
    """
)


def _added_usage(conn: Connection, rows: list[dict[str, Any]], statements: _Statements) -> int:
    if not statements.returning:
        return prepared.run(conn, statements.usage, rows).rowcount
    arrays = {name: [r[name] for r in rows] for name in _USAGE_COLUMNS}
    return int(conn.execute(_PG_USAGE, arrays).scalar_one())


def ingest(conn: Connection, batch: Batch, now: datetime) -> Ingested:
    """Write one batch, in the caller's transaction: records already ingested (same id)
    are skipped, run changes merge with what the index holds."""
    statements = _statements(conn.dialect.name)
    duplicates = 0
    if batch.audits:
        # First: a chain's head is the first lock this transaction takes.
        audits = [
            NewAudit(
                a.time,
                a.tenant,
                f"executors/{a.executor}" if a.executor else "executors",
                a.action,
                a.resource,
                a.details,
                a.id,
            )
            for a in batch.audits
        ]
        duplicates += len(audits) - audit_store.append(conn, audits)
    if batch.usage:
        rows = [
            {
                "id": u.id,
                "tenant": u.tenant,
                "time_us": u.time_us,
                "kind": u.kind,
                "run_id": u.run_id,
                "step": u.step,
                "agent": u.agent,
                "model": u.model,
                "provider": u.provider,
                "tool": u.tool,
                "prompt_version": u.prompt_version,
                "variant": u.variant,
                "executor": u.executor,
                "input_tokens": u.input_tokens,
                "output_tokens": u.output_tokens,
                "cached_input_tokens": u.cached_input_tokens,
                "cost_pico": u.cost_pico,
                "queue_seconds": u.queue_seconds,
                "model_seconds": u.model_seconds,
                "tool_seconds": u.tool_seconds,
                "approval_wait_seconds": u.approval_wait_seconds,
                "estimated": u.estimated,
            }
            for u in {u.id: u for u in batch.usage}.values()
        ]
        duplicates += len(batch.usage) - _added_usage(conn, rows, statements)
    if batch.runs:
        prepared.run(conn, statements.runs, [_run_row(c) for c in folded(batch.runs)])
    if batch.rejected:
        prepared.run(
            conn,
            statements.rejected,
            [
                {
                    "id": r.id,
                    "executor": batch.executor,
                    "time": now,
                    "reason": r.reason,
                    "event": r.event,
                }
                for r in {r.id: r for r in batch.rejected}.values()
            ],
        )
    prepared.run(
        conn,
        statements.relay,
        {
            "executor": batch.executor,
            "last_seen_time": now,
            "pending_events": batch.pending_events,
            "oldest_pending_time": batch.oldest_pending_time,
        },
    )
    return Ingested(duplicates)


def _run_row(c: RunChange) -> dict[str, Any]:
    return {
        "tenant": c.tenant,
        "run_id": c.run_id,
        "agent": c.agent,
        "state": c.state,
        "stop_reason": c.stop_reason,
        "stop_detail": c.stop_detail,
        "steps": c.steps,
        "prompt_version": c.prompt_version,
        "variant": c.variant,
        "trace_id": c.trace_id,
        "executor": c.executor,
        "create_time": c.create_time or c.time,
        "end_time": c.end_time,
        "last_event_time": c.time,
        "last_sequence": c.sequence,
    }


def _run_upsert(statement: Any) -> Any:
    """Upsert the run index with ``RunChange.merged``'s rule, against the stored row."""
    new, old = statement.excluded, run_index.c
    newer = new.last_sequence > old.last_sequence

    def latest(column: str) -> Any:
        return sa.case((newer, new[column]), else_=old[column])

    def known(column: str) -> Any:
        return sa.case((old[column] == "", new[column]), else_=old[column])

    def most(column: str) -> Any:
        return sa.case((new[column] > old[column], new[column]), else_=old[column])

    return statement.on_conflict_do_update(
        index_elements=["tenant", "run_id"],
        set_={
            "state": latest("state"),
            "stop_reason": latest("stop_reason"),
            "stop_detail": latest("stop_detail"),
            "end_time": latest("end_time"),
            "executor": sa.case(
                (sa.and_(newer, new.executor != ""), new.executor), else_=old.executor
            ),
            "agent": known("agent"),
            "prompt_version": known("prompt_version"),
            "variant": known("variant"),
            "trace_id": known("trace_id"),
            "create_time": sa.case(
                (new.create_time < old.create_time, new.create_time), else_=old.create_time
            ),
            "steps": most("steps"),
            "last_event_time": most("last_event_time"),
            "last_sequence": most("last_sequence"),
        },
    )


# -- reading ---------------------------------------------------------------------------

MICROS = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(when: datetime) -> int:
    """``when`` in microseconds since the epoch, exactly."""
    return (when - _EPOCH) // timedelta(microseconds=1)


USAGE_DIMENSIONS = (
    "tenant",
    "agent",
    "model",
    "prompt_version",
    "variant",
    "provider",
    "tool",
    "run_id",
)


@dataclass(frozen=True)
class UsageQuery:
    tenants: Sequence[str] | None
    """The tenants to sum; None for all."""
    start: datetime
    end: datetime
    """The range [start, end)."""
    group_by: tuple[str, ...]
    """Columns of ``USAGE_DIMENSIONS``."""
    bucket_s: int
    """Bucket width in seconds (buckets start at multiples of it since the epoch); 0 for
    one bucket, starting at ``start``."""
    offset: int
    limit: int


@dataclass(frozen=True)
class UsageSum:
    bucket_start_s: int
    group: dict[str, str]
    model_calls: int
    tool_calls: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cost_usd: Decimal
    queue_seconds: float
    model_seconds: float
    tool_seconds: float
    approval_wait_seconds: float
    estimated_model_calls: int = 0
    estimated_cost_usd: Decimal = Decimal(0)


async def sum_usage(conn: AsyncConnection, query: UsageQuery) -> list[UsageSum]:
    u = usage_events.c
    bucket: Any = (
        (u.time_us // (query.bucket_s * MICROS)) * query.bucket_s
        if query.bucket_s
        else sa.literal(int(query.start.timestamp()), sa.BigInteger)
    )
    bucket = bucket.label("bucket")
    dims = [u[name] for name in query.group_by]
    select = (
        sa.select(
            bucket,
            *dims,
            sa.func.sum(sa.case((u.kind == "model", 1), else_=0)),
            sa.func.sum(sa.case((u.kind == "tool", 1), else_=0)),
            sa.func.sum(u.input_tokens),
            sa.func.sum(u.output_tokens),
            sa.func.sum(u.cached_input_tokens),
            sa.func.sum(u.cost_pico),
            sa.func.sum(u.queue_seconds),
            sa.func.sum(u.model_seconds),
            sa.func.sum(u.tool_seconds),
            sa.func.sum(u.approval_wait_seconds),
            sa.func.sum(sa.case((u.estimated, 1), else_=0)),
            sa.func.sum(sa.case((u.estimated, u.cost_pico), else_=0)),
        )
        .where(u.time_us >= micros(query.start), u.time_us < micros(query.end))
        .group_by(bucket, *dims)
        .order_by(bucket, *dims)
        .offset(query.offset)
        .limit(query.limit)
    )
    if query.tenants is not None:
        select = select.where(u.tenant.in_(list(query.tenants)))
    out = []
    n = len(dims)
    for row in await conn.execute(select):
        sums = row[1 + n :]
        out.append(
            UsageSum(
                int(row[0]),
                {
                    name: str(value)
                    for name, value in zip(query.group_by, row[1 : 1 + n], strict=True)
                },
                int(sums[0]),
                int(sums[1]),
                int(sums[2]),
                int(sums[3]),
                int(sums[4]),
                Decimal(int(sums[5])) / PICO,
                float(sums[6]),
                float(sums[7]),
                float(sums[8]),
                float(sums[9]),
                int(sums[10]),
                Decimal(int(sums[11])) / PICO,
            )
        )
    return out


@dataclass(frozen=True)
class RunRow:
    tenant: str
    run_id: str
    agent: str
    state: str
    stop_reason: str
    stop_detail: str
    steps: int
    prompt_version: str
    variant: str
    trace_id: str
    executor: str
    create_time: datetime
    end_time: datetime | None
    last_event_time: datetime


_RUN_COLUMNS = tuple(run_index.c[name] for name in RunRow.__dataclass_fields__)


async def get_run(conn: AsyncConnection, tenant: str, run_id: str) -> RunRow | None:
    row = (
        await conn.execute(
            sa.select(*_RUN_COLUMNS).where(
                run_index.c.tenant == tenant, run_index.c.run_id == run_id
            )
        )
    ).first()
    return None if row is None else RunRow(*row)


async def list_runs(
    conn: AsyncConnection,
    tenants: Sequence[str] | None,
    *,
    before: tuple[datetime, str] | None,
    limit: int,
) -> list[RunRow]:
    """Runs newest first; ``before`` continues after a (create_time, run_id)."""
    r = run_index.c
    query = sa.select(*_RUN_COLUMNS)
    if tenants is not None:
        query = query.where(r.tenant.in_(list(tenants)))
    if before is not None:
        created, run_id = before
        query = query.where(
            sa.or_(r.create_time < created, sa.and_(r.create_time == created, r.run_id < run_id))
        )
    query = query.order_by(r.create_time.desc(), r.run_id.desc()).limit(limit)
    return [RunRow(*row) for row in await conn.execute(query)]


@dataclass(frozen=True)
class RunTotals:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    model_calls: int = 0
    tool_calls: int = 0


async def run_totals(conn: AsyncConnection, run_ids: Sequence[str]) -> dict[str, RunTotals]:
    """Each run's usage, summed from the ledger."""
    if not run_ids:
        return {}
    u = usage_events.c
    rows = await conn.execute(
        sa.select(
            u.run_id,
            sa.func.sum(u.input_tokens),
            sa.func.sum(u.output_tokens),
            sa.func.sum(u.cached_input_tokens),
            sa.func.sum(u.cost_pico),
            sa.func.sum(sa.case((u.kind == "model", 1), else_=0)),
            sa.func.sum(sa.case((u.kind == "tool", 1), else_=0)),
        )
        .where(u.run_id.in_(list(run_ids)))
        .group_by(u.run_id)
    )
    return {
        run_id: RunTotals(
            int(i), int(o), int(c), Decimal(int(cost)) / PICO, int(models), int(tools)
        )
        for run_id, i, o, c, cost, models, tools in rows
    }


@dataclass(frozen=True)
class Freshness:
    last_ingest_time: datetime | None
    pending_events: int
    oldest_pending_time: datetime | None
    reporting_executors: int


async def freshness(conn: AsyncConnection, since: datetime) -> Freshness:
    """What relays reported: the newest report, and the backlogs of those that reported
    since ``since``."""
    s = relay_status.c
    last = (await conn.execute(sa.select(sa.func.max(s.last_seen_time)))).scalar()
    pending, oldest, reporting = (
        await conn.execute(
            sa.select(
                sa.func.coalesce(sa.func.sum(s.pending_events), 0),
                sa.func.min(s.oldest_pending_time),
                sa.func.count(),
            ).where(s.last_seen_time >= since)
        )
    ).one()
    return Freshness(last, int(pending), oldest, int(reporting))
