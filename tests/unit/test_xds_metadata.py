"""RAD-68 metadata: the SubmitObjectsRequest is valid against the XDS schemas and the metadata rules, and every
value is derived as ITI TF-3 / RAD TF-3 say (patientId CX, UTC times, referenceIdList, codes, RPLC)."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, TwelveLeadECGWaveformStorage

from gateway.core.study import InstanceStatus, StudyInstance
from gateway.xds import rules, xsd
from gateway.xds.manifest import build_manifest, to_part10
from gateway.xds.metadata import (
    AffinityDomain,
    Code,
    MetadataError,
    Submission,
    build_submission,
    dicom_moment,
    hl7_escape,
    patient_cx,
)
from gateway.xds.soap import NS
from tests.unit.test_xds_manifest import NOW, ORGANIZATION_OID, REPOSITORY_OID, STUDY, instance_row, study_rows

DATA = Path(__file__).resolve().parent.parent / "data" / "xds_client"
RIM = "{%s}" % NS["rim"]
ENTRY_UUID = "urn:uuid:0b7e3d6c-5a36-4c9b-9f0e-6f2f1b1a2c01"
SET_UUID = "urn:uuid:0b7e3d6c-5a36-4c9b-9f0e-6f2f1b1a2c02"
REPLACED_UUID = "urn:uuid:0b7e3d6c-5a36-4c9b-9f0e-6f2f1b1a2c03"
SUBMITTED = datetime(2024, 1, 15, 10, 0, 5, tzinfo=UTC)
DTM = re.compile(r"\d{14}")


def kos(rows: list[StudyInstance] | None = None, **overrides: Any) -> Dataset:
    arguments: dict[str, Any] = {"retrieve_ae_title": "DICOMGW", "retrieve_location_uid": REPOSITORY_OID,
                                 "institution_name": "Turun kaupunki", "now": NOW, "sop_instance_uid": "2.25.1001",
                                 "series_instance_uid": "2.25.1002"}
    return build_manifest(study_rows() if rows is None else rows, **(arguments | overrides))


def submit(manifest: Dataset | None = None, rows: list[StudyInstance] | None = None, **overrides: Any) -> Submission:
    manifest = kos() if manifest is None else manifest
    arguments: dict[str, Any] = {
        "domain": AffinityDomain.load(), "source_id": ORGANIZATION_OID, "organization_oid": ORGANIZATION_OID,
        "organization_name": "Turun kaupunki", "replaces_entry_uuid": None, "now": SUBMITTED,
        "document_entry_uuid": ENTRY_UUID, "submission_set_uuid": SET_UUID,
        "submission_set_unique_id": "2.25.2001",
    }
    return build_submission(manifest, to_part10(manifest), study_rows() if rows is None else rows,
                            **(arguments | overrides))


def entry(submission: Submission) -> etree._Element:
    found = submission.request.find(f"{RIM}RegistryObjectList/{RIM}ExtrinsicObject")
    assert found is not None
    return found


def package(submission: Submission) -> etree._Element:
    found = submission.request.find(f"{RIM}RegistryObjectList/{RIM}RegistryPackage")
    assert found is not None
    return found


def slot(obj: etree._Element, name: str) -> list[str] | None:
    return rules.slot_values(obj, name)


def codes(obj: etree._Element, section: str, attribute: str) -> list[tuple[str, str, str]]:
    return [(c.get("nodeRepresentation", ""), (slot(c, "codingScheme") or [""])[0], rules.name_of(c))
            for c in rules.classifications(obj, rules.scheme(section, attribute))]


def provide_and_register(submission: Submission) -> etree._Element:
    """The ITI-41 body with the document inline, as the repository sees it after XOP resolution."""
    request = etree.Element(f"{{{NS['xds']}}}ProvideAndRegisterDocumentSetRequest", nsmap={"xds": NS["xds"]})
    request.append(etree.fromstring(etree.tostring(submission.request)))
    document = etree.SubElement(request, f"{{{NS['xds']}}}Document", id=submission.document_entry_uuid)
    document.text = "AAAA"
    return request


@pytest.mark.parametrize("replaces", [None, REPLACED_UUID])
def test_submission_is_schema_valid_and_passes_the_metadata_rules(replaces: str | None) -> None:
    submission = submit(replaces_entry_uuid=replaces)
    assert xsd.validate(submission.request) == []
    pnr = provide_and_register(submission)
    assert xsd.validate(pnr) == []
    assert rules.check_submission(pnr, transaction="RAD-68", patient_id_domain="1.2.246.21") == []


def test_identifiers_follow_the_manifest() -> None:
    submission = submit()
    de = entry(submission)
    assert submission.unique_id == "2.25.1001"
    assert submission.document_entry_uuid == de.get("id") == ENTRY_UUID
    assert submission.submission_set_uuid == package(submission).get("id") == SET_UUID
    assert rules.external_identifier(de, rules.scheme("document_entry", "uniqueId")) == "2.25.1001"
    assert rules.external_identifier(package(submission), rules.scheme("submission_set", "uniqueId")) == "2.25.2001"
    source_id = rules.external_identifier(package(submission), rules.scheme("submission_set", "sourceId"))
    assert source_id == ORGANIZATION_OID
    assert de.get("objectType") == "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
    assert de.get("mimeType") == "application/dicom"
    assert submission.document[128:132] == b"DICM"


def test_new_uuids_when_none_are_given() -> None:
    submission = submit(document_entry_uuid=None, submission_set_uuid=None, submission_set_unique_id=None)
    assert re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", submission.document_entry_uuid)
    assert re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", submission.submission_set_uuid)
    assert submission.submission_set_unique_id.startswith("2.25.")
    assert rules.check_submission(provide_and_register(submission), transaction="RAD-68") == []


def test_patient_id_is_cx_with_the_hetu_oid_everywhere() -> None:
    submission = submit()
    cx = "131052-308T^^^&1.2.246.21&ISO"
    assert submission.patient_id == cx
    assert rules.external_identifier(entry(submission), rules.scheme("document_entry", "patientId")) == cx
    assert rules.external_identifier(package(submission), rules.scheme("submission_set", "patientId")) == cx
    assert slot(entry(submission), "sourcePatientId") == [cx]
    assert rules.is_cx(cx)


@pytest.mark.parametrize(("patient_id", "issuer", "expected"), [
    ("131052-308T", "1.2.246.21", "131052-308T^^^&1.2.246.21&ISO"),
    ("131052-308T", "", "131052-308T^^^&1.2.246.21&ISO"),
    ("131052-308T", "HETU", "131052-308T^^^&1.2.246.21&ISO"),
    ("010594Y9032", "1.2.246.21", "010594Y9032^^^&1.2.246.21&ISO"),
    ("010594Y9032", "1.2.246.10.2048198.22.2024", "010594Y9032^^^&1.2.246.10.2048198.22.2024&ISO"),
    ("MRN-42", "1.2.246.10.2048198.10.1", "MRN-42^^^&1.2.246.10.2048198.10.1&ISO"),
    ("A^B&C", "1.2.3", "A\\S\\B\\T\\C^^^&1.2.3&ISO"),
])
def test_patient_cx_assigning_authority_rule(patient_id: str, issuer: str, expected: str) -> None:
    assert patient_cx(patient_id, issuer) == expected


@pytest.mark.parametrize(("patient_id", "issuer"), [
    ("010594Y9032", ""),  # temporary/test range without its organisation's namespace
    ("131052-308X", ""),  # wrong check character
    ("MRN-42", "LOCAL"),
    ("", "1.2.246.21"),
])
def test_no_patient_cx_without_an_assigning_authority(patient_id: str, issuer: str) -> None:
    with pytest.raises(MetadataError):
        patient_cx(patient_id, issuer)


def test_manifest_without_issuer_of_a_non_hetu_id_is_refused() -> None:
    rows = [instance_row(f"{STUDY}.1.1.1", patient_attributes={"PatientID": "MRN-42"}, issuer_of_patient_id="")]
    with pytest.raises(MetadataError, match="assigning authority"):
        submit(kos(rows), rows)


def test_source_patient_info_from_the_manifest() -> None:
    rows = [instance_row(f"{STUDY}.1.1.1", patient_attributes={
        "PatientID": "131052-308T", "IssuerOfPatientID": "1.2.246.21", "PatientName": "Virtanen^Matti^Olavi^Dr^Jr",
        "PatientBirthDate": "19521013", "PatientSex": "M"})]
    info = slot(entry(submit(kos(rows), rows)), "sourcePatientInfo")
    assert info == ["PID-3|131052-308T^^^&1.2.246.21&ISO", "PID-5|Virtanen^Matti^Olavi^Jr^Dr", "PID-7|19521013",
                    "PID-8|M"]


def test_source_patient_info_leaves_out_what_is_unknown() -> None:
    rows = [instance_row(f"{STUDY}.1.1.1", patient_attributes={"PatientID": "131052-308T", "PatientSex": ""})]
    assert slot(entry(submit(kos(rows), rows)), "sourcePatientInfo") == ["PID-3|131052-308T^^^&1.2.246.21&ISO"]


def test_times_are_utc_dtm() -> None:
    submission = submit()
    de = entry(submission)
    assert slot(de, "creationTime") == ["20240115100000"]  # manifest made at NOW (10:00 UTC)
    assert slot(de, "serviceStartTime") == ["20240105081500"]  # 10:15 Finnish winter time
    assert slot(de, "serviceStopTime") == ["20240105081500"]
    assert slot(package(submission), "submissionTime") == ["20240115100005"]
    for name in ("creationTime", "serviceStartTime"):
        (value,) = slot(de, name) or [""]
        assert DTM.fullmatch(value) and rules.is_dtm(value)


def test_summer_study_time_moves_three_hours() -> None:
    rows = [instance_row(f"{STUDY}.1.1.1", study_date="20240705", study_time="001500.123")]
    assert slot(entry(submit(kos(rows), rows)), "serviceStartTime") == ["20240704211500"]


def test_study_date_without_time_stays_a_date() -> None:
    rows = [instance_row(f"{STUDY}.1.1.1", study_time="")]
    assert slot(entry(submit(kos(rows), rows)), "serviceStartTime") == ["20240105"]


def test_no_service_time_without_a_study_date() -> None:
    rows = [instance_row(f"{STUDY}.1.1.1", study_date="", study_time="")]
    de = entry(submit(kos(rows), rows))
    assert slot(de, "serviceStartTime") is None and slot(de, "serviceStopTime") is None


@pytest.mark.parametrize(("date", "time", "offset", "expected"), [
    ("20240105", "1015", "", datetime(2024, 1, 5, 8, 15, tzinfo=UTC)),
    ("20240105", "10:15:30", "", datetime(2024, 1, 5, 8, 15, 30, tzinfo=UTC)),
    ("20240105", "101500", "+0000", datetime(2024, 1, 5, 10, 15, tzinfo=UTC)),
    ("20240105", "101500", "-0130", datetime(2024, 1, 5, 11, 45, tzinfo=UTC)),
    ("20240105", "", "", "20240105"),
    ("2024010", "101500", "", None),
    ("20240105", "1x", "", None),
])
def test_dicom_moment(date: str, time: str, offset: str, expected: datetime | str | None) -> None:
    assert dicom_moment(date, time, offset) == expected


def test_no_hash_size_or_repository_unique_id_in_rad68() -> None:
    de = entry(submit())
    for name in ("hash", "size", "repositoryUniqueId", "URI"):
        assert slot(de, name) is None


def test_xds_i_codes_and_the_affinity_domain() -> None:
    de = entry(submit())
    assert codes(de, "document_entry", "formatCode") == [
        ("1.2.840.10008.5.1.4.1.1.88.59", "1.2.840.10008.2.6.1", "Key Object Selection Document")]
    assert codes(de, "document_entry", "classCode") == [("IMAGES", "1.3.6.1.4.1.19376.1.2.6.1", "Images")]
    assert codes(de, "document_entry", "typeCode") == [("18748-4", "2.16.840.1.113883.6.1",
                                                        "Diagnostic imaging study")]
    assert codes(de, "document_entry", "confidentialityCode") == [("N", "2.16.840.1.113883.5.25", "normal")]
    assert codes(de, "document_entry", "healthcareFacilityTypeCode") == [("22232009", "2.16.840.1.113883.6.96",
                                                                          "Hospital")]
    assert codes(de, "document_entry", "practiceSettingCode") == [
        ("309964003", "2.16.840.1.113883.6.96", "Radiology department (environment)")]
    assert codes(package(submit()), "submission_set", "contentTypeCode") == [
        ("22232009", "2.16.840.1.113883.6.96", "Hospital")]
    assert slot(de, "languageCode") == ["fi-FI"]


def test_event_codes_are_the_acquisition_modalities_of_the_listed_instances() -> None:
    rows = [*study_rows(),
            instance_row(f"{STUDY}.4.1.1", f"{STUDY}.4", 1, modality="MR", status=InstanceStatus.QUARANTINED),
            instance_row(f"{STUDY}.5.1.1", f"{STUDY}.5", 1, modality="ECG", sop_class_uid=TwelveLeadECGWaveformStorage)]
    procedure = Code(code="HA1BB", coding_scheme="1.2.246.537.6.4", display_name="Pään TT")
    de = entry(submit(kos(rows), rows, procedure_codes=[procedure]))
    assert codes(de, "document_entry", "eventCodeList") == [
        ("CT", "1.2.840.10008.2.16.4", "Computed Tomography"),
        ("ECG", "1.2.840.10008.2.16.4", "Electrocardiography"),
        ("HA1BB", "1.2.246.537.6.4", "Pään TT"),
    ]


def test_reference_id_list_has_accession_with_issuer_and_study_uid() -> None:
    assert slot(entry(submit()), "urn:ihe:iti:xds:2013:referenceIdList") == [
        f"TKU-2024-1^^^&{ORGANIZATION_OID}&ISO^urn:ihe:iti:xds:2013:accession",
        f"{STUDY}^^^^urn:ihe:iti:xds:2016:studyInstanceUID",
    ]


def test_reference_id_list_without_accession() -> None:
    rows = [instance_row(f"{STUDY}.1.1.1", accession_number="")]
    assert slot(entry(submit(kos(rows), rows)), "urn:ihe:iti:xds:2013:referenceIdList") == [
        f"{STUDY}^^^^urn:ihe:iti:xds:2016:studyInstanceUID"]


def test_author_institution_is_xon_with_the_organisation_oid() -> None:
    submission = submit(organization_name="Varsinais-Suomen hyvinvointialue")
    for obj, section in ((entry(submission), "document_entry"), (package(submission), "submission_set")):
        (author,) = rules.classifications(obj, rules.scheme(section, "author"))
        assert author.get("nodeRepresentation") == ""
        assert slot(author, "authorInstitution") == [f"Varsinais-Suomen hyvinvointialue^^^^^^^^^{ORGANIZATION_OID}"]


def test_has_member_association_is_full_urn_with_original_status() -> None:
    associations = submit().request.findall(f"{RIM}RegistryObjectList/{RIM}Association")
    assert len(associations) == 1
    (has_member,) = associations
    assert has_member.get("associationType") == "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
    assert (has_member.get("sourceObject"), has_member.get("targetObject")) == (SET_UUID, ENTRY_UUID)
    assert slot(has_member, "SubmissionSetStatus") == ["Original"]


def test_rplc_association_replaces_the_previous_manifest() -> None:
    associations = submit(replaces_entry_uuid=REPLACED_UUID).request.findall(
        f"{RIM}RegistryObjectList/{RIM}Association")
    rplc = [a for a in associations if a.get("associationType") == "urn:ihe:iti:2007:AssociationType:RPLC"]
    assert len(rplc) == 1
    assert (rplc[0].get("sourceObject"), rplc[0].get("targetObject")) == (ENTRY_UUID, REPLACED_UUID)


def test_submission_set_is_classified_as_such() -> None:
    node = [c for c in submit().request.findall(f"{RIM}RegistryObjectList/{RIM}Classification")
            if c.get("classificationNode") == "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"]
    assert len(node) == 1 and node[0].get("classifiedObject") == SET_UUID


def test_title_is_the_study_description() -> None:
    assert rules.name_of(entry(submit())) == "TT pää"


def test_document_entry_has_every_attribute_of_nists_rad68_metadata() -> None:
    nist = etree.parse(str(DATA / "nist-ids_4801-rad68-SubmitObjectsRequest.xml")).getroot()
    nist_entry = nist.find(f"{RIM}RegistryObjectList/{RIM}ExtrinsicObject")
    assert nist_entry is not None
    ours = entry(submit())

    def shape(obj: etree._Element) -> set[str]:
        return ({f"slot:{s.get('name')}" for s in obj.iterfind(f"{RIM}Slot")}
                | {f"class:{c.get('classificationScheme')}" for c in obj.iterfind(f"{RIM}Classification")}
                | {f"id:{e.get('identificationScheme')}" for e in obj.iterfind(f"{RIM}ExternalIdentifier")})

    assert shape(nist_entry) <= shape(ours)


@pytest.mark.parametrize(("changes", "message"), [
    ({"source_id": "not-an-oid"}, "sourceId"),
    ({"organization_oid": "x"}, "organisation OID"),
])
def test_refuses_bad_identifiers(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(MetadataError, match=message):
        submit(**changes)


def test_refuses_a_document_that_is_not_part10() -> None:
    manifest = kos()
    with pytest.raises(MetadataError, match="Part 10"):
        build_submission(manifest, b"not dicom", study_rows(), domain=AffinityDomain.load(),
                         source_id=ORGANIZATION_OID, organization_oid=ORGANIZATION_OID, organization_name="T",
                         replaces_entry_uuid=None, now=SUBMITTED)


def test_refuses_a_data_set_that_is_not_a_kos() -> None:
    manifest = kos()
    data = to_part10(manifest)
    manifest.SOPClassUID = CTImageStorage
    with pytest.raises(MetadataError, match="Key Object Selection"):
        build_submission(manifest, data, study_rows(), domain=AffinityDomain.load(), source_id=ORGANIZATION_OID,
                         organization_oid=ORGANIZATION_OID, organization_name="T", replaces_entry_uuid=None,
                         now=SUBMITTED)


def test_bundled_affinity_domain() -> None:
    domain = AffinityDomain.load()
    assert domain.class_code == Code(code="IMAGES", coding_scheme="1.3.6.1.4.1.19376.1.2.6.1", display_name="Images")
    assert domain.language_code == "fi-FI"
    assert domain.home_community_id is None


def test_site_affinity_domain_file(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[2] / "gateway" / "xds" / "affinity-domain.yaml").read_text()
    path = tmp_path / "site.yaml"
    path.write_text(text.replace("languageCode: fi-FI", "languageCode: sv-FI\nhomeCommunityId: urn:oid:1.2.246.10.1"))
    domain = AffinityDomain.load(path)
    assert domain.language_code == "sv-FI"
    submission = submit(domain=domain)
    assert slot(entry(submission), "languageCode") == ["sv-FI"]
    assert entry(submission).get("home") == "urn:oid:1.2.246.10.1"
    assert xsd.validate(submission.request) == []


@pytest.mark.parametrize("text", ["classCode: [", "classCode: {code: X}\n", "unknownKey: 1\n"])
def test_invalid_affinity_domain_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(MetadataError, match="affinity domain file"):
        AffinityDomain.load(path)


def test_hl7_escape() -> None:
    assert hl7_escape("a|b^c&d~e\\f") == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"


def test_replaced_row_status_does_not_leak_into_event_codes() -> None:
    rows = [instance_row(f"{STUDY}.1.1.1"), replace(instance_row(f"{STUDY}.1.1.2", modality="MR"),
                                                    status=InstanceStatus.REPLACED)]
    assert [c[0] for c in codes(entry(submit(kos(rows), rows)), "document_entry", "eventCodeList")] == ["CT"]
