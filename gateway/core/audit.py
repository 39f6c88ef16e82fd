"""What the audit trail records: one processing of patient data (or one security event), as a typed value.

The roles build these at the points that matter and hand them to an ``AuditTrail``; the audit role turns each
into a DICOM PS3.15 A.5 audit message for the repository and a row of the local audit log (a disclosure when it
names a patient and a recipient). A record names at most one patient (PS3.15 A.5.3: a transfer of several patients' studies is
one message per patient), so the callers split by patient. Records travel on their own topic as JSON
(``encode``/``decode``); unlike the events topic, they carry patient identifiers, as audit messages must.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, Protocol

import orjson

from gateway.core.events import UndecodableEvent


@dataclass(frozen=True, slots=True)
class Code:
    """A coded value: code, coding scheme, meaning (PS3.15 A.5 ``CodedValueType``)."""

    code: str
    scheme: str
    meaning: str


def _dcm(code: str, meaning: str) -> Code:
    return Code(code, "DCM", meaning)


class Event:
    """PS3.15 A.5.3 EventIDs (CID 400)."""

    APPLICATION_ACTIVITY = _dcm("110100", "Application Activity")
    AUDIT_LOG_USED = _dcm("110101", "Audit Log Used")
    BEGIN_TRANSFERRING = _dcm("110102", "Begin Transferring DICOM Instances")
    INSTANCES_TRANSFERRED = _dcm("110104", "DICOM Instances Transferred")
    STUDY_DELETED = _dcm("110105", "DICOM Study Deleted")
    EXPORT = _dcm("110106", "Export")
    PATIENT_RECORD = _dcm("110110", "Patient Record")
    QUERY = _dcm("110112", "Query")
    SECURITY_ALERT = _dcm("110113", "Security Alert")
    USER_AUTHENTICATION = _dcm("110114", "User Authentication")


class EventType:
    """EventTypeCodes (CID 401, IHE transactions, and ours where neither has one)."""

    APPLICATION_START = _dcm("110120", "Application Start")
    APPLICATION_STOP = _dcm("110121", "Application Stop")
    LOGIN = _dcm("110122", "Login")
    NODE_AUTHENTICATION = _dcm("110126", "Node Authentication")
    SOFTWARE_CONFIGURATION = _dcm("110131", "Software Configuration")
    ASSOCIATION_REFUSED = Code("ASSOCIATION-REFUSED", "99DICOMGW", "Association refused")
    ITI_41 = Code("ITI-41", "IHE Transactions", "Provide and Register Document Set-b")


class Role:
    """RoleIDCodes of active participants (CID 402)."""

    APPLICATION = _dcm("110150", "Application")
    APPLICATION_LAUNCHER = _dcm("110151", "Application Launcher")
    DESTINATION = _dcm("110152", "Destination Role ID")
    SOURCE = _dcm("110153", "Source Role ID")


class Action(StrEnum):
    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class Outcome(StrEnum):
    SUCCESS = "0"
    MINOR_FAILURE = "4"
    SERIOUS_FAILURE = "8"
    MAJOR_FAILURE = "12"


class Interface(StrEnum):
    """The way the data went in or out: what a patient's information request report names."""

    DICOM = "DICOM association"
    C_STORE = "DICOM C-STORE"
    C_FIND = "DICOM C-FIND"
    C_MOVE = "DICOM C-MOVE"
    C_GET = "DICOM C-GET"
    STOW_RS = "DICOMweb STOW-RS"
    QIDO_RS = "DICOMweb QIDO-RS"
    WADO_RS = "DICOMweb WADO-RS"
    XDS = "IHE XDS-I.b"
    HL7 = "HL7 v2 ADT"
    API = "Operators' API"
    FORWARD = "DICOM C-STORE (forward)"
    SYSTEM = "System"


_RECEIPTS = frozenset({Interface.C_STORE, Interface.STOW_RS})

TRAIL_ROLE = "audit-trail"
"""The name of the role that is a process's audit trail (the runtime gives it to the API port's authentication)."""

