"""Retention: how long the control plane keeps usage rows, run index entries and audit
records, and the loop that prunes what is older (on one replica at a time).

Audit records go from the start of their chain only, oldest first, and the chain stays
verifiable: its head row keeps the last removed record's sequence and hash, the first
record kept names that hash as its ``prev_hash``, and every pruning appends an
``AuditLog.pruned`` record to the chain saying what went.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Connection

from controlplane.store import audit as audit_store
from controlplane.store import retention as retention_store
from controlplane.store.database import Database

log = logging.getLogger("pilothouse.retention")

LEASE = "retention"
BATCH = 5000
"""Rows removed in one transaction."""


@dataclass(frozen=True)
class RetentionPolicy:
    """How long each kind of record is kept; None keeps it for ever."""

    usage: timedelta | None = None
    """Usage ledger rows, by the time of their call (and events the control plane
    rejected, by when it did)."""
    runs: timedelta | None = None
    """Run index entries, from the end of their run; unfinished runs are kept."""
    audit: timedelta | None = None
    """Audit records, by their time."""

    @property
    def prunes(self) -> bool:
        return any(age is not None for age in (self.usage, self.runs, self.audit))


@dataclass(frozen=True)
class Pruned:
    usage: int = 0
    rejected: int = 0
    runs: int = 0
    audit: int = 0


class Retention:
    def __init__(self, db: Database, policy: RetentionPolicy, *, batch: int = BATCH) -> None:
        self._db = db
        self.policy = policy
        self._batch = batch

    async def prune(self, now: datetime | None = None) -> Pruned:
        """Remove everything older than the policy keeps, as of ``now``."""
        now = now or datetime.now(UTC)
        p = self.policy
        usage = rejected = runs = audit = 0
        if p.usage is not None:
            usage = await self._drain(retention_store.prune_usage, now - p.usage)
            rejected = await self._drain(retention_store.prune_rejected, now - p.usage)
        if p.runs is not None:
            runs = await self._drain(retention_store.prune_runs, now - p.runs)
        if p.audit is not None:
            audit = await self._prune_audit(now - p.audit, now)
        pruned = Pruned(usage, rejected, runs, audit)
        if pruned != Pruned():
            log.info("pruned by retention", extra=vars(pruned))
        return pruned

    async def _drain(
        self, prune: Callable[[Connection, datetime, int], int], before: datetime
    ) -> int:
        return await self._db.write_in_batches(
            lambda conn, limit: prune(conn, before, limit), self._batch
        )

    async def _prune_audit(self, before: datetime, now: datetime) -> int:
        async with self._db.snapshot() as conn:
            chains = await audit_store.chains_older_than(conn, before)
        total = 0
        for chain in chains:
            prune = functools.partial(_prune_chain, chain=chain, before=before, now=now)
            total += await self._db.write_in_batches(prune, self._batch)
        return total


def _prune_chain(
    conn: Connection, limit: int, *, chain: str, before: datetime, now: datetime
) -> int:
    """One batch of the chain's oldest records, and the record of their removal, in one
    transaction; how many records went."""
    pruned = audit_store.prune(conn, chain, before, limit)
    if pruned is None:
        return 0
    tenant = None if chain == audit_store.NO_TENANT else chain
    audit_store.append(
        conn,
        [
            audit_store.NewAudit(
                now,
                tenant,
                "system",
                "AuditLog.pruned",
                f"tenants/{tenant}" if tenant else "system",
                json.dumps(
                    {
                        "records": pruned.records,
                        "through_sequence": pruned.through_sequence,
                        "through_hash": pruned.through_hash,
                        "before": before.isoformat(),
                    },
                    sort_keys=True,
                ),
            )
        ],
    )
    return pruned.records
