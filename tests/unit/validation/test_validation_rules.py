"""Every rule fires on a header made wrong in its way, and stays silent on a conforming one."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException
from pydicom.uid import ExplicitVRLittleEndian

from gateway.dicom.dataset import IMPLICIT_LITTLE, PIXEL_DATA, encode, read_prefix
from tests.helpers import explicit_element
from workers.validation import RULES, Finding, RuleContext, Severity, SourceContext

Put = Callable[[Dataset, str, Any], None]
Mutation = Callable[[Dataset, Put], None]
Recontext = Callable[[RuleContext], RuleContext] | None
TEMPORARY_NAMESPACE = "1.2.246.10.2048198.22.2024"


def setting(keyword: str, value: object) -> Mutation:
    return lambda ds, put: put(ds, keyword, value)


def deleting(*keywords: str) -> Mutation:
    def mutate(ds: Dataset, put: Put) -> None:
        for keyword in keywords:
            del ds[keyword]

    return mutate


def issuer(oid: str, local: str | None = None) -> Mutation:
    def mutate(ds: Dataset, put: Put) -> None:
        ds.IssuerOfPatientID = oid if local is None else local
        ds.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID = oid

    return mutate


def temporary_id(code: str, namespace: str = TEMPORARY_NAMESPACE) -> Mutation:
    def mutate(ds: Dataset, put: Put) -> None:
        issuer(namespace)(ds, put)
        ds.PatientID = code

    return mutate


def nested(keyword: str, value: str) -> Mutation:
    def mutate(ds: Dataset, put: Put) -> None:
        item = Dataset()
        put(item, keyword, value)
        ds.ReferencedImageSequence = [item]

    return mutate


def study_code(value: str) -> Mutation:
    return lambda ds, put: setattr(ds.RequestedProcedureCodeSequence[0], "CodeValue", value)


def no_issuer(ds: Dataset, put: Put) -> None:
    del ds.IssuerOfPatientID, ds.IssuerOfPatientIDQualifiersSequence


def unchanged(ds: Dataset, put: Put) -> None:
    """The conforming header as it is, for rules that depend on the context."""


def in_test_environment(context: RuleContext) -> RuleContext:
    return dataclasses.replace(context, parameters=dataclasses.replace(context.parameters, test_environment=True))


def from_source(source: SourceContext) -> Recontext:
    return lambda context: dataclasses.replace(context, source=source)


FIRING: list[tuple[str, Mutation, Recontext]] = [
    ("DICOM-UID-SYNTAX", setting("StudyInstanceUID", "1.2.03.4"), None),
    ("DICOM-UID-SYNTAX", setting("SOPInstanceUID", "1.2..3"), None),
    ("DICOM-UID-SYNTAX", setting("FrameOfReferenceUID", "1.2.abc"), None),
    ("DICOM-UID-SYNTAX", setting("SeriesInstanceUID", "1." + "2" * 63), None),
    ("DICOM-UID-SYNTAX", setting("SeriesInstanceUID", "4.5.6"), None),
    ("DICOM-TYPE1-MISSING", deleting("Modality"), None),
    ("DICOM-TYPE1-MISSING", setting("StudyInstanceUID", ""), None),
    ("DICOM-TYPE2-MISSING", deleting("ReferringPhysicianName"), None),
    ("DICOM-TYPE2-MISSING", deleting("InstanceNumber"), None),
    ("DICOM-CHARSET-UNKNOWN", setting("SpecificCharacterSet", "ISO-8859-1"), None),
    ("DICOM-CHARSET-UNKNOWN", setting("SpecificCharacterSet", "ISO_IR 6"), None),
    ("DICOM-CHARSET-UNKNOWN", setting("SpecificCharacterSet", "ISO 2022 IR 87"), None),
    ("DICOM-CHARSET-UNKNOWN", setting("SpecificCharacterSet", ["ISO_IR 100", "ISO 2022 IR 87"]), None),
    ("DICOM-CHARSET-UNKNOWN", setting("SpecificCharacterSet", ["ISO 2022 IR 6", "ISO_IR 192"]), None),
    ("DICOM-SOP-CLASS-UNKNOWN", setting("SOPClassUID", "1.2.3.4"), None),
    ("DICOM-SOP-CLASS-UNKNOWN", setting("SOPClassUID", "1.2.840.10008.5.1.4.38.1"), None),
    ("DICOM-VR-DA", setting("PatientBirthDate", "1952-10-13"), None),
    ("DICOM-VR-DA", setting("PatientBirthDate", "19520230"), None),
    ("DICOM-VR-DA", nested("ContentDate", "2024011"), None),
    ("DICOM-VR-TM", setting("StudyTime", "10:15:00"), None),
    ("DICOM-VR-TM", setting("StudyTime", "2400"), None),
    ("DICOM-VR-DT", setting("AcquisitionDateTime", "20241301"), None),
    ("DICOM-VR-DT", setting("AcquisitionDateTime", "20240115101512+1500"), None),
    ("DICOM-VR-PN", setting("ReferringPhysicianName", "A^B^C^D^E^F"), None),
    ("DICOM-VR-PN", setting("ReferringPhysicianName", "X" * 65), None),
    ("DICOM-VR-CS", setting("Modality", "ct"), None),
    ("DICOM-VR-CS", setting("ImageType", ["ORIGINAL", "PRIMARY", "A" * 17]), None),
    ("DICOM-VR-AS", setting("PatientAge", "71Y"), None),
    ("DICOM-VR-UI", nested("ReferencedSOPInstanceUID", "1.02.3"), None),
    ("FI-PATIENT-ID-MISSING", setting("PatientID", ""), None),
    ("FI-ISSUER-MISSING", no_issuer, None),
    ("FI-ISSUER-UNKNOWN", issuer("1.2.246.10.2048198.10.5"), None),
    ("FI-ISSUER-CONFLICT", issuer(TEMPORARY_NAMESPACE, local="1.2.246.21"), None),
    ("FI-HETU-FORMAT", setting("PatientID", "12345"), None),
    ("FI-HETU-DATE", setting("PatientID", "290201A9032"), None),
    ("FI-HETU-INDIVIDUAL-NUMBER", setting("PatientID", "010190-001P"), None),
    ("FI-HETU-CHECKSUM", setting("PatientID", "131052-308U"), None),
    ("FI-HETU-TEST-ID", setting("PatientID", "010594Y9032"), None),
    ("FI-TEMP-ID-RANGE", temporary_id("131052-308T"), None),
    ("FI-TEMP-ID-ORG", temporary_id("010594Y9032", "1.2.246.10.1234567.22.2024"), None),
    ("FI-ACCESSION-NUMBER-MISSING", deleting("AccessionNumber"), None),
    ("FI-STUDY-DESCRIPTION-MISSING", setting("StudyDescription", ""), None),
    ("FI-STUDY-CODE-MISSING", deleting("RequestedProcedureCodeSequence", "ProcedureCodeSequence"), None),
    ("FI-STUDY-CODE-UNKNOWN", study_code("XX1AA"), None),
    ("FI-STUDY-CODE-UNKNOWN", study_code("GD1A"), None),
    ("FI-STUDY-DATE-TIME", setting("StudyDate", ""), None),
    ("FI-STUDY-DATE-TIME", setting("StudyTime", "2500"), None),
    ("FI-SOURCE-UNKNOWN", unchanged, from_source(SourceContext("CT01"))),
    ("FI-SOURCE-UNKNOWN", unchanged, from_source(SourceContext("CT01", "Turku", "1.2.3"))),
]

SILENT: list[tuple[str, Mutation, Recontext]] = [
    ("DICOM-TYPE2-MISSING", deleting("InstanceNumber", "Rows"), None),
    ("DICOM-CHARSET-UNKNOWN", deleting("SpecificCharacterSet"), None),
    ("DICOM-CHARSET-UNKNOWN", setting("SpecificCharacterSet", ""), None),
    ("DICOM-CHARSET-UNKNOWN", setting("SpecificCharacterSet", "ISO_IR 203"), None),
    ("DICOM-CHARSET-UNKNOWN", setting("SpecificCharacterSet", "GB18030"), None),
    ("DICOM-CHARSET-UNKNOWN", setting("SpecificCharacterSet", ["", "ISO 2022 IR 87"]), None),
    ("DICOM-CHARSET-UNKNOWN", setting("SpecificCharacterSet", ["ISO 2022 IR 6", "ISO 2022 IR 100"]), None),
    ("DICOM-UID-SYNTAX", deleting("FrameOfReferenceUID"), None),
    ("DICOM-VR-UI", setting("StudyInstanceUID", "1.2.03.4"), None),
    ("DICOM-VR-TM", setting("StudyTime", "10"), None),
    ("DICOM-VR-DT", setting("AcquisitionDateTime", "2024"), None),
    ("DICOM-VR-PN", setting("ReferringPhysicianName", "Lääkäri^Liisa^^Dr^=山田^太郎=やまだ^たろう"), None),
    ("FI-ISSUER-CONFLICT", issuer("1.2.246.21", local="VRK"), None),
    ("FI-HETU-FORMAT", issuer("1.2.246.10.2048198.10.5"), None),
    ("FI-HETU-TEST-ID", setting("PatientID", "010594Y9032"), in_test_environment),
    ("FI-HETU-TEST-ID", temporary_id("010594Y9032"), None),
    ("FI-TEMP-ID-ORG", temporary_id("010594Y9032", "1.2.246.10.2048198.10.3.22.2023"), None),
    ("FI-STUDY-CODE-MISSING", deleting("RequestedProcedureCodeSequence"), None),
    ("FI-STUDY-CODE-UNKNOWN", deleting("RequestedProcedureCodeSequence"), None),
    ("FI-ISSUER-MISSING", lambda ds, put: delattr(ds, "IssuerOfPatientID"), None),
]


def _run(
    code: str, header: Dataset, put: Put, mutate: Mutation, recontext: Recontext, context: RuleContext
) -> list[Finding]:
    mutate(header, put)
    return RULES[code].findings(header, recontext(context) if recontext else context)


@pytest.mark.parametrize("code", sorted(RULES))
def test_silent_on_conforming_header(code: str, header: Dataset, context: RuleContext) -> None:
    assert RULES[code].findings(header, context) == []


@pytest.mark.parametrize(("code", "mutate", "recontext"), FIRING, ids=[case[0] for case in FIRING])
def test_fires(
    code: str, mutate: Mutation, recontext: Recontext, header: Dataset, put: Put, context: RuleContext
) -> None:
    findings = _run(code, header, put, mutate, recontext, context)
    assert findings and {f.code for f in findings} == {code}
    assert all(f.severity is RULES[code].severity for f in findings)
    assert all(f.keyword in RULES[code].attributes for f in findings) or not RULES[code].attributes
    patient = {str(header.PatientID), "Meikäläinen", "19521013"} - {""}
    assert not [f.message for f in findings if any(value in f.message for value in patient)]


@pytest.mark.parametrize(("code", "mutate", "recontext"), SILENT, ids=[case[0] for case in SILENT])
def test_silent_on_edge_cases(
    code: str, mutate: Mutation, recontext: Recontext, header: Dataset, put: Put, context: RuleContext
) -> None:
    assert _run(code, header, put, mutate, recontext, context) == []


def test_every_rule_has_a_firing_case() -> None:
    assert {case[0] for case in FIRING} == set(RULES)


def test_findings_name_the_attribute_and_where_it_is(header: Dataset, put: Put, context: RuleContext) -> None:
    nested("ReferencedSOPInstanceUID", "1.02.3")(header, put)
    [finding] = RULES["DICOM-VR-UI"].findings(header, context)
    assert (finding.keyword, finding.tag) == ("ReferencedSOPInstanceUID", 0x00081155)
    assert finding.message.startswith("ReferencedImageSequence[0] > ReferencedSOPInstanceUID")
    assert finding.to_dict()["tag"] == "00081155"


def test_severity_override_applies(header: Dataset, put: Put, context: RuleContext) -> None:
    put(header, "Modality", "ct")
    [finding] = RULES["DICOM-VR-CS"].findings(header, context, Severity.ERROR)
    assert finding.severity is Severity.ERROR


def test_multi_valued_findings_say_which_value(header: Dataset, put: Put, context: RuleContext) -> None:
    put(header, "ImageType", ["ORIGINAL", "primary"])
    [finding] = RULES["DICOM-VR-CS"].findings(header, context)
    assert "ImageType value 2 " in finding.message


def test_private_elements_are_not_checked(header: Dataset, context: RuleContext) -> None:
    header.add(DataElement(0x00290010, "LO", "ACME 1.0"))
    header.add(DataElement(0x00291001, "DA", "not a date", validation_mode=config.IGNORE))
    assert RULES["DICOM-VR-DA"].findings(header, context) == []


EXPLICIT_LITTLE = str(ExplicitVRLittleEndian)
ENCODINGS = {"implicit": IMPLICIT_LITTLE, "explicit": EXPLICIT_LITTLE}


def _as_received(ds: Dataset, transfer_syntax: str) -> Dataset:
    """The header as the store stage has it: read from the bytes a peer sent, its values not yet converted."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bad values planted are what the rules are to find
        data = encode(ds, transfer_syntax)
    read = read_prefix(data, transfer_syntax, PIXEL_DATA, complete=True)
    assert read is not None
    return read[0]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(("code", "mutate", "recontext"), FIRING + SILENT,
                         ids=[case[0] for case in FIRING + SILENT])
