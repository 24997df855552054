"""The tool router's builtins, the memory tool on both run-store backends, and the HTTP
tool's idempotency key."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from dataplane.http1 import http_client
from dataplane.runstore.memory import Memory
from dataplane.tools.mcp import McpSessions
from dataplane.tools.router import ToolRouter
from pilothouse.v1 import tool_pb2
from storekit.database import Database
from tests.fakes.mcp_server import OrdersMcp
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
    async with http_client() as http:
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
    async with http_client() as http:
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
        async with http_client() as http:
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


def mcp_tool(url: str, remote_name: str, **hints: bool) -> tool_pb2.Tool:
    tool = tool_pb2.Tool(
        name=f"tenants/t/tools/{remote_name.replace('_', '-')}",
        kind=tool_pb2.TOOL_KIND_MCP,
        endpoint=url,
        remote_name=remote_name,
    )
    tool.input_schema.update({"type": "object"})
    for hint, value in hints.items():
        setattr(tool.annotations, hint, value)
    return tool


@contextlib.asynccontextmanager
async def mcp_router(connect_timeout: float = 10.0) -> AsyncIterator[ToolRouter]:
    """A router whose MCP sessions are closed afterwards."""
    mcp = McpSessions(connect_timeout=connect_timeout)
    try:
        async with http_client() as http:
            yield ToolRouter(http, mcp=mcp)
    finally:
        await mcp.aclose()


async def test_mcp_tools_are_called_on_one_shared_session_with_the_idempotency_key() -> None:
    server = await OrdersMcp().start()
    try:
        async with mcp_router() as router:
            lookup = await router.execute(
                mcp_tool(server.url, "lookup_order"),
                {"order_id": "A1"},
                idempotency_key="run:1:0",
                deadline=await deadline(),
            )
            assert lookup.ok, lookup.result
            assert lookup.result == {"order_id": "A1", "status": "shipped", "total_usd": 42.5}
            cancel = mcp_tool(server.url, "cancel_order")
            until = await deadline()
            results = await asyncio.gather(
                *(
                    router.execute(cancel, {"order_id": "A1"}, idempotency_key=key, deadline=until)
                    for key in ("run:2:0", "run:2:0", "run:3:0")
                )
            )
            assert all(r.ok for r in results), results
            assert results[0].result == {"result": "cancelled A1"}
            assert sorted(server.keys) == ["run:2:0", "run:2:0", "run:3:0"]
            assert server.cancellations == 2
            assert router._mcp is not None and len(router._mcp._sessions) == 1
    finally:
        await server.aclose()


async def test_mcp_tool_errors_go_back_to_the_model() -> None:
    server = await OrdersMcp().start()
    try:
        async with mcp_router() as router:
            failed = await router.execute(
                mcp_tool(server.url, "restock"),
                {"sku": "X", "quantity": 1},
                idempotency_key="k",
                deadline=await deadline(),
            )
            assert not failed.ok and failed.executed and failed.attempts == 1
            assert "warehouse closed" in failed.result["error"]
            unknown = await router.execute(
                mcp_tool(server.url, "no_such_tool"),
                {},
                idempotency_key="k",
                deadline=await deadline(),
            )
            assert not unknown.ok and "no_such_tool" in unknown.result["error"]
    finally:
        await server.aclose()


async def test_an_unreachable_mcp_server_is_retried_only_for_idempotent_tools() -> None:
    server = await OrdersMcp().start()
    url = server.url
    await server.aclose()  # nothing listens there any more
    async with mcp_router(connect_timeout=1.0) as router:
        destructive = await router.execute(
            mcp_tool(url, "cancel_order"),
            {"order_id": "A1"},
            idempotency_key="k",
            deadline=await deadline(),
        )
        assert not destructive.ok and destructive.attempts == 1
        assert "unreachable" in destructive.result["error"]
        idempotent = mcp_tool(url, "lookup_order", idempotent_hint=True)
        idempotent.retry_policy.max_attempts = 3
        idempotent.retry_policy.initial_backoff.FromMilliseconds(10)
        retried = await router.execute(
            idempotent, {"order_id": "A1"}, idempotency_key="k", deadline=await deadline()
        )
        assert not retried.ok and retried.attempts == 3


async def test_an_mcp_session_is_reopened_after_the_server_restarts() -> None:
    server = await OrdersMcp().start()
    try:
        async with mcp_router(connect_timeout=2.0) as router:
            tool = mcp_tool(server.url, "lookup_order", idempotent_hint=True)
            tool.retry_policy.initial_backoff.FromMilliseconds(10)
            first = await router.execute(
                tool, {"order_id": "A1"}, idempotency_key="k", deadline=await deadline()
            )
            assert first.ok, first.result
            port = server.port
            await server.aclose()
            server = OrdersMcp()
            server.port = port
            await server.start()
            # Not idempotent: the call on the stale session fails at most once, as a
            # result the model reads, and the next one gets a new session.
            cancel = mcp_tool(server.url, "cancel_order")
            outcomes = [
                await router.execute(
                    cancel, {"order_id": "A1"}, idempotency_key=f"k{i}", deadline=await deadline()
                )
                for i in range(2)
            ]
            assert outcomes[1].ok, outcomes
            assert all(o.attempts == 1 for o in outcomes)
            again = await router.execute(
                tool, {"order_id": "A2"}, idempotency_key="k", deadline=await deadline()
            )
            assert again.ok, again.result
            assert again.result["order_id"] == "A2"
    finally:
        await server.aclose()