STOW_CALLING_AE = "STOW-RS"
"""What a STOW-RS instance's envelope names as its calling AE."""


@dataclass(frozen=True, slots=True)
class Participant:
    """An active participant: an AE title, a user, or this gateway's own process."""

    user_id: str
    requestor: bool
    role: Code | None = None
    host: str = ""
    """IP address or host name (NetworkAccessPointID)."""
    user_name: str = ""
    alternative_user_id: str = ""


def this_gateway(ae_title: str, role: Code | None = None, requestor: bool = False) -> Participant:
    """The gateway as an active participant: its AE title, this host, this process (AlternativeUserID)."""
    return Participant(ae_title, requestor, role, socket.gethostname(), alternative_user_id=str(os.getpid()))


def peer(user_id: str, host: str, role: Code | None, requestor: bool = True) -> Participant:
    """The other side: a DICOM AE (its title and address) or an HTTP user."""
    return Participant(user_id, requestor, role, host)


@dataclass(frozen=True, slots=True)
class Study:
    uid: str
    sop_classes: tuple[tuple[str, int], ...] = ()
    """(SOP Class UID, number of instances) pairs."""
    accession: str = ""


@dataclass(frozen=True, slots=True)
class Patient:
    id: str
    issuer: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class Query:
    """What was asked: a DIMSE identifier (``sop_class`` set) or a REST query (``uri`` set), as sent."""

    data: bytes
    sop_class: str = ""
    uri: str = ""
    transfer_syntax: str = ""
    """Of a DIMSE identifier, as it came."""
    encoding: str = "UTF-8"


@dataclass(frozen=True, slots=True)
class Detail:
    """A ParticipantObjectDetail: a type and bytes (base64 in the message)."""

    type: str
    value: bytes


@dataclass(frozen=True, slots=True)
class AuditRecord:
    TYPE: ClassVar[str] = "audit"
    event: Code
    outcome: Outcome
    participants: tuple[Participant, ...]
    interface: Interface
    action: Action | None = None
    types: tuple[Code, ...] = ()
    patient: Patient | None = None
    studies: tuple[Study, ...] = ()
    query: Query | None = None
    submission_set: str = ""
    """The XDS submission set unique ID of an export."""
    details: tuple[Detail, ...] = ()
    """Details of the patient object (an HL7 message and its acknowledgement, for a Patient Record)."""
    recipient: str = ""
    """Whom the data went to when it left the gateway (an AE title, a user, the registry): a disclosure."""
    outcome_text: str = ""
    """Why it failed, in words that name no patient."""
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    node: str = ""
    """The host and process that wrote the record (the syslog HOSTNAME and PROCID); the trail fills them in."""
    process: str = ""

    @property
    def disclosure(self) -> bool:
        return bool(self.recipient) and self.patient is not None


def receipt(record: AuditRecord) -> tuple[Any, ...] | None:
    """What receipts ``merged`` merges have in common; None for a record that is not one."""
    if record.event != Event.INSTANCES_TRANSFERRED or record.interface not in _RECEIPTS \
            or len(record.studies) != 1 or record.recipient:
        return None
    return (record.participants, record.patient, record.studies[0].uid, record.studies[0].accession,
            record.action, record.outcome, record.outcome_text, record.interface, record.node, record.process)


def merged(records: Sequence[AuditRecord]) -> list[AuditRecord]:
    """The records with each study's receipts from one sender merged (DICOM Instances Transferred of C-STORE or
    STOW-RS with the same participants, patient, study, action and outcome): the store stage writes one per batch,
    the repository and the log get one per study and sender for what arrived together. The merged record keeps
    the first's id and time and sums the SOP classes' counts; the others keep their order."""
    out: list[AuditRecord] = []
    open_: dict[tuple[Any, ...], int] = {}
    for record in records:
        key = receipt(record)
        if key is None:
            out.append(record)
            continue
        at = open_.get(key)
        if at is None:
            open_[key] = len(out)
            out.append(record)
            continue
        first = out[at]
        counts: dict[str, int] = dict(first.studies[0].sop_classes)
        for sop_class, count in record.studies[0].sop_classes:
            counts[sop_class] = counts.get(sop_class, 0) + count
        out[at] = replace(first, studies=(replace(first.studies[0], sop_classes=tuple(sorted(counts.items()))),))
    return out


