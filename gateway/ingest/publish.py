"""Publishing one received instance into the bus as its fragments arrive, never holding it whole.

The first bytes are kept until the header up to Series Instance UID parses (the key and the envelope need
it); from then on the data set is cut into records of just under 1 MiB and sent, with a bounded number
in flight. ``finish`` sends the last bytes with the envelope and returns only once every record is
durable: that is when the receiver may answer C-STORE Success.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
import warnings
import zlib
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime

from pydicom.dataset import Dataset

from gateway.bus import MAX_RECORD_BYTES, BusError, Producer
from gateway.core import envelope
from gateway.core.envelope import InstanceEnvelope, InstanceHeader
from gateway.core.errors import CannotUnderstand, DataSetMismatch, OutOfResources
from gateway.core.uid import is_identifier
from gateway.dicom.dataset import DEFLATED, read_prefix
from gateway.dicom.header import ISSUER_QUALIFIERS, Malformed, read_values

log = logging.getLogger(__name__)


class OtherStudy(DataSetMismatch):
    """The instance belongs to another study than the request named (dcm4chee's, and so Kanta's, code)."""

    status = 0xC409

CHUNK_BYTES = MAX_RECORD_BYTES - 16 * 1024
"""Data per record; the rest of the 1 MiB record is left for the key and headers (the envelope)."""
IN_FLIGHT_CHUNKS = 4
HEADER_LIMIT_BYTES = 8 * 1024 * 1024
_FIRST_PARSE_AT = 16 * 1024
_LAST_HEADER_TAG = 0x0020000E
"""Series Instance UID: the envelope needs nothing beyond it."""
_ISSUER_OF_PATIENT_ID = 0x00100021
_HEADER_TAGS = {
    "sop_class_uid": 0x00080016,
    "sop_instance_uid": 0x00080018,
    "study_instance_uid": 0x0020000D,
    "series_instance_uid": 0x0020000E,
    "patient_id": 0x00100020,
    "accession_number": 0x00080050,
    "modality": 0x00080060,
    "study_date": 0x00080020,
    "study_time": 0x00080030,
}
_WANTED = frozenset([*_HEADER_TAGS.values(), _ISSUER_OF_PATIENT_ID])


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an instance came from: the association's side of the envelope."""

    calling_ae: str
    called_ae: str
    peer: str
    organization: str
    organization_oid: str
    may_expire: bool = False
    """The sender may send a retention-expiry note (the ``expire`` permission, an operator)."""
    user: str = ""
    """The user the sender authenticated as, if any (for the audit trail)."""


@dataclass(frozen=True, slots=True)
class Header:
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


_HEADER_KEYWORDS = {
    "sop_class_uid": "SOPClassUID",
    "sop_instance_uid": "SOPInstanceUID",
    "study_instance_uid": "StudyInstanceUID",
    "series_instance_uid": "SeriesInstanceUID",
    "patient_id": "PatientID",
    "accession_number": "AccessionNumber",
    "modality": "Modality",
    "study_date": "StudyDate",
    "study_time": "StudyTime",
}


