"""XDS.b / XDS-I.b metadata rules (ITI TF-3 §4.2/§4.3, RAD TF-3 §4.68, ITI TF-2 §3.18) beyond what the XSD checks.

Driven by ``metadata-rules.json`` (UUIDs, optionality, cardinalities, value formats, stored query ids), so the
tables live in one place with their citations. Schema-valid is not IHE-valid: the official IHE examples use short
association types and short status values that every schema accepts and this module rejects. Knows ebRIM, not
HTTP or SOAP.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from lxml import etree

RULES_FILE = Path(__file__).resolve().parent / "metadata-rules.json"

RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
QUERY = "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"
RS = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
XDS = "urn:ihe:iti:xds-b:2007"
_R = "{%s}" % RIM

STATUS_APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
STATUS_DEPRECATED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"
STATUS_SUBMITTED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Submitted"
HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
RPLC = "urn:ihe:iti:2007:AssociationType:RPLC"
UPDATE_AVAILABILITY_STATUS = "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"

METADATA_ERROR = "XDSRegistryMetadataError"
UPDATE_ERROR = "XDSMetadataUpdateError"
"""ITI TF-3 Table 4.2.4.1-2: the general Metadata Update (ITI-57) error, for faults no more specific code names."""
_DOCUMENT_RELATIONSHIPS = ("RPLC", "APND", "XFRM", "XFRM_RPLC", "signs")
_AUTHOR_SLOTS = frozenset({"authorPerson", "authorInstitution", "authorRole", "authorSpecialty",
                           "authorTelecommunication"})
_DTM_SLOTS = frozenset({"creationTime", "serviceStartTime", "serviceStopTime", "submissionTime"})
_DTM = re.compile(r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2})?)?)?)?)?")
_DTM_FORMATS = {4: "%Y", 6: "%Y%m", 8: "%Y%m%d", 10: "%Y%m%d%H", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}
_LANGUAGE = re.compile(r"[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*")
_HASH = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")
_REFERENCE_TYPES = frozenset({
    "urn:ihe:iti:xds:2013:accession", "urn:ihe:iti:xds:2013:order", "urn:ihe:iti:xds:2013:referral",
    "urn:ihe:iti:xds:2013:uniqueId", "urn:ihe:iti:xds:2015:encounterId", "urn:ihe:iti:xds:2016:studyInstanceUID",
})
_TYPOGRAPHIC_QUOTES = "‘’‚‛“”„‟′″"


@dataclass(frozen=True)
class RuleError:
    """One RegistryError: ``code`` is the ITI TF-3 Table 4.2.4.1-2 errorCode, ``location`` the offending object."""

    code: str
    location: str
    message: str


@functools.cache
def rules() -> dict[str, Any]:
    table: dict[str, Any] = orjson.loads(RULES_FILE.read_bytes())
    return table


@functools.cache
def _patterns() -> dict[str, re.Pattern[str]]:
    formats = rules()["value_formats"]
    # each entry starts with its anchored regex (^...$) and goes on with prose
    return {name: re.compile(re.search(r"\^.*?\$(?=[\s,]|$)", formats[name]).group())  # type: ignore[union-attr]
            for name in ("OID", "CX_patientId", "UUID_ref")}


def is_oid(value: str) -> bool:
    return len(value) <= 64 and bool(_patterns()["OID"].fullmatch(value))


def is_cx(value: str) -> bool:
    """CX with only CX.1 and CX.4 (``ID^^^&OID&ISO``), as patientId requires (ITI TF-3 §4.2.3.1.7)."""
    return bool(_patterns()["CX_patientId"].fullmatch(value))


def is_uuid_ref(value: str) -> bool:
    """``urn:uuid:`` and a UUID: how an object registered earlier is referred to (its entryUUID)."""
    return bool(_patterns()["UUID_ref"].fullmatch(value))


def is_dtm(value: str) -> bool:
    """DTM in UTC without separators or zone: YYYY[MM[DD[hh[mm[ss]]]]] (ITI TF-3 Table 4.2.3.1.7-2)."""
    if not _DTM.fullmatch(value):
        return False
    try:
        datetime.strptime(value, _DTM_FORMATS[len(value)])
    except ValueError:
        return False
    return True


# --- reading ebRIM -------------------------------------------------------------------------------------------


def slot_values(obj: etree._Element, name: str) -> list[str] | None:
    """Values of the object's own Slot ``name``; None when there is no such slot."""
    for slot in obj.iterfind(_R + "Slot"):
        if slot.get("name") == name:
            return [(v.text or "").strip() for v in slot.iterfind(f"{_R}ValueList/{_R}Value")]
    return None


