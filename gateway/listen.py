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

from gateway.logs import bound
from gateway.settings import ServerTlsSettings

log = logging.getLogger(__name__)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

_STREAM_LIMIT = 1024 * 1024


def server_tls_context(tls: ServerTlsSettings) -> ssl.SSLContext | None:
    """TLS 1.2 or later with our certificate; client certificates checked against ``ca_file`` when set."""
    if tls.cert_file is None or tls.key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.ca_file is not None:
        context.load_verify_locations(tls.ca_file)
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return context


class PortUnavailable(OSError):
    """A port that could not be bound (in use, an address not on this host), with the host and port asked for,
    so that the command names the setting instead of printing a traceback."""

    def __init__(self, host: str, port: int, error: OSError) -> None:
        super().__init__(error.errno, error.strerror or str(error))
        self.host = host
        self.port = port


class StreamListener:
    """``max_per_peer`` bounds the connections one address may hold open at once (the rest are closed before a
    byte is read, ``on_refused`` told), so that one host cannot take every descriptor or the whole drain. TLS is
    negotiated once a connection is admitted, so that a failed handshake (an untrusted or missing client
    certificate, a peer speaking plain text) is logged and told to ``on_tls_failure`` with the peer's address and
    the reason."""

    def __init__(self, name: str, host: str, handler: Handler, drain_timeout: float,
                 handshake_timeout: float, reuse_port: bool = False, max_per_peer: int | None = None,
                 on_refused: Callable[[], None] | None = None,
                 on_tls_failure: Callable[[str, str], None] | None = None) -> None:
        self._on_tls_failure = on_tls_failure
        self._name = name
        self._host = host
        self._handler = handler
        self._drain_timeout = drain_timeout
        self._handshake_timeout = handshake_timeout
        self._reuse_port = reuse_port
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._max_per_peer = max_per_peer
        self._on_refused = on_refused
        self._per_peer: dict[str, int] = {}
        self.ports: list[int] = []

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def listen(self, port: int, tls: ssl.SSLContext | None) -> int:
        """Accept on ``port`` (0: any free one); returns the port bound."""
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._accept(reader, writer, tls)

        try:
            server = await asyncio.start_server(accept, self._host, port, reuse_port=self._reuse_port,
                                                limit=_STREAM_LIMIT)
        except OSError as exc:
            raise PortUnavailable(self._host, port, exc) from exc
        self._servers.append(server)
        self.ports.append(server.sockets[0].getsockname()[1])
        log.info("listening", extra={"listener": self._name, "port": self.ports[-1], "tls": tls is not None})
        return self.ports[-1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      tls: ssl.SSLContext | None) -> None:
        peername = writer.get_extra_info("peername") or ("", 0)
        peer = str(peername[0])
        open_from_peer = self._per_peer.get(peer, 0)
        if self._max_per_peer is not None and open_from_peer >= self._max_per_peer:
            with bound(peer=f"{peer}:{peername[1]}"):
                log.warning("connection refused: too many open from this address",
                            extra={"listener": self._name, "open": open_from_peer})
            if self._on_refused is not None:
                self._on_refused()
            writer.close()
            return
        self._per_peer[peer] = open_from_peer + 1
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            if tls is not None and not await self._handshake(writer, tls, f"{peer}:{peername[1]}"):
                return
            await self._handler(reader, writer)
        except Exception:
            log.exception("connection handler failed", extra={"listener": self._name})
        finally:
            self._connections.discard(task)
            remaining = self._per_peer.pop(peer, 1) - 1
            if remaining:
                self._per_peer[peer] = remaining

    async def _handshake(self, writer: asyncio.StreamWriter, tls: ssl.SSLContext, peer: str) -> bool:
        try:
            await writer.start_tls(tls, ssl_handshake_timeout=self._handshake_timeout)
            return True
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            reason = (f"certificate verification failed: {exc.verify_message}"
                      if isinstance(exc, ssl.SSLCertVerificationError) else
                      f"TLS: {exc.reason}" if isinstance(exc, ssl.SSLError) and exc.reason else
                      "handshake timed out" if isinstance(exc, TimeoutError) else
                      f"connection lost during the handshake ({type(exc).__name__})")
            with bound(peer=peer):
                log.warning("TLS handshake failed", extra={"listener": self._name, "reason": reason})
            if self._on_tls_failure is not None:
                self._on_tls_failure(peer.rpartition(":")[0], reason)
            writer.transport.abort()
            return False

    def stop_accepting(self) -> None:
        """Close the listening sockets at once (a new connection is refused); connections in progress go on."""
        for server in self._servers:
            server.close()

    async def close(self) -> None:
        self.stop_accepting()
        if self._connections:
            log.info("draining connections", extra={"listener": self._name, "open": len(self._connections)})
            _, pending = await asyncio.wait(set(self._connections), timeout=self._drain_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
