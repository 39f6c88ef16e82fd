"""Store: validate each instance, write it as a Part 10 object with its hash, and index it.

The stage is the sink of the assembler (workers/consume.py). An instance's first bytes are held until its
header up to the pixel data has been read and validated (bounded: at most ``HEADER_LIMIT_BYTES``); that
decides its object key (``studies/...`` or, with error findings, ``quarantine/...``). From then on its bytes
stream into the object store as they arrive. At the end the size and SHA-256 are checked against the
envelope and the object is completed. Once the poll batch has been fed, ``flush`` indexes its completed
instances in one transaction, where the index decides for each whether it is new, a re-delivery (no-op: the
copy just written is removed) or a correction (the configured policy); events then tell later stages, and
only then are the batch's offsets committed.

Failures are the ports' errors, classified by the pool's failure policy: an unavailable object store, index
or bus makes the worker retry the whole instance (or batch) after a back-off; what cannot succeed (size or hash
mismatch, a row the index refuses) goes to the dead-letter topic with its reason and the offsets of its
records, from which it can be re-driven.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
import logging
import time
import uuid
import warnings
import zlib
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from pydicom.dataset import Dataset

from gateway.bus import Producer, Record
from gateway.core import audit, events
from gateway.core.audit import STOW_CALLING_AE, Action, AuditRecord, AuditTrail
from gateway.core.envelope import MAY_EXPIRE, InstanceEnvelope, InstanceHeader
from gateway.core.errors import CannotUnderstand, Permanent, describe, retriable
from gateway.core.iocm import EXPIRY_NOT_AUTHORISED, NoteRefused, RejectionNote, Title
from gateway.core.uid import is_identifier
from gateway.dicom.acse import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from gateway.dicom.dataset import DEFLATED, PIXEL_DATA, attributes_digest, encode, part10_header, read_prefix
from gateway.dicom.rejection import read_note, title_of
from gateway.index import (
    CorrectionPolicy,
    IndexRejected,
    InstanceIndex,
    InstanceRow,
    InstanceStatus,
    Outcome,
    Patients,
    RecordResult,
    Rejections,
)
from gateway.index.rejections import Applied
from gateway.metrics import Metrics
from gateway.objects import ObjectStore, Upload
from gateway.retrieve.disclosure import by_patient
from gateway.settings import IocmSettings, TopicSettings
from workers.validation import (
    Finding,
    ProfileSelector,
    Severity,
    SourceContext,
    ValidationResult,
    apply_changes,
    patient_attributes,
    patient_conflicts,
    validate,
)
from workers.validation.header import first_item, text

log = logging.getLogger(__name__)

_DROPPED = frozenset({Outcome.IGNORED, Outcome.REFUSED})
_AUDIT_IDS = uuid.UUID("0b6c8f4e-2d3a-4f51-9c7e-6a1d2e3f4b5c")
"""Namespace of the ids of records about a rejection note, derived from the note so that a replay is kept once."""

HEADER_LIMIT_BYTES = 8 * 1024 * 1024
STUDY_PATIENT_CACHE = 10_000
"""Studies whose patient attributes a worker keeps in memory."""
UNREADABLE_HEADER = "DICOM-HEADER-UNREADABLE"
INVALID_NOTE = "IOCM-REJECTION-NOTE-INVALID"
"""A KOS titled as a rejection note that cannot be applied as one: quarantined, it withdraws nothing."""
EXPIRED_BATCH = 100
EVENT_INSTANCES = 2000
"""Withdrawn instances per ``instances.rejected`` record: three UIDs each, well inside the bus's 1 MiB."""
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
INFLATE_PIECE_BYTES = 4 * 1024 * 1024
"""Bound on what one step of re-deflating a coerced deflated instance holds inflated."""


def object_key(header: InstanceHeader, quarantined: bool) -> str:
    """One object per received instance: re-deliveries of one receive overwrite it, versions sit side by side.
    Built only from UIDs the receiver checked; one that is not (an envelope of an older receiver) can never be
    stored under a key, so the instance is dead-lettered."""
    uids = (header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid)
    if not all(is_identifier(uid) for uid in uids):
        raise DeadLetter("a Study, Series or SOP Instance UID of the envelope is not a UID")
    key = (f"studies/{header.study_instance_uid}/series/{header.series_instance_uid}/instances/"
           f"{header.sop_instance_uid}/{header.instance_id}.dcm")
    return f"quarantine/{key}" if quarantined else key


def file_meta(header: InstanceHeader) -> bytes:
    """The Part 10 preamble and file meta the gateway writes in front of the data set as received."""
    return part10_header(header.sop_class_uid, header.sop_instance_uid, header.transfer_syntax_uid,
                       IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION, header.calling_ae)


