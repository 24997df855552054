"""Interceptors around a run's model and tool calls, in the manner of Temporal's worker
interceptors: each is handed the call and the rest of the chain (``proceed``), and may act
before it, after it, or instead of it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from opentelemetry.trace import INVALID_SPAN, Span

from dataplane.models.gateway import GatewayResult
from dataplane.models.types import ChatRequest
from dataplane.runstore.model import NewEvent, UnsettledModelCall
from dataplane.tools.router import ToolOutcome
from pilothouse.v1 import model_pb2, tool_pb2


@dataclass
class ModelInvocation:
    """A model call of a run, as the interceptors see it."""

    request: ChatRequest
    route: str
    models: Sequence[model_pb2.Model]
    """The models the route may go to, its first target first."""
    tenant: str
    pick_key: str
    """Keeps a run's retries on the model a weighted route picked first."""
    deadline: float
    """On the event loop's clock."""
    worst_usd: Decimal
    """The most it may cost, held against the tenant's quota while it runs."""
    token_bound: int
    """The most tokens it may use (prompt bound and output limit)."""
    usd_left: Decimal | None = None
    """What the run's budget leaves (None: no USD limit)."""
    announced: UnsettledModelCall | None = None
    """Its record, written before it is made (the run's own calls; not the classifier's)."""
    span: Span = INVALID_SPAN
    """Its span, once the tracing interceptor has opened one."""


@dataclass
class ToolInvocation:
    """A checked tool call of a run, as the interceptors see it."""

    tool: tool_pb2.Tool
    name: str
    """The tool's name as the model calls it."""
    call_id: str
    arguments: dict[str, Any]
    step: int
    idempotency_key: str
    tenant: str
    agent: str
    deadline: float
    span: Span = INVALID_SPAN


@dataclass
class ToolAnswer:
    outcome: ToolOutcome
    tripped: str = ""
    """Set when a guardrail read the output as prompt injection: which, and why."""
    events: list[NewEvent] = field(default_factory=list)
    """Events of the calls made judging the output (the injection classifier's)."""


ModelNext = Callable[[ModelInvocation], Awaitable[GatewayResult]]
ToolNext = Callable[[ToolInvocation], Awaitable[ToolAnswer]]


class ModelInterceptor(Protocol):
    async def call_model(self, call: ModelInvocation, proceed: ModelNext) -> GatewayResult: ...


class ToolInterceptor(Protocol):
    async def call_tool(self, call: ToolInvocation, proceed: ToolNext) -> ToolAnswer: ...


def model_chain(interceptors: Sequence[ModelInterceptor], terminal: ModelNext) -> ModelNext:
    """``terminal`` wrapped in ``interceptors``, the first outermost."""
    chain = terminal
    for interceptor in reversed(interceptors):
        chain = _model_link(interceptor, chain)
    return chain


def tool_chain(interceptors: Sequence[ToolInterceptor], terminal: ToolNext) -> ToolNext:
    chain = terminal
    for interceptor in reversed(interceptors):
        chain = _tool_link(interceptor, chain)
    return chain


def _model_link(interceptor: ModelInterceptor, proceed: ModelNext) -> ModelNext:
    async def link(call: ModelInvocation) -> GatewayResult:
        return await interceptor.call_model(call, proceed)

    return link


def _tool_link(interceptor: ToolInterceptor, proceed: ToolNext) -> ToolNext:
    async def link(call: ToolInvocation) -> ToolAnswer:
        return await interceptor.call_tool(call, proceed)

    return link
