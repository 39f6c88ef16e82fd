"""Failures that carry the DICOM status a peer should see; the receiver maps nothing else to a status."""

from __future__ import annotations


class DicomStatusError(Exception):
    """Answer the current DIMSE request with ``status`` and ``comment`` (Error Comment, at most 64 chars)."""

    status = 0xC000

    def __init__(self, comment: str) -> None:
        super().__init__(comment)
        self.comment = comment[:64]


class OutOfResources(DicomStatusError):
    """Refused: Out of Resources; the sender should retry later (bus unavailable, too large, limits)."""

    status = 0xA700


class DataSetMismatch(DicomStatusError):
    """Error: Data Set does not match SOP Class (or the request's SOP Instance UID)."""

    status = 0xA900


class CannotUnderstand(DicomStatusError):
    """Error: Cannot understand; the data set does not parse."""

    status = 0xC000


class DeliveryFailed(Exception):
    """An outbound message (commitment report, IAN, XDS submission) did not get through; it is retried."""


class DeliveryRefused(DeliveryFailed):
    """The receiving side refused the message for good (e.g. XDS metadata errors): retrying cannot help, so it
    goes to the dead letters at once."""
