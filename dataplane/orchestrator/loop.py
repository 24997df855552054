"""Running one run while holding its lease: plan (a model call), act (its tool calls),
checkpoint, and again, until an answer, a limit, a cancellation or an approval wait.

Every model call is checkpointed as soon as it returns, and every tool call is journaled
before it runs and when it ends, so a run resumed by another executor repeats neither a
model call nor a completed tool call. Budgets are checked before the spending they would
not allow: the worst case of a model call (the prompt's estimate plus the most it may
write) before it is made, each tool call before it runs, wall time throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from opentelemetry.trace import INVALID_SPAN, Span

from dataplane.config.snapshot import ExecutorConfig
from dataplane.guardrails import classifier, output, pii
from dataplane.guardrails.injection import screen
from dataplane.guardrails.taint import open_world, screen_arguments, trusted_output
from dataplane.guardrails.untrusted import NOTICE, is_marked, mark, unmark
from dataplane.models.gateway import GatewayResult, ModelGateway, NoModelAvailable
from dataplane.models.pricing import cost as price
from dataplane.models.types import ChatMessage, ChatRequest, ProviderError, ToolCall
from dataplane.models.types import Usage as CallUsage
from dataplane.orchestrator.calls import Usage, call_bounds, route_models, unsettled
from dataplane.orchestrator.context import Limits, RunContext, resolve
from dataplane.quota.leases import NO_RESERVATION, QuotaExceeded, Quotas, Reservation
from dataplane.runstore.errors import LeaseLost
from dataplane.runstore.model import (
    CallEntry,
    CallState,
    Checkpoint,
    Lease,
    NewEvent,
    Run,
    StepCheckpoint,
    StopReason,
    ToolCallRecord,
    UnsettledModelCall,
    stopped,
)
from dataplane.runstore.store import RunStore
from dataplane.telemetry import records
from dataplane.telemetry.otel import Tracing, captured, trace_id_of
from dataplane.telemetry.records import RunLabels
from dataplane.tools.router import ToolOutcome, ToolRouter, safe_to_repeat
from pilothouse.decimals import plain
from pilothouse.v1 import tenant_pb2, tool_pb2

MAX_DETAIL = 500
"""Characters of a stop's detail kept."""


@dataclass
class _Stop(Exception):
    reason: StopReason
    detail: str = ""
    final_answer: str = ""

    def __post_init__(self) -> None:
        # The detail leaves the executor (run index, audit log): a provider's error
        # message may quote what it was sent.
        self.detail = pii.redact(self.detail[:MAX_DETAIL])