def external_identifier(obj: etree._Element, scheme: str) -> str | None:
    for ei in obj.iterfind(_R + "ExternalIdentifier"):
        if ei.get("identificationScheme") == scheme:
            return ei.get("value")
    return None


def classifications(obj: etree._Element, scheme: str) -> list[etree._Element]:
    return [c for c in obj.iterfind(_R + "Classification") if c.get("classificationScheme") == scheme]


def name_of(obj: etree._Element) -> str:
    node = obj.find(f"{_R}Name/{_R}LocalizedString")
    return "" if node is None else node.get("value", "")


def registry_object_list(request: etree._Element) -> etree._Element | None:
    """RegistryObjectList of a SubmitObjectsRequest, a ProvideAndRegisterDocumentSetRequest or a query response."""
    if request.tag == f"{{{XDS}}}ProvideAndRegisterDocumentSetRequest":
        sor = request.find(f"{{{LCM}}}SubmitObjectsRequest")
        if sor is None:
            return None
        request = sor
    return request.find(_R + "RegistryObjectList")


def document_entry_uuids() -> dict[str, str]:
    return {name: value["objectType"] for name, value in rules()["object_types"].items()
            if name.startswith("DocumentEntry")}


def scheme(section: str, attribute: str) -> str:
    """The classificationScheme or identificationScheme UUID of e.g. ``("document_entry", "classCode")``."""
    table = rules()[section]
    for item in [*table["classifications"], *table["external_identifiers"]]:
        if item["attribute"] == attribute:
            scheme_uuid: str = item.get("classificationScheme") or item["identificationScheme"]
            return scheme_uuid
    raise KeyError(f"{section}.{attribute}")


@dataclass
class Submission:
    """The objects of one submission, by kind (ITI TF-3 §4.1: one SubmissionSet, DocumentEntries, Folders)."""

    document_entries: list[etree._Element]
    submission_sets: list[etree._Element]
    folders: list[etree._Element]
    packages: list[etree._Element]
    associations: list[etree._Element]
    by_id: dict[str, etree._Element]

    @classmethod
    def read(cls, object_list: etree._Element) -> Submission:
        types = rules()["object_types"]
        ss_node, folder_node = types["SubmissionSet"]["classificationNode"], types["Folder"]["classificationNode"]
        nodes: dict[str, set[str]] = {}
        for c in object_list.iter(_R + "Classification"):
            if c.get("classificationNode"):
                nodes.setdefault(c.get("classifiedObject", ""), set()).add(c.get("classificationNode", ""))
        packages = list(object_list.iterfind(_R + "RegistryPackage"))
        return cls(
            document_entries=list(object_list.iterfind(_R + "ExtrinsicObject")),
            submission_sets=[p for p in packages if ss_node in nodes.get(p.get("id", ""), ())],
            folders=[p for p in packages if folder_node in nodes.get(p.get("id", ""), ())],
            packages=packages,
            associations=list(object_list.iterfind(_R + "Association")),
            by_id={o.get("id", ""): o for o in object_list},
        )

    def relationships(self) -> list[tuple[str, str, str]]:
        """(associationType, sourceObject, targetObject) of the document relationships (RPLC, APND, XFRM, ...)."""
        types = rules()["associations"]["types"]
        wanted = {types[name] for name in _DOCUMENT_RELATIONSHIPS}
        return [(a.get("associationType", ""), a.get("sourceObject", ""), a.get("targetObject", ""))
                for a in self.associations if a.get("associationType") in wanted]


# --- submissions (ITI-41, ITI-42, RAD-68) --------------------------------------------------------------------


