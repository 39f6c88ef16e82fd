"""Every record on the events topic, as a typed, versioned value, encoded and decoded here and nowhere else.

Producers build one of these values and ``encode`` it; consumers ``decode`` a record into one and dispatch on
its class. A record carries ``type`` and ``v`` (records written before versioning have no ``v`` and are
version 1); an event is written as the lowest version that can say what it says, so older consumers still read
what they can act on. An unknown type, a version newer than this code knows, or a record that does not match
its type raises ``UndecodableEvent`` (permanent: the record is dead-lettered with that reason), so a rolling
upgrade that adds an event never stalls an older consumer. Fields added later must have defaults; fields a record has
beyond the ones known here are ignored.

Events name instances and studies by UID only: no patient data travels on this topic.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson

from gateway.core.errors import Permanent


class UndecodableEvent(Permanent):
    """The record is not an event this code can act on; the message says why (no values quoted)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Event:
    TYPE: ClassVar[str]
    VERSION: ClassVar[int] = 1
    KEY: ClassVar[str] = "study_instance_uid"
    """The field whose value keys the record: what keeps an entity's events in order on one partition."""

    @property
    def key(self) -> bytes:
        return str(getattr(self, self.KEY)).encode()

    @property
    def record_version(self) -> int:
        """The ``v`` this record is written with."""
        return self.VERSION


@dataclass(frozen=True, slots=True, kw_only=True)
class _InstanceEvent(_Event):
    """The store stage recorded a received instance in the index."""

    outcome: str
    """The index's decision: inserted, replaced, duplicate, rejected or kept-first."""
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    status: str
    version: int
    instance_id: str
    storage_key: str
    size: int
    sha256: str
    source_ae: str
    stored_at: str
    source: dict[str, Any] = field(default_factory=dict)
    """The instance's records on the instances topic (topic, partition, offsets)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceStored(_InstanceEvent):
    TYPE = "instance.stored"


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceQuarantined(_InstanceEvent):
    TYPE = "instance.quarantined"


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceDuplicate(_InstanceEvent):
    TYPE = "instance.duplicate"


@dataclass(frozen=True, slots=True, kw_only=True)
class CorrectionRefused(_InstanceEvent):
    """A changed instance under a known SOP Instance UID that the correction policy did not take."""

    TYPE = "instance.rejected"


@dataclass(frozen=True, slots=True, kw_only=True)
class RejectionNoteStored(_InstanceEvent):
    """A rejection note was stored (and applied: ``instances.rejected`` follows). Not routed like an image: it
    goes only where the instances it withdraws went."""

    TYPE = "instance.rejection-note"


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceWithdrawn(_InstanceEvent):
    """An instance an IOCM rejection note names arrived: stored ``rejected`` (the note came first, outcome
    ``inserted``), or, rejected before and sent again, ``ignored`` or ``refused`` as its title says."""

    TYPE = "instance.withdrawn"

    title: str = ""
    """The rejection's document title code (113001, 113037, 113038, 113039)."""
    note_sop_instance_uid: str = ""


InstanceEvent = (InstanceStored | InstanceQuarantined | InstanceDuplicate | CorrectionRefused | InstanceWithdrawn
                 | RejectionNoteStored)


@dataclass(frozen=True, slots=True, kw_only=True)
class InstancesRejected(_Event):
    """An IOCM rejection note was applied (or a correction moved instances to another study): the study's
    instances it withdrew, no longer available here. One event per study the note touches; the note itself is
    an instance of ``note_study_instance_uid``, to be forwarded where the withdrawn instances went."""

    TYPE = "instances.rejected"

    study_instance_uid: str
    title: str
    """The document title code; 113038 for a correction that moved instances to another study."""
    note_sop_instance_uid: str
    """Empty for a move (no note was sent)."""
    note_study_instance_uid: str
    instances: tuple[tuple[str, str, str], ...]
    """(Series Instance UID, SOP Class UID, SOP Instance UID) withdrawn from the study: this part's."""
    rejected_at: str
    """UTC, ISO 8601."""
    part: int = 1
    """A rejection of more instances than one record holds comes in ``parts`` records, each acted on alone."""
    parts: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitmentRequested(_Event):
    """A Storage Commitment N-ACTION the receiver accepted (PS3.4 J.3.2), to be decided and reported.

    A request with more references than one record holds is published as ``parts`` records, all with the same
    Transaction UID (one partition) and request time. Version 2 added ``part`` and ``parts``; a request in one
    record is still written as version 1, while the parts of a split one are version 2, so that a consumer
    older than the split dead-letters them (re-drivable) instead of reporting a part as the whole request."""

    TYPE = "commitment.requested"
    VERSION = 2
    KEY = "transaction_uid"

    transaction_uid: str
    requester_ae: str
    called_ae: str
    peer: str
    references: tuple[tuple[str, str], ...]
    """(Referenced SOP Class UID, Referenced SOP Instance UID) in the order the requester listed them."""
    requested_at: str
    """UTC, ISO 8601."""
    reply_to: str = ""
    """The receiver's HTTP base URL when the report may go back on the requester's association."""
    part: int = 1
    """Which of the request's records this is, from 1; ``references`` are this part's, in the request's order."""
    parts: int = 1

    @property
    def record_version(self) -> int:
        return self.VERSION if self.parts > 1 else 1


