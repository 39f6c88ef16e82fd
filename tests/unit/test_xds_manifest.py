"""The XDS-I.b KOS manifest: the KOS-manifest checklist, exactly the stored instances by series, Part 10
round trip, and the layout of the real NIST XDS-I manifests."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    BasicTextSRStorage,
    CTImageStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    TwelveLeadECGWaveformStorage,
)

from gateway.core.study import InstanceStatus, StudyInstance
from gateway.xds.manifest import (
    KEY_OBJECT_SELECTION_DOCUMENT_STORAGE,
    build_manifest,
    content_value_type,
    to_part10,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "xds_client"
NIST_KOS = sorted(DATA.glob("nist-*.dcm"))
STUDY = "1.2.246.10.2048198.1.1"
ORGANIZATION_OID = "1.2.246.10.2048198"
REPOSITORY_OID = "1.2.246.10.2048198.10.7"
NOW = datetime(2024, 1, 15, 10, 0, 0, tzinfo=UTC)
PATIENT = {"PatientID": "131052-308T", "IssuerOfPatientID": "1.2.246.21", "PatientName": "Äijälä^Öljy^Ä",
           "PatientBirthDate": "19521013", "PatientSex": "M"}


def instance_row(sop: str, series: str = f"{STUDY}.1", number: int = 1, **changes: Any) -> StudyInstance:
    """A stored CT instance of the test study; keyword arguments replace fields."""
    row = StudyInstance(
        sop_instance_uid=sop, sop_class_uid=CTImageStorage, study_instance_uid=STUDY, series_instance_uid=series,
        series_number=int(series.rsplit(".", 1)[1]), instance_number=number, modality="CT",
        status=InstanceStatus.STORED, version=1, stored_at=NOW - timedelta(hours=1),
        patient_id=PATIENT["PatientID"], issuer_of_patient_id=PATIENT["IssuerOfPatientID"],
        accession_number="TKU-2024-1", study_date="20240105", study_time="101500", study_description="TT pää",
        source_organization_oid=ORGANIZATION_OID, patient_attributes=dict(PATIENT),
    )
    return replace(row, **changes)


def study_rows() -> list[StudyInstance]:
    """Two CT series and a report series, one quarantined and one replaced instance among them."""
    return [
        instance_row(f"{STUDY}.2.1.3", f"{STUDY}.2", 3),
        instance_row(f"{STUDY}.1.1.2", f"{STUDY}.1", 2),
        instance_row(f"{STUDY}.1.1.1", f"{STUDY}.1", 1),
        instance_row(f"{STUDY}.1.1.9", f"{STUDY}.1", 9, status=InstanceStatus.QUARANTINED),
        instance_row(f"{STUDY}.2.1.1", f"{STUDY}.2", 1, status=InstanceStatus.REPLACED),
        instance_row(f"{STUDY}.2.1.1", f"{STUDY}.2", 1, version=2),
        instance_row(f"{STUDY}.3.1.1", f"{STUDY}.3", 1, sop_class_uid=BasicTextSRStorage, modality="SR"),
    ]


def manifest(rows: list[StudyInstance] | None = None, **overrides: Any) -> Dataset:
    arguments: dict[str, Any] = {
        "retrieve_ae_title": "DICOMGW", "retrieve_location_uid": REPOSITORY_OID,
        "institution_name": "Turun kaupunki", "now": NOW, "sop_instance_uid": "2.25.1001",
        "series_instance_uid": "2.25.1002",
    }
    return build_manifest(study_rows() if rows is None else rows, **(arguments | overrides))


def evidence(ds: Dataset) -> dict[str, list[tuple[str, str]]]:
    """Series Instance UID -> (SOP Class, SOP Instance) of the evidence sequence, in order."""
    return {
        series.SeriesInstanceUID: [(s.ReferencedSOPClassUID, s.ReferencedSOPInstanceUID)
                                   for s in series.ReferencedSOPSequence]
        for study in ds.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
    }


def check_manifest(ds: Dataset) -> None:
    """Checks 1-5 of the KOS-manifest checklist (shared/ref/dicom/KOS-manifest.md), for any XDS-I manifest."""
    assert ds.SOPClassUID == KEY_OBJECT_SELECTION_DOCUMENT_STORAGE
    assert ds.Modality == "KO"
    assert len(ds.ConceptNameCodeSequence) == 1
    title = ds.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == ("113030", "DCM", "Manifest")
    assert ds.ValueType == "CONTAINER"
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "2010"
    assert len(ds.CurrentRequestedProcedureEvidenceSequence) >= 1
    listed = set()
    for study in ds.CurrentRequestedProcedureEvidenceSequence:
        assert study.StudyInstanceUID == ds.StudyInstanceUID
        for series in study.ReferencedSeriesSequence:
            assert series.SeriesInstanceUID
            assert series.RetrieveAETitle and series.RetrieveLocationUID
            assert len(series.ReferencedSOPSequence) >= 1
            listed |= {(s.ReferencedSOPClassUID, s.ReferencedSOPInstanceUID) for s in series.ReferencedSOPSequence}
    content = {
        (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID)
        for item in ds.ContentSequence if item.ValueType in ("IMAGE", "COMPOSITE", "WAVEFORM")
        for ref in item.ReferencedSOPSequence
    }
    assert content == listed
    assert all(item.RelationshipType == "CONTAINS" for item in ds.ContentSequence)


@pytest.mark.parametrize("path", NIST_KOS, ids=lambda p: p.name)
def test_the_checklist_accepts_the_nist_manifests(path: Path) -> None:
    check_manifest(pydicom.dcmread(path))


def test_manifest_meets_the_checklist() -> None:
    ds = manifest()
    check_manifest(ds)
    assert ds.SOPInstanceUID == "2.25.1001"
    assert ds.SeriesInstanceUID == "2.25.1002"
    assert ds.SeriesInstanceUID not in evidence(ds)
    assert ds.SeriesNumber == 999 and ds.InstanceNumber == 1
    assert ds.StudyInstanceUID == STUDY
    assert ds.ContinuityOfContent == "SEPARATE"
    assert ds.ContentTemplateSequence[0].MappingResource == "DCMR"
    assert ds.ReferencedPerformedProcedureStepSequence == []
    assert ds.InstitutionName == "Turun kaupunki"


def test_evidence_lists_exactly_the_stored_instances_by_series() -> None:
    ds = manifest()
    assert evidence(ds) == {
        f"{STUDY}.1": [(CTImageStorage, f"{STUDY}.1.1.1"), (CTImageStorage, f"{STUDY}.1.1.2")],
        f"{STUDY}.2": [(CTImageStorage, f"{STUDY}.2.1.1"), (CTImageStorage, f"{STUDY}.2.1.3")],
        f"{STUDY}.3": [(BasicTextSRStorage, f"{STUDY}.3.1.1")],
    }
    series = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert {(s.RetrieveAETitle, s.RetrieveLocationUID) for s in series} == {("DICOMGW", REPOSITORY_OID)}
    assert all("RetrieveURL" not in s for s in series)
    assert [item.ValueType for item in ds.ContentSequence] == ["IMAGE"] * 4 + ["COMPOSITE"]


def test_quarantined_and_replaced_instances_are_left_out() -> None:
    listed = {sop for refs in evidence(manifest()).values() for _, sop in refs}
    assert f"{STUDY}.1.1.9" not in listed
    assert len(listed) == 5


def test_retrieve_url_only_when_given() -> None:
    ds = manifest(retrieve_url="https://gateway.example/wado")
    series = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    assert {s.RetrieveURL for s in series} == {"https://gateway.example/wado"}


def test_patient_and_study_come_from_the_newest_stored_row() -> None:
    rows = study_rows()
    renamed = {**PATIENT, "PatientName": "Uusi^Nimi", "PatientSex": "O"}
    rows.append(instance_row(f"{STUDY}.1.1.5", f"{STUDY}.1", 5, stored_at=NOW, patient_attributes=renamed,
                             study_description="TT pää ja kaula", accession_number="TKU-2024-2"))
    rows.append(instance_row(f"{STUDY}.1.1.6", f"{STUDY}.1", 6, stored_at=NOW + timedelta(seconds=1),
                             status=InstanceStatus.QUARANTINED, patient_attributes={"PatientName": "Väärä^Nimi"}))
    ds = manifest(rows)
    assert str(ds.PatientName) == "Uusi^Nimi" and ds.PatientSex == "O"
    assert ds.StudyDescription == "TT pää ja kaula"
    assert ds.AccessionNumber == "TKU-2024-2"


def test_study_id_referring_physician_and_accession_issuer_come_from_the_study() -> None:
    rows = study_rows()
    rows.append(instance_row(f"{STUDY}.1.1.5", f"{STUDY}.1", 5, stored_at=NOW, study_id="TT-1234",
                             referring_physician_name="Lähettäjä^Liisa", issuer_of_accession_number="1.2.246.10.99.1",
                             study_date="20240106", study_time="080000"))
    rows.append(instance_row(f"{STUDY}.1.1.6", f"{STUDY}.1", 6, stored_at=NOW + timedelta(seconds=1),
                             status=InstanceStatus.QUARANTINED, study_id="VÄÄRÄ", referring_physician_name="Väärä^X"))
    ds = manifest(rows, accession_issuer="1.2.246.10.2048198.10.1")
    assert ds.StudyID == "TT-1234"
    assert str(ds.ReferringPhysicianName) == "Lähettäjä^Liisa"
    assert (ds.StudyDate, ds.StudyTime) == ("20240106", "080000")
    issuer = ds.ReferencedRequestSequence[0].IssuerOfAccessionNumberSequence[0]
    assert (issuer.UniversalEntityID, issuer.UniversalEntityIDType) == ("1.2.246.10.99.1", "ISO")
    read = pydicom.dcmread(BytesIO(to_part10(ds)))
    assert (read.StudyID, str(read.ReferringPhysicianName)) == ("TT-1234", "Lähettäjä^Liisa")


def test_study_id_and_referring_physician_stay_present_when_empty() -> None:
    ds = manifest()
    assert "StudyID" in ds and ds.StudyID == ""
    assert "ReferringPhysicianName" in ds and ds.ReferringPhysicianName == ""


def test_an_accession_issuer_that_is_not_an_oid_is_left_out() -> None:
    """The study's own issuer is the authority; another one's OID is not put in its place."""
    ds = manifest([instance_row(f"{STUDY}.1.1.1", issuer_of_accession_number="ris.example.fi")])
    assert "IssuerOfAccessionNumberSequence" not in ds.ReferencedRequestSequence[0]


def test_patient_module_and_issuer() -> None:
    ds = manifest()
    assert ds.PatientID == "131052-308T"
    assert ds.PatientBirthDate == "19521013"
    assert ds.IssuerOfPatientID == "1.2.246.21"
    qualifiers = ds.IssuerOfPatientIDQualifiersSequence[0]
    assert (qualifiers.UniversalEntityID, qualifiers.UniversalEntityIDType) == ("1.2.246.21", "ISO")


def test_referenced_request_carries_the_accession_and_its_issuer() -> None:
    request = manifest().ReferencedRequestSequence[0]
    assert request.AccessionNumber == "TKU-2024-1"
    assert request.StudyInstanceUID == STUDY
    issuer = request.IssuerOfAccessionNumberSequence[0]
    assert (issuer.UniversalEntityID, issuer.UniversalEntityIDType) == (ORGANIZATION_OID, "ISO")
    explicit = manifest(accession_issuer="1.2.246.10.2048198.10.1").ReferencedRequestSequence[0]
    assert explicit.IssuerOfAccessionNumberSequence[0].UniversalEntityID == "1.2.246.10.2048198.10.1"
    unknown = manifest(accession_issuer="RIS").ReferencedRequestSequence[0]
    assert "IssuerOfAccessionNumberSequence" not in unknown


def test_no_referenced_request_without_an_accession_number() -> None:
    ds = manifest([instance_row(f"{STUDY}.1.1.1", accession_number="")])
    assert "ReferencedRequestSequence" not in ds
    assert ds.AccessionNumber == ""


@pytest.mark.parametrize(("now", "date", "time"), [
    (datetime(2024, 1, 15, 10, 0, tzinfo=UTC), "20240115", "120000"),
    (datetime(2024, 7, 15, 22, 30, 5, tzinfo=UTC), "20240716", "013005"),
])
def test_content_date_and_time_are_finnish_local_time(now: datetime, date: str, time: str) -> None:
    ds = manifest(now=now)
    assert (ds.ContentDate, ds.ContentTime) == (date, time)
    assert (ds.InstanceCreationDate, ds.InstanceCreationTime) == (date, time)
    assert "TimezoneOffsetFromUTC" not in ds


@pytest.mark.parametrize(("sop_class", "value_type"), [
    (CTImageStorage, "IMAGE"),
    ("1.2.840.10008.5.1.4.1.1.77.1.6", "IMAGE"),
    (TwelveLeadECGWaveformStorage, "WAVEFORM"),
    (BasicTextSRStorage, "COMPOSITE"),
    (EncapsulatedPDFStorage, "COMPOSITE"),
])
def test_content_item_value_type_follows_tid_2010(sop_class: str, value_type: str) -> None:
    assert content_value_type(sop_class) == value_type


def test_new_uids_when_none_are_given() -> None:
    first = manifest(sop_instance_uid=None, series_instance_uid=None)
    second = manifest(sop_instance_uid=None, series_instance_uid=None)
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert first.SeriesInstanceUID != second.SeriesInstanceUID
    assert first.SOPInstanceUID.startswith("2.25.")


@pytest.mark.parametrize(("rows", "overrides", "message"), [
    ([instance_row("1.2.3", status=InstanceStatus.QUARANTINED)], {}, "no stored instance"),
    ([instance_row("1.2.3"), instance_row("1.2.4", study_instance_uid="1.2.9")], {}, "one study"),
    (None, {"retrieve_location_uid": "not-an-oid"}, "Retrieve Location UID"),
    (None, {"retrieve_ae_title": ""}, "Retrieve AE Title"),
    (None, {"now": datetime(2024, 1, 1)}, "timezone-aware"),
])
def test_refuses_what_cannot_be_a_manifest(rows: list[StudyInstance] | None, overrides: dict[str, Any],
                                           message: str) -> None:
    with pytest.raises(ValueError, match=message):
        manifest(rows, **overrides)


def test_part10_round_trip() -> None:
    ds = manifest()
    data = to_part10(ds)
    assert data[128:132] == b"DICM"
    read = pydicom.dcmread(BytesIO(data))
    assert read.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert read.file_meta.MediaStorageSOPClassUID == KEY_OBJECT_SELECTION_DOCUMENT_STORAGE
    assert read.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert read.SpecificCharacterSet == "ISO_IR 192"
    assert str(read.PatientName) == PATIENT["PatientName"]
    assert str(read.StudyDescription) == "TT pää"
    assert evidence(read) == evidence(ds)
    check_manifest(read)
    assert not hasattr(ds, "file_meta"), "to_part10 must not change the data set it is given"


@pytest.mark.parametrize("path", NIST_KOS, ids=lambda p: p.name)
def test_layout_matches_the_nist_manifests(path: Path) -> None:
    """Every attribute NIST's XDS-I manifests carry, at each level, is in ours too."""
    nist, ours = pydicom.dcmread(path), pydicom.dcmread(BytesIO(to_part10(manifest())))

    def keywords(ds: Dataset) -> set[str]:
        return {element.keyword for element in ds}

    assert keywords(nist) <= keywords(ours)
    assert keywords(nist.file_meta) <= keywords(ours.file_meta)
    nist_study = nist.CurrentRequestedProcedureEvidenceSequence[0]
    our_study = ours.CurrentRequestedProcedureEvidenceSequence[0]
    assert keywords(nist_study) <= keywords(our_study)
    assert keywords(nist_study.ReferencedSeriesSequence[0]) <= keywords(our_study.ReferencedSeriesSequence[0])
    image_items = [item for item in nist.ContentSequence if item.ValueType == "IMAGE"]
    assert keywords(image_items[0]) <= keywords(ours.ContentSequence[0])
    assert ours.ContinuityOfContent == nist.ContinuityOfContent
    assert ours.ContentTemplateSequence[0].TemplateIdentifier == nist.ContentTemplateSequence[0].TemplateIdentifier
