"""IOCM rejection notes in the index (``Rejections``), against SQLite and PostgreSQL alike: a note withdraws the
instances it names from every read that serves them, once; what it cannot do is refused with the reference
archive's status and writes nothing; an instance named before it arrives is stored rejected; a rejected instance
sent again is ignored, refused or restored as its title says; retention-expired instances are forgotten."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.core.iocm import (
    ALREADY_REJECTED,
    CLASS_INSTANCE_CONFLICT,
    DUPLICATE_NOTE,
    NoteRefused,
    Reference,
    RejectionNote,
    Resend,
    Title,
)
from gateway.core.query import Level, Model, Query, condition
from gateway.core.study import InstanceStatus
from gateway.index import CorrectionPolicy, Index, InstanceRow, Outcome
from gateway.index.sqlite import SqliteIndex
from tests.integration.test_index_contract import corrected, index, make_row, new_uid, postgres_url, store

__all__ = ["index", "postgres_url", "store"]

REPLACE = CorrectionPolicy.REPLACE


def note_for(rows: list[InstanceRow], title: Title = Title.QUALITY, study: str = "") -> RejectionNote:
    return RejectionNote(new_uid(), study or rows[0].study_instance_uid, title, tuple(
        Reference(row.study_instance_uid, row.series_instance_uid, row.sop_class_uid, row.sop_instance_uid)
        for row in rows))


def digest() -> str:
    return hashlib.sha256(uuid.uuid4().bytes).hexdigest()


async def visible(index: Index, study: str) -> set[str]:
    query = Query(Model.STUDY_ROOT, Level.IMAGE, (condition("StudyInstanceUID", study, True),), ())
    return {values["SOPInstanceUID"] for _, values, _ in await index.search(query, limit=100)}


async def stored_study(index: Index, count: int) -> list[InstanceRow]:
    study, series = new_uid(), new_uid()
    rows = [make_row(study_instance_uid=study, series_instance_uid=series, instance_number=n) for n in range(count)]
    await index.record_instances(rows, REPLACE)
    return rows


async def test_a_note_withdraws_its_instances_from_every_read_and_touches_the_study(index: Index) -> None:
    rows = await stored_study(index, 3)
    study = rows[0].study_instance_uid
    activity = await index.study_activity(study)
    assert activity is not None and await index.mark_stable(activity, 5.0)

    applied = await index.apply_rejection(note_for(rows[1:2]), digest(), "CT01", 10.0, None)

    assert [r.sop_instance_uid for r in applied.withdrawn] == [rows[1].sop_instance_uid]
    assert (applied.awaited, applied.duplicate) == (0, False)
    assert await visible(index, study) == {rows[0].sop_instance_uid, rows[2].sop_instance_uid}
    assert [r.sop_instance_uid for r in await index.study_instances(study)] == [
        rows[0].sop_instance_uid, rows[2].sop_instance_uid]
    held = await index.current_instance(rows[1].sop_instance_uid)
    assert held is not None and held.status is InstanceStatus.REJECTED and held.storage_key == rows[1].storage_key
    assert len(await index.study_instances(study, include_rejected=True)) == 3
    after = await index.study_activity(study)
    assert after is not None and after.stable_at is None and after.generation == 2  # registered anew


async def test_the_same_note_again_is_a_duplicate_and_other_content_under_its_uid_is_refused(index: Index) -> None:
    rows = await stored_study(index, 2)
    note, sha = note_for(rows), digest()
    first = await index.apply_rejection(note, sha, "CT01", 10.0, None)
    again = await index.apply_rejection(note, sha, "CT01", 11.0, None)
    assert again.duplicate and set(again.withdrawn) == set(first.withdrawn)
    with pytest.raises(NoteRefused) as refused:
        await index.apply_rejection(note, digest(), "CT01", 12.0, None)
    assert refused.value.status == DUPLICATE_NOTE


async def test_a_weightier_title_overwrites_a_lighter_one_never_the_reverse(index: Index) -> None:
    rows = await stored_study(index, 2)
    await index.apply_rejection(note_for(rows[:1], Title.QUALITY), digest(), "CT01", 10.0, None)
    await index.apply_rejection(note_for(rows[:1], Title.PATIENT_SAFETY), digest(), "CT01", 11.0, None)
    assert (await index.rejections_of([rows[0].sop_instance_uid]))[rows[0].sop_instance_uid].title is \
        Title.PATIENT_SAFETY

    lighter = note_for(rows, Title.QUALITY)  # names a fresh instance too: nothing of it may be applied
    with pytest.raises(NoteRefused) as refused:
        await index.apply_rejection(lighter, digest(), "CT01", 12.0, None)
    assert refused.value.status == ALREADY_REJECTED
    assert await visible(index, rows[0].study_instance_uid) == {rows[1].sop_instance_uid}
    restored = await index.rejections_of([rows[0].sop_instance_uid])
    assert restored[rows[0].sop_instance_uid].prior_status is InstanceStatus.STORED  # what a restore goes back to


async def test_a_class_that_differs_from_the_held_instance_is_refused(index: Index) -> None:
    rows = await stored_study(index, 1)
    wrong = replace(note_for(rows), references=(replace(note_for(rows).references[0],
                                                        sop_class_uid="1.2.840.10008.5.1.4.1.1.4"),))
    with pytest.raises(NoteRefused) as refused:
        await index.apply_rejection(wrong, digest(), "CT01", 10.0, None)
    assert refused.value.status == CLASS_INSTANCE_CONFLICT
    assert await index.rejections_of([rows[0].sop_instance_uid]) == {}


async def test_the_check_says_what_applying_would_and_writes_nothing(index: Index) -> None:
    rows = await stored_study(index, 2)
    note = note_for(rows)
    checked = await index.check_rejection(note, digest(), 10.0)
    assert len(checked.withdrawn) == 2
    assert await visible(index, rows[0].study_instance_uid) == {row.sop_instance_uid for row in rows}
    assert await index.rejections_of([row.sop_instance_uid for row in rows]) == {}


async def test_an_instance_named_before_it_arrives_is_stored_rejected(index: Index) -> None:
    rows = await stored_study(index, 1)
    later = make_row(study_instance_uid=rows[0].study_instance_uid, series_instance_uid=rows[0].series_instance_uid)
    applied = await index.apply_rejection(note_for([rows[0], later]), digest(), "CT01", 10.0, None)
    assert (len(applied.withdrawn), applied.awaited) == (1, 1)

    result = await index.record_instance(later, REPLACE)

    assert result.outcome is Outcome.INSERTED and result.current.status is InstanceStatus.REJECTED
    assert result.rejection is not None and result.rejection.title is Title.QUALITY
    assert await visible(index, later.study_instance_uid) == set()
    assert (await index.rejections_of([later.sop_instance_uid]))[later.sop_instance_uid].prior_status is \
        InstanceStatus.STORED
    again = await index.record_instance(later, REPLACE)  # the bus delivering the same receive again
    assert again.outcome is Outcome.DUPLICATE


@pytest.mark.parametrize(("title", "outcome"), [(Title.QUALITY, Outcome.IGNORED),
                                                (Title.PATIENT_SAFETY, Outcome.REFUSED),
                                                (Title.RETENTION_EXPIRED, Outcome.RESTORED)])
async def test_a_rejected_instance_sent_again_follows_its_title(index: Index, title: Title,
                                                                 outcome: Outcome) -> None:
    rows = await stored_study(index, 1)
    await index.apply_rejection(note_for(rows, title), digest(), "CT01", 10.0, None)

    resent = replace(rows[0], storage_key=f"instances/{digest()}", instance_id=str(uuid.uuid4()))  # same bytes
    result = await index.record_instance(resent, REPLACE)

    assert result.outcome is outcome
    assert not result.kept  # the copy just written is not kept
    held = await index.current_instance(rows[0].sop_instance_uid)
    assert held is not None and held.storage_key == rows[0].storage_key
    restored = outcome is Outcome.RESTORED
    assert held.status is (InstanceStatus.STORED if restored else InstanceStatus.REJECTED)
    assert bool(await index.rejections_of([rows[0].sop_instance_uid])) is not restored
    assert await visible(index, rows[0].study_instance_uid) == ({rows[0].sop_instance_uid} if restored else set())


async def test_a_restoring_title_takes_a_changed_instance_as_a_new_version(index: Index) -> None:
    rows = await stored_study(index, 1)
    await index.apply_rejection(note_for(rows, Title.QUALITY), digest(), "CT01", 10.0, None)
    policy = {Title.QUALITY: Resend.RESTORE}

    result = await index.record_instance(corrected(rows[0], accession_number="ACC-2"), REPLACE, policy)

    assert (result.outcome, result.current.version, result.current.status) == (Outcome.REPLACED, 2,
                                                                              InstanceStatus.STORED)
    assert await index.rejections_of([rows[0].sop_instance_uid]) == {}


async def test_a_correction_that_changes_the_study_touches_the_old_one(index: Index) -> None:
    rows = await stored_study(index, 2)
    old = rows[0].study_instance_uid
    activity = await index.study_activity(old)
    assert activity is not None and await index.mark_stable(activity, 5.0)
    moved = corrected(rows[0], study_instance_uid=new_uid())

    result = await index.record_instance(moved, REPLACE)

    assert result.previous is not None and result.previous.study_instance_uid == old
    assert await visible(index, old) == {rows[1].sop_instance_uid}
    assert await visible(index, moved.study_instance_uid) == {moved.sop_instance_uid}
    after = await index.study_activity(old)
    assert after is not None and after.stable_at is None


async def test_retention_expired_instances_are_forgotten_and_the_rejection_kept(index: Index) -> None:
    rows = await stored_study(index, 2)
    study = rows[0].study_instance_uid
    note = note_for(rows[:1], Title.RETENTION_EXPIRED)
    await index.apply_rejection(note, digest(), "ADMIN", 10.0, 100.0)
    assert await index.expired_rejections(99.0) == []
    assert await index.expired_rejections(100.0) == [(rows[0].sop_instance_uid, study)]

    assert await index.forget_instance(rows[0].sop_instance_uid, 101.0) == [rows[0].storage_key]

    assert await index.current_instance(rows[0].sop_instance_uid) is None
    assert await index.expired_rejections(200.0) == []
    listed = await index.study_rejections(study)
    assert [n["sop_instance_uid"] for n in listed["notes"]] == [note.sop_instance_uid]
    assert listed["instances"][0]["deleted_at"] == 101.0 and listed["instances"][0]["title"] == "113039"
    assert await index.rejection_notes_of(study) == {note.sop_instance_uid}
    result = await index.record_instance(corrected(rows[0]), REPLACE)  # sent again: restored, as new
    assert (result.outcome, result.current.status) == (Outcome.INSERTED, InstanceStatus.STORED)


async def test_a_note_of_the_same_reason_changes_nothing_and_is_not_refused(index: Index) -> None:
    rows = await stored_study(index, 2)
    first = note_for(rows[:1])
    await index.apply_rejection(first, digest(), "CT01", 10.0, None)
    again = await index.apply_rejection(note_for(rows), digest(), "RIS", 11.0, None)  # the whole study, 113001
    assert [r.sop_instance_uid for r in again.withdrawn] == [rows[1].sop_instance_uid]
    kept = (await index.rejections_of([rows[0].sop_instance_uid]))[rows[0].sop_instance_uid]
    assert kept.note_uid == first.sop_instance_uid


async def test_a_restored_instance_makes_its_study_change_again(index: Index) -> None:
    rows = await stored_study(index, 1)
    await index.apply_rejection(note_for(rows, Title.RETENTION_EXPIRED), digest(), "ADMIN", 10.0, 1e12)
    activity = await index.study_activity(rows[0].study_instance_uid)
    assert activity is not None and await index.mark_stable(activity, 20.0)
    resent = replace(rows[0], storage_key=f"instances/{digest()}", instance_id=str(uuid.uuid4()))

    assert (await index.record_instance(resent, REPLACE)).outcome is Outcome.RESTORED

    after = await index.study_activity(rows[0].study_instance_uid)
    assert after is not None and after.stable_at is None  # registered and announced anew, with it back


async def test_the_receivers_check_does_not_wait_for_a_writer_on_sqlite(tmp_path: Path) -> None:
    """The store stage holding SQLite's write lock (a long batch) must not hold a C-STORE's check back."""
    async with await SqliteIndex.open(tmp_path / "index.sqlite3") as index:
        await index.migrate()
        rows = await stored_study(index, 1)
        writer = sqlite3.connect(tmp_path / "index.sqlite3", isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        try:
            async with asyncio.timeout(2):
                checked = await index.check_rejection(note_for(rows), digest(), 10.0)
        finally:
            writer.execute("ROLLBACK")
            writer.close()
    assert [r.sop_instance_uid for r in checked.withdrawn] == [rows[0].sop_instance_uid]


async def test_an_instance_restored_before_its_deletion_keeps_its_rows_and_objects(index: Index) -> None:
    rows = await stored_study(index, 1)
    await index.apply_rejection(note_for(rows, Title.RETENTION_EXPIRED), digest(), "ADMIN", 10.0, 100.0)
    [(uid, _)] = await index.expired_rejections(200.0)
    resent = replace(rows[0], storage_key=f"instances/{digest()}", instance_id=str(uuid.uuid4()))
    assert (await index.record_instance(resent, REPLACE)).outcome is Outcome.RESTORED  # between read and delete

    assert await index.forget_instance(uid, 201.0) == []
    held = await index.current_instance(uid)
    assert held is not None and held.status is InstanceStatus.STORED


async def test_what_changed_since_a_moment_is_listed_for_the_receivers(index: Index) -> None:
    rows = await stored_study(index, 1)
    later = make_row(study_instance_uid=rows[0].study_instance_uid)
    await index.apply_rejection(note_for([rows[0], later], Title.PATIENT_SAFETY), digest(), "CT01", 10.0, None)
    listed = {uid: (title, held) for uid, title, held, _ in await index.rejections_since(0.0)}
    assert listed[rows[0].sop_instance_uid] == (Title.PATIENT_SAFETY, True)
    assert listed[later.sop_instance_uid] == (Title.PATIENT_SAFETY, False)
    assert await index.rejections_since(11.0) == []  # nothing changed after the note (at 10.0)

    await index.record_instance(later, REPLACE)  # arrives: held now, and changed after the note

    assert [(uid, held) for uid, _, held, at in await index.rejections_since(11.0)
            if uid == later.sop_instance_uid] == [(later.sop_instance_uid, True)]
