"""What the control plane knows of each executor: its connection, the snapshot version it
acknowledged, the versions it rejected and why. Kept in the database so every replica
sees it and a rejected version is never offered again to the same node."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

from controlplane.registry.pagination import decode_token, page_size, paginate
from controlplane.store import executors as executor_store
from controlplane.store.database import Database
from controlplane.store.executors import ExecutorRow

# Rejected versions remembered per node; older ones are forgotten.
NACKED_KEPT = 32


@dataclass(frozen=True)
class ExecutorStatus:
    node_id: str
    cluster: str
    connected: bool
    connected_since: datetime
    last_seen_time: datetime
    acked_version: str
    last_nack_version: str
    last_nack_error: str
    last_nack_time: datetime | None


def _status(row: ExecutorRow) -> ExecutorStatus:
    return ExecutorStatus(
        row.node_id,
        row.cluster,
        row.connected,
        row.connected_since,
        row.last_seen_time,
        row.acked_version,
        row.last_nack_version,
        row.last_nack_error,
        row.last_nack_time,
    )


class ExecutorRegistry:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._streams: Counter[str] = Counter()

    async def connected(self, node_id: str, cluster: str) -> set[str]:
        """A stream from ``node_id`` opened; the versions it rejected before."""
        self._streams[node_id] += 1
        async with self._db.transaction() as conn:
            await executor_store.connect(conn, node_id, cluster, datetime.now(UTC))
            row = await executor_store.get(conn, node_id)
        assert row is not None
        return set(json.loads(row.nacked_versions))

    async def acked(self, node_id: str, version: str) -> None:
        async with self._db.transaction() as conn:
            await executor_store.update(
                conn, node_id, acked_version=version, last_seen_time=datetime.now(UTC)
            )

    async def nacked(self, node_id: str, version: str, error: str) -> None:
        now = datetime.now(UTC)
        async with self._db.transaction() as conn:
            row = await executor_store.get(conn, node_id)
            kept = json.loads(row.nacked_versions) if row else []
            kept = [v for v in kept if v != version][-(NACKED_KEPT - 1) :] + [version]
            await executor_store.update(
                conn,
                node_id,
                nacked_versions=json.dumps(kept),
                last_nack_version=version,
                last_nack_error=error,
                last_nack_time=now,
                last_seen_time=now,
            )

    async def disconnected(self, node_id: str) -> None:
        self._streams[node_id] -= 1
        if self._streams[node_id] > 0:
            return
        del self._streams[node_id]
        async with self._db.transaction() as conn:
            await executor_store.update(
                conn, node_id, connected=False, last_seen_time=datetime.now(UTC)
            )

    async def list_page(self, size: int, token: str) -> tuple[list[ExecutorStatus], str]:
        limit = page_size(size)
        after = decode_token(token, "executors")
        async with self._db.snapshot() as conn:
            rows = await executor_store.list_page(conn, after=after, limit=limit + 1)
        page, next_token = paginate(rows, limit, "executors", lambda row: row.node_id)
        return [_status(row) for row in page], next_token
