"""IHE IOCM rejection notes (RAD TF-3 4.66; PS3.16 CID 7011): a Key Object Selection Document whose title says
why the instances it references are withdrawn (``gateway.core.iocm``). Read here for the receiver and the store
stage, built here for operators (``dicom-gateway reject``)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from datetime import datetime

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from gateway.core.errors import CannotUnderstand
from gateway.core.iocm import Reference, RejectionNote, Title
from gateway.dicom.kos_check import KEY_OBJECT_SELECTION_DOCUMENT_STORAGE, check_kos

FINDINGS_LISTED = 5


def title_of(dataset: Dataset) -> Title | None:
    """The rejection title of a KOS, or None for any other document. A coding scheme version (``01``) is
    ignored, as the reference archive does."""
    if _text(dataset, "SOPClassUID") != KEY_OBJECT_SELECTION_DOCUMENT_STORAGE:
        return None
    codes = dataset.get("ConceptNameCodeSequence") or []
    if len(codes) != 1 or _text(codes[0], "CodingSchemeDesignator") != "DCM":
        return None
    try:
        return Title(_text(codes[0], "CodeValue"))
    except ValueError:
        return None


def read_note(dataset: Dataset) -> RejectionNote | None:
    """The rejection note ``dataset`` is, None when it is not one; raises CannotUnderstand when its title makes
    it one but the KOS breaks its IOD (a note half understood must not withdraw half the images)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's notes on odd values may quote patient data
        title = title_of(dataset)
        if title is None:
            return None
        errors = [finding for finding in check_kos(dataset, manifest=False) if finding.severity == "error"]
        if errors:
            listed = "; ".join(f"{finding.code} at {finding.path}" for finding in errors[:FINDINGS_LISTED])
            raise CannotUnderstand(f"rejection note breaks the KOS IOD: {listed}")
        references = tuple(
            Reference(_text(study, "StudyInstanceUID"), _text(series, "SeriesInstanceUID"),
                      _text(sop, "ReferencedSOPClassUID"), _text(sop, "ReferencedSOPInstanceUID"))
            for study in dataset.get("CurrentRequestedProcedureEvidenceSequence") or []
            for series in study.get("ReferencedSeriesSequence") or []
            for sop in series.get("ReferencedSOPSequence") or [])
        if not all(reference.study_instance_uid and reference.series_instance_uid for reference in references):
            raise CannotUnderstand("rejection note: an evidence item has no Study or Series Instance UID")
        if len({reference.sop_instance_uid for reference in references}) != len(references):
            raise CannotUnderstand("rejection note lists an instance twice")
        note_uid = _text(dataset, "SOPInstanceUID")
        if any(reference.sop_instance_uid == note_uid for reference in references):
            raise CannotUnderstand("rejection note references itself")
        return RejectionNote(note_uid, _text(dataset, "StudyInstanceUID"), title, references)


PATIENT_STUDY_KEYWORDS = (
    "SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "StudyID", "AccessionNumber", "IssuerOfAccessionNumberSequence", "StudyDescription", "ProcedureCodeSequence")
"""Copied from an instance of the study into a note built here (the Patient and General Study modules)."""


def build_note(title: Title, study: Dataset, references: Sequence[Reference], now: datetime,
               manufacturer: str) -> Dataset:
    """A rejection note for ``references``, all of ``study``'s study (an instance's data set, from which the
    patient and study attributes are copied), in a new series of its own, as the reference archive builds one
    (TID 2010 content, no procedure step)."""
    note = Dataset()
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in study:
            note[keyword] = study[keyword]
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        note.setdefault(keyword, "")
    note.SOPClassUID = KEY_OBJECT_SELECTION_DOCUMENT_STORAGE
    note.SOPInstanceUID = generate_uid()
    note.Modality = "KO"
    note.SeriesInstanceUID = generate_uid()
    note.SeriesNumber = 9999
    note.InstanceNumber = 1
    note.Manufacturer = manufacturer
    note.ContentDate = now.strftime("%Y%m%d")
    note.ContentTime = now.strftime("%H%M%S")
    note.ReferencedPerformedProcedureStepSequence = DicomSequence()
    note.ValueType = "CONTAINER"
    note.ContinuityOfContent = "SEPARATE"
    note.ConceptNameCodeSequence = DicomSequence([_code(title.value, "DCM", title.meaning)])
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "2010"
    note.ContentTemplateSequence = DicomSequence([template])
    content = []
    for reference in references:
        item = Dataset()
        item.RelationshipType = "CONTAINS"
        item.ValueType = "COMPOSITE"
        item.ReferencedSOPSequence = DicomSequence([_sop(reference)])
        content.append(item)
    note.ContentSequence = DicomSequence(content)
    note.CurrentRequestedProcedureEvidenceSequence = DicomSequence(_evidence(references))
    return note


def _evidence(references: Sequence[Reference]) -> list[Dataset]:
    by_study: dict[str, dict[str, list[Reference]]] = {}
    for reference in references:
        by_study.setdefault(reference.study_instance_uid, {}).setdefault(reference.series_instance_uid,
                                                                         []).append(reference)
    studies = []
    for study_uid, series in by_study.items():
        study = Dataset()
        study.StudyInstanceUID = study_uid
        items = []
        for series_uid, members in series.items():
            item = Dataset()
            item.SeriesInstanceUID = series_uid
            item.ReferencedSOPSequence = DicomSequence([_sop(member) for member in members])
            items.append(item)
        study.ReferencedSeriesSequence = DicomSequence(items)
        studies.append(study)
    return studies


def _sop(reference: Reference) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = reference.sop_class_uid
    item.ReferencedSOPInstanceUID = reference.sop_instance_uid
    return item


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue = value
    code.CodingSchemeDesignator = scheme
    code.CodeMeaning = meaning
    return code


def _text(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword)
    return "" if value is None else str(value).strip(" \0")
