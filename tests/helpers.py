"""Builders of valid resources and readers of rich error details, for tests."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from pilothouse.v1 import agent_pb2, model_pb2, prompt_pb2, tool_pb2


def tool(description: str = "Echo the text back", **fields: Any) -> tool_pb2.Tool:
    t = tool_pb2.Tool(
        description=description, kind=tool_pb2.TOOL_KIND_BUILTIN, endpoint="echo", **fields
    )
    if not t.HasField("input_schema"):
        t.input_schema.update(
            {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
        )
    return t


def model(**fields: Any) -> model_pb2.Model:
    values: dict[str, Any] = {
        "provider": model_pb2.MODEL_PROVIDER_SCRIPTED,
        "input_price_per_million": "0.15",
        "output_price_per_million": "0.60",
        "context_window": 128000,
        "max_output_tokens": 4096,
    }
    values.update(fields)
    return model_pb2.Model(**values)


def openai_model(base_url: str, **fields: Any) -> model_pb2.Model:
    """A model served by an OpenAI-compatible server (the fake one) at ``base_url``."""
    values: dict[str, Any] = {
        "provider": model_pb2.MODEL_PROVIDER_OPENAI,
        "endpoint": base_url,
        "provider_model": "fake",
        "input_price_per_million": "0.15",
        "output_price_per_million": "0.60",
        "context_window": 100000,
        "max_output_tokens": 100,
    }
    values.update(fields)
    return model_pb2.Model(**values)


def route(tenant: str, *models: str) -> model_pb2.ModelRoute:
    return model_pb2.ModelRoute(
        targets=[
            model_pb2.ModelRouteTarget(model=f"tenants/{tenant}/models/{m}", weight=1)
            for m in models
        ]
    )


def version(
    tenant: str, route_id: str, template: str = "You help {{customer}}."
) -> prompt_pb2.PromptVersion:
    return prompt_pb2.PromptVersion(
        template=template,
        variables=[prompt_pb2.PromptVariable(name="customer", required=True)],
        model_route=f"tenants/{tenant}/modelRoutes/{route_id}",
    )


def agent(tenant: str, prompt: str, tools: list[str], **fields: Any) -> agent_pb2.Agent:
    return agent_pb2.Agent(
        description="Answers customers",
        prompt=f"tenants/{tenant}/prompts/{prompt}",
        tools=[f"tenants/{tenant}/tools/{t}" for t in tools],
        **fields,
    )


def rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status()
            status.ParseFromString(value)
            return status
    raise AssertionError(f"no rich status on {error.code()}: {error.details()}")


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    for detail in rich_status(error).details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return {v.field: v.description for v in bad.field_violations}
    raise AssertionError("no BadRequest detail")


def precondition_violations(
    error: grpc.aio.AioRpcError,
) -> list[error_details_pb2.PreconditionFailure.Violation]:
    for detail in rich_status(error).details:
        if detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            return list(failure.violations)
    raise AssertionError("no PreconditionFailure detail")


async def fails(call: Awaitable[Any], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """Await an RPC that must fail with ``code``; returns the error for closer checks."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, f"{info.value.code()}: {info.value.details()}"
    return info.value
