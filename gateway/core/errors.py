"""Errors that say what should happen next: the DICOM status a peer sees, or whether retrying can help.

Every port error carries ``retriable`` (aiokafka's convention): True when a dependency is down and the same
call may succeed later, False when this message or item can never succeed as it is. ``retriable`` reads it,
and is the one place that decides for exceptions that do not say.

``describe`` says what of an exception may reach a log field, a dead-letter reason or an Error Comment.
"""

from __future__ import annotations

import traceback


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


class Unavailable(Exception):
    """A service the work needs is down: back off and retry the work from its start."""

    retriable = True


class Permanent(Exception):
    """This message can never succeed as it is: it goes to the dead letters with this reason."""

    retriable = False


class DeliveryFailed(Exception):
    """An outbound message (commitment report, IAN, XDS submission) did not get through; it is retried."""


class DeliveryRefused(DeliveryFailed):
    """The receiving side refused the message for good (e.g. XDS metadata errors): retrying cannot help, so it
    goes to the dead letters at once."""


def retriable(exc: BaseException) -> bool | None:
    """True: a dependency is down (retry, never dead-letter); False: the message itself is at fault
    (dead-letter); None: nobody said, and the caller allows a few attempts before treating it as permanent.

    Port adapters translate their drivers' errors into port errors that say which; the OS-level families are
    outages wherever they come from."""
    flag = getattr(exc, "retriable", None)
    if isinstance(flag, bool):
        return flag
    if isinstance(exc, (OSError, TimeoutError)):
        return True
    return None


def describe(exc: BaseException) -> str:
    """What may be said of an exception where operators read it (log fields, dead-letter reasons, comments).

    Our own errors keep their messages, which are written to name attributes, tags, codes and counts, never
    values: ``DicomStatusError``, ``Permanent``, ``Unavailable``, ``DeliveryFailed`` and the port errors (they
    say ``retriable``). An OS error keeps its strerror but not the file name. Anything else is a library's
    error, whose message may quote the bytes or values it choked on (pydicom's "Unknown Value Representation"
    quotes them, ``int()`` its argument): only its type and where it was raised."""
    if isinstance(exc, Permanent):
        return str(exc)
    if isinstance(exc, (DicomStatusError, Unavailable, DeliveryFailed)) or isinstance(
            getattr(exc, "retriable", None), bool):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"unexpected {type(exc).__name__}{where}"
