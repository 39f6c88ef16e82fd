"""Audit messages to an audit record repository the IHE ATNA way (ITI-20): RFC 5424 syslog messages over TLS
(RFC 5425) or UDP (RFC 5426).

``syslog_message`` wraps a DICOM PS3.15 A.5 audit message (XML) in the RFC 5424 header ITI-20 asks for; a
``Repository`` delivers batches of those. The audit worker commits its place on the bus only when ``send``
returns, and sends the batch again when it raises, so ``send`` returns only once the messages are as safe as
the transport can make them and raises ``RepositoryUnavailable`` (retriable) otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import socket
import ssl
import sys
import termios
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from gateway.core.errors import Permanent, Unavailable

MSGID = "IHE+RFC-3881"
"""The MSGID ITI-20 gives the audit messages (the XML is DICOM's, which grew out of RFC 3881)."""

_AUTHPRIV = 10
_NOTICE, _WARNING = 5, 4
"""ITI-20: facility authpriv; severity notice, warning when the audited event failed."""
_BOM = b"\xef\xbb\xbf"
_CHUNK = 65536
_NOT_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")
_UDP_PAYLOAD = 65507
"""The largest UDP payload over IPv4: a larger message could never be sent, which must not look like an outage."""
_URL_FORM = "tls://host:port or udp://host:port (an IPv6 address in brackets)"


class RepositoryUnavailable(Unavailable):
    """The audit record repository cannot be reached, or the connection broke: send the batch again later."""


class MessageTooLarge(Permanent):
    """The message cannot fit one datagram: sending it again cannot help."""


def _header_field(value: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, at most ``limit`` characters, ``-`` (the
    nil value) when empty. A receiver splits the header at spaces, so anything else would shift the fields."""
    return _NOT_PRINTUSASCII.sub("_", value)[:limit] or "-"


def syslog_message(
    xml: bytes, *, at: datetime, hostname: str, app_name: str, procid: str, failure: bool, bom: bool = True
) -> bytes:
    """The RFC 5424 message ITI-20 asks for: authpriv.notice (authpriv.warning for a failure), MSGID
    ``IHE+RFC-3881``, no structured data, the XML as MSG.

    ``at`` (timezone-aware) is written in UTC with microseconds. ``bom`` puts the UTF-8 byte order mark before
    the XML, which RFC 5424 (6.4) asks of UTF-8 messages; some repositories keep it as part of the XML and
    then cannot parse it, hence the choice."""
    if at.utcoffset() is None:
        raise ValueError("the audit message time needs a timezone")
    pri = _AUTHPRIV * 8 + (_WARNING if failure else _NOTICE)
    timestamp = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    header = (
        f"<{pri}>1 {timestamp} {_header_field(hostname, 255)} {_header_field(app_name, 48)}"
        f" {_header_field(procid, 128)} {MSGID} - "
    )
    return header.encode("ascii") + (_BOM if bom else b"") + xml.removeprefix(_BOM)


def octet_frame(message: bytes) -> bytes:
    """RFC 5425 (4.3) octet counting: ``MSG-LEN SP SYSLOG-MSG``. The XML holds newlines, so newline framing
    would cut a message into many."""
    return b"%d " % len(message) + message


class Repository(Protocol):
    def check(self, message: bytes) -> None:
        """Raise ``MessageTooLarge`` for a message this transport can never carry, before it joins a batch."""

    async def send(self, messages: Sequence[bytes]) -> None:
        """Deliver RFC 5424 messages (unframed) in order. Raises ``RepositoryUnavailable`` when they may not have
        arrived (send them again), ``MessageTooLarge`` when one never can."""

    async def close(self) -> None: ...


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


class TlsRepository:
    """RFC 5425: octet-counted messages over one TLS connection, opened when first needed and again after it
    broke.

    TLS (like TCP) has no acknowledgement of its own, and writing into a connection whose peer just died
    succeeds locally. So ``send`` returns only once (1) every byte of the batch left this process and the
    repository's TCP acknowledged it (Linux's SIOCOUTQ reaches zero), within ``write_timeout``, and (2) the
    connection is still up ``settle_seconds`` later. A reader on the connection notices the repository closing
    or resetting it: a repository that stopped answers the batch with a reset within a round trip, and one that
    refuses the client certificate (TLS 1.3 checks it after the client's handshake is done) closes right after
    the batch arrived. Then ``send`` raises for the batch to be sent again; duplicates are limited to that batch.
    A repository that vanished without a word (host down, connection state dropped on the way) or stopped
    reading makes ``send`` raise after ``write_timeout``.

    What remains unguarded: messages acknowledged by the repository's TCP but lost before its syslog daemon
    stored them, without the connection showing it within the settle time (the daemon or its host crashing
    then; a daemon that stops after reading a batch and before storing it). Only an application-level
    acknowledgement, which RFC 5425 does not have, could close that window. ``settle_seconds`` should exceed
    the round trip to the repository.
    """

    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext,
        *,
        server_hostname: str | None = None,
        connect_timeout: float = 10.0,
        write_timeout: float = 30.0,
        settle_seconds: float = 0.2,
    ) -> None:
        self._host, self._port, self._context = host, port, context
        self._server_hostname = server_hostname or host
        self._connect_timeout, self._write_timeout, self._settle = connect_timeout, write_timeout, settle_seconds
        self._connection: _TlsConnection | None = None
        self._lock = asyncio.Lock()
        """One batch at a time: the settle check speaks for the batch written last."""

    def check(self, message: bytes) -> None:
        """Octet counting carries any length; a repository's own limit (rsyslog's maxMessageSize) is its to say."""

    async def send(self, messages: Sequence[bytes]) -> None:
        if not messages:
            return
        async with self._lock:
            connection = await self._connect()
            try:
                async with asyncio.timeout(self._write_timeout):
                    await connection.write(b"".join(octet_frame(message) for message in messages))
                await asyncio.wait({connection.ended}, timeout=self._settle)
            except OSError as exc:
                self._drop()
                raise RepositoryUnavailable(f"audit repository {self._where}: {_reason(exc)}") from exc
            if connection.ended.done():
                self._drop()
                raise RepositoryUnavailable(f"audit repository {self._where} closed the connection during a send")

    async def close(self) -> None:
        async with self._lock:
            connection, self._connection = self._connection, None
            if connection is not None:
                await connection.close(self._connect_timeout)

    @property
    def _where(self) -> str:
        return f"{self._host}:{self._port}"

    async def _connect(self) -> _TlsConnection:
        """The open connection, or a new one when there is none or the repository ended it since the last send
        (a loss there would be one of the unguarded window)."""
        if self._connection is not None and not self._connection.ended.done():
            return self._connection
        self._drop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                self._connection = await _TlsConnection.open(
                    self._host, self._port, self._context, self._server_hostname)
        except OSError as exc:
            raise RepositoryUnavailable(f"audit repository {self._where}: {_reason(exc)}") from exc
        return self._connection

    def _drop(self) -> None:
        """Forget a broken connection at once: no close_notify to a peer that is gone."""
        if self._connection is not None:
            self._connection.abort()
            self._connection = None


class _TlsConnection:
    """TLS (``ssl.MemoryBIO``) over a plain asyncio stream. asyncio's own TLS transport holds written bytes in
    buffers nothing public reports on, so its ``drain`` says little about where a batch is; here the stream's
    ``drain`` returns once every byte is in the kernel."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tls: ssl.SSLObject,
                 incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> None:
        self._reader, self._writer, self._tls, self._incoming, self._outgoing = reader, writer, tls, incoming, outgoing
        writer.transport.set_write_buffer_limits(high=0)
        self.ended = asyncio.create_task(self._watch())
        """Done when the repository ended the connection (EOF, reset, close_notify or a TLS alert)."""

    @classmethod
    async def open(cls, host: str, port: int, context: ssl.SSLContext, server_hostname: str) -> _TlsConnection:
        reader, writer = await asyncio.open_connection(host, port)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
        try:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    writer.write(outgoing.read())
                    if not (data := await reader.read(_CHUNK)):
                        raise ConnectionResetError("closed by the repository during the TLS handshake") from None
                    incoming.write(data)
            writer.write(outgoing.read())
        except BaseException:
            writer.transport.abort()
            raise
        return cls(reader, writer, tls, incoming, outgoing)

    async def write(self, data: bytes) -> None:
        """Return once the repository's TCP acknowledged every byte, in its kernel rather than in ours."""
        self._tls.write(data)
        self._writer.write(self._outgoing.read())
        await self._writer.drain()
        # a connection the repository ended never gets its acknowledgements: the settle check reports it
        while not (self.ended.done() or self._writer.transport.is_closing()) and _unacknowledged(self._writer):
            await asyncio.sleep(0.005)

    async def close(self, timeout: float) -> None:
        """End with a close_notify, so the repository sees an orderly end rather than a truncated stream."""
        self.ended.cancel()
        # unwrap() would go on to wait for the repository's close_notify (SSLWantReadError), or TLS already failed
        with contextlib.suppress(ssl.SSLError):
            self._tls.unwrap()
        self._writer.write(self._outgoing.read())
        self._writer.close()
        with contextlib.suppress(OSError):
            async with asyncio.timeout(timeout):
                await self._writer.wait_closed()
        self._writer.transport.abort()

    def abort(self) -> None:
        self.ended.cancel()
        self._writer.transport.abort()

    async def _watch(self) -> None:
        """Return when the repository ends the connection. A syslog receiver sends no data; what TLS itself
        sends (TLS 1.3 session tickets) is read and dropped."""
        with contextlib.suppress(OSError):  # a reset, a TLS alert (ssl.SSLError)
            while data := await self._reader.read(_CHUNK):
                self._incoming.write(data)
                with contextlib.suppress(ssl.SSLWantReadError):
                    while self._tls.read(_CHUNK):
                        pass
                    return  # close_notify


def _unacknowledged(writer: asyncio.StreamWriter) -> int:
    """Bytes of the connection not yet acknowledged by the peer's TCP (SIOCOUTQ, which Linux spells TIOCOUTQ)."""
    count = fcntl.ioctl(writer.get_extra_info("socket").fileno(), termios.TIOCOUTQ, b"\0" * 4)
    return int.from_bytes(count, sys.byteorder, signed=True)


class UdpRepository:
    """RFC 5426: one message per datagram. Fire and forget: a datagram lost on the way, or sent while the
    repository is down, is gone; an error the network reports back (ICMP port unreachable) surfaces on the next
    send, as ``RepositoryUnavailable``.

    ``max_bytes`` bounds a datagram; 65000 leaves room under IPv4's 65507-byte payload. Whether the path
    delivers (fragmented) datagrams that large is for the deployment to ensure; TLS has no such limit."""

    def __init__(self, host: str, port: int, *, max_bytes: int = 65000) -> None:
        if not 0 < max_bytes <= _UDP_PAYLOAD:
            raise ValueError(f"max_bytes must be between 1 and {_UDP_PAYLOAD}")
        self._host, self._port, self._max_bytes = host, port, max_bytes
        self._socket: socket.socket | None = None

    def check(self, message: bytes) -> None:
        if len(message) > self._max_bytes:
            raise MessageTooLarge(f"audit message of {len(message)} bytes exceeds the {self._max_bytes}-byte"
                                  " datagram limit")

    async def send(self, messages: Sequence[bytes]) -> None:
        for message in messages:
            self.check(message)
        loop = asyncio.get_running_loop()
        try:
            sock = self._socket or await self._connect()
            for message in messages:
                await loop.sock_sendall(sock, message)
        except OSError as exc:
            await self.close()
            raise RepositoryUnavailable(f"audit repository {self._host}:{self._port}: {_reason(exc)}") from exc

    async def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    async def _connect(self) -> socket.socket:
        """A connected socket, so that the network's errors for earlier datagrams are reported to us."""
        loop = asyncio.get_running_loop()
        family, kind, proto, _, address = (
            await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_DGRAM)
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError:
            sock.close()
            raise
        self._socket = sock
        return sock


def repository(url: str, context: ssl.SSLContext | None) -> Repository:
    """The repository a URL names: ``tls://host:port`` (``context`` required) or ``udp://host:port``."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("tls", "udp") or not parts.hostname or port is None or parts.path or parts.query:
        raise ValueError(f"the audit repository URL must be {_URL_FORM}")
    if parts.scheme == "udp":
        return UdpRepository(parts.hostname, port)
    if context is None:
        raise ValueError("a tls:// audit repository needs a TLS context")
    return TlsRepository(parts.hostname, port, context)


def tls_context(ca_file: Path | None, cert_file: Path | None, key_file: Path | None) -> ssl.SSLContext:
    """TLS 1.2 or later, verifying the repository's certificate and name against ``ca_file`` (the system's CAs
    when None); ``cert_file`` and ``key_file`` are the gateway's certificate for repositories that require one
    (mutual TLS, as ATNA's secure node does)."""
    if key_file is not None and cert_file is None:
        raise ValueError("an audit TLS key file needs its certificate file")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    return context
