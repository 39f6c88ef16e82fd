"""IHE IOCM rejection notes (migration 0010), once for both dialects, and the ``Rejections`` port built on them.

Applying a note is a plan (``gateway.index.patients``): its decisions (is the note known? may its title overwrite
an earlier rejection? does the class match what is held?) are made in the one transaction that writes them, in
PostgreSQL under the same per-instance locks as ``record_instances``, so a note and an instance of it recorded at
once cannot both win. The same plan rolled back is the receiver's check before it answers the C-STORE.

A held instance the note names becomes ``rejected`` (still current, never served) and its study is touched, so the
study becomes stable again and is registered anew without it. An instance not held yet gets its rejection row
all the same and is stored ``rejected`` when it arrives (``resolve``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from gateway.core.iocm import (
    ALREADY_REJECTED,
    CLASS_INSTANCE_CONFLICT,
    DUPLICATE_NOTE,
    OVERWRITES,
    NoteRefused,
    Reference,
    RejectionNote,
    Title,
)
from gateway.core.study import InstanceStatus
from gateway.index import InstanceRow, Outcome, RecordResult, Rejection, workflow
from gateway.index.patients import Plan, Step

INSTANCE_LOCK = 0x64676D02
"""The advisory lock class ``record_instances`` takes per SOP Instance UID (PostgreSQL)."""
_LOCK = "SELECT count(pg_advisory_xact_lock($1, hashtext(uid))) FROM unnest($2::text[]) AS uid"
_NOTE = "SELECT received_sha256 FROM rejection_notes WHERE sop_instance_uid = $1"
_HELD = "SELECT status, sop_class_uid, study_instance_uid, series_instance_uid FROM instances " \
        "WHERE sop_instance_uid = $1 AND is_current"
REJECTION = "SELECT sop_instance_uid, title, note_uid, prior_status FROM rejections WHERE sop_instance_uid = $1"
REJECTIONS = ("SELECT sop_instance_uid, title, note_uid, prior_status FROM rejections "
              "WHERE sop_instance_uid = ANY($1::text[])")
_UPSERT = """INSERT INTO rejections (sop_instance_uid, study_instance_uid, series_instance_uid, sop_class_uid, title,
    note_uid, prior_status, rejected_at, delete_after, changed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $8)
ON CONFLICT (sop_instance_uid) DO UPDATE SET title = excluded.title, note_uid = excluded.note_uid,
    rejected_at = excluded.rejected_at, delete_after = excluded.delete_after, deleted_at = NULL,
    prior_status = coalesce(rejections.prior_status, excluded.prior_status), changed_at = excluded.changed_at"""
_WITHDRAW = "UPDATE instances SET status = 'rejected' WHERE sop_instance_uid = $1 AND is_current"
_INSERT_NOTE = """INSERT INTO rejection_notes (sop_instance_uid, study_instance_uid, title, received_sha256, source_ae,
    instances, applied_at) VALUES ($1, $2, $3, $4, $5, $6, $7)"""
_WITHDREW = """SELECT study_instance_uid, series_instance_uid, sop_class_uid, sop_instance_uid, prior_status
FROM rejections WHERE note_uid = $1 ORDER BY study_instance_uid, series_instance_uid, sop_instance_uid"""
_HELD_BY = "UPDATE rejections SET prior_status = $2, changed_at = $3 WHERE sop_instance_uid = $1"
_LIFT = "DELETE FROM rejections WHERE sop_instance_uid = $1"
_RESTORE = "UPDATE instances SET status = $3 WHERE sop_instance_uid = $1 AND version = $2"

_STUDY_NOTES = """SELECT sop_instance_uid, title, source_ae, instances, applied_at FROM rejection_notes
WHERE study_instance_uid = $1 ORDER BY applied_at, sop_instance_uid"""
_STUDY_REJECTIONS = """SELECT sop_instance_uid, series_instance_uid, sop_class_uid, title, note_uid, prior_status,
    rejected_at, delete_after, deleted_at FROM rejections WHERE study_instance_uid = $1
