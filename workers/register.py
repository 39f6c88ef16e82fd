"""Register: each stable study becomes an XDS-I.b imaging manifest (KOS) in the affinity domain's registry.

On ``StudyStable`` a registration of that generation is queued in the index (the same queue, leases, retries
and dead letters as the notify role's deliveries). Sending it builds the KOS of the study's stored instances,
wraps it in a RAD-68 Provide and Register Imaging Document Set (MTOM/XOP), and, on Success, records the manifest
as the study's current one and publishes ``study.registered``. A later generation's manifest replaces the
current DocumentEntry with an RPLC association. The manifest's UIDs and time are fixed when the registration is
queued, so a retry sends the same document: a repository that did take the first attempt sees a re-submission
of the same uniqueId and hash. Transient registry answers are retried; metadata errors are dead-lettered at once
with the registry's error codes. The manifest is checked against the KOS IOD (``gateway.dicom.kos_check``) before it
is sent: an error finding is a bug in our builder, dead-lettered at once with the finding codes.

Instances withdrawn by an IOCM rejection note are not stored any more, and the note itself is not an image: a
study that lost instances gets a replacement manifest without them (RAD68-006); one that lost them all has its
current manifest deprecated in the registry by ITI-57 Update Document Set (RAD68-007), not replaced by an empty
one. The entry's patientId and status are read from the registry first (ITI-18 GetDocuments), so a retry after a
lost answer finds it deprecated and is done.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from gateway.bus import Producer
from gateway.core import audit, events
from gateway.core.audit import AuditRecord, AuditTrail
from gateway.core.errors import DeliveryFailed, DeliveryRefused
from gateway.core.events import Event, StudyRegistered, StudyStable
from gateway.core.study import StudyInstance
from gateway.dicom.kos_check import check_kos
from gateway.index import Delivery, InstanceIndex, OutboundQueue, Patients, Registration, Registrations, Rejections
from gateway.settings import DicomSettings, TopicSettings, XdsSettings
from gateway.xds.client import DEPRECATED, XdsClient, XdsPermanent, XdsTransient
from gateway.xds.manifest import build_manifest, to_part10
from gateway.xds.metadata import AffinityDomain, MetadataError, build_status_update, build_submission
from workers.deliver import POLL_SECONDS, Deliverer, wanted

log = logging.getLogger(__name__)

REGISTRATION = "xds-registration"
REPOSITORY = "XDS-REPOSITORY"
DUPLICATE_UNIQUE_ID = "XDSDuplicateUniqueIdInRegistry"
MANIFEST_FINDINGS_LISTED = 10
"""At most this many KOS findings are named in a dead letter's reason."""


def registration_id(study_instance_uid: str) -> str:
    return f"{REGISTRATION}:{study_instance_uid}"


class _RegistrarIndex(InstanceIndex, OutboundQueue, Registrations, Patients, Rejections, Protocol):
    pass


