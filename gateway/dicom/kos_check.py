"""Checking a Key Object Selection Document against its IOD (PS3.3 A.35.4) and, optionally, as an XDS-I.b manifest.

Presence is table-driven: each module of the IOD (Patient C.7.1.1, General Study C.7.2.1, Key Object Document
Series C.17.6.1, General Equipment C.7.5.1, Key Object Document C.17.6.2, SR Document Content C.17.3, SOP Common
C.12.1) lists its type 1 and type 2 attributes, and ``ITEMS`` those of the sequences' items wherever they occur.
The KOS constraints follow: Modality, SOP Class, the root CONTAINER with a CID 7010 title, TID 2010 content,
and the evidence (C.17.6.2.1: Current Requested Procedure Evidence Sequence lists exactly the instances the
content tree references, with the same SOP Class), UID syntax (PS3.5 9.1) and storage SOP Classes of the
references. ``manifest=True`` adds what IHE RAD TF-3 4.68.4.1.2.3 asks of an XDS-I manifest: the title
(113030, DCM, "Manifest"), evidence in the manifest's own study, and a Retrieve Location UID on every series.
Messages name attributes and their paths, never values: a KOS carries the patient's name and ID.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from gateway.core import uid

KosSeverity = Literal["error", "warning"]

KEY_OBJECT_SELECTION_DOCUMENT_STORAGE = "1.2.840.10008.5.1.4.1.1.88.59"
MANIFEST_TITLE = ("113030", "DCM", "Manifest")
"""CID 7010 document title that makes a KOS an XDS-I manifest."""

CODES: dict[str, tuple[KosSeverity, str]] = {
    "KOS-TYPE1-MISSING": ("error", "a type 1 attribute is missing or empty (a type 1 sequence has no item)"),
    "KOS-TYPE2-MISSING": ("error", "a type 2 attribute is missing (it may be empty, not absent)"),
    "KOS-SOP-CLASS": ("error", "SOP Class UID is not Key Object Selection Document Storage"),
    "KOS-MODALITY": ("error", "Modality is not KO"),
    "KOS-VALUE-TYPE": ("error", "the root content item is not a CONTAINER"),
    "KOS-TITLE": ("error", "the document title is not one code of CID 7010"),
    "KOS-MANIFEST-TITLE": ("error", 'XDS-I manifest: the document title is not (113030, DCM, "Manifest")'),
    "KOS-TEMPLATE": ("error", "Content Template Sequence is present but is not TID 2010 (DCMR)"),
    "KOS-CONTENT-ITEM": ("error", "a content item is not one TID 2010 allows (relationship, value type, reference)"),
    "KOS-CONTENT-EMPTY": ("error", "the content tree references no instance"),
    "KOS-EVIDENCE-MISSING": ("error", "an instance the content references is not in the evidence"),
    "KOS-EVIDENCE-UNREFERENCED": ("error", "an instance in the evidence is not referenced by the content"),
    "KOS-EVIDENCE-SOP-CLASS": ("error", "content and evidence give one instance different SOP Classes"),
    "KOS-EVIDENCE-STUDY": ("warning", "XDS-I manifest: the evidence lists a study other than the manifest's own"),
    "KOS-XDS-RETRIEVE-LOCATION": ("error", "XDS-I manifest: an evidence series has no Retrieve Location UID"),
    "KOS-UID-SYNTAX": ("error", "a UID does not follow PS3.5 9.1"),
    "KOS-REFERENCED-SOP-CLASS": ("error", "a referenced instance's SOP Class is not a storage SOP Class"),
    "KOS-REFERENCED-SOP-CLASS-UNKNOWN": ("warning", "a referenced instance's SOP Class is not a standard one"),
}
"""Every finding code with its severity and what it means."""

Attributes = tuple[tuple[str, Literal["1", "2"]], ...]

MODULES: dict[str, Attributes] = {
    "Patient (C.7.1.1)": (("PatientName", "2"), ("PatientID", "2"), ("PatientBirthDate", "2"), ("PatientSex", "2")),
    "General Study (C.7.2.1)": (("StudyInstanceUID", "1"), ("StudyDate", "2"), ("StudyTime", "2"),
                                ("ReferringPhysicianName", "2"), ("StudyID", "2"), ("AccessionNumber", "2")),
    "Key Object Document Series (C.17.6.1)": (("Modality", "1"), ("SeriesInstanceUID", "1"), ("SeriesNumber", "1"),
                                              ("ReferencedPerformedProcedureStepSequence", "2")),
    "General Equipment (C.7.5.1)": (("Manufacturer", "2"),),
    "Key Object Document (C.17.6.2)": (("InstanceNumber", "1"), ("ContentDate", "1"), ("ContentTime", "1"),
                                       ("CurrentRequestedProcedureEvidenceSequence", "1")),
    "SR Document Content (C.17.3)": (("ValueType", "1"), ("ConceptNameCodeSequence", "1"),
                                     ("ContinuityOfContent", "1")),
    "SOP Common (C.12.1)": (("SOPClassUID", "1"), ("SOPInstanceUID", "1")),
}
"""The top-level attributes of each module of the KOS IOD by type (1: present with a value; 2: present). Continuity
of Content is 1C, required for a CONTAINER, which the root of a KOS always is."""

_SOP_REFERENCE: Attributes = (("ReferencedSOPClassUID", "1"), ("ReferencedSOPInstanceUID", "1"))
_INSTANCE_REFERENCE: Attributes = (("StudyInstanceUID", "1"), ("ReferencedSeriesSequence", "1"))

ITEMS: dict[str, Attributes] = {
    "CurrentRequestedProcedureEvidenceSequence": _INSTANCE_REFERENCE,
    "IdenticalDocumentsSequence": _INSTANCE_REFERENCE,
    "ReferencedSeriesSequence": (("SeriesInstanceUID", "1"), ("ReferencedSOPSequence", "1")),
    "ReferencedSOPSequence": _SOP_REFERENCE,
    "ReferencedPerformedProcedureStepSequence": _SOP_REFERENCE,
    "ReferencedStudySequence": _SOP_REFERENCE,
    "ReferencedRequestSequence": (("StudyInstanceUID", "1"), ("ReferencedStudySequence", "2"),
                                  ("AccessionNumber", "2"), ("PlacerOrderNumberImagingServiceRequest", "2"),
                                  ("FillerOrderNumberImagingServiceRequest", "2"), ("RequestedProcedureID", "2"),
                                  ("RequestedProcedureDescription", "2"), ("RequestedProcedureCodeSequence", "2")),
    "ContentTemplateSequence": (("MappingResource", "1"), ("TemplateIdentifier", "1")),
    "ContentSequence": (("RelationshipType", "1"), ("ValueType", "1")),
}
"""Attributes of the items of each sequence (Hierarchical SOP Instance Reference Macro C.17-3, SOP Instance
Reference Macro 10-11, Referenced Request Sequence of C.17.6.2, Content Item C.17.3), by the sequence's keyword."""

