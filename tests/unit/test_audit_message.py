"""PS3.15 A.5 audit messages: every record renders to a message the standard's RELAX NG schema accepts, and the
values a reader of the audit repository looks for are where A.5.3 / IHE ATNA put them."""

from __future__ import annotations

import base64
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from gateway.audit.message import AuditSource, render, validate
from gateway.core.audit import (
    Action,
    AuditRecord,
    Code,
    Detail,
    Event,
    EventType,
    Interface,
    Outcome,
    Participant,
    Patient,
    Query,
    Role,
    Study,
    UndecodableAudit,
)

SOURCE = AuditSource("DICOMGW", "1.2.246.10.1234567")
AT = datetime(2026, 12, 1, 5, 40, 0, 123456, tzinfo=UTC)
CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT = Patient("123456-789A", "1.2.246.21", "Meikäläinen^Matti")
STUDY = Study("1.2.3.4.5", ((CT, 3),), "ACC-1")
MODALITY = Participant("CT01", True, Role.SOURCE, "10.0.0.5")
GATEWAY = Participant("DICOMGW", False, Role.DESTINATION, "gateway.example.org", alternative_user_id="4242")


def constants(holder: type) -> list[Code]:
    return [value for value in vars(holder).values() if isinstance(value, Code)]


def parse(message: bytes) -> etree._Element:
    return etree.fromstring(message, etree.XMLParser(resolve_entities=False, no_network=True))


def child(parent: etree._Element, path: str) -> etree._Element:
    element = parent.find(path)
    assert element is not None, path
    return element


def attrs(parent: etree._Element, path: str) -> dict[str, str]:
    return {str(k): str(v) for k, v in child(parent, path).attrib.items()}


def objects(root: etree._Element) -> list[etree._Element]:
    return root.findall("ParticipantObjectIdentification")


STORE = AuditRecord(Event.INSTANCES_TRANSFERRED, Outcome.SUCCESS, (MODALITY, GATEWAY), Interface.C_STORE,
                    Action.CREATE, patient=PATIENT, studies=(STUDY,), at=AT)


# text as peers send it: XML markup, HL7 delimiters, controls XML 1.0 cannot carry, a lone surrogate, non-ASCII
HOSTILE = st.text(st.one_of(st.sampled_from(list("<>&\"'^|~\\ \t\n\r\x00\x01\x1b\x7f\ufffe\uffff\ud800Äö日")),
                            st.characters()), max_size=12)
UIDS = st.lists(st.integers(0, 10**9), min_size=1, max_size=8).map(lambda arcs: ".".join(map(str, [2, *arcs])))
HOSTS = st.one_of(st.just(""), st.ip_addresses().map(str), st.just("gateway.example.org"), HOSTILE)
PARTICIPANTS = st.builds(Participant, user_id=HOSTILE, requestor=st.booleans(),
                         role=st.none() | st.sampled_from(constants(Role)), host=HOSTS, user_name=HOSTILE,
                         alternative_user_id=HOSTILE)
STUDIES = st.builds(Study, uid=UIDS, sop_classes=st.lists(st.tuples(UIDS, st.integers(0, 10_000)), max_size=3)
                    .map(tuple), accession=HOSTILE)
QUERIES = st.one_of(st.builds(Query, data=st.binary(max_size=64), sop_class=UIDS, encoding=HOSTILE),
                    st.builds(Query, data=st.binary(max_size=64), uri=HOSTILE))
ZONES = st.sampled_from([None, UTC, timezone(timedelta(hours=-5, minutes=-30)), ZoneInfo("Europe/Helsinki")])
RECORDS = st.builds(
    AuditRecord, event=st.sampled_from(constants(Event)), outcome=st.sampled_from(Outcome),
    participants=st.lists(PARTICIPANTS, min_size=1, max_size=3).map(tuple), interface=st.sampled_from(Interface),
    action=st.none() | st.sampled_from(Action), types=st.lists(st.sampled_from(constants(EventType)), max_size=3)
    .map(tuple), patient=st.none() | st.builds(Patient, id=HOSTILE, issuer=st.just("") | UIDS, name=HOSTILE),
    studies=st.lists(STUDIES, max_size=3).map(tuple), query=st.none() | QUERIES,
    submission_set=st.just("") | UIDS, details=st.lists(st.builds(Detail, HOSTILE, st.binary(max_size=32)),
                                                        max_size=2).map(tuple),
    recipient=HOSTILE, outcome_text=HOSTILE, at=st.datetimes(timezones=ZONES))
SOURCES = st.builds(AuditSource, id=HOSTILE, site=st.just("") | UIDS)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(record=RECORDS, source=SOURCES)
def test_every_record_renders_to_a_valid_message(record: AuditRecord, source: AuditSource) -> None:
    message = render(record, source)
    assert message.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    assert validate(message) == []
    root = parse(message)
    expected = (record.patient is not None) + len(record.studies) + (record.query is not None) \
        + bool(record.submission_set)
    assert len(objects(root)) == expected
    assert len(root.findall("ActiveParticipant")) == len(record.participants)


