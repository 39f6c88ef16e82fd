"""Query/retrieve matching in the index (``Catalogue``), against SQLite and PostgreSQL alike: the same query
gives the same matches on both, with the matching rules of PS3.4 C.2.2.2."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gateway.core.query import Condition, Level, Match, Model, Query, condition
from gateway.index import CorrectionPolicy, Index, InstanceStatus
from tests.integration.test_index_contract import index, make_row, new_uid, postgres_url, store

__all__ = ["index", "postgres_url", "store"]


def patient(name: str, patient_id: str = "PID-0001", birth: str = "19700101", sex: str = "F") -> dict[str, str]:
    return {"PatientID": patient_id, "IssuerOfPatientID": "1.2.246.10.1234567.10.101", "PatientName": name,
            "PatientBirthDate": birth, "PatientSex": sex}


def study_query(*conditions: Condition | None, returns: tuple[str, ...] = ()) -> Query:
    return Query(Model.STUDY_ROOT, Level.STUDY, tuple(c for c in conditions if c is not None), returns)


async def studies(index: Index, query: Query) -> list[dict[str, Any]]:
    return [values for _, values, _ in await index.search(query, query.returns, limit=1000)]


async def study_uids(index: Index, *conditions: Condition | None) -> set[str]:
    return {values["StudyInstanceUID"] for values in await studies(index, study_query(*conditions))}


async def test_study_level_returns_each_study_once_with_the_patient_and_its_counts(index: Index) -> None:
    study = new_uid()
    series = [new_uid(), new_uid()]
    rows = [make_row(study_instance_uid=study, series_instance_uid=series[n % 2], modality=("CT", "SR")[n % 2],
                     patient_attributes=patient("Mäkelä^Jyrki"), study_id="S1", instance_number=n)
            for n in range(5)]
    await index.record_instances(rows, CorrectionPolicy.REPLACE)
    [found] = await studies(index, study_query(returns=("NumberOfStudyRelatedInstances",
                                                        "NumberOfStudyRelatedSeries", "ModalitiesInStudy")))
    assert found["StudyInstanceUID"] == study
    assert found["PatientName"] == "Mäkelä^Jyrki"
    assert found["PatientBirthDate"] == "19700101"
    assert found["StudyID"] == "S1"
    assert found["NumberOfStudyRelatedInstances"] == 5
    assert found["NumberOfStudyRelatedSeries"] == 2
    assert found["ModalitiesInStudy"] == ["CT", "SR"]


async def test_person_names_match_case_insensitively_with_wildcards_and_other_text_case_sensitively(
        index: Index) -> None:
    makela, virtanen = new_uid(), new_uid()
    await index.record_instance(make_row(study_instance_uid=makela, patient_id="P1", study_description="THORAX",
                                         referring_physician_name="Äijälä^Öljy",
                                         patient_attributes=patient("Mäkelä^Jyrki", "P1")), CorrectionPolicy.REPLACE)
    await index.record_instance(make_row(study_instance_uid=virtanen, patient_id="P2", study_description="thorax ap",
                                         patient_attributes=patient("Virtanen^Anna", "P2")), CorrectionPolicy.REPLACE)
    assert await study_uids(index, condition("PatientName", "MÄKE*", True)) == {makela}
    assert await study_uids(index, condition("PatientName", "mäkelä^jyrki", True)) == {makela}
    assert await study_uids(index, condition("PatientName", "mäkelä^jyrki", False)) == set()
    assert await study_uids(index, condition("PatientName", "?irtanen*", True)) == {virtanen}
    assert await study_uids(index, condition("ReferringPhysicianName", "äijälä^öljy", True)) == {makela}
    assert await study_uids(index, condition("ReferringPhysicianName", "ÄIJ*", True)) == {makela}
    assert await study_uids(index, condition("StudyDescription", "thorax*", True)) == {virtanen}
    assert await study_uids(index, condition("StudyDescription", "THORAX", True)) == {makela}


async def test_sql_wildcard_characters_in_a_value_are_literal(index: Index) -> None:
    literal, other = new_uid(), new_uid()
    await index.record_instance(make_row(study_instance_uid=literal, accession_number="A_1%"),
                                CorrectionPolicy.REPLACE)
    await index.record_instance(make_row(study_instance_uid=other, accession_number="AB1x"),
                                CorrectionPolicy.REPLACE)
    assert await study_uids(index, condition("AccessionNumber", "A_1%", True)) == {literal}
    assert await study_uids(index, condition("AccessionNumber", "A_1*", True)) == {literal}
    assert await study_uids(index, condition("AccessionNumber", "A?1*", True)) == {literal, other}
    assert await study_uids(index, condition("AccessionNumber", "A[B]*", True)) == set()


async def test_date_and_time_ranges_are_inclusive_and_may_be_open(index: Index) -> None:
    dated = {}
    for date, time in (("20260104", "0930"), ("20260105", "1000"), ("20260107", "180059"), ("20260108", "2200")):
        dated[date] = new_uid()
        await index.record_instance(make_row(study_instance_uid=dated[date], study_date=date, study_time=time),
                                    CorrectionPolicy.REPLACE)
    assert await study_uids(index, condition("StudyDate", "20260105-20260107", True)) == {
        dated["20260105"], dated["20260107"]}
    assert await study_uids(index, condition("StudyDate", "-20260105", True)) == {dated["20260104"], dated["20260105"]}
    assert await study_uids(index, condition("StudyDate", "20260107-", True)) == {dated["20260107"], dated["20260108"]}
    assert await study_uids(index, condition("StudyTime", "1000-1800", True)) == {dated["20260105"], dated["20260107"]}


async def test_uid_lists_match_any_and_series_level_keeps_to_its_study(index: Index) -> None:
    first, second, third = new_uid(), new_uid(), new_uid()
    series = {}
    for study in (first, second, third):
        series[study] = new_uid()
        await index.record_instance(make_row(study_instance_uid=study, series_instance_uid=series[study]),
                                    CorrectionPolicy.REPLACE)
    assert await study_uids(index, condition("StudyInstanceUID", f"{first}\\{second}", True)) == {first, second}
    query = Query(Model.STUDY_ROOT, Level.SERIES, (Condition("StudyInstanceUID", Match.SINGLE, (second,)),))
    found = await index.search(query, limit=10)
    assert [values["SeriesInstanceUID"] for _, values, _ in found] == [series[second]]


async def test_quarantined_and_replaced_instances_are_not_visible(index: Index) -> None:
    study = new_uid()
    shown = make_row(study_instance_uid=study)
    await index.record_instance(shown, CorrectionPolicy.REPLACE)
    await index.record_instance(make_row(study_instance_uid=study, status=InstanceStatus.QUARANTINED),
                                CorrectionPolicy.REPLACE)
    hidden_study = new_uid()
    await index.record_instance(make_row(study_instance_uid=hidden_study, status=InstanceStatus.QUARANTINED),
                                CorrectionPolicy.REPLACE)
    correction = replace(shown, received_sha256="0" * 64, sha256="0" * 64, storage_key="instances/corrected",
                         instance_number=7)
    await index.record_instance(correction, CorrectionPolicy.REPLACE)
    images = Query(Model.STUDY_ROOT, Level.IMAGE, (Condition("StudyInstanceUID", Match.SINGLE, (study,)),))
    found = await index.search(images, limit=10)
    assert [(values["SOPInstanceUID"], values["InstanceNumber"]) for _, values, _ in found] == [
        (shown.sop_instance_uid, 7)]
    stored = found[0][2]
    assert stored is not None and stored.storage_key == "instances/corrected"
    assert await study_uids(index) == {study}
    assert await index.count_matches(images, 100) == 1


async def test_pages_follow_the_unique_key_and_counting_stops_at_its_limit(index: Index) -> None:
    uids = sorted(new_uid() for _ in range(7))
    for uid in uids:
        await index.record_instance(make_row(study_instance_uid=uid), CorrectionPolicy.REPLACE)
    query = study_query()
    seen, after = [], None
    while True:
        page = await index.search(query, after=after, limit=3)
        if not page:
            break
        seen.extend(values["StudyInstanceUID"] for _, values, _ in page)
        after = page[-1][0]
    assert seen == uids
    assert await index.count_matches(query, 5) == 5
    offset = await index.search(query, limit=2, offset=4)
    assert [values["StudyInstanceUID"] for _, values, _ in offset] == uids[4:6]


async def test_patient_level_counts_and_the_current_patient_attributes(index: Index) -> None:
    await index.record_instance(make_row(patient_id="P9", patient_attributes=patient("Old^Name", "P9")),
                                CorrectionPolicy.REPLACE)
    await index.record_instance(make_row(patient_id="P9", patient_attributes=patient("New^Name", "P9")),
                                CorrectionPolicy.REPLACE)
    query = Query(Model.PATIENT_ROOT, Level.PATIENT, (Condition("PatientID", Match.SINGLE, ("P9",)),),
                  ("NumberOfPatientRelatedStudies", "NumberOfPatientRelatedInstances"))
    [(_, values, _)] = await index.search(query, query.returns, limit=10)
    assert values["PatientName"] == "New^Name"
    assert values["NumberOfPatientRelatedStudies"] == 2
    assert values["NumberOfPatientRelatedInstances"] == 2