@dataclass(frozen=True, slots=True)
class Stored:
    """An instance whose object is complete, waiting for its batch's index transaction."""

    row: InstanceRow
    records: list[Record]
    note: RejectionNote | None = None
    """The rejection note the instance is, to be applied where it stands in the batch."""
    may_expire: bool = False
    """Its sender may send a retention-expiry note (``envelope.MAY_EXPIRE``)."""
    peer: str = ""
    called_ae: str = ""
    user: str = ""

    def sender(self) -> audit.Participant:
        """Who sent it, as the audit trail names them: the calling AE (with its DICOM user), or the HTTP user."""
        stow = self.row.source_ae == STOW_CALLING_AE
        return audit.Participant(self.user if stow and self.user else self.row.source_ae, True, audit.Role.SOURCE,
                                 self.peer if stow else self.peer.rpartition(":")[0], "" if stow else self.user)


class DeadLetter(Permanent):
    """The instance can never be stored as it is; it goes to the dead-letter topic with this reason."""


@dataclass(slots=True)
class _Pending:
    header: InstanceHeader
    sha256: hashlib._Hash = field(default_factory=hashlib.sha256)
    """Of the data set as received: checked against the envelope."""
    stored_sha256: hashlib._Hash | None = None
    """Of the data set as stored, once coercion rewrote the header; until then what is stored is what arrived,
    and hashing it twice would cost a pass over every byte."""
    size: int = 0
    prefix: bytearray = field(default_factory=bytearray)
    validation: ValidationResult | None = None
    key: str = ""
    upload: Upload | None = None
    dataset: Dataset | None = None
    coerced: Dataset | None = None
    """The header as it will be stored, when coercion changed it."""
    patient: dict[str, str] = field(default_factory=dict)
    attributes_sha256: str = ""
    recoder: _Redeflate | None = None
    """For a deflated instance whose header coercion changed: its bytes are inflated and deflated again."""
    note: RejectionNote | None = None


class _Redeflate:
    """Coercion of a Deflated Explicit VR Little Endian data set (PS3.5 A.5): the coerced header in front of
    the rest of the inflated data set, deflated again, piece by piece so memory stays bounded."""

    def __init__(self, header: bytes, header_end: int) -> None:
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._header: bytes | None = header
        self._skip = header_end

    def feed(self, data: bytes) -> bytes:
        out = []
        for piece in self._inflated(data):
            if self._skip:
                cut = min(self._skip, len(piece))
                self._skip -= cut
                piece = piece[cut:]
            if not self._skip and self._header is not None:
                out.append(self._deflater.compress(self._header))
                self._header = None
            if piece:
                out.append(self._deflater.compress(piece))
        return b"".join(out)

    def _inflated(self, data: bytes) -> Iterator[bytes]:
        piece = self._inflater.decompress(data, INFLATE_PIECE_BYTES)
        while piece:
            yield piece
            piece = self._inflater.decompress(self._inflater.unconsumed_tail, INFLATE_PIECE_BYTES)

    def flush(self) -> bytes:
        return self._deflater.flush()


class StoreIndex(InstanceIndex, Patients, Rejections, Protocol):
    """Instances recorded, the current patient of a study asked when an instance differs from it, and the
    rejection notes applied."""


def _least_conflicts(admitted: list[dict[str, str]], dataset: Dataset) -> list[Finding]:
    """No conflict when the instance agrees with one of the admitted attribute sets; else the first one's."""
    found = [patient_conflicts(seen, dataset) for seen in admitted] or [[]]
    return [] if not all(found) else found[0]