def test_a_stored_study_names_its_instances_and_patient() -> None:
    root = parse(render(STORE, SOURCE))
    event = attrs(root, "EventIdentification")
    assert (event["EventActionCode"], event["EventOutcomeIndicator"]) == ("C", "0")
    assert attrs(root, "EventIdentification/EventID") == {"csd-code": "110104", "codeSystemName": "DCM",
                                                         "originalText": "DICOM Instances Transferred"}
    source, destination = root.findall("ActiveParticipant")
    assert (source.get("UserID"), source.get("UserIsRequestor"), source.get("NetworkAccessPointTypeCode")) \
        == ("CT01", "true", "2")
    assert attrs(source, "RoleIDCode")["csd-code"] == "110153"
    assert (destination.get("UserIsRequestor"), destination.get("AlternativeUserID"),
            destination.get("NetworkAccessPointID"), destination.get("NetworkAccessPointTypeCode")) \
        == ("false", "4242", "gateway.example.org", "1")
    assert attrs(destination, "RoleIDCode")["csd-code"] == "110152"
    assert attrs(root, "AuditSourceIdentification") == {"AuditSourceID": "DICOMGW",
                                                        "AuditEnterpriseSiteID": "1.2.246.10.1234567"}
    assert [dict(c.attrib) for c in root.iterfind("AuditSourceIdentification/*")] == [{"csd-code": "4"}]
    patient, study = objects(root)
    assert (patient.get("ParticipantObjectID"), patient.get("ParticipantObjectTypeCode"),
            patient.get("ParticipantObjectTypeCodeRole")) == ("123456-789A^^^&1.2.246.21&ISO", "1", "1")
    assert patient.findtext("ParticipantObjectName") == "Meikäläinen^Matti"
    assert attrs(patient, "ParticipantObjectIDTypeCode") == {"csd-code": "2", "codeSystemName": "RFC-3881",
                                                             "originalText": "Patient Number"}
    assert (study.get("ParticipantObjectID"), study.get("ParticipantObjectTypeCodeRole")) == ("1.2.3.4.5", "3")
    assert attrs(study, "ParticipantObjectIDTypeCode") == {"csd-code": "110180", "codeSystemName": "DCM",
                                                           "originalText": "Study Instance UID"}
    assert study.findtext("ParticipantObjectName") == "1.2.3.4.5"
    assert attrs(study, "ParticipantObjectDescription/Accession") == {"Number": "ACC-1"}
    assert attrs(study, "ParticipantObjectDescription/SOPClass") == {"UID": CT, "NumberOfInstances": "3"}
    assert patient.get("ParticipantObjectDataLifeCycle") is None


def test_a_patient_without_issuer_or_name_is_named_by_its_id() -> None:
    patient = objects(parse(render(replace(STORE, patient=Patient("A^B")), SOURCE)))[0]
    assert patient.get("ParticipantObjectID") == patient.findtext("ParticipantObjectName") == "A^B"


def test_hl7_delimiters_in_a_patient_id_cannot_split_the_cx() -> None:
    patient = objects(parse(render(replace(STORE, patient=Patient("A^B&C", "1.2.3")), SOURCE)))[0]
    assert patient.get("ParticipantObjectID") == "A\\S\\B\\T\\C^^^&1.2.3&ISO"