class _Checker:
    def __init__(self, transaction: str, patient_id_domain: str | None) -> None:
        self.transaction = transaction
        self.patient_id_domain = patient_id_domain
        self.errors: list[RuleError] = []

    def error(self, location: str, message: str, code: str = METADATA_ERROR) -> None:
        self.errors.append(RuleError(code, location, message))

    def object_(self, obj: etree._Element, kind: str, section: str) -> None:
        """Slots, classifications and external identifiers of one object against its table in the rules."""
        table = rules()[section]
        oid = obj.get("id", "")
        where = f"{kind} {oid}"
        if oid.startswith("urn:uuid:") and not _patterns()["UUID_ref"].fullmatch(oid):
            self.error(where, f"id {oid!r} starts with urn:uuid: but is not a UUID")
        self.slots(obj, where, table.get("slots", []))
        for child in obj.iterfind(f"{_R}Classification[@classificationScheme]"):
            self.scheme_reference(child.get("classificationScheme", ""), where)
        for child in obj.iterfind(_R + "ExternalIdentifier"):
            self.scheme_reference(child.get("identificationScheme", ""), where)
        for item in table["classifications"]:
            found = classifications(obj, item["classificationScheme"])
            low, _, high = item["cardinality"].split()[0].partition("..")
            if len(found) < int(low) and item["optionality_XDS_DS"] == "R":
                self.error(where, f"{kind}.{item['attribute']} is required "
                                  f"(Classification with classificationScheme {item['classificationScheme']})")
            if high != "*" and len(found) > int(high):
                self.error(where, f"{kind}.{item['attribute']} may occur at most {high} time(s), found {len(found)}")
            for c in found:
                self.classification(c, oid, f"{where} {kind}.{item['attribute']}", item["attribute"] == "author")
        for item in table["external_identifiers"]:
            found_ei = [e for e in obj.iterfind(_R + "ExternalIdentifier")
                        if e.get("identificationScheme") == item["identificationScheme"]]
            label = f"{where} {item['Name']}"
            if not found_ei:
                if item["optionality_XDS_DS"] == "R":
                    self.error(where, f"{item['Name']} is required (ExternalIdentifier with identificationScheme "
                                      f"{item['identificationScheme']})")
                continue
            if len(found_ei) > 1:
                self.error(label, f"{item['Name']} occurs {len(found_ei)} times")
            ei = found_ei[0]
            if ei.get("registryObject") != oid:
                self.error(label, f"registryObject {ei.get('registryObject')!r} is not the owning object {oid!r}")
            if name_of(ei) != item["Name"]:
                self.error(label, f"Name/LocalizedString/@value must be {item['Name']!r}, found {name_of(ei)!r}")
            self.identifier(item["attribute"], ei.get("value", ""), label)

    def scheme_reference(self, value: str, where: str) -> None:
        if not _patterns()["UUID_ref"].fullmatch(value):
            self.error(where, f"scheme {value!r} is not a urn:uuid (a classification or identification scheme UUID)")

    def identifier(self, attribute: str, value: str, label: str) -> None:
        if attribute == "patientId":
            if not is_cx(value):
                self.error(label, f"patientId {value!r} is not CX ID^^^&OID&ISO")
            elif self.patient_id_domain and value.split("&")[1] != self.patient_id_domain:
                self.error(label, f"patientId is not in the affinity domain {self.patient_id_domain}",
                           "XDSUnknownPatientId")
        elif attribute == "uniqueId":
            oid, _, extension = value.partition("^")
            if not is_oid(oid) or len(extension) > 16 or (value.endswith("^")):
                self.error(label, f"uniqueId {value!r} is not an OID (max 64) or OID^extension (max 16)")
        elif attribute == "sourceId" and not is_oid(value):
            self.error(label, f"sourceId {value!r} is not an OID")

    def slots(self, obj: etree._Element, where: str, table: list[dict[str, Any]]) -> None:
        names = [s.get("name", "") for s in obj.iterfind(_R + "Slot")]
        for name in {n for n in names if names.count(n) > 1}:
            self.error(where, f"Slot {name!r} occurs more than once")
        for item in table:
            name, optionality = item["name"], str(item["optionality_XDS_DS"])
            values = slot_values(obj, name)
            required = optionality == "R" or (self.transaction == "ITI-42" and "R in ITI-42" in optionality)
            if values is None or not any(values):
                if required:
                    self.error(where, f"Slot {name!r} is required")
                continue
            if isinstance(item.get("max_values"), int) and len(values) > item["max_values"]:
                self.error(where, f"Slot {name!r} has {len(values)} values, at most {item['max_values']} allowed")
            for value in values:
                problem = _slot_value_problem(name, value)
                if problem:
                    self.error(where, f"Slot {name!r}: {problem}")

    def classification(self, c: etree._Element, owner: str, label: str, author: bool) -> None:
        if c.get("classifiedObject") != owner:
            self.error(label, f"classifiedObject {c.get('classifiedObject')!r} is not the owning object {owner!r}")
        if author:
            if c.get("nodeRepresentation") != "":
                self.error(label, "author Classification must have nodeRepresentation=\"\"")
            if not any(slot_values(c, name) for name in _AUTHOR_SLOTS):
                self.error(label, f"author needs at least one of {', '.join(sorted(_AUTHOR_SLOTS))}")
            return
        if not (c.get("nodeRepresentation") or "").strip():
            self.error(label, "code without nodeRepresentation")
        coding_scheme = slot_values(c, "codingScheme")
        if not coding_scheme or len(coding_scheme) != 1 or not coding_scheme[0]:
            self.error(label, "code needs Slot codingScheme with exactly one value")
        if not name_of(c):
            self.error(label, "code without display name (Name/LocalizedString/@value)")

    def document_entry(self, de: etree._Element, imaging: bool) -> None:
        where = f"DocumentEntry {de.get('id', '')}"
        object_types = document_entry_uuids()
        object_type = de.get("objectType")
        if object_type == object_types["DocumentEntry_on_demand"]:
            self.error(where, "an On-Demand DocumentEntry cannot be submitted with ITI-41/ITI-42/RAD-68")
        elif object_type != object_types["DocumentEntry_stable"]:
            self.error(where, f"objectType {object_type!r} is not the Stable DocumentEntry type "
                              f"{object_types['DocumentEntry_stable']}")
        if not de.get("mimeType"):
            self.error(where, "mimeType is required")
        if de.get("status"):
            self.error(where, "availabilityStatus is assigned by the Registry, not sent by the Source")
        self.object_(de, "XDSDocumentEntry", "document_entry")
        if imaging:
            self.imaging(de, where)

    def imaging(self, de: etree._Element, where: str) -> None:
        """XDS-I.b: the DocumentEntry of a KOS manifest (RAD TF-3 §4.68.4.1.2.3)."""
        additions = rules()["xds_i_b_additions"]
        if de.get("mimeType") != additions["mimeType"]:
            self.error(where, f"XDS-I.b mimeType must be {additions['mimeType']}, found {de.get('mimeType')!r}")
        format_code = additions["formatCode"]
        codes = classifications(de, scheme("document_entry", "formatCode"))
        if not any(c.get("nodeRepresentation") == format_code["code"]
                   and slot_values(c, "codingScheme") == [format_code["codingScheme"]] for c in codes):
            self.error(where, f"XDS-I.b formatCode must be {format_code['code']} with codingScheme "
                              f"{format_code['codingScheme']} ({format_code['display']})")
        unique_id = external_identifier(de, scheme("document_entry", "uniqueId")) or ""
        if not is_oid(unique_id):
            self.error(where, "XDS-I.b uniqueId must be the KOS SOP Instance UID (an OID, no extension)")

    def associations(self, sub: Submission) -> None:
        table = rules()["associations"]["types"]
        known = set(table.values())
        ss_ids = {p.get("id", "") for p in sub.submission_sets}
        members: set[str] = set()
        for a in sub.associations:
            where = f"Association {a.get('id', '')}"
            kind, source, target = (a.get("associationType", ""), a.get("sourceObject", ""),
                                    a.get("targetObject", ""))
            if kind not in known:
                full = table.get(kind)
                hint = f" (the full URN is {full})" if full else ""
                self.error(where, f"associationType {kind!r} is not an ebRIM 3.0 / ITI association type{hint}")
                continue
            if source == target:
                self.error(where, "an association may not point to itself")
            for end, ref in (("sourceObject", source), ("targetObject", target)):
                if ref not in sub.by_id and not _patterns()["UUID_ref"].fullmatch(ref):
                    self.error(where, f"{end} {ref!r} is neither in the submission nor a urn:uuid reference")
            if kind == HAS_MEMBER and source in ss_ids:
                members.add(target)
                if sub.by_id.get(target) is not None and sub.by_id[target].tag == _R + "ExtrinsicObject":
                    status = slot_values(a, "SubmissionSetStatus")
                    if status not in (["Original"], ["Reference"]):
                        self.error(where, "SubmissionSet HasMember DocumentEntry needs Slot SubmissionSetStatus "
                                          "'Original' or 'Reference'")
            elif kind in {table[n] for n in _DOCUMENT_RELATIONSHIPS}:
                if sub.by_id.get(source) is None or sub.by_id[source].tag != _R + "ExtrinsicObject":
                    self.error(where, "sourceObject of a document relationship must be a DocumentEntry of the "
                                      "submission")
                if target in sub.by_id:
                    self.error(where, "targetObject of a document relationship must be a registered "
                                      "DocumentEntry (urn:uuid), not an object of the same submission")
        for obj in [*sub.document_entries, *sub.folders]:
            if obj.get("id") not in members:
                self.error(f"{etree.QName(obj).localname} {obj.get('id', '')}",
                           "not the target of a HasMember association from the SubmissionSet")


