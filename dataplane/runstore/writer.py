"""Write transactions of the run store, and the listeners that hear of the events they
wrote once they have committed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from sqlalchemy.engine import Connection

from dataplane.runstore.model import RunEvent
from storekit.database import Database
from storekit.loop import Uninterrupted

T = TypeVar("T")

EventListener = Callable[[str, Sequence[RunEvent]], None]
"""Hears of a run's events once the transaction that wrote them has committed."""

WRITTEN = "pilothouse.written_events"
"""Key of ``Connection.info`` under which a write transaction collects its events."""

Written = list[tuple[str, RunEvent]]
"""Events a write inserted, by run, as listeners hear them."""


class Writer:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.listeners: list[EventListener] = []
        self._whole = Uninterrupted()

    async def write(self, body: Callable[[Connection], T]) -> T:
        """Run ``body`` as one write transaction. The events it inserts go to the
        listeners once it has committed (never when it rolls back), so watchers on this
        executor need not read them back. Once started, the transaction runs to its end
        even if the caller is cancelled meanwhile, and its events are still heard."""
        written: Written = []

        def transaction(conn: Connection) -> T:
            conn.info[WRITTEN] = written
            try:
                return body(conn)
            finally:
                del conn.info[WRITTEN]

        return await self.shielded(self.db.write(transaction), written)

    async def shielded(self, work: Awaitable[T], written: Written) -> T:
        """Run ``work`` to its end whatever happens to the caller; once it has succeeded,
        tell the listeners of the events it wrote (``written``, filled as it goes)."""

        def publish(done: asyncio.Future[T]) -> None:
            if done.cancelled() or done.exception() is not None:
                return
            by_run: dict[str, list[RunEvent]] = {}
            for run_id, event in written:
                by_run.setdefault(run_id, []).append(event)
            for run_id, events in by_run.items():
                for listener in self.listeners:
                    listener(run_id, events)

        return await self._whole.run(work, publish)

    async def drain(self) -> None:
        """Wait for the writes still running for callers that were cancelled."""
        await self._whole.drain()
