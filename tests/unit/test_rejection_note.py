"""Reading IOCM rejection notes as senders make them (highdicom's builder, a hand-made one, dcmtk's from a dump),
refusing those that cannot be applied whole, and the notes the gateway builds for operators."""

from __future__ import annotations

import copy
import warnings
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest
from highdicom.ko import KeyObjectSelection, KeyObjectSelectionDocument
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from gateway.bus import MAX_RECORD_BYTES
from gateway.core import events
from gateway.core.errors import CannotUnderstand
from gateway.core.iocm import OVERWRITES, Reference, Title
from gateway.dicom.kos_check import check_kos
from gateway.dicom.rejection import build_note, read_note, title_of
from tests.notes import dcmtk_note
from workers.store import EVENT_INSTANCES

CT = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]


def instances(count: int, study: str = "") -> list[Dataset]:
    made = []
    for _ in range(count):
        dataset = pydicom.dcmread(CT)
        dataset.SOPInstanceUID = generate_uid()
        if study:
            dataset.StudyInstanceUID = study
        made.append(dataset)
    return made


def highdicom_note(title: object, referenced: list[Dataset]) -> Dataset:
    content = KeyObjectSelection(document_title=title, referenced_objects=referenced)  # type: ignore[arg-type]
    return KeyObjectSelectionDocument(evidence=referenced, content=content, series_instance_uid=generate_uid(),
                                      series_number=99, sop_instance_uid=generate_uid(), instance_number=1,
                                      manufacturer="Test")


@pytest.mark.parametrize(("code", "title"), [(codes.DCM.RejectedForQualityReasons, Title.QUALITY),
                                             (codes.DCM.RejectedForPatientSafetyReasons, Title.PATIENT_SAFETY),
                                             (codes.DCM.IncorrectModalityWorklistEntry, Title.WORKLIST),
                                             (codes.DCM.DataRetentionPolicyExpired, Title.RETENTION_EXPIRED)])
def test_a_note_built_by_highdicom_is_read_with_its_title_and_references(code: object, title: Title) -> None:
    referenced = instances(2)
    note = read_note(highdicom_note(code, referenced))
    assert note is not None and note.title is title
    assert {r.sop_instance_uid for r in note.references} == {str(d.SOPInstanceUID) for d in referenced}
    assert {r.series_instance_uid for r in note.references} == {str(referenced[0].SeriesInstanceUID)}


def test_other_documents_are_not_notes() -> None:
    manifest = highdicom_note(codes.DCM.Manifest, instances(1))
    assert read_note(manifest) is None
    assert read_note(pydicom.dcmread(CT)) is None


def test_a_coding_scheme_version_does_not_hide_the_title() -> None:
    note = highdicom_note(codes.DCM.RejectedForQualityReasons, instances(1))
    note.ConceptNameCodeSequence[0].CodingSchemeVersion = "01"
    assert title_of(note) is Title.QUALITY


def _broken(change: str) -> Dataset:
    note = highdicom_note(codes.DCM.RejectedForQualityReasons, instances(2))
    if change == "no evidence":
        del note.CurrentRequestedProcedureEvidenceSequence
    elif change == "evidence lists another instance":
        note.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
            .ReferencedSOPInstanceUID = generate_uid()
    elif change == "bad uid":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns of the invalid UID this case is about
            note.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID = "1.2.abc"
    elif change == "no content":
        note.ContentSequence = []
    elif change == "references itself":
        own = note.SOPInstanceUID
        note.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID = own
        note.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
            .ReferencedSOPInstanceUID = own
    elif change == "lists an instance twice":
        series = note.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        series.ReferencedSOPSequence.append(copy.deepcopy(series.ReferencedSOPSequence[0]))
    elif change == "evidence series without its uid":
        del note.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].SeriesInstanceUID
    return note


@pytest.mark.parametrize("change", ["no evidence", "evidence lists another instance", "bad uid", "no content",
                                    "references itself", "lists an instance twice",
                                    "evidence series without its uid"])
