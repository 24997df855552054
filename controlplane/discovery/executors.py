"""What the control plane knows of each executor: its connection, the snapshot version it
acknowledged, the versions it rejected and why. Kept in the database so every replica
sees it and a rejected version is never offered again to the same node.

Streams report through ``record_*``: the records are written in order by one background
writer, so a stream never waits on (or is cancelled in the middle of) a status write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from controlplane.registry.pagination import decode_token, page_size, paginate
from controlplane.store import executors as executor_store
from controlplane.store.database import Database
from controlplane.store.executors import ExecutorRow

log = logging.getLogger("pilothouse.discovery")

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
    view: str = ""
    """The tenant whose configuration it sees; "" for every tenant's."""


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
        row.view,
    )


_Write = Callable[[AsyncConnection], Awaitable[None]]


class ExecutorRegistry:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._streams: Counter[str] = Counter()
        self._queue: asyncio.Queue[_Write | None] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_in_order(), name="executor-status")

    async def connected(self, node_id: str, cluster: str, view: str | None = None) -> set[str]:
        """A stream from ``node_id`` opened, seeing ``view``'s configuration (None: every
        tenant's); the versions it rejected before."""
        self._streams[node_id] += 1
        done: asyncio.Future[set[str]] = asyncio.get_running_loop().create_future()

        async def write(conn: AsyncConnection) -> None:
            await executor_store.connect(conn, node_id, cluster, datetime.now(UTC), view or "")
            row = await executor_store.get(conn, node_id)
            assert row is not None
            if not done.done():
                done.set_result(set(json.loads(row.nacked_versions)))

        self._queue.put_nowait(write)
        return await done

    def record_ack(self, node_id: str, version: str) -> None:
        async def write(conn: AsyncConnection) -> None:
            await executor_store.update(
                conn, node_id, acked_version=version, last_seen_time=datetime.now(UTC)
            )

        self._queue.put_nowait(write)

    def record_nack(self, node_id: str, version: str, error: str) -> None:
        async def write(conn: AsyncConnection) -> None:
            now = datetime.now(UTC)
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

        self._queue.put_nowait(write)

    def record_closed(self, node_id: str) -> None:
        self._streams[node_id] -= 1
        if self._streams[node_id] > 0:
            return
        del self._streams[node_id]

        async def write(conn: AsyncConnection) -> None:
            await executor_store.update(
                conn, node_id, connected=False, last_seen_time=datetime.now(UTC)
            )

        self._queue.put_nowait(write)

    async def _write_in_order(self) -> None:
        """Apply the writes in the order they came, all those waiting in one transaction:
        a new snapshot brings an ACK from every executor at once."""
        while (first := await self._queue.get()) is not None:
            batch, stopping = [first], False
            while not self._queue.empty():
                write = self._queue.get_nowait()
                if write is None:
                    stopping = True
                    break
                batch.append(write)
            await self._apply(batch)
            if stopping:
                return

    async def _apply(self, batch: list[_Write]) -> None:
        try:
            async with self._db.transaction() as conn:
                for write in batch:
                    await write(conn)
            return
        except Exception:
            if len(batch) == 1:
                log.exception("could not record executor status")
                return
        for write in batch:  # one failed: the others still count
            try:
                async with self._db.transaction() as conn:
                    await write(conn)
            except Exception:
                log.exception("could not record executor status")

    async def aclose(self) -> None:
        """Write what is queued, then stop."""
        self._queue.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer

    async def list_page(self, size: int, token: str) -> tuple[list[ExecutorStatus], str]:
        limit = page_size(size)
        after = decode_token(token, "executors")
        async with self._db.snapshot() as conn:
            rows = await executor_store.list_page(conn, after=after, limit=limit + 1)
        page, next_token = paginate(rows, limit, "executors", lambda row: row.node_id)
        return [_status(row) for row in page], next_token
