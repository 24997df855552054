"""The executor's HTTP client: httpx over a lean HTTP/1.1 transport.

Model and tool calls are the executor's hot path. With httpx's default transport
(httpcore on anyio, h11 framing) a streamed model call was about a third of the
executor's CPU per step in a profile taken under the run benchmark: every request
enters several anyio cancel scopes, asks which async library is running and parses the
response event by event.
``Http1Transport`` keeps httpx's client API (timeouts, headers, content decoding, its
exception classes) and does the wire part on asyncio streams: kept-alive connections
pooled per origin, Content-Length, chunked and read-to-close bodies, TLS with an
``ssl.SSLContext``. It speaks neither HTTP/2 nor proxies; model providers and tool
endpoints are reached directly. Tool calls go through an httpx client on it; model
calls use its raw ``exchange``, which skips httpx's request and response objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, NamedTuple, TypeVar

import httpx

from dataplane.egress import EgressDenied, EgressPolicy

T = TypeVar("T")
Origin = tuple[str, str, int]

_HEAD_LIMIT = 64 * 1024
_READ_SIZE = 64 * 1024
_NO_BODY = frozenset({204, 304})
_UNSAFE = re.compile(rb"[\r\n\0]")


def http_client(transport: Http1Transport | None = None) -> httpx.AsyncClient:
    """The client tool calls go through, on ``transport`` (a new one by default; model
    calls use the transport directly). It never retries on its own: the model gateway and
    the tool router decide what may be retried."""
    return httpx.AsyncClient(transport=transport or Http1Transport(), cookies=NoCookies())


class NoCookies(http.cookiejar.CookieJar):
    """A cookie jar that keeps nothing. The client is shared by every tenant's runs: a
    cookie one tenant's tool endpoint set must not ride along on another tenant's call
    to the same host (and parsing cookies on every response costs)."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        return None


class _Connection:
    __slots__ = ("reader", "writer", "idle_since")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self, now: float, idle_timeout: float) -> bool:
        """Whether an idle connection may carry another request: the server has not
        closed it (its FIN would have been read) and it has not idled too long."""
        return (
            not self.reader.at_eof()
            and not self.writer.is_closing()
            and now - self.idle_since < idle_timeout
        )

    def close(self) -> None:
        self.writer.close()


