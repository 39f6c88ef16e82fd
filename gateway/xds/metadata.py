"""The ebRIM 3.0 SubmitObjectsRequest of RAD-68: the KOS manifest's DocumentEntry, its SubmissionSet and their
associations, per IHE ITI TF-3 4.2 (attributes, Table 4.2.5-1 identifiers) and RAD TF-3 4.68.4.1.2.3 (XDS-I.b);
and that of ITI-57 Update Document Set deprecating a registered manifest (ITI TF-2b 3.57.4.1.3.3.2), with a
SubmissionSet built the same way.

Every value is derived from the manifest, so the metadata cannot disagree with the document it describes
(uniqueId = SOP Instance UID, patient, accession, study UID). Affinity-domain codes come from a YAML profile;
the bundled one holds public NIST placeholders that a site replaces with its domain's codes.

Patient identifier rule (patientId and sourcePatientId are both ``ID^^^&<OID>&ISO``): the Issuer of Patient ID
when it is an OID (1.2.246.21 for a hetu, an organisation's 1.2.246.10.<org>.22.<year> namespace for its
temporary IDs); else 1.2.246.21 when the Patient ID is a valid personal identity code outside the temporary
900-999 range (inside it too in the deployment-test environment, whose test identity codes are 900-series);
otherwise there is no assigning authority to name and MetadataError is raised.

Times are UTC ``YYYYMMDDhhmmss``; DICOM dates and times without a timezone offset are Finnish local time.
A Study Date without a Study Time stays a date (``YYYYMMDD``): a day cannot be moved to UTC without its time.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path

import yaml
from lxml import etree
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from gateway import hetu
from gateway.core.study import StudyInstance
from gateway.dicom.kos_check import KEY_OBJECT_SELECTION_DOCUMENT_STORAGE
from gateway.xds.manifest import LOCAL_TIME, stored_instances
from gateway.xds.rules import STATUS_APPROVED, STATUS_DEPRECATED, is_cx, is_oid, is_uuid_ref
from gateway.xds.soap import NS

BUNDLED_AFFINITY_DOMAIN = Path(__file__).with_name("affinity-domain.yaml")

DOCUMENT_ENTRY_STABLE = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
SUBMISSION_SET = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
DOCUMENT_ENTRY_AUTHOR = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
DOCUMENT_ENTRY_CLASS_CODE = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
DOCUMENT_ENTRY_CONFIDENTIALITY_CODE = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
DOCUMENT_ENTRY_EVENT_CODE_LIST = "urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4"
DOCUMENT_ENTRY_FORMAT_CODE = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
DOCUMENT_ENTRY_HEALTHCARE_FACILITY_TYPE_CODE = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1"
DOCUMENT_ENTRY_PRACTICE_SETTING_CODE = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead"
DOCUMENT_ENTRY_TYPE_CODE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
DOCUMENT_ENTRY_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
DOCUMENT_ENTRY_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
SUBMISSION_SET_AUTHOR = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
SUBMISSION_SET_CONTENT_TYPE_CODE = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500"
SUBMISSION_SET_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
SUBMISSION_SET_SOURCE_ID = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
SUBMISSION_SET_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
RPLC = "urn:ihe:iti:2007:AssociationType:RPLC"
UPDATE_AVAILABILITY_STATUS = "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"
_OBJECT_TYPE = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:"

MIME_TYPE = "application/dicom"
DICOM_UID_REGISTRY = "1.2.840.10008.2.6.1"
DCM = "1.2.840.10008.2.16.4"
"""Coding scheme OID of the DICOM Controlled Terminology (DCM), used for modality event codes."""
ACCESSION = "urn:ihe:iti:xds:2013:accession"
STUDY_INSTANCE_UID = "urn:ihe:iti:xds:2016:studyInstanceUID"

ACQUISITION_MODALITIES: dict[str, str] = {
    "AR": "Autorefraction", "BDUS": "Ultrasound Bone Densitometry", "BI": "Biomagnetic Imaging",
    "BMD": "Bone Mineral Densitometry", "CR": "Computed Radiography", "CT": "Computed Tomography",
    "DG": "Diaphanography", "DMS": "Dermoscopy", "DX": "Digital Radiography", "ECG": "Electrocardiography",
    "EEG": "Electroencephalography", "EMG": "Electromyography", "EOG": "Electrooculography",
    "EPS": "Cardiac Electrophysiology", "ES": "Endoscopy", "GM": "General Microscopy",
    "HD": "Hemodynamic Waveform", "IO": "Intra-oral Radiography",
    "IVOCT": "Intravascular Optical Coherence Tomography", "IVUS": "Intravascular Ultrasound",
    "KER": "Keratometry", "LEN": "Lensometry", "LS": "Laser Scan", "MG": "Mammography",
    "MR": "Magnetic Resonance", "NM": "Nuclear Medicine", "OAM": "Ophthalmic Axial Measurements",
    "OCT": "Optical Coherence Tomography", "OP": "Ophthalmic Photography", "OPM": "Ophthalmic Mapping",
    "OPT": "Ophthalmic Tomography", "OPTBSV": "Ophthalmic Tomography B-scan Volume Analysis",
    "OPTENF": "Ophthalmic Tomography En Face", "OPV": "Ophthalmic Visual Field",
    "OSS": "Optical Surface Scanner", "OT": "Other Modality", "POS": "Position Sensor",
    "PT": "Positron emission tomography", "PX": "Panoramic X-Ray", "RESP": "Respiratory Waveform",
    "RF": "Radiofluoroscopy", "RG": "Radiographic imaging", "RTIMAGE": "RT Image", "SM": "Slide Microscopy",
    "SRF": "Subjective Refraction", "TG": "Thermography", "US": "Ultrasound", "VA": "Visual Acuity",
    "XA": "X-Ray Angiography", "XC": "External-camera Photography",
}
"""DICOM CID 29 "Acquisition Modality" (as in the NIST affinity domain's eventCodeList): the modalities RAD-68
puts in eventCodeList. Non-acquisition modalities (KO, PR, SR, SEG, REG, DOC) are not event codes."""


class MetadataError(ValueError):
    """The study lacks what the XDS metadata requires (no assigning authority for the patient, no study)."""


class Code(BaseModel):
    """A coded value as XDS carries it: nodeRepresentation, codingScheme slot, display name."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    code: str = Field(min_length=1)
    coding_scheme: str = Field(min_length=1, alias="codingScheme")
    display_name: str = Field(min_length=1, alias="displayName")


class AffinityDomain(BaseModel):
    """The affinity domain's codes for imaging manifests; the keys are the XDS attribute names."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    class_code: Code = Field(alias="classCode")
    type_code: Code = Field(alias="typeCode")
    confidentiality_code: Code = Field(alias="confidentialityCode")
    healthcare_facility_type_code: Code = Field(alias="healthcareFacilityTypeCode")
    practice_setting_code: Code = Field(alias="practiceSettingCode")
    content_type_code: Code = Field(alias="contentTypeCode")
    language_code: str = Field("fi-FI", alias="languageCode")
    home_community_id: str | None = Field(None, alias="homeCommunityId", pattern=r"^urn:oid:[0-2](\.(0|[1-9]\d*))+$")

    @classmethod
    def load(cls, path: Path | None = None) -> AffinityDomain:
        """The profile at ``path`` (``xds.affinity_domain_file``), or the bundled one; MetadataError if invalid."""
        source = path or BUNDLED_AFFINITY_DOMAIN
        try:
            return cls.model_validate(yaml.safe_load(source.read_text(encoding="utf-8")))
        except (OSError, yaml.YAMLError, ValidationError) as exc:
            raise MetadataError(f"affinity domain file {source}: {exc}") from exc


@dataclass(frozen=True)
class Submission:
    """A RAD-68 submission: the SubmitObjectsRequest and the document it registers."""

    request: etree._Element
    document_entry_uuid: str
    submission_set_uuid: str
    unique_id: str
    """DocumentEntry.uniqueId = the KOS SOP Instance UID."""
    submission_set_unique_id: str
    patient_id: str
    document: bytes
    """The KOS as DICOM Part 10, sent as the xds:Document of the DocumentEntry."""


@dataclass(frozen=True)
class StatusUpdate:
    """An ITI-57 submission changing one registered DocumentEntry's availabilityStatus."""

    request: etree._Element
    entry_uuid: str
    submission_set_uuid: str
    submission_set_unique_id: str
    patient_id: str
    original_status: str
    new_status: str


def hl7_escape(value: str) -> str:
    """Escape HL7 v2 delimiters inside one component (HL7 v2.5 2.7.4), so a value cannot split a CX/XON."""
    out = value.replace("\\", "\\E\\")
    for char, escape in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        out = out.replace(char, escape)
    return out


def assigning_authority(patient_id: str, issuer: str, test_environment: bool = False) -> str:
    """The OID that issued ``patient_id``, by the rule in the module docstring."""
    if is_oid(issuer):
        return issuer
    try:
        code = hetu.parse(patient_id)
    except hetu.InvalidHetu:
        code = None
    if code is not None and (test_environment or not code.is_temporary):
        return hetu.HETU_OID
    raise MetadataError("Issuer of Patient ID is not an OID and Patient ID is not a personal identity code: "
                        "no assigning authority for XDS patientId")


def patient_cx(patient_id: str, issuer: str = "", test_environment: bool = False) -> str:
    """``ID^^^&OID&ISO`` (ITI TF-3 4.2.3.1.7 CX with only CX.1 and CX.4)."""
    if not patient_id:
        raise MetadataError("the manifest has no Patient ID")
    return f"{hl7_escape(patient_id)}^^^&{assigning_authority(patient_id, issuer, test_environment)}&ISO"


def xds_time(moment: datetime) -> str:
    """DTM in UTC to the second (ITI TF-3 Table 4.2.3.1.7-2)."""
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S")


def dicom_moment(date: str, time: str, offset: str = "") -> datetime | str | None:
    """A DICOM DA + TM as an aware datetime (offset ``+hhmm`` or Finnish local time); the DA alone when there
    is no time; None when the date is not a date."""
    date = date.strip()
    if len(date) != 8 or not date.isdigit():
        return None
    digits = time.strip().replace(":", "").partition(".")[0]
    if not digits:
        return date
    if not digits.isdigit() or len(digits) % 2:
        return None
    hour, minute, second = (int(digits[i:i + 2]) if len(digits) > i else 0 for i in (0, 2, 4))
    zone: tzinfo = LOCAL_TIME
    if len(offset) == 5 and offset[0] in "+-" and offset[1:].isdigit():
        sign = 1 if offset[0] == "+" else -1
        zone = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:])))
    try:
        # a leap second (60) has no datetime: keep the minute
        return datetime(int(date[:4]), int(date[4:6]), int(date[6:]), hour, minute, min(second, 59), tzinfo=zone)
    except ValueError:
        return None


