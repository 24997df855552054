"""The tool router's builtins, the memory tool on both run-store backends, and the HTTP
tool's idempotency key."""

from __future__ import annotations

import asyncio

import httpx

from dataplane.runstore.memory import Memory
from dataplane.tools.router import ToolRouter
from pilothouse.v1 import tool_pb2
from storekit.database import Database
from tests.fakes.tool_server import RefundTool


def builtin(endpoint: str, **hints: bool) -> tool_pb2.Tool:
    tool = tool_pb2.Tool(
        name=f"tenants/t/tools/{endpoint}", kind=tool_pb2.TOOL_KIND_BUILTIN, endpoint=endpoint
    )
    tool.input_schema.update({"type": "object"})
    for hint, value in hints.items():
        setattr(tool.annotations, hint, value)
    return tool


async def deadline() -> float:
    return asyncio.get_running_loop().time() + 5


async def test_memory_is_kept_per_tenant_and_agent(run_db: Database) -> None:
    async with httpx.AsyncClient() as http:
        router = ToolRouter(http, Memory(run_db))
        tool = builtin("memory")

        async def call(args: dict[str, object], tenant: str = "t", agent: str = "a") -> object:
            outcome = await router.execute(
                tool,
                args,
                idempotency_key="k",
                deadline=await deadline(),
                tenant=tenant,
                agent=agent,
            )
            assert outcome.ok, outcome.result
            return outcome.result

        key = f"fav-{id(run_db)}"
        assert await call({"op": "set", "key": key, "value": {"color": "teal"}}) == {
            "key": key,
            "stored": True,
        }
        assert await call({"op": "get", "key": key}) == {"key": key, "value": {"color": "teal"}}
        assert await call({"op": "get", "key": key}, agent="other") == {"key": key, "value": None}
        assert await call({"op": "get", "key": key}, tenant="u") == {"key": key, "value": None}
        assert await call({"op": "list"}) == {"keys": [key]}
        assert await call({"op": "delete", "key": key}) == {"key": key, "deleted": True}
        bad = await router.execute(
            tool, {"op": "drop", "key": "x"}, idempotency_key="k", deadline=await deadline()
        )
        assert not bad.ok and "op must be" in bad.result["error"]


async def test_calculator_is_arithmetic_only() -> None:
    async with httpx.AsyncClient() as http:
        router = ToolRouter(http)
        tool = builtin("calculator")
        ok = await router.execute(
            tool, {"expression": "2 * (3 + 4) ** 2"}, idempotency_key="k", deadline=await deadline()
        )
        assert ok.ok and ok.result == {"result": 98}
        for expression in ("__import__('os')", "1 / 0", "9 ** 9999"):
            refused = await router.execute(
                tool, {"expression": expression}, idempotency_key="k", deadline=await deadline()
            )
            assert not refused.ok and refused.executed


async def test_http_tools_carry_the_idempotency_key_and_retry_only_if_idempotent() -> None:
    server = await RefundTool().start()
    try:
        async with httpx.AsyncClient() as http:
            router = ToolRouter(http)
            tool = tool_pb2.Tool(kind=tool_pb2.TOOL_KIND_HTTP, endpoint=server.url)
            tool.input_schema.update({"type": "object"})
            first = await router.execute(
                tool, {"amount_usd": 5}, idempotency_key="run:1:0", deadline=await deadline()
            )
            again = await router.execute(
                tool, {"amount_usd": 5}, idempotency_key="run:1:0", deadline=await deadline()
            )
            assert first.ok and first.result == again.result
            assert server.calls == ["run:1:0", "run:1:0"] and server.effects == 1
    finally:
        await server.aclose()
