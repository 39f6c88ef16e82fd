"""The composition root: the only module that knows which adapter serves each port."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import aiohttp

from gateway.api import Api
from gateway.audit.message import AuditSource
from gateway.audit.syslog import repository, tls_context
from gateway.audit.trail import BusAuditTrail
from gateway.bus import Bus, Producer, Record
from gateway.bus.embedded import EmbeddedBus
from gateway.bus.kafka import KafkaBus
from gateway.core import audit
from gateway.core.audit import AuditRecord, AuditTrail, NoAudit
from gateway.core.events import Event
from gateway.dicom.scu import ClientTls, Outbound, RemoteAE
from gateway.dicom.service import DimseService
from gateway.disk import DiskSpace
from gateway.hetu import HETU_OID
from gateway.hl7.listener import Hl7Listener
from gateway.http import Endpoints, internal_secret
from gateway.index import CorrectionPolicy, Index
from gateway.index.postgres import PostgresIndex
from gateway.index.sqlite import SqliteIndex
from gateway.ingest.iocm import RejectionCheck
from gateway.ingest.receiver import Receiver
from gateway.metrics import Metrics
from gateway.objects import ObjectStore
from gateway.objects.filesystem import FilesystemObjectStore
from gateway.objects.s3 import S3ObjectStore
from gateway.retrieve import Holdings, find, move
from gateway.runtime import Role
from gateway.settings import ROLES, DicomSettings, Settings, SettingsError
from gateway.xds.client import XdsClient
from workers.audit import LINGER_SECONDS, AuditDelivery, AuditLogStage
from workers.availability import IAN, AvailabilityNotifier, ian_sender
from workers.commitment import REPORT, CommitmentTracker, report_sender
from workers.deliver import Deliverer, RetryPolicy
from workers.events import EventPool, event
from workers.forward import ForwardStage
from workers.notify import NotifyStage
from workers.patient import Hl7Forwarder, PatientStage, adt_record
from workers.pool import StorePool
from workers.register import REGISTRATION, RegisterStage, Registrar
from workers.routing import Router
from workers.send import BatchSender, SendPolicy
from workers.stability import StabilityClock
from workers.store import StoreStage
from workers.validation import ProfileSelector


def build_bus(settings: Settings, metrics: Metrics) -> Bus:
    if settings.embedded_bus_enabled:
        return EmbeddedBus(settings.data_dir / "bus", settings.embedded_bus, metrics)
    return KafkaBus(settings.kafka, settings.topics, metrics)


def build_outbound(dicom: DicomSettings, timeout: float) -> Outbound:
    """The SCU side: our AE title, the configured remote AEs and the DICOM TLS identity, as values."""

    def resolve(ae_title: str) -> RemoteAE | None:
        remote = dicom.remote_ae(ae_title)
        return None if remote is None else RemoteAE(remote.ae_title, remote.host, remote.port, remote.tls)

    return Outbound(dicom.ae_title, timeout, resolve,
                    ClientTls(dicom.tls.cert_file, dicom.tls.key_file, dicom.tls.ca_file))


def build_objects(settings: Settings) -> ObjectStore:
    if settings.s3.endpoint:
        return S3ObjectStore(settings.s3)
    return FilesystemObjectStore(settings.data_dir / "objects")


async def open_index(settings: Settings) -> Index:
    if settings.database.url is not None:
        return await PostgresIndex.connect(settings.database.url.get_secret_value())
    return await SqliteIndex.open(settings.data_dir / "index.sqlite3")


@asynccontextmanager
async def _services(settings: Settings) -> AsyncIterator[tuple[ObjectStore, Index]]:
    """The object store and the index a worker stage uses; their adapters' errors say whether failing to reach
    them is an outage (retried like one mid-work) or a configuration the process cannot run with."""
    objects = build_objects(settings)
    try:
        await objects.ensure_bucket()
        index = await open_index(settings)
        await index.migrate()
        async with index:
            yield objects, index
    finally:
        await objects.close()


def store_pool(settings: Settings, bus: Bus, metrics: Metrics, trail: AuditTrail) -> StorePool:
    profiles = ProfileSelector.from_settings(settings.validation)

    @asynccontextmanager
    async def open_stage(producer: Producer) -> AsyncIterator[tuple[StoreStage, StabilityClock]]:
        async with _services(settings) as (objects, index):
            yield (StoreStage(objects, index, producer, settings.topics, profiles,
                              CorrectionPolicy(settings.store.correction_policy), settings.iocm, metrics, trail,
                              settings.dicom.ae_title),
                   StabilityClock(index, producer, settings.topics, settings.xds.stable_after_seconds, metrics))

    return StorePool(bus, settings.topics, open_stage, settings.xds.stability_check_seconds, metrics,
                     settings.store.orphan_timeout_seconds, settings.store.retry_max_seconds,
                     settings.runtime.drain_timeout_seconds)


def notify_pool(settings: Settings, bus: Bus, metrics: Metrics) -> EventPool[Event]:
    notify = settings.notify

    @asynccontextmanager
    async def open_stage(producer: Producer) -> AsyncIterator[NotifyStage]:
        timeout = aiohttp.ClientTimeout(total=settings.dicom.dimse_timeout_seconds + 10)
        async with _services(settings) as (objects, index), aiohttp.ClientSession(timeout=timeout) as http:
            tracker = CommitmentTracker(index, objects, settings.notify, metrics, settings.xds.trigger_on_commitment)
            outbound = build_outbound(settings.dicom, notify.association_timeout_seconds)
            senders = {REPORT: report_sender(outbound, settings.dicom, http, internal_secret(settings)),
                       IAN: ian_sender(outbound, settings.dicom)}
            retry = RetryPolicy(notify.retry_initial_seconds, notify.retry_max_seconds, notify.retry_max_attempts,
                                notify.association_timeout_seconds * 4 + 30)
            deliverer = Deliverer(index, senders, producer, settings.topics, retry, "notify", metrics)
            yield NotifyStage(tracker, AvailabilityNotifier(index, notify), deliverer)

    return EventPool("notify", bus, settings.topics, settings.topics.events, event, open_stage, metrics,
                     notify.retry_max_seconds, settings.runtime.drain_timeout_seconds)


def register_pool(settings: Settings, bus: Bus, metrics: Metrics, trail: AuditTrail) -> EventPool[Event]:
    xds = settings.xds
    if not xds.enabled:
        raise SettingsError("the register role needs GATEWAY_XDS__REPOSITORY_URL (registration is off without it)")
    if not (xds.organization_oid and xds.retrieve_location_uid):
        raise SettingsError("registration needs GATEWAY_XDS__ORGANIZATION_OID and GATEWAY_XDS__RETRIEVE_LOCATION_UID")

    @asynccontextmanager
    async def open_stage(producer: Producer) -> AsyncIterator[RegisterStage]:
        async with _services(settings) as (_, index), XdsClient(xds) as client:
            registrar = Registrar(index, client, producer, xds, settings.dicom, settings.topics,
                                  settings.validation.test_environment, trail)
            retry = RetryPolicy(xds.retry_initial_seconds, xds.retry_max_seconds, xds.retry_max_attempts,
                                xds.timeout_seconds * 4 + 30)
            deliverer = Deliverer(index, {REGISTRATION: registrar.send}, producer, settings.topics, retry,
                                  "register", metrics)
            yield RegisterStage(registrar, deliverer)

    return EventPool("register", bus, settings.topics, settings.topics.events, event, open_stage, metrics,
                     xds.retry_max_seconds, settings.runtime.drain_timeout_seconds)


def forward_pool(settings: Settings, bus: Bus, metrics: Metrics, trail: AuditTrail) -> EventPool[Event]:
    forward = settings.forward
    if not forward.destinations:
        raise SettingsError("the forward role needs GATEWAY_FORWARD__DESTINATIONS (where to forward to)")
    dicom = settings.dicom
    retry = RetryPolicy(forward.retry_initial_seconds, forward.retry_max_seconds, forward.retry_max_attempts,
                        forward.lease_seconds)
    policy = SendPolicy(dicom.ae_title, forward.association_timeout_seconds, retry, forward.commitment_timeout_seconds,
                        forward.report_wait_seconds, ClientTls(dicom.tls.cert_file, dicom.tls.key_file,
                                                               dicom.tls.ca_file))

    @asynccontextmanager
    async def open_stage(producer: Producer) -> AsyncIterator[ForwardStage]:
        async with _services(settings) as (objects, index):
            stage = ForwardStage(index, Router(forward), forward, metrics, forward.lease_seconds)
            stage.attach(BatchSender(index, objects, policy, metrics, stage.apply_report, trail))
            try:
                yield stage
            finally:
                await stage.close()

    return EventPool("forward", bus, settings.topics, settings.topics.events, event, open_stage, metrics,
                     forward.retry_max_seconds, settings.runtime.drain_timeout_seconds)


def hl7_listener(settings: Settings, bus: Bus, metrics: Metrics, trail: AuditTrail) -> Hl7Listener:
    hl7 = settings.hl7
    if not hl7.enabled:
        raise SettingsError("the hl7 role needs GATEWAY_HL7__PORT (and GATEWAY_HL7__ALLOWED_SENDERS)")
    holdings = Holdings(lambda: open_index(settings), lambda: build_objects(settings))
    return Hl7Listener(hl7, settings.topics, bus, metrics, trusted_authorities(settings),
                       settings.validation.test_environment, holdings, settings.runtime.drain_timeout_seconds, trail)


def trusted_authorities(settings: Settings) -> frozenset[str]:
    return frozenset({HETU_OID, *settings.hl7.local_authorities})


def patient_pools(settings: Settings, bus: Bus, metrics: Metrics, trail: AuditTrail) -> list[Role]:
    """Applying ADT, and passing it on upstream when one is configured: two consumer groups of the hl7 topic."""
    hl7, drain = settings.hl7, settings.runtime.drain_timeout_seconds

    @asynccontextmanager
    async def apply_stage(producer: Producer) -> AsyncIterator[PatientStage]:
        async with _services(settings) as (_, index):
            yield PatientStage(index, producer, settings.topics, metrics, settings.xds.reregister_on_patient_change,
                               trail, settings.dicom.ae_title)

    # applying commits per fetch (a replay finds each message applied: a duplicate), passing on per message (what
    # the upstream acknowledged is never sent again after an outage part-way through a fetch)
    pools: list[Role] = [EventPool("patient", bus, settings.topics, settings.topics.hl7, adt_record, apply_stage,
                                   metrics, settings.store.retry_max_seconds, drain)]
    if hl7.forward_to.enabled:

        @asynccontextmanager
        async def forward_stage(producer: Producer) -> AsyncIterator[Hl7Forwarder]:
            forwarder = Hl7Forwarder(hl7.forward_to, metrics)
            try:
                yield forwarder
            finally:
                await forwarder.close()

        pools.append(EventPool("hl7-forward", bus, settings.topics, settings.topics.hl7, adt_record, forward_stage,
                               metrics, hl7.forward_to.retry_max_seconds, drain, commit_each=True))
    return pools


def retrieval(settings: Settings, metrics: Metrics, holdings: Holdings,
              trail: AuditTrail) -> tuple[Holdings, list[DimseService]] | None:
    """C-FIND, C-MOVE and C-GET for the receiver's acceptor, reading the index and object store it opens on
    first use."""
    if not settings.query.enabled:
        return None
    dicom = settings.dicom
    outbound = build_outbound(dicom, dicom.dimse_timeout_seconds)
    return holdings, [find.QueryService(holdings, settings.query, dicom.ae_title, metrics, trail),
                      move.RetrieveService(holdings, settings.query, outbound, metrics, trail)]


def receiver(settings: Settings, bus: Bus, metrics: Metrics, endpoints: Endpoints,
             space: DiskSpace | None, trail: AuditTrail) -> Receiver:
    """The receiver, with query/retrieve and the IOCM check before Success reading one index, opened on first use."""
    holdings = Holdings(lambda: open_index(settings), lambda: build_objects(settings))
    check = RejectionCheck(holdings.index, settings.iocm.policy(), settings.iocm.refresh_seconds) \
        if settings.iocm.check_on_receive else None
    return Receiver(settings.dicom, settings.topics, bus, metrics, settings.runtime.drain_timeout_seconds,
                    reply_to=(lambda: endpoints.internal_url) if settings.notify.report_on_same_association else None,
                    shortage=(lambda: space.shortage) if space is not None else lambda: None,
                    destinations=[d.ae_title for d in settings.forward.destinations],
                    retrieval=retrieval(settings, metrics, holdings, trail),
                    rejections=None if check is None else (holdings, check), audit_trail=trail)


def audit_pools(settings: Settings, bus: Bus, metrics: Metrics) -> list[Role]:
    """Delivering to the audit record repository (when one is configured) and keeping the local audit log: two
    consumer groups of the audit topic."""
    settings_audit, drain = settings.audit, settings.runtime.drain_timeout_seconds

    @asynccontextmanager
    async def log_stage(producer: Producer) -> AsyncIterator[AuditLogStage]:
        async with _services(settings) as (_, index):
            yield AuditLogStage(index, settings_audit.retention_days, metrics)

    pools: list[Role] = [EventPool("audit-log", bus, settings.topics, settings.topics.audit, audit_record, log_stage,
                                   metrics, settings_audit.retry_max_seconds, drain, linger=LINGER_SECONDS)]
    url = settings_audit.repository_url
    if url is not None:
        source = AuditSource(settings_audit.source_id or settings.dicom.ae_title,
                             settings_audit.enterprise_site_id or settings.xds.organization_oid or "")
        context = tls_context(settings_audit.ca_file, settings_audit.cert_file, settings_audit.key_file) \
            if url.startswith("tls:") else None

        @asynccontextmanager
        async def delivery_stage(producer: Producer) -> AsyncIterator[AuditDelivery]:
            target = repository(url, context)
            try:
                yield AuditDelivery(target, source, settings_audit.app_name, settings_audit.utf8_bom,
                                    url.split(":", 1)[0], metrics)
            finally:
                await target.close()

        pools.append(EventPool("audit", bus, settings.topics, settings.topics.audit, audit_record, delivery_stage,
                               metrics, settings_audit.retry_max_seconds, drain, linger=LINGER_SECONDS))
    return pools


def audit_record(record: Record) -> AuditRecord:
    return audit.decode(record.value)


def default_roles(settings: Settings) -> list[str]:
    """What ``dicom-gateway run`` runs without ``--role``: every role whose work is configured."""
    return [role for role in ROLES if (role != "register" or settings.xds.enabled)
            and (role != "forward" or settings.forward.destinations)
            and (role not in ("hl7", "patient") or settings.hl7.enabled)
            and (role != "audit" or settings.audit.enabled)]


def consumer_groups(settings: Settings) -> list[tuple[str, str, str]]:
    """(role, consumer group, topic) of every worker pool this configuration runs, wherever it runs: what the
    operators' API reports the backlog of."""
    topics, events = settings.topics, settings.topics.events
    groups = [("store", "dicomgw-store", topics.instances), ("notify", "dicomgw-notify", events)]
    if settings.xds.enabled:
        groups.append(("register", "dicomgw-register", events))
    if settings.forward.destinations:
        groups.append(("forward", "dicomgw-forward", events))
    if settings.hl7.enabled:
        groups.append(("patient", "dicomgw-patient", topics.hl7))
        if settings.hl7.forward_to.enabled:
            groups.append(("patient", "dicomgw-hl7-forward", topics.hl7))
    if settings.audit.enabled:
        groups.append(("audit", "dicomgw-audit-log", topics.audit))
        if settings.audit.repository_url is not None:
            groups.append(("audit", "dicomgw-audit", topics.audit))
    return groups


