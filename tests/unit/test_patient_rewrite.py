"""The patient's current attributes written over a stored object on the way out, in every transfer syntax the
gateway stores (pydicom's test files), with the pixel data and every other attribute as they were."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from gateway.core.study import Patient
from gateway.dicom.transcode import open_part10, with_patient

FILES = ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm",
         "SC_rgb_jpeg_gdcm.dcm", "JPEG2000.dcm"]
PATIENT = Patient("010594Y9032", "1.2.246.21", "Mäkelä^Jyrki", "19940501", "M", "ISO_IR 100")


async def served(data: bytes, patient: Patient, chunk: int = 4096) -> Dataset:
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), chunk):
            yield data[start:start + chunk]

    meta, data_set = await open_part10(chunks())
    rewritten = b"".join([piece async for piece in with_patient(data_set, meta.transfer_syntax_uid, patient)])
    group_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL right after the preamble and DICM
    return pydicom.dcmread(io.BytesIO(data[: 144 + group_length] + rewritten))  # the file meta as stored


@pytest.mark.parametrize("name", FILES)
async def test_every_stored_syntax_gets_the_patient_and_keeps_everything_else(name: str) -> None:
    data = Path(str(get_testdata_file(name))).read_bytes()
    original = pydicom.dcmread(io.BytesIO(data))
    result = await served(data, PATIENT)
    assert (result.PatientID, str(result.PatientName)) == ("010594Y9032", "Mäkelä^Jyrki")
    assert (result.PatientBirthDate, result.PatientSex) == ("19940501", "M")
    assert result.IssuerOfPatientID == "1.2.246.21"
    assert result.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == "1.2.246.21"
    assert result.PixelData == original.PixelData
    patient_keywords = {"PatientName", "PatientID", "PatientBirthDate", "PatientSex", "IssuerOfPatientID",
                        "IssuerOfPatientIDQualifiersSequence", "SpecificCharacterSet", "PixelData"}
    for element in original:
        if element.keyword not in patient_keywords and element.tag.element != 0:
            assert result[element.tag].value == element.value, element.keyword


async def test_the_character_set_follows_what_the_values_need() -> None:
    data = Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()
    assert (await served(data, PATIENT)).SpecificCharacterSet == "ISO_IR 100"  # declared already, holds ä
    cyrillic = Patient("P1", "HOSP", "Иванов^Иван", "", "", "ISO_IR 192")
    result = await served(data, cyrillic)
    assert result.SpecificCharacterSet == "ISO_IR 192" and str(result.PatientName) == "Иванов^Иван"
    ascii_name = Patient("P1", "HOSP", "VIRTANEN^ANNA", "", "", "")
    assert (await served(data, ascii_name)).SpecificCharacterSet == "ISO_IR 100"


async def test_the_issuer_and_its_qualifiers_never_disagree() -> None:
    original = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    item = Dataset()
    item.UniversalEntityID, item.UniversalEntityIDType = "1.2.246.10.2048198.22.2026", "ISO"
    original.IssuerOfPatientID = "TEMPNS"
    original.IssuerOfPatientIDQualifiersSequence = [item]
    buffer = io.BytesIO()
    original.save_as(buffer, enforce_file_format=True)
    hetu = await served(buffer.getvalue(), PATIENT)
    assert hetu.IssuerOfPatientID == "1.2.246.21"
    assert hetu.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == "1.2.246.21"
    local = await served(buffer.getvalue(), Patient("L1", "LOCALNS", "X^Y"))
    assert local.IssuerOfPatientID == "LOCALNS" and "IssuerOfPatientIDQualifiersSequence" not in local
