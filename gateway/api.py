"""The operators' JSON API (role ``api``), on the HTTP port beside the health and metrics endpoints.

    GET /api/studies?patient_id=&accession=   studies with current instances, the most recently received first
    GET /api/studies/{study_uid}              its series and instances (quarantined, rejected, prior versions and
                                              variants in other transfer syntaxes too), stability, the storage
                                              commitments naming its instances, its IANs' delivery state, its
                                              XDS registration (manifests, current one, state) and its rejections
    GET /api/studies/{study_uid}/rejections   its IOCM rejection notes (title, sender, when) and the instances
                                              they withdrew or await, with the deletion time of retention expiry
    GET /api/commitments/{transaction_uid}    a storage-commitment transaction: requester, outcome per instance,
                                              report delivery state and attempts
    GET /api/commitments/overdue              transactions past their deadline whose report is not delivered
                                              (undecided, or the report pending or failed), as above
    GET /api/xds/documents?patient_id=        ITI-18 FindDocuments in the registry (a hetu, or CX with its
                                              assigning authority); ?unique_id= (repeatable) for GetDocuments
    GET /api/forward/destinations             each forwarding destination: configuration, paused, instances by
                                              state, lag (age of the oldest not archived), last error and success
    POST /api/forward/destinations/{name}/pause|resume
                                              stop or restart sending to it (operator; sends in flight finish)
    GET /api/forward/failed?destination=&study_uid=
                                              instances given up, with their reasons
    POST /api/forward/redrive                 {"destination", "study_instance_uid", "resend"}: queue failed
                                              instances again (``resend``: every instance, committed ones too)
                                              for a destination, a study, or both (operator)
    GET /api/lag                              each worker pool's backlog on the bus (records its consumer group has
                                              not done yet, over all its members)
    GET /api/dlq                              open dead-letter entries with their reasons
    POST /api/dlq/{entry_id}/redrive          send an entry's records through again (operator)
    GET /api/audit?patient_id=&from=&to=      the local audit log: a patient's entries (who processed their data,
                                              to whom it was disclosed, how), or everyone's newest first (operator)
    GET /api/me                               who the token says the caller is, and its role
    GET /api/settings                         the effective settings, secrets masked (admin)

    /dicomweb/...                             QIDO-RS, WADO-RS and STOW-RS (``gateway.retrieve.dicomweb``), when
                                              ``query.enabled``

Every route needs a bearer token (``gateway.auth``): the reader role to read, operator to change state
(STOW-RS included) and to read the audit log, admin for the settings. Times are UTC, ISO 8601. Every read of
patient data is audited as a Query naming the request, and the patient when it names one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from aiohttp import web

from gateway import dead_letter
from gateway.auth import PRINCIPAL, Role, requires
from gateway.bus import Bus, BusError, Producer
from gateway.core import audit
from gateway.core.audit import AuditRecord, AuditTrail, NoAudit, instant
from gateway.core.errors import describe
from gateway.index import (
    FINISHED_FORWARD_STATES,
    Commitment,
    Delivery,
    DestinationStatus,
    ForwardItem,
    ForwardState,
    Index,
    InstanceRow,
    Registration,
    StudyActivity,
)
from gateway.index.audit_log import AuditEntry
from gateway.metrics import Metrics
from gateway.objects import ObjectStore
from gateway.retrieve.dicomweb import DicomWeb
from gateway.settings import Settings
from gateway.web import routes as page_routes
from gateway.xds.client import XdsClient, XdsError
from gateway.xds.metadata import MetadataError, patient_cx

log = logging.getLogger(__name__)

_LIST_LIMIT = 200
LAG_TIMEOUT_SECONDS = 10.0
"""How long the lag report waits for the bus (Kafka's group offsets) before answering 503."""
_AUDIT_LIMIT = 5000
_REPORT = "commitment-report"
"""The delivery kind of a storage-commitment report (workers.commitment.REPORT)."""


class Api:
    name = "api"

    def __init__(self, open_index: Callable[[], Awaitable[Index]], bus: Bus, settings: Settings,
                 open_objects: Callable[[], ObjectStore], metrics: Metrics,
                 shortage: Callable[[], str | None] = lambda: None, audit_trail: AuditTrail | None = None,
                 groups: Sequence[tuple[str, str, str]] = ()) -> None:
        """DICOMweb (``gateway.retrieve.dicomweb``) is served too when ``query.enabled``: it reads the object
        store and publishes STOW-RS instances into the bus."""
        self._audit: AuditTrail = audit_trail if audit_trail is not None else NoAudit()
        self._open_index = open_index
        self._open_objects = open_objects
        self._objects: ObjectStore | None = None
        self._producer: Producer | None = None
        self._stack = AsyncExitStack()
        self._bus = bus
        self._groups = groups
        self._settings = settings
        self._topics = settings.topics
        self._xds = settings.xds
        self._index: Index | None = None
        self._stopped = asyncio.Event()
        read = self._audited
        self.routes = [
            web.get("/api/studies", read(self._studies)),
            web.get("/api/studies/{study_uid}", read(self._study)),
            web.get("/api/studies/{study_uid}/rejections", read(self._rejections)),
            web.get("/api/patients/{patient_id}", read(self._patient)),
            web.get("/api/commitments/overdue", read(self._overdue_commitments)),
            web.get("/api/commitments/{transaction_uid}", read(self._commitment)),
            web.get("/api/xds/documents", read(self._xds_documents)),
            web.get("/api/forward/destinations", self._destinations),
            web.post("/api/forward/destinations/{name}/pause", self._pause),
            web.post("/api/forward/destinations/{name}/resume", self._pause),
            web.get("/api/forward/failed", read(self._failed_forwards)),
            web.post("/api/forward/redrive", self._redrive_forwards),
            web.get("/api/dlq", read(self._dead_letters)),
            web.get("/api/lag", self._lag),
            web.post("/api/dlq/{entry_id}/redrive", self._redrive),
            web.get("/api/audit", self._audit_log),
            web.get("/api/me", self._me),
            web.get("/api/settings", self._effective_settings),
            *page_routes,
        ]
        if settings.query.enabled:
            self.routes.extend(DicomWeb(self._ready_index, self._ready_objects, self._ready_producer, settings,
                                        metrics, shortage, self._audit).routes)

    async def __aenter__(self) -> Api:
        try:
            self._index = await self._open_index()
            self._stack.push_async_callback(self._index.close)
            await self._index.migrate()
            if self._settings.query.enabled:
                self._objects = self._open_objects()
                self._stack.push_async_callback(self._objects.close)
                self._producer = await self._stack.enter_async_context(self._bus.producer())
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def wait(self) -> None:
        await self._stopped.wait()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._stack.aclose()

    def _ready_index(self) -> Index:
        if self._index is None:
            raise web.HTTPServiceUnavailable(text="the index is not open yet")
        return self._index

    def _ready_objects(self) -> ObjectStore:
        if self._objects is None:
            raise web.HTTPServiceUnavailable(text="the object store is not open yet")
        return self._objects

    def _ready_producer(self) -> Producer:
        if self._producer is None:
            raise web.HTTPServiceUnavailable(text="the bus is not open yet")
        return self._producer

    def _audited(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                 ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """The handler, after a Query record of the request is durable (PS3.15 A.5.3.12, a REST query): who asked,
        from where, what, and the patient when the request names one. 503 when it cannot be recorded."""

        @functools.wraps(handler)
        async def audited(request: web.Request) -> web.StreamResponse:
            principal = request[PRINCIPAL]
            patient_id = request.match_info.get("patient_id") or request.query.get("patient_id", "")
            record = AuditRecord(
                audit.Event.QUERY, audit.Outcome.SUCCESS,
                (audit.peer(principal.subject, request.remote or "", audit.Role.SOURCE),
                 audit.this_gateway(self._settings.dicom.ae_title, audit.Role.DESTINATION)),
                audit.Interface.API, audit.Action.EXECUTE,
                patient=audit.Patient(patient_id, request.query.get("issuer", "")) if patient_id else None,
                query=audit.Query(request.query_string.encode(), uri=request.path))
            await self._recorded(record, "request")
            return await handler(request)

        return audited

    async def _recorded(self, record: AuditRecord, what: str) -> None:
        """Return once ``record`` is durable; 503 (the request refused, and why logged) when it cannot be."""
        try:
            await self._audit.record(record)
        except Exception as exc:
            log.error(f"{what} refused: it could not be audited", extra={"error": describe(exc)})
            raise web.HTTPServiceUnavailable(text="the audit trail is unavailable") from None

    @requires(Role.OPERATOR)
    async def _audit_log(self, request: web.Request) -> web.Response:
        """The local audit log, itself audited (Audit Log Used)."""
        try:
            since = instant(request.query.get("from", ""), 0.0)
            until = instant(request.query.get("to", ""), time.time() + 1)
            limit = min(int(request.query.get("limit", _AUDIT_LIMIT)), _AUDIT_LIMIT)
            if limit < 1:
                raise ValueError("limit must be at least 1")
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        patient_id = request.query.get("patient_id", "")
        principal = request[PRINCIPAL]
        await self._recorded(AuditRecord(
            audit.Event.AUDIT_LOG_USED, audit.Outcome.SUCCESS,
            (audit.peer(principal.subject, request.remote or "", None),), audit.Interface.API,
            audit.Action.READ, patient=audit.Patient(patient_id) if patient_id else None,
            query=audit.Query(request.query_string.encode(), uri=request.path)), "audit log read")
        entries = await self._ready_index().audit_entries(patient_id, since, until, limit)
        return web.json_response([_audit_entry(entry) for entry in entries])

    @requires(Role.READER)
    async def _patient(self, request: web.Request) -> web.Response:
        """A patient's current attributes (the index's, after ADT updates), studies and history of changes; the
        ``issuer`` parameter picks one when the identifier exists under several assigning authorities."""
        issuer = request.query.get("issuer", "")
        found = await self._ready_index().patient_record(request.match_info["patient_id"], issuer)
        if not found:
            raise web.HTTPNotFound(text="no such patient")
        if len(found) > 1:
            return web.json_response({"error": "the identifier exists under several issuers; add ?issuer=",
                                      "issuers": [entry["IssuerOfPatientID"] for entry in found]}, status=409)
        return web.json_response(found[0])

    @requires(Role.READER)
    async def _studies(self, request: web.Request) -> web.Response:
        studies = await self._ready_index().find_studies(
            patient_id=request.query.get("patient_id", ""), accession_number=request.query.get("accession", ""),
            limit=_LIST_LIMIT,
        )
        return web.json_response([asdict(study) for study in studies])

    @requires(Role.READER)
    async def _study(self, request: web.Request) -> web.Response:
        rows = await self._ready_index().study_instances(
            request.match_info["study_uid"], include_quarantined=True, include_replaced=True, include_rejected=True
        )
        if not rows:
            raise web.HTTPNotFound(text="no such study")
        current = [row for row in rows if row.status.value != "replaced"] or rows
        index = self._ready_index()
        variants: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for variant in await index.study_variants(rows[0].study_instance_uid):
            variants.setdefault((variant.sop_instance_uid, variant.version), []).append({
                "transfer_syntax_uid": variant.transfer_syntax_uid, "storage_key": variant.storage_key,
                "size": variant.size, "sha256": variant.sha256, "received_sha256": variant.received_sha256,
                "source_ae": variant.source_ae, "received_at": variant.received_at.isoformat()})
        series: dict[str, dict[str, Any]] = {}
        for row in rows:
            entry = series.setdefault(row.series_instance_uid, {
                "series_instance_uid": row.series_instance_uid, "modality": row.modality, "instances": [],
            })
            entry["instances"].append({**_instance(row),
                                       "variants": variants.get((row.sop_instance_uid, row.version), [])})
        activity = await index.study_activity(rows[0].study_instance_uid)
        forwarding = await index.forward_items(study_instance_uid=rows[0].study_instance_uid, limit=100_000)
        deliveries = await index.deliveries(rows[0].study_instance_uid)
        registrations = await index.registrations(rows[0].study_instance_uid)
        patient = (await index.patients_of_studies([rows[0].study_instance_uid])).get(rows[0].study_instance_uid)
        commitments = [_commitment(commitment, await index.deliveries(commitment.transaction_uid))
                       for commitment in await index.study_commitments(rows[0].study_instance_uid)]
        return web.json_response({
            "study_instance_uid": rows[0].study_instance_uid,
            "patient_id": current[0].patient_id,
            "issuer_of_patient_id": current[0].issuer_of_patient_id,
            "patient": None if patient is None else patient.attributes(),
            "accession_number": current[0].accession_number,
            "study_id": current[0].study_id,
            "study_date": current[0].study_date,
            "study_description": current[0].study_description,
            "series": list(series.values()),
            "stability": None if activity is None else {
                # from the instances: a commitment that hastens stability overwrites the activity's time
                "last_instance_at": max(row.received_at for row in rows).astimezone(UTC).isoformat(),
                "stable_at": _utc(activity.stable_at),
                "generation": activity.generation,
            },
            "commitments": commitments,
            "notifications": [_delivery(d) for d in deliveries if d.kind == "ian"],
            "registration": _registration(activity, registrations,
                                          next((d for d in deliveries if d.kind == "xds-registration"), None)),
            "forwarding": _forwarding(forwarding),
            "rejections": _rejections(await index.study_rejections(rows[0].study_instance_uid)),
        })

    @requires(Role.READER)
    async def _rejections(self, request: web.Request) -> web.Response:
        found = await self._ready_index().study_rejections(request.match_info["study_uid"])
        if not found["notes"] and not found["instances"]:
            raise web.HTTPNotFound(text="no rejection in this study")
        return web.json_response(_rejections(found))

    @requires(Role.READER)
    async def _lag(self, request: web.Request) -> web.Response:
        """Each worker pool's backlog as the bus holds it (all its members, in every pod): records not yet done."""
        answer = []
        try:
            async with asyncio.timeout(LAG_TIMEOUT_SECONDS):
                for role, group, topic in self._groups:
                    answer.append({"role": role, "group": group, "topic": topic,
                                   "waiting": await self._bus.backlog(group, topic)})
        except (TimeoutError, BusError, OSError) as exc:
            log.warning("consumer lag not read", extra={"error": describe(exc)})
            raise web.HTTPServiceUnavailable(text="the bus did not answer") from None
        return web.json_response(answer)

    @requires(Role.READER)
    async def _destinations(self, request: web.Request) -> web.Response:
        statuses = {status.name: status for status in await self._ready_index().forward_destinations()}
        now = time.time()
        answer = []
        for destination in self._settings.forward.destinations:
            status = statuses.get(destination.name, DestinationStatus(destination.name))
            since = status.oldest_waiting_since
            answer.append({
                "name": destination.name, "ae_title": destination.ae_title, "host": destination.host,
                "port": destination.port, "tls": destination.tls, "storage_commitment": destination.storage_commitment,
                "max_associations": destination.max_associations, "paused": status.paused,
                "instances": status.items, "lag_seconds": None if since is None else round(now - since, 3),
                "consecutive_failures": status.failures, "retry_after": _utc(status.backoff_until or None),
                "last_error": status.last_error, "last_error_at": _utc(status.last_error_at),
                "last_success_at": _utc(status.last_success_at)})
        return web.json_response(answer)

    @requires(Role.OPERATOR)
    async def _pause(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if self._settings.forward.destination(name) is None:
            raise web.HTTPNotFound(text="no such forwarding destination")
        paused = request.path.endswith("/pause")
        principal = request[PRINCIPAL]
        self._audit.note(AuditRecord(
            audit.Event.SECURITY_ALERT, audit.Outcome.SUCCESS,
            (audit.peer(principal.subject, request.remote or "", None),), audit.Interface.API, audit.Action.EXECUTE,
            (audit.EventType.SOFTWARE_CONFIGURATION,),
            outcome_text=f"forwarding destination {name} {'paused' if paused else 'resumed'}"))
        await self._ready_index().update_forward_destination(name, time.time(), paused=paused)
        log.info("forwarding destination paused" if paused else "forwarding destination resumed",
                 extra={"destination": name, "user": request[PRINCIPAL].subject})
        return web.json_response({"name": name, "paused": paused})

    @requires(Role.READER)
    async def _failed_forwards(self, request: web.Request) -> web.Response:
        items = await self._ready_index().forward_items(
            destination=request.query.get("destination", ""), study_instance_uid=request.query.get("study_uid", ""),
            state=ForwardState.FAILED, limit=_LIST_LIMIT)
        return web.json_response([_forward_item(item) for item in items])

    @requires(Role.OPERATOR)
    async def _redrive_forwards(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            destination = body.get("destination", "")
            study = body.get("study_instance_uid", "")
            resend = body.get("resend", False)
            if not (isinstance(destination, str) and isinstance(study, str) and isinstance(resend, bool)):
                raise TypeError
        except (ValueError, TypeError, AttributeError):
            raise web.HTTPBadRequest(text='expected {"destination": name, "study_instance_uid": uid, '
                                          '"resend": false}') from None
        if destination and self._settings.forward.destination(destination) is None:
            raise web.HTTPNotFound(text="no such forwarding destination")
        if resend and not study:
            raise web.HTTPBadRequest(text="resend is for one study: give study_instance_uid")
        count = await self._ready_index().redrive_forwards(time.time(), destination=destination,
                                                           study_instance_uid=study, resend=resend)
        log.info("forwarding re-driven", extra={"destination": destination, "study_instance_uid": study,
                                                "resend": resend, "instances": count,
                                                "user": request[PRINCIPAL].subject})
        return web.json_response({"queued": count})

    @requires(Role.READER)
    async def _overdue_commitments(self, _: web.Request) -> web.Response:
        """Transactions past their deadline whose report has not been delivered, each as the detail shows it."""
        index = self._ready_index()
        overdue = await index.overdue_commitments(time.time(), _REPORT, _LIST_LIMIT)
        return web.json_response([_commitment(c, await index.deliveries(c.transaction_uid)) for c in overdue])

    @requires(Role.READER)
    async def _commitment(self, request: web.Request) -> web.Response:
        index = self._ready_index()
        transaction_uid = request.match_info["transaction_uid"]
        commitment = await index.commitment(transaction_uid)
        if commitment is None:
            raise web.HTTPNotFound(text="no such storage-commitment transaction")
        return web.json_response(_commitment(commitment, await index.deliveries(transaction_uid)))

    @requires(Role.READER)
    async def _xds_documents(self, request: web.Request) -> web.Response:
        """ITI-18 through the gateway's registry client: what the affinity domain knows of a patient."""
        patient_id = request.query.get("patient_id", "")
        unique_ids = request.query.getall("unique_id", [])
        if not self._xds.registry_url:
            raise web.HTTPServiceUnavailable(text="no registry configured (GATEWAY_XDS__REGISTRY_URL)")
        if not patient_id and not unique_ids:
            raise web.HTTPBadRequest(text="give patient_id (FindDocuments) or unique_id (GetDocuments)")
        try:
            patient = patient_id if "^" in patient_id or not patient_id else patient_cx(patient_id,
                                                                                          test_environment=True)
        except MetadataError as exc:
            raise web.HTTPBadRequest(text=f"patient_id: {exc}") from exc
        try:
            async with XdsClient(self._xds) as client:
                found = (await client.get_documents(unique_ids=unique_ids) if unique_ids
                         else await client.find_documents(patient))
        except XdsError as exc:
            raise web.HTTPBadGateway(text=f"registry: {exc} {list(exc.codes)}") from exc
        return web.json_response([entry.to_dict() for entry in found])

    @requires(Role.READER)
    async def _dead_letters(self, _: web.Request) -> web.Response:
        entries = await dead_letter.entries(self._bus, self._topics)
        return web.json_response([entry.summary() for entry in entries])

    @requires(Role.OPERATOR)
    async def _redrive(self, request: web.Request) -> web.Response:
        entry_id = request.match_info["entry_id"]
        entry = next((e for e in await dead_letter.entries(self._bus, self._topics) if e.entry_id == entry_id), None)
        if entry is None:
            raise web.HTTPNotFound(text="no open dead-letter entry with that id")
        try:
            new_id = await dead_letter.redrive(self._bus, self._topics, entry)
        except LookupError as exc:
            raise web.HTTPGone(text=str(exc)) from exc
        principal = request[PRINCIPAL]
        log.info("dead-letter entry re-driven", extra={"entry_id": entry_id, "as": new_id,
                                                        "by": principal.subject, "stage": entry.stage})
        return web.json_response({"redriven": entry_id, "as": new_id})

    @requires(Role.READER)
    async def _me(self, request: web.Request) -> web.Response:
        principal = request[PRINCIPAL]
        return web.json_response({"subject": principal.subject, "role": principal.role.name.lower(),
                                  "source": principal.source})

    @requires(Role.ADMIN)
    async def _effective_settings(self, _: web.Request) -> web.Response:
        return web.json_response(self._settings.model_dump(mode="json"))


def _commitment(commitment: Commitment, reports: list[Delivery]) -> dict[str, Any]:
    decided = commitment.decided_at is not None
    return {
        "transaction_uid": commitment.transaction_uid,
        "requester_ae": commitment.requester_ae,
        "requested_at": _utc(commitment.requested_at),
        "deadline": _utc(commitment.deadline),
        "decided_at": _utc(commitment.decided_at),
        "instances": [{
            "sop_class_uid": item.sop_class_uid, "sop_instance_uid": item.sop_instance_uid,
            "outcome": ("waiting" if not decided else "committed" if item.failure_reason is None else "failed"),
            "failure_reason": None if item.failure_reason is None else f"0x{item.failure_reason:04X}",
        } for item in commitment.items],
        "report": _delivery(reports[0]) if reports else None,
    }


def _utc(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


def _delivery(delivery: Delivery) -> dict[str, Any]:
    return {
        "kind": delivery.kind, "target_ae": delivery.target_ae, "state": delivery.state.value,
        "attempts": delivery.attempts, "last_error": delivery.last_error,
        "next_attempt_at": _utc(delivery.next_attempt_at) if delivery.state.value == "pending" else None,
        "delivered_at": _utc(delivery.delivered_at), "generation": delivery.payload.get("generation"),
    }


def _registration(activity: StudyActivity | None, registrations: list[Registration],
                  queued: Delivery | None) -> dict[str, Any]:
    """pending-stability, queued, registered, deprecated (every instance withdrawn), or failed (with the registry's
    errors); every manifest listed, current, replaced by a later one, or deprecated."""
    current = next((r for r in registrations if r.current), None)
    replaced = {r.replaces_entry_uuid for r in registrations if r.replaces_entry_uuid}
    if queued is not None and queued.state.value == "failed":
        state = "failed"
    elif queued is not None and queued.state.value == "pending":
        state = "pending-registration"
    elif current is not None:
        state = "registered"
    elif registrations and activity is not None and activity.stable_at is not None:
        state = "deprecated"
    elif activity is None or activity.stable_at is None:
        state = "pending-stability"
    else:
        state = "not-registered"
    return {
        "state": state,
        "last_error": queued.last_error if queued is not None else "",
        "attempts": queued.attempts if queued is not None else 0,
        "manifests": [{
            "document_unique_id": r.document_unique_id, "entry_uuid": r.entry_uuid, "generation": r.generation,
            "instances": r.instances, "registered_at": _utc(r.registered_at),
            "status": "current" if r.current else "replaced" if r.entry_uuid in replaced else "deprecated",
            "replaces_entry_uuid": r.replaces_entry_uuid,
        } for r in registrations],
    }


def _audit_entry(entry: AuditEntry) -> dict[str, Any]:
    shown = entry.as_json()
    shown["at"] = datetime.fromtimestamp(entry.at, UTC).isoformat()
    return shown


def _instance(row: InstanceRow) -> dict[str, Any]:
    return {
        "sop_instance_uid": row.sop_instance_uid, "sop_class_uid": row.sop_class_uid,
        "transfer_syntax_uid": row.transfer_syntax_uid, "instance_number": row.instance_number, "size": row.size,
        "sha256": row.sha256, "received_sha256": row.received_sha256, "storage_key": row.storage_key,
        "status": row.status.value, "version": row.version, "findings": list(row.findings),
        "source_ae": row.source_ae, "received_at": row.received_at.isoformat(),
        "stored_at": row.stored_at.isoformat(),
    }


def _forward_item(item: ForwardItem) -> dict[str, Any]:
    return {"destination": item.destination, "study_instance_uid": item.study_instance_uid,
            "series_instance_uid": item.series_instance_uid, "sop_instance_uid": item.sop_instance_uid,
            "version": item.version, "state": item.state.value, "sends": item.sends, "attempts": item.attempts,
            "transaction_uid": item.transaction_uid or None, "transfer_syntax_sent": item.transfer_syntax_sent or None,
            "last_error": item.last_error, "queued_at": _utc(item.queued_at), "sent_at": _utc(item.sent_at),
            "finished_at": _utc(item.finished_at)}


def _rejections(found: dict[str, Any]) -> dict[str, Any]:
    """Times as UTC ISO 8601, like the rest of the API."""
    return {"notes": [{**note, "applied_at": _utc(note["applied_at"])} for note in found["notes"]],
            "instances": [{**instance, **{key: _utc(instance[key])
                                          for key in ("rejected_at", "delete_after", "deleted_at")}}
                          for instance in found["instances"]]}


def _forwarding(items: list[ForwardItem]) -> list[dict[str, Any]]:
    """Per destination: the study's state there (archived only when every instance is committed or, without
    commitment, delivered; partial or failed once nothing is left to do and some or all instances failed) and
    each instance's."""
    by_destination: dict[str, list[ForwardItem]] = {}
    for item in items:
        by_destination.setdefault(item.destination, []).append(item)
    answer = []
    for destination, own in by_destination.items():
        states = [item.state for item in own]
        counts = {state.value: states.count(state) for state in ForwardState if state in states}
        if all(state in FINISHED_FORWARD_STATES for state in states):
            summary = "archived"
        elif ForwardState.QUEUED in states:
            summary = "sending" if any(item.sends or item.attempts for item in own) else "pending"
        elif ForwardState.SENT in states or ForwardState.REQUESTED in states:
            summary = "awaiting-commitment"
        else:
            summary = "failed" if all(state is ForwardState.FAILED for state in states) else "partial"
        answer.append({"destination": destination, "state": summary, "instances": counts,
                       "transactions": sorted({item.transaction_uid for item in own if item.transaction_uid}),
                       "last_error": next((item.last_error for item in own if item.last_error), ""),
                       "items": [_forward_item(item) for item in own]})
    return answer
