"""The KOS IOD checker: our manifests and NIST's pass, each broken variant gives its code, the register role
refuses a manifest that fails it, and ``validate`` reports it for KOS files."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import CTImageStorage, MRImageStorage

from gateway.core.audit import NoAudit
from gateway.core.errors import DeliveryRefused
from gateway.core.study import StudyInstance
from gateway.dicom.kos_check import CODES, KosFinding, check_kos, uid_problem
from gateway.index import Delivery
from gateway.settings import DicomSettings, TopicSettings, XdsSettings
from gateway.xds.manifest import build_manifest, to_part10
from tests.unit.test_xds_manifest import (
    NIST_KOS,
    NOW,
    PATIENT,
    REPOSITORY_OID,
    STUDY,
    instance_row,
    manifest,
    study_rows,
)
from workers import register
from workers.validation.cli import main

EVIDENCE = "CurrentRequestedProcedureEvidenceSequence"
FIRST_SERIES = f"{EVIDENCE}[0] > ReferencedSeriesSequence[0]"
FIRST_EVIDENCE_SOP = f"{FIRST_SERIES} > ReferencedSOPSequence[0]"
VERIFICATION = "1.2.840.10008.1.1"
"""Verification SOP Class: a standard SOP Class that is not a storage one."""


def codes(findings: list[KosFinding]) -> set[str]:
    return {finding.code for finding in findings}


def put(ds: Dataset, keyword: str, value: Any) -> None:
    """Set an element without pydicom's value validation, as a broken writer would."""
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    ds.add(DataElement(tag, dictionary_VR(tag), value, validation_mode=config.IGNORE))


def series(ds: Dataset, index: int = 0) -> Dataset:
    item: Dataset = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[index]
    return item


