"""The loopback ceiling: takes each length-prefixed instance into one reused buffer and acknowledges it.

No protocol, no parsing, no storage: what one request/response exchange per instance costs over TCP on this
machine. uvloop reads straight into our buffer (``BufferedProtocol``), one thread, so neither copies nor the
GIL stand between the socket and the sender.
"""

from __future__ import annotations

import asyncio
import struct
import sys
from typing import cast

import uvloop

BUFFER = 1024 * 1024


class Sink(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self._buffer = bytearray(BUFFER)
        self._header = bytearray()
        self._remaining = 0
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's, which sets TCP_NODELAY itself

    def get_buffer(self, sizehint: int) -> bytearray:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        view = memoryview(self._buffer)[:nbytes]
        while view:
            if self._remaining == 0:
                needed = 8 - len(self._header)
                self._header += view[:needed]
                view = view[needed:]
                if len(self._header) == 8:
                    self._remaining = struct.unpack(">Q", self._header)[0]
                    self._header.clear()
                continue
            taken = min(self._remaining, len(view))
            self._remaining -= taken
            view = view[taken:]
            if self._remaining == 0:
                assert self._transport is not None
                self._transport.write(b"\x00")


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Sink, "127.0.0.1", port, backlog=128)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
