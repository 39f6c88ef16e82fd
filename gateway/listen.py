"""Stream listeners for the inbound protocols (DICOM now, MLLP next): plain and TLS ports, one task per
connection, and a bounded drain when stopping.

Stopping closes the ports first, gives the connections in progress ``drain_timeout`` seconds to finish (a
message being received is then either acknowledged after it is durable or not at all), and cancels the rest.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

_STREAM_LIMIT = 1024 * 1024


class StreamListener:
    def __init__(self, name: str, host: str, handler: Handler, drain_timeout: float,
                 handshake_timeout: float, reuse_port: bool = False) -> None:
        self._name = name
        self._host = host
        self._handler = handler
        self._drain_timeout = drain_timeout
        self._handshake_timeout = handshake_timeout
        self._reuse_port = reuse_port
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        self.ports: list[int] = []

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def listen(self, port: int, tls: ssl.SSLContext | None) -> int:
        """Accept on ``port`` (0: any free one); returns the port bound."""
        server = await asyncio.start_server(
            self._accept, self._host, port, ssl=tls, reuse_port=self._reuse_port,
            ssl_handshake_timeout=self._handshake_timeout if tls else None, limit=_STREAM_LIMIT,
        )
        self._servers.append(server)
        self.ports.append(server.sockets[0].getsockname()[1])
        log.info("listening", extra={"listener": self._name, "port": self.ports[-1], "tls": tls is not None})
        return self.ports[-1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._handler(reader, writer)
        except Exception:
            log.exception("connection handler failed", extra={"listener": self._name})
        finally:
            self._connections.discard(task)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        if self._connections:
            log.info("draining connections", extra={"listener": self._name, "open": len(self._connections)})
            _, pending = await asyncio.wait(set(self._connections), timeout=self._drain_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
