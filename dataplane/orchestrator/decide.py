"""What a run does next, decided from what is durable about it.

``decide`` is a pure function: from a run's state (its messages, the journal of the step
in progress, its limits and usage, the configuration it runs under, the time) it returns
one command: call the model, carry out tool call *i*, record an outcome that needs no
call, wait for a person, end the step, or finish. The run loop carries the command out,
records what came of it, and asks again. A run resumed from the run store and a run on its
first execution go through the same decisions, so nothing a resumed run does can differ
from what the first execution would have done: a tool call's result reaches the model the
same way whether it was just made or read back from the journal.

Nothing here reads a clock, a database or the network; the tests drive it over tables of
states.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dataplane.config.snapshot import ExecutorConfig
from dataplane.guardrails import output
from dataplane.guardrails.taint import open_world, screen_arguments, trusted_output
from dataplane.guardrails.untrusted import is_marked, mark, unmark
from dataplane.models.pricing import cost as price
from dataplane.models.types import ChatMessage, ToolCall
from dataplane.models.types import Usage as CallUsage
from dataplane.orchestrator.calls import CallBounds, Usage, call_bounds
from dataplane.orchestrator.context import Limits, RunContext
from dataplane.runstore.model import CallState, StopReason, ToolCallRecord
from dataplane.tools.router import ToolOutcome, check_call, safe_to_repeat
from pilothouse.v1 import tool_pb2

ENDED = frozenset({CallState.COMPLETED, CallState.FAILED, CallState.REFUSED})
"""Journal states of a call that is over: the step moves on to its next call."""
COUNTED = frozenset({CallState.COMPLETED, CallState.FAILED})
"""Journal states of a call that counts against the run's tool-call budget."""


@dataclass(slots=True)
class Situation:
    """What ``decide`` decides from (built for each decision, so a plain slotted class:
    ``decide`` never changes it)."""

    config: ExecutorConfig
    ctx: RunContext
    limits: Limits
    usage: Usage
    """As of the last model call; the tool calls of the step in progress are in ``calls``."""
    messages: Sequence[ChatMessage]
    calls: Mapping[int, ToolCallRecord]
    """The journal of the step in progress, by call index."""
    completed: int
    """Steps completed."""
    now: float
    """Wall-clock time, in seconds since the epoch."""
    wall_deadline: float | None = None
    """When the run's wall-time budget runs out (wall clock)."""
    caller_deadline: float | None = None
    """When the caller stops waiting (wall clock)."""
    scopes: frozenset[str] = frozenset()
    """Those of the key that started the run."""
    cancel_requested: bool = False
    tenant_usd_limited: bool = False
    """The tenant's quota lease limits spend in USD (so a model call needs a worst case)."""


@dataclass(frozen=True)
class Finish:
    reason: StopReason
    detail: str = ""
    answer: str = ""


@dataclass(frozen=True)
class CallModel:
    step: int
    bounds: CallBounds


@dataclass(frozen=True)
class AskForRepair:
    """The output guardrails ask the model (once) to repair its final answer."""

    ask: ChatMessage


@dataclass(frozen=True)
class RunTool:
    step: int
    index: int
    call: ToolCall
    tool: tool_pb2.Tool
    arguments: dict[str, Any]
    record: ToolCallRecord | None
    """Its journal entry so far (approved, or started for a tool safe to repeat)."""


@dataclass(frozen=True)
class Record:
    """An outcome that needs no call: a refusal, a denial, or what became of a call whose
    outcome was unknown (by the tool's policy, or as a person said)."""

    step: int
    index: int
    call: ToolCall
    arguments: dict[str, Any]
    state: CallState
    outcome: ToolOutcome
    record: ToolCallRecord | None


@dataclass(frozen=True)
class WaitForPerson:
    """The run waits for a person: to approve a call (``AWAITING_APPROVAL``) or to say
    what became of one whose outcome is unknown (``OUTCOME_UNKNOWN``, ``error`` why)."""

    step: int
    index: int
    call: ToolCall
    arguments: dict[str, Any]
    state: CallState
    reason: str
    error: str = ""


