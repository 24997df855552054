"""The effects of a run's commands: what the run loop does for each of ``decide``'s
commands, and how it records what came of it in the run's progress.

A model call is announced (written before it is made, so a call lost with this executor
is still billed), made through the model-call interceptors, and checkpointed in the
background. A tool call not safe to repeat is journaled before it runs; every call is
journaled when it ends, the step's last with the step's checkpoint.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dataplane.config.snapshot import ExecutorConfig
from dataplane.models.gateway import GatewayResult, ModelGateway, NoModelAvailable
from dataplane.models.types import ChatMessage, ChatRequest, ProviderError, ToolCall
from dataplane.orchestrator.account import RunAccount, waited_for_person
from dataplane.orchestrator.calls import route_models, unsettled
from dataplane.orchestrator.context import Limits, RunContext
from dataplane.orchestrator.decide import (
    AskForRepair,
    CallModel,
    EndStep,
    Finish,
    Record,
    RunTool,
    Situation,
    WaitForPerson,
    limit_stop,
)
from dataplane.orchestrator.intercept import compose
from dataplane.orchestrator.intercept.chain import ModelInvocation, ToolAnswer, ToolInvocation
from dataplane.orchestrator.intercept.guardrails import Audit, InjectionClassifier, OutputGuard
from dataplane.orchestrator.writes import RunWrites
from dataplane.quota.leases import QuotaExceeded, Quotas
from dataplane.runstore.model import (
    CallEntry,
    CallState,
    NewEvent,
    Run,
    StepCheckpoint,
    StopReason,
    ToolCallRecord,
    UnsettledModelCall,
)
from dataplane.telemetry import records
from dataplane.telemetry.otel import Tracing
from dataplane.tools.router import ToolRouter, safe_to_repeat
from pilothouse.v1 import tenant_pb2


class Stop(Exception):
    """The run stops in the middle of a command (a model call failed, a guardrail
    tripped on a tool's output)."""

    def __init__(self, reason: StopReason, detail: str = "") -> None:
        super().__init__(detail)
        self.finish = Finish(reason, detail)


@dataclass
class Progress:
    """What the run has done, as this executor holds it: what ``decide`` decides from,
    and what is still to be written."""

    messages: list[ChatMessage] = field(default_factory=list)
    calls: dict[int, ToolCallRecord] = field(default_factory=dict)
    """The journal of the step in progress, by call index."""
    completed: int = 0
    """Steps completed and checkpointed (or queued to be)."""
    announced: int = 0
    """The step whose model call was written with the run's creation (``opening``)."""
    last_call: tuple[CallEntry, list[NewEvent]] | None = None
    """The journal entry of the step's last call, written with the step's checkpoint."""
    ending: StepCheckpoint | None = None
    """The checkpoint of the reply that ends the run, written with the run's end."""
    in_flight: UnsettledModelCall | None = None
    """The model call being made (written before it): settled at its worst case if the
    run is cancelled before it returns."""


@dataclass
class RunServices:
    """What a run's effects use outside the run."""

    config: ExecutorConfig
    gateway: ModelGateway
    router: ToolRouter
    tracing: Tracing
    quotas: Quotas | None = None


class Effects:
    def __init__(
        self,
        run: Run,
        ctx: RunContext,
        limits: Limits,
        services: RunServices,
        *,
        writes: RunWrites,
        account: RunAccount,
        progress: Progress,
        state: Callable[[], Situation],
        notify: Callable[[], None],
        audit: Audit,
    ) -> None:
        self.run = run
        self._ctx = ctx
        self._limits = limits
        self.config = services.config
        self.gateway = services.gateway
        self.router = services.router
        self._writes = writes
        self._account = account
        self._progress = progress
        self._state = state
        self._notify = notify
        self._audit = audit
        self.wall_deadline = (
            run.created_at.timestamp() + limits.max_wall_seconds
            if limits.max_wall_seconds
            else None
        )
        """When the run's wall-time budget runs out (wall clock)."""
        self._compose(ctx, limits, services)

    def _compose(self, ctx: RunContext, limits: Limits, services: RunServices) -> None:
        tenant = self.config.get(tenant_pb2.Tenant, f"tenants/{self.run.tenant}")
        capture = tenant is not None and tenant.capture_content
        self._model_calls = compose.model_calls(
            self._complete, tracing=services.tracing, quotas=services.quotas, capture=capture
        )
        policy = ctx.agent.guardrail_policy
        classify = None
        if policy.injection_classifier:
            classify = InjectionClassifier(
                route=policy.injection_classifier,
                models=route_models(self.config, policy.injection_classifier),
                call_model=self._model_calls,
                account=self._account,
                max_usd=limits.max_usd,
                tenant=self.run.tenant,
                run_id=self.run.id,
                audit=self._audit,
            )
        self._tool_calls = compose.tool_calls(
            self._execute_tool,
            tracing=services.tracing,
            capture=capture,
            guard=OutputGuard(policy, classify),
        )

    def deadline(self) -> float:
        """The run's nearest deadline, on the event loop's clock."""
        deadline_at = self.run.deadline_at
        now = time.time()
        left = [600.0]
        for wall in (self.wall_deadline, deadline_at.timestamp() if deadline_at else None):
            if wall is not None:
                left.append(wall - now)
        return asyncio.get_running_loop().time() + min(left)

    # -- model calls ----------------------------------------------------------------

    async def call_model(self, command: CallModel) -> None:
        ctx, limits = self._ctx, self._limits
        step, bounds, usage = command.step, command.bounds, self._account.usage
        self._writes.raise_failure()
        pending = unsettled(bounds, usage, self._account.labels, step)
        if pending is not None and self._progress.announced != step:
            # Durable before the call (with the step's queued checkpoints, where there are
            # any): a call lost with this executor is still billed.
            self._writes.announce(pending)
        params = ctx.version.parameters
        request = ChatRequest(
            messages=tuple(self._progress.messages),
            tools=ctx.tool_specs,
            max_output_tokens=bounds.max_output or None,
            temperature=params.temperature if params.HasField("temperature") else None,
            top_p=params.top_p if params.HasField("top_p") else None,
            stop=tuple(params.stop),
            step=step,
            run_input=self.run.request.get("input", ""),
        )
        call = ModelInvocation(
            request,
            ctx.route,
            bounds.models,
            self.run.tenant,
            pick_key=f"{self.run.id}:{step}",
            deadline=self.deadline(),
            worst_usd=bounds.worst()[0],
            token_bound=bounds.prompt_bound + bounds.max_output,
            usd_left=None if limits.max_usd is None else limits.max_usd - usage.cost_usd,
            announced=pending,
        )
        await self._writes.written()
        started = time.perf_counter()
        try:
            result = await self._model_calls(call)
        except QuotaExceeded as e:
            raise Stop(StopReason.BUDGET_EXCEEDED, f"tenant quota: {e}") from e
        except (ProviderError, NoModelAvailable) as e:
            passed = limit_stop(self._state(), step)  # a deadline says it better
            if passed is not None:
                raise Stop(passed.reason, passed.detail) from e
            raise Stop(StopReason.FAILED, f"model_error: {e}") from e
        self._answered(step, result, time.perf_counter() - started)

    async def _complete(self, call: ModelInvocation) -> GatewayResult:
        """The gateway, innermost of the model-call interceptors."""
        self._progress.in_flight = call.announced
        try:
            result = await self.gateway.complete(
                self.config,
                call.route,
                call.request,
                deadline=call.deadline,
                pick_key=call.pick_key,
            )
        except (ProviderError, NoModelAvailable):
            self._progress.in_flight = None  # it failed: nothing to bill
            raise
        self._progress.in_flight = None
        return result

    def _answered(self, step: int, result: GatewayResult, seconds: float) -> None:
        reply = result.result.message
        events = [
            NewEvent("step_started", {"step": step}),
            self._account.model_call(result, step, seconds),
        ]
        events += [
            NewEvent(
                "tool_call_requested",
                {"step": step, "call_id": c.id, "tool": c.name, "arguments": c.arguments},
            )
            for c in reply.tool_calls
        ]
        self._progress.messages.append(reply)
        checkpoint = StepCheckpoint(
            step - 1 if reply.tool_calls else step,
            {"messages": [reply.to_dict()]},
            self._account.usage.to_dict(),
            events,
        )
        if reply.tool_calls:
            self._writes.behind(checkpoint)
        else:
            # The run may end with this reply: its checkpoint is written with the end.
            self._progress.ending = checkpoint
            self._progress.completed = step

    def ask_for_repair(self, command: AskForRepair) -> None:
        """The reply does not end the run after all: its checkpoint goes now, with the
        ask."""
        self._progress.messages.append(command.ask)
        ending, self._progress.ending = self._progress.ending, None
        assert ending is not None
        self._writes.behind(
            StepCheckpoint(
                ending.step,
                {"messages": [*ending.delta["messages"], command.ask.to_dict()]},
                ending.usage,
                ending.events,
            )
        )

    # -- tool calls -----------------------------------------------------------------

    async def run_tool(self, command: RunTool) -> None:
        step, index, call = command.step, command.index, command.call
        if not safe_to_repeat(command.tool):
            # Journaled before it runs: a resumed run knows it may have acted.
            await self._journal(step, index, call, command.arguments, CallState.STARTED)
        started = time.perf_counter()
        answer = await self._tool_calls(
            ToolInvocation(
                command.tool,
                call.name,
                call.id,
                command.arguments,
                step,
                idempotency_key=f"{self.run.id}:{step}:{index}",
                tenant=self.run.tenant,
                agent=self.run.agent,
                deadline=self.deadline(),
            )
        )
        outcome = answer.outcome
        if outcome.unknown:
            # Sent, and no answer: as after a crash, by the tool's policy (the next
            # decision says which).
            self._progress.calls[index] = dataclasses.replace(
                command.record or _started(step, index, call, command.arguments),
                state=CallState.STARTED,
                error=outcome.unknown,
            )
            return
        finished = self._account.tool_call(
            step, call, outcome, time.perf_counter() - started, self._waited(command.record)
        )
        # A tripped guardrail ends the run here: its call is journaled at once.
        await self._settle(
            step,
            index,
            call,
            command.arguments,
            CallState.COMPLETED if outcome.ok else CallState.FAILED,
            outcome.result,
            [*answer.events, finished],
            last=self._is_last(index) and not answer.tripped,
        )
        if answer.tripped:
            raise Stop(StopReason.GUARDRAIL, answer.tripped)

    async def _execute_tool(self, call: ToolInvocation) -> ToolAnswer:
        """The tool router, innermost of the tool-call interceptors."""
        outcome = await self.router.execute(
            call.tool,
            call.arguments,
            idempotency_key=call.idempotency_key,
            tenant=call.tenant,
            agent=call.agent,
            deadline=call.deadline,
        )
        return ToolAnswer(outcome)

    async def record(self, command: Record) -> None:
        step, call, outcome = command.step, command.call, command.outcome
        if outcome.missing_scope:
            await self._audit(
                "tool.scope_refused",
                {
                    "agent": self.run.agent,
                    "step": step,
                    "tool": call.name,
                    "scope": outcome.missing_scope,
                    "key": self.run.request.get("key", ""),
                },
            )
        finished = self._account.tool_call(step, call, outcome, 0.0, self._waited(command.record))
        await self._settle(
            step,
            command.index,
            call,
            command.arguments,
            command.state,
            outcome.result,
            [finished],
            last=self._is_last(command.index),
        )

    async def _settle(
        self,
        step: int,
        index: int,
        call: ToolCall,
        arguments: dict[str, Any],
        state: CallState,
        result: Any,
        events: Sequence[NewEvent],
        *,
        last: bool,
    ) -> None:
        """A call is over: its journal entry, which the step's last call defers to the
        step's checkpoint (nothing happens between the two, so one transaction serves
        both)."""
        record = ToolCallRecord(step, index, call.id, call.name, arguments, state, result)
        self._progress.calls[index] = record
        if last:
            self._progress.last_call = (record, list(events))
            return
        await self._journal(step, index, call, arguments, state, result=result, events=events)
        self._notify()

    async def _journal(
        self,
        step: int,
        index: int,
        call: ToolCall,
        arguments: dict[str, Any],
        state: CallState,
        *,
        result: Any = None,
        events: Sequence[NewEvent] = (),
        error: str = "",
    ) -> None:
        """The journal entry of the ``index``-th call of ``step``, fenced by our lease,
        once the run's earlier writes are durable."""
        await self._writes.written()
        await self._writes.store.record_call(
            self._writes.lease,
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

    async def wait_for_person(self, command: WaitForPerson) -> None:
        step, call = command.step, command.call
        await self._journal(
            step, command.index, call, command.arguments, command.state, error=command.error
        )
        await self._writes.store.wait_for_approval(
            self._writes.lease,
            [
                NewEvent(
                    "approval_required",
                    {
                        "step": step,
                        "call_id": call.id,
                        "tool": call.name,
                        "arguments": call.arguments,
                        "reason": command.reason,
                    },
                    records.run_waiting(self._account.labels, step=step, tool=call.name),
                )
            ],
        )
        self._notify()

    def end_step(self, command: EndStep) -> None:
        self._progress.messages.extend(command.results)
        usage = self._account.usage
        usage.tool_calls += command.tool_calls
        last, self._progress.last_call = self._progress.last_call, None
        self._writes.behind(
            StepCheckpoint(
                command.step,
                {"messages": [m.to_dict() for m in command.results]},
                usage.to_dict(),
                last[1] if last else [],
            ),
            last[0] if last else None,
        )
        self._progress.calls = {}
        self._progress.completed = command.step

    def _is_last(self, index: int) -> bool:
        return index == len(self._progress.messages[-1].tool_calls) - 1

    def _waited(self, record: ToolCallRecord | None) -> float:
        return waited_for_person(record, self.run.available_at.timestamp())


def _started(step: int, index: int, call: ToolCall, arguments: dict[str, Any]) -> ToolCallRecord:
    return ToolCallRecord(step, index, call.id, call.name, arguments, CallState.STARTED)
