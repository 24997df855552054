"""Content on a call's span, for a tenant that captures it (``capture_content``): the
model call's messages and answer, the tool call's arguments and result, each redacted
and cut to a size (``otel.captured``). Inside the tracing interceptor, whose span it
writes on."""

from __future__ import annotations

import json

from dataplane.models.gateway import GatewayResult
from dataplane.orchestrator.intercept.chain import (
    ModelInvocation,
    ModelNext,
    ToolAnswer,
    ToolInvocation,
    ToolNext,
)
from dataplane.telemetry.otel import capture_messages, captured


class ModelCapture:
    async def call_model(self, call: ModelInvocation, proceed: ModelNext) -> GatewayResult:
        result = await proceed(call)
        capture_messages(call.span, call.request.messages, result.result.message)
        return result


class ToolCapture:
    async def call_tool(self, call: ToolInvocation, proceed: ToolNext) -> ToolAnswer:
        answer = await proceed(call)
        call.span.set_attribute("gen_ai.tool.call.arguments", captured(json.dumps(call.arguments)))
        call.span.set_attribute(
            "gen_ai.tool.call.result", captured(json.dumps(answer.outcome.result))
        )
        return answer