@dataclass(frozen=True)
class EndStep:
    """Every call of the step is over: ``results`` go to the model, ``tool_calls`` of
    them count against the budget."""

    step: int
    results: tuple[ChatMessage, ...]
    tool_calls: int


Command = Finish | CallModel | AskForRepair | RunTool | Record | WaitForPerson | EndStep


def decide(state: Situation) -> Command:
    last = state.messages[-1]
    if last.role == "assistant" and last.tool_calls:
        return _act(state, last)
    if last.role == "assistant":
        return _judge(state)
    return _plan(state)


def limit_stop(state: Situation, step: int) -> Finish | None:
    """The limit that stops the run before ``step`` begins, if one does."""
    limits = state.limits
    if limits.max_steps and step > limits.max_steps:
        return Finish(StopReason.MAX_STEPS, f"{limits.max_steps} steps")
    if state.wall_deadline is not None and state.now >= state.wall_deadline:
        return Finish(StopReason.BUDGET_EXCEEDED, "wall_time")
    if state.caller_deadline is not None and state.now >= state.caller_deadline:
        return Finish(StopReason.CANCELLED, "the caller's deadline passed")
    return None


def _plan(state: Situation) -> Command:
    step = state.completed + 1
    stop = limit_stop(state, step)
    if stop is not None:
        return stop
    limits, usage = state.limits, state.usage
    # A call that may write without end has no worst case to budget for.
    bounds = call_bounds(
        state.config,
        state.ctx,
        state.messages,
        usd_limited=limits.max_usd is not None or state.tenant_usd_limited,
    )
    most = bounds.prompt_estimate + bounds.max_output
    if limits.max_tokens and usage.tokens + most > limits.max_tokens:
        return Finish(StopReason.BUDGET_EXCEEDED, "tokens")
    if limits.max_usd is not None and bounds.models:
        call = CallUsage(bounds.prompt_estimate, bounds.max_output)
        worst = max(price(m, call) for m in bounds.models)
        if usage.cost_usd + worst > limits.max_usd:
            return Finish(StopReason.BUDGET_EXCEEDED, "usd")
    if state.cancel_requested:
        return Finish(StopReason.CANCELLED, "cancelled")
    return CallModel(step, bounds)


def _judge(state: Situation) -> Command:
    """The final answer, once the output guardrails pass it; or the repair they ask for
    (once); or the stop when they block it."""
    messages = state.messages
    repaired = any(
        m.role == "user" and m.content.startswith(output.REPAIR_PREFIX) for m in messages
    )
    agent = state.ctx.agent
    verdict = output.judge(
        agent, state.config.output_validator(agent), messages[-1].content, repaired=repaired
    )
    if verdict.repair:
        return AskForRepair(ChatMessage("user", verdict.repair))
    if verdict.blocked:
        return Finish(StopReason.GUARDRAIL, verdict.blocked)
    if verdict.invalid:
        return Finish(StopReason.INVALID_OUTPUT, f"output_schema: {verdict.invalid}")
    return Finish(StopReason.COMPLETED, answer=verdict.answer)


def _act(state: Situation, reply: ChatMessage) -> Command:
    step = state.completed + 1
    for index, call in enumerate(reply.tool_calls):
        record = state.calls.get(index)
        if record is None or record.state not in ENDED:
            return _next_call(state, step, index, call, record)
    results = tuple(
        ChatMessage("tool", given(state.ctx, state.calls[i]), tool_call_id=call.id)
        for i, call in enumerate(reply.tool_calls)
    )
    return EndStep(step, results, counted(state.calls))