class Registrar:
    def __init__(self, index: _RegistrarIndex, client: XdsClient, producer: Producer, xds: XdsSettings, dicom: DicomSettings,
                 topics: TopicSettings, test_environment: bool, audit: AuditTrail) -> None:
        self._audit = audit
        self._index = index
        self._client = client
        self._producer = producer
        self._xds = xds
        self._dicom = dicom
        self._topics = topics
        self._domain = AffinityDomain.load(xds.affinity_domain_file)
        self._test_environment = test_environment

    async def study_stable(self, event: StudyStable, source: dict[str, Any]) -> None:
        """Queue the registration of this generation, unless it is queued or done already."""
        study, generation = event.study_instance_uid, event.generation
        known = next((d for d in await self._index.deliveries(study) if d.delivery_id == registration_id(study)), None)
        if not wanted(known, generation):
            return
        now = time.time()
        payload = {"generation": generation, "document_unique_id": generate_uid(),
                   "entry_uuid": f"urn:uuid:{uuid.uuid4()}", "submission_set_uuid": f"urn:uuid:{uuid.uuid4()}",
                   "submission_set_unique_id": generate_uid(), "prepared_at": now}
        await self._index.put_delivery(Delivery(registration_id(study), REGISTRATION, study, REPOSITORY, payload,
                                                now, now, source), replace=True)
        log.info("registration queued", extra={"study_instance_uid": study, "generation": generation})

    async def send(self, delivery: Delivery) -> None:
        study, payload = delivery.subject, delivery.payload
        notes = await self._index.rejection_notes_of(study)
        rows = [row.study_instance() for row in await self._index.study_instances(study)
                if row.sop_instance_uid not in notes]
        registrations = await self._index.registrations(study)
        current = next((r for r in registrations if r.current), None)
        if current is not None and current.generation >= payload["generation"]:
            return
        prepared_at = datetime.fromtimestamp(payload["prepared_at"], UTC)
        if not rows:
            if current is not None:
                await self._deprecate(current, payload, prepared_at)
            else:
                log.info("nothing stored in the study; nothing to register", extra={"study_instance_uid": study})
            return
        patient = (await self._index.patients_of_studies([study])).get(study)
        if patient is not None:  # the index's patient (ADT updates and merges), not what the instances carried
            rows = [replace(row, patient_id=patient.patient_id, issuer_of_patient_id=patient.issuer,
                            patient_attributes={**row.patient_attributes, **patient.attributes()}) for row in rows]
        try:
            manifest = build_manifest(
                rows, retrieve_ae_title=self._dicom.ae_title, retrieve_location_uid=self._xds.retrieve_location_uid,
                institution_name=self._xds.organization_name, now=prepared_at,
                sop_instance_uid=payload["document_unique_id"])
            _check_manifest(manifest)
            document = to_part10(manifest)
            submission = build_submission(
                manifest, document, rows, domain=self._domain,
                source_id=self._xds.source_id or self._xds.organization_oid,
                organization_oid=self._xds.organization_oid, organization_name=self._xds.organization_name,
                replaces_entry_uuid=current.entry_uuid if current else None, now=prepared_at,
                document_entry_uuid=payload["entry_uuid"], submission_set_uuid=payload["submission_set_uuid"],
                submission_set_unique_id=payload["submission_set_unique_id"],
                test_environment=self._test_environment)
        except (MetadataError, ValueError) as exc:
            raise DeliveryRefused(f"the study cannot be described for XDS: {exc}") from exc
        exported = self._exported(rows, submission.submission_set_unique_id)
        try:
            await self._client.provide_and_register(submission)
        except XdsTransient as exc:
            self._audit.note(exported(audit.Outcome.SERIOUS_FAILURE, f"registry unavailable: {exc.codes}"))
            raise DeliveryFailed(f"registry: {exc} {list(exc.codes)}") from exc
        except XdsPermanent as exc:
            if not (DUPLICATE_UNIQUE_ID in exc.codes and delivery.attempts and await self._registered(submission)):
                self._audit.note(exported(audit.Outcome.SERIOUS_FAILURE, f"registry refused: {list(exc.codes)}"))
                raise DeliveryRefused(f"registry refused the submission: {list(exc.codes)} {exc}") from exc
        await self._audit.record(exported(audit.Outcome.SUCCESS, ""))
        registration = Registration(study, payload["generation"], submission.unique_id, submission.document_entry_uuid,
                                    submission.submission_set_unique_id, len(rows), time.time(),
                                    current.entry_uuid if current else None)
        await self._index.record_registration(registration)
        event = StudyRegistered(study_instance_uid=study, generation=payload["generation"],
                                document_unique_id=submission.unique_id, entry_uuid=submission.document_entry_uuid)
        await self._producer.publish(self._topics.events, event.key, events.encode(event))
        log.info("study registered", extra={"study_instance_uid": study, "generation": payload["generation"],
                                            "document_unique_id": submission.unique_id,
                                            "replaces": registration.replaces_entry_uuid})

    def _exported(self, rows: list[StudyInstance], submission_set: str) -> Callable[[audit.Outcome, str], AuditRecord]:
        """The Export record of a RAD-68 submission (PS3.15 A.5.3.6; IHE ITI-41): this gateway as the source that
        asked, the repository as the destination, the patient, the study and the submission set."""
        head = rows[0]
        classes = Counter(row.sop_class_uid for row in rows)
        repository = self._xds.repository_url or ""

        def record(outcome: audit.Outcome, why: str) -> AuditRecord:
            return AuditRecord(
                audit.Event.EXPORT, outcome,
                (audit.this_gateway(self._dicom.ae_title, audit.Role.SOURCE, requestor=True),
                 audit.peer(repository, urlsplit(repository).hostname or "", audit.Role.DESTINATION, False)),
                audit.Interface.XDS, audit.Action.READ, (audit.EventType.ITI_41,),
                patient=audit.Patient(head.patient_id, head.issuer_of_patient_id),
                studies=(audit.Study(head.study_instance_uid, tuple(sorted(classes.items())), head.accession_number),),
                submission_set=submission_set, recipient=repository, outcome_text=why)

        return record

    async def _deprecate(self, current: Registration, payload: dict[str, Any], prepared_at: datetime) -> None:
        """Every instance of the study was withdrawn: its manifest's entry becomes Deprecated (ITI-57)."""
        try:
            found = await self._client.get_documents(unique_ids=[current.document_unique_id])
            entry = next((e for e in found if e.entry_uuid == current.entry_uuid), None)
            if entry is None:
                raise DeliveryRefused("the registry does not know the study's current manifest; nothing to deprecate")
            if entry.status != DEPRECATED:
                update = build_status_update(
                    current.entry_uuid, entry.patient_id, domain=self._domain,
                    source_id=self._xds.source_id or self._xds.organization_oid,
                    organization_oid=self._xds.organization_oid, organization_name=self._xds.organization_name,
                    now=prepared_at, submission_set_uuid=payload["submission_set_uuid"],
                    submission_set_unique_id=payload["submission_set_unique_id"])
                await self._client.update_document_set(update)
        except XdsTransient as exc:
            raise DeliveryFailed(f"registry: {exc} {list(exc.codes)}") from exc
        except (XdsPermanent, MetadataError) as exc:
            raise DeliveryRefused(f"the registry refused the deprecation: {exc}") from exc
        await self._index.retire_registration(current.study_instance_uid)
        log.info("manifest deprecated: every instance of the study was withdrawn", extra={
            "study_instance_uid": current.study_instance_uid, "entry_uuid": current.entry_uuid})

    async def _registered(self, submission: Any) -> bool:
        """After a lost answer, the registry may hold our first attempt: then the entry with our uniqueId is ours."""
        if not self._xds.registry_url:
            return False
        try:
            found = await self._client.get_documents(unique_ids=[submission.unique_id])
        except (XdsTransient, XdsPermanent):
            return False
        return any(entry.entry_uuid == submission.document_entry_uuid for entry in found)