class StoreStage:
    def __init__(
        self,
        objects: ObjectStore,
        index: StoreIndex,
        producer: Producer,
        topics: TopicSettings,
        profiles: ProfileSelector,
        policy: CorrectionPolicy,
        iocm: IocmSettings,
        metrics: Metrics,
        audit_trail: AuditTrail,
        ae_title: str,
    ) -> None:
        self._objects = objects
        self._audit = audit_trail
        self._ae_title = ae_title
        self._iocm = iocm
        self._resend = iocm.policy()
        self._index = index
        self._producer = producer
        self._topics = topics
        self._profiles = profiles
        self._policy = policy
        self._metrics = metrics
        self._pending: dict[str, _Pending] = {}
        self._stored: list[Stored] = []
        self._study_patients: OrderedDict[str, list[dict[str, str]]] = OrderedDict()

    async def begin(self, header: InstanceHeader) -> None:
        self._pending[header.instance_id] = _Pending(header)

    async def data(self, instance_id: str, data: bytes) -> None:
        pending = self._pending[instance_id]
        pending.sha256.update(data)
        pending.size += len(data)
        if pending.upload is not None:
            await self._write(pending, data)
            return
        pending.prefix += data
        await self._try_decide(pending, complete=False)

    async def end(self, instance: InstanceEnvelope, data: bytes, records: list[Record]) -> None:
        """Complete the instance's object; it is indexed with the rest of its batch by ``flush``."""
        pending = self._pending.pop(instance.instance_id)
        try:
            row = await self._finish(pending, instance, data)
        except BaseException:
            await self._abort(pending)
            raise
        note = pending.note if row.status is InstanceStatus.STORED else None
        if pending.note is not None and note is None:
            log.warning("rejection note quarantined: it withdraws nothing", extra={
                "instance_id": row.instance_id, "findings": sorted({f["code"] for f in row.findings})})
        self._stored.append(Stored(row, records, note, records[-1].header(MAY_EXPIRE) == b"1", instance.peer,
                                   instance.called_ae, instance.user))
        if row.status is InstanceStatus.STORED and row.patient_attributes:
            self._remember_patient(row.study_instance_uid,
                                   self._study_patients.get(row.study_instance_uid) or [row.patient_attributes])

    async def flush(self) -> list[tuple[Stored, Exception | None]]:
        """Index the instances completed since the last flush in one transaction (a rejection note, where it
        stands, in one of its own), then tell later stages, before the batch's offsets are committed. An outage
        raises: nothing of the batch is committed and it comes again (objects are overwritten, the index
        recognises what it has, a note applied before is a duplicate). A row the index refuses comes back with its
        error, to be dead-lettered; the others are recorded singly around it."""
        batch, self._stored = self._stored, []
        if not batch:
            return []
        now = datetime.now(UTC)
        rows = [dataclasses.replace(stored.row, stored_at=now) for stored in batch]
        results: list[RecordResult | Exception] = []
        applied: dict[int, Applied] = {}
        start = 0
        for position, stored in enumerate(batch):
            if stored.note is not None:
                results += await self._record(rows[start:position])
                note = await self._apply_note(stored, rows[position], now.timestamp())
                if isinstance(note, Exception):
                    results.append(note)
                else:
                    applied[position] = note
                    results += await self._record(rows[position:position + 1])
                start = position + 1
        results += await self._record(rows[start:])
        outcome: list[tuple[Stored, Exception | None]] = []
        deliveries = []
        moved: dict[str, list[InstanceRow]] = {}
        for position, (stored, row, result) in enumerate(zip(batch, rows, results, strict=True)):
            if position in applied and stored.note is not None:  # applied, even when its own row failed after
                deliveries += await self._announce(stored, stored.note, applied[position], now)
            if isinstance(result, Exception):
                outcome.append((stored, result))
                continue
            if not result.kept and result.current.storage_key != row.storage_key:
                await self._objects.delete(row.storage_key)  # a copy of what is kept, or an instance dropped
            deliveries.append(await self._emit(result, row, stored.records, stored.note is not None))
            if result.outcome is Outcome.REPLACED and result.previous is not None \
                    and result.previous.study_instance_uid != row.study_instance_uid:
                moved.setdefault(result.previous.study_instance_uid, []).append(result.previous)
            outcome.append((stored, None))
        for study, previous in moved.items():
            deliveries += await self._withdrawn(study, Title.WORKLIST, "", "", [
                (p.series_instance_uid, p.sop_class_uid, p.sop_instance_uid) for p in previous], now)
        await asyncio.gather(*deliveries, *(self._audit.record(record)
                                            for record in received(batch, results)))
        return outcome

    async def _record(self, rows: list[InstanceRow]) -> list[RecordResult | Exception]:
        if not rows:
            return []
        try:
            return list(await self._index.record_instances(rows, self._policy, self._resend))
        except Exception as exc:
            if retriable(exc) is True:
                raise
            return [await self._record_alone(row) for row in rows]

    async def _apply_note(self, stored: Stored, row: InstanceRow, now: float) -> Applied | Exception:
        """Apply a rejection note before its own row is recorded; a note refused is not kept."""
        note = stored.note
        assert note is not None
        grace = self._iocm.retention_grace_seconds
        try:
            if note.title is Title.RETENTION_EXPIRED and not stored.may_expire:  # what the receiver checks too
                raise NoteRefused(EXPIRY_NOT_AUTHORISED, "retention-expiry note from a sender without the expire "
                                                         "permission")
            applied = await self._index.apply_rejection(
                note, row.received_sha256, row.source_ae, now,
                now + grace if note.title is Title.RETENTION_EXPIRED else None)
        except (NoteRefused, IndexRejected) as exc:
            await self._objects.delete(row.storage_key)
            status = f" (0x{exc.status:04X})" if isinstance(exc, NoteRefused) else ""
            return DeadLetter(f"rejection note refused{status}: {exc}")
        except Exception as exc:
            if retriable(exc) is True:
                raise
            return exc
        log.info("rejection note applied", extra={
            "sop_instance_uid": note.sop_instance_uid, "title": note.title.value, "withdrawn": len(applied.withdrawn),
            "awaited": applied.awaited, "duplicate": applied.duplicate})
        self._metrics.rejections.labels(note.title.value).inc(0 if applied.duplicate else len(applied.withdrawn))
        return applied

    async def discard(self, instance_id: str, reason: str) -> None:
        pending = self._pending.pop(instance_id, None)
        if pending is not None:
            log.info("instance discarded", extra={"instance_id": instance_id, "reason": reason})
            await self._abort(pending)

    async def abandon_all(self) -> None:
        """The worker stops before its batch is committed: every instance of it will be delivered again."""
        self._stored.clear()
        for instance_id in list(self._pending):
            await self.discard(instance_id, "worker stopping; the instance will be delivered again")

    async def _finish(self, pending: _Pending, instance: InstanceEnvelope, data: bytes) -> InstanceRow:
        pending.sha256.update(data)
        pending.size += len(data)
        if pending.upload is None:
            pending.prefix += data
            await self._try_decide(pending, complete=True)
        else:
            await self._write(pending, data)
        if pending.recoder is not None:
            assert pending.stored_sha256 is not None  # a recoder is there because coercion changed the header
            pending.stored_sha256.update(tail := pending.recoder.flush())
            await _upload(pending, tail)
        sha256 = pending.sha256.hexdigest()
        if pending.size != instance.size or sha256 != instance.sha256:
            raise DeadLetter(f"data set of {pending.size} bytes / sha256 {sha256} does not match the envelope "
                             f"({instance.size} bytes / {instance.sha256}): corrupted on the bus")
        assert pending.upload is not None and pending.validation is not None
        stored_sha256 = (pending.stored_sha256 or pending.sha256).hexdigest()
        with self._metrics.object_store_seconds.time():
            stored = await pending.upload.complete(stored_sha256)
        pending.upload = None
        return self._row(pending, instance, stored.size, stored_sha256)

    async def _record_alone(self, row: InstanceRow) -> RecordResult | Exception:
        try:
            return await self._index.record_instance(row, self._policy)
        except IndexRejected as exc:
            await self._objects.delete(row.storage_key)  # never an object the index does not know
            return DeadLetter(f"the index refused the instance: {exc}")  # ours: the driver's error type, no value
        except Exception as exc:
            if retriable(exc) is True:
                raise
            return exc  # unclassified: the failure policy gives it a few more tries

    def _row(self, pending: _Pending, instance: InstanceEnvelope, object_size: int, stored_sha256: str) -> InstanceRow:
        assert pending.validation is not None
        dataset = pending.coerced if pending.coerced is not None else pending.dataset
        header = _StudyHeader.of(dataset) if dataset is not None else _StudyHeader.of_envelope(instance)
        quarantined = pending.validation.has_errors
        return InstanceRow(
            sop_instance_uid=instance.sop_instance_uid, sop_class_uid=instance.sop_class_uid,
            study_instance_uid=instance.study_instance_uid, series_instance_uid=instance.series_instance_uid,
            patient_id=header.patient_id, issuer_of_patient_id=header.issuer_of_patient_id,
            accession_number=header.accession_number, modality=instance.modality,
            study_date=instance.study_date, study_time=instance.study_time,
            study_description=header.study_description, study_id=header.study_id,
            referring_physician_name=header.referring_physician_name,
            issuer_of_accession_number=header.issuer_of_accession_number,
            attributes_sha256=pending.attributes_sha256, series_number=header.series_number,
            instance_number=header.instance_number,
            transfer_syntax_uid=instance.transfer_syntax_uid, storage_key=pending.key, size=object_size,
            sha256=stored_sha256, received_sha256=instance.sha256, source_ae=instance.calling_ae,
            source_organization_oid=instance.organization_oid,
            status=InstanceStatus.QUARANTINED if quarantined else InstanceStatus.STORED,
            findings=tuple({k: str(v) for k, v in f.to_dict().items()} for f in pending.validation.findings),
            instance_id=instance.instance_id, received_at=datetime.fromisoformat(instance.received_at),
            stored_at=datetime.now(UTC), patient_attributes=pending.patient,
        )

    async def _emit(self, result: RecordResult, row: InstanceRow, records: list[Record],
                    note: bool) -> Awaitable[None]:
        """Send the instance's event; the awaitable completes once the bus has it."""
        outcome = result.outcome
        kind: type[events.InstanceEvent]
        extra: dict[str, str] = {}
        if result.current.status is InstanceStatus.REJECTED or outcome in (Outcome.IGNORED, Outcome.REFUSED):
            kind = events.InstanceWithdrawn
            if result.rejection is not None:
                extra = {"title": result.rejection.title.value, "note_sop_instance_uid": result.rejection.note_uid}
        elif outcome in (Outcome.INSERTED, Outcome.REPLACED, Outcome.RESTORED):
            kind = (events.InstanceQuarantined if row.status is InstanceStatus.QUARANTINED
                    else events.RejectionNoteStored if note else events.InstanceStored)
        else:
            kind = (events.InstanceDuplicate if outcome in (Outcome.DUPLICATE, Outcome.VARIANT)
                    else events.CorrectionRefused)
        shown = result.current if outcome is Outcome.RESTORED else row
        event = kind(
            outcome=outcome.value, sop_instance_uid=row.sop_instance_uid, sop_class_uid=row.sop_class_uid,
            study_instance_uid=row.study_instance_uid, series_instance_uid=row.series_instance_uid,
            status=result.current.status.value if kind is events.InstanceWithdrawn else shown.status.value,
            version=result.current.version, instance_id=shown.instance_id, storage_key=shown.storage_key,
            size=shown.size, sha256=shown.sha256, source_ae=row.source_ae, stored_at=row.stored_at.isoformat(),
            source={"topic": records[0].topic, "partition": records[0].partition,
                    "offsets": [r.offset for r in records]}, **extra)
        delivered = await self._producer.send(self._topics.events, event.key, events.encode(event))
        self._metrics.instances_stored.labels(kind.TYPE).inc()
        if result.written and result.current.status is not InstanceStatus.REJECTED:
            self._metrics.bytes_stored.inc(row.size)
            for finding in row.findings:
                self._metrics.validation_findings.labels(finding["code"], finding["severity"]).inc()
        log.info("instance stored", extra={"instance_id": row.instance_id, "outcome": outcome.value,
                                           "status": result.current.status.value, "storage_key": row.storage_key})
        return delivered

    async def _announce(self, stored: Stored, note: RejectionNote, applied: Applied,
                        now: datetime) -> list[Awaitable[None]]:
        """``instances.rejected`` for each study the note withdrew instances from (the note's own study at least:
        forwarding looks there for the note), and DICOM Study Deleted for each patient of those instances (ids
        from the note, so that a re-delivery is kept once)."""
        by_study = applied.by_study() or {note.study_instance_uid: []}
        sent: list[Awaitable[None]] = []
        withdrawn_classes = [(r.study_instance_uid, r.sop_class_uid) for r in applied.withdrawn]
        for patient, studies in await by_patient(self._index, withdrawn_classes) if withdrawn_classes else []:
            sent.append(self._audit.record(AuditRecord(
                audit.Event.STUDY_DELETED, audit.Outcome.SUCCESS,
                (stored.sender(), audit.this_gateway(stored.called_ae or "-", audit.Role.DESTINATION)),
                audit.Interface.STOW_RS if stored.row.source_ae == STOW_CALLING_AE else audit.Interface.C_STORE,
                Action.DELETE, patient=patient if patient.id else None, studies=studies,
                outcome_text=f"withdrawn by rejection note: {note.title.value} {note.title.meaning}",
                id=str(uuid.uuid5(_AUDIT_IDS, f"{note.sop_instance_uid}|{patient.id}|{patient.issuer}")))))
        for study, withdrawn in by_study.items():
            sent += await self._withdrawn(study, note.title, note.sop_instance_uid, note.study_instance_uid, [
                (r.series_instance_uid, r.sop_class_uid, r.sop_instance_uid) for r in withdrawn], now)
        return sent

    async def _withdrawn(self, study: str, title: Title, note_uid: str, note_study: str,
                         instances: list[tuple[str, str, str]], now: datetime) -> list[Awaitable[None]]:
        """The events saying the study's instances were withdrawn, in parts that each fit one bus record. A note
        of "" is a correction that moved them to another study (IOCM: an incorrect worklist entry there)."""
        parts = [instances[n:n + EVENT_INSTANCES] for n in range(0, len(instances), EVENT_INSTANCES)] or [[]]
        sent = []
        for number, part in enumerate(parts, start=1):
            event = events.InstancesRejected(
                study_instance_uid=study, title=title.value, note_sop_instance_uid=note_uid,
                note_study_instance_uid=note_study, instances=tuple(part), rejected_at=now.isoformat(), part=number,
                parts=len(parts))
            sent.append(await self._producer.send(self._topics.events, event.key, events.encode(event)))
        if not note_uid:
            log.info("instances moved to another study", extra={"from_study": study, "instances": len(instances)})
        return sent

    async def delete_expired(self, owns: Callable[[str], bool]) -> int:
        """Delete the rows, then the objects, of the owned instances whose retention-expiry grace has ended: a
        row is never left without its object (a crash in between leaves objects nothing refers to, named in the
        log line before they go). Each study's deletion is on the audit trail before it happens (DICOM Study
        Deleted): a crash in between records it again, never not at all."""
        by_study: dict[str, list[str]] = {}
        for uid, study in await self._index.expired_rejections(time.time(), EXPIRED_BATCH):
            if owns(study):
                by_study.setdefault(study, []).append(uid)
        if not by_study:
            return 0
        patients = await self._index.patients_of_studies(list(by_study))
        deleted = 0
        for study, uids in by_study.items():
            patient = patients.get(study)
            await self._audit.record(AuditRecord(
                audit.Event.STUDY_DELETED, audit.Outcome.SUCCESS,
                (audit.this_gateway(self._ae_title, None, requestor=True),), audit.Interface.SYSTEM, Action.DELETE,
                patient=audit.Patient(patient.patient_id, patient.issuer) if patient is not None else None,
                studies=(audit.Study(study),),
                outcome_text=f"{len(uids)} instances deleted: data retention policy expired (113039)"))
            for uid in uids:
                keys = await self._index.forget_instance(uid, time.time())
                log.info("rejected instance deleted: its retention expired", extra={
                    "sop_instance_uid": uid, "study_instance_uid": study, "storage_keys": keys})
                for key in keys:
                    await self._objects.delete(key)
                deleted += 1
        return deleted

    async def _try_decide(self, pending: _Pending, complete: bool) -> None:
        """Read and validate the header once enough of it is here; then open the object under its key."""
        prefix = bytes(pending.prefix)
        if pending.header.transfer_syntax_uid == DEFLATED:
            prefix = zlib.decompressobj(-zlib.MAX_WBITS).decompress(prefix, HEADER_LIMIT_BYTES)
        limit_reached = len(pending.prefix) >= HEADER_LIMIT_BYTES
        try:
            parsed = read_prefix(prefix, pending.header.transfer_syntax_uid, PIXEL_DATA, complete or limit_reached)
        except Exception:
            parsed = None
            if not (complete or limit_reached):
                return
        if parsed is None and not (complete or limit_reached):
            return
        dataset, header_end = parsed if parsed is not None else (None, 0)
        header = pending.header
        source = SourceContext(header.calling_ae, header.organization, header.organization_oid)
        if dataset is None:
            finding = Finding(UNREADABLE_HEADER, Severity.ERROR, "", 0, "the data set header does not parse")
            pending.validation = ValidationResult("none", (finding,), ())
        else:
            # awaited first: catch_warnings swaps process-wide filters, which a task running meanwhile would undo
            seen = await self._study_patient(header.study_instance_uid)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # pydicom's notes quote values; the findings say what matters
                    attributes_sha256 = attributes_digest(dataset)
                    validation = validate(dataset, self._profiles.for_calling_ae(header.calling_ae), source)
                    effective = dataset
                    if validation.changes:
                        effective = copy.deepcopy(dataset)
                        apply_changes(effective, validation.changes)
                    patient = patient_attributes(effective)
                    conflicts = _least_conflicts(seen, effective)
            except Exception as exc:
                # pydicom parses lazily: a value it cannot convert (an unknown VR after a length that overran,
                # an FD of the wrong length) is a fault of this instance, the same every time, not an outage
                log.warning("data set header does not convert: quarantined",
                            extra={"instance_id": header.instance_id, "error": describe(exc)})
                finding = Finding(UNREADABLE_HEADER, Severity.ERROR, "", 0,
                                  f"the data set header does not convert ({type(exc).__name__})")
                pending.validation = ValidationResult("none", (finding,), ())
            else:
                if conflicts:
                    conflicts = await self._recheck_patient(header.study_instance_uid, effective, conflicts)
                pending.dataset, pending.attributes_sha256, pending.patient = dataset, attributes_sha256, patient
                pending.coerced = effective if validation.changes else None
                noted = self._note(pending, effective, complete)
                pending.validation = ValidationResult(validation.profile,
                                                      validation.findings + tuple(conflicts) + noted,
                                                      validation.changes)
        pending.key = object_key(header, pending.validation.has_errors)
        metadata = {
            "sop-instance-uid": header.sop_instance_uid, "sop-class-uid": header.sop_class_uid,
            "study-instance-uid": header.study_instance_uid, "series-instance-uid": header.series_instance_uid,
            "transfer-syntax-uid": header.transfer_syntax_uid, "source-ae": header.calling_ae,
            "instance-id": header.instance_id,
        }
        if pending.validation.has_errors:
            metadata["findings"] = ",".join(sorted({f.code for f in pending.validation.findings}))
        pending.upload = self._objects.begin(pending.key, metadata)
        await _upload(pending, file_meta(header))
        data, pending.prefix = bytes(pending.prefix), bytearray()
        if pending.coerced is not None:
            pending.stored_sha256 = hashlib.sha256()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if header.transfer_syntax_uid == DEFLATED:  # every byte from here on goes through it
                    pending.recoder = _Redeflate(encode(pending.coerced, EXPLICIT_LITTLE), header_end)
                else:
                    data = encode(pending.coerced, header.transfer_syntax_uid) + data[header_end:]
            log.info("header coerced", extra={"instance_id": header.instance_id,
                                              "changes": [c.to_dict() for c in pending.validation.changes]})
        await self._write(pending, data)

    @staticmethod
    def _note(pending: _Pending, dataset: Dataset, complete: bool) -> tuple[Finding, ...]:
        """Recognise a rejection note; one that cannot be applied as one (IOD broken, or larger than the header
        window, so not read whole) is a finding that quarantines it."""
        if title_of(dataset) is None:
            return ()
        if not complete:
            return (Finding(INVALID_NOTE, Severity.ERROR, "", 0,
                            f"rejection note larger than {HEADER_LIMIT_BYTES} bytes: not read whole"),)
        try:
            pending.note = read_note(dataset)
        except CannotUnderstand as exc:
            return (Finding(INVALID_NOTE, Severity.ERROR, "", 0, str(exc)),)
        return ()

    async def _study_patient(self, study_instance_uid: str) -> list[dict[str, str]]:
        """The patient attributes an instance of the study may have: those already stored for it, and the
        study's current patient once an ADT message changed it (see ``_recheck_patient``). A study's instances
        all come through one partition, hence this worker, so the answer is kept: the index is asked once per
        study, not once per instance (which would read the whole study again for every instance of a large one)."""
        known = self._study_patients.get(study_instance_uid)
        if known is not None:
            self._study_patients.move_to_end(study_instance_uid)
            return known
        earlier = await self._index.study_instances(study_instance_uid)
        found = next((row.patient_attributes for row in earlier if row.patient_attributes), {})
        if found:
            self._remember_patient(study_instance_uid, [found])
        return [found] if found else []

    async def _recheck_patient(self, study_instance_uid: str, dataset: Dataset,
                               conflicts: list[Finding]) -> list[Finding]:
        """An instance that differs from what this worker remembers of its study may follow an ADT message
        applied since (a corrected name, a merge into another patient): it is admitted when it agrees with the
        study's current patient in the index, which is remembered beside the stored attributes. So the memory
        needs no invalidation: it only ever admits, and what it would flag is checked against the index."""
        current = (await self._index.patients_of_studies([study_instance_uid])).get(study_instance_uid)
        if current is None:
            return conflicts
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if patient_conflicts(current.attributes(), dataset):
                return conflicts
        self._remember_patient(study_instance_uid,
                               [*self._study_patients.get(study_instance_uid, []), current.attributes()])
        return []

    def _remember_patient(self, study_instance_uid: str, admitted: list[dict[str, str]]) -> None:
        self._study_patients[study_instance_uid] = admitted[-4:]
        self._study_patients.move_to_end(study_instance_uid)
        while len(self._study_patients) > STUDY_PATIENT_CACHE:
            self._study_patients.popitem(last=False)

    async def _write(self, pending: _Pending, data: bytes) -> None:
        """Write data set bytes, hashing what is stored where it differs from what arrived (coerced)."""
        if pending.recoder is not None:
            data = pending.recoder.feed(data)
        if pending.stored_sha256 is not None:
            pending.stored_sha256.update(data)
        await _upload(pending, data)

    async def _abort(self, pending: _Pending) -> None:
        if pending.upload is not None:
            try:
                await pending.upload.abort()
            except Exception as exc:
                log.warning("abort of a partial object failed", extra={"key": pending.key, "error": describe(exc)})
            pending.upload = None


