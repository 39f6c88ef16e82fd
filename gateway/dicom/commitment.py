"""Storage Commitment Push Model (PS3.4 Annex J): the request as it travels on the bus, and the report.

The storage-commitment service reads an N-ACTION's references with ``parse_action_information``; the notify
worker decides each reference and builds the N-EVENT-REPORT data set with ``report``. As requester (the forward
role) the gateway builds its N-ACTION with ``action_information`` and reads the archive's report with
``parse_event_information``. Failure Reason values are PS3.4 J.3.2.1.1.3 / PS3.7 C.4 statuses.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from gateway.core.uid import is_identifier
from gateway.dicom.dataset import read_prefix

STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
"""The well-known SOP Instance UID every N-ACTION and N-EVENT-REPORT names."""
REQUEST_STORAGE_COMMITMENT = 1
EVENT_ALL_COMMITTED = 1
EVENT_SOME_FAILED = 2

PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
RESOURCE_LIMITATION = 0x0213
CLASS_INSTANCE_CONFLICT = 0x0119
REFERENCED_SOP_CLASS_NOT_SUPPORTED = 0x0122
PERMANENT_FAILURE_REASONS = frozenset({CLASS_INSTANCE_CONFLICT, REFERENCED_SOP_CLASS_NOT_SUPPORTED})
"""Failure Reasons that sending the instance again cannot change; the others (processing failure, no such
instance, resource limitation, anything unknown) may pass on another try."""
DUPLICATE_TRANSACTION_UID = 0x0131
"""Failure Reason (PS3.4 J.3.3.1.1): the Transaction UID of the request is already in use."""

REPORTS_PATH = "/internal/commitment-reports"
"""Where the notify role hands a report to the receiver holding the requester's association (HTTP port)."""
MAX_REFERENCES = 100_000
"""More references than any study holds: a request beyond it is refused rather than tracked. Its worst case
(64-character UIDs: 152 bytes an item, 168 with undefined lengths) is under 17 MB of Action Information, within
the receiver's 32 MiB limit."""
_REFERENCED_SOP_CLASS_UID = 0x00081150
_REFERENCED_SOP_INSTANCE_UID = 0x00081155


class TooManyReferences(ValueError):
    """The request lists more than ``MAX_REFERENCES``: a resource limitation, not a malformed request."""

    def __init__(self, count: int) -> None:
        super().__init__(f"too many references ({count} > {MAX_REFERENCES})")


