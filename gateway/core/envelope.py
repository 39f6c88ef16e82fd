"""What travels on the bus for each received instance, so that no later stage re-parses the header.

An instance is a run of records on the instances topic, all keyed by its Study Instance UID (one partition,
in order): zero or more ``chunk`` records, then one ``end`` record that carries the last bytes and the
envelope. A consumer acts on an instance only once its ``end`` arrives and size and SHA-256 match; an
``abort`` record (or a run with no end) means the sender failed mid-instance and the chunks are discarded.
Chunks hold the data set bytes exactly as received, without the Part 10 file meta the gateway adds on storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Self

import orjson

KIND = "gw-kind"
INSTANCE = "gw-instance"
SEQUENCE = "gw-seq"
BEGIN = "gw-begin"
"""On the first record of a multi-record instance: its InstanceHeader, so a consumer can name and route the
object before the last byte arrives."""
ENVELOPE = "gw-envelope"
MAY_EXPIRE = "gw-may-expire"
"""On the end record when the sender may send an IOCM retention-expiry note (which deletes): the store stage
applies one only then. A record header, not an envelope field, so that older consumers read the envelope as
before."""

CHUNK = b"chunk"
END = b"end"
ABORT = b"abort"


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """Everything about an instance that is known once its header has been read."""

    instance_id: str
    """Unique per receive attempt: a re-sent instance gets a new one, and duplicates are resolved downstream."""
    correlation_id: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str
    accession_number: str
    modality: str
    study_date: str
    study_time: str
    transfer_syntax_uid: str
    calling_ae: str
    called_ae: str
    peer: str
    organization: str
    organization_oid: str
    received_at: str
    """UTC, ISO 8601."""
    user: str = field(default="", kw_only=True)
    """Who sent it, when the sender authenticated as a user (DICOM User Identity, the HTTP token's subject):
    for the audit trail. Records written before it was added have none."""

    def to_json(self) -> bytes:
        return orjson.dumps(self)

    def completed(self, size: int, sha256: str, chunks: int) -> InstanceEnvelope:
        return InstanceEnvelope(**{name: getattr(self, name) for name in _HEADER_FIELDS},
                                size=size, sha256=sha256, chunks=chunks)

    @classmethod
    def from_json(cls, data: bytes) -> Self:
        values: dict[str, Any] = orjson.loads(data)
        return cls(**values)


@dataclass(frozen=True, slots=True)
class InstanceEnvelope(InstanceHeader):
    """The header plus what is known only at the end: on the ``end`` record."""

    size: int
    sha256: str
    """Of the data set bytes exactly as received."""
    chunks: int
    """Records of the instance, the end record included."""


_HEADER_FIELDS = tuple(f.name for f in fields(InstanceHeader))
