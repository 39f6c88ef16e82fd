"""The XDS-I.b manifest: a Key Object Selection Document (KOS) that lists a study's stored instances.

Built per DICOM PS3.3 A.35.4 (Key Object Selection Document IOD) with the document title (113030, DCM,
"Manifest") and content per PS3.16 TID 2010, as IHE RAD TF-3 4.68.4.1.2.3 asks of an Imaging Document Source;
the layout matches the NIST XDS Toolkit's XDS-I manifests (ids_4801/ids_4802). Only instances whose index
status is ``stored`` are listed: a quarantined instance's header is not trusted and a replaced one is a prior
version, so neither may be offered for retrieval.
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import copy
from datetime import datetime
from io import BytesIO
from zoneinfo import ZoneInfo

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from gateway.core.study import InstanceStatus, StudyInstance
from gateway.dicom.acse import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from gateway.dicom.kos_check import KEY_OBJECT_SELECTION_DOCUMENT_STORAGE, MANIFEST_TITLE
from gateway.dicom.patient import set_issuer
from gateway.xds.rules import is_oid

MANIFEST_SERIES_NUMBER = 999
"""Series Number of the manifest's own series; high so it sorts after the image series (as NIST's does)."""
SPECIFIC_CHARACTER_SET = "ISO_IR 192"
"""UTF-8: Finnish and Sámi names need more than Latin-1."""
LOCAL_TIME = ZoneInfo("Europe/Helsinki")
"""The zone of DICOM dates and times without Timezone Offset From UTC: modalities here write Finnish time."""

def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def content_value_type(sop_class_uid: str) -> str:
    """TID 2010 row for a referenced instance: IMAGE for image storage, WAVEFORM for waveforms, else COMPOSITE."""
    name = UID(sop_class_uid).name
    if "Image Storage" in name:
        return "IMAGE"
    if name.endswith("Waveform Storage"):
        return "WAVEFORM"
    return "COMPOSITE"


def stored_instances(instances: Sequence[StudyInstance]) -> list[StudyInstance]:
    """The rows a manifest may list, ordered by series and instance number as viewers expect."""
    stored = [row for row in instances if row.status is InstanceStatus.STORED]
    return sorted(stored, key=lambda r: (r.series_number is None, r.series_number or 0, r.series_instance_uid,
                                         r.instance_number is None, r.instance_number or 0, r.sop_instance_uid))


def newest(rows: Sequence[StudyInstance]) -> StudyInstance:
    """The row whose header speaks for the study: the most recently stored (then the highest version)."""
    return max(rows, key=lambda r: (r.stored_at, r.version))


def _reference(row: StudyInstance) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = row.sop_class_uid
    item.ReferencedSOPInstanceUID = row.sop_instance_uid
    return item


def _evidence(rows: list[StudyInstance], study_uid: str, retrieve_ae_title: str, retrieve_location_uid: str,
              retrieve_url: str | None) -> Dataset:
    """Current Requested Procedure Evidence Sequence item: the study, one Referenced Series item per series."""
    series: dict[str, list[StudyInstance]] = {}
    for row in rows:
        series.setdefault(row.series_instance_uid, []).append(row)
    items = []
    for series_uid, members in series.items():
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.RetrieveAETitle = retrieve_ae_title
        item.RetrieveLocationUID = retrieve_location_uid
        if retrieve_url:
            item.RetrieveURL = retrieve_url
        item.ReferencedSOPSequence = DicomSequence([_reference(row) for row in members])
        items.append(item)
    study = Dataset()
    study.StudyInstanceUID = study_uid
    study.ReferencedSeriesSequence = DicomSequence(items)
    return study


def _content_item(row: StudyInstance) -> Dataset:
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = content_value_type(row.sop_class_uid)
    item.ReferencedSOPSequence = DicomSequence([_reference(row)])
    return item


def _request(study_uid: str, accession_number: str, accession_issuer: str) -> Dataset:
    """Referenced Request Sequence item (Key Object Document Module): the order the study answers."""
    item = Dataset()
    item.StudyInstanceUID = study_uid
    item.ReferencedStudySequence = DicomSequence()
    item.AccessionNumber = accession_number
    if accession_issuer:
        issuer = Dataset()
        issuer.UniversalEntityID = accession_issuer
        issuer.UniversalEntityIDType = "ISO"
        item.IssuerOfAccessionNumberSequence = DicomSequence([issuer])
    item.PlacerOrderNumberImagingServiceRequest = ""
    item.FillerOrderNumberImagingServiceRequest = ""
    item.RequestedProcedureID = ""
    item.RequestedProcedureDescription = ""
    item.RequestedProcedureCodeSequence = DicomSequence()
    return item


def _patient(ds: Dataset, row: StudyInstance) -> None:
    """Patient Module from the study's patient attributes as stored (the newest row's)."""
    attributes = row.patient_attributes
    ds.PatientName = attributes.get("PatientName", "")
    ds.PatientID = attributes.get("PatientID") or row.patient_id
    issuer = attributes.get("IssuerOfPatientID") or row.issuer_of_patient_id
    if issuer:
        set_issuer(ds, issuer)
    ds.PatientBirthDate = attributes.get("PatientBirthDate", "")
    ds.PatientSex = attributes.get("PatientSex", "")


def build_manifest(
    instances: Sequence[StudyInstance],
    *,
    retrieve_ae_title: str,
    retrieve_location_uid: str,
    institution_name: str,
    now: datetime,
    sop_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    retrieve_url: str | None = None,
    accession_issuer: str | None = None,
) -> Dataset:
    """The KOS manifest of one study's stored instances.

    ``now`` (timezone-aware) becomes Instance Creation and Content Date/Time in Finnish local time, without
    Timezone Offset From UTC: that attribute would apply to every date and time in the instance, and the Study
    Date/Time copied from the images are local time. New UIDs are generated when not given.
    Study ID, Referring Physician's Name, Study Date/Time and Accession Number are the study's as stored (the
    newest stored row's), empty but present (type 2) when it had none. The Accession Number's issuer is the
    study's own Issuer of Accession Number when it had one; else ``accession_issuer``, which defaults to the
    sending organisation's OID, the authority that assigned the Accession Number; an issuer that is not an OID
    is left out. Raises ValueError when no instance is stored, the stored ones span several studies, or the retrieve
    location is not a UID.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if not retrieve_ae_title or not is_oid(retrieve_location_uid):
        raise ValueError("a manifest needs a Retrieve AE Title and a Retrieve Location UID (the repository OID)")
    rows = stored_instances(instances)
    if not rows:
        raise ValueError("no stored instance to list in a manifest")
    studies = {row.study_instance_uid for row in rows}
    if len(studies) != 1:
        raise ValueError(f"a manifest lists one study, the instances belong to {len(studies)}")
    head = newest(rows)
    study_uid = head.study_instance_uid
    created = now.astimezone(LOCAL_TIME)
    date, time = created.strftime("%Y%m%d"), created.strftime("%H%M%S")

    ds = Dataset()
    ds.SpecificCharacterSet = SPECIFIC_CHARACTER_SET
    ds.SOPClassUID = KEY_OBJECT_SELECTION_DOCUMENT_STORAGE
    ds.SOPInstanceUID = sop_instance_uid or generate_uid(prefix=None)
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    _patient(ds, head)
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = head.study_date
    ds.StudyTime = head.study_time
    ds.ReferringPhysicianName = head.referring_physician_name
    ds.StudyID = head.study_id
    ds.AccessionNumber = head.accession_number
    if head.study_description:
        ds.StudyDescription = head.study_description
    ds.Modality = "KO"
    ds.SeriesInstanceUID = series_instance_uid or generate_uid(prefix=None)
    ds.SeriesNumber = MANIFEST_SERIES_NUMBER
    ds.ReferencedPerformedProcedureStepSequence = DicomSequence()
    ds.Manufacturer = ""
    ds.InstitutionName = institution_name
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = date, time
    if head.accession_number:
        issuer = head.issuer_of_accession_number or (
            accession_issuer if accession_issuer is not None else head.source_organization_oid
        )
        ds.ReferencedRequestSequence = DicomSequence(
            [_request(study_uid, head.accession_number, issuer if is_oid(issuer) else "")]
        )
    ds.CurrentRequestedProcedureEvidenceSequence = DicomSequence(
        [_evidence(rows, study_uid, retrieve_ae_title, retrieve_location_uid, retrieve_url)]
    )
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = DicomSequence([_code(*MANIFEST_TITLE)])
    ds.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "2010"
    ds.ContentTemplateSequence = DicomSequence([template])
    ds.ContentSequence = DicomSequence([_content_item(row) for row in rows])
    return ds


def to_part10(ds: Dataset) -> bytes:
    """The manifest as a DICOM Part 10 file in Explicit VR Little Endian, as RAD-68 sends it."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    out = BytesIO()
    part10 = copy(ds)
    part10.file_meta = meta
    part10.save_as(out, enforce_file_format=True)
    return out.getvalue()