class Http1Transport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        *,
        max_idle_per_origin: int = 1000,
        idle_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        egress: EgressPolicy | None = None,
    ) -> None:
        """``egress``: where connections may go (checked on the resolved address, which
        is then the one connected to); None allows everything, for callers outside an
        executor."""
        self._egress = egress
        self._max_idle = max_idle_per_origin
        self._idle_timeout = idle_timeout
        # Made up front: it reads the CA bundle, which is no work for a call in progress.
        self._ssl_context = ssl_context or httpx.create_ssl_context()
        self._idle: dict[Origin, list[_Connection]] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        reply = await self._exchange(
            request.method,
            request.url,
            request.headers.raw,
            await request.aread(),
            _Timeouts(timeouts.get("connect"), timeouts.get("write"), timeouts.get("read")),
            request,
        )
        return httpx.Response(
            reply.status,
            headers=reply.headers,
            stream=reply.body,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reply.reason},
        )

    async def exchange(
        self,
        method: str,
        url: httpx.URL,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        timeout: float | None,
    ) -> RawResponse:
        """One request without httpx's request and response objects: what a model call
        needs, for a fraction of their cost. ``headers`` get Host and Content-Length
        added; ``timeout`` bounds connecting, sending and each read. Failures are
        httpx's exceptions, as for a request through the client."""
        head = [(b"host", url.netloc), *headers, (b"content-length", b"%d" % len(body))]
        return await self._exchange(
            method, url, head, body, _Timeouts(timeout, timeout, timeout), None
        )

    async def _exchange(
        self,
        method: str,
        url: httpx.URL,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        timeouts: _Timeouts,
        request: httpx.Request | None,
    ) -> RawResponse:
        if self._closed:
            raise httpx.UnsupportedProtocol("the transport is closed", request=request)
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(
                f"unsupported URL scheme {url.scheme!r}", request=request
            )
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        connection = self._checkout(origin)
        if connection is None:
            connection = await self._connect(origin, timeouts.connect, request)
        try:
            asked_close = _send(connection, method, url.raw_path, headers, body, request)
            if connection.writer.transport.get_write_buffer_size():
                # The socket did not take it all at once: wait, within the write timeout,
                # until it has (a timeout scope for every request costs a timer for
                # nothing when it does).
                await _guard(
                    connection.writer.drain(),
                    timeouts.write,
                    request,
                    httpx.WriteTimeout,
                    httpx.WriteError,
                )
            status, reason, response_headers, http11 = await _guard(
                _read_head(connection.reader),
                timeouts.read,
                request,
                httpx.ReadTimeout,
                httpx.ReadError,
            )
            response_body = _Body(self, origin, connection, request, timeouts.read)
            response_body.frame(method, status, response_headers, http11 and not asked_close)
        except BaseException:
            connection.close()
            raise
        return RawResponse(status, reason, response_headers, response_body)

    async def aclose(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    def _checkout(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if connection.usable(now, self._idle_timeout):
                return connection
            connection.close()
        return None

    def release(self, origin: Origin, connection: _Connection) -> None:
        """Take back a connection whose response was read to its end."""
        idle = self._idle.setdefault(origin, [])
        if self._closed or len(idle) >= self._max_idle:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)

    async def _connect(
        self, origin: Origin, timeout: float | None, request: httpx.Request | None
    ) -> _Connection:
        scheme, host, port = origin
        tls: ssl.SSLContext | None = None
        if scheme == "https":
            tls = self._ssl_context
        try:
            async with asyncio.timeout(timeout):
                addresses = (
                    [host] if self._egress is None else await self._egress.resolve(host, port)
                )
                reader, writer = await _open(addresses, port, tls, host)
        except EgressDenied as e:
            if request is not None:
                e.request = request
            raise
        except TimeoutError as e:
            raise httpx.ConnectTimeout(
                f"connecting to {host}:{port} timed out", request=request
            ) from e
        except (OSError, ssl.SSLError) as e:
            raise httpx.ConnectError(f"connecting to {host}:{port}: {e}", request=request) from e
        return _Connection(reader, writer)


async def _open(
    addresses: list[str], port: int, tls: ssl.SSLContext | None, host: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the first of ``addresses`` that answers (TLS verified for ``host``)."""
    last: OSError | None = None
    for address in addresses:
        try:
            return await asyncio.open_connection(
                address.strip("[]"),
                port,
                ssl=tls,
                server_hostname=host.strip("[]") if tls else None,
                limit=_HEAD_LIMIT,
            )
        except OSError as e:
            last = e
    assert last is not None
    raise last


async def _guard(
    work: Awaitable[T],
    timeout: float | None,
    request: httpx.Request | None,
    on_timeout: type[httpx.TimeoutException],
    on_error: type[httpx.NetworkError],
) -> T:
    """Await one step of an exchange under its timeout; failures as httpx's exceptions."""
    try:
        async with asyncio.timeout(timeout):
            return await work
    except TimeoutError as e:
        raise on_timeout(f"timed out after {timeout} s", request=request) from e
    except asyncio.IncompleteReadError as e:
        raise httpx.RemoteProtocolError(
            "the server closed the connection mid-response", request=request
        ) from e
    except (asyncio.LimitOverrunError, ValueError) as e:
        raise httpx.RemoteProtocolError(f"malformed response: {e}", request=request) from e
    except OSError as e:
        raise on_error(f"{e!r}", request=request) from e


def _send(
    connection: _Connection,
    method: str,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    body: bytes,
    request: httpx.Request | None,
) -> bool:
    """Hand the request to the connection's transport; whether it asked the server to
    close the connection after."""
    head = [b"%s %s HTTP/1.1\r\n" % (method.encode("ascii"), target)]
    chunked = asked_close = False
    for name, value in headers:
        if _UNSAFE.search(name) or _UNSAFE.search(value):
            # A line break in a header would start a header (or a request) of its own.
            raise httpx.LocalProtocolError(
                f"header {name[:40]!r} has a line break or NUL in it", request=request
            )
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
            continue
        if lowered == b"connection":
            asked_close = b"close" in value.lower()
        head.append(b"%s: %s\r\n" % (name, value))
    if chunked:
        # The body was a stream of unknown length; it has been read whole, so it is sent
        # with its length instead.
        head.append(b"content-length: %d\r\n" % len(body))
    head.append(b"\r\n")
    connection.writer.write(b"".join(head) + body)
    return asked_close


async def _read_head(
    reader: asyncio.StreamReader,
) -> tuple[int, bytes, list[tuple[bytes, bytes]], bool]:
    while True:
        raw = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = raw[:-4].split(b"\r\n")
        version, _, rest = status_line.partition(b" ")
        code, _, reason = rest.partition(b" ")
        if not version.startswith(b"HTTP/1.") or len(code) != 3:
            raise ValueError(f"bad status line {status_line[:100]!r}")
        status = int(code)
        if 100 <= status < 200 and status != 101:
            continue  # an informational response precedes the real one
        headers = []
        for line in lines:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise ValueError(f"bad header line {line[:100]!r}")
            headers.append((name, value.strip()))
        return status, reason, headers, version == b"HTTP/1.1"


class _Timeouts(NamedTuple):
    connect: float | None
    write: float | None
    read: float | None


class _Body(httpx.AsyncByteStream):
    """A response body, read off its connection; the connection goes back to the pool when
    the body was read to its end and both sides allow reuse, and is closed otherwise."""

    def __init__(
        self,
        transport: Http1Transport,
        origin: Origin,
        connection: _Connection,
        request: httpx.Request | None,
        read_timeout: float | None,
    ) -> None:
        self._transport = transport
        self._origin = origin
        self._connection = connection
        self._request = request
        self._timeout = read_timeout
        self._length: int | None = None
        self._chunked = False
        self._keep_alive = False
        self._complete = False
        self._closed = False

    def frame(
        self, method: str, status: int, headers: list[tuple[bytes, bytes]], reusable: bool
    ) -> None:
        """Learn how the body ends from the response's head. ``reusable``: HTTP/1.1, and
        the request did not ask to close the connection."""
        connection_tokens = b""
        encoding = b""
        length: bytes | None = None
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"content-length":
                length = value
            elif lowered == b"transfer-encoding":
                encoding = value.lower()
            elif lowered == b"connection":
                connection_tokens = value.lower()
        self._keep_alive = reusable and b"close" not in connection_tokens
        if method == "HEAD" or status in _NO_BODY:
            self._length = 0
        elif b"chunked" in encoding:
            self._chunked = True
        elif length is not None:
            if not length.isdigit():
                raise httpx.RemoteProtocolError(
                    f"bad content-length {length[:40]!r}", request=self._request
                )
            self._length = int(length)
        else:
            self._keep_alive = False  # the body ends when the server closes

    async def __aiter__(self) -> AsyncIterator[bytes]:
        reader = self._connection.reader
        try:
            if self._chunked:
                async for chunk in self._chunks(reader):
                    yield chunk
            elif self._length is not None:
                remaining = self._length
                while remaining:
                    chunk = await self._read(reader.read(min(remaining, _READ_SIZE)))
                    if not chunk:
                        raise httpx.RemoteProtocolError(
                            f"the server closed the connection {remaining} bytes short",
                            request=self._request,
                        )
                    remaining -= len(chunk)
                    yield chunk
            else:
                while chunk := await self._read(reader.read(_READ_SIZE)):
                    yield chunk
            self._complete = True
        finally:
            await self.aclose()

    async def _chunks(self, reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
        # Whole reads are decoded at once: a streamed reply's many small chunks arrive
        # together, and each await, timer and yield through httpx's layers costs.
        decoder = ChunkedDecoder()
        while not decoder.done:
            data = await self._read(reader.read(_READ_SIZE))
            if not data:
                raise httpx.RemoteProtocolError(
                    "the server closed the connection mid-body", request=self._request
                )
            try:
                payload = decoder.feed(data)
            except ValueError as e:
                raise httpx.RemoteProtocolError(str(e), request=self._request) from e
            if payload:
                yield payload
        if decoder.leftover:
            self._keep_alive = False  # bytes past the body's end: do not trust the connection

    async def _read(self, work: Awaitable[T]) -> T:
        return await _guard(work, self._timeout, self._request, httpx.ReadTimeout, httpx.ReadError)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._complete and self._keep_alive:
            self._transport.release(self._origin, self._connection)
        else:
            with contextlib.suppress(Exception):
                self._connection.close()


class RawResponse(NamedTuple):
    """A response's head, and its body to read to the end (or ``aclose``): only then does
    its connection go back to the pool."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: _Body

    def header(self, name: bytes) -> bytes | None:
        """The first value of the header ``name`` (lower case)."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


class ChunkedDecoder:
    """Incremental decoding of a chunked transfer-coded body (RFC 9112, section 7.1)."""

    _SIZE, _DATA, _DATA_END, _TRAILER = range(4)

    def __init__(self) -> None:
        self._buffer = b""
        self._state = self._SIZE
        self._remaining = 0
        self.done = False

    @property
    def leftover(self) -> bool:
        return bool(self._buffer)

    def feed(self, data: bytes) -> bytes:
        """The payload bytes ``data`` completes; ValueError on malformed framing."""
        buffer = self._buffer + data if self._buffer else data
        out: list[bytes] = []
        pos = 0
        while not self.done:
            if self._state == self._DATA:
                take = min(self._remaining, len(buffer) - pos)
                if not take:
                    break
                out.append(buffer[pos : pos + take])
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = self._DATA_END
            elif self._state == self._DATA_END:
                if len(buffer) - pos < 2:
                    break
                if buffer[pos : pos + 2] != b"\r\n":
                    raise ValueError("a chunk overran its size")
                pos += 2
                self._state = self._SIZE
            else:
                end = buffer.find(b"\r\n", pos)
                if end < 0:
                    if len(buffer) - pos > _HEAD_LIMIT:
                        raise ValueError("a chunk size or trailer line is too long")
                    break
                line = buffer[pos:end]
                pos = end + 2
                if self._state == self._TRAILER:
                    self.done = not line  # trailer fields are read past, unused
                    continue
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ValueError(f"bad chunk size {line[:40]!r}") from None
                if size < 0:
                    raise ValueError(f"bad chunk size {line[:40]!r}")
                self._remaining = size
                self._state = self._DATA if size else self._TRAILER
        self._buffer = buffer[pos:]
        return b"".join(out)
