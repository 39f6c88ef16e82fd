"""Audit records of images going out (C-MOVE, C-GET, WADO-RS): Begin Transferring before the first byte, DICOM
Instances Transferred at the end, one record per patient (PS3.15 A.5.3.3: a message names one patient).

The end record names the recipient, which makes it a disclosure (ParticipantObjectDataLifeCycle 11) in the
repository and in the local audit log.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from gateway.core import audit
from gateway.core.audit import AuditRecord, AuditTrail, Participant
from gateway.index import Patients, Stored


async def by_patient(index: Patients, instances: Iterable[tuple[str, str]],
                     ) -> list[tuple[audit.Patient, tuple[audit.Study, ...]]]:
    """(Study Instance UID, SOP Class UID) of each instance, as (patient, studies with their SOP classes and
    counts), the patient as the index has it now."""
    classes: dict[str, Counter[str]] = {}
    for study_uid, sop_class_uid in instances:
        classes.setdefault(study_uid, Counter())[sop_class_uid] += 1
    patients = await index.patients_of_studies(list(classes))
    grouped: dict[tuple[str, str], list[audit.Study]] = {}
    for study, counts in classes.items():
        patient = patients.get(study)
        key = (patient.patient_id, patient.issuer) if patient is not None else ("", "")
        grouped.setdefault(key, []).append(audit.Study(study, tuple(sorted(counts.items()))))
    return [(audit.Patient(patient_id, issuer), tuple(studies)) for (patient_id, issuer), studies in grouped.items()]


def instance_classes(instances: Iterable[Stored]) -> list[tuple[str, str]]:
    return [(stored.study_instance_uid, stored.sop_class_uid) for stored in instances]


class Transfer:
    """One retrieve's records: ``begin`` is awaited before anything is sent, ``end`` once it is over."""

    def __init__(self, trail: AuditTrail, interface: audit.Interface, participants: tuple[Participant, ...],
                 recipient: str, groups: list[tuple[audit.Patient, tuple[audit.Study, ...]]]) -> None:
        self._trail = trail
        self._interface = interface
        self._participants = participants
        self._recipient = recipient
        self._groups = groups

    async def begin(self) -> None:
        for patient, studies in self._groups:
            await self._trail.record(AuditRecord(
                audit.Event.BEGIN_TRANSFERRING, audit.Outcome.SUCCESS, self._participants, self._interface,
                audit.Action.EXECUTE, patient=patient if patient.id else None, studies=studies))

    async def end(self, sent: int, failed: int, why: str = "") -> None:
        outcome = (audit.Outcome.SUCCESS if not failed else
                   audit.Outcome.MINOR_FAILURE if sent else audit.Outcome.SERIOUS_FAILURE)
        text = f"{failed} of {sent + failed} instances not sent" + (f": {why}" if why else "") if failed else ""
        for patient, studies in self._groups:
            await self._trail.record(AuditRecord(
                audit.Event.INSTANCES_TRANSFERRED, outcome, self._participants, self._interface, audit.Action.READ,
                patient=patient if patient.id else None, studies=studies, recipient=self._recipient,
                outcome_text=text))
