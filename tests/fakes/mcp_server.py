"""A real MCP server (the `mcp` SDK over streamable HTTP) on 127.0.0.1, standing in for a
third party's: an orders service with a read-only lookup, a destructive cancellation that
keeps a counter and honours idempotency keys, and a tool that fails."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Self

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations

from dataplane.tools.mcp import IDEMPOTENCY_META_KEY


@dataclass
class OrdersMcp:
    cancellations: int = 0
    keys: list[str] = field(default_factory=list)
    """The idempotency key of every cancel_order call, in order."""
    _results: dict[str, str] = field(default_factory=dict)
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def build(self) -> MCPServer:
        mcp = MCPServer("orders")

        @mcp.tool(annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True))
        def lookup_order(order_id: str) -> dict[str, Any]:
            """Look up an order by its id."""
            return {"order_id": order_id, "status": "shipped", "total_usd": 42.5}

        @mcp.tool()
        def cancel_order(order_id: str, ctx: Context, reason: str = "") -> str:
            """Cancel an order. Cannot be undone."""
            meta = ctx.request_context.meta or {}
            key = str(meta.get(IDEMPOTENCY_META_KEY, ""))
            self.keys.append(key)
            if key not in self._results:
                self.cancellations += 1
                self._results[key] = f"cancelled {order_id}"
            return self._results[key]

        @mcp.tool(annotations=ToolAnnotations(destructive_hint=False))
        def restock(sku: str, quantity: int) -> str:
            """Always fails: the warehouse is closed."""
            raise ToolError(f"warehouse closed, cannot restock {sku}")

        @mcp.tool(annotations=ToolAnnotations(read_only_hint=True))
        def ping() -> str:
            return "pong"

        return mcp

    async def start(self) -> Self:
        config = uvicorn.Config(
            self.build().streamable_http_app(),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                await self._task
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