def build_roles(names: Sequence[str], settings: Settings, bus: Bus, metrics: Metrics,
                endpoints: Endpoints, space: DiskSpace | None = None) -> list[Role]:
    """``endpoints`` is filled in by the runtime once the internal port is bound, before the roles start;
    ``space``, watched by the runtime, stops the receiver taking instances while the disk is full. The audit
    trail comes first: entered before the roles and left after them."""
    digest = "sha256:" + hashlib.sha256(settings.model_dump_json().encode()).hexdigest()[:16]
    trail = BusAuditTrail(bus, settings.topics.audit, settings.dicom.ae_title, metrics, digest) \
        if settings.audit.enabled else None
    audit_to: AuditTrail = trail if trail is not None else NoAudit()
    factories: dict[str, Callable[[], Role | list[Role]]] = {
        "receiver": lambda: receiver(settings, bus, metrics, endpoints, space, audit_to),
        "api": lambda: Api(lambda: open_index(settings), bus, settings, lambda: build_objects(settings), metrics,
                           (lambda: space.shortage) if space is not None else lambda: None, audit_to,
                           consumer_groups(settings)),
        "store": lambda: store_pool(settings, bus, metrics, audit_to),
        "register": lambda: register_pool(settings, bus, metrics, audit_to),
        "notify": lambda: notify_pool(settings, bus, metrics),
        "forward": lambda: forward_pool(settings, bus, metrics, audit_to),
        "hl7": lambda: hl7_listener(settings, bus, metrics, audit_to),
        "patient": lambda: patient_pools(settings, bus, metrics, audit_to),
        "audit": lambda: audit_pools(settings, bus, metrics),
    }
    roles: list[Role] = [trail] if trail is not None else []
    # the audit role right after the trail: it stops after the others, which may still write records as they drain
    for name in sorted(names, key=lambda name: name != "audit"):
        built = factories[name]()
        roles.extend(built if isinstance(built, list) else [built])
    return roles
