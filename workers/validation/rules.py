"""The rules of the ``dicom-basic`` profile (PS3.3 / PS3.5 conformance of the header) and the rule registry.

Every rule is a pure function of the header and the context; its code is stable because profiles, dashboards
and integration engineers refer to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from workers.validation import kanta, vr
from workers.validation.header import text
from workers.validation.model import Rule, RuleContext, Severity, Violation, rule

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


def _elements(ds: Dataset, context: RuleContext) -> list[tuple[DataElement, str]]:
    """Every standard element, with the sequence path leading to it for messages; walked once per header."""
    walked = context.walked.get(id(ds))
    if walked is None:
        walked = context.walked[id(ds)] = list(_walk(ds, ""))
    return walked


def _walk(ds: Dataset, where: str) -> Iterator[tuple[DataElement, str]]:
    for element in ds:
        if element.tag.is_private or not element.keyword:
            continue
        if element.VR == "SQ":
            for index, item in enumerate(element.value):
                yield from _walk(item, f"{where}{element.keyword}[{index}] > ")
        else:
            yield element, where


def _vr_rule(code: str, value_representation: str, severity: Severity, check: Callable[[str], str | None]) -> Rule:
    """A rule checking every value of every element with this VR, nested ones included."""

    def check_values(ds: Dataset, context: RuleContext) -> Iterator[Violation]:
        for element, where in _elements(ds, context):
            if value_representation != element.VR or element.is_empty:
                continue
            if where == "" and value_representation == "UI" and element.keyword in IDENTIFYING_UIDS:
                continue
            values = list(element.value) if isinstance(element.value, MultiValue) else [element.value]
            for index, value in enumerate(values):
                problem = check(str(value)) if value is not None and str(value) else None
                if problem:
                    position = f" value {index + 1}" if len(values) > 1 else ""
                    yield Violation(element.keyword, f"{where}{element.keyword}{position} {problem}", element.tag)

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