REFERENCE_VALUE_TYPES = frozenset({"IMAGE", "COMPOSITE", "WAVEFORM"})
KEY_OBJECT_DESCRIPTION = ("113012", "DCM")
"""TID 2010 row 4: the one TEXT content item a KOS may have."""
CONTEXT_RELATIONSHIPS = frozenset({"HAS OBS CONTEXT", "HAS CONCEPT MOD"})
"""TID 2010 rows 2 and 3: observer context (TID 1002) and language (TID 1204), which reference no instance."""
TID_2010 = ("DCMR", "2010")
EVIDENCE = "CurrentRequestedProcedureEvidenceSequence"


@dataclass(frozen=True, slots=True)
class KosFinding:
    code: str
    severity: KosSeverity
    path: str
    """Keyword path to the attribute, items numbered from 0: ``ContentSequence[2] > ReferencedSOPSequence[0]``."""
    message: str
    """What is wrong, in words that read after the path; never a value of the data set."""

    @property
    def keyword(self) -> str:
        """The attribute the path ends at."""
        return self.path.rsplit(" > ", 1)[-1].split("[", 1)[0]

    @property
    def tag(self) -> int:
        return tag_for_keyword(self.keyword) or 0

    def __str__(self) -> str:
        return f"{self.code} {self.path} {self.message}"


