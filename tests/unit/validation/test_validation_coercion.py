"""Coercion plans exactly the changes its configuration asks for, and applying them makes the header conform."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset

from workers.validation import CoercionConfig, SourceContext, apply_changes, plan_coercion
from workers.validation.header import patient_id_issuer

Put = Callable[[Dataset, str, Any], None]
SOURCE = SourceContext("CT01", "Turun kaupunki", "1.2.246.10.2048198")
IF_MISSING = CoercionConfig(issuer_of_patient_id="if_missing")
ALWAYS = CoercionConfig(issuer_of_patient_id="always")


def _without_issuer(ds: Dataset) -> Dataset:
    del ds.IssuerOfPatientID, ds.IssuerOfPatientIDQualifiersSequence
    return ds


def test_nothing_to_do_on_a_conforming_header(header: Dataset) -> None:
    everything = CoercionConfig(issuer_of_patient_id="always", institution_name=True, strip_id_padding=True)
    assert plan_coercion(header, everything, SOURCE) == []


def test_missing_issuer_is_set_with_its_qualifiers(header: Dataset) -> None:
    ds = _without_issuer(header)
    before = copy.deepcopy(ds)
    changes = plan_coercion(ds, IF_MISSING, SOURCE)
    assert ds == before
    apply_changes(ds, changes)
    assert ds.IssuerOfPatientID == "1.2.246.21"
    item = ds.IssuerOfPatientIDQualifiersSequence[0]
    assert (item.UniversalEntityID, item.UniversalEntityIDType) == ("1.2.246.21", "ISO")


def test_if_missing_keeps_an_existing_issuer(header: Dataset) -> None:
    header.IssuerOfPatientID = "1.2.246.10.2048198.22.2024"
    header.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID = "1.2.246.10.2048198.22.2024"
    assert plan_coercion(header, IF_MISSING, SOURCE) == []


def test_always_overwrites_and_keeps_other_qualifiers(header: Dataset) -> None:
    header.IssuerOfPatientID = "HUS"
    item = header.IssuerOfPatientIDQualifiersSequence[0]
    item.UniversalEntityID, item.UniversalEntityIDType = "hus.fi", "DNS"
    item.IdentifierTypeCode = "NNFIN"
    changes = plan_coercion(header, ALWAYS, SOURCE)
    assert [(c.sequence, c.keyword) for c in changes] == [
        ("", "IssuerOfPatientID"),
        ("IssuerOfPatientIDQualifiersSequence", "UniversalEntityID"),
        ("IssuerOfPatientIDQualifiersSequence", "UniversalEntityIDType"),
    ]
    apply_changes(header, changes)
    assert patient_id_issuer(header) == "1.2.246.21"
    assert header.IssuerOfPatientIDQualifiersSequence[0].IdentifierTypeCode == "NNFIN"


def test_never_leaves_the_issuer_alone(header: Dataset) -> None:
    assert plan_coercion(_without_issuer(header), CoercionConfig(), SOURCE) == []


def test_institution_name_comes_from_the_organisation(header: Dataset) -> None:
    header.InstitutionName = "CT SCANNER 2"
    config = CoercionConfig(institution_name=True)
    [change] = plan_coercion(header, config, SOURCE)
    apply_changes(header, [change])
    assert header.InstitutionName == "Turun kaupunki"
    assert plan_coercion(header, config, SourceContext("CT01")) == []


def test_id_padding_is_stripped(header: Dataset, put: Put) -> None:
    put(header, "PatientID", " 131052-308T")
    put(header, "AccessionNumber", "A2024-1 \0")
    changes = plan_coercion(header, CoercionConfig(strip_id_padding=True), SOURCE)
    assert [c.keyword for c in changes] == ["PatientID", "AccessionNumber"]
    apply_changes(header, changes)
    assert (header.PatientID, header.AccessionNumber) == ("131052-308T", "A2024-1")


def test_an_attribute_is_changed_once(header: Dataset, put: Put) -> None:
    put(header, "IssuerOfPatientID", " HUS ")
    changes = plan_coercion(header, ALWAYS.model_copy(update={"strip_id_padding": True}), SOURCE)
    assert [c.keyword for c in changes if not c.sequence] == ["IssuerOfPatientID"]


def test_change_log_entries_leave_values_out(header: Dataset, put: Put) -> None:
    put(header, "PatientID", " 131052-308T")
    [change] = plan_coercion(header, CoercionConfig(strip_id_padding=True), SOURCE)
    assert change.to_dict() == {"keyword": "PatientID", "tag": "00100020", "reason": "padding removed"}
