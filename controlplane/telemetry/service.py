"""Taking in executors' telemetry, and answering for it: usage sums and the run index."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from controlplane.auth.principal import Principal
from controlplane.errors import InvalidArgument, NotFound
from controlplane.registry.pagination import (
    decode_time_key,
    decode_token,
    encode_token,
    page_size,
    paginate,
    time_key,
)
from controlplane.store import telemetry as telemetry_store
from controlplane.store.database import Database
from controlplane.store.telemetry import (
    USAGE_DIMENSIONS,
    Freshness,
    RunRow,
    RunTotals,
    UsageQuery,
    UsageSum,
)
from controlplane.telemetry.records import Batch, Rejected

REPORTING_WINDOW = timedelta(minutes=1)
"""Relays that reported within this long count towards freshness."""
MAX_BUCKETS = 10_000
DEFAULT_RANGE = timedelta(hours=24)


@dataclass(frozen=True)
class Intake:
    """What became of a batch."""

    duplicates: int
    rejected: list[Rejected]


@dataclass(frozen=True)
class RunSummary:
    row: RunRow
    totals: RunTotals


class Telemetry:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def ingest(self, batch: Batch) -> Intake:
        """Write a batch in one transaction."""
        now = datetime.now(UTC)
        done = await self._db.write(lambda conn: telemetry_store.ingest(conn, batch, now))
        return Intake(done.duplicates, batch.rejected)

    async def freshness(self) -> Freshness:
        since = datetime.now(UTC) - REPORTING_WINDOW
        async with self._db.snapshot() as conn:
            return await telemetry_store.freshness(conn, since)

    async def query_usage(
        self,
        caller: Principal,
        tenant: str,
        *,
        start: datetime | None,
        end: datetime | None,
        group_by: Sequence[str],
        bucket: timedelta | None,
        page_size_: int,
        page_token: str,
    ) -> tuple[list[UsageSum], str, Freshness]:
        """Sums of ``tenant``'s usage ("-": every tenant the caller may see). Without an
        end, the range ends now: at the first page, which later pages keep to."""
        # The token is tied to the query it continues: a different query refuses it.
        asked = [tenant, start, end, list(group_by), bucket]
        collection = "usage:" + hashlib.sha256(json.dumps(asked, default=str).encode()).hexdigest()
        after = decode_token(page_token, collection[:24])
        offset = 0
        if after:
            position, _, first_end = after.partition("|")
            offset, end = int(position), end or datetime.fromisoformat(first_end)
        end = end or datetime.now(UTC)
        start = start or end - DEFAULT_RANGE
        if start >= end:
            raise InvalidArgument.of("start_time", "must be before end_time")
        if len(set(group_by)) != len(group_by):
            raise InvalidArgument.of("group_by", "names a dimension twice")
        for i, name in enumerate(group_by):
            if name not in USAGE_DIMENSIONS:
                raise InvalidArgument.of(f"group_by[{i}]", "is not a usage dimension")
        width = 0
        if bucket is not None:
            width = int(bucket.total_seconds())
            if width < 60 or bucket != timedelta(seconds=width):
                raise InvalidArgument.of("bucket", "must be whole seconds, at least 60")
            if (end - start) / bucket > MAX_BUCKETS:
                raise InvalidArgument.of(
                    "bucket", f"makes more than {MAX_BUCKETS} buckets of the range"
                )
        limit = page_size(page_size_)
        dims = tuple(group_by)
        if "run_id" in dims and "tenant" not in dims:
            dims = ("tenant", *dims)  # a run is named within its tenant
        query = UsageQuery(_scope(caller, tenant), start, end, dims, width, offset, limit + 1)
        async with self._db.snapshot() as conn:
            rows = await telemetry_store.sum_usage(conn, query)
        token = ""
        if len(rows) > limit:
            rows = rows[:limit]
            token = encode_token(collection[:24], f"{offset + limit}|{end.isoformat()}")
        return rows, token, await self.freshness()

    async def get_run(self, tenant: str, run_id: str) -> tuple[RunSummary, Freshness]:
        async with self._db.snapshot() as conn:
            row = await telemetry_store.get_run(conn, tenant, run_id)
            if row is None:
                # Telemetry may still be on its way: the run index is eventually consistent.
                raise NotFound(
                    "run (in the control plane's run index)", f"tenants/{tenant}/runs/{run_id}"
                )
            totals = await telemetry_store.run_totals(conn, [run_id])
        return RunSummary(row, totals.get(run_id, RunTotals())), await self.freshness()

    async def list_runs(
        self, caller: Principal, tenant: str, *, page_size_: int, page_token: str
    ) -> tuple[list[RunSummary], str, Freshness]:
        limit = page_size(page_size_)
        collection = f"runs:{tenant}"
        async with self._db.snapshot() as conn:
            found = await telemetry_store.list_runs(
                conn,
                _scope(caller, tenant),
                before=decode_time_key(page_token, collection),
                limit=limit + 1,
            )
            rows, token = paginate(
                found, limit, collection, lambda r: time_key(r.create_time, r.run_id)
            )
            totals = await telemetry_store.run_totals(conn, [r.run_id for r in rows])
        summaries = [RunSummary(r, totals.get(r.run_id, RunTotals())) for r in rows]
        return summaries, token, await self.freshness()


def _scope(caller: Principal, tenant: str) -> list[str] | None:
    """The tenants a query over ``tenant`` covers: "-" is every tenant the caller may
    see (None: all)."""
    if tenant != "-":
        return [tenant]
    return None if caller.tenant is None else [caller.tenant]