def _finding(code: str, path: str, message: str) -> KosFinding:
    return KosFinding(code, CODES[code][0], path, message)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip(" \0")


def _items(ds: Dataset, keyword: str) -> list[Dataset]:
    value = ds.get(keyword)
    return list(value) if value else []


def _empty(element: DataElement) -> bool:
    """No value: a sequence without items, or only empty (or space-padded) values."""
    value = element.value
    if element.VR == "SQ" or value is None:
        return not value
    values = list(value) if isinstance(value, MultiValue) else [value]
    return all(not str(v).strip(" \0") for v in values)


def uid_problem(value: str) -> str | None:
    """UID syntax of PS3.5 9.1 (``gateway.core.uid``), in words that read after the attribute's name."""
    if len(value) > uid.MAX_LENGTH:
        return "is longer than 64 characters"
    if not uid.is_identifier(value):
        return "is not digits separated by single dots"
    if any(len(component) > 1 and component.startswith("0") for component in value.split(".")):
        return "has a component with a leading zero"
    return None


@functools.cache
def document_titles() -> frozenset[tuple[str, str]]:
    """CID 7010 "Key Object Selection Document Title" (code value, scheme), as pydicom's copy of PS3.16 has it.
    Imported here: pydicom's concept dictionary costs every process that imports this module 20 MB otherwise."""
    from pydicom.sr.codedict import Collection

    collection = Collection("CID7010")
    return frozenset((code.value, code.scheme_designator) for code in (getattr(collection, name)
                                                                      for name in collection.dir()))


def _presence(ds: Dataset, attributes: Attributes, where: str) -> Iterator[KosFinding]:
    for keyword, type_ in attributes:
        if keyword not in ds:
            code = "KOS-TYPE1-MISSING" if type_ == "1" else "KOS-TYPE2-MISSING"
            yield _finding(code, where + keyword, f"is missing; it is type {type_}")
        elif type_ == "1" and _empty(ds[keyword]):
            yield _finding("KOS-TYPE1-MISSING", where + keyword, "is empty; it is type 1 and needs a value")


def _nested_presence(ds: Dataset, where: str) -> Iterator[KosFinding]:
    for element in ds:
        if element.VR != "SQ" or element.tag.is_private or not element.value:
            continue
        for index, item in enumerate(element.value):
            path = f"{where}{element.keyword}[{index}] > "
            yield from _presence(item, ITEMS.get(element.keyword, ()), path)
            yield from _nested_presence(item, path)


def _required(ds: Dataset) -> Iterator[KosFinding]:
    for attributes in MODULES.values():
        yield from _presence(ds, attributes, "")
    yield from _nested_presence(ds, "")


def _document(ds: Dataset, manifest: bool) -> Iterator[KosFinding]:
    """Modality, SOP Class, root content item, title and template."""
    if (sop_class := _text(ds, "SOPClassUID")) and sop_class != KEY_OBJECT_SELECTION_DOCUMENT_STORAGE:
        yield _finding("KOS-SOP-CLASS", "SOPClassUID", "is not Key Object Selection Document Storage "
                                                       f"({KEY_OBJECT_SELECTION_DOCUMENT_STORAGE})")
    if _text(ds, "Modality") and _text(ds, "Modality") != "KO":
        yield _finding("KOS-MODALITY", "Modality", "is not KO (Key Object Document Series, C.17.6.1)")
    if _text(ds, "ValueType") and _text(ds, "ValueType") != "CONTAINER":
        yield _finding("KOS-VALUE-TYPE", "ValueType", "is not CONTAINER; the root of a KOS is a container (TID 2010)")
    titles = _items(ds, "ConceptNameCodeSequence")
    if len(titles) > 1:
        yield _finding("KOS-TITLE", "ConceptNameCodeSequence", f"has {len(titles)} items; the title is one code")
    if titles:
        title = titles[0]
        code = (_text(title, "CodeValue"), _text(title, "CodingSchemeDesignator"))
        if code not in document_titles():
            yield _finding("KOS-TITLE", "ConceptNameCodeSequence[0]", "is not a document title of CID 7010")
        if manifest and (*code, _text(title, "CodeMeaning")) != MANIFEST_TITLE:
            yield _finding("KOS-MANIFEST-TITLE", "ConceptNameCodeSequence[0]",
                           'is not (113030, DCM, "Manifest"), the title of an XDS-I manifest')
    if "ContentTemplateSequence" in ds:
        templates = _items(ds, "ContentTemplateSequence")
        if len(templates) != 1 or (_text(templates[0], "MappingResource"),
                                   _text(templates[0], "TemplateIdentifier")) != TID_2010:
            yield _finding("KOS-TEMPLATE", "ContentTemplateSequence", "is not one item naming TID 2010 of DCMR")