ORDER BY series_instance_uid, sop_instance_uid"""
_NOTES_OF = "SELECT sop_instance_uid FROM rejection_notes WHERE study_instance_uid = $1"
_SINCE = "SELECT sop_instance_uid, title, prior_status, changed_at FROM rejections WHERE changed_at >= $1"
_EXPIRED = """SELECT r.sop_instance_uid, r.study_instance_uid FROM rejections r
WHERE r.delete_after IS NOT NULL AND r.delete_after <= $1 AND r.deleted_at IS NULL AND r.prior_status IS NOT NULL
ORDER BY r.delete_after LIMIT $2"""
_KEYS = """SELECT storage_key FROM instances WHERE sop_instance_uid = $1
UNION SELECT storage_key FROM instance_variants WHERE sop_instance_uid = $1"""
_FORGET_VARIANTS = "DELETE FROM instance_variants WHERE sop_instance_uid = $1"
_FORGET_INSTANCES = "DELETE FROM instances WHERE sop_instance_uid = $1 AND (status = 'rejected' OR NOT is_current)"
_MARK_DELETED = "UPDATE rejections SET deleted_at = $2 WHERE sop_instance_uid = $1 AND deleted_at IS NULL"


def rejection(record: Sequence[Any]) -> Rejection:
    uid, title, note_uid, prior = record
    return Rejection(uid, Title(title), note_uid, None if prior is None else InstanceStatus(prior))


def after_record(row: InstanceRow, result: RecordResult) -> tuple[list[Step], Rejection | None]:
    """What ``record_instances`` writes of a result's rejection, after the instance rows, and the instance's
    rejection as it then stands: an instance the note came before is held now; a restoring title's re-send lifts
    the rejection (and, when the held row stays current, makes it what it was)."""
    found = result.rejection
    if found is None:
        return [], None
    uid = row.sop_instance_uid
    if result.current.status is InstanceStatus.REJECTED and result.written:
        return [(_HELD_BY, (uid, row.status.value, time.time()))], replace(found, prior_status=row.status)
    if result.outcome is Outcome.RESTORED:  # visible again: the study is registered and announced anew
        return [(_RESTORE, (uid, result.current.version, result.current.status.value)), (_LIFT, (uid,)),
                (workflow.TOUCH_STUDY, (result.current.study_instance_uid, time.time()))], None
    if result.written:
        return [(_LIFT, (uid,))], None
    return [], found


@dataclass(frozen=True, slots=True)
class Applied:
    withdrawn: tuple[Reference, ...]
    """The held instances the note withdraws, in the study the index files each under."""
    awaited: int
    """Instances it names that are not held: rejected when they arrive."""
    duplicate: bool = False
    """The note was applied before (a re-delivery, or the same note sent again)."""

    def by_study(self) -> dict[str, list[Reference]]:
        found: dict[str, list[Reference]] = {}
        for reference in self.withdrawn:
            found.setdefault(reference.study_instance_uid, []).append(reference)
        return found


def apply(note: RejectionNote, received_sha256: str, source_ae: str, now: float, delete_after: float | None,
          lock: bool, write: bool = True) -> Plan[Applied]:
    """The whole note in one transaction; raises NoteRefused for what the index contradicts. ``lock``: take the
    per-instance locks first (PostgreSQL; SQLite has one writer at a time). Without ``write`` it only reads: the
    receiver's check, which must not wait for the store stage's write lock."""
    uids = sorted(reference.sop_instance_uid for reference in note.references)
    if lock:
        yield _LOCK, (INSTANCE_LOCK, uids)
    known = yield _NOTE, (note.sop_instance_uid,)
    if known:
        if known[0][0] != received_sha256:
            raise NoteRefused(DUPLICATE_NOTE, "a rejection note with this SOP Instance UID and other content was "
                                              "applied before")
        return (yield from _applied(note.sop_instance_uid))
    writes: list[Step] = []
    withdrawn: list[Reference] = []
    awaited = 0
    for reference in note.references:
        uid = reference.sop_instance_uid
        held = yield _HELD, (uid,)
        earlier = yield REJECTION, (uid,)
        if earlier:
            title = Title(earlier[0][1])
            if title is note.title:
                continue  # rejected for this reason already: nothing to change (the reference archive's way)
            if title not in OVERWRITES[note.title]:
                raise NoteRefused(ALREADY_REJECTED, f"an instance is rejected already ({title.value}), which a "
                                                    f"{note.title.value} note may not overwrite")
        if not held:
            awaited += 1
            writes.append((_UPSERT, (uid, reference.study_instance_uid, reference.series_instance_uid,
                                     reference.sop_class_uid, note.title.value, note.sop_instance_uid, None, now,
                                     delete_after)))
            continue
        status, sop_class, study, series = held[0]
        if sop_class != reference.sop_class_uid:
            raise NoteRefused(CLASS_INSTANCE_CONFLICT, "the note gives an instance another SOP Class than the one "
                                                       "held")
        withdrawn.append(Reference(study, series, sop_class, uid))
        prior = status if status != InstanceStatus.REJECTED else None
        writes += [(_UPSERT, (uid, study, series, sop_class, note.title.value, note.sop_instance_uid, prior, now,
                              delete_after)),
                   (_WITHDRAW, (uid,)), (workflow.TOUCH_STUDY, (study, now))]
    if write:
        for step in writes:  # noqa: UP028 (the driver sends rows back, which a list's iterator cannot take)
            yield step
        yield _INSERT_NOTE, (note.sop_instance_uid, note.study_instance_uid, note.title.value, received_sha256,
                             source_ae, len(note.references), now)
    return Applied(tuple(withdrawn), awaited)


def _applied(note_uid: str) -> Plan[Applied]:
    """What a note applied before withdrew (a re-delivery announces it again)."""
    rows = yield _WITHDREW, (note_uid,)
    withdrawn = tuple(Reference(study, series, sop_class, uid) for study, series, sop_class, uid, prior in rows
                      if prior is not None)
    return Applied(withdrawn, len(rows) - len(withdrawn), duplicate=True)


def forget(sop_instance_uid: str, now: float) -> Plan[list[str]]:
    """An instance whose retention expired: its rows go, the rejection stays, with when; the storage keys of every
    version and variant are returned, their objects to be deleted once this commits. Nothing goes when the
    instance was restored meanwhile."""
    current = yield _HELD, (sop_instance_uid,)
    if current and current[0][0] != InstanceStatus.REJECTED:
        return []
    rows = yield _KEYS, (sop_instance_uid,)
    yield _FORGET_VARIANTS, (sop_instance_uid,)
    yield _FORGET_INSTANCES, (sop_instance_uid,)
    yield _MARK_DELETED, (sop_instance_uid, now)
    return [key for (key,) in rows]


class RejectionQueries:
    """The ``Rejections`` port for an adapter that runs plans (``_run_plan``) and reads (``_select_rows``)."""

    _sqlite = False

    async def _run_plan(self, plan: Plan[Any], commit: bool) -> Any:
        raise NotImplementedError

    async def _select_rows(self, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def apply_rejection(self, note: RejectionNote, received_sha256: str, source_ae: str, now: float,
                              delete_after: float | None) -> Applied:
        plan = apply(note, received_sha256, source_ae, now, delete_after, lock=not self._sqlite)
        result: Applied = await self._run_plan(plan, commit=True)
        return result

    async def check_rejection(self, note: RejectionNote, received_sha256: str, now: float) -> Applied:
        """What applying would do (raising as it would), with nothing written."""
        result: Applied = await self._run_plan(apply(note, received_sha256, "", now, None, lock=False, write=False),
                                               commit=False)
        return result

    async def rejections_of(self, sop_instance_uids: Sequence[str]) -> dict[str, Rejection]:
        """The rejections of those of the instances that have one, by SOP Instance UID."""
        found = []
        for uid in dict.fromkeys(sop_instance_uids):
            found += await self._select_rows(REJECTION, (uid,))
        return {record[0]: rejection(record) for record in found}

    async def rejections_since(self, since: float) -> list[tuple[str, Title, bool, float]]:
        """(SOP Instance UID, title, held, when changed) of the rejections made or changed from ``since`` on."""
        return [(uid, Title(title), prior is not None, float(at))
                for uid, title, prior, at in await self._select_rows(_SINCE, (since,))]

    async def rejection_notes_of(self, study_instance_uid: str) -> set[str]:
        """The SOP Instance UIDs of the study's rejection notes (not images: left out of its manifest)."""
        return {uid for (uid,) in await self._select_rows(_NOTES_OF, (study_instance_uid,))}

    async def study_rejections(self, study_instance_uid: str) -> dict[str, Any]:
        """The study's notes and its instances withdrawn or awaited, for operators."""
        notes = [{"sop_instance_uid": uid, "title": title, "meaning": Title(title).meaning, "source_ae": ae,
                  "instances": count, "applied_at": float(at)}
                 for uid, title, ae, count, at in await self._select_rows(_STUDY_NOTES, (study_instance_uid,))]
        instances = [{"sop_instance_uid": uid, "series_instance_uid": series, "sop_class_uid": sop_class,
                      "title": title, "note_sop_instance_uid": note, "held": prior is not None,
                      "rejected_at": float(at), "delete_after": None if after is None else float(after),
                      "deleted_at": None if deleted is None else float(deleted)}
                     for uid, series, sop_class, title, note, prior, at, after, deleted
                     in await self._select_rows(_STUDY_REJECTIONS, (study_instance_uid,))]
        return {"notes": notes, "instances": instances}

    async def expired_rejections(self, now: float, limit: int = 100) -> list[tuple[str, str]]:
        """(SOP Instance UID, Study Instance UID) of held instances whose retention-expiry grace has ended."""
        return [(uid, study) for uid, study in await self._select_rows(_EXPIRED, (now, limit))]

    async def forget_instance(self, sop_instance_uid: str, now: float) -> list[str]:
        """Drop an expired instance's rows; the storage keys of the objects to delete (a crash before they are
        leaves them unreferenced, never a row without its object)."""
        keys: list[str] = await self._run_plan(forget(sop_instance_uid, now), commit=True)
        return keys
