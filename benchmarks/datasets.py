"""Synthetic, valid DICOM instances for load tests: random pixel data, so nothing compresses.

Patient IDs are Finnish test identity codes (individual number 900-999) and every study carries an accession
number, a description and a study code, so the fi-kanta profile (with ``KANTA_PROFILE`` and the test
environment on) accepts them. Files are generated once per kind and reused by later runs.
"""

from __future__ import annotations

import copy
import functools
import os
import random
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from gateway.hetu import check_character

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
DIGITAL_XRAY = "1.2.840.10008.5.1.4.1.1.1.1"
DIGITAL_MAMMOGRAPHY = "1.2.840.10008.5.1.4.1.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
STUDY_CODE = "NA1BB"
INSTITUTION = "Benchmark District Hospital"
FORMAT = "v2"
"""Bumped when the generated content changes, so that older files on disk are not reused."""


@dataclass(frozen=True)
class Kind:
    name: str
    sop_class: str
    modality: str
    rows: int
    columns: int
    modality_header: str = ""
    """A pydicom test file whose other elements (private groups included) join the header, as a real modality's
    header carries hundreds; identity, UIDs and the image pixel module stay the synthetic ones."""

    @property
    def pixel_bytes(self) -> int:
        return self.rows * self.columns * 2


KINDS = {
    "ct": Kind("ct", CT_IMAGE_STORAGE, "CT", 512, 512),  # 0.5 MB, the common case
    "tiny": Kind("tiny", SECONDARY_CAPTURE, "OT", 64, 80),  # 10 KB, per-instance overhead
    "ct-real": Kind("ct-real", CT_IMAGE_STORAGE, "CT", 512, 512, "CT_small.dcm"),  # ct with a real CT's header
    "dx": Kind("dx", DIGITAL_XRAY, "DX", 2048, 2560),  # 10 MB radiograph
    "mammo": Kind("mammo", DIGITAL_MAMMOGRAPHY, "MG", 4096, 6144),  # 50 MB
}
DISTRICT_DAY = {"ct": 70, "tiny": 20, "dx": 8, "mammo": 2}
"""Instances per hundred on a district's day: CT/MR slices, small objects (SR, KO, PR, secondary captures),
radiographs and mammograms. By bytes the radiographs and mammograms weigh most, as they do in practice."""

KANTA_PROFILE = f"""name: fi-kanta
extends: fi-kanta
parameters:
  test_environment: true
  procedure_codes: [{STUDY_CODE}]
"""
"""The site profile layer that makes the synthetic studies pass fi-kanta (GATEWAY_VALIDATION__PROFILE_FILES)."""


def test_patient_id(n: int) -> str:
    birth = f"{1 + n % 28:02d}{1 + n % 12:02d}{n % 100:02d}"
    individual = f"{900 + n % 100:03d}"
    return f"{birth}-{individual}{check_character(birth, individual)}"


def _instance(kind: Kind, n: int, study: int, study_uid: str, series_uid: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = kind.sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = kind.sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientID, ds.IssuerOfPatientID = test_patient_id(study), "1.2.246.21"
    ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "Test^Patient", "", "O"
    ds.AccessionNumber, ds.StudyDescription = f"ACC{study:06d}", "Benchmark study"
    ds.InstitutionName = INSTITUTION
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = STUDY_CODE, "99FIKANTA", "Benchmark"
    ds.RequestedProcedureCodeSequence = [code]
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.ReferringPhysicianName = "20260101", "120000", "1", ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = kind.modality, 1, n + 1
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = kind.rows, kind.columns, 16, 16, 15
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    if kind.modality_header:
        for element in _modality_header(kind.modality_header):
            if element.tag not in ds and element.tag.group not in _KEPT_GROUPS and element.tag not in _KEPT:
                ds.add(copy.deepcopy(element))
    ds.PixelData = os.urandom(kind.pixel_bytes)
    return ds


_KEPT_GROUPS = (0x0002, 0x0010, 0x0028, 0x7FE0)
"""File meta, patient, image pixel module and pixel data: the synthetic instance's own."""
_KEPT = frozenset({0x00080018, 0x0020000D, 0x0020000E, 0x00200052, 0x00080050, 0x00081030, 0x00321064,
                   0x00080020, 0x00080030, 0x00200010, 0x00080090})
"""SOP Instance, Study, Series and Frame of Reference UIDs, and the study's identity (fi-kanta checks it)."""


@functools.cache
def _modality_header(name: str) -> Dataset:
    path = get_testdata_file(name)
    assert isinstance(path, str), name
    return dcmread(path, stop_before_pixels=True)


def generate(kind: Kind, count: int, directory: Path, studies: int = 10) -> list[Path]:
    """``count`` instances of one kind spread over ``studies`` studies; reused when already there."""
    directory = directory / FORMAT
    directory.mkdir(parents=True, exist_ok=True)
    existing = sorted(directory.glob("*.dcm"))
    if len(existing) >= count:
        return existing[:count]
    study_uids = [generate_uid() for _ in range(studies)]
    series_uids = [generate_uid() for _ in range(studies)]
    paths = []
    for n in range(count):
        study = n % studies
        path = directory / f"{n:06d}.dcm"
        _instance(kind, n, study, study_uids[study], series_uids[study]).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def district_day(count: int, root: Path) -> list[Path]:
    """``count`` instances mixed as ``DISTRICT_DAY`` (at least one of each kind), in a fixed shuffled order."""
    shares = {kind: max(1, round(count * per_hundred / 100)) for kind, per_hundred in DISTRICT_DAY.items()}
    paths = [path for kind, n in shares.items() for path in generate(KINDS[kind], n, root / kind)]
    random.Random(8).shuffle(paths)
    return paths


def dataset(name: str, count: int, root: Path) -> list[Path]:
    """A named dataset of the benchmark: one kind, or ``district`` for the mix."""
    return district_day(count, root) if name == "district" else generate(KINDS[name], count, root / name)