def _dtm(date: str, time: str, offset: str = "") -> str | None:
    moment = dicom_moment(date, time, offset)
    return moment if moment is None or isinstance(moment, str) else xds_time(moment)


def _person_name(value: str) -> str:
    """DICOM PN (family^given^middle^prefix^suffix) as HL7 XPN (family^given^middle^suffix^prefix)."""
    parts = (value.split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (hl7_escape(p.strip()) for p in parts)
    return "^".join((family, given, middle, suffix, prefix)).rstrip("^")


def _sub(parent: etree._Element, tag: str, attrib: dict[str, str] | None = None) -> etree._Element:
    return etree.SubElement(parent, f"{{{NS['rim']}}}{tag}", attrib or {})


def _localized(parent: etree._Element, tag: str, value: str) -> None:
    _sub(_sub(parent, tag), "LocalizedString", {"value": value})


def _slot(parent: etree._Element, name: str, values: Iterable[str]) -> None:
    value_list = _sub(_sub(parent, "Slot", {"name": name}), "ValueList")
    for value in values:
        _sub(value_list, "Value").text = value


def _new_id() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _classification(parent: etree._Element, scheme: str, code: Code | None = None) -> etree._Element:
    """A coded attribute (or, without ``code``, an author) classifying ``parent``."""
    element = _sub(parent, "Classification", {
        "id": _new_id(), "objectType": _OBJECT_TYPE + "Classification", "classificationScheme": scheme,
        "classifiedObject": parent.get("id", ""), "nodeRepresentation": code.code if code else "",
    })
    if code is not None:
        _slot(element, "codingScheme", [code.coding_scheme])
        _localized(element, "Name", code.display_name)
    return element


def _author(parent: etree._Element, scheme: str, organization_name: str, organization_oid: str) -> None:
    """The authoring institution as XON with its OID as organisation identifier (XON.10, ITI TF-3 4.2.3.1.7)."""
    if not is_oid(organization_oid):
        raise MetadataError("the organisation OID is not an OID")
    _slot(_classification(parent, scheme), "authorInstitution",
          [f"{hl7_escape(organization_name)}^^^^^^^^^{organization_oid}"])


def _external_identifier(parent: etree._Element, scheme: str, value: str, name: str) -> None:
    element = _sub(parent, "ExternalIdentifier", {
        "id": _new_id(), "objectType": _OBJECT_TYPE + "ExternalIdentifier", "identificationScheme": scheme,
        "registryObject": parent.get("id", ""), "value": value,
    })
    _localized(element, "Name", name)


def _association(parent: etree._Element, kind: str, source: str, target: str) -> etree._Element:
    return _sub(parent, "Association", {
        "id": _new_id(), "objectType": _OBJECT_TYPE + "Association", "associationType": kind,
        "sourceObject": source, "targetObject": target,
    })


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def manifest_patient_cx(manifest: Dataset, test_environment: bool = False) -> str:
    """The manifest's Patient ID as XDS patientId, the issuer's qualifiers taking precedence."""
    qualifiers = manifest.get("IssuerOfPatientIDQualifiersSequence") or []
    issuer = next((_text(item, "UniversalEntityID") for item in qualifiers if _text(item, "UniversalEntityID")),
                  _text(manifest, "IssuerOfPatientID"))
    return patient_cx(_text(manifest, "PatientID"), issuer, test_environment)


def _accession_issuer(manifest: Dataset, fallback: str) -> str:
    for request in manifest.get("ReferencedRequestSequence") or []:
        for issuer in request.get("IssuerOfAccessionNumberSequence") or []:
            if is_oid(_text(issuer, "UniversalEntityID")):
                return _text(issuer, "UniversalEntityID")
    return fallback


def _source_patient_info(manifest: Dataset, cx: str) -> list[str]:
    """PID-3/5/7/8 of the patient as the manifest has it (empty fields left out)."""
    info = [f"PID-3|{cx}"]
    name = _person_name(_text(manifest, "PatientName"))
    if name:
        info.append(f"PID-5|{name}")
    birth_date = _text(manifest, "PatientBirthDate")
    if len(birth_date) == 8 and birth_date.isdigit():
        info.append(f"PID-7|{birth_date}")
    sex = _text(manifest, "PatientSex")
    if sex in ("M", "F", "O"):
        info.append(f"PID-8|{sex}")
    return info


def _referenced_uids(manifest: Dataset) -> set[str]:
    return {
        sop.ReferencedSOPInstanceUID
        for study in manifest.get("CurrentRequestedProcedureEvidenceSequence") or []
        for series in study.get("ReferencedSeriesSequence") or []
        for sop in series.get("ReferencedSOPSequence") or []
    }


def event_codes(manifest: Dataset, instances: Sequence[StudyInstance], procedure_codes: Sequence[Code]) -> list[Code]:
    """Acquisition modalities of the instances the manifest lists (CID 29, DCM), then the procedure codes."""
    listed = _referenced_uids(manifest)
    modalities = sorted({row.modality for row in stored_instances(instances)
                         if row.sop_instance_uid in listed and row.modality in ACQUISITION_MODALITIES})
    codes = [Code(code=m, coding_scheme=DCM, display_name=ACQUISITION_MODALITIES[m]) for m in modalities]
    return codes + [code for code in procedure_codes if code not in codes]


def _document_entry(parent: etree._Element, manifest: Dataset, instances: Sequence[StudyInstance], *, entry_uuid: str,
                    cx: str, domain: AffinityDomain, organization_name: str, organization_oid: str,
                    procedure_codes: Sequence[Code]) -> None:
    entry = _sub(parent, "ExtrinsicObject", {
        "id": entry_uuid, "mimeType": MIME_TYPE, "objectType": DOCUMENT_ENTRY_STABLE,
    })
    if domain.home_community_id:
        entry.set("home", domain.home_community_id)
    created = _dtm(_text(manifest, "ContentDate"), _text(manifest, "ContentTime"),
                   _text(manifest, "TimezoneOffsetFromUTC"))
    if created is None:
        raise MetadataError("the manifest has no valid Content Date")
    _slot(entry, "creationTime", [created])
    _slot(entry, "languageCode", [domain.language_code])
    service = _dtm(_text(manifest, "StudyDate"), _text(manifest, "StudyTime"),
                   _text(manifest, "TimezoneOffsetFromUTC"))
    if service is not None:
        _slot(entry, "serviceStartTime", [service])
        _slot(entry, "serviceStopTime", [service])
    _slot(entry, "sourcePatientId", [cx])
    _slot(entry, "sourcePatientInfo", _source_patient_info(manifest, cx))
    references = []
    accession = _text(manifest, "AccessionNumber")
    if accession:
        issuer = _accession_issuer(manifest, organization_oid)
        references.append(f"{hl7_escape(accession)}^^^&{issuer}&ISO^{ACCESSION}")
    references.append(f"{_text(manifest, 'StudyInstanceUID')}^^^^{STUDY_INSTANCE_UID}")
    _slot(entry, "urn:ihe:iti:xds:2013:referenceIdList", references)
    if _text(manifest, "StudyDescription"):
        _localized(entry, "Name", _text(manifest, "StudyDescription"))
    _author(entry, DOCUMENT_ENTRY_AUTHOR, organization_name, organization_oid)
    _classification(entry, DOCUMENT_ENTRY_CLASS_CODE, domain.class_code)
    _classification(entry, DOCUMENT_ENTRY_CONFIDENTIALITY_CODE, domain.confidentiality_code)
    for code in event_codes(manifest, instances, procedure_codes):
        _classification(entry, DOCUMENT_ENTRY_EVENT_CODE_LIST, code)
    _classification(entry, DOCUMENT_ENTRY_FORMAT_CODE, Code(
        code=KEY_OBJECT_SELECTION_DOCUMENT_STORAGE, coding_scheme=DICOM_UID_REGISTRY,
        display_name="Key Object Selection Document"))
    _classification(entry, DOCUMENT_ENTRY_HEALTHCARE_FACILITY_TYPE_CODE, domain.healthcare_facility_type_code)
    _classification(entry, DOCUMENT_ENTRY_PRACTICE_SETTING_CODE, domain.practice_setting_code)
    _classification(entry, DOCUMENT_ENTRY_TYPE_CODE, domain.type_code)
    _external_identifier(entry, DOCUMENT_ENTRY_PATIENT_ID, cx, "XDSDocumentEntry.patientId")
    _external_identifier(entry, DOCUMENT_ENTRY_UNIQUE_ID, _text(manifest, "SOPInstanceUID"),
                         "XDSDocumentEntry.uniqueId")


def _submission_set(parent: etree._Element, *, set_uuid: str, unique_id: str, cx: str, domain: AffinityDomain,
                    source_id: str, organization_name: str, organization_oid: str, now: datetime) -> None:
    package = _sub(parent, "RegistryPackage", {"id": set_uuid, "objectType": _OBJECT_TYPE + "RegistryPackage"})
    if domain.home_community_id:
        package.set("home", domain.home_community_id)
    _slot(package, "submissionTime", [xds_time(now)])
    _author(package, SUBMISSION_SET_AUTHOR, organization_name, organization_oid)
    _classification(package, SUBMISSION_SET_CONTENT_TYPE_CODE, domain.content_type_code)
    _external_identifier(package, SUBMISSION_SET_UNIQUE_ID, unique_id, "XDSSubmissionSet.uniqueId")
    _external_identifier(package, SUBMISSION_SET_SOURCE_ID, source_id, "XDSSubmissionSet.sourceId")
    _external_identifier(package, SUBMISSION_SET_PATIENT_ID, cx, "XDSSubmissionSet.patientId")
    _sub(parent, "Classification", {
        "id": _new_id(), "objectType": _OBJECT_TYPE + "Classification", "classifiedObject": set_uuid,
        "classificationNode": SUBMISSION_SET,
    })


def _check_submitter(source_id: str, now: datetime) -> None:
    """What every SubmissionSet needs from the caller: an OID sourceId and an aware submissionTime."""
    if not is_oid(source_id):
        raise MetadataError("the SubmissionSet sourceId is not an OID")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")


def _submit_objects_request() -> tuple[etree._Element, etree._Element]:
    """An empty lcm:SubmitObjectsRequest and its RegistryObjectList."""
    request = etree.Element(f"{{{NS['lcm']}}}SubmitObjectsRequest", nsmap={"lcm": NS["lcm"], "rim": NS["rim"]})
    return request, _sub(request, "RegistryObjectList")


def build_submission(
    manifest: Dataset,
    manifest_bytes: bytes,
    instances: Sequence[StudyInstance],
    *,
    domain: AffinityDomain,
    source_id: str,
    organization_oid: str,
    organization_name: str,
    replaces_entry_uuid: str | None,
    now: datetime,
    procedure_codes: Sequence[Code] = (),
    document_entry_uuid: str | None = None,
    submission_set_uuid: str | None = None,
    submission_set_unique_id: str | None = None,
    test_environment: bool = False,
) -> Submission:
    """The RAD-68 SubmitObjectsRequest registering ``manifest`` (whose Part 10 bytes are ``manifest_bytes``).

    ``replaces_entry_uuid`` adds an RPLC association that deprecates the study's previous manifest.
    ``procedure_codes`` (the study code, when known) join the modalities in eventCodeList. hash, size and
    repositoryUniqueId are left out: in ITI-41/RAD-68 the repository sets them (ITI TF-3 Table 4.3.1-3).
    """
    if manifest_bytes[128:132] != b"DICM":
        raise MetadataError("the document is not DICOM Part 10 (RAD TF-3 4.68.4.1.2: KOS as Part 10 file)")
    if _text(manifest, "SOPClassUID") != KEY_OBJECT_SELECTION_DOCUMENT_STORAGE:
        raise MetadataError("the manifest is not a Key Object Selection Document")
    _check_submitter(source_id, now)
    cx = manifest_patient_cx(manifest, test_environment)
    entry_uuid = document_entry_uuid or _new_id()
    set_uuid = submission_set_uuid or _new_id()
    set_unique_id = submission_set_unique_id or generate_uid(prefix=None)
    request, objects = _submit_objects_request()
    _document_entry(objects, manifest, instances, entry_uuid=entry_uuid, cx=cx, domain=domain,
                    organization_name=organization_name, organization_oid=organization_oid,
                    procedure_codes=procedure_codes)
    _submission_set(objects, set_uuid=set_uuid, unique_id=set_unique_id, cx=cx, domain=domain, source_id=source_id,
                    organization_name=organization_name, organization_oid=organization_oid, now=now)
    _slot(_association(objects, HAS_MEMBER, set_uuid, entry_uuid), "SubmissionSetStatus", ["Original"])
    if replaces_entry_uuid:
        _association(objects, RPLC, entry_uuid, replaces_entry_uuid)
    return Submission(request=request, document_entry_uuid=entry_uuid, submission_set_uuid=set_uuid,
                      unique_id=_text(manifest, "SOPInstanceUID"), submission_set_unique_id=set_unique_id,
                      patient_id=cx, document=manifest_bytes)


def build_status_update(
    entry_uuid: str,
    patient_id: str,
    *,
    domain: AffinityDomain,
    source_id: str,
    organization_oid: str,
    organization_name: str,
    now: datetime,
    original_status: str = STATUS_APPROVED,
    new_status: str = STATUS_DEPRECATED,
    submission_set_uuid: str | None = None,
    submission_set_unique_id: str | None = None,
) -> StatusUpdate:
    """The ITI-57 SubmitObjectsRequest moving DocumentEntry ``entry_uuid`` from ``original_status`` to
    ``new_status`` (by default Approved -> Deprecated: a study whose instances were all rejected keeps no manifest,
    RAD TF RAD68-007), without registering a replacement.

    ITI TF-2b 3.57.4.1.3.3.2: a SubmissionSet and an UpdateAvailabilityStatus association from it to the entry,
    with Slots OriginalStatus and NewStatus. ``patient_id`` is the entry's patientId (CX as registered): the
    registry refuses a SubmissionSet of another patient (XDSPatientIdDoesNotMatch).
    """
    if not is_uuid_ref(entry_uuid):
        raise MetadataError("the DocumentEntry to update is not named by its entryUUID (urn:uuid:...)")
    if not is_cx(patient_id):
        raise MetadataError("the DocumentEntry patientId is not CX ID^^^&OID&ISO")
    if {original_status, new_status} != {STATUS_APPROVED, STATUS_DEPRECATED}:
        raise MetadataError("ITI-57 changes availabilityStatus between Approved and Deprecated only")
    _check_submitter(source_id, now)
    set_uuid = submission_set_uuid or _new_id()
    set_unique_id = submission_set_unique_id or generate_uid(prefix=None)
    request, objects = _submit_objects_request()
    _submission_set(objects, set_uuid=set_uuid, unique_id=set_unique_id, cx=patient_id, domain=domain,
                    source_id=source_id, organization_name=organization_name, organization_oid=organization_oid,
                    now=now)
    association = _association(objects, UPDATE_AVAILABILITY_STATUS, set_uuid, entry_uuid)
    _slot(association, "OriginalStatus", [original_status])
    _slot(association, "NewStatus", [new_status])
    return StatusUpdate(request=request, entry_uuid=entry_uuid, submission_set_uuid=set_uuid,
                        submission_set_unique_id=set_unique_id, patient_id=patient_id,
                        original_status=original_status, new_status=new_status)
