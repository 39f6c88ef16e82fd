"""An ``AuditRecord`` as a DICOM PS3.15 A.5 audit message (the XML the audit repository receives).

The mapping follows PS3.15 A.5.3 and IHE ITI ATNA practice (as dcm4chee writes it). The schema in ``schema/``
is the standard's; ``validate`` checks a message against it, and the tests check that every message validates.
Values come from remote peers (AE titles, query keys, HL7 messages), so text that XML 1.0 cannot carry is
replaced rather than refused: an audit message must always be written. Nothing here logs: messages carry
patient identifiers.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

from lxml import etree

from gateway.core.audit import AuditRecord, Code, Detail, Participant, Patient, Query, Study, UndecodableAudit

SCHEMA = Path(__file__).resolve().parent / "schema" / "audit-message.rng"
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False)
_MAX_ERRORS = 20
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
"""What XML 1.0 ``Char`` excludes: C0 controls, lone surrogates, U+FFFE/U+FFFF."""
_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
"""A DIMSE identifier's transfer syntax when the record does not name the one it came in (PS3.15 A.5.3.12)."""

_PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
_STUDY_INSTANCE_UID = Code("110180", "DCM", "Study Instance UID")
_SOP_CLASS_UID = Code("110181", "DCM", "SOP Class UID")
_URI = Code("12", "RFC-3881", "URI")
_SUBMISSION_SET = Code("urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd", "IHE XDS Metadata",
                       "submission set classificationNode")
_APPLICATION_SERVER = "4"
"""AuditSourceTypeCode: application server process (alone, as the schema allows for codes 1-9)."""
_DISCLOSURE = "11"


@dataclass(frozen=True, slots=True)
class AuditSource:
    """Who reports the event (AuditSourceIdentification): the same for every message of one gateway."""

    id: str
    """AuditSourceID: the gateway's device name (its AE title)."""
    site: str = ""
    """AuditEnterpriseSiteID: the organisation's OID; omitted when empty."""


def render(record: AuditRecord, source: AuditSource) -> bytes:
    """The audit message of ``record``, UTF-8 with an XML declaration.

    Raises ``UndecodableAudit`` (permanent: to the dead letters) for a record without participants: the schema
    requires an ActiveParticipant, and inventing one would misstate who took part."""
    if not record.participants:
        raise UndecodableAudit("audit record without participants: an audit message needs at least one")
    root = etree.Element("AuditMessage")
    _event(root, record)
    for participant in record.participants:
        _participant(root, participant)
    audit_source = etree.SubElement(root, "AuditSourceIdentification", AuditSourceID=_xml(source.id))
    if source.site:
        audit_source.set("AuditEnterpriseSiteID", _xml(source.site))
    etree.SubElement(audit_source, "AuditSourceTypeCode", {"csd-code": _APPLICATION_SERVER})
    if record.patient is not None:
        _patient(root, record.patient, record.details, record.disclosure)
    for study in record.studies:
        _study(root, study, record.disclosure)
    if record.query is not None:
        _query(root, record.query)
    if record.submission_set:
        _object(root, record.submission_set, "2", "20", _SUBMISSION_SET, name=record.submission_set)
    return etree.tostring(root, encoding="UTF-8", xml_declaration=True)


@functools.cache
def _schema() -> etree.RelaxNG:
    return etree.RelaxNG(etree.parse(str(SCHEMA), _PARSER))


def validate(message: bytes) -> list[str]:
    """RELAX NG errors of ``message`` against the PS3.15 A.5.1 schema; empty when valid."""
    try:
        document = etree.fromstring(message, _PARSER)
    except etree.XMLSyntaxError as exc:
        return [f"not well-formed XML: {exc}"]
    schema = _schema()
    if schema.validate(document):
        return []
    return [f"line {e.line}: {e.message}" for e in list(schema.error_log)[:_MAX_ERRORS]]


def _event(root: etree._Element, record: AuditRecord) -> None:
    at = record.at if record.at.tzinfo is not None else record.at.replace(tzinfo=UTC)
    event = etree.SubElement(root, "EventIdentification",
                             EventDateTime=at.astimezone(UTC).isoformat(timespec="milliseconds"),
                             EventOutcomeIndicator=record.outcome.value)
    if record.action is not None:
        event.set("EventActionCode", record.action.value)
    _code(event, "EventID", record.event)
    for event_type in record.types:
        _code(event, "EventTypeCode", event_type)
    if record.outcome_text:
        etree.SubElement(event, "EventOutcomeDescription").text = _xml(record.outcome_text)


