"""JoinedWrites: a response reaches the socket in one write, and nothing is lost or reordered."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from server.http_protocol import DIRECT_BYTES, JoinedWrites, JoinedWritesHttpTools

pytestmark = pytest.mark.anyio


class Recording:
    """The transport's side of JoinedWrites: what it was handed, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def close(self) -> None:
        self.calls.append(("close", b""))
        self.closing = True

    def abort(self) -> None:
        self.calls.append(("abort", b""))
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> str:
        return f"extra {name}"


async def next_turn() -> None:
    await asyncio.sleep(0)  # callbacks scheduled before this one run first


async def test_writes_of_one_turn_reach_the_transport_as_one() -> None:
    real = Recording()
    joined = JoinedWrites(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    joined.write(b"HTTP/1.1 200 OK\r\n\r\n")
    joined.write(bytearray(b"body"))
    assert real.calls == [] and joined.get_write_buffer_size() == 23
    await next_turn()
    assert real.calls == [("write", b"HTTP/1.1 200 OK\r\n\r\nbody")]
    joined.writelines([b"a", b"b"])
    await next_turn()
    assert real.calls[1:] == [("write", b"ab")]


async def test_close_sends_what_is_buffered_first_and_abort_drops_it() -> None:
    loop = asyncio.get_running_loop()
    real = Recording()
    joined = JoinedWrites(real, loop)  # type: ignore[arg-type]
    joined.write(b"last words")
    joined.close()
    await next_turn()  # the scheduled flush finds nothing left
    assert real.calls == [("write", b"last words"), ("close", b"")]

    real = Recording()
    joined = JoinedWrites(real, loop)  # type: ignore[arg-type]
    joined.write(b"never sent")
    joined.abort()
    await next_turn()
    assert real.calls == [("abort", b"")]


async def test_a_large_write_goes_straight_through_after_the_buffer() -> None:
    real = Recording()
    joined = JoinedWrites(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    big = b"x" * DIRECT_BYTES
    joined.write(b"head")
    joined.write(big)
    assert real.calls == [("write", b"head"), ("write", big)]  # the transport's limits apply


async def test_small_writes_never_hold_the_direct_size_back() -> None:
    """A stream of small chunks that never yields to the loop still reaches the transport (whose
    high-water mark pauses the sender) every DIRECT_BYTES, not at the turn's end."""
    real = Recording()
    joined = JoinedWrites(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    chunk = b"c" * 1000
    for _ in range(3 * DIRECT_BYTES // len(chunk)):
        joined.write(chunk)
        assert joined.get_write_buffer_size() < DIRECT_BYTES
    assert len(real.calls) == 2 and all(len(data) >= DIRECT_BYTES for _, data in real.calls)
    await next_turn()
    sent = b"".join(data for _, data in real.calls)
    assert sent == chunk * (3 * DIRECT_BYTES // len(chunk))


async def test_a_closed_connection_gets_no_write_and_other_calls_pass_through() -> None:
    real = Recording()
    joined = JoinedWrites(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    joined.write(b"too late")
    real.closing = True  # the peer went away before the loop's next turn
    await next_turn()
    assert real.calls == [] and joined.is_closing()
    assert joined.get_extra_info("peername") == "extra peername"


# A real uvicorn over TCP with the protocol the server runs, counting the socket writes.
real_writes: list[int] = []


class CountedTransport:
    def __init__(self, transport: asyncio.Transport):
        self._transport = transport

    def write(self, data: bytes) -> None:
        real_writes.append(len(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


class CountedProtocol(JoinedWritesHttpTools):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CountedTransport(transport))  # type: ignore[arg-type]


async def stream(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(40):
            yield bytes([65 + i % 26]) * 10_000

    return StreamingResponse(chunks())


APP = Starlette(
    routes=[
        Route("/small", lambda request: PlainTextResponse("ok")),
        Route("/stream", stream),
    ]
)


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[int]:
    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(APP, http=CountedProtocol, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head:
        body = b""
        while size := int((await reader.readline()).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readline()
        await reader.readline()
        return head, body
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if line)
    length = int(headers[b"content-length"])
    return head, await reader.readexactly(length)


@pytest.mark.parametrize("connection", ["keep-alive", "close"])
async def test_over_tcp_each_small_response_is_one_socket_write(connection: str) -> None:
    async with serving() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3 if connection == "keep-alive" else 1):
            real_writes.clear()
            request = f"GET /small HTTP/1.1\r\nhost: t\r\nconnection: {connection}\r\n\r\n"
            writer.write(request.encode())
            head, body = await read_response(reader)
            assert head.startswith(b"HTTP/1.1 200") and body == b"ok"
            assert len(real_writes) == 1  # uvicorn alone: two, the head and the body
        if connection == "close":
            assert await reader.read() == b""  # closed after the buffered response went out
        writer.close()


async def test_over_tcp_a_long_stream_arrives_whole_and_in_order() -> None:
    async with serving() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /stream HTTP/1.1\r\nhost: t\r\n\r\n")
        _, body = await read_response(reader)
        assert body == b"".join(bytes([65 + i % 26]) * 10_000 for i in range(40))
        writer.close()
