"""Patient identity in the index (``Patients``), against SQLite and PostgreSQL alike: ADT updates, merges and
identifier changes applied once, refused when the index contradicts them, and seen by every later read (C-FIND
matching, the objects to rewrite, a study's current patient, instances stored afterwards)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.core.query import Level, Model, Query, condition
from gateway.core.study import Patient
from gateway.hl7.adt import PatientChange, PatientKey
from gateway.index import CorrectionPolicy, Index
from gateway.index.patients import PatientRefused
from tests.integration.test_index_contract import index, make_row, new_uid, postgres_url, store

__all__ = ["index", "postgres_url", "store"]

AUTHORITY = "1.2.246.10.1234567.22.2026"


def key(patient_id: str) -> PatientKey:
    return PatientKey(patient_id, AUTHORITY)


def change(trigger: str, patient_id: str, control_id: str, prior: str | None = None,
           **attributes: str) -> PatientChange:
    return PatientChange(trigger=trigger, message_key=f"HIS|HOSP|{control_id}", control_id=control_id,
                         sender="HIS^HOSP", patient=key(patient_id), prior=key(prior) if prior else None,
                         attributes=attributes, charset="ISO_IR 100" if any(
                             not value.isascii() for value in attributes.values()) else "")


async def stored_study(index: Index, patient_id: str, name: str = "OLD^NAME", count: int = 1) -> str:
    study = new_uid()
    attributes = {"PatientID": patient_id, "IssuerOfPatientID": AUTHORITY, "PatientName": name,
                  "PatientBirthDate": "19700101", "PatientSex": "F"}
    await index.record_instances([make_row(study_instance_uid=study, patient_id=patient_id,
                                           issuer_of_patient_id=AUTHORITY, patient_attributes=attributes)
                                  for _ in range(count)], CorrectionPolicy.REPLACE)
    return study


async def studies_of(index: Index, patient_id: str) -> set[str]:
    query = Query(Model.STUDY_ROOT, Level.STUDY, (condition("PatientID", patient_id, True),), ())
    return {values["StudyInstanceUID"] for _, values, _ in await index.search(query, limit=100)}


async def test_an_update_renames_the_patient_everywhere_and_later_instances_do_not_undo_it(index: Index) -> None:
    patient_id = new_uid()[-12:]
    study = await stored_study(index, patient_id, count=2)
    applied = await index.apply_patient_change(change("A08", patient_id, "1", PatientName="Mäkelä^Jyrki",
                                                      PatientBirthDate=""), 1.0, 2.0)
    assert (applied.action, applied.studies) == ("updated", (study,))
    current = (await index.patients_of_studies([study]))[study]
    assert current == Patient(patient_id, AUTHORITY, "Mäkelä^Jyrki", "", "F", "ISO_IR 100")
    query = Query(Model.STUDY_ROOT, Level.IMAGE, (condition("StudyInstanceUID", study, True),), ())
    rewrites = [stored.patient for _, _, stored in await index.search(query, limit=10) if stored is not None]
    assert rewrites == [current, current]  # both instances were stored with the old name
    uids = [row.sop_instance_uid for row in await index.study_instances(study)]
    assert await index.patients_to_write(uids) == dict.fromkeys(uids, current)
    await stored_study(index, patient_id, name="STALE^WORKLIST")  # a modality with an old worklist entry
    assert (await index.patients_of_studies([study]))[study].name == "Mäkelä^Jyrki"
    again = await index.apply_patient_change(change("A08", patient_id, "1", PatientName="Other"), 1.0, 3.0)
    assert again.action == "duplicate"
    assert (await index.patients_of_studies([study]))[study].name == "Mäkelä^Jyrki"


async def test_a_merge_moves_every_study_and_files_later_instances_under_the_survivor(index: Index) -> None:
    prior, survivor = new_uid()[-12:], new_uid()[-12:]
    first, second = await stored_study(index, prior), await stored_study(index, prior)
    kept = await stored_study(index, survivor)
    check = await index.check_patient_change(change("A40", survivor, "m1", prior=prior), 2.0)
    assert check.action == "merged" and await studies_of(index, prior) == {first, second}  # nothing written
    applied = await index.apply_patient_change(change("A40", survivor, "m1", prior=prior), 1.0, 2.0)
    assert applied.action == "merged" and set(applied.studies) == {first, second, kept}
    assert await studies_of(index, prior) == set()
    assert await studies_of(index, survivor) == {first, second, kept}
    late = await stored_study(index, prior)
    assert await studies_of(index, survivor) == {first, second, kept, late}
    [record] = await index.patient_record(prior, AUTHORITY)
    assert record["merged_into"] == {"patient_id": survivor, "issuer": AUTHORITY}
    [record] = await index.patient_record(survivor)
    assert [(c["action"], c["patient"]["patient_id"]) for c in record["history"]] == [
        ("merged", survivor), ("merged-into", prior)]
    assert set(record["history"][0]["studies"]) == {first, second}
    with pytest.raises(PatientRefused) as merged:
        await index.apply_patient_change(change("A08", prior, "m2", PatientName="X"), 1.0, 3.0)
    assert merged.value.code == 204
    with pytest.raises(PatientRefused):  # the inverse merge is refused (the survivor's prior is merged already)
        await index.apply_patient_change(change("A40", prior, "m3", prior=survivor), 1.0, 3.0)
    repeated = await index.apply_patient_change(change("A40", survivor, "m4", prior=prior), 1.0, 4.0)
    assert repeated.action == "duplicate"


async def test_a_merge_of_an_unknown_prior_and_chains_of_merges(index: Index) -> None:
    a, b, c = (new_uid()[-12:] for _ in range(3))
    study_b = await stored_study(index, b)
    await index.apply_patient_change(change("A40", b, "c1", prior=a), 1.0, 2.0)  # a was never seen
    await index.apply_patient_change(change("A40", c, "c2", prior=b), 1.0, 3.0)
    late_a = await stored_study(index, a)  # a's instances follow a to b, then to c
    assert await studies_of(index, c) == {study_b, late_a}


async def test_an_identifier_change_moves_the_patient_and_refuses_an_existing_identifier(index: Index) -> None:
    old, new, taken = new_uid()[-12:], new_uid()[-12:], new_uid()[-12:]
    study = await stored_study(index, old, name="TEMP^PATIENT")
    await stored_study(index, taken)
    with pytest.raises(PatientRefused) as exists:
        await index.apply_patient_change(change("A47", taken, "i1", prior=old), 1.0, 2.0)
    assert (exists.value.code, exists.value.location) == (205, "PID^1^3^1^1")
    applied = await index.apply_patient_change(change("A47", new, "i2", prior=old, PatientSex="M"), 1.0, 2.0)
    assert (applied.action, applied.studies) == ("identifier-changed", (study,))
    assert (await index.patients_of_studies([study]))[study] == Patient(new, AUTHORITY, "TEMP^PATIENT", "19700101",
                                                                        "M")
    assert await studies_of(index, old) == set()


async def test_concurrent_applies_of_one_message_apply_it_once(index: Index) -> None:
    patient_id = new_uid()[-12:]
    await stored_study(index, patient_id)
    results = await asyncio.gather(*(index.apply_patient_change(change("A08", patient_id, "same", PatientName="N"),
                                                                1.0, 2.0) for _ in range(4)))
    assert sorted(result.action for result in results) == ["duplicate", "duplicate", "duplicate", "updated"]


async def test_a_merge_into_a_new_identifier_takes_the_prior_patients_attributes(index: Index) -> None:
    prior, survivor = new_uid()[-12:], new_uid()[-12:]
    study = await stored_study(index, prior, name="KNOWN^NAME")
    await index.apply_patient_change(change("A40", survivor, "n1", prior=prior), 1.0, 2.0)  # PID-3 only
    assert (await index.patients_of_studies([study]))[study] == Patient(survivor, AUTHORITY, "KNOWN^NAME",
                                                                        "19700101", "F")
    await stored_study(index, survivor, name="NEWER^NAME")  # no ADT set attributes: instances still may
    assert (await index.patients_of_studies([study]))[study].name == "NEWER^NAME"


async def test_a_replayed_message_reports_the_studies_it_changed_and_touch_restarts_their_stability(
        index: Index) -> None:
    patient_id = new_uid()[-12:]
    study = await stored_study(index, patient_id)
    await index.mark_stable(await index.study_activity(study), 5.0)  # type: ignore[arg-type]
    applied = await index.apply_patient_change(change("A08", patient_id, "t1", PatientName="N"), 1.0, 6.0,
                                               touch=True)
    activity = await index.study_activity(study)
    assert applied.studies == (study,) and activity is not None and activity.stable_at is None
    assert activity.generation == 2
    again = await index.apply_patient_change(change("A08", patient_id, "t1", PatientName="N"), 1.0, 7.0)
    assert (again.action, again.studies) == ("duplicate", (study,))


async def test_an_instance_without_the_issuer_leaves_its_study_with_the_patient_it_has(index: Index) -> None:
    patient_id = new_uid()[-12:]
    study = await stored_study(index, patient_id)
    await index.record_instance(make_row(study_instance_uid=study, patient_id=patient_id, issuer_of_patient_id="",
                                         patient_attributes={"PatientID": patient_id, "PatientName": "OLD^NAME"}),
                                CorrectionPolicy.REPLACE)
    current = (await index.patients_of_studies([study]))[study]
    assert (current.patient_id, current.issuer) == (patient_id, AUTHORITY)
