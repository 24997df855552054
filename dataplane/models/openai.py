"""The OpenAI-compatible provider: ``POST {base}/chat/completions`` with tools, streaming
(server-sent events) or not, and usage. Works against OpenAI, vLLM, Ollama, llama.cpp and
LiteLLM. It never retries: the gateway owns retrying."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from dataplane import fastjson
from dataplane.egress import EgressDenied
from dataplane.http1 import Http1Transport, RawResponse
from dataplane.models.types import (
    ChatMessage,
    ChatRequest,
    ChatResult,
    ProviderError,
    ToolCall,
    Usage,
    is_retryable,
)


def _message(m: ChatMessage) -> dict[str, Any]:
    if m.role == "tool":
        return {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content}
    out: dict[str, Any] = {"role": m.role, "content": m.content or None}
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    elif out["content"] is None:
        out["content"] = ""
    return out


def _body(model: str, request: ChatRequest, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [_message(m) for m in request.messages],
        "stream": stream,
    }
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                },
            }
            for t in request.tools
        ]
    if request.max_output_tokens is not None:
        body["max_tokens"] = request.max_output_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop"] = list(request.stop)
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def _usage(data: dict[str, Any] | None) -> Usage:
    if not data:
        return Usage(estimated=True)  # the gateway estimates it
    cached = (data.get("prompt_tokens_details") or {}).get("cached_tokens", 0) or 0
    return Usage(
        int(data.get("prompt_tokens", 0)), int(data.get("completion_tokens", 0)), int(cached)
    )


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header, in seconds (it may be a number or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


@dataclass(frozen=True)
class OpenAIProvider:
    transport: Http1Transport
    """The call goes over the transport's raw exchange, not through an httpx client: a
    model call is most of a step's work, and httpx's request, response and header objects
    and its redirect, auth and cookie layers were about a fifth of a call's CPU."""
    base_url: str
    api_key: str
    model: str
    """The model's id at the provider."""
    stream: bool = True

    async def complete(self, request: ChatRequest, *, timeout: float) -> ChatResult:
        headers = [*_JSON_HEADERS]
        if self.api_key:
            headers.append((b"authorization", b"Bearer " + self.api_key.encode()))
        body = fastjson.dumps(_body(self.model, request, self.stream))
        try:
            reply = await self.transport.exchange(
                "POST", _completions_url(self.base_url), headers, body, timeout
            )
            try:
                if reply.status >= 400:
                    raise _http_error(await _buffered(reply))
                encoding = reply.header(b"content-encoding")
                if encoding is not None and encoding.lower() != b"identity":
                    # Compressed although we asked for none: httpx's decoders read it.
                    decoded = _streamed(reply)
                    chunks = decoded.aiter_bytes()
                else:
                    chunks = aiter(reply.body)
                if not self.stream:
                    return _parse_body(b"".join([chunk async for chunk in chunks]))
                return await _read_stream(chunks)
            finally:
                await reply.body.aclose()
        except httpx.TimeoutException as e:
            raise ProviderError(f"timed out: {e!r}", status=0, retryable=True) from e
        except EgressDenied as e:
            raise ProviderError(str(e), status=0, retryable=False) from e
        except httpx.TransportError as e:
            raise ProviderError(f"unreachable: {e!r}", status=0, retryable=True) from e


_JSON_HEADERS = ((b"content-type", b"application/json"), (b"accept-encoding", b"identity"))


@functools.lru_cache(maxsize=256)
def _completions_url(base_url: str) -> httpx.URL:
    return httpx.URL(base_url.rstrip("/") + "/chat/completions")


def _streamed(reply: RawResponse) -> httpx.Response:
    return httpx.Response(
        reply.status,
        headers=reply.headers,
        stream=reply.body,
        extensions={"reason_phrase": reply.reason},
    )


async def _buffered(reply: RawResponse) -> httpx.Response:
    """An error reply, read whole into an httpx response for its text and headers."""
    response = _streamed(reply)
    await response.aread()
    return response


def _parse_body(raw: bytes) -> ChatResult:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ProviderError(f"malformed response: {e!r}"[:300], status=200) from e
    if not isinstance(data, dict):
        raise ProviderError("malformed response: not a JSON object", status=200)
    if data.get("error"):
        raise _stream_error(data["error"])
    return _parse(data)


