"""Instance Availability Notification (PS3.4 Annex R, IOD PS3.3 A.48): what a RIS or PACS is told of a study."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

INSTANCE_AVAILABILITY_NOTIFICATION = "1.2.840.10008.5.1.4.33"
MODALITY_PERFORMED_PROCEDURE_STEP = "1.2.840.10008.3.1.2.3.3"
ONLINE = "ONLINE"
UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class AvailableInstance:
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    availability: str = ONLINE
    """ONLINE here, or UNAVAILABLE: withdrawn by an IOCM rejection note (RAD TF-3 4.66, IAN on rejection)."""


def notification(study_instance_uid: str, instances: Sequence[AvailableInstance], retrieve_ae_title: str,
                 retrieve_location_uid: str = "", procedure_step_uid: str = "") -> Dataset:
    """The N-CREATE attribute list: one Referenced Series item per series, each instance with its availability.
    ``procedure_step_uid``: the MPPS an incorrect-worklist rejection names (IOCM asks for one)."""
    dataset = Dataset()
    dataset.ReferencedPerformedProcedureStepSequence = []
    if procedure_step_uid:
        step = Dataset()
        step.ReferencedSOPClassUID = MODALITY_PERFORMED_PROCEDURE_STEP
        step.ReferencedSOPInstanceUID = procedure_step_uid
        step.PerformedWorkitemCodeSequence = []
        dataset.ReferencedPerformedProcedureStepSequence = [step]
    dataset.StudyInstanceUID = study_instance_uid
    by_series: dict[str, list[AvailableInstance]] = {}
    for instance in instances:
        by_series.setdefault(instance.series_instance_uid, []).append(instance)
    series_items = []
    for series_uid, members in by_series.items():
        series = Dataset()
        series.SeriesInstanceUID = series_uid
        references = []
        for member in members:
            item = Dataset()
            item.ReferencedSOPClassUID = member.sop_class_uid
            item.ReferencedSOPInstanceUID = member.sop_instance_uid
            item.RetrieveAETitle = retrieve_ae_title
            item.InstanceAvailability = member.availability
            if retrieve_location_uid:
                item.RetrieveLocationUID = retrieve_location_uid
            references.append(item)
        series.ReferencedSOPSequence = references
        series_items.append(series)
    dataset.ReferencedSeriesSequence = series_items
    return dataset
