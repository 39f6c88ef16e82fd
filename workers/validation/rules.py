"""The rules of the ``dicom-basic`` profile (PS3.3 / PS3.5 conformance of the header) and the rule registry.

Every rule is a pure function of the header and the context; its code is stable because profiles, dashboards
and integration engineers refer to it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from struct import calcsize
from typing import Any

from pydicom._dicom_dict import DicomDictionary
from pydicom.charset import default_encoding
from pydicom.datadict import private_dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException
from pydicom.hooks import hooks
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pydicom.values import converters
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from workers.validation import kanta, vr
from workers.validation.header import text
from workers.validation.model import Rule, RuleContext, Severity, Violation, Walked, rule

IDENTIFYING_UIDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "FrameOfReferenceUID",
)

TYPE_1 = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality")
"""Type 1 in every IOD: SOP Common (C.12.1), General Study (C.7.2.1) and every series module's Modality."""

TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "SeriesNumber",
)
"""Type 2 in Patient (C.7.1.1) and General Study (C.7.2.1); Series Number is type 2 or 1 in every series module."""

TYPE_2_IMAGE = ("InstanceNumber",)
"""Type 2 in General Image (C.7.6.1), type 1 in Multi-frame Functional Groups; only type 3 in SOP Common."""

ISO_2022_SINGLE_BYTE = frozenset(
    f"ISO 2022 IR {n}" for n in (6, 100, 101, 109, 110, 144, 127, 126, 138, 148, 203, 13, 166)
)
"""PS3.3 Table C.12-3: single-byte character sets with code extensions."""
ISO_2022_MULTI_BYTE = frozenset(f"ISO 2022 IR {n}" for n in (87, 159, 149, 58))
"""PS3.3 Table C.12-4: multi-byte character sets with code extensions (value 2 onwards only)."""
WITHOUT_EXTENSIONS = frozenset(
    [f"ISO_IR {n}" for n in (100, 101, 109, 110, 144, 127, 126, 138, 148, 203, 13, 166)]
    + ["ISO_IR 192", "GB18030", "GBK"]
)
"""PS3.3 Tables C.12-2 and C.12-5: character sets without code extensions (a single value only)."""


@rule("DICOM-UID-SYNTAX", Severity.ERROR, *IDENTIFYING_UIDS)
def uid_syntax(ds: Dataset, context: RuleContext) -> Iterator[Violation]:
    """The UIDs that identify and classify the instance follow the UID rules of PS3.5 9.1."""
    for keyword in IDENTIFYING_UIDS:
        value = text(ds, keyword)
        problem = vr.ui(value) if value else None
        if problem:
            yield Violation(keyword, f"{keyword} {problem}")


@rule("DICOM-TYPE1-MISSING", Severity.ERROR, *TYPE_1)
def type_1(ds: Dataset, context: RuleContext) -> Iterator[Violation]:
    """Type 1 attributes shall be present with a value."""
    for keyword in TYPE_1:
        if not text(ds, keyword):
            state = "empty" if keyword in ds else "missing"
            yield Violation(keyword, f"{keyword} is {state}; it is type 1 and needs a value")


@rule("DICOM-TYPE2-MISSING", Severity.WARNING, *TYPE_2, *TYPE_2_IMAGE)
def type_2(ds: Dataset, context: RuleContext) -> Iterator[Violation]:
    """Type 2 attributes shall be present, if need be empty."""
    required = TYPE_2 + TYPE_2_IMAGE if "Rows" in ds else TYPE_2
    for keyword in required:
        if keyword not in ds:
            yield Violation(keyword, f"{keyword} is missing; it is type 2 and must be present (it may be empty)")


@rule("DICOM-CHARSET-UNKNOWN", Severity.ERROR, "SpecificCharacterSet")
def charset(ds: Dataset, context: RuleContext) -> Iterator[Violation]:
    """Specific Character Set uses the Defined Terms of PS3.3 C.12.1.1.2, so names decode as sent."""
    value = ds.get("SpecificCharacterSet")
    if value is None:
        return
    terms = [str(term).strip() for term in (value if isinstance(value, MultiValue) else [value])]
    if len(terms) == 1:
        valid = terms[0] in WITHOUT_EXTENSIONS | ISO_2022_SINGLE_BYTE or terms[0] == ""
    else:
        valid = terms[0] in ISO_2022_SINGLE_BYTE | {""} and all(
            term in ISO_2022_SINGLE_BYTE | ISO_2022_MULTI_BYTE for term in terms[1:]
        )
    if not valid:
        yield Violation(
            "SpecificCharacterSet",
            "SpecificCharacterSet is not a Defined Term combination of PS3.3 C.12.1.1.2 "
            "(e.g. ISO_IR 100 or ISO_IR 192; leave it empty for the default repertoire)",
        )


@rule("DICOM-SOP-CLASS-UNKNOWN", Severity.ERROR, "SOPClassUID")
def sop_class(ds: Dataset, context: RuleContext) -> Iterator[Violation]:
    """The SOP Class is a standard storage SOP Class, which the archive can store and index."""
    uid = text(ds, "SOPClassUID")
    if uid and uid_to_service_class(uid) is not StorageServiceClass:
        name = UID(uid).name
        what = f"the {name}" if name != uid else "not a standard SOP Class"
        yield Violation("SOPClassUID", f"SOPClassUID is {what}, not a known storage SOP Class")


CHECKED_VRS = frozenset({"DA", "TM", "DT", "PN", "CS", "AS", "UI"})
_DEFAULT_REPERTOIRE = CHECKED_VRS - {"PN"}
"""Values never decoded with the Specific Character Set (PS3.5 6.1.2.3): their raw bytes are read as pydicom
would read them, without converting the element. Converting every element was most of validation's cost."""