@pytest.mark.parametrize("query", [Query(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY \x00<&>", sop_class=STUDY_FIND),
                                   Query(b"/studies?PatientID=12%5E3&00100010=*", uri="/dicom-web/studies")])
def test_a_query_is_kept_byte_for_byte(query: Query) -> None:
    record = AuditRecord(Event.QUERY, Outcome.SUCCESS, (MODALITY, GATEWAY), Interface.C_FIND, Action.EXECUTE,
                         query=query, at=AT)
    message = render(record, SOURCE)
    assert validate(message) == []
    (element,) = objects(parse(message))
    assert element.get("ParticipantObjectTypeCodeRole") == "24"
    assert element.find("ParticipantObjectName") is None
    assert base64.b64decode(element.findtext("ParticipantObjectQuery", "")) == query.data
    details = {d.get("type"): base64.b64decode(d.get("value", "")) for d in element.findall("ParticipantObjectDetail")}
    id_type = attrs(element, "ParticipantObjectIDTypeCode")
    if query.sop_class:
        assert element.get("ParticipantObjectID") == STUDY_FIND
        assert id_type == {"csd-code": "110181", "codeSystemName": "DCM", "originalText": "SOP Class UID"}
        assert details == {"TransferSyntax": b"1.2.840.10008.1.2.1", "QueryEncoding": b"UTF-8"}
    else:
        assert element.get("ParticipantObjectID") == "/dicom-web/studies"
        assert id_type == {"csd-code": "12", "codeSystemName": "RFC-3881", "originalText": "URI"}
        assert details == {"QueryEncoding": b"UTF-8"}


def test_a_disclosure_marks_patient_and_studies() -> None:
    root = parse(render(replace(STORE, event=Event.EXPORT, action=Action.READ, recipient="ARCHIVE"), SOURCE))
    assert [o.get("ParticipantObjectDataLifeCycle") for o in objects(root)] == ["11", "11"]


def test_objects_come_in_order_patient_studies_query_submission_set() -> None:
    record = replace(STORE, event=Event.EXPORT, studies=(STUDY, Study("1.2.3.4.6")), query=Query(b"q", uri="/q"),
                   submission_set="2.25.2001", details=(Detail("MSH-10", b"MSG0001"),))
    message = render(record, SOURCE)
    assert validate(message) == []
    found = [(o.get("ParticipantObjectTypeCodeRole"), o.get("ParticipantObjectID")) for o in objects(parse(message))]
    assert found == [("1", "123456-789A^^^&1.2.246.21&ISO"), ("3", "1.2.3.4.5"), ("3", "1.2.3.4.6"), ("24", "/q"),
                     ("20", "2.25.2001")]
    patient, _, bare_study, _, submission_set = objects(parse(message))
    detail = patient.find("ParticipantObjectDetail")
    assert detail is not None and (detail.get("type"), detail.get("value")) == ("MSH-10", "TVNHMDAwMQ==")
    assert bare_study.find("ParticipantObjectDescription") is None
    assert submission_set.findtext("ParticipantObjectName") == "2.25.2001"
    assert attrs(submission_set, "ParticipantObjectIDTypeCode") == {
        "csd-code": "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd", "codeSystemName": "IHE XDS Metadata",
        "originalText": "submission set classificationNode"}


@pytest.mark.parametrize("at", [AT, AT.astimezone(ZoneInfo("Europe/Helsinki")), AT.replace(tzinfo=None)])
def test_the_event_time_is_utc_with_an_offset(at: datetime) -> None:
    moment = attrs(parse(render(replace(STORE, at=at), SOURCE)), "EventIdentification")["EventDateTime"]
    assert moment == "2026-12-01T05:40:00.123+00:00"
    assert datetime.fromisoformat(moment).utcoffset() == timedelta(0)


def test_optional_values_are_omitted_when_empty() -> None:
    record = AuditRecord(Event.APPLICATION_ACTIVITY, Outcome.SUCCESS, (Participant("DICOMGW", False),),
                         Interface.SYSTEM, types=(EventType.APPLICATION_START,), at=AT)
    message = render(record, AuditSource("DICOMGW"))
    assert validate(message) == []
    root = parse(message)
    assert "EventActionCode" not in attrs(root, "EventIdentification")
    assert root.find("EventIdentification/EventOutcomeDescription") is None
    assert attrs(root, "EventIdentification/EventTypeCode")["csd-code"] == "110120"
    assert attrs(root, "ActiveParticipant") == {"UserID": "DICOMGW", "UserIsRequestor": "false"}
    assert attrs(root, "AuditSourceIdentification") == {"AuditSourceID": "DICOMGW"}
    assert objects(root) == []


def test_a_failure_says_why() -> None:
    root = parse(render(replace(STORE, outcome=Outcome.SERIOUS_FAILURE, outcome_text="disk full"), SOURCE))
    assert attrs(root, "EventIdentification")["EventOutcomeIndicator"] == "8"
    assert root.findtext("EventIdentification/EventOutcomeDescription") == "disk full"


def test_characters_xml_cannot_carry_are_replaced_not_raised() -> None:
    hostile = Participant("EVIL\x00\x1b<AE>&\ud800", True, Role.SOURCE, "bad\x07host")
    record = replace(STORE, participants=(hostile,), outcome_text="line\x0cfeed", patient=Patient("1\x002", "", "Äö\uffff"))
    message = render(record, SOURCE)
    assert validate(message) == []
    root = parse(message)
    participant = attrs(root, "ActiveParticipant")
    assert participant["UserID"] == "EVIL\ufffd\ufffd<AE>&\ufffd"
    assert participant["NetworkAccessPointID"] == "bad\ufffdhost"
    assert root.findtext("EventIdentification/EventOutcomeDescription") == "line\ufffdfeed"
    assert objects(root)[0].findtext("ParticipantObjectName") == "Äö\ufffd"
    assert b"<AE>" not in message


def test_a_record_without_participants_is_refused() -> None:
    with pytest.raises(UndecodableAudit, match="without participants"):
        render(replace(STORE, participants=()), SOURCE)


def test_the_validator_rejects_a_broken_message() -> None:
    root = parse(render(STORE, SOURCE))
    root.remove(child(root, "EventIdentification"))
    assert validate(etree.tostring(root)) != []
    nameless = parse(render(STORE, SOURCE))
    study = objects(nameless)[1]
    study.remove(child(study, "ParticipantObjectName"))
    assert validate(etree.tostring(nameless)) != []
    assert validate(b"<AuditMessage") != []


def test_nothing_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        validate(render(STORE, SOURCE))
    assert caplog.records == []