def _slot_value_problem(name: str, value: str) -> str | None:
    if name in _DTM_SLOTS and not is_dtm(value):
        return f"{value!r} is not DTM YYYY[MM[DD[hh[mm[ss]]]]] (UTC, no separators)"
    if name == "sourcePatientId" and not _is_any_cx(value):
        return f"{value!r} is not CX ID^^^&OID&ISO"
    if name == "languageCode" and not _LANGUAGE.fullmatch(value):
        return f"{value!r} is not an RFC 5646 language tag"
    if name == "hash" and not _HASH.fullmatch(value):
        return "not a hex SHA-1 (40) or SHA-256 (64) digest"
    if name == "size" and not value.isdigit():
        return f"{value!r} is not an integer number of octets"
    if name == "repositoryUniqueId" and not is_oid(value):
        return f"{value!r} is not an OID"
    if name == "urn:ihe:iti:xds:2013:referenceIdList":
        return _reference_id_problem(value)
    return None


def _is_any_cx(value: str) -> bool:
    """A source patient id: CX.1 plus an assigning authority in CX.4 (local ids may use non-OID authorities)."""
    fields = value.split("^")
    return len(fields) >= 4 and bool(fields[0]) and not any(fields[1:3]) and bool(fields[3])


def _reference_id_problem(value: str) -> str | None:
    """CXi (ITI TF-3 Table 4.2.3.1.7-2): ID^^^assigning authority^type[^assigning facility]."""
    fields = value.split("^")
    if len(fields) < 5 or not fields[0] or any(fields[1:3]):
        return f"{value!r} is not CXi ID^^^&OID&ISO^type"
    if fields[4] not in _REFERENCE_TYPES:
        return f"{value!r}: unknown reference id type {fields[4]!r}"
    if fields[4] == "urn:ihe:iti:xds:2013:accession" and not re.fullmatch(r"&[0-2](\.(0|[1-9]\d*))+&ISO",
                                                                            fields[3]):
        return f"{value!r}: an accession number needs its issuer as CXi.4 &OID&ISO (RAD TF-3 4.68.4.1.2.3.2)"
    return None


