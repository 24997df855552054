"""The executor's own token counts, where no provider gives them: a prompt's size before a
call, a scripted model's usage, and the usage of a reply that did not report its own."""

from __future__ import annotations

import json

from dataplane.models.types import ChatMessage, ChatRequest, Usage

MESSAGE_TOKENS = 4
"""A message's framing (role, separators), as chat formats count it."""


def estimate_tokens(text: str) -> int:
    """About four characters a token."""
    return max(1, (len(text) + 3) // 4)


def message_tokens(message: ChatMessage) -> int:
    return (
        estimate_tokens(message.content)
        + MESSAGE_TOKENS
        + sum(estimate_tokens(c.name + c.arguments) for c in message.tool_calls)
    )


def estimated_usage(request: ChatRequest, reply: ChatMessage) -> Usage:
    """A call's usage by the executor's count, marked as estimated: its prompt (messages
    and tool definitions) and its reply."""
    prompt = sum(message_tokens(m) for m in request.messages) + sum(
        estimate_tokens(json.dumps(t.parameters)) for t in request.tools
    )
    return Usage(prompt, message_tokens(reply), 0, estimated=True)
