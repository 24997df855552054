"""Running one run while holding its lease: the effect runner of ``decide``.

The loop asks ``decide`` what the run does next, carries the command out (a model call, a
tool call, a journal entry, an approval wait, a checkpoint) and records what came of it,
until the run finishes or waits for a person. Every model call is checkpointed as soon as
it returns, and every tool call is journaled before it runs (unless it is safe to repeat)
and when it ends, so a run resumed by another executor repeats neither a model call nor a
completed tool call; and since a resumed run is decided from the same state by the same
function, it does what the first execution would have done. Budgets are checked by
``decide`` before the spending they would not allow; each command's effect is in
``effects.py``, and what wraps each call (spans, quota, capture, output guardrails) in
``intercept/``. This module holds the run's lease, asks, and ends the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from opentelemetry.trace import INVALID_SPAN, Span

from dataplane.config.snapshot import ExecutorConfig
from dataplane.guardrails import pii
from dataplane.models.gateway import ModelGateway
from dataplane.models.types import ChatMessage
from dataplane.orchestrator.account import RunAccount
from dataplane.orchestrator.calls import Usage
from dataplane.orchestrator.context import Limits, RunContext, resolve
from dataplane.orchestrator.decide import (
    AskForRepair,
    CallModel,
    EndStep,
    Finish,
    Record,
    RunTool,
    Situation,
    WaitForPerson,
    counted,
    decide,
)
from dataplane.orchestrator.effects import Effects, Progress, RunServices, Stop
from dataplane.orchestrator.intercept.tracing import trace_run_end
from dataplane.orchestrator.opening import opening
from dataplane.orchestrator.writes import RunWrites
from dataplane.quota.leases import Quotas
from dataplane.runstore.errors import LeaseLost
from dataplane.runstore.model import Lease, NewEvent, Run, StopReason, stopped
from dataplane.runstore.store import RunStore
from dataplane.telemetry.otel import Tracing, trace_id_of
from dataplane.telemetry.records import RunLabels
from dataplane.tools.router import ToolRouter

MAX_DETAIL = 500
"""Characters of a stop's detail kept."""


