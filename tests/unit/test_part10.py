"""The Part 10 header the store writes in front of each data set, encoded without pydicom's writer."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

from gateway.dicom.acse import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from gateway.dicom.dataset import encode, part10_header

CASES = [
    ("1.2.840.10008.5.1.4.1.1.2", "1.2.826.0.1.3680043.8.498.1", "1.2.840.10008.1.2.1", "STORESCU"),
    ("1.2.840.10008.5.1.4.1.1.7", "1.2.3.45", "1.2.840.10008.1.2", "ODD"),
    ("1.2.840.10008.5.1.4.1.1.1.2", "1.23", "1.2.840.10008.1.2.4.50", ""),
]


def pydicom_header(sop_class: str, sop_instance: str, transfer_syntax: str, source_ae: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    if source_ae:
        meta.SourceApplicationEntityTitle = source_ae
    out = BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)  # type: ignore[arg-type]
    return out.getvalue()


@pytest.mark.parametrize(("sop_class", "sop_instance", "transfer_syntax", "source_ae"), CASES)
def test_header_is_byte_identical_to_pydicoms_and_reads_back(sop_class: str, sop_instance: str,
                                                               transfer_syntax: str, source_ae: str) -> None:
    header = part10_header(sop_class, sop_instance, transfer_syntax, IMPLEMENTATION_CLASS_UID,
                           IMPLEMENTATION_VERSION, source_ae)
    assert header == pydicom_header(sop_class, sop_instance, transfer_syntax, source_ae)

    body = Dataset()
    body.SOPClassUID = sop_class
    body.SOPInstanceUID = sop_instance
    body.PatientID = "P1"
    body_syntax = transfer_syntax if transfer_syntax == "1.2.840.10008.1.2" else "1.2.840.10008.1.2.1"
    read = dcmread(BytesIO(header + encode(body, body_syntax)))
    assert read.file_meta.MediaStorageSOPInstanceUID == sop_instance
    assert read.file_meta.TransferSyntaxUID == transfer_syntax
    assert read.file_meta.get("SourceApplicationEntityTitle", "") == source_ae
    assert read.PatientID == "P1"