def _text(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    return "" if value is None else str(value).strip()


def _issuer(dataset: Dataset) -> str:
    issuer = _text(dataset, "IssuerOfPatientID")
    if issuer:
        return issuer
    for item in dataset.get("IssuerOfPatientIDQualifiersSequence") or []:
        entity = _text(item, "UniversalEntityID")
        if entity:
            return entity
    return ""


def parse_header(prefix: bytes, transfer_syntax: str, complete: bool) -> Header | None:
    """The header from the first bytes of a data set; None while more bytes are needed to reach it.

    The fast walker reads it; a data set it cannot follow (say, implicit VR where the context said
    explicit) goes to pydicom, which is slower and more forgiving.
    """
    try:
        values = read_values(prefix, transfer_syntax, _WANTED, _LAST_HEADER_TAG, complete)
    except Malformed:
        return _parse_header_with_pydicom(prefix, transfer_syntax, complete)
    if values is None:
        return None
    return Header(**{name: values.get(tag, "") for name, tag in _HEADER_TAGS.items()},
                  issuer_of_patient_id=values.get(_ISSUER_OF_PATIENT_ID) or values.get(ISSUER_QUALIFIERS, ""))


def _parse_header_with_pydicom(prefix: bytes, transfer_syntax: str, complete: bool) -> Header | None:
    try:
        parsed = read_prefix(prefix, transfer_syntax, _LAST_HEADER_TAG + 1, complete)
    except Exception as exc:
        raise CannotUnderstand(f"data set does not parse: {type(exc).__name__}") from exc
    if parsed is None:
        return None
    dataset, _ = parsed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's notes on odd values may quote patient data
        try:
            return Header(**{name: _text(dataset, keyword) for name, keyword in _HEADER_KEYWORDS.items()},
                          issuer_of_patient_id=_issuer(dataset))
        except Exception as exc:
            raise CannotUnderstand(f"data set header does not parse: {type(exc).__name__}") from exc


def _consume_outcome(delivery: asyncio.Future[None]) -> None:
    if not delivery.cancelled():
        delivery.exception()


class InstancePublisher:
    """Streams one instance of one C-STORE into the instances topic."""

    def __init__(
        self,
        producer: Producer,
        topic: str,
        origin: Origin,
        transfer_syntax: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        correlation_id: str,
        max_instance_bytes: int,
        study_instance_uid: str = "",
    ) -> None:
        """``study_instance_uid``: the study the instance must belong to (a STOW-RS request to one study)."""
        self._producer = producer
        self._study = study_instance_uid
        self._topic = topic
        self._origin = origin
        self._transfer_syntax = transfer_syntax
        self._sop_class_uid = sop_class_uid
        self._sop_instance_uid = sop_instance_uid
        self._correlation_id = correlation_id
        self._max_instance_bytes = max_instance_bytes
        self.instance_id = uuid.uuid4().hex
        self._received_at = datetime.now(UTC).isoformat()
        self._sha256 = hashlib.sha256()
        self._size = 0
        self._buffer = bytearray()
        self._envelope_header: InstanceHeader | None = None
        self._key = b""
        self._next_parse_at = _FIRST_PARSE_AT
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS) if transfer_syntax == DEFLATED else None
        self._inflated = bytearray()
        self._sequence = 0
        self._in_flight: deque[Awaitable[None]] = deque()

    @property
    def size(self) -> int:
        return self._size

    async def write(self, fragment: memoryview) -> None:
        """Take the next fragment of the data set. Raises DicomStatusError once the instance is refused."""
        self._size += len(fragment)
        if self._size > self._max_instance_bytes:
            raise OutOfResources(f"instance exceeds the {self._max_instance_bytes}-byte limit")
        self._sha256.update(fragment)
        self._buffer += fragment
        if self._envelope_header is None:
            self._try_header(complete=False, fragment=fragment)
        while self._envelope_header is not None and len(self._buffer) > CHUNK_BYTES:
            chunk = self._buffer
            self._buffer = bytearray(chunk[CHUNK_BYTES:])
            del chunk[CHUNK_BYTES:]
            await self._send(chunk, envelope.CHUNK)

    async def finish(self, timeout: float) -> InstanceEnvelope:
        """Send the rest with the envelope; return once every record of the instance is durable."""
        if self._envelope_header is None:
            self._try_header(complete=True)
        assert self._envelope_header is not None
        result = self._envelope_header.completed(self._size, self._sha256.hexdigest(), self._sequence + 1)
        try:
            async with asyncio.timeout(timeout):
                await self._send(self._buffer, envelope.END, result.to_json())
                while self._in_flight:
                    await self._in_flight.popleft()
        except TimeoutError as exc:
            raise OutOfResources("bus did not confirm the instance in time") from exc
        except BusError as exc:
            raise OutOfResources(f"bus unavailable: {exc}") from exc
        return result

    async def abort(self, reason: str) -> None:
        """Tell consumers to drop what was sent of this instance (best effort: they also time orphans out)."""
        for delivery in self._in_flight:
            asyncio.ensure_future(delivery).add_done_callback(_consume_outcome)
        self._in_flight.clear()
        if self._sequence == 0 or not self._key:
            return
        try:
            async with asyncio.timeout(5):
                await self._producer.publish(
                    self._topic, self._key, reason.encode()[:1024], self._headers(envelope.ABORT)
                )
        except (TimeoutError, BusError) as exc:
            log.warning("abort marker not published", extra={"instance_id": self.instance_id, "error": str(exc)})

    def _headers(self, kind: bytes, envelope_json: bytes | None = None) -> list[tuple[str, bytes]]:
        headers = [
            (envelope.KIND, kind),
            (envelope.INSTANCE, self.instance_id.encode()),
            (envelope.SEQUENCE, str(self._sequence).encode()),
        ]
        if envelope_json is not None:
            headers.append((envelope.ENVELOPE, envelope_json))
            if self._origin.may_expire:
                headers.append((envelope.MAY_EXPIRE, b"1"))
        elif self._sequence == 0 and self._envelope_header is not None:
            headers.append((envelope.BEGIN, self._envelope_header.to_json()))
        return headers

    async def _send(self, data: bytearray, kind: bytes, envelope_json: bytes | None = None) -> None:
        try:
            if len(self._in_flight) >= IN_FLIGHT_CHUNKS:
                await self._in_flight.popleft()
            delivery = await self._producer.send(
                self._topic, self._key, bytes(data), self._headers(kind, envelope_json)
            )
        except BusError as exc:
            raise OutOfResources(f"bus unavailable: {exc}") from exc
        self._in_flight.append(delivery)
        self._sequence += 1

    def _try_header(self, complete: bool, fragment: memoryview | None = None) -> None:
        if self._inflater is not None:
            if fragment is not None:
                self._inflated += self._inflater.decompress(fragment, HEADER_LIMIT_BYTES - len(self._inflated))
            prefix = self._inflated
        else:
            prefix = self._buffer
        if not complete and len(prefix) < self._next_parse_at:
            return
        if not complete and len(prefix) >= HEADER_LIMIT_BYTES:
            raise CannotUnderstand("header before Series Instance UID exceeds 8 MiB")
        self._next_parse_at = 2 * len(prefix)
        header = parse_header(bytes(prefix), self._transfer_syntax, complete)
        if header is None:
            return
        for name, uid in (("Study", header.study_instance_uid), ("Series", header.series_instance_uid),
                          ("SOP", header.sop_instance_uid)):
            if not is_identifier(uid):  # they name the instance's bus key, object and index row
                raise CannotUnderstand(f"{name} Instance UID is missing or not a UID")
        if header.sop_class_uid != self._sop_class_uid:
            raise DataSetMismatch("SOP Class UID differs from the C-STORE request")
        if header.sop_instance_uid != self._sop_instance_uid:
            raise DataSetMismatch("SOP Instance UID differs from the C-STORE request")
        if self._study and header.study_instance_uid != self._study:
            raise OtherStudy("Study Instance UID differs from the request's study")
        self._key = header.study_instance_uid.encode()
        self._inflated = bytearray()
        origin = self._origin
        self._envelope_header = InstanceHeader(
            instance_id=self.instance_id,
            correlation_id=self._correlation_id,
            sop_class_uid=header.sop_class_uid,
            sop_instance_uid=header.sop_instance_uid,
            study_instance_uid=header.study_instance_uid,
            series_instance_uid=header.series_instance_uid,
            patient_id=header.patient_id,
            issuer_of_patient_id=header.issuer_of_patient_id,
            accession_number=header.accession_number,
            modality=header.modality,
            study_date=header.study_date,
            study_time=header.study_time,
            transfer_syntax_uid=self._transfer_syntax,
            calling_ae=origin.calling_ae,
            called_ae=origin.called_ae,
            peer=origin.peer,
            organization=origin.organization,
            organization_oid=origin.organization_oid,
            received_at=self._received_at,
            user=origin.user,
        )