class RunLoop:
    def __init__(
        self,
        store: RunStore,
        gateway: ModelGateway,
        router: ToolRouter,
        config: ExecutorConfig,
        run: Run,
        lease: Lease,
        notify: Callable[[str], None] | None = None,
        *,
        admitted: RunContext | None = None,
        executor: str = "",
        quotas: Quotas | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        """``notify`` is called after every write, so watchers of this executor see
        events at once. ``admitted``: the run was admitted here just now, with this
        context (from ``config``), and created with its opening checkpoint (``opening``)
        and no more history to read back; None: resolve the context and resume from the
        run store. ``quotas``: the tenants' quota leases model calls reserve from."""
        self.store = store
        self.gateway = gateway
        self.router = router
        self.config = config
        self.run = run
        self.admitted = admitted
        self.executor = executor
        self.quotas = quotas
        self.tracing = tracing or Tracing()
        self._services = RunServices(config, gateway, router, self.tracing, quotas)
        self.cancel_reason = ""
        """Set before cancelling the task that runs ``execute`` to stop the run as
        cancelled."""
        self.paused = False
        """Set when the run stopped to wait for a person."""
        self._notify_of = notify
        self._writes = RunWrites(store, lease, self._notify)
        self._span: Span = INVALID_SPAN
        self._account = RunAccount(RunLabels(run.agent, "", executor))
        self._progress = Progress()

    @property
    def lease(self) -> Lease:
        return self._writes.lease

    async def execute(self) -> None:
        """Drive the run until it stops or waits; LeaseLost ends it silently (another
        executor has it now). Cancelled (CancelRun reached this executor), it stops the
        run as cancelled, even in the middle of a step. Its time here is one
        ``invoke_agent`` span, in the trace the run was started in."""
        carrier = self.run.request.get("trace", {})
        with self.tracing.run_span(self.run.agent, self.run.tenant, self.run.id, carrier) as span:
            self._span = span
            await self._execute()

    async def _execute(self) -> None:
        renewer = asyncio.create_task(self._keep_lease())
        try:
            await self._drive()
        except LeaseLost:
            return
        except asyncio.CancelledError:
            if not self.cancel_reason:
                raise
            with contextlib.suppress(LeaseLost):
                await self._cancelled()
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, LeaseLost):
                await renewer
            await self._writes.drain()

    async def _cancelled(self) -> None:
        """Stop the run as cancelled; a model call cut off mid-way may still be billed:
        at its worst case."""
        ending, self._progress.ending = self._progress.ending, None
        lost, self._progress.in_flight = self._progress.in_flight, None
        events = []
        if lost is not None:
            self._account.usage = Usage.from_dict(lost.usage)
            events.append(lost.event())
        events.append(self._stopped(StopReason.CANCELLED, self.cancel_reason))
        await self._writes.written()
        await self.store.finish(
            self.lease,
            StopReason.CANCELLED,
            detail=self.cancel_reason,
            events=events,
            checkpoint=ending,
        )
        self._notify()

    async def _keep_lease(self) -> None:
        """Renew the lease while a long step runs, so only a dead or stuck executor
        loses it. Every checkpoint extends the lease too, so a run that makes progress
        is renewed only when a third of its TTL has passed without a write."""
        ttl = self.store.lease_ttl.total_seconds()
        while True:
            left = (self.lease.expires_at - datetime.now(UTC)).total_seconds()
            wait = left - ttl * 2 / 3
            if wait > 0:
                await asyncio.sleep(max(wait, 0.05))
                continue
            await self._writes.renew()

    def _notify(self) -> None:
        if self._notify_of is not None:
            self._notify_of(self.run.id)

    # -- the loop -------------------------------------------------------------------

    async def _drive(self) -> None:
        effects = self._begin()
        await self._read_history()
        while True:
            command = decide(self._state())
            try:
                match command:
                    case Finish():
                        await self._finish(command)
                        return
                    case WaitForPerson():
                        await effects.wait_for_person(command)
                        self.paused = True  # its lease is released
                        return
                    case CallModel():
                        await effects.call_model(command)
                    case AskForRepair():
                        effects.ask_for_repair(command)
                    case RunTool():
                        await effects.run_tool(command)
                    case Record():
                        await effects.record(command)
                    case EndStep():
                        effects.end_step(command)
            except Stop as stop:
                await self._finish(stop.finish)
                return

    def _begin(self) -> Effects:
        """The run's context and limits, its labels and span attributes, and the effects
        of its commands (with the interceptors its calls go through)."""
        run, request = self.run, self.run.request
        ctx = self.admitted or resolve(
            self.config,
            run.agent,
            request.get("variables", {}),
            pinned_version=request.get("prompt_version", ""),
            pinned_variant=request.get("variant", ""),
        )
        limits = Limits.from_dict(request.get("limits", {}))
        labels = RunLabels(run.agent, ctx.version.name, self.executor, ctx.variant)
        self._account = RunAccount(labels, Usage.from_dict(run.usage))
        self._span.set_attribute("pilothouse.prompt_version", ctx.version.name)
        if ctx.variant:
            self._span.set_attribute("pilothouse.rollout.variant", ctx.variant)
        if limits.max_usd is not None:
            self._span.set_attribute("pilothouse.budget.max_usd", str(limits.max_usd))
        if self.admitted is None:
            # Claimed from the pool: it waited since it became claimable.
            waited = (run.updated_at - run.available_at).total_seconds()
            self._account.queued_for = max(waited, 0.0)
            self.tracing.queue_duration.record(
                self._account.queued_for, {"pilothouse.tenant": run.tenant}
            )
        self._ctx, self._limits = ctx, limits
        self._caller_deadline = run.deadline_at.timestamp() if run.deadline_at else None
        self._scopes = frozenset(request.get("scopes") or ())
        self._effects = Effects(
            run,
            ctx,
            limits,
            self._services,
            writes=self._writes,
            account=self._account,
            progress=self._progress,
            state=self._state,
            notify=self._notify,
            audit=self._audit,
        )
        return self._effects

    async def _read_history(self) -> None:
        """The run's messages and the journal of its step in progress: read back from the
        run store for a run resumed here, the opening for one just admitted."""
        run = self.run
        self._progress.completed = run.step
        # Created with its first model call written (a claimed run has none: its claim
        # settled any its last holder left).
        self._progress.announced = run.step + 1 if run.model_call else 0
        if self.admitted is None:
            checkpoints, journal = await self.store.history(run.id)
            self._progress.messages = [
                ChatMessage.from_dict(m) for cp in checkpoints for m in cp.delta.get("messages", [])
            ]
            self._progress.calls = {j.call_index: j for j in journal if j.step == run.step + 1}
        if not self._progress.messages:
            self._progress.messages, first = opening(
                self._ctx,
                self.config.version,
                run.request.get("input", ""),
                self._account.labels,
                self._limits,
                created_at=run.created_at,
                trace_id=trace_id_of(run.request.get("trace", {})),
            )
            if self.admitted is None:
                await self._writes.now(first)

    def _state(self) -> Situation:
        return Situation(
            self.config,
            self._ctx,
            self._limits,
            self._account.usage,
            self._progress.messages,
            self._progress.calls,
            self._progress.completed,
            time.time(),
            self._effects.wall_deadline,
            self._caller_deadline,
            self._scopes,
            self.lease.cancel_requested,
            self.quotas is not None and self.quotas.usd_limited(self.run.tenant),
        )

    # -- the end --------------------------------------------------------------------

    async def _finish(self, finish: Finish) -> None:
        # The detail leaves the executor (run index, audit log): a provider's error
        # message may quote what it was sent.
        detail = pii.redact(finish.detail[:MAX_DETAIL]) if finish.detail else ""
        events = []
        if finish.reason is StopReason.COMPLETED:
            events.append(NewEvent("final_answer", {"text": finish.answer}))
        events.append(self._stopped(finish.reason, detail))
        ending, self._progress.ending = self._progress.ending, None
        await self._writes.written()
        await self.store.finish(
            self.lease,
            finish.reason,
            detail=detail,
            final_answer=finish.answer,
            events=events,
            checkpoint=ending,
        )
        self._notify()

    def _stopped(self, reason: StopReason, detail: str) -> NewEvent:
        """The ``run_stopped`` event, with the usage so far (the step in progress's tool
        calls included)."""
        usage = dataclasses.replace(self._account.usage)
        usage.tool_calls += counted(self._progress.calls)
        trace_run_end(
            self.tracing,
            self._span,
            self.run.tenant,
            reason,
            detail,
            usage,
            self._progress.completed,
        )
        return stopped(
            reason, detail, usage.to_dict(), steps=self._progress.completed, executor=self.executor
        )

    async def _audit(self, action: str, details: dict[str, Any]) -> None:
        run = self.run
        await self.store.audit(
            run.tenant,
            action,
            f"tenants/{run.tenant}/runs/{run.id}",
            details,
            executor=self.executor,
        )
