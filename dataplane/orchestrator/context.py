"""What a run needs from configuration, resolved once at admission from the executor's
snapshot (no control-plane call): the agent, its prompt version, route, tools, budget."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Any

from google.protobuf import json_format

from dataplane.config.snapshot import ExecutorConfig, RunUnit
from dataplane.models.estimate import estimate_tokens
from dataplane.models.types import ChatMessage, ToolSpec
from pilothouse import wellknown
from pilothouse.decimals import plain
from pilothouse.v1 import agent_pb2, prompt_pb2, tool_pb2

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z][A-Za-z0-9_]*)\s*\}\}")


class AdmissionError(Exception):
    """The run cannot start; ``field`` names the request field at fault."""

    def __init__(self, field: str, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.field = field
        self.not_found = not_found


class Exhausted(Exception):
    """The run cannot start now: something it needs is used up. Try again after
    ``retry_after`` seconds."""

    def __init__(
        self, message: str, *, retry_after: float, quota: tuple[str, str] | None = None
    ) -> None:
        """``quota``: the subject and the limit, when a tenant's quota refuses the run."""
        super().__init__(message)
        self.retry_after = retry_after
        self.quota = quota


@dataclass(frozen=True)
class Limits:
    """Hard limits of a run; 0 or None: none of that kind."""

    max_steps: int = 0
    max_tool_calls: int = 0
    max_tokens: int = 0
    max_usd: Decimal | None = None
    max_wall_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_steps": self.max_steps,
            "max_tool_calls": self.max_tool_calls,
            "max_tokens": self.max_tokens,
            "max_usd": None if self.max_usd is None else str(self.max_usd),
            "max_wall_seconds": self.max_wall_seconds,
        }

    def budget(self) -> dict[str, Any]:
        """The limits in force as the contract's ``Budget``, by field name (a message's
        constructor takes it as it is): those set."""
        out: dict[str, Any] = {}
        if self.max_steps:
            out["max_steps"] = self.max_steps
        if self.max_tool_calls:
            out["max_tool_calls"] = self.max_tool_calls
        if self.max_tokens:
            out["max_tokens"] = self.max_tokens
        if self.max_usd is not None:
            out["max_usd"] = plain(self.max_usd)
        if self.max_wall_seconds:
            seconds = int(self.max_wall_seconds)
            nanos = round((self.max_wall_seconds - seconds) * 1e9)
            out["max_wall_time"] = {"seconds": seconds, "nanos": nanos}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Limits:
        usd = data.get("max_usd")
        return cls(
            int(data.get("max_steps", 0)),
            int(data.get("max_tool_calls", 0)),
            int(data.get("max_tokens", 0)),
            None if usd is None else Decimal(usd),
            float(data.get("max_wall_seconds", 0.0)),
        )


MAX_USD = Decimal(1_000_000_000)
"""The largest budget a run may name: far past any real one, and small enough for exact
arithmetic with every cost it is compared to."""


def _usd(text: str, field: str) -> Decimal | None:
    if not text:
        return None
    try:
        value = Decimal(text[:100])
    except InvalidOperation:
        raise AdmissionError(field, f"{text[:40]!r} is not a decimal number") from None
    if len(text) > 100 or not value.is_finite() or not 0 <= value <= MAX_USD:
        raise AdmissionError(field, f"must be a decimal number from 0 to {MAX_USD}")
    return value


def _wall_time(budget: agent_pb2.Budget, field: str) -> float:
    if not budget.HasField("max_wall_time"):
        return 0.0
    try:
        seconds = wellknown.duration(budget.max_wall_time, field).total_seconds()
    except wellknown.OutOfRange as e:
        raise AdmissionError(e.field, str(e)) from None
    if seconds < 0:
        raise AdmissionError(field, "must not be negative")
    return seconds


def _tighter(agent: int, asked: int) -> int:
    if agent and asked:
        return min(agent, asked)
    return agent or asked


def limits(agent: agent_pb2.Agent, asked: agent_pb2.Budget) -> Limits:
    """The agent's budget, tightened (never loosened) by what the caller asks."""
    base = agent.default_budget
    agent_usd = _usd(base.max_usd, "agent.default_budget.max_usd")
    asked_usd = _usd(asked.max_usd, "budget.max_usd")
    usd = (
        min(u for u in (agent_usd, asked_usd) if u is not None)
        if (agent_usd or asked_usd) is not None
        else None
    )
    wall_agent = _wall_time(base, "agent.default_budget.max_wall_time")
    wall_asked = _wall_time(asked, "budget.max_wall_time")
    return Limits(
        _tighter(base.max_steps, asked.max_steps),
        _tighter(base.max_tool_calls, asked.max_tool_calls),
        _tighter(base.max_tokens, asked.max_tokens),
        usd,
        min(w for w in (wall_agent, wall_asked) if w) if (wall_agent or wall_asked) else 0.0,
    )


