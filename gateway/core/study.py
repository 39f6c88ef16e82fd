"""A study's instances as the builders see them (KOS manifests and XDS metadata now; IANs and query responses
next): identifiers and the attributes each instance carried, without the index's bookkeeping (keys, hashes,
findings), so that builders depend on this value and not on the index."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class InstanceStatus(StrEnum):
    STORED = "stored"
    QUARANTINED = "quarantined"
    REPLACED = "replaced"
    """Superseded by a correction; kept with its storage key so the prior version stays retrievable."""
    REJECTED = "rejected"
    """Withdrawn by an IOCM rejection note: kept (until a retention-expiry note's grace ends), never served."""


@dataclass(frozen=True, slots=True)
class StudyInstance:
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    series_number: int | None
    instance_number: int | None
    modality: str
    status: InstanceStatus
    version: int
    stored_at: datetime
    patient_id: str
    issuer_of_patient_id: str
    accession_number: str
    study_date: str
    study_time: str
    study_description: str
    source_organization_oid: str
    """The organisation of the AE that sent it (from the AE settings)."""
    patient_attributes: dict[str, str] = field(default_factory=dict)
    """PatientID, IssuerOfPatientID, PatientName, PatientBirthDate, PatientSex as the instance had them."""
    study_id: str = ""
    referring_physician_name: str = ""
    issuer_of_accession_number: str = ""
    """Universal Entity ID of the Issuer of Accession Number Sequence, when the instance had one."""


@dataclass(frozen=True, slots=True)
class Patient:
    """A patient's current attributes in the index, which are the truth once an ADT message set them: every
    object served and every answer built later carries these, whatever the stored instance says."""

    patient_id: str
    issuer: str
    name: str = ""
    birth_date: str = ""
    sex: str = ""
    charset: str = ""
    """The DICOM Specific Character Set the name came in (an ADT's MSH-18); empty when it came from an instance."""

    def attributes(self) -> dict[str, str]:
        return {"PatientID": self.patient_id, "IssuerOfPatientID": self.issuer, "PatientName": self.name,
                "PatientBirthDate": self.birth_date, "PatientSex": self.sex}

    def differs_from(self, stored: Mapping[str, str]) -> bool:
        """Whether an instance that had ``stored`` (its patient attributes) must be rewritten on the way out."""
        return any(stored.get(keyword, "") != value for keyword, value in self.attributes().items())
