"""ADT messages as patient changes: A08/A31 (and A01, A04, A05, A28) update a patient, A40 merges MRG-1 into
PID-3, A47 changes a patient's identifier from MRG-1 to PID-3 (HL7 v2.5 chapter 3; IHE ITI-30/31; dcm4chee's
semantics).

Only what the gateway applies is read: the identifier with a trusted assigning authority (the hetu OID
1.2.246.21 or a configured local one), the name (PID-5), birth date (PID-7) and sex (PID-8). An empty field
leaves the stored value alone and the HL7 null ``""`` clears it. Everything refused here is refused before the
message is acknowledged, with the error code and location dcm4chee gives for it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Self

import orjson

from gateway import hetu
from gateway.core.events import UndecodableEvent
from gateway.hl7.message import REJECT, Hl7Error, Message, Segment

UPDATES = frozenset({"A01", "A04", "A05", "A08", "A28", "A31"})
"""Admit, register, pre-admit, update, add person, update person: each carries the patient's current PID, which
updates the patient (as dcm4chee takes them), so a HIS broadcasting its ADT feed is not answered AR for these."""
MERGE, CHANGE_ID = "A40", "A47"
TRIGGERS = UPDATES | {MERGE, CHANGE_ID}
NULL = '""'
_DATE = re.compile(r"[0-9]{8}(?:[0-9]{0,6}(?:\.[0-9]{1,4})?)?(?:[+-][0-9]{4})?")
_NAME = re.compile(r"[^\\=\x00-\x1f\x7f]*")
_NAME_LENGTH = 64
"""A DICOM person name's component group (the whole alphabetic name) holds 64 characters (PS3.5 6.2)."""
_KEY_PART_LENGTH = 199
_KEY_PART = re.compile(r"[^\x00-\x1f\x7f]{1,199}")
_SEX = {"M": "M", "F": "F", "O": "O", "A": "O", "N": "O", "U": ""}
_ID = re.compile(r"[^\\^=\x00-\x1f\x7f]{1,64}")


@dataclass(frozen=True, slots=True)
class PatientKey:
    patient_id: str
    issuer: str
    """The assigning authority's universal ID (an OID), else its namespace ID: what the index keys on."""


@dataclass(frozen=True, slots=True)
class PatientChange:
    trigger: str
    message_key: str
    """Sending application, facility and MSH-10: what makes a re-sent message the same message."""
    control_id: str
    sender: str
    patient: PatientKey
    prior: PatientKey | None
    attributes: dict[str, str] = field(default_factory=dict)
    """PatientName, PatientBirthDate, PatientSex the message sets ("" clears); those it leaves out are absent."""
    charset: str = ""
    """The DICOM Specific Character Set matching the message's (MSH-18)."""

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: bytes) -> Self:
        value: dict[str, Any] = orjson.loads(data)
        prior = value.pop("prior")
        return cls(patient=PatientKey(**value.pop("patient")), prior=PatientKey(**prior) if prior else None, **value)


KEY = b"adt"
"""Every record of the hl7 topic has this key: one partition keeps ADT messages in the order acknowledged."""
_CHANGE, _RECEIVED = "gw-adt", "gw-received"


@dataclass(frozen=True, slots=True)
class AdtRecord:
    """An acknowledged ADT message on the hl7 topic: the message as received (what is passed on) and the change
    read from it when it was accepted (what is applied)."""

    TYPE: ClassVar[str] = "hl7.adt"
    change: PatientChange
    message: bytes
    received_at: float

    def headers(self) -> list[tuple[str, bytes]]:
        return [(_CHANGE, self.change.to_json()), (_RECEIVED, repr(self.received_at).encode())]

    @classmethod
    def decode(cls, value: bytes, headers: Sequence[tuple[str, bytes]]) -> Self:
        """Raises UndecodableEvent (the record is dead-lettered) when the record is not one."""
        found = dict(headers)
        try:
            return cls(PatientChange.from_json(found[_CHANGE]), value, float(found[_RECEIVED]))
        except (KeyError, ValueError, TypeError) as exc:
            raise UndecodableEvent(f"not an ADT record ({type(exc).__name__})") from None


