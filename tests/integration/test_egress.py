"""Tenants' HTTP-tool and MCP endpoints (and their redirects) reach only what the
executor's egress policy allows. Every destination here is on loopback: a forbidden one
is a listener on 127.0.0.2 that counts the connections it gets, which must stay 0."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from dataplane.egress import EgressPolicy
from dataplane.http1 import Http1Transport, http_client
from dataplane.tools.mcp import McpSessions
from dataplane.tools.router import ToolRouter
from pilothouse.v1 import tool_pb2
from tests.fakes.http import LoopbackHttpServer
from tests.fakes.mcp_server import OrdersMcp
from tests.fakes.tool_server import RefundTool


@dataclass
class Tripwire:
    """A listener on a forbidden address; ``connections`` counts whoever reached it."""

    host: str = "127.0.0.2"
    port: int = 0
    connections: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> Tripwire:
        def arrived(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.connections += 1
            w.close()

        self._server = await asyncio.start_server(arrived, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()


@dataclass
class Redirector(LoopbackHttpServer):
    """An allowed tool endpoint that answers every call with a redirect to ``target``."""

    target: str = ""

    async def respond(
        self,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
    ) -> bool:
        writer.write(
            f"HTTP/1.1 307 Temporary Redirect\r\nlocation: {self.target}\r\n"
            "content-length: 0\r\n\r\n".encode()
        )
        await writer.drain()
        return True


@pytest.fixture
async def tripwire() -> AsyncIterator[Tripwire]:
    wire = await Tripwire().start()
    yield wire
    await wire.aclose()


def http_tool(url: str, kind: int = tool_pb2.TOOL_KIND_HTTP, remote: str = "") -> tool_pb2.Tool:
    tool = tool_pb2.Tool(name="tenants/t/tools/x", kind=kind, endpoint=url, remote_name=remote)
    tool.input_schema.update({"type": "object"})
    tool.annotations.idempotent_hint = True  # would be retried if the refusal were transient
    return tool


@contextlib.asynccontextmanager
async def guarded_router(*allow: str) -> AsyncIterator[ToolRouter]:
    policy = EgressPolicy.from_entries(allow)
    mcp = McpSessions(connect_timeout=2.0, egress=policy)
    try:
        async with http_client(Http1Transport(egress=policy)) as http:
            yield ToolRouter(http, mcp=mcp)
    finally:
        await mcp.aclose()


async def call(router: ToolRouter, tool: tool_pb2.Tool) -> dict[str, object]:
    outcome = await router.execute(
        tool,
        {"amount_usd": 1},
        idempotency_key="run:1:0",
        deadline=asyncio.get_running_loop().time() + 5,
    )
    assert isinstance(outcome.result, dict)
    return {"ok": outcome.ok, "attempts": outcome.attempts, **outcome.result}


async def test_http_tools_reach_only_allowed_destinations(tripwire: Tripwire) -> None:
    refunds = await RefundTool().start()
    try:
        async with guarded_router(f"127.0.0.1:{refunds.port}") as router:
            assert (await call(router, http_tool(refunds.url)))["ok"]
            denied = await call(router, http_tool(tripwire.url))
            assert not denied["ok"] and denied["attempts"] == 1
            assert "loopback" in str(denied["error"])
            # A name is resolved first, and refused when it leads somewhere forbidden.
            by_name = await call(router, http_tool(f"http://localhost:{tripwire.port}/"))
            assert not by_name["ok"] and "not allow" in str(by_name["error"])
        async with guarded_router() as router:  # nothing but public addresses
            assert not (await call(router, http_tool(refunds.url)))["ok"]
        assert refunds.effects == 1 and tripwire.connections == 0
    finally:
        await refunds.aclose()


async def test_redirects_are_not_followed(tripwire: Tripwire) -> None:
    redirector = await Redirector(target=tripwire.url).start()
    try:
        async with guarded_router(f"127.0.0.1:{redirector.port}") as router:
            outcome = await call(router, http_tool(f"http://127.0.0.1:{redirector.port}/"))
        assert tripwire.connections == 0, outcome
    finally:
        await redirector.aclose()


async def test_mcp_servers_reach_only_allowed_destinations(tripwire: Tripwire) -> None:
    orders = await OrdersMcp().start()
    try:
        async with guarded_router(f"127.0.0.1:{orders.port}") as router:
            lookup = http_tool(orders.url, tool_pb2.TOOL_KIND_MCP, "lookup_order")
            found = await router.execute(
                lookup,
                {"order_id": "A1"},
                idempotency_key="k",
                deadline=asyncio.get_running_loop().time() + 5,
            )
            assert found.ok, found.result
            denied = await call(
                router, http_tool(f"{tripwire.url}mcp", tool_pb2.TOOL_KIND_MCP, "lookup_order")
            )
            assert not denied["ok"] and denied["attempts"] == 1
            assert "loopback" in str(denied["error"])
        assert tripwire.connections == 0
    finally:
        await orders.aclose()