def _http_error(response: httpx.Response) -> ProviderError:
    try:
        detail = response.json().get("error", {}).get("message", "") or response.text[:500]
    except (ValueError, AttributeError):
        detail = response.text[:500]
    return ProviderError(
        detail or response.reason_phrase,
        status=response.status_code,
        retryable=is_retryable(response.status_code),
        retry_after=retry_after_seconds(response.headers.get("retry-after")),
    )


def _parse(data: dict[str, Any]) -> ChatResult:
    try:
        choice = data["choices"][0]
        message = choice["message"]
    except (KeyError, IndexError, TypeError) as e:
        raise ProviderError(f"malformed response: {e!r}", status=200) from e
    calls = tuple(
        ToolCall(c["id"], c["function"]["name"], c["function"].get("arguments") or "{}")
        for c in message.get("tool_calls") or []
    )
    return ChatResult(
        ChatMessage("assistant", message.get("content") or "", calls),
        _usage(data.get("usage")),
        choice.get("finish_reason") or "",
        data.get("id", ""),
        data.get("model", ""),
    )


def _stream_error(error: Any) -> ProviderError:
    """A provider's error reported inside a stream (``{"error": …}`` or an ``event:
    error``): a failed call, never an answer. Worth retrying unless the provider says the
    request itself is at fault."""
    details = error if isinstance(error, dict) else {"message": str(error)}
    message = str(details.get("message") or details)[:500]
    kind = str(details.get("type") or details.get("code") or "")
    return ProviderError(
        f"the provider reported an error: {message}",
        status=200,
        retryable=kind
        not in ("invalid_request_error", "invalid_api_key", "context_length_exceeded"),
    )


async def _read_stream(chunks: AsyncIterator[bytes]) -> ChatResult:
    """The reply a stream carried. It must end as a stream does (a ``finish_reason`` or
    ``[DONE]``): one cut short, or carrying an error, is a ``ProviderError``, never an
    answer made of what arrived."""
    content: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    usage = Usage(estimated=True)  # until a chunk carries it
    finish_reason = ""
    response_id = model = ""
    done = False
    async for event, line in _sse_data(chunks):
        if event == b"error":
            try:
                raise _stream_error(fastjson.loads(line))
            except ValueError:
                raise _stream_error(line.decode(errors="replace")) from None
        if line == b"[DONE]":
            # Read on to the body's end: a response left unread closes its connection,
            # and the next call would pay for a new one.
            done = True
            continue
        try:
            chunk = fastjson.loads(line)
        except ValueError as e:
            raise ProviderError(f"malformed stream chunk: {line[:200]!r}", status=200) from e
        if not isinstance(chunk, dict):
            raise ProviderError(f"malformed stream chunk: {line[:200]!r}", status=200)
        if chunk.get("error"):
            raise _stream_error(chunk["error"])
        response_id = chunk.get("id", response_id)
        model = chunk.get("model", model)
        if chunk.get("usage"):
            usage = _usage(chunk["usage"])
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content"):
                content.append(delta["content"])
            for call in delta.get("tool_calls") or []:
                slot = calls.setdefault(
                    call.get("index", 0), {"id": "", "name": "", "arguments": ""}
                )
                slot["id"] = call.get("id") or slot["id"]
                function = call.get("function") or {}
                slot["name"] += function.get("name") or ""
                slot["arguments"] += function.get("arguments") or ""
            finish_reason = choice.get("finish_reason") or finish_reason
    if not done and not finish_reason:
        raise ProviderError(
            "the stream ended before the reply was complete (no finish_reason, no [DONE])",
            status=200,
            retryable=True,
        )
    tool_calls = tuple(
        ToolCall(c["id"], c["name"], c["arguments"] or "{}") for _, c in sorted(calls.items())
    )
    return ChatResult(
        ChatMessage("assistant", "".join(content), tool_calls),
        usage,
        finish_reason,
        response_id,
        model,
    )


async def _sse_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[bytes, bytes]]:
    """(event name, payload) of the stream's ``data:`` lines, the name from the ``event:``
    line before them ("" when none), split from the raw bytes (cheaper than decoding the
    body to text and then to lines)."""
    pending = b""
    event = b""
    async for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.startswith(b"data:"):
                yield event, line[5:].strip()
            elif line.startswith(b"event:"):
                event = line[6:].strip()
            elif not line.strip():
                event = b""  # a blank line ends the event
    if pending.startswith(b"data:"):
        yield event, pending[5:].strip()
