"""The ``patient`` role: ADT messages from the hl7 topic applied to the index, and passed on upstream.

Applying (``PatientStage``) is one transaction per message (``gateway.index.patients``), then a
``patient.updated`` event naming the studies whose patient changed. A message the index contradicts (the
listener could not check it, or the index changed since) is dead-lettered with its reason; one applied before
is skipped. Nothing is rewritten in the object store: what is served and built later reads the patient from the
index. Store workers need no signal: their per-study memory of patient attributes only ever admits an instance,
and one it would flag is checked again against the index's current patient (``workers.store``).

Passing on (``Hl7Forwarder``, its own consumer group, so an upstream outage never delays applying) sends each
message as it was received to the configured upstream over MLLP, one at a time and in order: ``AA``/``CA`` is
done, ``AE``/``AR`` (or an answer that is no acknowledgment) is dead-lettered with the upstream's error code,
and an unreachable upstream is an outage (back off, send the same message again): ADT must not overtake ADT.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from gateway.bus import Producer, Record
from gateway.core import audit, events
from gateway.core.audit import AuditRecord, AuditTrail
from gateway.core.errors import Permanent, Unavailable
from gateway.core.events import PatientUpdated
from gateway.hl7 import mllp
from gateway.hl7.adt import AdtRecord
from gateway.hl7.message import Hl7Error, parse
from gateway.index import Patients
from gateway.metrics import Metrics
from gateway.settings import Hl7ForwardSettings, TopicSettings

log = logging.getLogger(__name__)

_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})
_ERROR_CODE = re.compile(r"[0-9]{3,4}")
"""Only what the upstream's answer says in these shapes reaches a dead-letter reason (its texts may quote data)."""


def adt_record(record: Record) -> AdtRecord:
    return AdtRecord.decode(record.value, record.headers)


_AUDIT_IDS = uuid.UUID("5d1f0c3e-8a4b-4c1e-9a57-1f3a3c1b2d40")
"""Namespace of the Patient Record records' ids, derived from the message so that a replay is kept once."""


class PatientStage:
    def __init__(self, index: Patients, producer: Producer, topics: TopicSettings, metrics: Metrics,
                 reregister: bool, audit: AuditTrail, ae_title: str) -> None:
        self._audit = audit
        self._ae_title = ae_title
        self._index = index
        self._producer = producer
        self._topics = topics
        self._metrics = metrics
        self._reregister = reregister

    async def handle(self, record: AdtRecord, source: dict[str, Any]) -> None:
        change = record.change
        now = datetime.now(UTC)
        try:
            applied = await self._index.apply_patient_change(change, record.received_at, now.timestamp(),
                                                             touch=self._reregister)
        except Permanent:
            self._metrics.patient_changes.labels("refused").inc()
            raise
        self._metrics.patient_changes.labels(applied.action).inc()
        log.info("patient change applied", extra={"trigger": change.trigger, "control_id": change.control_id[:64],
                                                  "action": applied.action, "studies": len(applied.studies)})
        # audited and published again for a message applied before: its first run may have died between commit and
        # publish (the records' ids come from the message, so the audit log keeps each once)
        await asyncio.gather(*(self._audit.record(r) for r in self._records(record, applied.action)))
        event = PatientUpdated(message_key=change.message_key, trigger=change.trigger, action=applied.action,
                               study_instance_uids=applied.studies, applied_at=now.isoformat())
        await self._producer.publish(self._topics.events, event.key, events.encode(event))

    def _records(self, record: AdtRecord, action: str) -> list[AuditRecord]:
        """Patient Record (PS3.15 A.5.3.9): the patient created or updated, and for a merge or an identifier change
        the prior identifier deleted; the message itself as a detail."""
        change = record.change
        participants = (audit.peer(change.sender or "-", "", audit.Role.SOURCE),
                        audit.this_gateway(self._ae_title, audit.Role.DESTINATION))
        at = datetime.fromtimestamp(record.received_at, UTC)
        records = [AuditRecord(
            audit.Event.PATIENT_RECORD, audit.Outcome.SUCCESS, participants, audit.Interface.HL7,
            audit.Action.CREATE if action == "created" else audit.Action.UPDATE,
            patient=audit.Patient(change.patient.patient_id, change.patient.issuer),
            details=(audit.Detail("HL7v2 Message", record.message),), at=at,
            id=str(uuid.uuid5(_AUDIT_IDS, f"{change.message_key}|patient")))]
        if change.prior is not None:
            records.append(AuditRecord(
                audit.Event.PATIENT_RECORD, audit.Outcome.SUCCESS, participants, audit.Interface.HL7,
                audit.Action.DELETE, patient=audit.Patient(change.prior.patient_id, change.prior.issuer),
                details=(audit.Detail("HL7v2 Message", record.message),), at=at,
                id=str(uuid.uuid5(_AUDIT_IDS, f"{change.message_key}|prior"))))
        return records

    async def fetched(self) -> None:
        """Each message is applied as it comes."""

    def loops(self) -> list[tuple[float, Callable[[], Awaitable[None]]]]:
        return []


class UpstreamRefused(Permanent):
    """The upstream answered AE or AR (or not with an acknowledgment); the message names its codes only."""


class Hl7Forwarder:
    def __init__(self, settings: Hl7ForwardSettings, metrics: Metrics) -> None:
        assert settings.host is not None
        self._settings = settings
        self._host = settings.host
        self._metrics = metrics
        self._connection: mllp.MllpConnection | None = None

    def _tls(self) -> ssl.SSLContext | None:
        if not self._settings.tls:
            return None
        context = ssl.create_default_context(cafile=self._settings.ca_file)
        if self._settings.cert_file is not None and self._settings.key_file is not None:
            context.load_cert_chain(self._settings.cert_file, self._settings.key_file)
        return context

    async def handle(self, record: AdtRecord, source: dict[str, Any]) -> None:
        timeout = self._settings.timeout_seconds
        try:
            if self._connection is None:
                self._connection = await mllp.MllpConnection.open(self._host, self._settings.port, self._tls(),
                                                                  timeout)
            answer = await self._connection.exchange(record.message, timeout)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            await self.close()
            raise Unavailable(f"HL7 upstream {self._host}:{self._settings.port}: {type(exc).__name__}") from exc
        code, error = _acknowledgment(answer)
        if code in ("AA", "CA"):
            self._metrics.hl7_forwarded.labels("accepted").inc()
            log.info("ADT passed on", extra={"control_id": record.change.control_id, "acknowledgment": code})
            return
        self._metrics.hl7_forwarded.labels("refused").inc()
        raise UpstreamRefused(f"upstream answered {code if code in _CODES else 'no acknowledgment'}"
                              + (f" with error code {error}" if _ERROR_CODE.fullmatch(error) else ""))

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    async def fetched(self) -> None:
        """Each message is sent as it comes."""

    def loops(self) -> list[tuple[float, Callable[[], Awaitable[None]]]]:
        return []


def _acknowledgment(answer: bytes) -> tuple[str, str]:
    """MSA-1 and ERR-3's code of an acknowledgment ("" for what it lacks)."""
    try:
        message = parse(answer, "8859/1")
    except Hl7Error:
        return "", ""
    msa, err = message.segment("MSA"), message.segment("ERR")
    code = msa.value(1).upper() if msa is not None else ""
    return code, err.value(3) if err is not None else ""