def instant(value: str | None, default: float) -> float:
    """An ISO 8601 date or time (a date alone is its midnight; UTC unless it names an offset) as epoch seconds,
    for the audit log's ``from`` and ``to``; ValueError naming the value otherwise."""
    if not value:
        return default
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not an ISO 8601 date or time: {value[:40]!r}") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def tls_refused(listener: Interface, host: str, ae_title: str, reason: str) -> AuditRecord:
    """Security Alert, Node Authentication failed (PS3.15 A.5.3.11): a peer's TLS handshake failed."""
    return AuditRecord(Event.SECURITY_ALERT, Outcome.MINOR_FAILURE,
                       (peer("-", host, Role.SOURCE), this_gateway(ae_title, Role.DESTINATION)), listener,
                       Action.EXECUTE, (EventType.NODE_AUTHENTICATION,), outcome_text=reason)


class UndecodableAudit(UndecodableEvent):
    """The record on the audit topic is not an audit record this code reads."""


def encode(record: AuditRecord) -> bytes:
    return orjson.dumps(record, default=_bytes)


def _bytes(value: object) -> str:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(type(value).__name__)


def decode(data: bytes) -> AuditRecord:
    try:
        raw: dict[str, Any] = orjson.loads(data)
        return AuditRecord(
            event=_code(raw["event"]), outcome=Outcome(raw["outcome"]),
            participants=tuple(Participant(p["user_id"], bool(p["requestor"]),
                                           _code(p["role"]) if p.get("role") else None, p.get("host", ""),
                                           p.get("user_name", ""), p.get("alternative_user_id", ""))
                               for p in raw["participants"]),
            interface=Interface(raw["interface"]),
            action=Action(raw["action"]) if raw.get("action") else None,
            types=tuple(_code(t) for t in raw.get("types", ())),
            patient=Patient(**raw["patient"]) if raw.get("patient") else None,
            studies=tuple(Study(s["uid"], tuple((c, int(n)) for c, n in s.get("sop_classes", ())),
                                s.get("accession", "")) for s in raw.get("studies", ())),
            query=Query(bytes.fromhex(raw["query"]["data"]), raw["query"].get("sop_class", ""),
                        raw["query"].get("uri", ""), raw["query"].get("transfer_syntax", ""),
                        raw["query"].get("encoding", "UTF-8"))
            if raw.get("query") else None,
            submission_set=raw.get("submission_set", ""),
            details=tuple(Detail(d["type"], bytes.fromhex(d["value"])) for d in raw.get("details", ())),
            recipient=raw.get("recipient", ""), outcome_text=raw.get("outcome_text", ""),
            at=datetime.fromisoformat(raw["at"]), id=raw["id"], node=raw.get("node", ""),
            process=raw.get("process", ""))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UndecodableAudit(f"not an audit record: {type(exc).__name__}") from None


def _code(raw: dict[str, str]) -> Code:
    return Code(raw["code"], raw["scheme"], raw["meaning"])


class AuditTrail(Protocol):
    """Where the roles hand their audit records."""

    async def record(self, record: AuditRecord) -> None:
        """Returns once the record is durable (on the bus): call it before acknowledging what it describes."""

    def note(self, record: AuditRecord) -> None:
        """Record without waiting, where nothing is acknowledged (refused associations, failed logins); a
        record that cannot be made durable is logged, never raised."""


class NoAudit:
    """Auditing off (``GATEWAY_AUDIT__ENABLED=false``)."""

    async def record(self, record: AuditRecord) -> None:
        return None

    def note(self, record: AuditRecord) -> None:
        return None
