"""Synthetic, valid DICOM instances for load tests: random pixel data, so nothing compresses.

Patient IDs are Finnish test identity codes (individual number 900-999) so the fi-kanta profile accepts them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from workers.validation.hetu import check_character

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
DIGITAL_MAMMOGRAPHY = "1.2.840.10008.5.1.4.1.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@dataclass(frozen=True)
class Kind:
    name: str
    sop_class: str
    modality: str
    rows: int
    columns: int

    @property
    def pixel_bytes(self) -> int:
        return self.rows * self.columns * 2


KINDS = {
    "ct": Kind("ct", CT_IMAGE_STORAGE, "CT", 512, 512),  # 0.5 MB, the common case
    "tiny": Kind("tiny", SECONDARY_CAPTURE, "OT", 64, 80),  # 10 KB, per-instance overhead
    "mammo": Kind("mammo", DIGITAL_MAMMOGRAPHY, "MG", 4096, 6144),  # 50 MB
}


def test_patient_id(n: int) -> str:
    birth = f"{1 + n % 28:02d}{1 + n % 12:02d}{n % 100:02d}"
    individual = f"{900 + n % 100:03d}"
    return f"{birth}-{individual}{check_character(birth, individual)}"


def generate(kind: Kind, count: int, directory: Path, studies: int = 10) -> list[Path]:
    """``count`` instances of one kind spread over ``studies`` studies; reused when already there."""
    directory.mkdir(parents=True, exist_ok=True)
    existing = sorted(directory.glob("*.dcm"))
    if len(existing) >= count:
        return existing[:count]
    study_uids = [generate_uid() for _ in range(studies)]
    series_uids = [generate_uid() for _ in range(studies)]
    paths = []
    for n in range(count):
        study = n % studies
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = kind.sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = kind.sop_class, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uids[study], series_uids[study]
        ds.PatientID, ds.IssuerOfPatientID = test_patient_id(study), "1.2.246.21"
        ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "Test^Patient", "", "O"
        ds.AccessionNumber, ds.StudyDescription = f"ACC{study:06d}", "Benchmark study"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.ReferringPhysicianName = "20260101", "120000", "1", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = kind.modality, 1, n + 1
        ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = kind.rows, kind.columns, 16, 16, 15
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
        ds.PixelData = os.urandom(kind.pixel_bytes)
        path = directory / f"{n:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