def _next_call(
    state: Situation, step: int, index: int, call: ToolCall, record: ToolCallRecord | None
) -> Command:
    checked = check_call(state.config, state.ctx.tools, call.name, call.arguments, state.scopes)
    if isinstance(checked, ToolOutcome):
        return Record(step, index, call, {}, CallState.REFUSED, checked, record)
    tool, arguments = checked
    if record is not None and unsettled_effect(record, tool):
        # It may have had its effect: never sent again on the run's own say.
        return _unknown_outcome(step, index, call, tool, arguments, record)
    limit = state.limits.max_tool_calls
    if limit and state.usage.tool_calls + counted(state.calls) + 1 > limit:
        return Finish(StopReason.BUDGET_EXCEEDED, "tool_calls")
    reason = needs_approval(state.ctx, tool, untrusted_content(state), arguments)
    if reason and (record is None or record.state is CallState.AWAITING_APPROVAL):
        return WaitForPerson(step, index, call, arguments, CallState.AWAITING_APPROVAL, reason)
    if record is not None and record.state is CallState.DENIED:
        denied = ToolOutcome({"error": record.error or "a person denied this call"}, False, False)
        return Record(step, index, call, {}, CallState.REFUSED, denied, record)
    if state.cancel_requested:
        return Finish(StopReason.CANCELLED, "cancelled")
    return RunTool(step, index, call, tool, arguments, record)


def _unknown_outcome(
    step: int,
    index: int,
    call: ToolCall,
    tool: tool_pb2.Tool,
    arguments: dict[str, Any],
    record: ToolCallRecord,
) -> Command:
    """A call whose outcome is unknown, by its tool's policy: fail it, or ask a person
    (the default); once a person has said (``RESOLVED``), what they said."""
    if record.state is CallState.RESOLVED:
        outcome = ToolOutcome(record.result, not record.error, True)
        state = CallState.COMPLETED if outcome.ok else CallState.FAILED
        return Record(step, index, call, arguments, state, outcome, record)
    why = record.error or "its executor stopped while it was in flight"
    if tool.unknown_outcome == tool_pb2.UNKNOWN_OUTCOME_POLICY_FAIL:
        failed = ToolOutcome(
            {
                "error": f"the outcome of this call is unknown ({why}): it may or may "
                "not have taken effect, and it was not made again"
            },
            False,
            True,
        )
        return Record(step, index, call, arguments, CallState.FAILED, failed, record)
    reason = f"the outcome of this call is unknown ({why})"
    return WaitForPerson(step, index, call, arguments, CallState.OUTCOME_UNKNOWN, reason, why)


def unsettled_effect(record: ToolCallRecord, tool: tool_pb2.Tool) -> bool:
    """The call may have had its effect and nobody knows what became of it yet (or a
    person just said): started and never finished, for a tool not safe to repeat."""
    if record.state is CallState.STARTED:
        return not safe_to_repeat(tool)
    return record.state in (CallState.OUTCOME_UNKNOWN, CallState.RESOLVED)


def counted(calls: Mapping[int, ToolCallRecord]) -> int:
    return sum(1 for r in calls.values() if r.state in COUNTED)


def given(ctx: RunContext, record: ToolCallRecord) -> str:
    """What the model is given of a call that is over: a refusal as it is; a result (the
    tool's, or what stands for it) marked untrusted unless the tool's output is trusted."""
    content = json.dumps(record.result)
    if record.state is CallState.REFUSED or _trusted(ctx, record.tool):
        return content
    return mark(record.tool, content)


def untrusted_content(state: Situation) -> list[str]:
    """The run's untrusted content so far: tool output given to the model marked, and the
    step's results that will be (any of it taints the run)."""
    content = [
        unmark(m.content) for m in state.messages if m.role == "tool" and is_marked(m.content)
    ]
    for index in sorted(state.calls):
        record = state.calls[index]
        if record.state in COUNTED and not _trusted(state.ctx, record.tool):
            content.append(json.dumps(record.result))
    return content


def _trusted(ctx: RunContext, name: str) -> bool:
    tool = ctx.tools.get(name)
    return tool is not None and trusted_output(tool)


def needs_approval(
    ctx: RunContext, tool: tool_pb2.Tool, untrusted: Sequence[str], arguments: Any = None
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
