"""IHE IOCM (RAD TF-3 4.66): the rejection note's titles, what each may overwrite, what a rejected instance sent
again gets, and the statuses that say why a note is refused.

The statuses are dcm4chee's (PS3.4 leaves the A7xx and Cxxx ranges to the implementation), so a sender that
knows the reference archive, as the national one is, reads them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from gateway.core.errors import DicomStatusError

DUPLICATE_NOTE = 0xA770
"""The note's SOP Instance UID is known with other content."""
SUBSEQUENT_OCCURRENCE = 0xA771
"""A rejected instance sent again, under a title whose policy refuses it."""
CLASS_INSTANCE_CONFLICT = 0xA773
ALREADY_REJECTED = 0xA774
"""An instance is rejected under a title the new one may not overwrite."""
EXPIRY_NOT_AUTHORISED = 0xA775
"""A retention-expiry note (it deletes) from a caller not allowed to send one."""


class Title(StrEnum):
    """CID 7011 titles (scheme DCM) that make a KOS a rejection note."""

    QUALITY = "113001"
    PATIENT_SAFETY = "113037"
    WORKLIST = "113038"
    RETENTION_EXPIRED = "113039"

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS = {
    Title.QUALITY: "Rejected for Quality Reasons",
    Title.PATIENT_SAFETY: "Rejected for Patient Safety Reasons",
    Title.WORKLIST: "Incorrect Modality Worklist Entry",
    Title.RETENTION_EXPIRED: "Data Retention Policy Expired",
}

OVERWRITES: dict[Title, frozenset[Title]] = {
    Title.QUALITY: frozenset(),
    Title.PATIENT_SAFETY: frozenset({Title.QUALITY}),
    Title.WORKLIST: frozenset({Title.QUALITY, Title.PATIENT_SAFETY}),
    Title.RETENTION_EXPIRED: frozenset({Title.QUALITY, Title.PATIENT_SAFETY, Title.WORKLIST}),
}
"""Which earlier rejection a later title may replace (the reference archive's defaults): a weightier reason
overrides a lighter one, never the other way."""


class Resend(StrEnum):
    """What a rejected instance sent again gets."""

    IGNORE = "ignore"
    """Success, and nothing stored."""
    REJECT = "reject"
    """Refused with 0xA771 (IHE: an archive shall not accept hidden instances again)."""
    RESTORE = "restore"
    """Stored again and visible: the rejection is no longer in force."""


DEFAULT_RESEND: dict[Title, Resend] = {
    Title.QUALITY: Resend.IGNORE,
    Title.PATIENT_SAFETY: Resend.REJECT,
    Title.WORKLIST: Resend.REJECT,
    Title.RETENTION_EXPIRED: Resend.RESTORE,
}


class NoteRefused(DicomStatusError):
    """The note cannot be applied to what is held; ``status`` is the reference archive's code for why."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status


@dataclass(frozen=True, slots=True)
class Reference:
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True, slots=True)
class RejectionNote:
    sop_instance_uid: str
    study_instance_uid: str
    title: Title
    references: tuple[Reference, ...]