def _references(ds: Dataset) -> tuple[list[tuple[str, str, str]], list[KosFinding]]:
    """The content tree's (SOP Class, SOP Instance, path) references and its findings on the content items."""
    references: list[tuple[str, str, str]] = []
    findings: list[KosFinding] = []
    descriptions = 0
    for index, item in enumerate(_items(ds, "ContentSequence")):
        where = f"ContentSequence[{index}]"
        relationship, value_type = _text(item, "RelationshipType"), _text(item, "ValueType")
        if relationship in CONTEXT_RELATIONSHIPS:
            continue
        if relationship and relationship != "CONTAINS":
            findings.append(_finding("KOS-CONTENT-ITEM", f"{where} > RelationshipType",
                                     "is not CONTAINS (or an observer context or language item, TID 2010)"))
        if value_type in REFERENCE_VALUE_TYPES:
            items = _items(item, "ReferencedSOPSequence")
            if len(items) != 1:
                findings.append(_finding("KOS-CONTENT-ITEM", f"{where} > ReferencedSOPSequence",
                                         f"has {len(items)} items; an {value_type} content item references one "
                                         "instance"))
            references += [(_text(sop, "ReferencedSOPClassUID"), _text(sop, "ReferencedSOPInstanceUID"),
                            f"{where} > ReferencedSOPSequence[{i}]") for i, sop in enumerate(items)]
        elif value_type == "TEXT":
            descriptions += 1
            names = _items(item, "ConceptNameCodeSequence")
            code = (_text(names[0], "CodeValue"), _text(names[0], "CodingSchemeDesignator")) if names else ("", "")
            if code != KEY_OBJECT_DESCRIPTION or descriptions > 1:
                findings.append(_finding("KOS-CONTENT-ITEM", f"{where} > ConceptNameCodeSequence",
                                         "is not the one Key Object Description (113012, DCM) a TEXT item may be"))
        elif value_type:
            findings.append(_finding("KOS-CONTENT-ITEM", f"{where} > ValueType",
                                     "is not IMAGE, COMPOSITE, WAVEFORM or TEXT (TID 2010)"))
    if not references:
        findings.append(_finding("KOS-CONTENT-EMPTY", "ContentSequence",
                                 "references no instance; TID 2010 needs an IMAGE, COMPOSITE or WAVEFORM item"))
    return references, findings


def _evidence(ds: Dataset) -> list[tuple[str, str, str]]:
    """(SOP Class, SOP Instance, path) of every instance in Current Requested Procedure Evidence Sequence."""
    return [
        (_text(sop, "ReferencedSOPClassUID"), _text(sop, "ReferencedSOPInstanceUID"),
         f"{EVIDENCE}[{s}] > ReferencedSeriesSequence[{r}] > ReferencedSOPSequence[{o}]")
        for s, study in enumerate(_items(ds, EVIDENCE))
        for r, series in enumerate(_items(study, "ReferencedSeriesSequence"))
        for o, sop in enumerate(_items(series, "ReferencedSOPSequence"))
    ]