def reference(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def content_item(relationship: str, value_type: str, *references: Dataset) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    if references:
        item.ReferencedSOPSequence = DicomSequence(list(references))
    return item


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def set_both_classes(sop_class: str) -> Callable[[Dataset], None]:
    """The first instance gets ``sop_class`` in the content and in the evidence alike."""
    def change(ds: Dataset) -> None:
        ds.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPClassUID = sop_class
        series(ds).ReferencedSOPSequence[0].ReferencedSOPClassUID = sop_class
    return change


@dataclass(frozen=True)
class Broken:
    name: str
    change: Callable[[Dataset], None]
    findings: set[tuple[str, str]]
    """(code, path) expected, and nothing else."""
    manifest: bool = True


def _title(value: str, meaning: str) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        ds.ConceptNameCodeSequence = DicomSequence([code_item(value, "DCM", meaning)])
    return change


BROKEN = [
    Broken("missing type 1", lambda ds: delattr(ds, "SeriesNumber"), {("KOS-TYPE1-MISSING", "SeriesNumber")}),
    Broken("empty type 1", lambda ds: setattr(ds, "ContentDate", ""), {("KOS-TYPE1-MISSING", "ContentDate")}),
    Broken("type 1 sequence without items", lambda ds: setattr(series(ds), "ReferencedSOPSequence", DicomSequence()),
           {("KOS-TYPE1-MISSING", f"{FIRST_SERIES} > ReferencedSOPSequence")}
           | {("KOS-EVIDENCE-MISSING", f"ContentSequence[{i}] > ReferencedSOPSequence[0]") for i in (0, 1)}),
    Broken("nested type 1", lambda ds: delattr(series(ds), "SeriesInstanceUID"),
           {("KOS-TYPE1-MISSING", f"{FIRST_SERIES} > SeriesInstanceUID")}),
    Broken("missing type 2", lambda ds: delattr(ds, "StudyID"), {("KOS-TYPE2-MISSING", "StudyID")}),
    Broken("missing nested type 2", lambda ds: delattr(ds.ReferencedRequestSequence[0], "RequestedProcedureID"),
           {("KOS-TYPE2-MISSING", "ReferencedRequestSequence[0] > RequestedProcedureID")}),
    Broken("wrong SOP Class", lambda ds: setattr(ds, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.88.11"),
           {("KOS-SOP-CLASS", "SOPClassUID")}),
    Broken("wrong modality", lambda ds: setattr(ds, "Modality", "SR"), {("KOS-MODALITY", "Modality")}),
    Broken("root not a container", lambda ds: setattr(ds, "ValueType", "TEXT"), {("KOS-VALUE-TYPE", "ValueType")}),
    Broken("wrong title", _title("113000", "Of Interest"), {("KOS-MANIFEST-TITLE", "ConceptNameCodeSequence[0]")}),
    Broken("title not of CID 7010", _title("121000", "Something"),
           {("KOS-TITLE", "ConceptNameCodeSequence[0]"), ("KOS-MANIFEST-TITLE", "ConceptNameCodeSequence[0]")}),
    Broken("title not of CID 7010, generic KOS", _title("121000", "Something"),
           {("KOS-TITLE", "ConceptNameCodeSequence[0]")}, manifest=False),
    Broken("two titles", lambda ds: ds.ConceptNameCodeSequence.append(code_item("113000", "DCM", "Of Interest")),
           {("KOS-TITLE", "ConceptNameCodeSequence")}),
    Broken("another template", lambda ds: setattr(ds.ContentTemplateSequence[0], "TemplateIdentifier", "2000"),
           {("KOS-TEMPLATE", "ContentTemplateSequence")}),
    Broken("content reference missing from the evidence",
           lambda ds: ds.ContentSequence.append(content_item("CONTAINS", "IMAGE", reference(CTImageStorage, "2.25.7"))),
           {("KOS-EVIDENCE-MISSING", "ContentSequence[5] > ReferencedSOPSequence[0]")}),
    Broken("evidence reference missing from the content", lambda ds: ds.ContentSequence.pop(0),
           {("KOS-EVIDENCE-UNREFERENCED", FIRST_EVIDENCE_SOP)}),
    Broken("SOP Class differs between content and evidence",
           lambda ds: setattr(ds.ContentSequence[0].ReferencedSOPSequence[0], "ReferencedSOPClassUID", MRImageStorage),
           {("KOS-EVIDENCE-SOP-CLASS", "ContentSequence[0] > ReferencedSOPSequence[0] > ReferencedSOPClassUID")}),
    Broken("relationship other than CONTAINS", lambda ds: setattr(ds.ContentSequence[0], "RelationshipType",
                                                                  "HAS PROPERTIES"),
           {("KOS-CONTENT-ITEM", "ContentSequence[0] > RelationshipType")}),
    Broken("value type TID 2010 does not have", lambda ds: setattr(ds.ContentSequence[0], "ValueType", "CODE"),
           {("KOS-CONTENT-ITEM", "ContentSequence[0] > ValueType"),
            ("KOS-EVIDENCE-UNREFERENCED", FIRST_EVIDENCE_SOP)}),
    Broken("two references in one content item",
           lambda ds: ds.ContentSequence[0].ReferencedSOPSequence.append(ds.ContentSequence[1].ReferencedSOPSequence[0]),
           {("KOS-CONTENT-ITEM", "ContentSequence[0] > ReferencedSOPSequence")}),
    Broken("TEXT item that is not the key object description",
           lambda ds: ds.ContentSequence.append(content_item("CONTAINS", "TEXT")),
           {("KOS-CONTENT-ITEM", "ContentSequence[5] > ConceptNameCodeSequence")}),
    Broken("no content", lambda ds: setattr(ds, "ContentSequence", DicomSequence()),
           {("KOS-CONTENT-EMPTY", "ContentSequence")}
           | {("KOS-EVIDENCE-UNREFERENCED", f"{EVIDENCE}[0] > ReferencedSeriesSequence[{s}] > ReferencedSOPSequence[{o}]")
              for s, o in ((0, 0), (0, 1), (1, 0), (1, 1), (2, 0))}),
    Broken("UID with a leading zero", lambda ds: put(ds, "SeriesInstanceUID", "2.25.01002"),
           {("KOS-UID-SYNTAX", "SeriesInstanceUID")}),
    Broken("UID too long", lambda ds: put(series(ds), "RetrieveLocationUID", "1." * 40 + "1"),
           {("KOS-UID-SYNTAX", f"{FIRST_SERIES} > RetrieveLocationUID")}),
    Broken("evidence of another study", lambda ds: setattr(ds.CurrentRequestedProcedureEvidenceSequence[0],
                                                           "StudyInstanceUID", "2.25.99"),
           {("KOS-EVIDENCE-STUDY", f"{EVIDENCE}[0] > StudyInstanceUID")}),
    Broken("evidence of another study, generic KOS", lambda ds: setattr(ds.CurrentRequestedProcedureEvidenceSequence[0],
                                                                        "StudyInstanceUID", "2.25.99"),
           set(), manifest=False),
    Broken("no Retrieve Location UID", lambda ds: delattr(series(ds), "RetrieveLocationUID"),
           {("KOS-XDS-RETRIEVE-LOCATION", f"{FIRST_SERIES} > RetrieveLocationUID")}),
    Broken("no Retrieve Location UID, generic KOS", lambda ds: delattr(series(ds), "RetrieveLocationUID"),
           set(), manifest=False),
    Broken("referenced class is not storage", set_both_classes(VERIFICATION),
           {("KOS-REFERENCED-SOP-CLASS", "ContentSequence[0] > ReferencedSOPSequence[0] > ReferencedSOPClassUID")}),
    Broken("referenced class is private", set_both_classes("1.2.246.10.2048198.99.1"),
           {("KOS-REFERENCED-SOP-CLASS-UNKNOWN",
             "ContentSequence[0] > ReferencedSOPSequence[0] > ReferencedSOPClassUID")}),
]


def test_a_built_manifest_passes() -> None:
    assert check_kos(manifest()) == []
    assert check_kos(pydicom.dcmread(BytesIO(to_part10(manifest())))) == []


def test_a_manifest_without_accession_or_study_attributes_passes() -> None:
    row = instance_row(f"{STUDY}.1.1.1", accession_number="", study_date="", study_time="", study_description="",
                       patient_attributes={})
    assert check_kos(manifest([row])) == []


def test_the_nist_manifests() -> None:
    """Two are clean; IDCDEPT002 has a TEXT content item titled "Manifest" where TID 2010 allows only the Key Object
    Description (113012, DCM)."""
    found = {path.name: [(f.code, f.path) for f in check_kos(pydicom.dcmread(path))] for path in NIST_KOS}
    assert found == {
        "nist-IDCDEPT002-kos.dcm": [("KOS-CONTENT-ITEM", "ContentSequence[0] > ConceptNameCodeSequence")],
        "nist-ids_4801-single-image-kos.dcm": [],
        "nist-ids_4802-multi-image-kos.dcm": [],
    }


@pytest.mark.parametrize("case", BROKEN, ids=lambda case: case.name)
def test_each_broken_variant_gives_its_finding(case: Broken) -> None:
    ds = manifest()
    case.change(ds)
    findings = check_kos(ds, manifest=case.manifest)
    assert {(f.code, f.path) for f in findings} == case.findings
    assert all(f.severity == CODES[f.code][0] for f in findings)


def test_every_code_is_exercised() -> None:
    assert {code for case in BROKEN for code, _ in case.findings} == set(CODES)


def test_a_generic_kos_may_have_any_cid_7010_title() -> None:
    ds = manifest()
    _title("113000", "Of Interest")(ds)
    assert check_kos(ds, manifest=False) == []


def test_key_object_description_and_observer_context_are_allowed() -> None:
    ds = manifest()
    description = content_item("CONTAINS", "TEXT")
    description.ConceptNameCodeSequence = DicomSequence([code_item("113012", "DCM", "Key Object Description")])
    description.TextValue = "Kontrolli"
    observer = content_item("HAS OBS CONTEXT", "CODE")
    ds.ContentSequence = DicomSequence([observer, description, *ds.ContentSequence])
    assert check_kos(ds) == []


def test_findings_name_no_values() -> None:
    ds = manifest()
    ds.PatientName = ""
    put(ds, "SOPInstanceUID", "2.25.0" + PATIENT["PatientID"])
    put(ds, "Modality", PATIENT["PatientID"])
    ds.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID = "1.2.3.4"
    findings = check_kos(ds)
    assert {"KOS-UID-SYNTAX", "KOS-MODALITY", "KOS-EVIDENCE-MISSING", "KOS-EVIDENCE-UNREFERENCED"} <= codes(findings)
    text = "\n".join(str(finding) for finding in findings)
    for value in [PATIENT["PatientName"], PATIENT["PatientBirthDate"], "131052", "1.2.3.4", f"{STUDY}.1.1.1",
                  "TKU-2024-1"]:
        assert value not in text


@pytest.mark.parametrize(("value", "problem"), [
    ("1.2.840.10008.5.1.4.1.1.88.59", None),
    ("0.0", None),
    ("1.02.3", "leading zero"),
    ("1.2.", "digits separated"),
    ("1..2", "digits separated"),
    ("1.2a", "digits separated"),
    ("1." * 32 + "1", "longer than 64"),
])
def test_uid_syntax(value: str, problem: str | None) -> None:
    found = uid_problem(value)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_finding_keyword_and_tag() -> None:
    finding = KosFinding("KOS-EVIDENCE-MISSING", "error", "ContentSequence[3] > ReferencedSOPSequence[0]", "x")
    assert finding.keyword == "ReferencedSOPSequence"
    assert finding.tag == 0x00081199


# --- the register role: a manifest that fails the check is never sent ---------------------------------------------


@dataclass(frozen=True)
class _Row:
    row: StudyInstance

    @property
    def sop_instance_uid(self) -> str:
        return self.row.sop_instance_uid

    def study_instance(self) -> StudyInstance:
        return self.row


class _Index:
    def __init__(self, rows: list[StudyInstance]) -> None:
        self.rows = rows
        self.recorded: list[Any] = []

    async def study_instances(self, study_instance_uid: str) -> list[_Row]:
        return [_Row(row) for row in self.rows]

    async def registrations(self, study_instance_uid: str) -> list[Any]:
        return []

    async def rejection_notes_of(self, study_instance_uid: str) -> set[str]:
        return set()  # no rejection note in the study

    async def patients_of_studies(self, study_instance_uids: list[str]) -> dict[str, Any]:
        return {}  # no ADT changed the patient: the manifest carries the instances' own

    async def record_registration(self, registration: Any) -> None:
        self.recorded.append(registration)


class _Client:
    def __init__(self) -> None:
        self.submissions: list[Any] = []

    async def provide_and_register(self, submission: Any) -> None:
        self.submissions.append(submission)


class _Producer:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, topic: str, key: bytes, value: bytes) -> None:
        self.published.append((topic, key))


def _registrar(index: _Index, client: _Client, producer: _Producer) -> register.Registrar:
    xds = XdsSettings(repository_url="http://127.0.0.1:9/xds", retrieve_location_uid=REPOSITORY_OID,
                      organization_oid="1.2.246.10.2048198", organization_name="Turun kaupunki")
    return register.Registrar(index, client, producer, xds, DicomSettings(), TopicSettings(),  # type: ignore[arg-type]
                              test_environment=True, audit=NoAudit())


def _delivery() -> Delivery:
    payload = {"generation": 1, "document_unique_id": "2.25.1001", "entry_uuid": "urn:uuid:6a1c2f0e-0d1b-4c53-9f3e-"
               "3d7c1b1f0a01", "submission_set_uuid": "urn:uuid:6a1c2f0e-0d1b-4c53-9f3e-3d7c1b1f0a02",
               "submission_set_unique_id": "2.25.1003", "prepared_at": (NOW - timedelta(minutes=1)).timestamp()}
    now = NOW.timestamp()
    return Delivery(register.registration_id(STUDY), register.REGISTRATION, STUDY, register.REPOSITORY, payload, now,
                    now, {"topic": "t", "partition": 0, "offset": 1})


async def test_register_sends_a_manifest_that_passes() -> None:
    index, client, producer = _Index(study_rows()), _Client(), _Producer()
    await _registrar(index, client, producer).send(_delivery())
    assert len(client.submissions) == 1 and len(index.recorded) == 1


async def test_register_refuses_a_manifest_that_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Dataset:
        ds = build_manifest(*args, **kwargs)
        del ds.SeriesNumber
        ds.ContentSequence.pop(0)
        return ds

    monkeypatch.setattr(register, "build_manifest", broken)
    index, client, producer = _Index(study_rows()), _Client(), _Producer()
    with pytest.raises(DeliveryRefused) as refused:
        await _registrar(index, client, producer).send(_delivery())
    reason = str(refused.value)
    assert "KOS-TYPE1-MISSING at SeriesNumber" in reason and "KOS-EVIDENCE-UNREFERENCED" in reason
    assert not any(PATIENT[keyword] in reason for keyword in ("PatientID", "PatientName", "PatientBirthDate"))
    assert client.submissions == [] and index.recorded == [] and producer.published == []


# --- dicom-gateway validate on KOS files ------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def gateway_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The command reads the gateway settings: none may leak in from the developer's shell or secrets."""
    for name in [name for name in os.environ if name.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("GATEWAY_SECRETS_DIR", str(tmp_path / "no-secrets"))


def _part10(ds: Dataset, path: Path) -> Path:
    path.write_bytes(to_part10(ds))
    return path


def test_validate_accepts_a_good_manifest(tmp_path: Path, capsys: Any) -> None:
    path = _part10(manifest(), tmp_path / "kos.dcm")
    assert main([str(path), "--xds-manifest"]) == 0
    assert capsys.readouterr().out == f"{path}: OK\n"


def test_validate_reports_kos_findings_and_exits_1(tmp_path: Path, capsys: Any) -> None:
    ds = manifest()
    ds.Modality = "SR"
    ds.ContentSequence.pop(0)
    path = _part10(ds, tmp_path / "kos.dcm")
    assert main([str(path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: 2 error(s), 0 warning(s)\n")
    assert "error    KOS-MODALITY" in out and "(0008,0060) Modality" in out
    assert f"KOS-EVIDENCE-UNREFERENCED    (0008,1199) ReferencedSOPSequence            {FIRST_EVIDENCE_SOP} is" in out
    assert main([str(path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report[0]["has_errors"] is True
    assert [(f["code"], f["keyword"], f["tag"]) for f in report[0]["findings"]] == [
        ("KOS-MODALITY", "Modality", "00080060"),
        ("KOS-EVIDENCE-UNREFERENCED", "ReferencedSOPSequence", "00081199"),
    ]


def test_validate_checks_the_manifest_rules_only_with_xds_manifest(tmp_path: Path, capsys: Any) -> None:
    ds = manifest()
    _title("113000", "Of Interest")(ds)
    path = _part10(ds, tmp_path / "kos.dcm")
    assert main([str(path)]) == 0
    assert main([str(path), "--xds-manifest"]) == 1
    assert "KOS-MANIFEST-TITLE" in capsys.readouterr().out


def test_validate_runs_no_kos_check_on_other_files(tmp_path: Path, capsys: Any) -> None:
    ds = manifest()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    path = _part10(ds, tmp_path / "sr.dcm")
    assert main([str(path), "--xds-manifest", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["findings"] == []