def received(batch: list[Stored], results: list[RecordResult | Exception]) -> list[AuditRecord]:
    """DICOM Instances Transferred, one record per study, sender and patient of the batch (PS3.15 A.5.3.4): Create
    where the index did not hold them, Update where they replaced what it held, Read where it had them already;
    instances that go to the dead letters in a record of their own, failed. A rejected instance sent again and
    dropped or refused is left out: it was not taken (dcm4chee-arc-light#2083 asked the same). A batch processed
    again after a crash writes the records again, as they were (a receive that is current was created by it)."""
    groups: dict[tuple[str, str, str, audit.Participant, str, bool], list[tuple[InstanceRow, RecordResult | None]]] = {}
    for stored, result in zip(batch, results, strict=True):
        if isinstance(result, RecordResult) and result.outcome in _DROPPED:
            continue
        row = stored.row
        key = (row.study_instance_uid, row.patient_id, row.issuer_of_patient_id, stored.sender(), stored.called_ae,
               isinstance(result, Exception))
        groups.setdefault(key, []).append((row, None if isinstance(result, Exception) else result))
    records = []
    for (study, patient, issuer, sender, called_ae, failed), rows in groups.items():
        outcomes = {_replayed(row, result) for row, result in rows if result is not None}
        action = (Action.UPDATE if Outcome.REPLACED in outcomes else
                  Action.CREATE if failed or outcomes & {Outcome.INSERTED, Outcome.RESTORED} else Action.READ)
        classes = Counter(row.sop_class_uid for row, _ in rows)
        records.append(AuditRecord(
            audit.Event.INSTANCES_TRANSFERRED,
            audit.Outcome.SERIOUS_FAILURE if failed else audit.Outcome.SUCCESS,
            (sender, audit.this_gateway(called_ae, audit.Role.DESTINATION)),
            audit.Interface.STOW_RS if rows[0][0].source_ae == STOW_CALLING_AE else audit.Interface.C_STORE, action,
            patient=audit.Patient(patient, issuer) if patient else None,
            studies=(audit.Study(study, tuple(sorted(classes.items())), rows[0][0].accession_number),),
            outcome_text="not stored: in the dead letters" if failed else "", at=rows[0][0].received_at))
    return records


