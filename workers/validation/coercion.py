"""Attribute coercion per source AE: what the gateway corrects itself before the rules run.

``plan_coercion`` is pure (header and configuration in, changes out) so the changes can be logged, tested
and applied to the stored object by the storage worker with ``apply_changes``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict
from pydicom.dataset import Dataset

from gateway.hetu import HETU_OID
from workers.validation.header import first_item, patient_id_issuer, text
from workers.validation.model import SourceContext, tag_of

PADDED_IDS = ("PatientID", "IssuerOfPatientID", "AccessionNumber", "StudyID")
"""LO/SH identifiers whose leading and trailing spaces are insignificant but break exact matching downstream."""

QUALIFIERS = "IssuerOfPatientIDQualifiersSequence"


class CoercionConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    issuer_of_patient_id: Literal["never", "if_missing", "always"] = "never"
    """Set Issuer of Patient ID and its qualifiers (Universal Entity ID 1.2.246.21, type ISO)."""
    institution_name: bool = False
    """Set Institution Name to the organisation configured for the calling AE."""
    strip_id_padding: bool = False
    """Remove leading and trailing spaces and NULs from the identifiers in PADDED_IDS."""


@dataclass(frozen=True)
class AttributeChange:
    """Set `keyword` to `value`, in the first item of `sequence` when given (created if absent)."""

    keyword: str
    value: str
    reason: str
    sequence: str = ""

    def to_dict(self) -> dict[str, str]:
        """For logs: the value is left out, as it may be a patient ID."""
        entry = {"keyword": self.keyword, "tag": f"{tag_of(self.keyword):08X}", "reason": self.reason}
        if self.sequence:
            entry["sequence"] = self.sequence
        return entry


def _issuer_changes(ds: Dataset) -> list[AttributeChange]:
    item = first_item(ds, QUALIFIERS) or Dataset()
    wanted = (
        ("IssuerOfPatientID", HETU_OID, text(ds, "IssuerOfPatientID"), ""),
        ("UniversalEntityID", HETU_OID, text(item, "UniversalEntityID"), QUALIFIERS),
        ("UniversalEntityIDType", "ISO", text(item, "UniversalEntityIDType"), QUALIFIERS),
    )
    return [
        AttributeChange(keyword, value, "issuer of the national personal identity code", sequence)
        for keyword, value, current, sequence in wanted
        if current != value
    ]


def plan_coercion(ds: Dataset, config: CoercionConfig, source: SourceContext) -> list[AttributeChange]:
    """The changes `config` asks for on this header; empty when it already conforms."""
    changes: list[AttributeChange] = []
    if config.issuer_of_patient_id == "always" or (
        config.issuer_of_patient_id == "if_missing" and not patient_id_issuer(ds)
    ):
        changes += _issuer_changes(ds)
    if config.strip_id_padding:
        coerced = {change.keyword for change in changes if not change.sequence}
        for keyword in PADDED_IDS:
            value = ds.get(keyword)
            if keyword not in coerced and isinstance(value, str) and value != value.strip(" \0"):
                changes.append(AttributeChange(keyword, value.strip(" \0"), "padding removed"))
    if config.institution_name and source.organization and text(ds, "InstitutionName") != source.organization:
        changes.append(AttributeChange("InstitutionName", source.organization, "organisation of the calling AE"))
    return changes


def apply_changes(ds: Dataset, changes: Iterable[AttributeChange]) -> None:
    """Apply planned changes to `ds` in place."""
    for change in changes:
        target = ds
        if change.sequence:
            if not ds.get(change.sequence):
                setattr(ds, change.sequence, [Dataset()])
            target = ds[change.sequence].value[0]
        setattr(target, change.keyword, change.value)