def check_submission(
    request: etree._Element,
    *,
    transaction: str | None = None,
    patient_id_domain: str | None = None,
) -> list[RuleError]:
    """Metadata errors of a submission: an lcm:SubmitObjectsRequest (ITI-42) or xds:ProvideAndRegisterDocumentSetRequest
    (ITI-41 / RAD-68, which also needs every DocumentEntry's Document attached).

    ``transaction`` defaults to ITI-41 for a ProvideAndRegisterDocumentSetRequest and ITI-42 otherwise; "RAD-68"
    applies the XDS-I.b rules to every DocumentEntry (otherwise to those with mimeType application/dicom or the
    KOS formatCode). ``patient_id_domain``: the affinity domain's assigning authority OID, when it is known.
    """
    pnr = request.tag == f"{{{XDS}}}ProvideAndRegisterDocumentSetRequest"
    transaction = transaction or ("ITI-41" if pnr else "ITI-42")
    check = _Checker(transaction, patient_id_domain)
    object_list = registry_object_list(request)
    if object_list is None:
        check.error("SubmitObjectsRequest", "no RegistryObjectList")
        return check.errors
    sub = Submission.read(object_list)
    ids = [o.get("id", "") for o in object_list]
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        check.error(dup, f"object id {dup!r} is used more than once")
    if len(sub.submission_sets) != 1:
        check.error("SubmitObjectsRequest", f"a submission has exactly one SubmissionSet, found "
                                            f"{len(sub.submission_sets)}")
    for package in sub.packages:
        if package not in sub.submission_sets and package not in sub.folders:
            check.error(f"RegistryPackage {package.get('id', '')}", "RegistryPackage classified neither as "
                                                                     "SubmissionSet nor as Folder")
    for ss in sub.submission_sets:
        check.object_(ss, "XDSSubmissionSet", "submission_set")
    for folder in sub.folders:
        check.object_(folder, "XDSFolder", "folder")
    format_scheme = scheme("document_entry", "formatCode")
    kos = rules()["xds_i_b_additions"]["formatCode"]["code"]
    for de in sub.document_entries:
        imaging = transaction == "RAD-68" or de.get("mimeType") == "application/dicom" or any(
            c.get("nodeRepresentation") == kos for c in classifications(de, format_scheme))
        check.document_entry(de, imaging)
    check.associations(sub)
    _patient_ids(check, sub)
    _unique_ids(check, sub, pnr)
    if pnr:
        _documents(check, request, sub)
    return check.errors


