"""A fake HTTP tool on 127.0.0.1 with a side effect and idempotency keys, as a careful
real one has: a key seen before returns the first result and changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RefundTool:
    hold_first_call: bool = False
    """Keep the first call's response back (its effect already done) until released."""
    effects: int = 0
    calls: list[str] = field(default_factory=list)
    """The Idempotency-Key of every call, in order."""
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    first_effect_done: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/refunds"

    async def start(self) -> RefundTool:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = h.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = json.loads(await reader.readexactly(int(headers.get("content-length", "0"))))
                key = headers.get("idempotency-key", "")
                self.calls.append(key)
                if key not in self.results:
                    self.effects += 1
                    self.results[key] = {"refunded": body.get("amount_usd"), "effect": self.effects}
                    if self.effects == 1:
                        self.first_effect_done.set()
                        if self.hold_first_call:
                            await self.release.wait()
                data = json.dumps(self.results[key]).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(data)}\r\n\r\n".encode()
                    + data
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()
