"""``dicom-gateway reject``: an operator withdraws a study, a series or instances with an IHE IOCM rejection note.

The note is built here from what the index holds and then goes the way a received one goes: checked as the
receiver checks a note before it answers, and published onto the instances topic through the receiver's own
publisher, so the store stage applies it, records who sent it and announces it exactly as for a note a modality
or PACS sent. Nothing is withdrawn here directly: one path, one set of rules.
"""

from __future__ import annotations

import hashlib
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from gateway.app import build_bus, open_index
from gateway.core.iocm import Reference, Title
from gateway.core.study import Patient
from gateway.core.uid import is_uid
from gateway.dicom.acse import EXPLICIT_LITTLE
from gateway.dicom.dataset import encode
from gateway.dicom.kos_check import KEY_OBJECT_SELECTION_DOCUMENT_STORAGE
from gateway.dicom.patient import UTF8, set_issuer
from gateway.dicom.rejection import build_note
from gateway.index import Index, InstanceRow, InstanceStatus, Rejections
from gateway.ingest.iocm import NOTE_LIMIT_BYTES, RejectionCheck
from gateway.ingest.publish import InstancePublisher, Origin
from gateway.metrics import Metrics
from gateway.settings import Settings

CALLING_AE = "DICOMGW-CLI"
"""The source AE the note is recorded with (``/api/studies/{uid}/rejections``): an operator's, not a sender's."""
MANUFACTURER = "dicom-gateway"


class NotHeld(Exception):
    """What the operator named is not held here: nothing to reject (exit 2)."""