def change_of(message: Message, trusted: Collection[str], test_identities: bool = False) -> PatientChange:
    """The change an ADT message asks for; raises Hl7Error (AR for what this gateway does not take, AE for a
    message it cannot apply)."""
    kind, trigger = message.type
    if kind != "ADT":
        raise Hl7Error(200, "MSH^1^9^1^1", "message type is not ADT", REJECT)
    if trigger not in TRIGGERS:
        raise Hl7Error(201, "MSH^1^9^1^2", "trigger event is not one of A01, A04, A05, A08, A28, A31, A40, A47",
                       REJECT)
    if not message.control_id:
        raise Hl7Error(101, "MSH^1^10^1^1", "missing message control ID")
    for number, value in ((10, message.control_id), (3, message.sender[0]), (4, message.sender[1])):
        if not _KEY_PART.fullmatch(value) and value:
            raise Hl7Error(102, f"MSH^1^{number}^1^1", f"MSH-{number} is longer than {_KEY_PART_LENGTH} characters "
                           "or has control characters")
    if sum(segment.name in ("PID", "MRG") for segment in message.segments) > (2 if trigger in (MERGE, CHANGE_ID)
                                                                               else 1):
        raise Hl7Error(100, "PID^2", "more than one patient in the message: send one per message")
    pid = message.segment("PID")
    if pid is None:
        raise Hl7Error(101, "PID^1^3^1^1", "missing patient identifier")
    patient = _identifier(pid, 3, "PID^1^3^1^1", trusted, test_identities)
    prior = None
    if trigger in (MERGE, CHANGE_ID):
        mrg = message.segment("MRG")
        if mrg is None:
            raise Hl7Error(101, "MRG^1^1^1^1", "missing prior patient identifier")
        prior = _identifier(mrg, 1, "MRG^1^1^1^1", trusted, test_identities)
        if prior == patient:
            raise Hl7Error(205, "MRG^1^1", "prior patient identifier matches patient identifier")
    application, facility = message.sender
    return PatientChange(trigger=trigger, message_key=f"{application}|{facility}|{message.control_id}",
                         control_id=message.control_id, sender=f"{application}^{facility}", patient=patient,
                         prior=prior, attributes=_attributes(pid), charset=message.dicom_charset)


def _identifier(segment: Segment, number: int, location: str, trusted: Collection[str],
                test_identities: bool) -> PatientKey:
    """The first repetition whose assigning authority is trusted (the hetu OID first)."""
    if not any(segment.delimiters.leaf(raw, 1) for raw in segment.repetitions(number)):
        raise Hl7Error(101, location, "missing patient identifier" if segment.name == "PID"
                       else "missing prior patient identifier")
    candidates = []
    for repetition, raw in enumerate(segment.repetitions(number)):
        value = segment.delimiters.leaf(raw, 1)
        authority = segment.delimiters.leaf(raw, 4, 2) or segment.delimiters.leaf(raw, 4, 1)
        if value and value != NULL and authority in trusted:
            candidates.append((authority != hetu.HETU_OID, repetition, PatientKey(value, authority)))
    if not candidates:
        raise Hl7Error(204, location, "no patient identifier with a trusted assigning authority")
    key = min(candidates)[2]
    if not _ID.fullmatch(key.patient_id):
        raise Hl7Error(102, location, "patient identifier is longer than 64 characters or has control characters")
    if key.issuer == hetu.HETU_OID:
        fault = hetu.fault(key.patient_id)
        if fault is not None:
            raise Hl7Error(102, location, f"patient identifier is not a valid personal identity code ({fault.value})")
        if hetu.parse(key.patient_id).is_temporary and not test_identities:
            raise Hl7Error(102, location, "patient identifier is a test identity code (900-999) under 1.2.246.21")
    return key


def _attributes(pid: Segment) -> dict[str, str]:
    attributes: dict[str, str] = {}
    name = _name(pid)
    if name is not None:
        attributes["PatientName"] = name
    birth = pid.value(7)
    if birth == NULL:
        attributes["PatientBirthDate"] = ""
    elif birth:
        try:
            if not _DATE.fullmatch(birth):
                raise ValueError
            datetime.strptime(birth[:8], "%Y%m%d")
        except ValueError:
            raise Hl7Error(102, "PID^1^7^1^1", "date of birth is not a whole date (YYYYMMDD)") from None
        attributes["PatientBirthDate"] = birth[:8]
    sex = pid.value(8)
    if sex == NULL:
        attributes["PatientSex"] = ""
    elif sex:
        if sex.upper() not in _SEX:
            raise Hl7Error(103, "PID^1^8^1^1", "administrative sex is not a value of HL7 table 0001")
        attributes["PatientSex"] = _SEX[sex.upper()]
    return attributes


def _name(pid: Segment) -> str | None:
    """PID-5 as a DICOM person name (family^given^middle^prefix^suffix): the legal name (type L) if given,
    else the first. None when the field is empty, "" for the HL7 null."""
    names = pid.repetitions(5)
    if not names:
        return None
    if names[0] == NULL:
        return ""
    leaf = pid.delimiters.leaf
    chosen = next((raw for raw in names if leaf(raw, 7) == "L"), names[0])
    family, given, middle, suffix, prefix = (leaf(chosen, n) for n in (1, 2, 3, 4, 5))
    components = (family, given, middle, prefix, suffix)
    name = "^".join(components).rstrip("^")
    if len(name) > _NAME_LENGTH or not _NAME.fullmatch(name) or any("^" in part for part in components):
        raise Hl7Error(102, "PID^1^5^1^1", f"the name is longer than {_NAME_LENGTH} characters or has characters a "
                       "DICOM person name cannot hold (backslash, ^ inside a component, =, control characters)")
    return name
