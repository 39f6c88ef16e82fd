"""The receiver role: DICOM listeners (plain and TLS) whose associations publish instances into the bus.

Stopping drains: listeners close first, associations in progress get ``runtime.drain_timeout_seconds``
to finish (an instance being received is either acknowledged after it is durable or not at all), then
the rest are cancelled and the producer flushes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from contextlib import AsyncExitStack
from types import TracebackType

from aiohttp import web

from gateway.bus import Bus, Producer
from gateway.dicom import commitment
from gateway.dicom.association import Association, ReportNotTaken, Requesters
from gateway.metrics import Metrics
from gateway.settings import DicomSettings, TopicSettings

log = logging.getLogger(__name__)


def tls_context(settings: DicomSettings) -> ssl.SSLContext | None:
    tls = settings.tls
    if not tls.enabled:
        return None
    assert tls.cert_file is not None and tls.key_file is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.ca_file is not None:
        context.load_verify_locations(tls.ca_file)
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return context


class Receiver:
    name = "receiver"

    def __init__(
        self, settings: DicomSettings, topics: TopicSettings, bus: Bus, metrics: Metrics,
        drain_timeout: float = 30.0, reply_to: str | None = None,
    ) -> None:
        self._settings = settings
        self._topics = topics
        self._bus = bus
        self._metrics = metrics
        self._drain_timeout = drain_timeout
        self._stack = AsyncExitStack()
        self._servers: list[asyncio.Server] = []
        self._associations: set[asyncio.Task[None]] = set()
        self._producer: Producer | None = None
        self.ports: list[int] = []
        self._reply_to = reply_to or ""
        self._requesters = Requesters() if reply_to else None
        self.routes = [web.post(f"{commitment.REPORTS_PATH}/{{transaction_uid}}", self._report)] if reply_to else []

    async def __aenter__(self) -> Receiver:
        self._producer = await self._stack.enter_async_context(self._bus.producer())
        try:
            await self._listen(self._settings.port, None)
            context = tls_context(self._settings)
            if context is not None:
                await self._listen(self._settings.tls.port, context)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _listen(self, port: int, context: ssl.SSLContext | None) -> None:
        server = await asyncio.start_server(
            self._accept, self._settings.host, port, ssl=context, reuse_port=self._settings.reuse_port,
            ssl_handshake_timeout=self._settings.acse_timeout_seconds if context else None,
            limit=1024 * 1024,
        )
        self._servers.append(server)
        self.ports.append(server.sockets[0].getsockname()[1])
        log.info("listening", extra={"port": self.ports[-1], "tls": context is not None,
                                     "ae_title": self._settings.ae_title})
        if not self._settings.allowed_aes:
            log.warning("no AE allow-list configured: any calling AE is accepted")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = asyncio.current_task()
        assert task is not None and self._producer is not None
        self._associations.add(task)
        self._metrics.associations_open.inc()
        try:
            association = Association(
                reader, writer, self._settings, self._producer, self._topics, self._metrics,
                lambda: len(self._associations), self._requesters, self._reply_to,
            )
            await association.run()
        except Exception:
            log.exception("association handler failed")
        finally:
            self._metrics.associations_open.dec()
            self._associations.discard(task)

    async def _report(self, request: web.Request) -> web.Response:
        """The notify role hands over a storage-commitment report for an association held here: 200 once the
        requester answered it, 404 when that association is gone (notify then opens a new one)."""
        assert self._requesters is not None
        transaction_uid = request.match_info["transaction_uid"]
        association = self._requesters.get(transaction_uid)
        if association is None:
            raise web.HTTPNotFound(text="the requester's association is no longer open here")
        body = await request.json()
        decisions = [commitment.Decision(cls, inst, reason) for cls, inst, reason in body["decisions"]]
        event_type, information = commitment.report(transaction_uid, decisions, self._settings.ae_title)
        try:
            await association.send_event_report(event_type, information, self._settings.dimse_timeout_seconds)
        except ReportNotTaken as exc:
            raise web.HTTPBadGateway(text=str(exc)) from exc
        log.info("commitment report sent on the requester's association", extra={"transaction_uid": transaction_uid})
        return web.json_response({"event_type": event_type})

    async def wait(self) -> None:
        """The receiver stops working only when its producer dies: then every C-STORE would be refused."""
        assert self._producer is not None
        await self._producer.wait()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for server in self._servers:
            server.close()
        if self._associations:
            log.info("draining associations", extra={"open": len(self._associations)})
            _, pending = await asyncio.wait(set(self._associations), timeout=self._drain_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()
        await self._stack.aclose()