@dataclass(frozen=True, slots=True, kw_only=True)
class StudyStable(_Event):
    """No instance arrived for the stability time: this generation of the study is complete here."""

    TYPE = "study.stable"

    study_instance_uid: str
    generation: int
    stable_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StudyRegistered(_Event):
    """The study's manifest of this generation is registered in the XDS affinity domain."""

    TYPE = "study.registered"

    study_instance_uid: str
    generation: int
    document_unique_id: str
    entry_uuid: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitmentReported(_Event):
    """An archive we forwarded to reported on our storage-commitment request (N-EVENT-REPORT, PS3.4 J.3.3),
    on whichever receiver it reached; the forward role applies it to what it sent.

    A report with more references than one record holds is published as ``parts`` records, each applied by
    itself (a decision is per instance)."""

    TYPE = "commitment.reported"
    KEY = "transaction_uid"

    transaction_uid: str
    reporter_ae: str
    event_type: int
    committed: tuple[tuple[str, str], ...]
    """(Referenced SOP Class UID, Referenced SOP Instance UID) the archive committed."""
    failed: tuple[tuple[str, str, int], ...]
    """(SOP Class UID, SOP Instance UID, Failure Reason) it did not."""
    reported_at: str
    """UTC, ISO 8601."""
    retrieve_ae_title: str = ""
    part: int = 1
    parts: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class PatientUpdated(_Event):
    """The patient role applied an ADT message: the studies whose patient attributes or patient changed (moved by
    a merge or an identifier change). Named by the message's sender and control ID, never by patient data."""

    TYPE = "patient.updated"
    KEY = "message_key"

    message_key: str
    trigger: str
    action: str
    study_instance_uids: tuple[str, ...]
    applied_at: str
    """UTC, ISO 8601."""


Event = (InstanceEvent | CommitmentRequested | CommitmentReported | StudyStable | StudyRegistered | PatientUpdated
         | InstancesRejected)

_TYPES: dict[str, type[_Event]] = {cls.TYPE: cls for cls in (
    InstanceStored, InstanceQuarantined, InstanceDuplicate, CorrectionRefused, InstanceWithdrawn, RejectionNoteStored,
    CommitmentRequested, CommitmentReported, StudyStable, StudyRegistered, PatientUpdated, InstancesRejected)}


def encode(event: Event) -> bytes:
    return orjson.dumps({"type": event.TYPE, "v": event.record_version,
                         **{f.name: getattr(event, f.name) for f in dataclasses.fields(event)}})


def decode(data: bytes) -> Event:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UndecodableEvent(f"not JSON ({exc.msg} at {exc.pos})") from None
    if not isinstance(value, dict):
        raise UndecodableEvent("not a JSON object")
    kind = value.get("type")
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise UndecodableEvent(f"unknown event type {str(kind)[:64]!r}")
    version = value.get("v", 1)
    if not isinstance(version, int) or not 1 <= version <= cls.VERSION:
        raise UndecodableEvent(f"{cls.TYPE} version {str(version)[:16]} is not one this gateway knows "
                               f"(1..{cls.VERSION}); upgrade this consumer")
    arguments: dict[str, Any] = {}
    for name, (kind_of, required) in _FIELDS[cls].items():
        if name not in value:
            if required:
                raise UndecodableEvent(f"{cls.TYPE} without {name}")
            continue
        arguments[name] = _checked(cls.TYPE, name, value[name], kind_of)
    return typing.cast(Event, cls(**arguments))


def _fields(cls: type[_Event]) -> dict[str, tuple[Any, bool]]:
    """Each field's type and whether a record must have it (no default)."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls)}


_FIELDS = {cls: _fields(cls) for cls in _TYPES.values()}


def _checked(event_type: str, name: str, value: Any, kind: Any) -> Any:
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind in (str, int) and isinstance(value, kind) and not isinstance(value, bool):
        return value
    if typing.get_origin(kind) is dict and isinstance(value, dict):
        return value
    if kind == tuple[str, ...] and isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    if kind == tuple[tuple[str, str], ...] and isinstance(value, list) and all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(uid, str) for uid in pair)
            for pair in value):
        return tuple((first, second) for first, second in value)
    if kind == tuple[tuple[str, str, str], ...] and isinstance(value, list) and all(
            isinstance(triple, list) and len(triple) == 3 and all(isinstance(uid, str) for uid in triple)
            for triple in value):
        return tuple((first, second, third) for first, second, third in value)
    if kind == tuple[tuple[str, str, int], ...] and isinstance(value, list) and all(
            isinstance(triple, list) and len(triple) == 3 and isinstance(triple[0], str)
            and isinstance(triple[1], str) and isinstance(triple[2], int) and not isinstance(triple[2], bool)
            for triple in value):
        return tuple((first, second, third) for first, second, third in value)
    raise UndecodableEvent(f"{event_type} field {name} is not a {getattr(kind, '__name__', kind)}")
