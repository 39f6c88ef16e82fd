"""The receiver role: DICOM listeners (plain and TLS) whose associations hand requests to the ingest services
(C-ECHO, C-STORE into the bus, Storage Commitment requests and the reports of archives we forward to into the
events topic), and to the query/retrieve services (``gateway.retrieve``) when they are on: one AE title and one
port for everything a modality or PACS does with the gateway.

This is where the DICOM layer meets the settings and the bus: it turns ``DicomSettings`` into the values the
association takes (acceptor policy, timeouts, services). Stopping drains (``listen.StreamListener``), then the
producer flushes. The role has crashed when its producer dies: every C-STORE would be refused from then on.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Collection, Sequence
from contextlib import AsyncExitStack
from types import TracebackType

from aiohttp import web

from gateway.bus import Bus, Producer
from gateway.core import audit
from gateway.core.audit import AuditTrail, NoAudit
from gateway.dicom import acse, commitment
from gateway.dicom.association import Association, Timeouts
from gateway.dicom.identity import Authenticator
from gateway.dicom.service import Caller, CatchAll, DimseService, ServiceRegistry, VerificationService
from gateway.ingest.cstore import StorageService, all_transfer_syntaxes, could_be_storage
from gateway.ingest.iocm import RejectionCheck
from gateway.ingest.reports import CommitmentReportService
from gateway.ingest.stgcmt import StorageCommitmentService
from gateway.listen import StreamListener, server_tls_context
from gateway.metrics import Metrics
from gateway.retrieve import Holdings
from gateway.settings import DicomSettings, TopicSettings

log = logging.getLogger(__name__)


def acceptor_policy(settings: DicomSettings, destinations: Collection[str] = ()) -> acse.AcceptorPolicy:
    """The allow-list as the association sees it: an AE title from one of its networks (any, if none). The
    archives we forward to are on it too, since they report storage commitment on associations of their own."""

    def identify(calling_ae: str, peer_ip: str) -> Caller | None:
        address = ipaddress.ip_address(peer_ip) if peer_ip else None
        for entry in settings.allowed_aes:
            if entry.ae_title != calling_ae:
                continue
            if not entry.networks or (address is not None and any(address in net for net in entry.networks)):
                return Caller(entry.ae_title, entry.organization, entry.organization_oid,
                              entry.transfer_syntax_preference, entry.max_associations, entry.permissions)
        return Caller(calling_ae) if calling_ae in destinations else None

    identity = settings.user_identity
    authenticator = Authenticator(
        required=identity.required,
        users={name: passcode.get_secret_value() for name, passcode in identity.users.items()},
        token_keys=[key.get_secret_value() for key in identity.token_keys],
        token_audience=identity.token_audience, token_issuer=identity.token_issuer,
    )
    return acse.AcceptorPolicy(settings.ae_title, settings.max_associations, settings.max_pdu_length,
                               identify if settings.allowed_aes else None, settings.transfer_syntax_preference,
                               authenticator, settings.max_associations_per_ae)


class Receiver:
    name = "receiver"

    def __init__(
        self, settings: DicomSettings, topics: TopicSettings, bus: Bus, metrics: Metrics,
        drain_timeout: float = 30.0, reply_to: Callable[[], str] | None = None,
        shortage: Callable[[], str | None] = lambda: None, destinations: Collection[str] = (),
        retrieval: tuple[Holdings, Sequence[DimseService]] | None = None,
        rejections: tuple[Holdings, RejectionCheck] | None = None,
        audit_trail: AuditTrail | None = None,
    ) -> None:
        """``destinations``: AE titles of the archives the forward role sends to, whose reports are taken;
        ``retrieval``: the query/retrieve services and the holdings they read (closed with the role);
        ``rejections``: the IOCM check before Success and the holdings it reads (the same as retrieval's);
        ``audit_trail``: where refused associations and TLS handshakes are recorded."""
        self._audit: AuditTrail = audit_trail if audit_trail is not None else NoAudit()
        self._rejections = rejections
        self._settings = settings
        self._destinations = frozenset(destinations)
        self._retrieval = retrieval
        self._topics = topics
        self._bus = bus
        self._metrics = metrics
        self._reply_to = reply_to
        self._shortage = shortage
        self._stack = AsyncExitStack()
        self._producer: Producer | None = None
        self._commitments: StorageCommitmentService | None = None
        self._services: ServiceRegistry | None = None
        self._occupancy = acse.Occupancy()
        self._listener = StreamListener("dicom", settings.host, self._associate, drain_timeout,
                                        settings.acse_timeout_seconds, settings.reuse_port,
                                        settings.max_connections_per_peer,
                                        metrics.associations.labels("refused_peer_limit").inc,
                                        lambda host, reason: self._audit.note(
                                            audit.tls_refused(audit.Interface.DICOM, host, settings.ae_title, reason)))
        self._policy = acceptor_policy(settings, self._destinations)
        self._timeouts = Timeouts(settings.acse_timeout_seconds, settings.dimse_timeout_seconds,
                                  settings.network_timeout_seconds)
        self.internal_routes = ([web.post(f"{commitment.REPORTS_PATH}/{{transaction_uid}}", self._report)]
                                if reply_to else [])

    @property
    def ports(self) -> list[int]:
        return self._listener.ports

    async def __aenter__(self) -> Receiver:
        self._producer = await self._stack.enter_async_context(self._bus.producer())
        settings = self._settings
        self._commitments = StorageCommitmentService(
            self._producer, self._topics.events, self._metrics,
            lambda ae_title: settings.remote_ae(ae_title) is not None, settings.ae_title,
            settings.publish_timeout_seconds, settings.dimse_timeout_seconds,
            None if self._reply_to is None else self._reply_to())
        storage = StorageService(self._producer, self._topics.instances, self._metrics, settings.max_instance_bytes,
                                 settings.publish_timeout_seconds, settings.extra_storage_sop_classes,
                                 self._shortage, None if self._rejections is None else self._rejections[1])
        catch_all = (CatchAll(storage, could_be_storage, all_transfer_syntaxes())
                     if settings.accept_any_storage_class else None)
        reports = CommitmentReportService(self._producer, self._topics.events, self._metrics,
                                          self._destinations.__contains__, settings.publish_timeout_seconds)
        retrieval: Sequence[DimseService] = ()
        if self._retrieval is not None:
            holdings, retrieval = self._retrieval
            self._stack.push_async_callback(holdings.close)
        if self._rejections is not None:
            if self._retrieval is None or self._rejections[0] is not self._retrieval[0]:
                self._stack.push_async_callback(self._rejections[0].close)
            self._stack.push_async_callback(self._rejections[1].close)
        self._services = ServiceRegistry([VerificationService(all_transfer_syntaxes()), storage, self._commitments,
                                          reports, *retrieval], catch_all)
        try:
            if settings.plain_port_open:
                await self._listener.listen(settings.port, None)
            context = server_tls_context(settings.tls)
            if context is not None:
                await self._listener.listen(settings.tls.port, context)
        except BaseException:
            await self._stack.aclose()
            raise
        log.info("receiver ready", extra={"ae_title": settings.ae_title, "ports": self.ports})
        if not settings.allowed_aes:
            log.warning("no AE allow-list configured: any calling AE is accepted")
        return self

    async def _associate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._services is not None
        self._metrics.associations_open.inc()
        try:
            await Association(reader, writer, self._policy, self._services, self._timeouts, self._metrics,
                              self._occupancy, self._audit).run()
        finally:
            self._metrics.associations_open.dec()

    async def _report(self, request: web.Request) -> web.Response:
        if self._commitments is None:
            raise web.HTTPServiceUnavailable(text="the receiver is not running")
        return await self._commitments.handle_report_request(request)

    def stop_accepting(self) -> None:
        """Refuse new associations at once on stopping, before the other roles of the process drain (they may
        take a while); associations in progress finish in ``__aexit__``."""
        self._listener.stop_accepting()

    async def wait(self) -> None:
        """The receiver stops working only when its producer dies: then every C-STORE would be refused."""
        assert self._producer is not None
        await self._producer.wait()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._listener.close()
        await self._stack.aclose()
