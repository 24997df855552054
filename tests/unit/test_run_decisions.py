"""What a run does next, decided from its state alone: tables of states, no server,
database or clock."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from typing import Any

import pytest
from google.protobuf import any_pb2

from dataplane.config.snapshot import ExecutorConfig, parse
from dataplane.guardrails.output import REPAIR_PREFIX
from dataplane.guardrails.untrusted import mark
from dataplane.models.types import ChatMessage, ToolCall
from dataplane.orchestrator.calls import Usage
from dataplane.orchestrator.context import Limits, resolve
from dataplane.orchestrator.decide import (
    AskForRepair,
    CallModel,
    Command,
    EndStep,
    Finish,
    Record,
    RunTool,
    Situation,
    WaitForPerson,
    decide,
)
from dataplane.runstore.model import CallState, StopReason, ToolCallRecord
from pilothouse.v1 import agent_pb2, model_pb2, prompt_pb2, tool_pb2

T = "tenants/a"


def _tool(name: str, kind: int, endpoint: str, **fields: Any) -> tool_pb2.Tool:
    hints = fields.pop("hints", {})
    tool = tool_pb2.Tool(name=f"{T}/tools/{name}", kind=kind, endpoint=endpoint, **fields)
    tool.input_schema.update({"type": "object"})
    for hint, value in hints.items():
        setattr(tool.annotations, hint, value)
    return tool


def _config(**agent_fields: Any) -> ExecutorConfig:
    tools = [
        _tool("echo", tool_pb2.TOOL_KIND_BUILTIN, "echo", hints={"idempotent_hint": True}),
        _tool("calc", tool_pb2.TOOL_KIND_BUILTIN, "calculator"),
        _tool("send", tool_pb2.TOOL_KIND_HTTP, "https://api.example/send", required_scope=""),
        _tool(
            "charge",
            tool_pb2.TOOL_KIND_HTTP,
            "https://api.example/charge",
            unknown_outcome=tool_pb2.UNKNOWN_OUTCOME_POLICY_FAIL,
        ),
        _tool("admin", tool_pb2.TOOL_KIND_BUILTIN, "echo", required_scope="admin"),
        _tool("gated", tool_pb2.TOOL_KIND_BUILTIN, "echo", approval=tool_pb2.APPROVAL_MODE_ALWAYS),
        _tool(
            "wary",
            tool_pb2.TOOL_KIND_BUILTIN,
            "echo",
            approval=tool_pb2.APPROVAL_MODE_WHEN_UNTRUSTED,
            hints={"read_only_hint": True},
        ),
    ]
    version = prompt_pb2.PromptVersion(
        name=f"{T}/prompts/p/versions/0123456789abcdef",
        template="be brief",
        model_route=f"{T}/modelRoutes/r",
    )
    messages: list[object] = [
        *tools,
        model_pb2.Model(
            name=f"{T}/models/m",
            input_price_per_million="1",
            output_price_per_million="2",
            max_output_tokens=1000,
        ),
        model_pb2.ModelRoute(
            name=f"{T}/modelRoutes/r",
            targets=[model_pb2.ModelRouteTarget(model=f"{T}/models/m", weight=1)],
        ),
        version,
        prompt_pb2.Prompt(name=f"{T}/prompts/p", labels={"production": version.name}),
        agent_pb2.Agent(
            name=f"{T}/agents/x",
            prompt=f"{T}/prompts/p",
            tools=[t.name for t in tools],
            **agent_fields,
        ),
    ]
    packed: dict[str, list[any_pb2.Any]] = {}
    for m in messages:
        a = any_pb2.Any()
        a.Pack(m)  # type: ignore[arg-type]
        packed.setdefault(a.type_url, []).append(a)
    return parse("v1", packed)


CONFIG = _config()
OPENING = [ChatMessage("system", "be brief"), ChatMessage("user", "hello")]


def state(
    messages: list[ChatMessage] | None = None,
    *,
    config: ExecutorConfig = CONFIG,
    calls: dict[int, ToolCallRecord] | None = None,
    **fields: Any,
) -> Situation:
    ctx = resolve(config, f"{T}/agents/x", {})
    return Situation(
        config,
        ctx,
        fields.pop("limits", Limits()),
        fields.pop("usage", Usage()),
        messages or OPENING,
        calls or {},
        fields.pop("completed", 0),
        fields.pop("now", 1_000.0),
        **fields,
    )


def asked(*calls: tuple[str, str]) -> list[ChatMessage]:
    """The opening, then a reply calling ``calls`` (name, arguments) in order."""
    tool_calls = tuple(ToolCall(f"c{i}", name, args) for i, (name, args) in enumerate(calls))
    return [*OPENING, ChatMessage("assistant", "", tool_calls)]


def record(
    index: int, name: str, state: CallState, result: Any = None, **kw: Any
) -> ToolCallRecord:
    return ToolCallRecord(1, index, f"c{index}", name, {}, state, result, **kw)


def stop(reason: StopReason, detail: str = "", answer: str = "") -> Finish:
    return Finish(reason, detail, answer)


# -- before a model call --------------------------------------------------------------

PLANNING: list[tuple[str, Situation, type[Command] | Finish]] = [
    ("a new run calls the model", state(), CallModel),
    (
        "at its step limit",
        state(completed=2, limits=Limits(max_steps=2)),
        stop(StopReason.MAX_STEPS, "2 steps"),
    ),
    (
        "out of wall time",
        state(now=50.0, wall_deadline=50.0),
        stop(StopReason.BUDGET_EXCEEDED, "wall_time"),
    ),
    (
        "its caller gone",
        state(now=50.0, caller_deadline=49.0),
        stop(StopReason.CANCELLED, "the caller's deadline passed"),
    ),
    (
        "the worst case over the token budget",
        state(limits=Limits(max_tokens=500)),
        stop(StopReason.BUDGET_EXCEEDED, "tokens"),
    ),
    (
        "the worst case over the USD budget",
        state(limits=Limits(max_usd=Decimal("0.001"))),
        stop(StopReason.BUDGET_EXCEEDED, "usd"),
    ),
    ("within the USD budget", state(limits=Limits(max_usd=Decimal("0.01"))), CallModel),
    (
        "spent already",
        state(limits=Limits(max_usd=Decimal("0.01")), usage=Usage(cost_usd=Decimal("0.009"))),
        stop(StopReason.BUDGET_EXCEEDED, "usd"),
    ),
    ("cancelled", state(cancel_requested=True), stop(StopReason.CANCELLED, "cancelled")),
]


@pytest.mark.parametrize(("why", "run", "expected"), PLANNING, ids=[p[0] for p in PLANNING])
def test_before_a_model_call(why: str, run: Situation, expected: type[Command] | Finish) -> None:
    command = decide(run)
    if isinstance(expected, Finish):
        assert command == expected, why
    else:
        assert isinstance(command, expected), why


def test_a_model_call_is_step_after_those_completed_and_bounded() -> None:
    command = decide(state(completed=3, tenant_usd_limited=True))
    assert isinstance(command, CallModel)
    assert command.step == 4 and command.bounds.max_output == 1000
    assert [m.name for m in command.bounds.models] == [f"{T}/models/m"]


# -- a reply without tool calls --------------------------------------------------------


def test_a_final_answer_ends_the_run() -> None:
    run = state([*OPENING, ChatMessage("assistant", "hi there")])
    assert decide(run) == stop(StopReason.COMPLETED, answer="hi there")


def test_a_blocked_answer_stops_the_run() -> None:
    config = _config(guardrail_policy=agent_pb2.GuardrailPolicy(blocked_patterns=["secret"]))
    run = state([*OPENING, ChatMessage("assistant", "the secret is 4")], config=config)
    assert decide(run) == stop(StopReason.GUARDRAIL, "blocked_patterns[0] matched the final answer")


def test_an_answer_off_its_schema_is_repaired_once() -> None:
    agent = agent_pb2.Agent()
    agent.output_schema.update({"type": "object", "required": ["n"]})
    config = _config(output_schema=agent.output_schema)
    first = decide(state([*OPENING, ChatMessage("assistant", "{}")], config=config))
    assert isinstance(first, AskForRepair) and first.ask.content.startswith(REPAIR_PREFIX)
    again = [*OPENING, ChatMessage("assistant", "{}"), first.ask, ChatMessage("assistant", "[]")]
    command = decide(state(again, config=config))
    assert isinstance(command, Finish) and command.reason is StopReason.INVALID_OUTPUT
    good = decide(state([*OPENING, ChatMessage("assistant", '{"n": 1}')], config=config))
    assert good == stop(StopReason.COMPLETED, answer='{"n": 1}')


# -- a reply's tool calls ----------------------------------------------------------------

ECHO = ("echo", '{"text": "a"}')
SEND = ("send", '{"to": "x"}')

ACTING: list[tuple[str, Situation, Command | type[Command]]] = [
    ("the first call runs", state(asked(ECHO, ECHO)), RunTool),
    ("a tool not the agent's is refused", state(asked(("nope", "{}"))), Record),
    ("arguments that do not parse are refused", state(asked(("echo", "{"))), Record),
    ("a tool the key's scopes do not allow is refused", state(asked(("admin", "{}"))), Record),
    (
        "a tool the key's scopes allow runs",
        state(asked(("admin", "{}")), scopes=frozenset({"admin"})),
        RunTool,
    ),
    ("a tool that always asks waits", state(asked(("gated", "{}"))), WaitForPerson),
    (
        "an approved call runs",
        state(asked(("gated", "{}")), calls={0: record(0, "gated", CallState.APPROVED)}),
        RunTool,
    ),
    (
        "a call cancelled before it runs",
        state(asked(ECHO), cancel_requested=True),
        stop(StopReason.CANCELLED, "cancelled"),
    ),
    (
        "a call over the tool-call budget",
        state(
            asked(ECHO, ECHO),
            limits=Limits(max_tool_calls=2),
            usage=Usage(tool_calls=1),
            calls={0: record(0, "echo", CallState.COMPLETED, "a")},
        ),
        stop(StopReason.BUDGET_EXCEEDED, "tool_calls"),
    ),
    (
        "refusals do not count against it",
        state(
            asked(ECHO, ECHO),
            limits=Limits(max_tool_calls=2),
            usage=Usage(tool_calls=1),
            calls={0: record(0, "echo", CallState.REFUSED, {})},
        ),
        RunTool,
    ),
    (
        "a call started for a tool safe to repeat runs again",
        state(asked(ECHO), calls={0: record(0, "echo", CallState.STARTED)}),
        RunTool,
    ),
    (
        "a call started for one that is not waits for a person",
        state(asked(SEND), calls={0: record(0, "send", CallState.STARTED)}),
        WaitForPerson,
    ),
]


@pytest.mark.parametrize(("why", "run", "expected"), ACTING, ids=[a[0] for a in ACTING])
def test_a_replys_tool_calls(why: str, run: Situation, expected: Command | type[Command]) -> None:
    command = decide(run)
    if isinstance(expected, type):
        assert isinstance(command, expected), (why, command)
    else:
        assert command == expected, why


def test_refusals_say_why_and_name_a_missing_scope() -> None:
    refused = decide(state(asked(("admin", "{}"))))
    assert isinstance(refused, Record) and refused.state is CallState.REFUSED
    assert refused.outcome.missing_scope == "admin" and refused.arguments == {}
    invalid = decide(state(asked(("echo", "[1]"))))
    assert isinstance(invalid, Record)
    assert invalid.outcome.result == {"error": "arguments must be a JSON object"}


def test_a_denied_call_is_refused_with_the_persons_reason() -> None:
    denied = record(0, "gated", CallState.DENIED, error="not today")
    command = decide(state(asked(("gated", "{}")), calls={0: denied}))
    assert isinstance(command, Record) and command.state is CallState.REFUSED
    assert command.outcome.result == {"error": "not today"} and not command.outcome.executed


def test_an_unknown_outcome_follows_the_tools_policy() -> None:
    asks = decide(state(asked(SEND), calls={0: record(0, "send", CallState.STARTED)}))
    assert isinstance(asks, WaitForPerson) and asks.state is CallState.OUTCOME_UNKNOWN
    assert asks.error == "its executor stopped while it was in flight"
    timed_out = record(0, "send", CallState.STARTED, error="no answer in 5s")
    asks = decide(state(asked(SEND), calls={0: timed_out}))
    assert isinstance(asks, WaitForPerson) and asks.reason.endswith("(no answer in 5s)")
    fails = decide(
        state(asked(("charge", "{}")), calls={0: record(0, "charge", CallState.STARTED)})
    )
    assert isinstance(fails, Record) and fails.state is CallState.FAILED
    assert "was not made again" in fails.outcome.result["error"] and fails.outcome.executed
    done = record(0, "send", CallState.RESOLVED, {"sent": True})
    resolved = decide(state(asked(SEND), calls={0: done}))
    assert isinstance(resolved, Record) and resolved.state is CallState.COMPLETED
    failed = dataclasses.replace(done, error="it bounced")
    resolved = decide(state(asked(SEND), calls={0: failed}))
    assert isinstance(resolved, Record) and resolved.state is CallState.FAILED


def test_untrusted_output_taints_what_follows() -> None:
    wary = ("wary", "{}")
    assert isinstance(decide(state(asked(wary))), RunTool), "nothing untrusted yet"
    echoed = record(0, "echo", CallState.COMPLETED, {"text": "a"})
    command = decide(state(asked(ECHO, wary), calls={0: echoed}))
    assert isinstance(command, WaitForPerson), "this step's echo output taints the run"
    assert command.reason == "untrusted content has entered the run"
    trusted = record(0, "calc", CallState.COMPLETED, 4)
    assert isinstance(decide(state(asked(("calc", "{}"), wary), calls={0: trusted})), RunTool)
    earlier = [*OPENING[:1], ChatMessage("tool", mark("echo", '"x"'), tool_call_id="z")]
    assert isinstance(decide(state([*earlier, *asked(wary)[1:]])), WaitForPerson)


def test_a_step_ends_when_every_call_is_over() -> None:
    calls = {
        0: record(0, "echo", CallState.COMPLETED, {"text": "a"}),
        1: record(1, "calc", CallState.COMPLETED, 4),
        2: record(2, "nope", CallState.REFUSED, {"error": "not available"}),
        3: record(3, "echo", CallState.FAILED, {"error": "boom"}),
    }
    run = state(asked(ECHO, ("calc", "{}"), ("nope", "{}"), ECHO), calls=calls, completed=4)
    command = decide(run)
    assert isinstance(command, EndStep)
    assert command.step == 5 and command.tool_calls == 3, "refusals are not counted"
    assert [m.tool_call_id for m in command.results] == ["c0", "c1", "c2", "c3"]
    assert command.results[0].content == mark("echo", json.dumps({"text": "a"}))
    assert command.results[1].content == "4", "trusted output is given as it is"
    assert command.results[2].content == json.dumps({"error": "not available"})
    assert command.results[3].content == mark("echo", json.dumps({"error": "boom"}))


def test_a_resumed_step_decides_as_the_first_execution_did() -> None:
    """The journal read back after a crash and the records the loop keeps as it goes are
    the same state: every decision from them is the same."""
    reply = asked(SEND, ECHO)
    first: dict[int, ToolCallRecord] = {}
    seen: list[Command] = []
    for index, result in ((0, {"sent": 1}), (1, {"text": "a"})):
        command = decide(state(reply, calls=first))
        assert isinstance(command, RunTool) and command.index == index
        seen.append(command)
        first[index] = ToolCallRecord(
            1, index, f"c{index}", command.call.name, command.arguments, CallState.COMPLETED, result
        )
    # The same journal as the run store gives it back: timestamps and attempts added.
    read_back = {
        i: dataclasses.replace(r, attempts=1, started_at=None, finished_at=None)
        for i, r in first.items()
    }
    assert decide(state(reply, calls=read_back)) == decide(state(reply, calls=first))
    assert isinstance(decide(state(reply, calls={0: read_back[0]})), RunTool)
    assert decide(state(reply, calls={0: read_back[0]})) == seen[1]
