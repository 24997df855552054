"""MCP tools: calls to tools of Model Context Protocol servers over streamable HTTP.

One MCP session per server URL is kept open and shared by every run of the executor, so a
call costs one HTTP round trip rather than a handshake. The SDK's client lives inside anyio
task groups, which must be left by the task that entered them: each session is therefore
held open by its own task, and calls are made on it from the runs' tasks. A session whose
connection fails is dropped and the next call opens a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, cast

import httpx
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, RequestParamsMeta, TextContent

from dataplane.egress import EgressDenied, EgressPolicy
from dataplane.tools.builtin import ToolFailure
from pilothouse import jsonschemas

log = logging.getLogger(__name__)

IDEMPOTENCY_META_KEY = "pilothouse/idempotency-key"
"""The ``_meta`` entry carrying ``run:step:call``, as HTTP tools get it in a header."""


class McpUnavailable(Exception):
    """The server could not be reached or the session broke: worth retrying when the tool
    is idempotent. ``sent``: it broke with the call sent, whose outcome is unknown."""

    def __init__(self, message: str, *, sent: bool = False) -> None:
        super().__init__(message)
        self.sent = sent


class McpSessions:
    def __init__(
        self, *, connect_timeout: float = 10.0, egress: EgressPolicy | None = None
    ) -> None:
        """``egress``: where MCP servers (and their redirects) may be; None allows any."""
        # The executor's own timeouts bound every call; the SDK's HTTP client never retries.
        limits = httpx2.Limits(max_connections=200, max_keepalive_connections=50)
        transport: httpx2.AsyncBaseTransport = httpx2.AsyncHTTPTransport(
            limits=limits, trust_env=False
        )
        if egress is not None:
            transport = _EgressGuard(egress, transport)
        self._egress = egress
        self._http = httpx2.AsyncClient(
            timeout=httpx2.Timeout(connect_timeout, read=None),
            transport=transport,
            trust_env=False,
        )
        self._sessions: dict[str, _Session] = {}
        self._opening: dict[str, asyncio.Lock] = {}
        self._connect_timeout = connect_timeout

    async def call(
        self, url: str, tool: str, arguments: dict[str, Any], *, idempotency_key: str
    ) -> Any:
        """The tool's result as JSON-able data; ``ToolFailure`` when the tool reports an
        error, ``McpUnavailable`` when the server cannot be reached."""
        if self._egress is not None:
            parts = httpx2.URL(url)
            try:
                await self._egress.resolve(parts.host, parts.port or _default_port(parts.scheme))
            except EgressDenied as e:
                raise ToolFailure(str(e)) from e
            except httpx.TransportError as e:
                raise McpUnavailable(str(e)) from e
        session = await self._session(url)
        try:
            result = await session.client.call_tool(
                tool,
                arguments,
                meta=cast(RequestParamsMeta, {IDEMPOTENCY_META_KEY: idempotency_key}),
            )
        except MCPError as e:
            raise ToolFailure(f"MCP error {e.code}: {e.error.message}") from e
        except Exception as e:  # transport and stream errors of several libraries
            await self._drop(url, session)
            raise McpUnavailable(f"MCP server {url} failed: {e!r}", sent=True) from e
        return tool_result(result)

    async def _session(self, url: str) -> _Session:
        session = self._sessions.get(url)
        if session is not None and not session.broken:
            return session
        async with self._opening.setdefault(url, asyncio.Lock()):
            session = self._sessions.get(url)
            if session is not None and not session.broken:
                return session
            if session is not None:
                await session.close()
            session = _Session(url, self._http)
            try:
                await asyncio.wait_for(session.opened(), self._connect_timeout)
            except BaseException as e:
                await session.close()
                if isinstance(e, asyncio.CancelledError):
                    raise
                raise McpUnavailable(f"MCP server {url} unreachable: {e!r}") from e
            self._sessions[url] = session
            return session

    async def _drop(self, url: str, session: _Session) -> None:
        if self._sessions.get(url) is session:
            del self._sessions[url]
        await session.close()

    async def aclose(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()
        await self._http.aclose()


class _Session:
    """An open MCP client session, held by its own task until ``close``."""

    def __init__(self, url: str, http: httpx2.AsyncClient) -> None:
        self._url = url
        self._http = http
        self._ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
        self._stop = asyncio.Event()
        self.broken = False
        self._task = asyncio.create_task(self._hold(), name=f"mcp-session {url}")

    @property
    def client(self) -> Client:
        return self._ready.result()

    async def opened(self) -> None:
        await asyncio.shield(self._ready)

    async def _hold(self) -> None:
        try:
            transport = streamable_http_client(
                self._url, http_client=self._http, terminate_on_close=True
            )
            async with Client(transport) as client:
                self._ready.set_result(client)
                await self._stop.wait()
        except BaseException as e:
            if not self._ready.done():
                self._ready.set_exception(
                    e if isinstance(e, Exception) else McpUnavailable(repr(e))
                )
            elif not self._stop.is_set():
                log.warning("MCP session to %s ended: %r", self._url, e)
            if isinstance(e, asyncio.CancelledError) and not self._stop.is_set():
                raise
        finally:
            self.broken = True

    async def close(self) -> None:
        self._stop.set()
        if not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 5.0)
            except (TimeoutError, Exception):
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task
        if not self._ready.done():
            self._ready.cancel()


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


class _EgressGuard(httpx2.AsyncBaseTransport):
    """Checks every request's destination (redirects included) against the egress
    policy and sends it to the address that was checked, the TLS name staying the host's."""

    def __init__(self, policy: EgressPolicy, inner: httpx2.AsyncBaseTransport) -> None:
        self._policy = policy
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        try:
            addresses = await self._policy.resolve(url.host, url.port or _default_port(url.scheme))
        except httpx.TransportError as e:
            raise httpx2.ConnectError(str(e), request=request) from e
        if url.scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": url.host}
        request.url = url.copy_with(host=addresses[0])
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def tool_result(result: CallToolResult) -> Any:
    """What the model is told: the structured result when the tool gives one, else its
    content (text parsed as JSON when it is JSON)."""
    texts = [c.text for c in result.content if isinstance(c, TextContent)]
    if result.is_error:
        raise ToolFailure("\n".join(texts)[:10_000] or "the MCP tool reported an error")
    if result.structured_content is not None:
        return result.structured_content
    parts: list[Any] = []
    for content in result.content:
        if isinstance(content, TextContent):
            try:
                parts.append(jsonschemas.parse_document(content.text))
            except ValueError:
                parts.append(content.text)
        else:
            parts.append({"type": content.type, "omitted": "non-text content"})
    if len(parts) == 1:
        return parts[0] if not isinstance(parts[0], str) else {"text": parts[0]}
    return {"content": parts}
