"""The executor's HTTP/1.1 transport against raw servers on loopback: framing, connection
reuse, timeouts and errors as httpx reports them, TLS."""

from __future__ import annotations

import asyncio
import gzip
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from dataplane.http1 import Http1Transport, http_client
from tests.certs import make_certs

Reply = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]
"""Given a request (head and body), write a response; return whether to read another."""


class RawServer:
    """Reads requests framed by Content-Length and answers with ``reply``; counts the
    connections it accepted."""

    def __init__(self, reply: Reply, tls: ssl.SSLContext | None = None) -> None:
        self.reply = reply
        self.tls = tls
        self.connections = 0
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        assert self._server is not None
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/x"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                if not await self.reply(request, writer):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client left, or the test is over
        finally:
            writer.close()


def fixed(body: bytes, *headers: bytes) -> Reply:
    async def reply(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s"
            % (len(body), b"".join(h + b"\r\n" for h in headers), body)
        )
        return True

    return reply


def answer_and_close(data: bytes) -> Reply:
    """Write ``data`` as the whole answer, then close the connection."""

    async def reply(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(data)
        return False

    return reply


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with http_client() as http:
        yield http


async def test_kept_alive_connection_carries_requests_one_after_another(
    client: httpx.AsyncClient,
) -> None:
    async with RawServer(fixed(b'{"ok": true}', b"content-type: application/json")) as server:
        for _ in range(3):
            response = await client.post(server.url, json={"a": 1})
            assert response.status_code == 200 and response.json() == {"ok": True}
        assert server.connections == 1
        head, _, body = server.requests[0].partition(b"\r\n\r\n")
        assert head.startswith(b"POST /x HTTP/1.1\r\n")
        assert b"content-type: application/json" in head.lower()
        assert body == b'{"a":1}'


async def test_chunked_response_is_streamed_and_the_connection_reused(
    client: httpx.AsyncClient,
) -> None:
    async def reply(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for part in (b"data: one\n\n", b"data: two\n\n"):
            writer.write(b"%x;ext=1\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        writer.write(b"0\r\nx-trailer: t\r\n\r\n")
        return True

    async with RawServer(reply) as server:
        for _ in range(2):
            async with client.stream("POST", server.url, content=b"{}") as response:
                chunks = [c async for c in response.aiter_bytes()]
            assert b"".join(chunks) == b"data: one\n\ndata: two\n\n"
        assert server.connections == 1


async def test_a_body_that_ends_with_the_connection_is_read_to_the_end(
    client: httpx.AsyncClient,
) -> None:
    async with RawServer(answer_and_close(b"HTTP/1.0 200 OK\r\n\r\nall of it")) as server:
        assert (await client.get(server.url)).content == b"all of it"
        assert (await client.get(server.url)).content == b"all of it"
        assert server.connections == 2


async def test_a_connection_the_server_closed_while_idle_is_not_reused(
    client: httpx.AsyncClient,
) -> None:
    # HTTP/1.1 without "connection: close": the server closes without saying so.
    async with RawServer(
        answer_and_close(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    ) as server:
        for _ in range(3):
            assert (await client.get(server.url)).content == b"ok"
            await asyncio.sleep(0.05)  # the server's FIN arrives
        assert server.connections == 3


async def test_connection_close_and_unread_bodies_are_not_reused(
    client: httpx.AsyncClient,
) -> None:
    async with RawServer(fixed(b"x" * 100_000)) as server:
        async with client.stream("GET", server.url) as response:
            await response.aiter_bytes().__anext__()  # leaves most of it unread
        assert (await client.get(server.url)).content == b"x" * 100_000
        assert server.connections == 2
        await client.get(server.url, headers={"connection": "close"})
        await client.get(server.url)
        assert server.connections == 3


async def test_gzip_bodies_are_decoded_and_informational_responses_skipped(
    client: httpx.AsyncClient,
) -> None:
    packed = gzip.compress(b"hello")

    async def reply(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(
            b"HTTP/1.1 201 Created\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n%s"
            % (len(packed), packed)
        )
        return True

    async with RawServer(reply) as server:
        response = await client.post(server.url, content=b"{}")
        assert response.status_code == 201 and response.text == "hello"
        assert response.reason_phrase == "Created"


async def test_a_streamed_request_body_is_sent_with_its_length(
    client: httpx.AsyncClient,
) -> None:
    async def parts() -> AsyncIterator[bytes]:
        yield b"ab"
        yield b"cd"

    async with RawServer(fixed(b"")) as server:
        await client.post(server.url, content=parts())
        head, _, body = server.requests[0].partition(b"\r\n\r\n")
        assert body == b"abcd"
        assert b"content-length: 4" in head.lower() and b"transfer-encoding" not in head.lower()


async def test_a_body_larger_than_the_socket_takes_at_once_is_sent_whole(
    client: httpx.AsyncClient,
) -> None:
    big = bytes(range(256)) * 40_000  # 10 MB
    async with RawServer(fixed(b"ok")) as server:
        response = await client.post(server.url, content=big)
        assert response.text == "ok"
        assert server.requests[0].partition(b"\r\n\r\n")[2] == big


async def test_a_server_that_reads_nothing_is_a_write_timeout(
    client: httpx.AsyncClient,
) -> None:
    accepted, done = asyncio.Event(), asyncio.Event()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await done.wait()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(httpx.WriteTimeout):
            await client.post(f"http://127.0.0.1:{port}/x", content=b"x" * 50_000_000, timeout=0.5)
        assert accepted.is_set()
    finally:
        done.set()
        server.close()
        await server.wait_closed()


async def test_no_answer_in_time_is_a_read_timeout(client: httpx.AsyncClient) -> None:
    async def reply(request: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(5)
        return False

    async with RawServer(reply) as server:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(server.url, timeout=0.1)


async def test_a_body_cut_short_is_a_protocol_error(client: httpx.AsyncClient) -> None:
    async with RawServer(
        answer_and_close(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
    ) as server:
        with pytest.raises(httpx.RemoteProtocolError, match="7 bytes short"):
            await client.get(server.url)


async def test_garbage_instead_of_a_response_is_a_protocol_error(
    client: httpx.AsyncClient,
) -> None:
    async with RawServer(answer_and_close(b"SSH-2.0-OpenSSH\r\n\r\n")) as server:
        with pytest.raises(httpx.RemoteProtocolError, match="bad status line"):
            await client.get(server.url)


async def test_nobody_listening_is_a_connect_error(client: httpx.AsyncClient) -> None:
    async with RawServer(fixed(b"")) as server:
        url = server.url
    with pytest.raises(httpx.ConnectError):
        await client.get(url)


async def test_https_verifies_the_server_with_the_given_context(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(certs.server.cert, certs.server.key)
    async with RawServer(fixed(b"secure"), tls=server_tls) as server:
        async with http_client() as untrusting:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusting.get(server.url)
        trusting = ssl.create_default_context(cafile=str(certs.ca))
        async with http_client(Http1Transport(ssl_context=trusting)) as http:
            assert (await http.get(server.url)).content == b"secure"
            assert (await http.get(server.url)).content == b"secure"
        assert server.connections == 1  # the refused handshake never became one


async def test_cookies_a_server_sets_are_not_sent_back(client: httpx.AsyncClient) -> None:
    async with RawServer(fixed(b"", b"set-cookie: session=tenant-a; Path=/")) as server:
        first = await client.get(server.url)
        assert first.headers["set-cookie"].startswith("session=")
        await client.get(server.url)
        assert b"cookie:" not in server.requests[1].lower()


async def test_a_header_with_a_line_break_is_refused_before_sending(
    client: httpx.AsyncClient,
) -> None:
    async with RawServer(fixed(b"")) as server:
        with pytest.raises(httpx.LocalProtocolError, match="line break"):
            await client.post(server.url, headers={"x-key": "a\r\nx-admin: yes"})
        assert server.requests == []
