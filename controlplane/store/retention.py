"""Pruning by age: the usage ledger, the run index and rejected events, a batch at a
time (each batch its own short transaction, so writers never wait long)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from controlplane.store.schema import rejected_events, run_index, usage_events
from controlplane.store.telemetry import micros


def prune_usage(conn: Connection, before: datetime, limit: int) -> int:
    """Remove up to ``limit`` ledger rows of events before ``before``; how many went."""
    oldest = (
        sa.select(usage_events.c.id).where(usage_events.c.time_us < micros(before)).limit(limit)
    )
    return conn.execute(usage_events.delete().where(usage_events.c.id.in_(oldest))).rowcount


def prune_runs(conn: Connection, before: datetime, limit: int) -> int:
    """Remove up to ``limit`` run index entries of runs that ended before ``before``."""
    key = sa.tuple_(run_index.c.tenant, run_index.c.run_id)
    oldest = (
        sa.select(run_index.c.tenant, run_index.c.run_id)
        .where(run_index.c.end_time < before)
        .limit(limit)
    )
    return conn.execute(run_index.delete().where(key.in_(oldest))).rowcount


def prune_rejected(conn: Connection, before: datetime, limit: int) -> int:
    oldest = sa.select(rejected_events.c.id).where(rejected_events.c.time < before).limit(limit)
    return conn.execute(rejected_events.delete().where(rejected_events.c.id.in_(oldest))).rowcount
