"""The tool router: every tool call a model asks for goes through here.

A tool outside the agent's list is refused whatever the model says; arguments are checked
against the tool's input schema before anything runs; a refused or invalid call never
reaches the tool and goes back to the model as an error result. Calls run under the
tool's timeout (bounded by the run's deadline) and are retried only when the tool says it
is idempotent. HTTP tools receive ``Idempotency-Key: {run}:{step}:{call}``; MCP tools
receive the same key in the request's ``_meta``.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

import httpx
from jsonschema.exceptions import best_match

from dataplane.config.snapshot import ExecutorConfig
from dataplane.egress import EgressDenied
from dataplane.runstore.memory import Memory
from dataplane.tools.builtin import BUILTINS, CallContext, ToolFailure
from dataplane.tools.mcp import McpSessions, McpUnavailable
from pilothouse import jsonschemas
from pilothouse.v1 import tool_pb2

DEFAULT_TIMEOUT = 30.0
MAX_RESPONSE_BYTES = 1 << 20
"""Bytes of an HTTP tool's response body."""
MAX_RESULT_DEPTH = jsonschemas.MAX_DOCUMENT_DEPTH
"""Nesting of a tool's result (it is checkpointed, encoded and sent to the model)."""


@dataclass(frozen=True)
class ToolOutcome:
    result: Any
    """What the model is told (JSON-able)."""
    ok: bool
    executed: bool
    """False when the call was refused or invalid and nothing ran."""
    attempts: int = 0
    missing_scope: str = ""
    """Set when the call was refused for the scope its tool requires."""
    unknown: str = ""
    """Why the call's outcome is unknown (it was sent and no answer came: it timed out,
    or its connection broke), for a tool that is not safe to repeat; "" otherwise."""


def safe_to_repeat(tool: tool_pb2.Tool) -> bool:
    """Read-only and idempotent tools may simply be called again when a call's outcome
    is unknown (after a crash, after a timeout), under the same idempotency key."""
    hints = tool.annotations
    return (hints.HasField("read_only_hint") and hints.read_only_hint) or (
        hints.HasField("idempotent_hint") and hints.idempotent_hint
    )


def check_call(
    config: ExecutorConfig,
    allowed: dict[str, tool_pb2.Tool],
    name: str,
    arguments: str,
    scopes: frozenset[str] = frozenset(),
) -> tuple[tool_pb2.Tool, dict[str, Any]] | ToolOutcome:
    """The tool (one of ``allowed``, from ``config``) and parsed arguments, or the
    refusal to hand back to the model. ``scopes``: those of the key that started the
    run; a tool that requires another is refused."""
    tool = allowed.get(name)
    if tool is None:
        return ToolOutcome({"error": f"tool {name!r} is not available to this agent"}, False, False)
    if tool.required_scope and tool.required_scope not in scopes:
        return ToolOutcome(
            {
                "error": f"tool {name!r} requires the scope {tool.required_scope!r}, which "
                "the key that started this run does not hold"
            },
            False,
            False,
            missing_scope=tool.required_scope,
        )
    try:
        parsed = jsonschemas.parse_document(arguments or "{}")
    except ValueError as e:
        return ToolOutcome({"error": f"arguments are not valid JSON: {e}"}, False, False)
    if not isinstance(parsed, dict):
        return ToolOutcome({"error": "arguments must be a JSON object"}, False, False)
    problem = best_match(config.input_validator(tool).iter_errors(parsed))
    if problem is not None:
        where = "/".join(str(p) for p in problem.absolute_path)
        return ToolOutcome(
            {"error": f"invalid arguments{' at ' + where if where else ''}: {problem.message}"},
            False,
            False,
        )
    return tool, parsed


