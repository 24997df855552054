"""The scripted provider: deterministic replies declared in the model's configuration, so
demos and tests run offline. It calls nothing."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from dataplane.guardrails.untrusted import unmark
from dataplane.models.estimate import estimate_tokens
from dataplane.models.types import (
    ChatMessage,
    ChatRequest,
    ChatResult,
    ProviderError,
    ToolCall,
    Usage,
    is_retryable,
)
from pilothouse.v1 import model_pb2


@dataclass(frozen=True)
class ScriptedProvider:
    model: model_pb2.Model

    async def complete(self, request: ChatRequest) -> ChatResult:
        last_tool = next(
            (unmark(m.content) for m in reversed(request.messages) if m.role == "tool"), ""
        )
        rule = next((r for r in self.model.scripted.rules if _matches(r, request, last_tool)), None)
        if rule is not None and rule.HasField("latency"):
            await asyncio.sleep(rule.latency.ToTimedelta().total_seconds())
        if rule is not None and rule.fail_with_status:
            raise ProviderError(
                f"scripted failure {rule.fail_with_status}",
                status=rule.fail_with_status,
                retryable=is_retryable(rule.fail_with_status),
            )
        message = _reply(rule, request, last_tool)
        prompt = "".join(m.content for m in request.messages)
        produced = message.content + "".join(c.arguments for c in message.tool_calls)
        usage = Usage(estimate_tokens(prompt), estimate_tokens(produced))
        reason = "tool_calls" if message.tool_calls else "stop"
        return ChatResult(message, usage, reason, f"scripted-{request.step}", self.model.name)


def _matches(rule: model_pb2.ScriptedRule, request: ChatRequest, last_tool: str) -> bool:
    return (
        (not rule.on_step or rule.on_step == request.step)
        and (not rule.input_contains or rule.input_contains in request.run_input)
        and (not rule.last_tool_result_contains or rule.last_tool_result_contains in last_tool)
    )


def _reply(
    rule: model_pb2.ScriptedRule | None, request: ChatRequest, last_tool: str
) -> ChatMessage:
    if rule is None:
        return ChatMessage("assistant", request.run_input)
    if rule.tool_calls:
        calls = []
        for i, call in enumerate(rule.tool_calls):
            arguments: Any = json_format.MessageToDict(call.arguments)
            calls.append(ToolCall(f"call_{request.step}_{i}", call.tool, json.dumps(arguments)))
        return ChatMessage("assistant", "", tuple(calls))
    text = rule.answer.replace("{{input}}", request.run_input)
    return ChatMessage("assistant", text.replace("{{last_tool_result}}", last_tool))
