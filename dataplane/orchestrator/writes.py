"""A run's fenced writes, in the order they were made, most of them in the background.

A step's checkpoints are written behind the run (the model reply's while its calls run,
the results' while the next model call is made) on one write task per run, which takes
all that is queued each time: a step whose calls never wait is one write. Whatever runs
before its checkpoint is durable is safe to repeat: a model call, or a call of a read-only
or idempotent tool. Everything that acts otherwise waits for the run's writes first
(``written``): a call journaled before it runs, an approval, the run's end. An executor
that dies with a write queued costs the calls made since then again, and nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from dataplane.runstore.model import CallEntry, Lease, StepCheckpoint, UnsettledModelCall
from dataplane.runstore.store import RunStore


class RunWrites:
    def __init__(
        self, store: RunStore, lease: Lease, notify: Callable[[], None] = lambda: None
    ) -> None:
        self.store = store
        self.lease = lease
        """The run's lease as the last write or renewal left it (it fences every write)."""
        self._notify = notify
        self._queued: list[tuple[StepCheckpoint, CallEntry | None]] = []
        self._intent: UnsettledModelCall | None = None
        self._writing: asyncio.Task[None] | None = None

    def behind(self, checkpoint: StepCheckpoint, call: CallEntry | None = None) -> None:
        """Queue ``checkpoint`` (with the journal entry of the step's last call, which
        nothing separates from it, so one transaction serves both)."""
        self.raise_failure()
        self._queued.append((checkpoint, call))
        self._start()

    def announce(self, call: UnsettledModelCall) -> None:
        """Write ``call`` before it is made, with the last of the queued checkpoints (or
        alone when none are queued); the caller waits with ``written``."""
        self.raise_failure()
        self._intent = call
        self._start()

    async def now(self, checkpoint: StepCheckpoint) -> None:
        await self._write([(checkpoint, None)])

    async def written(self) -> None:
        """Wait until the run's queued writes are durable (or raise why not)."""
        while self._writing is not None:
            await asyncio.shield(self._writing)

    def raise_failure(self) -> None:
        """Stop the run as soon as a background write failed (LeaseLost: the run went to
        another executor), before it calls a model or a tool for nothing."""
        if self._writing is not None and self._writing.done():
            self._writing.result()

    async def drain(self) -> None:
        """Let a write in flight end, whatever becomes of it (a run that ended in the
        middle of a step)."""
        if self._writing is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._writing)

    async def renew(self) -> None:
        self.lease = await self.store.renew(self.lease)

    def _start(self) -> None:
        if self._writing is None:
            self._writing = asyncio.create_task(self._write_queued())

    async def _write_queued(self) -> None:
        while self._queued or self._intent is not None:
            batch, self._queued = self._queued, []
            intent, self._intent = self._intent, None
            await self._write(batch, intent)
        self._writing = None  # a failed write task stays, for the run to hear of it

    async def _write(
        self,
        batch: list[tuple[StepCheckpoint, CallEntry | None]],
        model_call: UnsettledModelCall | None = None,
    ) -> None:
        """One write for each journal entry in ``batch`` and its checkpoints before it;
        ``model_call``, the call about to be made, goes with the last."""
        if not batch:
            if model_call is not None:
                self.lease = await self.store.announce_model_call(self.lease, model_call)
            return
        while batch:
            cut = next((i for i, (_, call) in enumerate(batch) if call is not None), len(batch) - 1)
            (*earlier, (last, call)), batch = batch[: cut + 1], batch[cut + 1 :]
            self.lease = await self.store.checkpoint(
                self.lease,
                step=last.step,
                delta=last.delta,
                usage=last.usage,
                events=last.events,
                call=call,
                preceding=[cp for cp, _ in earlier],
                model_call=None if batch else model_call,
            )
            self._notify()
