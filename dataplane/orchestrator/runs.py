"""Runs on this executor: admitting them, running them, picking up queued and orphaned
runs of the pool, watching their events, cancelling them."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

from dataplane.config.snapshot import ExecutorConfig
from dataplane.config.watcher import ConfigWatcher
from dataplane.models.gateway import ModelGateway
from dataplane.orchestrator.admission import (
    Admission,
    Admitted,
    new_run,
    prepare,
)
from dataplane.orchestrator.context import (
    AdmissionError,
    Exhausted,
    RunContext,
)
from dataplane.orchestrator.loop import RunLoop
from dataplane.quota.leases import UNLIMITED_SLOT, QuotaExceeded, Quotas, RunSlot
from dataplane.runstore.model import Lease, Run, RunEvent, RunState
from dataplane.runstore.store import RunStore, opened_events
from dataplane.telemetry.otel import Tracing
from dataplane.tools.router import ToolRouter
from storekit.loop import wait_event

log = logging.getLogger("pilothouse.executor.runs")
T = TypeVar("T")

# A run that failed on an executor error waits this long before another try.
RETRY_AFTER_ERROR = timedelta(seconds=1)
# A run claimed from the queue whose tenant has no slot free goes back for at most this.
QUOTA_REQUEUE = timedelta(seconds=5)


class Runs:
    def __init__(
        self,
        store: RunStore,
        gateway: ModelGateway,
        router: ToolRouter,
        watcher: ConfigWatcher,
        *,
        owner: str,
        executor: str = "",
        poll_interval: float = 0.2,
        max_concurrent: int = 1000,
        on_pause: Callable[[], None] | None = None,
        gates: Sequence[Callable[[Admission], None]] = (),
        quotas: Quotas | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        """``owner``: this executor's name on the leases it holds; ``executor``: its node
        id, as telemetry names it. ``on_pause`` hears of every run that starts waiting
        for a person. ``gates`` may refuse a new run (raising ``Exhausted``) before it is
        created. ``quotas``: the tenants' quota leases runs and model calls spend from
        (None: no quotas)."""
        self._store = store
        self._gateway = gateway
        self._router = router
        self._watcher = watcher
        self.owner = owner
        self.executor = executor
        self._poll = poll_interval
        self._max_concurrent = max_concurrent
        self._loops: dict[str, tuple[RunLoop, asyncio.Task[None]]] = {}
        self._subscribers: dict[str, set[_Subscriber]] = {}
        store.listeners.append(self._published)
        self._claimer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._on_pause = on_pause
        self._gates = list(gates)
        self._quotas = quotas
        self._tracing = tracing or Tracing()

    def wake(self) -> None:
        """Runs may have become claimable: look now rather than at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        self._claimer = asyncio.create_task(self._claim_forever(), name="run-claimer")

    async def aclose(self) -> None:
        """Stop claiming; hand runs in progress back to the pool for another executor."""
        if self._claimer is not None:
            self._claimer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._claimer
        running = list(self._loops.values())
        for _, task in running:
            task.cancel()
        await asyncio.gather(*(task for _, task in running), return_exceptions=True)
        await self._store.drain()
        await asyncio.gather(
            *(self._store.hand_back(loop.lease) for loop, _ in running), return_exceptions=True
        )

    # -- admission -------------------------------------------------------------------

    async def admit(self, admission: Admission, *, run_now: bool) -> Admitted:
        """Create the run (or find the one its idempotency key names). With ``run_now``
        this executor starts it at once if it has a free slot, the run created with its
        opening checkpoint; otherwise it is queued for the pool."""
        config = self._watcher.current
        if config is None:
            raise AdmissionError("", "this executor has no configuration yet")
        # The run's id is chosen here: a run with no session or user id is a rollout's
        # unit of its own.
        run_id = str(uuid.uuid4())
        prepared = prepare(config, admission, run_id, self.executor)
        for gate in self._gates:
            gate(admission)
        # Without a free slot here, the run waits in the queue for any executor rather
        # than hold a lease nobody renews.
        queued = not run_now or len(self._loops) >= self._max_concurrent
        slot = await self._admission_slot(admission, queued=queued)
        usd_limited = self._quotas is not None and self._quotas.usd_limited(admission.tenant)
        new, first = new_run(
            config, admission, prepared, run_id, queued=queued, usd_limited=usd_limited
        )
        try:
            run, lease, created = await self._store.create(new, owner=self.owner)
        except BaseException:
            slot.release()
            raise
        if not created or lease is None:
            slot.release()
        if not created:
            return Admitted(run, False, None)
        if lease is None:
            self._wake.set()
            return Admitted(run, True, [])
        self._launch(run, lease, admitted=(config, prepared.ctx), slot=slot)
        assert first is not None
        return Admitted(run, True, opened_events(run, first))

    async def _admission_slot(self, admission: Admission, *, queued: bool) -> RunSlot:
        """A run that starts here holds one of its tenant's slots while it runs; a queued
        one takes its slot when an executor picks it up, but a spent budget refuses it now,
        as it refuses a run starting here. A refusal is an audit record."""
        try:
            if not queued:
                return await self._slot(admission.tenant)
            if self._quotas is not None:
                await self._quota_checked(self._quotas.check_budget(admission.tenant))
            return UNLIMITED_SLOT
        except Exhausted as e:
            await self._store.audit(
                admission.tenant,
                "quota.refused",
                admission.agent,
                {"limit": e.quota[1] if e.quota else "", "reason": str(e)},
                executor=self.executor,
            )
            raise

    async def _slot(self, tenant: str, *, budget: bool = True) -> RunSlot:
        """A slot of the tenant's quota for a run starting here, or ``Exhausted``."""
        if self._quotas is None:
            return UNLIMITED_SLOT
        return await self._quota_checked(self._quotas.take_slot(tenant, budget=budget))

    async def _quota_checked(self, check: Awaitable[T]) -> T:
        """``check``'s answer; its ``QuotaExceeded`` as ``Exhausted``, counted."""
        try:
            return await check
        except QuotaExceeded as e:
            self._tracing.quota_refusals.add(
                1, {"pilothouse.quota.limit": e.limit, "pilothouse.tenant": e.tenant}
            )
            raise Exhausted(
                str(e), retry_after=e.retry_after, quota=(f"tenants/{e.tenant}", e.limit)
            ) from None

    # -- running ---------------------------------------------------------------------

    def _launch(
        self,
        run: Run,
        lease: Lease,
        *,
        admitted: tuple[ExecutorConfig, RunContext] | None = None,
        slot: RunSlot = UNLIMITED_SLOT,
    ) -> None:
        """Drive ``run``, holding ``slot`` of its tenant's quota until it stops running
        here; ``admitted``: it was created just now, with this configuration and context
        (so it has no history, and its context need not be resolved again)."""
        config = admitted[0] if admitted else self._watcher.current
        assert config is not None
        loop = RunLoop(
            self._store,
            self._gateway,
            self._router,
            config,
            run,
            lease,
            self.notify,
            admitted=admitted[1] if admitted else None,
            executor=self.executor,
            quotas=self._quotas,
            tracing=self._tracing,
        )

        async def go() -> None:
            try:
                await loop.execute()
            except Exception:
                log.exception("run failed unexpectedly", extra={"run": run.id})
                with contextlib.suppress(Exception):
                    await self._store.release(
                        loop.lease,
                        retry_after=RETRY_AFTER_ERROR,
                        error="executor error",
                        executor=self.executor,
                    )
            finally:
                slot.release()
                full = len(self._loops) >= self._max_concurrent
                self._loops.pop(run.id, None)
                if full:
                    self._wake.set()  # a slot is free: queued runs need not wait for a poll
                self.notify(run.id)
                if loop.paused and self._on_pause is not None:
                    self._on_pause()

        self._loops[run.id] = (loop, asyncio.create_task(go(), name=f"run-{run.id}"))

    async def _claim_forever(self) -> None:
        while True:
            try:
                claimed = True
                # Claim only what this executor has room to run: a claimed run waiting for
                # a slot would hold a lease nobody renews.
                while (
                    claimed
                    and self._watcher.current is not None
                    and len(self._loops) < self._max_concurrent
                ):
                    got = await self._store.claim(self.owner)
                    claimed = got is not None
                    if got is not None:
                        lease, run = got
                        try:
                            # A run whose tenant's budget is spent starts all the same
                            # and stops at its first model call, saying why.
                            slot = await self._slot(run.tenant, budget=False)
                        except Exhausted as e:
                            await self._store.hand_back(
                                lease, delay=min(timedelta(seconds=e.retry_after), QUOTA_REQUEUE)
                            )
                            continue
                        self._launch(run, lease, slot=slot)
            except Exception:
                log.exception("claiming runs failed; retrying")
            await wait_event(self._wake, self._poll)
            self._wake.clear()

    # -- watching and cancelling ---------------------------------------------------

    def notify(self, run_id: str) -> None:
        """Something about the run changed (it stopped here, or was handed on): its
        watchers look again."""
        for sub in self._subscribers.get(run_id, ()):
            sub.changed.set()

    def _published(self, run_id: str, events: Sequence[RunEvent]) -> None:
        for sub in self._subscribers.get(run_id, ()):
            sub.pending.extend(events)
            sub.changed.set()

    async def watch(
        self,
        run_id: str,
        *,
        after: int = 0,
        until_pause: bool = False,
        known: Sequence[RunEvent] | None = None,
    ) -> AsyncIterator[RunEvent]:
        """The run's events after ``after``, then new ones as they are written, until the
        run finishes (or, with ``until_pause``, waits for an approval).

        Events this executor writes reach its watchers straight from the run store's
        commit, without a read; a run on another executor is followed by reading the
        store every poll interval. ``known``: the run's events so far, when the caller
        admitted it just now and so knows them; nothing is read back (its loop, if it runs
        here, has not started; one elsewhere is caught up with at the first poll).
        """
        sub = _Subscriber()
        subscribers = self._subscribers.setdefault(run_id, set())
        subscribers.add(sub)
        ending = {"run_stopped", "approval_required"} if until_pause else {"run_stopped"}
        try:
            events: Sequence[RunEvent] = (
                known if known is not None else await self._store.events(run_id, after=after)
            )
            while True:
                for event in events:
                    if event.seq <= after:
                        continue  # read back and also heard of
                    after = event.seq
                    yield event
                    if event.type in ending:
                        return
                sub.changed.clear()
                heard, sub.pending = sub.pending, []
                heard = [e for e in heard if e.seq > after]
                if heard:
                    # Heard in order from a local writer, unless a writer elsewhere
                    # came in between: then read what was missed.
                    contiguous = heard[0].seq == after + 1 and all(
                        b.seq == a.seq + 1 for a, b in itertools.pairwise(heard)
                    )
                    events = heard if contiguous else await self._store.events(run_id, after=after)
                    continue
                more = await self._wait_for_more(run_id, sub, after, until_pause=until_pause)
                if more is None:
                    return
                events = more
        finally:
            subscribers.discard(sub)
            if not subscribers:
                self._subscribers.pop(run_id, None)

    async def _wait_for_more(
        self, run_id: str, sub: _Subscriber, after: int, *, until_pause: bool
    ) -> Sequence[RunEvent] | None:
        """Wait for the run's next events (heard of, or read every poll interval when the
        run is not here): those read back, if any; None when the run is over and nothing
        more is to come."""
        local = run_id in self._loops
        if await wait_event(sub.changed, None if local else self._poll):
            if sub.pending:
                return []
            # Woken without events: the local loop ended or handed the run on.
            return await self._store.events(run_id, after=after)
        # Nothing heard: the run may be on another executor, or already over.
        events = await self._store.events(run_id, after=after)
        if events:
            return events
        run = await self._store.get(run_id)
        over = run.state is RunState.FINISHED or (
            until_pause and run.state is RunState.WAITING_APPROVAL
        )
        if over and not await self._store.events(run_id, after=after):
            return None
        return []

    async def cancel(self, run_id: str) -> Run:
        run = await self._store.request_cancel(run_id)
        local = self._loops.get(run_id)
        if local is not None:
            loop, task = local
            loop.cancel_reason = "cancelled"
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            run = await self._store.get(run_id)
        return run


@dataclass(eq=False)
class _Subscriber:
    """One watcher of a run: the events heard since it last looked."""

    pending: list[RunEvent] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
