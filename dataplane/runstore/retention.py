"""Retention of finished runs in the run store: a run that ended longer ago than the
pool keeps runs goes with its checkpoints, tool-call journal and events (its input,
messages and answer with them). What was relayed to the control plane (usage, the run
index, audit records) is kept there under its own retention; outbox events not yet
relayed are not touched.

Any executor of the pool may prune; on PostgreSQL each takes the runs it removes with
SKIP LOCKED, so two pruning at once do not wait on each other."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dataplane.runstore.model import RunState
from dataplane.runstore.schema import checkpoints, run_events, runs, tool_calls
from storekit.database import Database
from storekit.loop import every

log = logging.getLogger("pilothouse.runstore")

BATCH = 500
"""Runs removed in one transaction."""


def prune_ended(conn: Connection, before: datetime, limit: int) -> int:
    """Remove up to ``limit`` runs that finished before ``before``, with everything
    recorded under them; how many runs went."""
    query = (
        sa.select(runs.c.id)
        .where(runs.c.state == RunState.FINISHED.value, runs.c.ended_at < before)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    ids = list(conn.execute(query).scalars())
    if not ids:
        return 0
    for table in (checkpoints, tool_calls, run_events):
        conn.execute(table.delete().where(table.c.run_id.in_(ids)))
    return conn.execute(runs.delete().where(runs.c.id.in_(ids))).rowcount


class RunRetention:
    """Prunes finished runs older than ``keep``, every ``interval`` seconds."""

    def __init__(self, db: Database, keep: timedelta, *, batch: int = BATCH) -> None:
        self._db = db
        self.keep = keep
        self._batch = batch

    async def prune(self, now: datetime | None = None) -> int:
        before = (now or datetime.now(UTC)) - self.keep
        total = await self._db.write_in_batches(
            lambda conn, limit: prune_ended(conn, before, limit), self._batch
        )
        if total:
            log.info("pruned finished runs", extra={"runs": total, "ended_before": before})
        return total

    async def run_forever(self, interval: float) -> None:
        await every(interval, self.prune, log, "pruning finished runs failed")