_CONVERTIBLE = frozenset(representation.value for representation in converters)
_VALUE_SIZES = {representation.value: calcsize("=" + converter[1]) for representation, converter in converters.items()
                if isinstance(converter, tuple)}


def _elements(ds: Dataset, context: RuleContext) -> list[Walked]:
    """Every standard element the VR rules check, nested ones included; walked once per header."""
    walked = context.walked.get(id(ds))
    if walked is None:
        walked = context.walked[id(ds)] = list(_walk(ds, ""))
    return walked


def _walk(ds: Dataset, where: str) -> Iterator[Walked]:
    """Also the check that every element converts, which the store stage relies on to quarantine a header pydicom
    cannot read (a binary value of the wrong length, an unknown VR after a length that overran): sequences and
    names are converted, the rest checked where pydicom's conversion would fail."""
    elements = ds._dict
    creators: dict[int, str] = {}
    for tag in sorted(elements):
        element = elements[tag]
        private = tag.group & 1
        public = not private and tag in DicomDictionary
        if isinstance(element, RawDataElement):
            if element.VR is None and private:
                representation = _implicit_private_vr(ds, tag, creators)
            else:
                found: dict[str, Any] = {}
                hooks.raw_element_vr(element, found, ds=ds)
                representation = found["VR"]
            if representation in _DEFAULT_REPERTOIRE:
                value = (element.value or b"").decode(default_encoding).rstrip(" \x00")
                if public and value:
                    values = value.split("\\")
                    if representation == "UI":  # as pydicom's UID() does
                        values = [uid.strip() for uid in values]
                    yield Walked(representation, DicomDictionary[tag][4], tag, tuple(values), where)
                continue
            if representation not in ("SQ", "PN"):
                _check_converts(element, representation)
                continue
            element = ds[tag]
        if not public:
            continue
        keyword = DicomDictionary[tag][4]
        if element.VR == "SQ":
            for index, item in enumerate(element.value):
                yield from _walk(item, f"{where}{keyword}[{index}] > ")
        elif element.VR in CHECKED_VRS and not element.is_empty:
            values = list(element.value) if isinstance(element.value, MultiValue) else [element.value]
            yield Walked(element.VR, keyword, tag, tuple("" if v is None else str(v) for v in values), where)


def _implicit_private_vr(ds: Dataset, tag: int, creators: dict[int, str]) -> str:
    """The VR pydicom gives a private element read in implicit VR (``hooks._private_vr_for_tag``), with each
    creator looked up once per data set and the private dictionary's answers cached: looking them up for every
    element was half the walk of a header with many private elements."""
    element = tag & 0xFFFF
    if 0x10 <= element < 0x100:
        return "LO"  # a private creator
    if element & 0xFF00:
        creator_tag = tag >> 16 << 16 | element >> 8
        creator = creators.get(creator_tag)
        if creator is None:
            found = ds.get(creator_tag)
            creator = creators[creator_tag] = str(found.value) if found is not None and found.value else ""
        if creator:
            return _private_dictionary_vr(int(tag), creator)
    return "UN"


@functools.lru_cache(maxsize=4096)
def _private_dictionary_vr(tag: int, creator: str) -> str:
    try:
        return private_dictionary_VR(tag, creator)
    except KeyError:
        return "UN"


def _check_converts(element: RawDataElement, representation: str) -> None:
    """Raise where pydicom's conversion of the element would (the message names the tag, never the value)."""
    if representation not in _CONVERTIBLE:
        raise NotImplementedError(f"unknown value representation in tag {element.tag}")
    size = _VALUE_SIZES.get(representation)
    if size and element.value and len(element.value) % size:
        raise BytesLengthException(f"{representation} value of tag {element.tag} is not a whole number of values")


def _vr_rule(code: str, value_representation: str, severity: Severity, check: Callable[[str], str | None]) -> Rule:
    """A rule checking every value of every element with this VR, nested ones included."""

    def check_values(ds: Dataset, context: RuleContext) -> Iterator[Violation]:
        for element in _elements(ds, context):
            if value_representation != element.vr:
                continue
            if element.where == "" and value_representation == "UI" and element.keyword in IDENTIFYING_UIDS:
                continue
            for index, value in enumerate(element.values):
                problem = check(value) if value else None
                if problem:
                    position = f" value {index + 1}" if len(element.values) > 1 else ""
                    yield Violation(element.keyword, f"{element.where}{element.keyword}{position} {problem}",
                                    element.tag)

    return rule(code, severity)(check_values)


def _pn(value: str) -> str | None:
    return vr.pn(tuple(value.split("=")))


VR_RULES = (
    _vr_rule("DICOM-VR-DA", "DA", Severity.WARNING, vr.da),
    _vr_rule("DICOM-VR-TM", "TM", Severity.WARNING, vr.tm),
    _vr_rule("DICOM-VR-DT", "DT", Severity.WARNING, vr.dt),
    _vr_rule("DICOM-VR-PN", "PN", Severity.WARNING, _pn),
    _vr_rule("DICOM-VR-CS", "CS", Severity.WARNING, vr.cs),
    _vr_rule("DICOM-VR-AS", "AS", Severity.WARNING, vr.as_),
    _vr_rule("DICOM-VR-UI", "UI", Severity.ERROR, vr.ui),
)

DICOM_RULES = (uid_syntax, type_1, type_2, charset, sop_class, *VR_RULES)

RULES: dict[str, Rule] = {r.code: r for r in (*DICOM_RULES, *kanta.KANTA_RULES)}
"""Every rule by code; profiles choose among these."""