def _consistency(references: list[tuple[str, str, str]], evidence: list[tuple[str, str, str]]) -> Iterator[KosFinding]:
    """C.17.6.2.1: the evidence lists every instance the content references, with its SOP Class, and no other."""
    listed = {instance: sop_class for sop_class, instance, _ in evidence if instance}
    referenced = {instance for _, instance, _ in references}
    for sop_class, instance, path in references:
        if not instance:
            continue
        if instance not in listed:
            yield _finding("KOS-EVIDENCE-MISSING", path, f"is not in {EVIDENCE} (C.17.6.2.1)")
        elif sop_class != listed[instance]:
            yield _finding("KOS-EVIDENCE-SOP-CLASS", f"{path} > ReferencedSOPClassUID",
                           f"differs from the SOP Class of the same instance in {EVIDENCE}")
    for _, instance, path in evidence:
        if instance and instance not in referenced:
            yield _finding("KOS-EVIDENCE-UNREFERENCED", path, "is not referenced by any content item")


def _xds_manifest(ds: Dataset) -> Iterator[KosFinding]:
    """IHE RAD TF-3 4.68.4.1.2.3: one study's manifest, retrievable by RAD-69 from the Retrieve Location UID."""
    own = _text(ds, "StudyInstanceUID")
    for s, study in enumerate(_items(ds, EVIDENCE)):
        if own and _text(study, "StudyInstanceUID") and _text(study, "StudyInstanceUID") != own:
            yield _finding("KOS-EVIDENCE-STUDY", f"{EVIDENCE}[{s}] > StudyInstanceUID",
                           "is not the manifest's own Study Instance UID")
        for r, series in enumerate(_items(study, "ReferencedSeriesSequence")):
            if not _text(series, "RetrieveLocationUID"):
                yield _finding("KOS-XDS-RETRIEVE-LOCATION",
                               f"{EVIDENCE}[{s}] > ReferencedSeriesSequence[{r}] > RetrieveLocationUID",
                               "is missing or empty; RAD-69 retrieves from it")


def _uids(ds: Dataset, where: str = "") -> Iterator[KosFinding]:
    """Every UID value anywhere in the data set."""
    for element in ds:
        if element.tag.is_private or not element.keyword:
            continue
        if element.VR == "SQ":
            for index, item in enumerate(element.value or []):
                yield from _uids(item, f"{where}{element.keyword}[{index}] > ")
        elif element.VR == "UI" and not _empty(element):
            values = list(element.value) if isinstance(element.value, MultiValue) else [element.value]
            for value in (str(v).strip(" \0") for v in values):
                problem = uid_problem(value) if value else None
                if problem:
                    yield _finding("KOS-UID-SYNTAX", where + element.keyword, problem)


def _storage_classes(references: list[tuple[str, str, str]]) -> Iterator[KosFinding]:
    """Each referenced SOP Class once (where first seen): a KOS selects stored composite instances."""
    seen: set[str] = set()
    for sop_class, _, path in references:
        if not sop_class or sop_class in seen or uid_problem(sop_class):
            continue
        seen.add(sop_class)
        if UID(sop_class).name == sop_class:
            yield _finding("KOS-REFERENCED-SOP-CLASS-UNKNOWN", f"{path} > ReferencedSOPClassUID",
                           "is not a standard SOP Class (a private one cannot be checked)")
        elif uid_to_service_class(sop_class) is not StorageServiceClass:
            yield _finding("KOS-REFERENCED-SOP-CLASS", f"{path} > ReferencedSOPClassUID",
                           "is not a storage SOP Class")


def check_kos(ds: Dataset, manifest: bool = True) -> list[KosFinding]:
    """Findings on ``ds`` as a Key Object Selection Document (PS3.3 A.35.4); with ``manifest`` also as an XDS-I.b
    manifest. No finding at error severity means the IOD's rules checked here hold."""
    references, content_findings = _references(ds)
    evidence = _evidence(ds)
    findings = [*_required(ds), *_document(ds, manifest), *content_findings, *_consistency(references, evidence)]
    if manifest:
        findings += _xds_manifest(ds)
    findings += _uids(ds)
    findings += _storage_classes(references + evidence)
    return findings
