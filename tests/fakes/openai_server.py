"""A fake OpenAI-compatible server over real HTTP on 127.0.0.1, for tests and benchmarks.

It speaks the /v1/chat/completions wire format (JSON or server-sent events, usage, tool
calls) and can be told, call by call, to answer, call tools, be slow or fail.
"""

from __future__ import annotations

import asyncio
import gzip as gzip_codec
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.http import LoopbackHttpServer


@dataclass
class Behaviour:
    """What the next call gets. Unset: an answer echoing the last user message."""

    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    """[{"name": ..., "arguments": {...}}]"""
    status: int = 200
    retry_after: str | None = None
    delay: float = 0.0
    gzip: bool = False
    """Compress a whole (not streamed) reply, whatever the client accepts."""
    stream_data: list[str] | None = None
    """A streamed reply of these ``data:`` payloads, as they are."""
    stream_raw: str | None = None
    """A streamed reply of this server-sent-event text, as it is (``event:`` lines…)."""
    quote_key: bool = False
    """With an error status: quote the bearer token received, as OpenAI's 401 does."""
    usage: bool = True
    """False: the reply says nothing of usage, as some compatible servers do (and a
    stream whose client did not ask for it)."""


@dataclass
class FakeOpenAI(LoopbackHttpServer):
    default_delay: float = 0.0
    script: deque[Behaviour] = field(default_factory=deque)
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    policy: Callable[[dict[str, Any]], Behaviour] | None = None
    """Decides calls the script does not cover, from the request's body."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def then(self, *behaviours: Behaviour) -> FakeOpenAI:
        self.script.extend(behaviours)
        return self

    async def respond(
        self,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        headers: dict[str, str],
        raw: bytes,
    ) -> bool:
        if method != "POST" or not path.endswith("/chat/completions"):
            return self._send(writer, 404, {"error": {"message": f"no route {method} {path}"}})
        body = json.loads(raw)
        self.requests.append(body)
        self.headers.append(headers)
        if self.script:
            behaviour = self.script.popleft()
        else:
            behaviour = self.policy(body) if self.policy is not None else Behaviour()
        delay = behaviour.delay or self.default_delay
        if delay:
            await asyncio.sleep(delay)
        if behaviour.status != 200:
            extra = {"retry-after": behaviour.retry_after} if behaviour.retry_after else {}
            message = f"fake {behaviour.status}"
            if behaviour.quote_key:
                key = headers.get("authorization", "").removeprefix("Bearer ")
                message = f"Incorrect API key provided: {key}. You can find your API key at …"
            return self._send(writer, behaviour.status, {"error": {"message": message}}, extra)
        if behaviour.stream_data is not None or behaviour.stream_raw is not None:
            text = behaviour.stream_raw or "".join(
                f"data: {d}\n\n" for d in behaviour.stream_data or ()
            )
            payload = text.encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: "
                + str(len(payload)).encode()
                + b"\r\n\r\n"
                + payload
            )
            return True
        message = self._message(body, behaviour)
        prompt = sum(len(str(m.get("content") or "")) for m in body["messages"])
        completion = max(1, len(json.dumps(message)) // 4)
        reason = "tool_calls" if message.get("tool_calls") else "stop"
        limit = body.get("max_tokens")
        if limit is not None and completion > limit and not message.get("tool_calls"):
            # As a provider does: the answer is cut at max_tokens.
            message["content"] = str(message.get("content") or "")[: limit * 4]
            completion, reason = limit, "length"
        usage = {"prompt_tokens": max(1, prompt // 4), "completion_tokens": completion}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        response_id = f"chatcmpl-{len(self.requests)}"
        if body.get("stream"):
            await self._stream(
                writer,
                body["model"],
                response_id,
                message,
                reason,
                usage if behaviour.usage else None,
            )
            return True
        return self._send(
            writer,
            200,
            {
                "id": response_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": reason}],
                **({"usage": usage} if behaviour.usage else {}),
            },
            gzip=behaviour.gzip,
        )

    @staticmethod
    def _message(body: dict[str, Any], behaviour: Behaviour) -> dict[str, Any]:
        if behaviour.tool_calls:
            return {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{i}",
                        "type": "function",
                        "function": {"name": c["name"], "arguments": _arguments(c)},
                    }
                    for i, c in enumerate(behaviour.tool_calls)
                ],
            }
        if behaviour.content is not None:
            return {"role": "assistant", "content": behaviour.content}
        last_user = next(
            (m.get("content") for m in reversed(body["messages"]) if m["role"] == "user"), ""
        )
        return {"role": "assistant", "content": f"echo: {last_user}"}

    @staticmethod
    def _send(
        writer: asyncio.StreamWriter,
        status: int,
        payload: dict[str, Any],
        extra: dict[str, str] | None = None,
        *,
        gzip: bool = False,
    ) -> bool:
        data = json.dumps(payload).encode()
        if gzip:
            data = gzip_codec.compress(data)
            extra = {**(extra or {}), "content-encoding": "gzip"}
        head = [
            f"HTTP/1.1 {status} X",
            "content-type: application/json",
            f"content-length: {len(data)}",
        ]
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        return True

    @staticmethod
    async def _stream(
        writer: asyncio.StreamWriter,
        model: str,
        response_id: str,
        message: dict[str, Any],
        reason: str,
        usage: dict[str, int] | None,
    ) -> None:
        # As the real API does: chunked transfer encoding on a kept-alive connection.
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )

        def send(data: bytes) -> None:
            if not writer.is_closing():  # a client gone mid-stream (the end of a benchmark)
                writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        def event(delta: dict[str, Any], finish: str | None = None, **more: Any) -> None:
            chunk = {
                "id": response_id,
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **more,
            }
            send(f"data: {json.dumps(chunk)}\n\n".encode())

        event({"role": "assistant"})
        content = message.get("content") or ""
        for i in range(0, len(content), 8):
            event({"content": content[i : i + 8]})
        for index, call in enumerate(message.get("tool_calls") or []):
            arguments = call["function"]["arguments"]
            event(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""},
                        }
                    ]
                }
            )
            for i in range(0, len(arguments), 10):
                event(
                    {
                        "tool_calls": [
                            {"index": index, "function": {"arguments": arguments[i : i + 10]}}
                        ]
                    }
                )
        event({}, reason)
        if usage is not None:
            chunk = {"id": response_id, "choices": [], "usage": usage}
            send(f"data: {json.dumps(chunk)}\n\n".encode())
        send(b"data: [DONE]\n\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()


def _arguments(call: dict[str, Any]) -> str:
    """A call's arguments as JSON text; text given as it is (which may be anything)."""
    arguments = call["arguments"]
    return arguments if isinstance(arguments, str) else json.dumps(arguments)