@dataclass
class RunLoop:
    store: RunStore
    gateway: ModelGateway
    router: ToolRouter
    config: ExecutorConfig
    run: Run
    lease: Lease
    notify: Any = None
    """Called after every write, so watchers of this executor see events at once."""
    cancel_reason: str = ""
    """Set before cancelling the task that runs ``execute`` to stop the run as cancelled."""
    admitted: RunContext | None = None
    """Set when the run was admitted here just now: the context it was admitted with
    (from ``config``), and a run created with its opening checkpoint (``opening``) and no
    more history to read back. None: resolve the context and resume from the run store."""
    paused: bool = False
    """Set when the run stopped to wait for a person's approval."""
    executor: str = ""
    """This executor's node id, as the run's telemetry names it."""
    quotas: Quotas | None = None
    """The tenants' quota leases model calls reserve from (None: no quotas)."""
    tracing: Tracing = field(default_factory=Tracing)
    """Spans and metrics (no-ops unless an OpenTelemetry SDK is configured)."""
    _span: Span = INVALID_SPAN
    _capture: bool = False
    """The tenant has content captured in spans (redacted)."""
    _last_call: tuple[CallEntry, list[NewEvent]] | None = None
    _ending: StepCheckpoint | None = None
    """The checkpoint of the reply that ends the run, written with the run's end."""
    _queued: list[tuple[StepCheckpoint, CallEntry | None]] = field(default_factory=list)
    """Checkpoints waiting for the background write, with the journal entry of a step's
    last call where one goes with them."""
    _writing: asyncio.Task[None] | None = None
    _usage: Usage = field(default_factory=Usage)
    _labels: RunLabels | None = None
    _completed: int = 0
    """Steps completed and checkpointed (or queued to be)."""
    _queued_for: float = 0.0
    """Time the run waited for an executor before this one took it, told with the first
    usage record this executor writes for it."""
    _intent: UnsettledModelCall | None = None
    """The model call about to be made, for the next background write."""
    _in_flight: UnsettledModelCall | None = None
    """The model call being made (written before it): settled at its worst case if the
    run is cancelled before it returns."""
    _announced: int = 0
    """The step whose model call was written with the run's creation (``opening``)."""

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
            if self.cancel_reason:
                ending, self._ending = self._ending, None
                # A model call cut off mid-way may still be billed: its worst case.
                lost, self._in_flight = self._in_flight, None
                events = []
                if lost is not None:
                    self._usage = Usage.from_dict(lost.usage)
                    events.append(lost.event())
                events.append(self._stopped(StopReason.CANCELLED, self.cancel_reason))
                with contextlib.suppress(LeaseLost):
                    await self._written()
                    await self.store.finish(
                        self.lease,
                        StopReason.CANCELLED,
                        detail=self.cancel_reason,
                        events=events,
                        checkpoint=ending,
                    )
                self._notify()
                return
            raise
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, LeaseLost):
                await renewer
            if self._writing is not None:  # a run that ended in the middle of a step
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._writing)

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
            self.lease = await self.store.renew(self.lease)

    def _stopped(self, reason: StopReason, detail: str) -> NewEvent:
        span = self._span
        span.set_attribute("pilothouse.stop_reason", reason.value)
        span.set_attribute("pilothouse.steps", self._completed)
        span.set_attribute("gen_ai.usage.input_tokens", self._usage.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", self._usage.output_tokens)
        span.set_attribute("pilothouse.cost_usd", str(self._usage.cost_usd))
        if reason in (StopReason.GUARDRAIL, StopReason.INVALID_OUTPUT):
            guardrail = detail.split(":", 1)[0].split("[", 1)[0] or reason.value
            span.add_event(
                "pilothouse.guardrail",
                {"pilothouse.guardrail.name": guardrail, "pilothouse.guardrail.decision": "block"},
            )
            span.set_attribute("pilothouse.guardrail.blocked", guardrail)
            self.tracing.guardrail_trips.add(
                1, {"pilothouse.guardrail.name": guardrail, "pilothouse.tenant": self.run.tenant}
            )
        self.tracing.runs.add(
            1, {"pilothouse.stop_reason": reason.value, "pilothouse.tenant": self.run.tenant}
        )
        return stopped(
            reason,
            detail,
            self._usage.to_dict(),
            steps=self._completed,
            executor=self.executor,
        )

    def _waited(self) -> float:
        """The queue time not told yet: once, with the first usage record."""
        waited, self._queued_for = self._queued_for, 0.0
        return waited

    def _notify(self) -> None:
        if self.notify is not None:
            self.notify(self.run.id)

    async def _drive(self) -> None:
        request = self.run.request
        ctx = self.admitted or resolve(
            self.config,
            self.run.agent,
            request.get("variables", {}),
            pinned_version=request.get("prompt_version", ""),
            pinned_variant=request.get("variant", ""),
        )
        limits = Limits.from_dict(request.get("limits", {}))
        checkpoints: list[Checkpoint] = []
        journal: list[ToolCallRecord] = []
        if self.admitted is None:
            checkpoints, journal = await self.store.history(self.run.id)
        messages = [
            ChatMessage.from_dict(m) for cp in checkpoints for m in cp.delta.get("messages", [])
        ]
        self._usage = Usage.from_dict(self.run.usage)
        # Created with its first model call written (a claimed run has none: its claim
        # settled any its last holder left).
        self._announced = self.run.step + 1 if self.run.model_call else 0
        labels = self._labels = RunLabels(
            self.run.agent, ctx.version.name, self.executor, ctx.variant
        )
        self._span.set_attribute("pilothouse.prompt_version", ctx.version.name)
        if ctx.variant:
            self._span.set_attribute("pilothouse.rollout.variant", ctx.variant)
        tenant = self.config.get(tenant_pb2.Tenant, f"tenants/{self.run.tenant}")
        self._capture = tenant is not None and tenant.capture_content
        if limits.max_usd is not None:
            self._span.set_attribute("pilothouse.budget.max_usd", str(limits.max_usd))
        if self.admitted is None:
            # Claimed from the pool: it waited since it became claimable.
            waited = self.run.updated_at - self.run.available_at
            self._queued_for = max(waited.total_seconds(), 0.0)
            self.tracing.queue_duration.record(
                self._queued_for, {"pilothouse.tenant": self.run.tenant}
            )
        deadline_wall = (
            self.run.created_at.timestamp() + limits.max_wall_seconds
            if limits.max_wall_seconds
            else None
        )
        try:
            if not messages:
                messages, first = opening(
                    ctx,
                    self.config.version,
                    request.get("input", ""),
                    labels,
                    limits,
                    created_at=self.run.created_at,
                    trace_id=trace_id_of(request.get("trace", {})),
                )
                if self.admitted is None:
                    await self._write_checkpoints([(first, None)])
            self._completed = self.run.step
            while True:
                step = self._completed + 1
                # A resumed run may stop between a model call and its tool calls.
                if not (messages[-1].role == "assistant" and messages[-1].tool_calls):
                    self._check_limits(limits, deadline_wall, step)
                    reply = await self._plan(ctx, limits, messages, step, deadline_wall)
                    messages.append(reply)
                    if not reply.tool_calls:
                        answer = self._judge(ctx, messages)
                        if answer is None:
                            continue  # the model was asked to repair its answer
                        raise _Stop(StopReason.COMPLETED, final_answer=answer)
                untrusted = [
                    unmark(m.content) for m in messages if m.role == "tool" and is_marked(m.content)
                ]
                results = await self._act(
                    ctx, limits, messages[-1], step, journal, deadline_wall, untrusted
                )
                if results is None:
                    return  # waiting for approval: the lease is released
                messages.extend(results)
                # The step's last call is journaled with the checkpoint: nothing happens
                # between the two, so one transaction serves both.
                last, self._last_call = self._last_call, None
                self._write_behind(
                    StepCheckpoint(
                        step,
                        {"messages": [m.to_dict() for m in results]},
                        self._usage.to_dict(),
                        last[1] if last else [],
                    ),
                    last[0] if last else None,
                )
                journal = [j for j in journal if j.step != step]
                self._completed = step
        except _Stop as stop:
            events = []
            if stop.reason is StopReason.COMPLETED:
                events.append(NewEvent("final_answer", {"text": stop.final_answer}))
            events.append(self._stopped(stop.reason, stop.detail))
            ending, self._ending = self._ending, None
            await self._written()
            await self.store.finish(
                self.lease,
                stop.reason,
                detail=stop.detail,
                final_answer=stop.final_answer,
                events=events,
                checkpoint=ending,
            )
            self._notify()

    def _judge(self, ctx: RunContext, messages: list[ChatMessage]) -> str | None:
        """The final answer to end the run with, once the output guardrails pass it; None
        when the model was asked (once) to repair it; a stop when they block it."""
        repaired = any(
            m.role == "user" and m.content.startswith(output.REPAIR_PREFIX) for m in messages
        )
        verdict = output.judge(
            ctx.agent,
            self.config.output_validator(ctx.agent),
            messages[-1].content,
            repaired=repaired,
        )
        if verdict.repair:
            ask = ChatMessage("user", verdict.repair)
            messages.append(ask)
            # The reply does not end the run after all: its checkpoint goes now, with the ask.
            ending, self._ending = self._ending, None
            assert ending is not None
            self._write_behind(
                StepCheckpoint(
                    ending.step,
                    {"messages": [*ending.delta["messages"], ask.to_dict()]},
                    ending.usage,
                    ending.events,
                )
            )
            return None
        if verdict.blocked:
            raise _Stop(StopReason.GUARDRAIL, verdict.blocked)
        if verdict.invalid:
            raise _Stop(StopReason.INVALID_OUTPUT, f"output_schema: {verdict.invalid}")
        return verdict.answer

    def _check_limits(self, limits: Limits, deadline_wall: float | None, step: int) -> None:
        if limits.max_steps and step > limits.max_steps:
            raise _Stop(StopReason.MAX_STEPS, f"{limits.max_steps} steps")
        if deadline_wall is not None and time.time() >= deadline_wall:
            raise _Stop(StopReason.BUDGET_EXCEEDED, "wall_time")
        if self.run.deadline_at is not None and time.time() >= self.run.deadline_at.timestamp():
            raise _Stop(StopReason.CANCELLED, "the caller's deadline passed")

    def _deadline(self, deadline_wall: float | None) -> float:
        loop = asyncio.get_running_loop()
        limits = [loop.time() + 600.0]
        if deadline_wall is not None:
            limits.append(loop.time() + (deadline_wall - time.time()))
        if self.run.deadline_at is not None:
            limits.append(loop.time() + (self.run.deadline_at.timestamp() - time.time()))
        return min(limits)

    async def _plan(
        self,
        ctx: RunContext,
        limits: Limits,
        messages: list[ChatMessage],
        step: int,
        deadline_wall: float | None,
    ) -> ChatMessage:
        params = ctx.version.parameters
        # The tenant's lease; None when its policy limits nothing (nothing to reserve).
        lease = self.quotas.lease(self.run.tenant) if self.quotas is not None else None
        tenant_usd = lease is not None and lease.usd_held is not None
        # A call that may write without end has no worst case to budget for.
        bounds = call_bounds(
            self.config, ctx, messages, usd_limited=limits.max_usd is not None or tenant_usd
        )
        models, max_out, prompt_estimate = bounds.models, bounds.max_output, bounds.prompt_estimate
        if limits.max_tokens and self._usage.tokens + prompt_estimate + max_out > limits.max_tokens:
            raise _Stop(StopReason.BUDGET_EXCEEDED, "tokens")
        if limits.max_usd is not None and models:
            worst = max(price(m, CallUsage(prompt_estimate, max_out)) for m in models)
            if self._usage.cost_usd + worst > limits.max_usd:
                raise _Stop(StopReason.BUDGET_EXCEEDED, "usd")
        await self._check_cancel()
        self._raise_write_failure()
        assert self._labels is not None
        pending = unsettled(bounds, self._usage, self._labels, step)
        if pending is not None and self._announced != step:
            # Durable before the call (with the step's queued checkpoints, where there are
            # any): a call lost with this executor is still billed.
            self._announce(pending)
        reservation = NO_RESERVATION
        if lease is not None:
            # The tenant's quota is held to a bound, not an estimate: a prompt has at most
            # as many tokens as bytes.
            try:
                reservation = await lease.reserve(
                    bounds.worst()[0],
                    bounds.prompt_bound + max_out,
                    deadline=self._deadline(deadline_wall),
                )
            except QuotaExceeded as e:
                self.tracing.quota_refusals.add(
                    1, {"pilothouse.quota.limit": e.limit, "pilothouse.tenant": self.run.tenant}
                )
                raise _Stop(StopReason.BUDGET_EXCEEDED, f"tenant quota: {e}") from e
        request = ChatRequest(
            messages=tuple(messages),
            tools=ctx.tool_specs,
            max_output_tokens=max_out or None,
            temperature=params.temperature if params.HasField("temperature") else None,
            top_p=params.top_p if params.HasField("top_p") else None,
            stop=tuple(params.stop),
            step=step,
            run_input=self.run.request.get("input", ""),
        )
        await self._written()
        self._in_flight = pending
        started = time.perf_counter()
        with self.tracing.model_call(models[0] if models else None, request) as traced:
            if limits.max_usd is not None:
                left = limits.max_usd - self._usage.cost_usd
                traced.span.set_attribute("pilothouse.budget.usd_left", str(left))
            try:
                result = await self.gateway.complete(
                    self.config,
                    ctx.route,
                    request,
                    deadline=self._deadline(deadline_wall),
                    pick_key=f"{self.run.id}:{step}",
                )
            except (ProviderError, NoModelAvailable) as e:
                self._in_flight = None  # it failed: nothing to bill
                traced.failed(e)
                reservation.settle(Decimal(0), 0)
                self._check_limits(limits, deadline_wall, step)  # a deadline says it better
                raise _Stop(StopReason.FAILED, f"model_error: {e}") from e
            except BaseException:
                reservation.settle(Decimal(0), 0)
                raise
            self._in_flight = None
            traced.answered(result)
            if self._capture:
                traced.capture(request.messages, result.result.message)
        reply = result.result.message
        events = [
            NewEvent("step_started", {"step": step}),
            self._settled(result, reservation, step, time.perf_counter() - started, self._waited()),
        ]
        events += [
            NewEvent(
                "tool_call_requested",
                {
                    "step": step,
                    "call_id": c.id,
                    "tool": c.name,
                    "arguments": c.arguments,
                },
            )
            for c in reply.tool_calls
        ]
        checkpoint = StepCheckpoint(
            step - 1 if reply.tool_calls else step,
            {"messages": [reply.to_dict()]},
            self._usage.to_dict(),
            events,
        )
        if not reply.tool_calls:
            # The run ends with this reply: its checkpoint is written with the end.
            self._ending = checkpoint
            self._completed = step
            return reply
        self._write_behind(checkpoint)
        return reply

    # A step's checkpoints are written in the background (the model reply's while its
    # calls run, the results' while the next model call is made) on one write task per
    # run, which takes all that is queued each time: a step whose calls never wait is one
    # write. Whatever runs before its checkpoint is durable is safe to repeat: a model
    # call, or a call of a read-only or idempotent tool. Everything that acts otherwise
    # waits for the run's writes first (``_written``): a call journaled before it runs,
    # an approval, the run's end. An executor that dies with a write queued costs the
    # calls made since then again, and nothing more.

    def _write_behind(self, checkpoint: StepCheckpoint, call: CallEntry | None = None) -> None:
        self._raise_write_failure()
        self._queued.append((checkpoint, call))
        if self._writing is None:
            self._writing = asyncio.create_task(self._write_queued())

    def _announce(self, call: UnsettledModelCall) -> None:
        """Write ``call`` before it is made, with the last of the queued checkpoints (or
        alone when none are queued); the caller waits with ``_written``."""
        self._raise_write_failure()
        self._intent = call
        if self._writing is None:
            self._writing = asyncio.create_task(self._write_queued())

    async def _write_queued(self) -> None:
        while self._queued or self._intent is not None:
            batch, self._queued = self._queued, []
            intent, self._intent = self._intent, None
            await self._write_checkpoints(batch, intent)
        self._writing = None  # a failed write task stays, for the run to hear of it

    def _raise_write_failure(self) -> None:
        """Stop the run as soon as a background write failed (LeaseLost: the run went to
        another executor), before it calls a model or a tool for nothing."""
        if self._writing is not None and self._writing.done():
            self._writing.result()

    async def _write_checkpoints(
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

    async def _written(self) -> None:
        """Wait until the run's queued checkpoints are durable (or raise why not)."""
        while self._writing is not None:
            await asyncio.shield(self._writing)

    async def _check_cancel(self) -> None:
        """Stop if someone asked: the flag comes back with every fenced write and lease
        renewal, so checking it costs no read."""
        if self.lease.cancel_requested:
            raise _Stop(StopReason.CANCELLED, "cancelled")

    def _settled(
        self,
        result: GatewayResult,
        reservation: Reservation,
        step: int,
        seconds: float,
        queue_seconds: float,
    ) -> NewEvent:
        """Settle a model call: its reservation, the run's usage, and its
        ``model_call_finished`` event (with the usage record it carries)."""
        usage = result.result.usage
        reservation.settle(result.cost, usage.input_tokens + usage.output_tokens)
        self._usage.input_tokens += usage.input_tokens
        self._usage.output_tokens += usage.output_tokens
        self._usage.cached_input_tokens += usage.cached_input_tokens
        self._usage.cost_usd += result.cost
        self._usage.model_calls += 1
        assert self._labels is not None
        return NewEvent(
            "model_call_finished",
            {
                "step": step,
                "model": result.model.name,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cost_usd": plain(result.cost),
                "finish_reason": result.result.finish_reason,
                "latency_seconds": round(seconds, 6),
                "attempts": result.attempts,
                "usage_estimated": usage.estimated,
            },
            records.model_usage(
                self._labels,
                step=step,
                model=result.model,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cached_input_tokens=usage.cached_input_tokens,
                cost_usd=result.cost,
                queue_seconds=queue_seconds,
                model_seconds=seconds,
                attempts=result.attempts,
                finish_reason=result.result.finish_reason,
                usage_estimated=usage.estimated,
            ),
        )

    async def _classify(
        self,
        ctx: RunContext,
        limits: Limits,
        tool: str,
        content: str,
        step: int,
        deadline_wall: float | None,
    ) -> tuple[classifier.Verdict, list[NewEvent]]:
        """Ask the agent's injection classifier about a tool's output: its verdict, and
        the event of the call (billed to the run and its tenant like the agent's own). Its
        verdict is an audit record. A classifier that cannot answer (an error, the run's
        budget spent) is a verdict of no injection, recorded as unreadable."""
        route = ctx.agent.guardrail_policy.injection_classifier
        judged = content[: classifier.MAX_JUDGED_CHARS]
        messages = (ChatMessage("system", classifier.INSTRUCTIONS), ChatMessage("user", judged))
        models = route_models(self.config, route)
        bound = sum(len(m.content.encode()) + 16 for m in messages)
        worst = max(
            (price(m, CallUsage(bound, classifier.MAX_VERDICT_TOKENS)) for m in models),
            default=Decimal(0),
        )
        events: list[NewEvent] = []
        verdict = classifier.Verdict(False, "the classifier was not asked", readable=False)
        lease = self.quotas.lease(self.run.tenant) if self.quotas is not None else None
        reservation = NO_RESERVATION
        try:
            if limits.max_usd is not None and self._usage.cost_usd + worst > limits.max_usd:
                raise _NoClassifier("the run's budget leaves nothing for it")
            if lease is not None:
                reservation = await lease.reserve(
                    worst,
                    bound + classifier.MAX_VERDICT_TOKENS,
                    deadline=self._deadline(deadline_wall),
                )
            started = time.perf_counter()
            result = await self.gateway.complete(
                self.config,
                route,
                ChatRequest(
                    messages=messages,
                    max_output_tokens=classifier.MAX_VERDICT_TOKENS,
                    step=step,
                    run_input=judged,
                ),
                deadline=self._deadline(deadline_wall),
                pick_key=f"{self.run.id}:{step}:classifier",
            )
        except (ProviderError, NoModelAvailable, QuotaExceeded, _NoClassifier) as e:
            reservation.settle(Decimal(0), 0)
            verdict = classifier.Verdict(
                False, f"the classifier could not answer: {e}"[:300], False
            )
        else:
            verdict = classifier.read(result.result.message.content)
            events.append(
                self._settled(result, reservation, step, time.perf_counter() - started, 0.0)
            )
        assert self._labels is not None
        await self.store.audit(
            self.run.tenant,
            "guardrail.classifier",
            f"tenants/{self.run.tenant}/runs/{self.run.id}",
            {
                "agent": self.run.agent,
                "step": step,
                "tool": tool,
                "route": route,
                "injection": verdict.injection,
                "readable": verdict.readable,
                "reason": pii.redact(verdict.reason),
            },
            executor=self._labels.executor,
        )
        return verdict, events

    @staticmethod
    def _given(tool: tool_pb2.Tool | None, name: str, result: Any, untrusted: list[str]) -> str:
        """What the model is given of a call's result: marked untrusted (and added to the
        run's untrusted content) unless the tool's output is trusted."""
        content = json.dumps(result)
        if tool is not None and trusted_output(tool):
            return content
        untrusted.append(content)
        return mark(name, content)

    async def _journal(
        self,
        step: int,
        index: int,
        call: ToolCall,
        *,
        arguments: dict[str, Any],
        state: CallState,
        result: Any = None,
        events: Sequence[NewEvent] = (),
        last: bool = False,
        error: str = "",
    ) -> None:
        """The journal entry of the ``index``-th call of ``step``, fenced by our lease.
        With ``last`` (the step's last call has ended), it waits for the step's
        checkpoint, which writes it."""
        if last:
            entry = CallEntry(step, index, call.id, call.name, arguments, state, result, error)
            self._last_call = (entry, list(events))
            return
        await self._written()
        await self.store.record_call(
            self.lease,
            step=step,
            call_index=index,
            call_id=call.id,
            tool=call.name,
            arguments=arguments,
            state=state,
            result=result,
            error=error,
            events=events,
        )

    def _finished(
        self,
        step: int,
        call: ToolCall,
        outcome: ToolOutcome,
        seconds: float,
        record: ToolCallRecord | None,
    ) -> NewEvent:
        """The ``tool_call_finished`` event and its usage record. A call a person decided
        on waited from when it was filed (``record.started_at``) until the decision made
        the run claimable again (``available_at``)."""
        assert self._labels is not None
        waited = 0.0
        decided = (
            record.state in (CallState.APPROVED, CallState.DENIED, CallState.RESOLVED)
            if record
            else False
        )
        if decided and record is not None and record.started_at is not None:
            waited = max((self.run.available_at - record.started_at).total_seconds(), 0.0)
        return NewEvent(
            "tool_call_finished",
            {
                "step": step,
                "call_id": call.id,
                "tool": call.name,
                "ok": outcome.ok,
                "executed": outcome.executed,
                "result": json.dumps(outcome.result),
                "latency_seconds": round(seconds, 6),
            },
            records.tool_usage(
                self._labels,
                step=step,
                tool=call.name,
                call_id=call.id,
                ok=outcome.ok,
                executed=outcome.executed,
                tool_seconds=seconds,
                approval_wait_seconds=waited,
                queue_seconds=self._waited(),
            ),
        )

    async def _unknown_outcome(
        self,
        step: int,
        index: int,
        call: ToolCall,
        tool: tool_pb2.Tool,
        arguments: dict[str, Any],
        record: ToolCallRecord,
    ) -> ToolOutcome | None:
        """A call whose outcome is unknown (``record``), by its tool's policy: what the
        model is told, or None when the run now waits for a person to say what became of
        it (``ask``, the default). ``record`` RESOLVED: what the person said."""
        if record.state is CallState.RESOLVED:
            return ToolOutcome(record.result, not record.error, True)
        why = record.error or "its executor stopped while it was in flight"
        if tool.unknown_outcome == tool_pb2.UNKNOWN_OUTCOME_POLICY_FAIL:
            return ToolOutcome(
                {
                    "error": f"the outcome of this call is unknown ({why}): it may or may "
                    "not have taken effect, and it was not made again"
                },
                False,
                True,
            )
        assert self._labels is not None
        await self._journal(
            step, index, call, arguments=arguments, state=CallState.OUTCOME_UNKNOWN, error=why
        )
        await self.store.wait_for_approval(
            self.lease,
            [
                NewEvent(
                    "approval_required",
                    {
                        "step": step,
                        "call_id": call.id,
                        "tool": call.name,
                        "arguments": call.arguments,
                        "reason": f"the outcome of this call is unknown ({why})",
                    },
                    records.run_waiting(self._labels, step=step, tool=call.name),
                )
            ],
        )
        self.paused = True
        self._notify()
        return None

    async def _act(
        self,
        ctx: RunContext,
        limits: Limits,
        reply: ChatMessage,
        step: int,
        journal: list[ToolCallRecord],
        deadline_wall: float | None,
        untrusted: list[str],
    ) -> list[ChatMessage] | None:
        """Run the reply's tool calls; their results, or None when the run now waits for
        an approval. ``untrusted``: the untrusted tool output in the run so far (it taints
        the run when there is any); this step's is added as it comes."""
        assert self._labels is not None
        done = {(j.step, j.call_index): j for j in journal}
        results: list[ChatMessage] = []
        for index, call in enumerate(reply.tool_calls):
            record = done.get((step, index))
            if record is not None and record.state in (CallState.COMPLETED, CallState.FAILED):
                # Replayed on resume exactly as it was first given: the tool's output,
                # marked untrusted and tainting the rest of the step unless trusted.
                replayed = ctx.tools.get(call.name)
                content = self._given(replayed, call.name, record.result, untrusted)
                results.append(ChatMessage("tool", content, tool_call_id=call.id))
                continue
            if record is not None and record.state is CallState.REFUSED:
                results.append(ChatMessage("tool", json.dumps(record.result), tool_call_id=call.id))
                continue
            checked = self.router.check(
                self.config,
                ctx.tools,
                call.name,
                call.arguments,
                frozenset(self.run.request.get("scopes") or ()),
            )
            if isinstance(checked, ToolOutcome):
                outcome = checked
                if checked.missing_scope:
                    await self.store.audit(
                        self.run.tenant,
                        "tool.scope_refused",
                        f"tenants/{self.run.tenant}/runs/{self.run.id}",
                        {
                            "agent": self.run.agent,
                            "step": step,
                            "tool": call.name,
                            "scope": checked.missing_scope,
                            "key": self.run.request.get("key", ""),
                        },
                        executor=self._labels.executor,
                    )
            else:
                tool, arguments = checked
                if record is not None and _unsettled_effect(record, tool):
                    # It may have had its effect: never sent again on the run's own say.
                    settled = await self._unknown_outcome(
                        step, index, call, tool, arguments, record
                    )
                    if settled is None:
                        return None  # waiting for a person to say what became of it
                    last = index == len(reply.tool_calls) - 1
                    self._usage.tool_calls += 1
                    await self._journal(
                        step,
                        index,
                        call,
                        arguments=arguments,
                        state=CallState.COMPLETED if settled.ok else CallState.FAILED,
                        result=settled.result,
                        events=[self._finished(step, call, settled, 0.0, record)],
                        last=last,
                    )
                    if not last:
                        self._notify()
                    content = json.dumps(settled.result)
                    results.append(ChatMessage("tool", content, tool_call_id=call.id))
                    continue
                if limits.max_tool_calls and self._usage.tool_calls + 1 > limits.max_tool_calls:
                    raise _Stop(StopReason.BUDGET_EXCEEDED, "tool_calls")
                reason = needs_approval(ctx, tool, untrusted, arguments)
                if reason and (record is None or record.state is CallState.AWAITING_APPROVAL):
                    await self._journal(
                        step,
                        index,
                        call,
                        arguments=arguments,
                        state=CallState.AWAITING_APPROVAL,
                    )
                    await self.store.wait_for_approval(
                        self.lease,
                        [
                            NewEvent(
                                "approval_required",
                                {
                                    "step": step,
                                    "call_id": call.id,
                                    "tool": call.name,
                                    "arguments": call.arguments,
                                    "reason": reason,
                                },
                                records.run_waiting(self._labels, step=step, tool=call.name),
                            )
                        ],
                    )
                    self.paused = True
                    self._notify()
                    return None
                if record is not None and record.state is CallState.DENIED:
                    outcome = ToolOutcome(
                        {"error": record.error or "a person denied this call"}, False, False
                    )
                else:
                    await self._check_cancel()
                    if not safe_to_repeat(tool):
                        # Journaled before it runs: a resumed run knows it may have acted.
                        await self._journal(
                            step,
                            index,
                            call,
                            arguments=arguments,
                            state=CallState.STARTED,
                        )
                    started = time.perf_counter()
                    with self.tracing.tool_call(tool, call.name, call.id) as span:
                        outcome = await self.router.execute(
                            tool,
                            arguments,
                            idempotency_key=f"{self.run.id}:{step}:{index}",
                            tenant=self.run.tenant,
                            agent=self.run.agent,
                            deadline=self._deadline(deadline_wall),
                        )
                        if not outcome.ok:
                            self.tracing.failed(span, "tool_error")
                        if self._capture:
                            span.set_attribute(
                                "gen_ai.tool.call.arguments", captured(json.dumps(arguments))
                            )
                            span.set_attribute(
                                "gen_ai.tool.call.result", captured(json.dumps(outcome.result))
                            )
                    if outcome.unknown:
                        # Sent, and no answer: as after a crash, by the tool's policy.
                        unknown = dataclasses.replace(
                            record or _started(step, index, call, arguments),
                            state=CallState.STARTED,
                            error=outcome.unknown,
                        )
                        settled = await self._unknown_outcome(
                            step, index, call, tool, arguments, unknown
                        )
                        if settled is None:
                            return None
                        outcome = settled
                    self._usage.tool_calls += 1
                    content = json.dumps(outcome.result)
                    tripped = (
                        screen(content) if ctx.agent.guardrail_policy.screen_tool_output else []
                    )
                    judged: list[NewEvent] = []
                    if (
                        not tripped
                        and ctx.agent.guardrail_policy.injection_classifier
                        and not trusted_output(tool)
                    ):
                        verdict, judged = await self._classify(
                            ctx, limits, call.name, content, step, deadline_wall
                        )
                        if verdict.injection:
                            tripped = [verdict.reason or "judged an injection"]
                    # A tripped screen ends the run here: its call is journaled at once.
                    last = index == len(reply.tool_calls) - 1 and not tripped
                    await self._journal(
                        step,
                        index,
                        call,
                        arguments=arguments,
                        state=CallState.COMPLETED if outcome.ok else CallState.FAILED,
                        result=outcome.result,
                        events=[
                            *judged,
                            self._finished(
                                step, call, outcome, time.perf_counter() - started, record
                            ),
                        ],
                        last=last,
                    )
                    if tripped:
                        guardrail = "injection_classifier" if judged else "screen_tool_output"
                        raise _Stop(
                            StopReason.GUARDRAIL,
                            f"{guardrail}: the output of {call.name} reads as prompt "
                            f"injection ({', '.join(tripped)})",
                        )
                    if not last:
                        self._notify()
                    given = self._given(tool, call.name, outcome.result, untrusted)
                    results.append(ChatMessage("tool", given, tool_call_id=call.id))
                    continue
            last = index == len(reply.tool_calls) - 1
            await self._journal(
                step,
                index,
                call,
                arguments={},
                state=CallState.REFUSED,
                result=outcome.result,
                events=[self._finished(step, call, outcome, 0.0, record)],
                last=last,
            )
            if not last:
                self._notify()
            results.append(ChatMessage("tool", json.dumps(outcome.result), tool_call_id=call.id))
        return results


def opening(
    ctx: RunContext,
    config_version: str,
    run_input: str,
    labels: RunLabels,
    limits: Limits,
    *,
    created_at: datetime | None = None,
    trace_id: str = "",
) -> tuple[list[ChatMessage], StepCheckpoint]:
    """A run's first messages, and its first checkpoint: step 0, those messages, no usage
    yet, and the ``run_started`` event with the limits in force (``created_at``: when the
    run was created, if that was before now)."""
    system = f"{ctx.system_prompt}\n\n{NOTICE}" if ctx.tools else ctx.system_prompt
    messages = [ChatMessage("system", system), ChatMessage("user", run_input)]
    return messages, StepCheckpoint(
        0,
        {"messages": [m.to_dict() for m in messages]},
        Usage().to_dict(),
        [
            NewEvent(
                "run_started",
                {
                    "prompt_version": ctx.version.name,
                    "config_version": config_version,
                    "budget": limits.budget(),
                },
                records.run_opened(labels, config_version, created_at, trace_id),
            )
        ],
    )


class _NoClassifier(Exception):
    """The injection classifier cannot be asked."""


def _unsettled_effect(record: ToolCallRecord, tool: tool_pb2.Tool) -> bool:
    """The call may have had its effect and nobody knows what became of it yet (or a
    person just said): started and never finished, for a tool not safe to repeat."""
    if record.state is CallState.STARTED:
        return not safe_to_repeat(tool)
    return record.state in (CallState.OUTCOME_UNKNOWN, CallState.RESOLVED)


def _started(step: int, index: int, call: ToolCall, arguments: dict[str, Any]) -> ToolCallRecord:
    return ToolCallRecord(step, index, call.id, call.name, arguments, CallState.STARTED)


def needs_approval(
    ctx: RunContext, tool: tool_pb2.Tool, untrusted: list[str], arguments: Any = None
) -> str:
    """Why a call must wait for a person, or "" when it need not. ``untrusted``: the
    run's untrusted content so far (any taints it)."""
    policy = ctx.agent.approval_policy
    mode = tool.approval or policy.default_mode
    if tool.name in policy.always_require:
        return "the agent's policy requires approval for this tool"
    if mode == tool_pb2.APPROVAL_MODE_ALWAYS:
        return "the tool always requires approval"
    if mode == tool_pb2.APPROVAL_MODE_WHEN_UNTRUSTED and untrusted:
        return "untrusted content has entered the run"
    if open_world(tool):
        screened = screen_arguments(
            arguments, untrusted, private=ctx.agent.guardrail_policy.redact_pii
        )
        if screened:
            return f"{screened}, and the tool reaches outside"
        if untrusted and tool.name not in policy.allow_open_world_when_untrusted:
            return (
                "untrusted content has entered the run and the tool reaches outside "
                "(its open-world hint is true or unset)"
            )
    annotations = tool.annotations
    read_only = annotations.HasField("read_only_hint") and annotations.read_only_hint
    destructive = not read_only and (
        not annotations.HasField("destructive_hint") or annotations.destructive_hint
    )
    if policy.require_for_destructive and destructive:
        return "the tool may be destructive"
    return ""