def _participant(root: etree._Element, participant: Participant) -> None:
    element = etree.SubElement(root, "ActiveParticipant", UserID=_xml(participant.user_id),
                               UserIsRequestor="true" if participant.requestor else "false")
    if participant.alternative_user_id:
        element.set("AlternativeUserID", _xml(participant.alternative_user_id))
    if participant.user_name:
        element.set("UserName", _xml(participant.user_name))
    if participant.host:
        element.set("NetworkAccessPointID", _xml(participant.host))
        element.set("NetworkAccessPointTypeCode", "2" if _is_ip(participant.host) else "1")
    if participant.role is not None:
        _code(element, "RoleIDCode", participant.role)


def _patient(root: etree._Element, patient: Patient, details: tuple[Detail, ...], disclosure: bool) -> None:
    patient_id = _cx(patient.id, patient.issuer)
    element = _object(root, patient_id, "1", "1", _PATIENT_NUMBER, name=patient.name or patient_id,
                      details=details)
    if disclosure:
        element.set("ParticipantObjectDataLifeCycle", _DISCLOSURE)


def _study(root: etree._Element, study: Study, disclosure: bool) -> None:
    # the schema requires a ParticipantObjectName or a ParticipantObjectQuery: a study has no name, so its UID
    element = _object(root, study.uid, "2", "3", _STUDY_INSTANCE_UID, name=study.uid)
    if disclosure:
        element.set("ParticipantObjectDataLifeCycle", _DISCLOSURE)
    if not study.accession and not study.sop_classes:
        return
    description = etree.SubElement(element, "ParticipantObjectDescription")
    if study.accession:
        etree.SubElement(description, "Accession", Number=_xml(study.accession))
    for sop_class, count in study.sop_classes:
        etree.SubElement(description, "SOPClass", UID=_xml(sop_class), NumberOfInstances=str(count))


def _query(root: etree._Element, query: Query) -> None:
    details: tuple[Detail, ...] = (Detail("QueryEncoding", query.encoding.encode()),)
    if query.sop_class:
        syntax = query.transfer_syntax or _EXPLICIT_VR_LITTLE_ENDIAN
        details = (Detail("TransferSyntax", syntax.encode()), *details)
        _object(root, query.sop_class, "2", "24", _SOP_CLASS_UID, query=query.data, details=details)
    else:
        _object(root, query.uri, "2", "24", _URI, query=query.data, details=details)


def _object(root: etree._Element, object_id: str, type_code: str, role: str, id_type: Code, *, name: str = "",
            query: bytes | None = None, details: tuple[Detail, ...] = ()) -> etree._Element:
    """A ParticipantObjectIdentification with its children in schema order, up to the Description."""
    element = etree.SubElement(root, "ParticipantObjectIdentification", ParticipantObjectID=_xml(object_id),
                               ParticipantObjectTypeCode=type_code, ParticipantObjectTypeCodeRole=role)
    _code(element, "ParticipantObjectIDTypeCode", id_type)
    if query is None:
        etree.SubElement(element, "ParticipantObjectName").text = _xml(name)
    else:
        etree.SubElement(element, "ParticipantObjectQuery").text = _base64(query)
    for detail in details:
        etree.SubElement(element, "ParticipantObjectDetail", type=_xml(detail.type), value=_base64(detail.value))
    return element


def _code(parent: etree._Element, tag: str, code: Code) -> None:
    etree.SubElement(parent, tag, {"csd-code": _xml(code.code), "codeSystemName": _xml(code.scheme),
                                   "originalText": _xml(code.meaning)})


def _cx(patient_id: str, issuer: str) -> str:
    """HL7 v2 CX ``ID^^^&OID&ISO`` (IHE ITI ATNA), delimiters escaped so that a value cannot split it."""
    return f"{_hl7_escape(patient_id)}^^^&{_hl7_escape(issuer)}&ISO" if issuer else patient_id


def _hl7_escape(value: str) -> str:
    # as gateway.xds.metadata.hl7_escape; not imported, as that module takes most of a second to import
    out = value.replace("\\", "\\E\\")
    for char, escape in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        out = out.replace(char, escape)
    return out


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _xml(value: str) -> str:
    """``value`` with what XML 1.0 cannot carry replaced by U+FFFD (lxml would raise)."""
    return _NOT_XML.sub("\ufffd", value)


def _base64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")