def test_headers_as_received_get_the_same_findings(
    code: str, mutate: Mutation, recontext: Recontext, encoding: str, header: Dataset, put: Put,
    context: RuleContext,
) -> None:
    expected = _run(code, header, put, mutate, recontext, context)
    received = _as_received(header, ENCODINGS[encoding])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as in the store stage: pydicom's notes may quote values
        assert RULES[code].findings(received, recontext(context) if recontext else context) == expected


@pytest.mark.parametrize(("tag", "vr", "value"), [
    (0x00189087, b"FD", b"123456"),  # Diffusion b-value, 6 bytes of an 8-byte value
    (0x00291010, b"US", b"\x01\x02\x03"),  # a private one: pydicom cannot read it either
    (0x00181000, b"Q!", b"ABCD"),  # a VR that does not exist, as after a length that overran
], ids=["binary-wrong-length", "private-binary-wrong-length", "unknown-vr"])
def test_values_pydicom_cannot_convert_fail_the_vr_rules(tag: int, vr: bytes, value: bytes,
                                                          header: Dataset, context: RuleContext) -> None:
    """The store stage quarantines a header whose values do not convert; the VR rules' walk is where it learns so,
    without converting every element."""
    before, after = Dataset(), Dataset()
    for element in header:
        (before if element.tag < tag else after).add(element)
    unpadded = explicit_element(tag, vr, value, len(value))  # an odd length is part of what is wrong
    data = encode(before, EXPLICIT_LITTLE) + unpadded + encode(after, EXPLICIT_LITTLE)
    read = read_prefix(data, EXPLICIT_LITTLE, PIXEL_DATA, complete=True)
    assert read is not None
    with pytest.raises((BytesLengthException, NotImplementedError)) as raised:
        RULES["DICOM-VR-DA"].findings(read[0], context)
    assert value.decode("latin-1") not in str(raised.value)