class ToolRouter:
    def __init__(
        self,
        http: httpx.AsyncClient,
        memory: Memory | None = None,
        mcp: McpSessions | None = None,
    ) -> None:
        self._http = http
        self._memory = memory
        self._mcp = mcp

    async def execute(
        self,
        tool: tool_pb2.Tool,
        arguments: dict[str, Any],
        *,
        idempotency_key: str,
        deadline: float,
        tenant: str = "",
        agent: str = "",
    ) -> ToolOutcome:
        """Run a checked call; ``tenant`` and ``agent`` scope the builtins that keep state."""
        timeout = (
            tool.timeout.ToTimedelta().total_seconds()
            if tool.HasField("timeout")
            else DEFAULT_TIMEOUT
        )
        retryable = (
            tool.annotations.HasField("idempotent_hint") and tool.annotations.idempotent_hint
        )
        policy = tool.retry_policy
        attempts_allowed = (policy.max_attempts or 3) if retryable else 1
        backoff = (
            policy.initial_backoff.ToTimedelta().total_seconds()
            if policy.HasField("initial_backoff")
            else 0.2
        )
        cap = (
            policy.max_backoff.ToTimedelta().total_seconds()
            if policy.HasField("max_backoff")
            else 5.0
        )
        multiplier = policy.backoff_multiplier or 2.0
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return ToolOutcome(
                    {"error": "the run's deadline passed"}, False, attempt > 1, attempt - 1
                )
            try:
                # A timeout scope, not wait_for: the call runs in this task, so one that
                # never waits (a builtin) completes without a turn of the event loop.
                async with asyncio.timeout(min(timeout, remaining)):
                    result = await self._run(
                        tool, arguments, idempotency_key, CallContext(tenant, agent, self._memory)
                    )
                if jsonschemas.depth(result, MAX_RESULT_DEPTH) > MAX_RESULT_DEPTH:
                    raise ToolFailure(f"the tool's result nests deeper than {MAX_RESULT_DEPTH}")
                return ToolOutcome(result, True, True, attempt)
            except ToolFailure as e:
                return ToolOutcome({"error": str(e)}, False, True, attempt)
            except (TimeoutError, _Transient, McpUnavailable) as e:
                if attempt >= attempts_allowed:
                    reason = "timed out" if isinstance(e, TimeoutError) else str(e)
                    in_flight = isinstance(e, TimeoutError) or (
                        isinstance(e, _Transient | McpUnavailable) and e.sent
                    )
                    return ToolOutcome(
                        {"error": f"tool failed: {reason}"},
                        False,
                        True,
                        attempt,
                        unknown=reason if in_flight and not safe_to_repeat(tool) else "",
                    )
                await asyncio.sleep(
                    random.uniform(0, min(cap, backoff * multiplier ** (attempt - 1)))
                )

    async def _run(
        self, tool: tool_pb2.Tool, arguments: dict[str, Any], key: str, context: CallContext
    ) -> Any:
        if tool.kind == tool_pb2.TOOL_KIND_BUILTIN:
            implementation = BUILTINS.get(tool.endpoint)
            if implementation is None:
                raise ToolFailure(f"no builtin tool {tool.endpoint!r} on this executor")
            return await implementation(arguments, context)
        if tool.kind == tool_pb2.TOOL_KIND_HTTP:
            return await self._http_call(tool, arguments, key)
        if tool.kind == tool_pb2.TOOL_KIND_MCP and self._mcp is not None:
            remote = tool.remote_name or tool.name.rsplit("/", 1)[-1]
            return await self._mcp.call(tool.endpoint, remote, arguments, idempotency_key=key)
        raise ToolFailure(
            f"tools of kind {tool_pb2.ToolKind.Name(tool.kind)} are not enabled on this executor"
        )

    async def _http_call(self, tool: tool_pb2.Tool, arguments: dict[str, Any], key: str) -> Any:
        try:
            async with self._http.stream(
                "POST",
                tool.endpoint,
                json=arguments,
                headers={"Idempotency-Key": key},
                timeout=None,
            ) as response:
                body = await _read_at_most(response, MAX_RESPONSE_BYTES)
        except EgressDenied as e:
            raise ToolFailure(str(e)) from e
        except httpx.TransportError as e:
            # Refused or timed out connecting: the request never left. Anything later
            # (a write, a read, a protocol error) may have reached the tool.
            sent = not isinstance(e, httpx.ConnectError | httpx.ConnectTimeout)
            raise _Transient(f"unreachable: {e!r}", sent=sent) from e
        text = body.decode(response.encoding or "utf-8", errors="replace")
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise _Transient(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            raise ToolFailure(f"HTTP {response.status_code}: {text[:500]}")
        try:
            return jsonschemas.parse_document(body)
        except ValueError:
            return {"text": text[:10_000]}


async def _read_at_most(response: httpx.Response, limit: int) -> bytes:
    """The response's body; ``ToolFailure`` once it passes ``limit`` bytes (the rest is
    never read, so a tool cannot make the executor hold more)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise ToolFailure(f"the tool's response is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class _Transient(Exception):
    """A failure worth retrying for an idempotent tool. ``sent``: the request may have
    reached the tool (its outcome is unknown)."""

    def __init__(self, message: str, *, sent: bool = False) -> None:
        super().__init__(message)
        self.sent = sent
