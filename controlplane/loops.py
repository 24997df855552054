"""Background loops that one control-plane replica at a time runs (rollout analysis,
quota lease expiry, retention): each holds a named lease in the database while it works.

A replica takes the lease when it is free or has expired and renews it on every tick;
a replica that stops releases it, and one that dies lets it expire, so another takes
over within the lease's time to live.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from controlplane.store import loop_leases
from controlplane.store.database import Database
from storekit.loop import every

log = logging.getLogger("pilothouse.loops")


class LoopLease:
    """The lease ``name`` as ``holder`` (one running control plane) sees it."""

    def __init__(self, db: Database, name: str, holder: str, ttl: timedelta) -> None:
        self._db = db
        self.name = name
        self.holder = holder
        self.ttl = ttl
        self.held = False
        self.regained = False
        """True after the ``hold`` that took the lease back: another replica may have
        worked meanwhile, so what this one remembers of the work is stale."""

    async def hold(self, now: datetime | None = None) -> bool:
        """Take or renew the lease; whether this replica holds it now."""
        now = now or datetime.now(UTC)
        async with self._db.transaction() as conn:
            held = await loop_leases.hold(
                conn, self.name, self.holder, now=now, until=now + self.ttl
            )
        self.regained = held and not self.held
        self.held = held
        return held

    async def release(self) -> None:
        if not self.held:
            return
        self.held = False
        with contextlib.suppress(Exception):
            async with self._db.transaction() as conn:
                await loop_leases.release(conn, self.name, self.holder)

    async def run(self, interval: float, work: Callable[[datetime], Awaitable[object]]) -> None:
        """Every ``interval`` seconds until cancelled: take or renew the lease and, while
        it is this replica's, do ``work`` (given the time). A failed pass is logged and the
        next comes as usual; the lease is released at the end."""

        async def work_if_held() -> None:
            now = datetime.now(UTC)
            if await self.hold(now):
                await work(now)

        try:
            await every(interval, work_if_held, log, f"background loop {self.name} failed a pass")
        finally:
            await asyncio.shield(self.release())