class NoteTooLarge(Exception):
    """The note would exceed what the store stage reads whole (about 29,000 instances): it would be quarantined,
    not applied. Reject the study series by series instead."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """A note made durable on the bus; the store stage applies it."""

    note_sop_instance_uid: str
    study_instance_uid: str
    title: Title
    instances: int

    def summary(self) -> dict[str, Any]:
        return {"note_sop_instance_uid": self.note_sop_instance_uid, "study_instance_uid": self.study_instance_uid,
                "title": self.title.value, "instances": self.instances}


async def reject(settings: Settings, study: str, series: str | None, instances: Sequence[str],
                 title: Title) -> Rejected:
    """Reject the study's instances (those of ``series``, or those named in ``instances``, when given).

    Raises NotHeld when the study does not hold what is named, NoteTooLarge when the note would be too large to
    be applied, NoteRefused when the index contradicts it (say 0xA774: rejected already under a title this one may
    not overwrite), CannotUnderstand when the note built breaks the KOS IOD: in each case nothing is published;
    a DicomStatusError (OutOfResources) when the bus does not take it."""
    index = await open_index(settings)
    await index.migrate()
    async with index:
        note = await _note(index, study, series, instances, title)
        data = encode(note, EXPLICIT_LITTLE)  # the bare data set, as C-STORE delivers it: no file meta
        if len(data) >= NOTE_LIMIT_BYTES:
            raise NoteTooLarge(f"a note of {len(note.ContentSequence)} instances is {len(data)} bytes, more than "
                               f"the store stage reads whole ({NOTE_LIMIT_BYTES}): reject series by series")
        check = RejectionCheck(lambda: _ready(index), settings.iocm.policy(), settings.iocm.refresh_seconds)
        # the operator is local and trusted, as STOW-RS's operator role is: it may send a retention-expiry note
        await check.note(data, EXPLICIT_LITTLE, hashlib.sha256(data).hexdigest(), may_expire=True)
    await _publish(settings, note, data)
    return Rejected(str(note.SOPInstanceUID), study, title, len(note.ContentSequence))


async def _ready(index: Index) -> Rejections:
    return index


async def _note(index: Index, study: str, series: str | None, instances: Sequence[str], title: Title) -> Dataset:
    """The note for what is named, from the index's rows of the study. Rejected instances are selected too, so
    that a weightier title can replace a lighter one (113037 over 113001); the check refuses what may not be. Those
    rejected for this very reason are left out: a note for them would change nothing."""
    notes = await index.rejection_notes_of(study)
    rows = [row for row in await index.study_instances(study, include_rejected=True)
            if row.sop_instance_uid not in notes]  # a rejection note is never itself rejected
    if not rows:
        raise NotHeld(f"study {study} holds no stored instance here")
    chosen = rows
    if series is not None:
        chosen = [row for row in chosen if row.series_instance_uid == series]
        if not chosen:
            raise NotHeld(f"study {study} holds no series {series}")
    if instances:
        by_uid = {row.sop_instance_uid: row for row in chosen}
        missing = [uid for uid in dict.fromkeys(instances) if uid not in by_uid]
        if missing:
            where = f"series {series}" if series is not None else f"study {study}"
            raise NotHeld(f"{where} holds no instance {', '.join(missing)}")
        chosen = [by_uid[uid] for uid in dict.fromkeys(instances)]
    earlier = await index.rejections_of([row.sop_instance_uid for row in chosen])
    chosen = [row for row in chosen if (found := earlier.get(row.sop_instance_uid)) is None or found.title is not title]
    if not chosen:
        raise NotHeld(f"what is named is rejected for this reason ({title.value}) already")
    stored = [row for row in rows if row.status is InstanceStatus.STORED] or rows
    head = max(stored, key=lambda row: row.stored_at)  # the study row follows the newest stored instance
    patient = (await index.patients_of_studies([study])).get(study)
    references = [Reference(row.study_instance_uid, row.series_instance_uid, row.sop_class_uid, row.sop_instance_uid)
                  for row in chosen]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's notes on odd values may quote patient data
        return build_note(title, _study_attributes(head, rows, patient), references, datetime.now().astimezone(),
                          MANUFACTURER)


def _study_attributes(head: InstanceRow, rows: Sequence[InstanceRow], patient: Patient | None) -> Dataset:
    """The Patient and General Study modules as the index has them: the study's current patient (which follows
    ADT updates and merges), else the patient the instances were stored with."""
    attributes = patient.attributes() if patient is not None else \
        next((row.patient_attributes for row in rows if row.patient_attributes), {})
    dataset = Dataset()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        setattr(dataset, keyword, attributes.get(keyword, ""))
    issuer = attributes.get("IssuerOfPatientID", "")
    if issuer:
        set_issuer(dataset, issuer)  # with its qualifiers when it is an OID, as objects served carry it
    dataset.StudyInstanceUID = head.study_instance_uid
    dataset.StudyDate = head.study_date
    dataset.StudyTime = head.study_time
    dataset.AccessionNumber = head.accession_number
    dataset.ReferringPhysicianName = head.referring_physician_name
    dataset.StudyID = head.study_id
    if head.study_description:
        dataset.StudyDescription = head.study_description
    if head.issuer_of_accession_number:
        item = Dataset()
        if is_uid(head.issuer_of_accession_number):
            item.UniversalEntityID = head.issuer_of_accession_number
            item.UniversalEntityIDType = "ISO"
        else:  # the store stage keeps a Local Namespace Entity ID when there is no universal one
            item.LocalNamespaceEntityID = head.issuer_of_accession_number
        dataset.IssuerOfAccessionNumberSequence = DicomSequence([item])
    if not all(str(element.value).isascii() for element in dataset.iterall() if element.VR != "SQ"):
        dataset.SpecificCharacterSet = UTF8  # the index holds text decoded: written back in UTF-8
    return dataset


async def _publish(settings: Settings, note: Dataset, data: bytes) -> None:
    """Onto the instances topic as a received instance goes; returns once every record of it is durable."""
    origin = Origin(calling_ae=CALLING_AE, called_ae=settings.dicom.ae_title, peer="local", organization="",
                    organization_oid="", may_expire=True)
    bus = build_bus(settings, Metrics())
    await bus.ensure_topics()
    async with bus.producer() as producer:
        publisher = InstancePublisher(producer, settings.topics.instances, origin, EXPLICIT_LITTLE,
                                      KEY_OBJECT_SELECTION_DOCUMENT_STORAGE, str(note.SOPInstanceUID),
                                      f"reject-{uuid.uuid4().hex[:12]}", settings.dicom.max_instance_bytes,
                                      str(note.StudyInstanceUID))
        try:
            await publisher.write(memoryview(data))
            await publisher.finish(settings.dicom.publish_timeout_seconds)
        except BaseException as exc:
            await publisher.abort(str(exc) or type(exc).__name__)
            raise