def _patient_ids(check: _Checker, sub: Submission) -> None:
    if len(sub.submission_sets) != 1:
        return
    expected = external_identifier(sub.submission_sets[0], scheme("submission_set", "patientId"))
    for obj, section in [*((de, "document_entry") for de in sub.document_entries),
                         *((f, "folder") for f in sub.folders)]:
        value = external_identifier(obj, scheme(section, "patientId"))
        if expected and value and value != expected:
            check.error(f"{etree.QName(obj).localname} {obj.get('id', '')}",
                        "patientId differs from the SubmissionSet's patientId", "XDSPatientIdDoesNotMatch")


def _unique_ids(check: _Checker, sub: Submission, pnr: bool) -> None:
    code = "XDSRepositoryDuplicateUniqueIdInMessage" if pnr else "XDSRegistryDuplicateUniqueIdInMessage"
    seen: dict[str, str] = {}
    for obj, section in [*((de, "document_entry") for de in sub.document_entries),
                         *((p, "submission_set") for p in sub.submission_sets), *((f, "folder") for f in sub.folders)]:
        value = external_identifier(obj, scheme(section, "uniqueId"))
        if value and value in seen:
            check.error(obj.get("id", ""), f"uniqueId {value} also used by {seen[value]}", code)
        elif value:
            seen[value] = obj.get("id", "")


def _documents(check: _Checker, request: etree._Element, sub: Submission) -> None:
    """ITI TF-2 §3.41.4.1.3: Documents and DocumentEntries match one to one by id."""
    document_ids = [d.get("id", "") for d in request.iterfind(f"{{{XDS}}}Document")]
    entry_ids = {de.get("id", "") for de in sub.document_entries}
    for dup in sorted({i for i in document_ids if document_ids.count(i) > 1}):
        check.error(f"Document {dup}", "more than one Document with this id", "XDSRepositoryMetadataError")
    for doc_id in sorted(set(document_ids) - entry_ids):
        check.error(f"Document {doc_id}", "Document without a DocumentEntry (ExtrinsicObject) of the same id",
                    "XDSMissingDocumentMetadata")
    for entry_id in sorted(entry_ids - set(document_ids)):
        check.error(f"DocumentEntry {entry_id}", "DocumentEntry without its Document", "XDSMissingDocument")


# --- metadata update (ITI-57) ----------------------------------------------------------------------------------


def check_update(request: etree._Element, *, patient_id_domain: str | None = None) -> list[RuleError]:
    """Metadata errors of an ITI-57 Update Document Set's lcm:SubmitObjectsRequest, as far as they show without
    the registry's contents.

    The submission rules apply as to any submission (one complete SubmissionSet; ITI TF-2b 3.57.4.1.3.2), plus,
    for each UpdateAvailabilityStatus association (ITI TF-2b 3.57.4.1.3.3.2), XDSMetadataUpdateError when its
    sourceObject is not the SubmissionSet, its targetObject is an object of this submission rather than a
    registered entryUUID, or its OriginalStatus and NewStatus are not one of Approved and Deprecated each
    (the only transitions ITI-57 allows), or when two of them update the same object.
    """
    errors = check_submission(request, transaction="ITI-57", patient_id_domain=patient_id_domain)
    object_list = registry_object_list(request)
    if object_list is None:
        return errors
    sub = Submission.read(object_list)
    set_ids = {p.get("id", "") for p in sub.submission_sets}
    targets: list[str] = []
    for a in sub.associations:
        if a.get("associationType") != UPDATE_AVAILABILITY_STATUS:
            continue
        where = f"Association {a.get('id', '')}"
        if a.get("sourceObject") not in set_ids:
            errors.append(RuleError(UPDATE_ERROR, where, "sourceObject of UpdateAvailabilityStatus must be the "
                                                         "SubmissionSet"))
        target = a.get("targetObject", "")
        if target in sub.by_id:
            errors.append(RuleError(UPDATE_ERROR, where, "targetObject of UpdateAvailabilityStatus must be the "
                                                         "entryUUID of a registered object"))
        targets.append(target)
        statuses = [slot_values(a, name) for name in ("OriginalStatus", "NewStatus")]
        if sorted(tuple(values or ()) for values in statuses) != [(STATUS_APPROVED,), (STATUS_DEPRECATED,)]:
            errors.append(RuleError(UPDATE_ERROR, where, f"Slots OriginalStatus and NewStatus must be "
                                                         f"{STATUS_APPROVED} and {STATUS_DEPRECATED} (either way "
                                                         f"round), one value each; found {statuses}"))
    for target in sorted({t for t in targets if targets.count(t) > 1}):
        errors.append(RuleError(UPDATE_ERROR, target, "more than one UpdateAvailabilityStatus for this object"))
    return errors


