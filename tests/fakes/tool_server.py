"""A fake HTTP tool on 127.0.0.1 with a side effect and idempotency keys, as a careful
real one has: a key seen before returns the first result and changes nothing."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.http import LoopbackHttpServer


@dataclass
class RefundTool(LoopbackHttpServer):
    hold_first_call: bool = False
    """Keep the first call's response back (its effect already done) until released."""
    effects: int = 0
    calls: list[str] = field(default_factory=list)
    """The Idempotency-Key of every call, in order."""
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    first_effect_done: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/refunds"

    async def aclose(self) -> None:
        self.release.set()
        await super().aclose()

    async def respond(
        self,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        headers: dict[str, str],
        raw: bytes,
    ) -> bool:
        body = json.loads(raw)
        key = headers.get("idempotency-key", "")
        self.calls.append(key)
        if key not in self.results:
            self.effects += 1
            self.results[key] = {"refunded": body.get("amount_usd"), "effect": self.effects}
            if self.effects == 1:
                self.first_effect_done.set()
                if self.hold_first_call:
                    await self.release.wait()
        await _send_json(writer, self.results[key])
        return True


@dataclass
class CountingTool(LoopbackHttpServer):
    """A fake HTTP tool with a side effect and no idempotency: every request it receives
    acts, whatever its Idempotency-Key, as a careless real one does. It counts the
    effects per key, so a call made twice shows. ``hold``: seconds each reply waits after
    its effect (a reply that may never reach its caller)."""

    hold: float = 0.0
    effects: dict[str, int] = field(default_factory=dict)
    """Effects per Idempotency-Key."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/refunds"

    @property
    def duplicated(self) -> dict[str, int]:
        return {key: n for key, n in self.effects.items() if n > 1}

    async def respond(
        self,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        headers: dict[str, str],
        raw: bytes,
    ) -> bool:
        body = json.loads(raw)
        key = headers.get("idempotency-key", "")
        self.effects[key] = self.effects.get(key, 0) + 1
        if self.hold:
            await asyncio.sleep(self.hold)
        await _send_json(writer, {"refunded": body.get("amount_usd"), "key": key})
        return True


@dataclass
class DocumentTool(LoopbackHttpServer):
    """A fake read-only HTTP tool that answers every call with ``document``: text from
    outside, such as a web page or a customer's ticket, which may carry instructions."""

    document: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/documents"

    async def respond(
        self,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        headers: dict[str, str],
        raw: bytes,
    ) -> bool:
        await _send_json(writer, {"document": self.document})
        return True


async def _send_json(writer: asyncio.StreamWriter, payload: Any) -> None:
    data = json.dumps(payload).encode()
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(data)}\r\n\r\n".encode()
        + data
    )
    await writer.drain()
