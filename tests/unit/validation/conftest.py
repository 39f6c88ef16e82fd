"""A header that every fi-kanta rule accepts, and a way to plant values pydicom would refuse to set."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydicom import config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage

from workers.validation import ProfileParameters, RuleContext, SourceContext

HETU = "131052-308T"
"""The DVV / Wikipedia worked example."""
ORGANIZATION_OID = "1.2.246.10.2048198"
SOURCE = SourceContext("CT01", "Turun kaupunki", ORGANIZATION_OID)
PARAMETERS = ProfileParameters(test_environment=False, procedure_codes=frozenset({"GD1AA", "NA1AA"}))

Put = Callable[[Dataset, str, Any], None]


def put(ds: Dataset, keyword: str, value: Any) -> None:
    """Set an element without pydicom's value validation, as a badly-behaved modality would send it."""
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    ds.add(DataElement(tag, dictionary_VR(tag), value, validation_mode=config.IGNORE))


def _code(value: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "99KUNTALIITTO"
    item.CodeMeaning = "Thorax"
    return item


def conforming_header() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.10.3"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.10.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.10.2"
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.10.4"
    ds.Modality = "CT"
    ds.PatientName = "Meikäläinen^Matti"
    ds.PatientID = HETU
    ds.IssuerOfPatientID = "1.2.246.21"
    qualifiers = Dataset()
    qualifiers.UniversalEntityID = "1.2.246.21"
    qualifiers.UniversalEntityIDType = "ISO"
    ds.IssuerOfPatientIDQualifiersSequence = [qualifiers]
    ds.PatientBirthDate = "19521013"
    ds.PatientSex = "M"
    ds.PatientAge = "071Y"
    ds.StudyDate = "20240115"
    ds.StudyTime = "101500.25"
    ds.AcquisitionDateTime = "20240115101512.5+0200"
    ds.ReferringPhysicianName = "Lääkäri^Liisa"
    ds.StudyID = "1"
    ds.AccessionNumber = "A2024-1"
    ds.StudyDescription = "Thorax"
    ds.RequestedProcedureCodeSequence = [_code("GD1AA01")]
    ds.ProcedureCodeSequence = [_code("GD1AA")]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows = 512
    ds.Columns = 512
    ds.InstitutionName = "Turun kaupunki"
    return ds


@pytest.fixture(name="put")
def put_fixture() -> Put:
    return put


@pytest.fixture
def header() -> Dataset:
    return conforming_header()


@pytest.fixture
def context() -> RuleContext:
    return RuleContext(SOURCE, PARAMETERS)