def test_a_note_that_cannot_be_applied_whole_is_refused_with_a_reason_naming_no_value(change: str) -> None:
    note = _broken(change)
    with pytest.raises(CannotUnderstand) as refused:
        read_note(note)
    assert str(note.PatientID) not in str(refused.value)
    assert refused.value.status == 0xC000


def test_a_note_made_by_dcmtk_from_a_dump_is_read(tmp_path: Path) -> None:
    study, series, sop = (generate_uid() for _ in range(3))
    path = dcmtk_note(tmp_path, "113037", "Rejected for Patient Safety Reasons",
                      [("1.2.840.10008.5.1.4.1.1.2", sop)], study, series, patient_id="PID-1")
    made = pydicom.dcmread(path)
    note = read_note(made)
    assert note is not None and note.title is Title.PATIENT_SAFETY and note.sop_instance_uid == made.SOPInstanceUID
    assert note.references == (Reference(study, series, "1.2.840.10008.5.1.4.1.1.2", sop),)


def test_a_note_the_gateway_builds_passes_the_kos_check_and_reads_back() -> None:
    study = generate_uid()
    referenced = instances(2, study)
    references = [Reference(study, str(d.SeriesInstanceUID), str(d.SOPClassUID), str(d.SOPInstanceUID))
                  for d in referenced]
    built = build_note(Title.WORKLIST, referenced[0], references, datetime(2026, 12, 1, 10, 15, tzinfo=UTC),
                       "dicom-gateway")
    assert [f for f in check_kos(built, manifest=False) if f.severity == "error"] == []
    assert (built.PatientID, built.StudyInstanceUID) == (referenced[0].PatientID, study)
    note = read_note(built)
    assert note is not None and note.title is Title.WORKLIST and note.references == tuple(references)


def test_weightier_titles_overwrite_lighter_ones_only() -> None:
    assert Title.QUALITY in OVERWRITES[Title.PATIENT_SAFETY]
    assert Title.PATIENT_SAFETY not in OVERWRITES[Title.QUALITY]
    assert all(title not in OVERWRITES[title] for title in Title)
    assert OVERWRITES[Title.RETENTION_EXPIRED] == {Title.QUALITY, Title.PATIENT_SAFETY, Title.WORKLIST}


def test_the_rejection_events_travel_and_come_back_equal() -> None:
    rejected = events.InstancesRejected(study_instance_uid="1.2.3", title="113001", note_sop_instance_uid="1.2.4",
                                        note_study_instance_uid="1.2.3", instances=(("1.2.5", "1.2.840", "1.2.6"),),
                                        rejected_at="2026-12-01T10:15:00+00:00")
    assert events.decode(events.encode(rejected)) == rejected
    withdrawn = events.InstanceWithdrawn(outcome="ignored", sop_instance_uid="1.2.6", sop_class_uid="1.2.840",
                                         study_instance_uid="1.2.3", series_instance_uid="1.2.5", status="rejected",
                                         version=1, instance_id="x", storage_key="k", size=1, sha256="s",
                                         source_ae="CT", stored_at="2026-12-01T10:15:00+00:00", title="113001",
                                         note_sop_instance_uid="1.2.4")
    assert events.decode(events.encode(withdrawn)) == withdrawn
    with pytest.raises(events.UndecodableEvent):
        events.decode(events.encode(rejected).replace(b'"instances":[[', b'"instances":[[1,'))


def test_one_part_of_a_large_rejection_fits_one_bus_record() -> None:
    longest = "1." + "2" * 62  # UIDs at their 64-character limit
    part = events.InstancesRejected(study_instance_uid=longest, title="113001", note_sop_instance_uid=longest,
                                    note_study_instance_uid=longest, instances=((longest, longest, longest),)
                                    * EVENT_INSTANCES, rejected_at="2026-12-01T10:15:00+00:00", part=1, parts=4)
    assert len(events.encode(part)) < MAX_RECORD_BYTES - 64 * 1024  # with room for the key and headers