# --- stored queries (ITI-18) ---------------------------------------------------------------------------------


class QueryValueError(ValueError):
    pass


def query_values(value: str) -> list[str]:
    """The items of one stored-query Value: ``'a'``, ``('a','b')`` or an unquoted number (ITI TF-2 §3.18.4.1.2.3.5)."""
    value = value.strip()
    if any(q in value for q in _TYPOGRAPHIC_QUOTES):
        raise QueryValueError(f"{value!r} uses typographic quotes; strings are quoted with ' (U+0027)")
    listed = value.startswith("(")
    if listed:
        if not value.endswith(")"):
            raise QueryValueError(f"{value!r}: unbalanced parentheses")
        value = value[1:-1]
    items = re.findall(r"\s*('(?:[^']|'')*'|[^,']+?)\s*(?:,|$)", value)
    if ",".join(items).replace(" ", "") != value.replace(" ", "") or not items:
        raise QueryValueError(f"{value!r} is not a quoted string, a number or a list of them")
    out = []
    for item in items:
        if item.startswith("'"):
            out.append(item[1:-1].replace("''", "'"))
        elif item.isdigit():
            out.append(item)
        else:
            raise QueryValueError(f"{item!r} must be quoted with '")
    return out


def query_parameters(adhoc_query: etree._Element) -> dict[str, list[list[str]]]:
    """Parameter name -> one list of items per Value element (Values of one slot are AND-ed, items OR-ed)."""
    return {slot.get("name", ""): [query_values(v.text or "") for v in slot.iterfind(f"{_R}ValueList/{_R}Value")]
            for slot in adhoc_query.iterfind(_R + "Slot")}


_TIME_PARAMETER = re.compile(r"\$XDSDocumentEntry\w+Time(From|To)")


def check_query(request: etree._Element) -> list[RuleError]:
    """Errors of an ITI-18 AdhocQueryRequest: known query id, FindDocuments/GetDocuments parameters, value forms."""
    errors: list[RuleError] = []
    option = request.find(f"{{{QUERY}}}ResponseOption")
    if option is None or option.get("returnType") not in ("LeafClass", "ObjectRef"):
        errors.append(RuleError("XDSRegistryError", "ResponseOption", "returnType must be LeafClass or ObjectRef"))
    query = request.find(_R + "AdhocQuery")
    if query is None:
        return [*errors, RuleError("XDSRegistryError", "AdhocQueryRequest", "no AdhocQuery")]
    query_id = query.get("id", "")
    ids = rules()["stored_queries"]["ids"]
    names = {v: k for k, v in ids.items()}
    if query_id not in names:
        hint = " (remove the surrounding whitespace)" if query_id.strip() in names else ""
        errors.append(RuleError("XDSUnknownStoredQuery", query_id, f"unknown stored query id {query_id!r}{hint}"))
        if not hint:
            return errors
    slot_names = [s.get("name", "") for s in query.iterfind(_R + "Slot")]
    for dup in sorted({n for n in slot_names if slot_names.count(n) > 1}):
        errors.append(RuleError("XDSStoredQueryParamNumber", dup, "parameter given in more than one Slot"))
    parameters: dict[str, list[list[str]]] = {}
    for slot in query.iterfind(_R + "Slot"):
        name = slot.get("name", "")
        try:
            if _TIME_PARAMETER.fullmatch(name):
                values = [[(v.text or "").strip()] for v in slot.iterfind(f"{_R}ValueList/{_R}Value")]
                bad = [v[0] for v in values if not is_dtm(v[0])]
                if bad:
                    errors.append(RuleError("XDSStoredQueryParamNumber", name, f"{bad[0]!r} is not DTM (unquoted)"))
            else:
                values = [query_values(v.text or "") for v in slot.iterfind(f"{_R}ValueList/{_R}Value")]
        except QueryValueError as exc:
            errors.append(RuleError("XDSStoredQueryParamNumber", name, str(exc)))
            continue
        parameters[name] = values
    query_name = names[query_id.strip()]
    if query_name == "FindDocuments":
        errors += _find_documents(parameters, set(slot_names))
    elif query_name == "GetDocuments":
        errors += _get_documents(parameters, set(slot_names))
    return errors