def _replayed(row: InstanceRow, result: RecordResult) -> Outcome:
    """The outcome as the receive first had it: a batch processed again after a crash finds its own receive current
    (the same instance id), a duplicate only to the index."""
    if result.outcome is Outcome.DUPLICATE and result.current.instance_id == row.instance_id:
        return Outcome.INSERTED
    return result.outcome


@dataclass(frozen=True, slots=True)
class _StudyHeader:
    """What the index keeps of an instance's header, read from it as stored (coerced, when coercion changed
    it), so that the index and the object never disagree. Identifiers lose their insignificant padding."""

    patient_id: str
    issuer_of_patient_id: str
    accession_number: str
    issuer_of_accession_number: str
    study_description: str
    study_id: str
    referring_physician_name: str
    series_number: int | None
    instance_number: int | None

    @classmethod
    def of_envelope(cls, instance: InstanceEnvelope) -> _StudyHeader:
        """The header did not parse: what the receiver read of it."""
        return cls(instance.patient_id, instance.issuer_of_patient_id, instance.accession_number, "", "", "", "",
                   None, None)

    @classmethod
    def of(cls, dataset: Dataset) -> _StudyHeader:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's notes on odd values may quote patient data
            return cls(
                text(dataset, "PatientID"),
                text(dataset, "IssuerOfPatientID")
                or _item_text(dataset, "IssuerOfPatientIDQualifiersSequence", "UniversalEntityID"),
                text(dataset, "AccessionNumber"),
                _item_text(dataset, "IssuerOfAccessionNumberSequence", "UniversalEntityID")
                or _item_text(dataset, "IssuerOfAccessionNumberSequence", "LocalNamespaceEntityID"),
                text(dataset, "StudyDescription"), text(dataset, "StudyID"),
                text(dataset, "ReferringPhysicianName"), _integer(dataset.get("SeriesNumber")),
                _integer(dataset.get("InstanceNumber")))


def _item_text(dataset: Dataset, sequence: str, keyword: str) -> str:
    item = first_item(dataset, sequence)
    return text(item, keyword) if item is not None else ""


async def _upload(pending: _Pending, data: bytes) -> None:
    assert pending.upload is not None
    await pending.upload.write(data)


def _integer(value: object) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None