def _check_manifest(manifest: Dataset) -> None:
    """A manifest we built that breaks the KOS IOD is a bug in the builder: retrying builds the same one, so the
    registration is refused at once (dead letter) with the finding codes and paths, which name no patient data."""
    errors = [finding for finding in check_kos(manifest, manifest=True) if finding.severity == "error"]
    if errors:
        found = "; ".join(f"{finding.code} at {finding.path}" for finding in errors[:MANIFEST_FINDINGS_LISTED])
        more = f" (+{len(errors) - MANIFEST_FINDINGS_LISTED} more)" if len(errors) > MANIFEST_FINDINGS_LISTED else ""
        raise DeliveryRefused(f"the manifest built for the study fails the KOS check (a builder bug): {found}{more}")


@dataclass(frozen=True, slots=True)
class RegisterStage:
    registrar: Registrar
    deliverer: Deliverer

    async def handle(self, event: Event, source: dict[str, Any]) -> None:
        if isinstance(event, StudyStable):
            await self.registrar.study_stable(event, source)

    async def fetched(self) -> None:
        """Nothing is batched: each stable study is queued as its event comes."""

    def loops(self) -> list[tuple[float, Callable[[], Awaitable[None]]]]:
        return [(POLL_SECONDS, self.deliverer.deliver_all_due)]
