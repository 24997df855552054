"""Publishing snapshots: rebuild when the registry's revision moves, tell waiting streams.

The registry nudges the publisher after each committed change, so a change reaches
executors at once; a periodic check of the revision catches changes made through other
replicas (and a lost nudge) within ``reconcile_interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from controlplane.discovery.snapshot import Snapshot, build
from controlplane.registry.service import Registry
from storekit.loop import wait_event

log = logging.getLogger("pilothouse.discovery")


class SnapshotPublisher:
    def __init__(self, registry: Registry, *, reconcile_interval: float = 1.0) -> None:
        self._registry = registry
        self._interval = reconcile_interval
        self._nudged = asyncio.Event()
        self._current = Snapshot(revision=-1)
        self._newer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task[None] | None = None
        # One rebuild at a time, so a slow, older one never replaces a newer one.
        self._building = asyncio.Lock()

    @property
    def current(self) -> Snapshot:
        return self._current

    def newer(self) -> asyncio.Future[None]:
        """Resolves when a snapshot newer than the current one is published."""
        return self._newer

    def nudge(self) -> None:
        """Something changed: look at once."""
        self._nudged.set()

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="snapshot-publisher")

    async def refresh(self) -> bool:
        """Rebuild if the registry moved on; True when a new version was published."""
        async with self._building:
            return await self._rebuild()

    async def _rebuild(self) -> bool:
        if await self._registry.revision() == self._current.revision:
            return False
        contents = await self._registry.export()
        snapshot, held_back = build(contents, self._current)
        for tenant, problems in held_back.items():
            log.error(
                "configuration of tenant %s is inconsistent and is not published",
                tenant,
                extra={"tenant": tenant, "problems": list(problems)},
            )
        changed = snapshot.version != self._current.version
        self._current = snapshot
        if changed:
            log.info(
                "snapshot published",
                extra={"version": snapshot.version, "revision": snapshot.revision},
            )
            newer, self._newer = self._newer, asyncio.get_running_loop().create_future()
            newer.set_result(None)
        return changed

    async def _run(self) -> None:
        while True:
            await wait_event(self._nudged, self._interval)
            self._nudged.clear()
            try:
                await self.refresh()
            except Exception:
                log.exception("snapshot refresh failed; keeping the current snapshot")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
