"""A C-FIND match encoded directly is what pydicom would have written."""

from __future__ import annotations

import pytest

from gateway.core.query import Level, Model, Query
from gateway.dicom.acse import EXPLICIT_LITTLE, IMPLICIT_LITTLE
from gateway.dicom.dataset import encode, read_prefix
from gateway.retrieve.answer import encode_match, identifier


@pytest.mark.parametrize("syntax", [EXPLICIT_LITTLE, IMPLICIT_LITTLE])
def test_encode_match_equals_the_identifier(syntax: str) -> None:
    query = Query(Model.STUDY_ROOT, Level.STUDY, (), ("PatientName", "StudyInstanceUID", "ModalitiesInStudy",
                                                      "NumberOfStudyRelatedInstances", "StudyDate", "StudyTime"),
                  ("ReferencedStudySequence", "SeriesDescription"), True, True, True)
    values = {"PatientName": "Mäkelä^Jyrki", "StudyInstanceUID": "1.2.3", "ModalitiesInStudy": ["CT", "SR"],
              "NumberOfStudyRelatedInstances": 12, "StudyDate": "20260105", "StudyTime": None}
    keys = (*query.returns, *query.unsupported)
    encoded = encode_match(query, values, keys, "DICOMGW", syntax)
    assert encoded == encode(identifier(query, values, keys, "DICOMGW"), syntax)
    parsed = read_prefix(encoded, syntax, 0xFFFFFFFF, True)
    assert parsed is not None and str(parsed[0].PatientName) == "Mäkelä^Jyrki"
