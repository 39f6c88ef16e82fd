"""How identifiers and QIDO-RS parameters become queries (PS3.4 C.2.2.2 matching, C.4.1.2.2 hierarchy)."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from gateway.core.query import InvalidQuery, Level, Match, Model, condition, parse_identifier, parse_qido


def identifier(**values: str) -> Dataset:
    dataset = Dataset()
    for keyword, value in values.items():
        setattr(dataset, keyword, value)
    return dataset


def test_each_matching_type_follows_from_the_value_and_the_vr() -> None:
    assert condition("PatientID", "", True) is None
    assert condition("PatientName", "*", True) is None
    assert condition("PatientID", "P1", True).match is Match.SINGLE  # type: ignore[union-attr]
    name = condition("PatientName", "MÄKE*", True)
    assert name is not None and name.match is Match.WILDCARD and name.fold
    assert condition("PatientName", "MÄKE*", False).fold is False  # type: ignore[union-attr]
    assert condition("StudyInstanceUID", "1.2\\1.3", True).values == ("1.2", "1.3")  # type: ignore[union-attr]
    assert condition("StudyDate", "20260101-", True).values == ("20260101", "")  # type: ignore[union-attr]
    # a UID or date with a wildcard character is a single value (it matches nothing), not a pattern
    assert condition("StudyInstanceUID", "1.2*", True).match is Match.SINGLE  # type: ignore[union-attr]


def test_a_time_range_ends_at_the_end_of_its_last_unit() -> None:
    assert condition("StudyTime", "1000-1800", True).values == ("1000", "180099.999999")  # type: ignore[union-attr]
    assert condition("StudyTime", "-101500.5", True).values == ("", "101500.5")  # type: ignore[union-attr]


def test_hierarchy_and_unsupported_keys() -> None:
    query = parse_identifier(identifier(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2", Modality="CT",
                                        SeriesDescription="head*", SeriesInstanceUID=""),
                             Model.STUDY_ROOT, True)
    assert query.level is Level.SERIES
    assert {c.keyword for c in query.conditions} == {"StudyInstanceUID", "Modality"}
    assert query.unsupported == ("SeriesDescription",) and query.unsupported_matching
    with pytest.raises(InvalidQuery, match="StudyInstanceUID must hold one value"):
        parse_identifier(identifier(QueryRetrieveLevel="SERIES", SeriesInstanceUID=""), Model.STUDY_ROOT, True)
    with pytest.raises(InvalidQuery, match="below the STUDY level"):
        parse_identifier(identifier(QueryRetrieveLevel="STUDY", SOPInstanceUID=""), Model.STUDY_ROOT, True)
    with pytest.raises(InvalidQuery, match="no PATIENT level"):
        parse_identifier(identifier(QueryRetrieveLevel="PATIENT"), Model.STUDY_ROOT, True)
    with pytest.raises(InvalidQuery, match="PatientID must hold one value"):
        parse_identifier(identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=""), Model.PATIENT_ROOT, True)
    with pytest.raises(InvalidQuery, match="needs StudyInstanceUID"):
        parse_identifier(identifier(QueryRetrieveLevel="STUDY", PatientID="P1"), Model.STUDY_ROOT, True,
                         retrieve=True)


def test_qido_parameters_by_keyword_or_tag_and_includefield() -> None:
    query, include = parse_qido(Level.STUDY, [("00100020", "P1"), ("StudyDate", "20260101-20260131"),
                                             ("includefield", "StudyDescription,00080090"), ("limit", "5")],
                                True, {})
    assert {c.keyword: c.match for c in query.conditions} == {"PatientID": Match.SINGLE, "StudyDate": Match.RANGE}
    assert include == ("StudyDescription", "ReferringPhysicianName")
    with pytest.raises(InvalidQuery):
        parse_qido(Level.STUDY, [("Nonsense", "1")], True, {})
    # an attribute the index cannot match on is left unmatched (the response's Warning names it)
    unmatched, _ = parse_qido(Level.STUDY, [("NumberOfStudyRelatedInstances", "3"), ("StudyInstanceUID", "1.2,1.3")],
                              True, {})
    assert unmatched.unsupported == ("NumberOfStudyRelatedInstances",) and unmatched.unsupported_matching
    assert [c.values for c in unmatched.conditions] == [("1.2", "1.3")]  # a comma-separated UID list
    with pytest.raises(InvalidQuery, match="list of integers"):
        parse_qido(Level.SERIES, [("SeriesNumber", "a\\b")], True, {})