def parse_action_information(data: bytes, transfer_syntax: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Transaction UID and references of an N-ACTION data set. Raises ValueError naming what is wrong, or
    TooManyReferences once the sequence is counted, before its items are read.

    A request may list up to ``MAX_REFERENCES``: the items' UIDs are read from their raw values, since
    converting 100,000 items through pydicom takes seconds. Each UID must be one an instance can have
    (digits and dots, at most 64 characters, as the C-STORE receiver checks), which also bounds what a
    reference costs on the bus."""
    try:
        dataset, _ = read_prefix(data, transfer_syntax, stop_before=0xFFFFFFFF, complete=True)  # type: ignore[misc]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            transaction_uid = str(dataset.get("TransactionUID", "") or "")
            sequence = dataset.get("ReferencedSOPSequence") or []
    except Exception as exc:
        raise ValueError(f"Action Information does not parse ({type(exc).__name__})") from exc
    if not transaction_uid:
        raise ValueError("Transaction UID (0008,1195) missing")
    if len(transaction_uid) > 64:
        raise ValueError("Transaction UID longer than 64 characters")
    if not sequence:
        raise ValueError("Referenced SOP Sequence (0008,1199) missing or empty")
    if len(sequence) > MAX_REFERENCES:
        raise TooManyReferences(len(sequence))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            references = tuple((_uid(item, _REFERENCED_SOP_CLASS_UID), _uid(item, _REFERENCED_SOP_INSTANCE_UID))
                               for item in sequence)
    except Exception as exc:
        raise ValueError(f"Action Information does not parse ({type(exc).__name__})") from exc
    if any(not cls or not inst for cls, inst in references):
        raise ValueError("a Referenced SOP Sequence item lacks its SOP Class or Instance UID")
    if not all(is_identifier(cls) and is_identifier(inst) for cls, inst in references):
        raise ValueError("a referenced SOP Class or Instance UID is not a UID")
    return transaction_uid, references


@dataclass(frozen=True, slots=True)
class EventInformation:
    """What an archive's N-EVENT-REPORT says of our request."""

    transaction_uid: str
    committed: tuple[tuple[str, str], ...]
    failed: tuple[tuple[str, str, int], ...]
    """(SOP Class UID, SOP Instance UID, Failure Reason); a missing reason reads as processing failure."""
    retrieve_ae_title: str = ""


def parse_event_information(data: bytes, transfer_syntax: str) -> EventInformation:
    """Raises ValueError naming what is wrong; read from raw values, like the request, since a report may list
    as many references as a study has."""
    try:
        dataset, _ = read_prefix(data, transfer_syntax, stop_before=0xFFFFFFFF, complete=True)  # type: ignore[misc]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            transaction_uid = str(dataset.get("TransactionUID", "") or "")
            retrieve_ae_title = str(dataset.get("RetrieveAETitle", "") or "").strip()
            committed = tuple((_uid(item, _REFERENCED_SOP_CLASS_UID), _uid(item, _REFERENCED_SOP_INSTANCE_UID))
                              for item in dataset.get("ReferencedSOPSequence") or [])
            failed = tuple((_uid(item, _REFERENCED_SOP_CLASS_UID), _uid(item, _REFERENCED_SOP_INSTANCE_UID),
                            _reason(item)) for item in dataset.get("FailedSOPSequence") or [])
    except Exception as exc:
        raise ValueError(f"Event Information does not parse ({type(exc).__name__})") from exc
    if not transaction_uid or len(transaction_uid) > 64:
        raise ValueError("Transaction UID (0008,1195) missing or longer than 64 characters")
    if len(committed) + len(failed) > MAX_REFERENCES:
        raise TooManyReferences(len(committed) + len(failed))
    pairs = [*committed, *((cls, inst) for cls, inst, _ in failed)]
    if not all(is_identifier(cls) and is_identifier(inst) for cls, inst in pairs):
        raise ValueError("a referenced SOP Class or Instance UID is missing or not a UID")
    return EventInformation(transaction_uid, committed, failed, retrieve_ae_title)


def action_information(transaction_uid: str, references: list[tuple[str, str]]) -> Dataset:
    """The N-ACTION data set of a request (PS3.4 J.3.2.1.1)."""
    dataset = Dataset()
    dataset.TransactionUID = transaction_uid
    dataset.ReferencedSOPSequence = [_item(Decision(cls, inst)) for cls, inst in references]
    return dataset


def _reason(item: Dataset) -> int:
    reason = item.get("FailureReason")
    return PROCESSING_FAILURE if reason is None else int(reason)


def _uid(item: Dataset, tag: int) -> str:
    """A UI value of a freshly read item: its raw bytes, without the padding."""
    element = item._dict.get(BaseTag(tag))
    if element is None:
        return ""
    if isinstance(element, RawDataElement):
        return (element.value or b"").decode("ascii", "replace").rstrip("\0 ")
    return str(element.value or "")


@dataclass(frozen=True, slots=True)
class Decision:
    """What the report says of one reference: committed, or failed with its Failure Reason."""

    sop_class_uid: str
    sop_instance_uid: str
    failure_reason: int | None = None

    @property
    def committed(self) -> bool:
        return self.failure_reason is None


def report(transaction_uid: str, decisions: list[Decision], retrieve_ae_title: str) -> tuple[int, Dataset]:
    """The Event Type ID and Event Information of the N-EVENT-REPORT (PS3.4 J.3.3)."""
    dataset = Dataset()
    dataset.TransactionUID = transaction_uid
    committed = [d for d in decisions if d.committed]
    failed = [d for d in decisions if not d.committed]
    if committed:
        dataset.RetrieveAETitle = retrieve_ae_title
        dataset.ReferencedSOPSequence = [_item(d) for d in committed]
    if failed:
        dataset.FailedSOPSequence = [_item(d) for d in failed]
    return (EVENT_SOME_FAILED if failed else EVENT_ALL_COMMITTED), dataset


def _item(decision: Decision) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = decision.sop_class_uid
    item.ReferencedSOPInstanceUID = decision.sop_instance_uid
    if decision.failure_reason is not None:
        item.FailureReason = decision.failure_reason
    return item
