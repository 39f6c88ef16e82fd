"""Patient attributes must agree across the instances of one study.

The caller keeps, per Study Instance UID, the attributes of the first instance it accepted (a small dict from
``patient_attributes``) and asks ``patient_conflicts`` about each later one; both are pure.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydicom.dataset import Dataset

from workers.validation.header import patient_id_issuer, text
from workers.validation.model import Finding, Severity, tag_of

CODE = "DICOM-PATIENT-CONFLICT"
PATIENT_KEYWORDS = ("PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex")


def _person_name(value: str) -> str:
    """Drop trailing empty components and groups, which PS3.5 6.2 makes insignificant."""
    groups = [group.rstrip("^ ") for group in value.split("=")]
    return "=".join(groups).rstrip("=")


def patient_attributes(ds: Dataset) -> dict[str, str]:
    """The patient attributes to remember for the study; the issuer is the effective one (qualifiers first)."""
    return {
        "PatientID": text(ds, "PatientID"),
        "IssuerOfPatientID": patient_id_issuer(ds),
        "PatientName": _person_name(text(ds, "PatientName")),
        "PatientBirthDate": text(ds, "PatientBirthDate"),
        "PatientSex": text(ds, "PatientSex"),
    }


def patient_conflicts(
    seen: Mapping[str, str], ds: Dataset, severity: Severity = Severity.ERROR
) -> list[Finding]:
    """Findings for attributes whose value differs from earlier instances; an empty value on either side is
    not a conflict (type 2 attributes may be empty), the rules report missing values."""
    current = patient_attributes(ds)
    return [
        Finding(
            CODE,
            severity,
            keyword,
            tag_of(keyword),
            f"{keyword} differs from earlier instances of this study; the study must belong to one patient",
        )
        for keyword in PATIENT_KEYWORDS
        if seen.get(keyword) and current[keyword] and seen[keyword] != current[keyword]
    ]
