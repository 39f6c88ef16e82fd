"""Patient attributes that change within a study are conflicts; their values never reach the messages."""

from __future__ import annotations

from pydicom.dataset import Dataset

from workers.validation import Severity, patient_attributes, patient_conflicts


def test_same_patient_is_no_conflict(header: Dataset) -> None:
    assert patient_conflicts(patient_attributes(header), header) == []


def test_each_differing_attribute_is_a_conflict(header: Dataset) -> None:
    seen = patient_attributes(header)
    header.PatientID = "010594Y9032"
    header.PatientName = "Virtanen^Maija"
    header.PatientSex = "F"
    findings = patient_conflicts(seen, header)
    assert [(f.code, f.keyword, f.severity) for f in findings] == [
        ("DICOM-PATIENT-CONFLICT", "PatientID", Severity.ERROR),
        ("DICOM-PATIENT-CONFLICT", "PatientName", Severity.ERROR),
        ("DICOM-PATIENT-CONFLICT", "PatientSex", Severity.ERROR),
    ]
    assert not any(value in f.message for f in findings for value in ("010594Y9032", "Virtanen", "131052"))


def test_issuer_is_compared_as_the_effective_one(header: Dataset) -> None:
    seen = patient_attributes(header)
    header.IssuerOfPatientID = "local name"
    assert patient_conflicts(seen, header) == []
    header.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID = "1.2.246.10.2048198.22.2024"
    assert [f.keyword for f in patient_conflicts(seen, header)] == ["IssuerOfPatientID"]


def test_insignificant_name_padding_and_empty_values_are_no_conflict(header: Dataset) -> None:
    seen = patient_attributes(header)
    header.PatientName = "Meikäläinen^Matti^^^"
    header.PatientBirthDate = ""
    assert patient_conflicts(seen, header) == []


def test_severity_can_be_lowered(header: Dataset) -> None:
    seen = patient_attributes(header)
    header.PatientSex = "F"
    [finding] = patient_conflicts(seen, header, Severity.WARNING)
    assert finding.severity is Severity.WARNING