@dataclass(frozen=True)
class RunContext:
    agent: agent_pb2.Agent
    version: prompt_pb2.PromptVersion
    route: str
    tools: dict[str, tool_pb2.Tool]
    """By the name the model sees."""
    shown: tuple[ShownTool, ...]
    """The same tools as the model is shown them, by that name."""
    system_prompt: str
    variant: str = ""
    """The rollout variant the run is on ("" outside a rollout)."""

    @cached_property
    def tool_specs(self) -> tuple[ToolSpec, ...]:
        return tuple(t.spec for t in self.shown)

    @cached_property
    def tool_spec_bytes(self) -> int:
        return sum(t.size for t in self.shown)

    @cached_property
    def tool_spec_tokens(self) -> int:
        """Estimated prompt tokens the tool schemas take, for the budget's worst case."""
        return sum(t.tokens for t in self.shown)


@dataclass(frozen=True)
class ShownTool:
    """A tool as a model is shown it, with what it adds to a prompt: built once per
    snapshot (``show_tool``), not once per run."""

    spec: ToolSpec
    size: int
    """Bytes of its JSON (name, description, schema)."""
    tokens: int
    """Estimated tokens of its schema."""


def show_tool(name: str, tool: tool_pb2.Tool) -> ShownTool:
    spec = ToolSpec(name, tool.description, json_format.MessageToDict(tool.input_schema))
    return ShownTool(
        spec,
        len(json.dumps([spec.name, spec.description, spec.parameters]).encode()),
        estimate_tokens(json.dumps(spec.parameters)),
    )


MESSAGE_FRAMING = 16
"""Tokens a message's role and framing take, at most."""


def prompt_bound(messages: Sequence[ChatMessage], ctx: RunContext) -> int:
    """The most tokens a prompt can count: a byte-level tokenizer's token covers at least
    one byte, so no more than its UTF-8 bytes, plus each message's framing."""
    total = ctx.tool_spec_bytes
    for m in messages:
        total += len(m.content.encode()) + MESSAGE_FRAMING
        for call in m.tool_calls:
            total += len(call.name) + len(call.arguments.encode()) + MESSAGE_FRAMING
    return total


def require_version(config: ExecutorConfig, agent_name: str, version: str) -> None:
    """Refuse a pinned ``version`` that is not one of the agent's prompt's versions in
    the configuration."""
    agent = config.get(agent_pb2.Agent, agent_name)
    if agent is None:
        raise AdmissionError("agent", f"agent {agent_name!r} not found", not_found=True)
    if not version.startswith(agent.prompt + "/versions/"):
        raise AdmissionError(
            "prompt_version",
            f"{version!r} is not a version of {agent.prompt!r}, the agent's prompt",
        )
    if config.get(prompt_pb2.PromptVersion, version) is None:
        raise AdmissionError(
            "prompt_version",
            f"{version!r} is not in this executor's configuration: executors get the versions "
            "a label, an agent or a rollout names",
        )


def resolve(
    config: ExecutorConfig,
    agent_name: str,
    variables: dict[str, str],
    *,
    unit: RunUnit | None = None,
    pinned_version: str = "",
    pinned_variant: str = "",
) -> RunContext:
    """The run's context from the snapshot. A new run is assigned its version (and
    rollout variant) for ``unit``; ``pinned_version`` and ``pinned_variant`` are what a
    run was admitted with (a resumed run keeps them even if a label or weight moved), or
    what an eval asks for."""
    agent = config.get(agent_pb2.Agent, agent_name)
    if agent is None:
        raise AdmissionError("agent", f"agent {agent_name!r} not found", not_found=True)
    variant = pinned_variant
    if pinned_version:
        version = config.get(prompt_pb2.PromptVersion, pinned_version)
    elif unit is not None and not pinned_variant:
        version, variant = config.assigned_version(agent, unit)
    else:
        # A variant pinned without a version (an eval's judge): the agent's own version,
        # outside any rollout of its prompt.
        version = config.agent_prompt_version(agent)
    if version is None:
        raise AdmissionError("agent", f"agent {agent_name!r} has no prompt version to run")
    values: dict[str, str] = {}
    for var in version.variables:
        if var.name in variables:
            values[var.name] = variables[var.name]
        elif var.required:
            raise AdmissionError(f"variables[{var.name}]", f"variable {var.name!r} is required")
        else:
            values[var.name] = var.default_value
    unknown = sorted(set(variables) - {v.name for v in version.variables})
    if unknown:
        raise AdmissionError(
            f"variables[{unknown[0]}]", f"the prompt declares no variable {unknown[0]!r}"
        )
    system = PLACEHOLDER.sub(lambda m: values.get(m[1], m[0]), version.template)
    # By the name the model sees (the tool's id); looked up one by one, not by a pass
    # over every tool of the snapshot.
    tools = {
        name.rsplit("/", 1)[-1]: tool
        for name in agent.tools
        if (tool := config.get(tool_pb2.Tool, name)) is not None
    }
    shown = tuple(
        config.memo(
            tool.name, f"shown:{seen}:{tool.name}", functools.partial(show_tool, seen, tool)
        )
        for seen, tool in sorted(tools.items())
    )
    return RunContext(
        agent, version, agent.model_route or version.model_route, tools, shown, system, variant
    )
