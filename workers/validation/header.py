"""Reading the few composite values rules share out of a header, tolerating absent and empty elements."""

from __future__ import annotations

from pydicom.dataset import Dataset


def text(ds: Dataset, keyword: str) -> str:
    """The single value of `keyword` as text with insignificant spaces removed; "" if absent or empty."""
    value = ds.get(keyword)
    return "" if value is None else str(value).strip(" \0")


def first_item(ds: Dataset, keyword: str) -> Dataset | None:
    sequence = ds.get(keyword)
    return sequence[0] if sequence else None


def universal_issuer(ds: Dataset) -> str:
    """Issuer of Patient ID Qualifiers Sequence > Universal Entity ID when its type is ISO (an OID)."""
    item = first_item(ds, "IssuerOfPatientIDQualifiersSequence")
    if item is None or text(item, "UniversalEntityIDType") != "ISO":
        return ""
    return text(item, "UniversalEntityID")


def patient_id_issuer(ds: Dataset) -> str:
    """The assigning authority of Patient ID: the ISO Universal Entity ID if given, else Issuer of Patient ID."""
    return universal_issuer(ds) or text(ds, "IssuerOfPatientID")


def study_code(ds: Dataset) -> tuple[str, str] | None:
    """The study's procedure code and the sequence it came from: Requested Procedure Code Sequence first."""
    for keyword in ("RequestedProcedureCodeSequence", "ProcedureCodeSequence"):
        item = first_item(ds, keyword)
        if item is not None:
            code = text(item, "CodeValue") or text(item, "LongCodeValue")
            if code:
                return keyword, code
    return None
