"""The synthetic study the self-test sends: test identities only (individual numbers 900-999, never a person in
the population register), small images, and the messages that later correct it."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from gateway.core.iocm import Reference, Title
from gateway.dicom.rejection import build_note
from gateway.hetu import HETU_OID, TEMPORARY_RANGE, check_character

SERIES = 2
INSTANCES_PER_SERIES = 2
ROWS = COLUMNS = 32
MANUFACTURER = "dicom-gateway selftest"


def temporary_identity(rng: random.Random) -> str:
    """A valid personal identity code in the 900 series, born in the 1900s (century sign '-')."""
    born = date(1950, 1, 1).toordinal() + rng.randrange(365 * 40)
    birth = date.fromordinal(born).strftime("%d%m%y")
    individual = f"{rng.choice(TEMPORARY_RANGE)}"
    return f"{birth}-{individual}{check_character(birth, individual)}"


@dataclass
class SyntheticStudy:
    """One study of two series of CT images for a test patient; each run has its own UIDs and identity."""

    patient_id: str
    patient_name: str = "SELFTEST^TESTI"
    accession_number: str = field(default_factory=lambda: f"ST{random.randrange(10**12):012d}")
    study_instance_uid: str = field(default_factory=generate_uid)
    procedure_code: tuple[str, str] | None = None
    """(CodeValue, CodingSchemeDesignator) of the study code a site's profile requires (fi-kanta)."""
    frame_of_reference_uid: str = field(default_factory=generate_uid)
    instances: list[Dataset] = field(default_factory=list)

    @classmethod
    def create(cls, rng: random.Random, series: int = SERIES, per_series: int = INSTANCES_PER_SERIES,
               procedure_code: tuple[str, str] | None = None) -> SyntheticStudy:
        study = cls(temporary_identity(rng), procedure_code=procedure_code)
        now = datetime.now(UTC)
        for series_number in range(1, series + 1):
            series_uid = generate_uid()
            for number in range(1, per_series + 1):
                study.instances.append(study._image(series_uid, series_number, number, now, rng))
        return study

    def _image(self, series_uid: str, series_number: int, number: int, now: datetime,
               rng: random.Random) -> Dataset:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName = self.patient_name
        ds.PatientID = self.patient_id
        ds.IssuerOfPatientID = HETU_OID
        ds.PatientBirthDate = self.birth_date
        ds.PatientSex = "O"
        ds.StudyInstanceUID = self.study_instance_uid
        ds.StudyDate = now.strftime("%Y%m%d")
        ds.StudyTime = now.strftime("%H%M%S")
        ds.TimezoneOffsetFromUTC = "+0000"
        ds.StudyID = "1"
        ds.AccessionNumber = self.accession_number
        ds.StudyDescription = "Deployment self-test"
        ds.ReferringPhysicianName = ""
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = f"Self-test series {series_number}"
        ds.Modality = "CT"
        ds.Manufacturer = MANUFACTURER
        ds.InstitutionName = "Self-test"
        ds.InstanceNumber = number
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ContentDate, ds.ContentTime = ds.StudyDate, ds.StudyTime
        ds.FrameOfReferenceUID = self.frame_of_reference_uid
        ds.ImagePositionPatient = [0, 0, number]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1, 1]
        ds.SliceThickness = 1
        ds.KVP = 120
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        if self.procedure_code is not None:
            code = Dataset()
            code.CodeValue, code.CodingSchemeDesignator = self.procedure_code
            code.CodeMeaning = "Deployment self-test"
            ds.ProcedureCodeSequence = DicomSequence([code])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ROWS, COLUMNS
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = rng.randbytes(ROWS * COLUMNS * 2)
        return ds

    @property
    def birth_date(self) -> str:
        day, month, year = self.patient_id[0:2], self.patient_id[2:4], self.patient_id[4:6]
        return f"19{year}{month}{day}"

    @property
    def references(self) -> list[tuple[str, str]]:
        """(SOP Class UID, SOP Instance UID) of every instance, as a commitment request lists them."""
        return [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in self.instances]

    @property
    def series(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for ds in self.instances:
            found.setdefault(str(ds.SeriesInstanceUID), []).append(str(ds.SOPInstanceUID))
        return found

    def rejection_note(self, withdrawn: Dataset) -> Dataset:
        """A 113001 (quality) rejection note for one instance, as a modality sends one."""
        reference = Reference(self.study_instance_uid, str(withdrawn.SeriesInstanceUID), str(withdrawn.SOPClassUID),
                              str(withdrawn.SOPInstanceUID))
        note = build_note(Title.QUALITY, withdrawn, [reference], datetime.now(UTC), MANUFACTURER)
        note.file_meta = FileMetaDataset()
        note.file_meta.MediaStorageSOPClassUID = note.SOPClassUID
        note.file_meta.MediaStorageSOPInstanceUID = note.SOPInstanceUID
        note.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        note.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        return note


def adt(trigger: str, patient_id: str, application: str, facility: str, receiver: str, control_id: str,
        name: str = "", prior: str | None = None) -> str:
    """An ADT message as a HIS sends it: A08 (update patient information) or A40 (merge ``prior`` into
    ``patient_id``); identities under the personal identity code's OID; segments end with CR."""
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    structure = {"A08": "ADT_A01", "A40": "ADT_A39"}[trigger]
    segments = [
        f"MSH|^~\\&|{application}|{facility}|{receiver}||{now}||ADT^{trigger}^{structure}|{control_id}|P|2.5|||||FIN|"
        "UNICODE UTF-8",
        f"EVN|{trigger}|{now}",
        f"PID|1||{patient_id}^^^&{HETU_OID}&ISO^NNFIN||{name}",
    ]
    segments += ["PV1|1|O"] if prior is None else [f"MRG|{prior}^^^&{HETU_OID}&ISO^NNFIN"]
    return "\r".join(segments) + "\r"