def _allowed(listed: list[str]) -> set[str]:
    return {entry.split()[0] for entry in listed}


def _find_documents(parameters: dict[str, list[list[str]]], names: set[str]) -> list[RuleError]:
    table = rules()["stored_queries"]
    errors = []
    allowed = _allowed(table["FindDocuments_required"]) | _allowed(table["FindDocuments_optional"])
    for unknown in sorted(names - allowed):
        errors.append(RuleError("XDSStoredQueryParamNumber", unknown, "not a FindDocuments parameter"))
    patient = parameters.get("$XDSDocumentEntryPatientId")
    if "$XDSDocumentEntryPatientId" not in names:
        errors.append(RuleError("XDSStoredQueryMissingParam", "$XDSDocumentEntryPatientId", "required"))
    elif patient is not None and (len(patient) != 1 or len(patient[0]) != 1):
        errors.append(RuleError("XDSStoredQueryParamNumber", "$XDSDocumentEntryPatientId", "exactly one value"))
    elif patient is not None and not is_cx(patient[0][0]):
        errors.append(RuleError("XDSRegistryMetadataError", "$XDSDocumentEntryPatientId", "not CX ID^^^&OID&ISO"))
    status = parameters.get("$XDSDocumentEntryStatus")
    if "$XDSDocumentEntryStatus" not in names:
        errors.append(RuleError("XDSStoredQueryMissingParam", "$XDSDocumentEntryStatus", "required"))
    for value in [v for values in status or [] for v in values]:
        if value not in (STATUS_APPROVED, STATUS_DEPRECATED, STATUS_SUBMITTED):
            errors.append(RuleError("XDSRegistryMetadataError", "$XDSDocumentEntryStatus",
                                    f"{value!r} is not urn:oasis:names:tc:ebxml-regrep:StatusType:<status>"))
    return errors


def _get_documents(parameters: dict[str, list[list[str]]], names: set[str]) -> list[RuleError]:
    table = rules()["stored_queries"]
    keys = {"$XDSDocumentEntryEntryUUID", "$XDSDocumentEntryUniqueId"}
    allowed = keys | _allowed(table["GetDocuments_optional"])
    errors = [RuleError("XDSStoredQueryParamNumber", unknown, "not a GetDocuments parameter")
              for unknown in sorted(names - allowed)]
    given = names & keys
    if len(given) != 1:
        errors.append(RuleError("XDSStoredQueryParamNumber" if given else "XDSStoredQueryMissingParam",
                                "GetDocuments", "exactly one of $XDSDocumentEntryEntryUUID or "
                                                "$XDSDocumentEntryUniqueId"))
    return errors


# --- responses -----------------------------------------------------------------------------------------------


def check_response(response: etree._Element) -> list[RuleError]:
    """Status and RegistryErrors of an rs:RegistryResponse or query:AdhocQueryResponse (ebRS 3.0, ITI TF-3 §4.2.4)."""
    table = rules()["response"]
    status = response.get("status", "")
    errors = []
    if status not in table["status_values"]:
        errors.append(RuleError("XDSRegistryError", "status", f"{status!r} is not a ResponseStatusType URN"))
    severities = [e.get("severity", "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error")
                  for e in response.iter(f"{{{RS}}}RegistryError")]
    error_severity = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"
    if status.endswith(":Failure") and error_severity not in severities:
        errors.append(RuleError("XDSRegistryError", "status", "Failure without a RegistryError of Error severity"))
    if status.endswith(":Success") and error_severity in severities:
        errors.append(RuleError("XDSRegistryError", "status", "Success with a RegistryError of Error severity"))
    return errors
