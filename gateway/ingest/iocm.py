"""IHE IOCM before an instance is answered (C-STORE, STOW-RS): a rejected instance sent again that its title
refuses gets 0xA771 (from a set kept in memory, refreshed from the index), and a rejection note the index
contradicts gets the reference archive's status (the index asked), instead of a Success the store stage would have
to take back.

The store stage decides again, authoritatively, once the instance is on the bus; this check only spares the
sender a Success that changes nothing. So it never stops ingest: when the index cannot be asked, the instance is
taken and a warning says the check was skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
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
"""Longest a note's C-STORE waits for the index's answer: an index slow or partitioned must not hold ingest back."""
RELOAD_SECONDS = 300.0
"""How often the whole set is read again (a lifted rejection leaves it only then)."""
COMMIT_MARGIN_SECONDS = 60.0
"""How far before the newest change already seen a refresh looks again: clocks of other workers, late commits."""
EXPIRE_PERMISSION = "expire"
"""What an AE needs to send a retention-expiry note, which deletes."""


class Rejections(Protocol):
    """The slice of the index's ``Rejections`` port the check reads (ingest reads the index only through it)."""

    async def rejections_since(self, since: float) -> list[tuple[str, Title, bool, float]]: ...

    async def check_rejection(self, note: RejectionNote, received_sha256: str, now: float) -> object: ...


def may_hold_note(sop_class_uid: str) -> bool:
    return sop_class_uid == KEY_OBJECT_SELECTION_DOCUMENT_STORAGE


class RejectionCheck:
    """The receiver's view of what is rejected. The instances a re-send of which is refused are kept in memory
    and refreshed from the index every ``refresh_seconds`` (the rows changed since the last look, all of them
    every ``RELOAD_SECONDS``): a C-STORE costs a set look-up, not a query. A rejection newer than the last refresh
    is not known here yet; the store stage drops such a re-send after Success."""

    def __init__(self, index: Callable[[], Awaitable[Rejections]], resend: Mapping[Title, Resend],
                 refresh_seconds: float) -> None:
        self._index = index
        self._resend = resend
        self._refresh_seconds = refresh_seconds
        self._refused: set[str] = set()
        self._cursor = 0.0
        self._reload_at = 0.0
        self._refresher: asyncio.Task[None] | None = None
        self._skipped_logged_at = 0.0

    def begin(self, sop_instance_uid: str, sop_class_uid: str, transfer_syntax: str,
              may_expire: bool) -> NoteCheck | None:
        """Before the data set: raise NoteRefused (0xA771) when the instance is rejected here under a title that
        refuses it again; for a KOS, what reads it as a note once it is complete."""
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_forever(), name="rejection-check-refresh")
        if sop_instance_uid in self._refused:
            raise NoteRefused(SUBSEQUENT_OCCURRENCE, "instance rejected here; its rejection refuses it again")
        return NoteCheck(self, transfer_syntax, may_expire) if may_hold_note(sop_class_uid) else None

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
            self._refresher = None

    async def _refresh_forever(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._refresh_seconds)

    async def refresh(self) -> None:
        """Take in the rejections changed since the last look (a margin before it: a note's transaction may commit
        after a later one), or all of them once a reload is due (lifted ones drop out only then)."""
        index = await self._ready()
        if index is None:
            return
        reload = time.monotonic() >= self._reload_at
        try:
            async with asyncio.timeout(RELOAD_SECONDS / 10):
                rows = await index.rejections_since(0.0 if reload else self._cursor - COMMIT_MARGIN_SECONDS)
        except Exception as exc:
            self._skipped(exc)
            return
        refused = set() if reload else self._refused
        for uid, title, held, changed_at in rows:
            if held and self._resend.get(title, Resend.REJECT) is Resend.REJECT:
                refused.add(uid)
            else:
                refused.discard(uid)
            self._cursor = max(self._cursor, changed_at)
        self._refused = refused
        if reload:
            self._reload_at = time.monotonic() + RELOAD_SECONDS

    async def note(self, data: bytes, transfer_syntax: str, sha256: str, may_expire: bool) -> None:
        """Raise for a rejection note that cannot be applied: CannotUnderstand (0xC000) when it breaks the KOS IOD,
        NoteRefused when the caller may not expire or the index contradicts it. Not a note: nothing."""
        try:  # in a thread: checking a note of thousands of references takes seconds of pydicom
            note = await asyncio.to_thread(_read, data, transfer_syntax)
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
            log.warning("rejection check skipped: the index did not answer (down, or slow for a large note); the "
                        "store stage decides", extra={"error": describe(exc)})


def _read(data: bytes, transfer_syntax: str) -> RejectionNote | None:
    """Off the event loop. A pydicom warning that escapes here is logged without its text (``gateway.logs``)."""
    if transfer_syntax == DEFLATED:
        data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data, NOTE_LIMIT_BYTES)
    parsed = read_prefix(data, transfer_syntax, PIXEL_DATA, True)
    return None if parsed is None else read_note(parsed[0])


class NoteCheck:
    """A KOS on its way in (a C-STORE, a STOW-RS part), kept whole while small enough, to be read as a rejection
    note once complete."""

    def __init__(self, rejections: RejectionCheck, transfer_syntax: str, may_expire: bool) -> None:
        self._rejections = rejections
        self._transfer_syntax = transfer_syntax
        self._may_expire = may_expire
        self._note: bytearray | None = bytearray()

    def write(self, fragment: memoryview) -> None:
        if self._note is None:
            return
        if len(self._note) + len(fragment) > NOTE_LIMIT_BYTES:
            self._note = None  # too large to be read here: the store stage quarantines it if it is a note
        else:
            self._note += fragment

    async def finish(self) -> None:
        if self._note is not None:
            data = bytes(self._note)
            await self._rejections.note(data, self._transfer_syntax, hashlib.sha256(data).hexdigest(),
                                        self._may_expire)
