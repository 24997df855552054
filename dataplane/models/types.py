"""What a model call takes and gives, whatever the provider.

Errors: ``ProviderError`` (the provider answered with a failure, or could not be reached;
``retryable`` says whether the same call may succeed later).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str
    """JSON text, as the model wrote it (it may not parse)."""


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    """For a tool message: which call it answers."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "name": c.name, "arguments": c.arguments} for c in self.tool_calls
            ]
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChatMessage:
        return cls(
            role=data["role"],
            content=data.get("content", ""),
            tool_calls=tuple(
                ToolCall(c["id"], c["name"], c["arguments"]) for c in data.get("tool_calls", [])
            ),
            tool_call_id=data.get("tool_call_id", ""),
        )


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]
    """JSON Schema of the arguments."""


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[ChatMessage, ...]
    tools: tuple[ToolSpec, ...] = ()
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    step: int = 1
    """The run's step (scripted models use it)."""
    run_input: str = ""


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    estimated: bool = False
    """The provider's reply said nothing of usage: the counts are the executor's own
    estimate (or, before the gateway makes one, zero)."""

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.estimated or other.estimated,
        )


@dataclass(frozen=True)
class ChatResult:
    message: ChatMessage
    usage: Usage
    finish_reason: str
    response_id: str = ""
    model: str = ""
    """The model that answered, as the provider names it."""


@dataclass
class ProviderError(Exception):
    message: str
    status: int = 0
    """HTTP status, or 0 when none came back (timeout, connection)."""
    retryable: bool = False
    retry_after: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status or 'no response'}: {self.message}"


RETRYABLE_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))


def is_retryable(status: int) -> bool:
    return status in RETRYABLE_STATUSES
