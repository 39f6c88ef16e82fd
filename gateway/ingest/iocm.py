"""IHE IOCM before an instance is answered (C-STORE, STOW-RS): a rejected instance sent again that its title
refuses gets 0xA771, and a rejection note the index contradicts gets the reference archive's status, instead of
a Success the store stage would have to take back.

The store stage decides again, authoritatively, once the instance is on the bus; this check only spares the
sender a Success that changes nothing. So it never stops ingest: when the index cannot be asked, the instance is
taken and a warning says the check was skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import warnings
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from gateway.core.errors import CannotUnderstand, describe
from gateway.core.iocm import EXPIRY_NOT_AUTHORISED, SUBSEQUENT_OCCURRENCE, NoteRefused, RejectionNote, Resend, Title
from gateway.dicom.dataset import DEFLATED, PIXEL_DATA, read_prefix
from gateway.dicom.kos_check import KEY_OBJECT_SELECTION_DOCUMENT_STORAGE
from gateway.dicom.rejection import read_note

log = logging.getLogger(__name__)

NOTE_LIMIT_BYTES = 8 * 1024 * 1024
"""A KOS up to this size is read whole before it is answered (the store stage's header window)."""
CHECK_SECONDS = 2.0
"""Longest a C-STORE waits for the index's answer: an index slow or partitioned must not hold ingest back."""
EXPIRE_PERMISSION = "expire"
"""What an AE needs to send a retention-expiry note, which deletes."""


class Rejection(Protocol):
    @property
    def title(self) -> Title: ...

    @property
    def prior_status(self) -> object | None:
        """None while the instance is not held (the note came first)."""


class Rejections(Protocol):
    """The slice of the index's ``Rejections`` port the check reads (ingest reads the index only through it)."""

    async def rejections_of(self, sop_instance_uids: Sequence[str]) -> Mapping[str, Rejection]: ...

    async def check_rejection(self, note: RejectionNote, received_sha256: str, now: float) -> object: ...


def may_hold_note(sop_class_uid: str) -> bool:
    return sop_class_uid == KEY_OBJECT_SELECTION_DOCUMENT_STORAGE


class RejectionCheck:
    def __init__(self, index: Callable[[], Awaitable[Rejections]], resend: Mapping[Title, Resend]) -> None:
        self._index = index
        self._resend = resend
        self._skipped_logged_at = 0.0

    def begin(self, sop_instance_uid: str, sop_class_uid: str, transfer_syntax: str,
              may_expire: bool) -> InstanceCheck:
        return InstanceCheck(self, sop_instance_uid, sop_class_uid, transfer_syntax, may_expire)

    async def instance(self, sop_instance_uid: str) -> None:
        """Raise NoteRefused (0xA771) when the instance is rejected here under a title that refuses it again."""
        index = await self._ready()
        if index is None:
            return
        try:
            async with asyncio.timeout(CHECK_SECONDS):
                found = (await index.rejections_of([sop_instance_uid])).get(sop_instance_uid)
        except Exception as exc:
            self._skipped(exc)
            return
        if found is not None and found.prior_status is not None and \
                self._resend.get(found.title, Resend.REJECT) is Resend.REJECT:
            raise NoteRefused(SUBSEQUENT_OCCURRENCE, f"instance rejected here ({found.title.value})")

    async def note(self, data: bytes, transfer_syntax: str, sha256: str, may_expire: bool) -> None:
        """Raise for a rejection note that cannot be applied: CannotUnderstand (0xC000) when it breaks the KOS IOD,
        NoteRefused when the caller may not expire or the index contradicts it. Not a note: nothing."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's notes on odd values may quote patient data
            try:
                if transfer_syntax == DEFLATED:
                    data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data, NOTE_LIMIT_BYTES)
                parsed = read_prefix(data, transfer_syntax, PIXEL_DATA, True)
                note = None if parsed is None else read_note(parsed[0])
            except CannotUnderstand:
                raise
            except Exception:
                return  # the store stage quarantines what does not parse, as for any instance
        if note is None:
            return
        if note.title is Title.RETENTION_EXPIRED and not may_expire:
            raise NoteRefused(EXPIRY_NOT_AUTHORISED, "retention-expiry note not authorised for this AE")
        index = await self._ready()
        if index is None:
            return
        try:
            async with asyncio.timeout(CHECK_SECONDS):
                await index.check_rejection(note, sha256, time.time())
        except NoteRefused:
            raise
        except Exception as exc:
            self._skipped(exc)

    async def _ready(self) -> Rejections | None:
        try:
            async with asyncio.timeout(CHECK_SECONDS):
                return await self._index()
        except Exception as exc:
            self._skipped(exc)
            return None

    def _skipped(self, exc: BaseException) -> None:
        """At most one warning a minute: an index outage must not flood the log at the receive rate."""
        if time.monotonic() - self._skipped_logged_at >= 60:
            self._skipped_logged_at = time.monotonic()
            log.warning("rejection check skipped: the index cannot be asked; the store stage decides",
                        extra={"error": describe(exc)})


class InstanceCheck:
    """The check of one instance (a C-STORE, a STOW-RS part): the look-up of its SOP Instance UID runs while the
    data set arrives; a KOS small enough is kept whole, to be read as a rejection note once complete."""

    def __init__(self, rejections: RejectionCheck, sop_instance_uid: str, sop_class_uid: str, transfer_syntax: str,
                 may_expire: bool) -> None:
        self._rejections = rejections
        self._transfer_syntax = transfer_syntax
        self._may_expire = may_expire
        self._lookup = asyncio.ensure_future(rejections.instance(sop_instance_uid))
        self._note: bytearray | None = bytearray() if may_hold_note(sop_class_uid) else None

    def write(self, fragment: memoryview) -> None:
        if self._note is None:
            return
        if len(self._note) + len(fragment) > NOTE_LIMIT_BYTES:
            self._note = None  # too large to be read here: the store stage quarantines it if it is a note
        else:
            self._note += fragment

    async def finish(self) -> None:
        await self._lookup
        if self._note is not None:
            data = bytes(self._note)
            await self._rejections.note(data, self._transfer_syntax, hashlib.sha256(data).hexdigest(),
                                        self._may_expire)

    def cancel(self) -> None:
        if self._lookup.done():
            if not self._lookup.cancelled():
                self._lookup.exception()  # retrieved: the instance was refused for another reason first
        else:
            self._lookup.cancel()
