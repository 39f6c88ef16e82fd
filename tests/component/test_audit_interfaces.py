"""The audit trail of the interfaces ``test_audit_embedded`` leaves out, end to end on the embedded bus with a real
rsyslog as the audit record repository: C-MOVE to a dcmtk storescp, STOW-RS, QIDO-RS, HL7 ADT, RAD-68 to the XDS
simulator, forwarding to a storescp, and the UDP transport. Every message that arrives must validate against the
PS3.15 A.5 schema, and what a patient's information request needs must be in the local audit log."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pydicom
import pytest
from aiohttp import ClientSession
from dicomweb_client.api import DICOMwebClient
from lxml import etree

from gateway.audit.message import validate
from tests.component.test_audit_embedded import event_of, messages_until, patient_of, repository, xml_of
from tests.component.test_hl7 import HOSP, QR_AE, adt, applied, hl7_port, mllp_send, stored
from tests.component.test_notify_embedded import Gateway, running
from tests.component.test_query_retrieve import new_study, study
from tests.component.test_register_embedded import Simulator, registered, registry
from tests.component.test_register_embedded import study as tiny_study
from tests.conftest import dcmtk
from tests.helpers import api_headers, free_port, run
from tests.rsyslog import BOM, Rsyslog

__all__ = ["registry", "repository"]

DESTINATION_AE = "STORESCP"
SUBMISSION_SET = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
SOURCE, DESTINATION = "110153", "110152"
DISCLOSURE = "11"

# --- reading the repository's messages -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Active:
    """An ActiveParticipant as the message names it."""

    requestor: bool
    role: str
    host: str


def participants(root: etree._Element) -> dict[str, Active]:
    found = {}
    for element in root.iter("ActiveParticipant"):
        role = element.find("RoleIDCode")
        found[element.get("UserID", "")] = Active(element.get("UserIsRequestor") == "true",
                                                  role.get("csd-code", "") if role is not None else "",
                                                  element.get("NetworkAccessPointID", ""))
    return found


def objects(root: etree._Element, type_role: str) -> list[etree._Element]:
    """ParticipantObjectIdentifications of one ParticipantObjectTypeCodeRole (1 patient, 3 study, 20 submission
    set, 24 query)."""
    return [o for o in root.iter("ParticipantObjectIdentification") if o.get("ParticipantObjectTypeCodeRole") == type_role]


def id_type(element: etree._Element) -> str:
    code = element.find("ParticipantObjectIDTypeCode")
    assert code is not None
    return code.get("csd-code", "")


def event_types(root: etree._Element) -> set[str]:
    return {code.get("csd-code", "") for code in root.iter("EventTypeCode")}


def outcome_of(root: etree._Element) -> str:
    identification = root.find("EventIdentification")
    assert identification is not None
    return identification.get("EventOutcomeIndicator", "")


def studies_of(root: etree._Element) -> set[str]:
    return {o.get("ParticipantObjectID", "") for o in objects(root, "3")}


def cx(patient_id: str, issuer: str) -> str:
    """A patient's ParticipantObjectID with its assigning authority (IHE ITI ATNA: HL7 CX)."""
    return f"{patient_id}^^^&{issuer}&ISO" if issuer else patient_id


def all_valid(syslog: Rsyslog) -> None:
    """Every message received so far is a syslog message of ours whose XML validates."""
    for message in syslog.received():
        assert (message.version, message.msgid, message.app_name) == ("1", "IHE+RFC-3881", "dicom-gateway")
        assert validate(message.msg.removeprefix(BOM)) == [], message.msg[:400]


async def arrived(syslog: Rsyslog, wanted: Callable[[list[etree._Element]], bool], timeout: float = 15,
                  what: str = "") -> list[etree._Element]:
    """The repository's messages once ``wanted`` holds of them; failing with what did arrive otherwise."""
    try:
        return await messages_until(syslog, wanted, timeout)
    except TimeoutError:
        got = [(*event_of(root), patient_of(root)) for root in map(xml_of, syslog.received())]
        pytest.fail(f"the repository did not receive {what or 'the messages expected'} within {timeout} s; it"
                    f" received (EventID, EventActionCode, patient): {got}", pytrace=False)


def shown(roots: list[etree._Element]) -> str:
    return "\n".join(etree.tostring(root).decode()[:1500] for root in roots)


async def audit_log(gateway: Gateway, patient_id: str, wanted: Callable[[list[dict[str, Any]]], bool],
                    ) -> list[dict[str, Any]]:
    _, entries = await gateway.until(f"/api/audit?patient_id={patient_id}", wanted)
    return list(entries)


# --- the gateway and its peers ---------------------------------------------------------------------------------


async def listening(port: int) -> None:
    async with asyncio.timeout(20):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return


@dataclass(frozen=True, slots=True)
class StoreScp:
    """dcmtk's storescp, a move or forward destination."""

    ae_title: str
    port: int
    received: Path

    def remote(self) -> dict[str, Any]:
        return {"ae_title": self.ae_title, "host": "127.0.0.1", "port": self.port}


@pytest.fixture
async def storescp(tmp_path: Path) -> AsyncIterator[StoreScp]:
    scp = StoreScp(DESTINATION_AE, free_port(), tmp_path / "storescp")
    scp.received.mkdir()
    process = await asyncio.create_subprocess_exec(
        dcmtk("storescp"), "-aet", scp.ae_title, "-od", str(scp.received), str(scp.port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        await listening(scp.port)
        yield scp
    finally:
        process.terminate()
        await process.wait()


@asynccontextmanager
async def audited(tmp_path: Path, syslog: Rsyslog, roles: list[str], transport: str = "tls",
                  **sections: Any) -> AsyncIterator[Gateway]:
    """The gateway in-process with ``roles`` and the audit role, its repository the rsyslog over ``transport``."""
    dicom = {"allowed_aes": [{"ae_title": "MODALITY1"}, {"ae_title": QR_AE, "permissions": ["query", "retrieve"]}],
             **sections.pop("dicom", {})}
    url = (f"tls://127.0.0.1:{syslog.tls_port}" if transport == "tls" else f"udp://127.0.0.1:{syslog.udp_port}")
    async with running(tmp_path, [*roles, "audit"], dicom=dicom, audit={
            "repository_url": url, "ca_file": str(syslog.ca_file)}, **sections) as gateway:
        yield gateway


@pytest.fixture
async def archive(tmp_path: Path, repository: Rsyslog, storescp: StoreScp) -> AsyncIterator[Gateway]:
    """Receiver, store and api, with the storescp as a known move destination."""
    async with audited(tmp_path, repository, ["receiver", "store", "api"],
                       dicom={"remote_aes": [storescp.remote()]}) as gateway:
        yield gateway


async def holding(gateway: Gateway, tmp_path: Path, name: str, count: int, patient: str) -> str:
    """A study of ``count`` instances of ``patient`` sent by C-STORE and stored; its Study Instance UID."""
    made = study(tmp_path, name, count, PatientID=patient, PatientName=f"{name.upper()}^TEST")
    await gateway.store(*(path for path, _ in made))
    uid = str(made[0][1].StudyInstanceUID)
    await gateway.until(f"/api/studies/{uid}", lambda body: sum(len(s["instances"]) for s in body["series"]) == count)
    return uid


async def movescu(gateway: Gateway, *keys: str) -> None:
    code, output = await run(dcmtk("movescu"), "-S", "-aet", QR_AE, "-aec", "DICOMGW", "-aem", DESTINATION_AE,
                             *(arg for key in keys for arg in ("-k", key)),
                             "127.0.0.1", str(gateway.settings.dicom.port))
    assert code == 0, output


# --- the scenarios ---------------------------------------------------------------------------------------------


async def test_c_move_is_begun_then_disclosed_to_the_move_destination(
        archive: Gateway, repository: Rsyslog, storescp: StoreScp, tmp_path: Path) -> None:
    study_uid = await holding(archive, tmp_path, "moved", 2, "P-MOVE-1")
    await movescu(archive, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid}")
    assert len(list(storescp.received.iterdir())) == 2

    roots = await arrived(repository, lambda roots: any(
        event_of(root) == ("110104", "R") for root in roots))
    all_valid(repository)
    mine = [root for root in roots if patient_of(root) == "P-MOVE-1" and event_of(root)[0] in ("110102", "110104")
            and event_of(root) != ("110104", "C")]
    assert [event_of(root) for root in mine] == [("110102", "E"), ("110104", "R")], shown(mine)
    begin, transferred = mine
    for root in (begin, transferred):
        assert studies_of(root) == {study_uid}
        named = participants(root)
        assert named[QR_AE].requestor and named[QR_AE].host == "127.0.0.1"
        assert named["DICOMGW"] == Active(False, SOURCE, named["DICOMGW"].host)
        assert named[DESTINATION_AE] == Active(False, DESTINATION, "127.0.0.1")
    assert outcome_of(transferred) == "0"
    lifecycle = {o.get("ParticipantObjectDataLifeCycle") for role in ("1", "3") for o in objects(transferred, role)}
    assert lifecycle == {DISCLOSURE}
    [counted] = transferred.iter("SOPClass")
    assert counted.get("NumberOfInstances") == "2"

    log = await audit_log(archive, "P-MOVE-1", lambda body: any(e["interface"] == "DICOM C-MOVE" and e["disclosure"]
                                                                for e in body))
    [move] = [entry for entry in log if entry["interface"] == "DICOM C-MOVE" and entry["disclosure"]]
    assert (move["event"], move["action"], move["recipient"]) == ("DICOM Instances Transferred", "R", DESTINATION_AE)
    assert (move["actor"], move["studies"], move["instances"]) == (QR_AE, [study_uid], 2)


async def test_a_c_move_of_two_patients_studies_is_one_disclosure_per_patient(
        archive: Gateway, repository: Rsyslog, storescp: StoreScp, tmp_path: Path) -> None:
    first = await holding(archive, tmp_path, "first", 1, "P-MOVE-A")
    second = await holding(archive, tmp_path, "second", 2, "P-MOVE-B")
    await movescu(archive, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={first}\\{second}")
    assert len(list(storescp.received.iterdir())) == 3

    roots = await arrived(repository, lambda roots: sum(
        event_of(root) == ("110104", "R") for root in roots) >= 2)
    all_valid(repository)
    transferred = [root for root in roots if event_of(root) == ("110104", "R")]
    assert {patient_of(root): studies_of(root) for root in transferred} == {
        "P-MOVE-A": {first}, "P-MOVE-B": {second}}, shown(transferred)
    assert len(transferred) == 2
    begun = [root for root in roots if event_of(root)[0] == "110102"]
    assert sorted(patient_of(root) for root in begun) == ["P-MOVE-A", "P-MOVE-B"]
    for root in transferred:
        assert participants(root)[DESTINATION_AE].role == DESTINATION
    for patient, uid in (("P-MOVE-A", first), ("P-MOVE-B", second)):
        log = await audit_log(archive, patient, lambda body: any(e["interface"] == "DICOM C-MOVE" and e["disclosure"]
                                                                 for e in body))
        [move] = [entry for entry in log if entry["interface"] == "DICOM C-MOVE" and entry["disclosure"]]
        assert (move["recipient"], move["studies"]) == (DESTINATION_AE, [uid])


async def test_stow_rs_is_instances_received_over_dicomweb(archive: Gateway, repository: Rsyslog) -> None:
    datasets = new_study(2, PatientID="P-STOW-1", PatientName="STOW^TEST")
    study_uid = str(datasets[0].StudyInstanceUID)
    web = DICOMwebClient(f"{archive.api}/dicomweb", headers=api_headers(archive.settings.data_dir))
    answer = await asyncio.to_thread(web.store_instances, datasets)
    assert len(answer.ReferencedSOPSequence) == 2

    roots = await arrived(repository, lambda roots: any(
        event_of(root) == ("110104", "C") and patient_of(root) == "P-STOW-1" for root in roots))
    all_valid(repository)
    received = [root for root in roots if event_of(root)[0] == "110104" and patient_of(root) == "P-STOW-1"]
    assert {event_of(root) for root in received} == {("110104", "C")}
    assert sum(int(c.get("NumberOfInstances", "0")) for root in received for c in root.iter("SOPClass")) == 2
    assert all(studies_of(root) == {study_uid} for root in received)
    named = participants(received[0])
    assert named["DICOMGW"].role == DESTINATION
    assert named["api-token"] == Active(True, SOURCE, "127.0.0.1")

    log = await audit_log(archive, "P-STOW-1", lambda body: any(e["interface"] == "DICOMweb STOW-RS" for e in body))
    stow = [entry for entry in log if entry["interface"] == "DICOMweb STOW-RS"]
    assert {(e["event"], e["action"], e["disclosure"]) for e in stow} == {("DICOM Instances Transferred", "C", False)}
    assert sum(e["instances"] for e in stow) == 2 and {e["actor_host"] for e in stow} == {"127.0.0.1"}
    assert {e["actor"] for e in stow} == {"api-token"}  # who sent it: the token's user, not the interface


async def test_qido_rs_is_a_query_naming_the_request(archive: Gateway, repository: Rsyslog, tmp_path: Path) -> None:
    study_uid = await holding(archive, tmp_path, "queried", 1, "P-QIDO-1")
    query = f"PatientID=P-QIDO-1&StudyInstanceUID={study_uid}&includefield=StudyDescription"
    async with (ClientSession(headers=api_headers(archive.settings.data_dir)) as http,
                http.get(f"{archive.api}/dicomweb/studies?{query}") as response):
        assert response.status == 200
        [answer] = await response.json()
    assert answer["0020000D"]["Value"] == [study_uid]

    def asked(root: etree._Element) -> bool:
        return event_of(root)[0] == "110112" and any(
            o.get("ParticipantObjectID") == "/dicomweb/studies" for o in objects(root, "24"))

    roots = await arrived(repository, lambda roots: any(asked(root) for root in roots))
    all_valid(repository)
    [qido] = [root for root in roots if asked(root)]
    [what] = objects(qido, "24")
    assert (what.get("ParticipantObjectTypeCode"), id_type(what)) == ("2", "12")
    code = what.find("ParticipantObjectIDTypeCode")
    assert code is not None and code.get("codeSystemName") == "RFC-3881"
    assert base64.b64decode(what.findtext("ParticipantObjectQuery") or "").decode() == query
    named = participants(qido)
    asking = [p for p in named.values() if p.requestor]
    assert len(asking) == 1 and asking[0].role == SOURCE and asking[0].host == "127.0.0.1"
    assert named["DICOMGW"].role == DESTINATION

    _, log = await archive.until("/api/audit", lambda body: any(e["interface"] == "DICOMweb QIDO-RS" for e in body))
    entry = next(e for e in log if e["interface"] == "DICOMweb QIDO-RS")
    assert (entry["event"], entry["disclosure"], entry["actor_host"]) == ("Query", False, "127.0.0.1")


@pytest.fixture
async def adt_gateway(tmp_path: Path, repository: Rsyslog) -> AsyncIterator[Gateway]:
    async with audited(tmp_path, repository, ["receiver", "store", "api", "hl7", "patient"],
                       hl7={"host": "127.0.0.1", "port": free_port(), "allowed_senders": [{"application": "HIS"}],
                            "local_authorities": [HOSP], "idle_timeout_seconds": 3},
                       validation={"test_environment": True}) as gateway:
        yield gateway


def hl7_message(root: etree._Element) -> bytes:
    [patient] = objects(root, "1")
    [detail] = [d for d in patient.iter("ParticipantObjectDetail") if d.get("type") == "HL7v2 Message"]
    return base64.b64decode(detail.get("value", ""))


async def test_adt_updates_and_merges_are_patient_records_carrying_the_message(
        adt_gateway: Gateway, repository: Rsyslog, tmp_path: Path) -> None:
    gateway = adt_gateway
    await stored(gateway, tmp_path, "upd", 1, PatientID="P-ADT-1", PatientName="VANHA^NIMI")
    await stored(gateway, tmp_path, "prior", 1, PatientID="P-ADT-2", PatientName="VIRTANEN^ANNA")
    await stored(gateway, tmp_path, "survivor", 1, PatientID="P-ADT-3", PatientName="VIRTANEN^ANNA^MARIA")
    update = adt("A08", "P-ADT-1", control_id="AUD-1", name="UUSI^NIMI", birth="19700101", sex="F")
    merge = adt("A40", "P-ADT-3", prior="P-ADT-2", control_id="AUD-2", name="VIRTANEN^ANNA^MARIA")
    acks = await mllp_send(hl7_port(gateway), update, merge, tmp=tmp_path)
    assert [(ack.code, ack.control_id) for ack in acks] == [("AA", "AUD-1"), ("AA", "AUD-2")]
    await applied(gateway, "P-ADT-3", "AUD-2")

    roots = await arrived(repository, lambda roots: sum(
        event_of(root)[0] == "110110" for root in roots) >= 3)
    all_valid(repository)
    records = {patient_of(root): root for root in roots if event_of(root)[0] == "110110"}
    assert set(records) == {cx("P-ADT-1", HOSP), cx("P-ADT-2", HOSP), cx("P-ADT-3", HOSP)}, shown(list(records.values()))
    updated, prior, survivor = (records[cx(p, HOSP)] for p in ("P-ADT-1", "P-ADT-2", "P-ADT-3"))
    assert event_of(updated) == ("110110", "U") and hl7_message(updated) == update.encode()
    assert event_of(survivor) == ("110110", "U") and hl7_message(survivor) == merge.encode()
    assert event_of(prior) == ("110110", "D") and hl7_message(prior) == merge.encode()
    for root in records.values():
        assert outcome_of(root) == "0"
        assert participants(root)["DICOMGW"].role == DESTINATION

    for patient, action in (("P-ADT-1", "U"), ("P-ADT-3", "U"), ("P-ADT-2", "D")):
        log = await audit_log(gateway, patient, lambda body: any(e["interface"] == "HL7 v2 ADT" for e in body))
        [entry] = [e for e in log if e["interface"] == "HL7 v2 ADT"]
        assert (entry["event"], entry["action"], entry["disclosure"]) == ("Patient Record", action, False)


async def test_a_rad_68_registration_is_an_export_to_the_repository(
        tmp_path: Path, repository: Rsyslog, registry: Simulator) -> None:
    files = tiny_study(tmp_path, 2)
    head = pydicom.dcmread(files[0], stop_before_pixels=True)
    study_uid, patient, issuer = str(head.StudyInstanceUID), str(head.PatientID), str(head.IssuerOfPatientID)
    xds = registry.xds()
    async with audited(tmp_path, repository, ["receiver", "store", "api", "register"], xds=xds) as gateway:
        await gateway.store(*files)
        registration = await registered(gateway, study_uid)
        roots = await arrived(repository, lambda roots: any(event_of(root)[0] == "110106" for root in roots))
        log = await audit_log(gateway, patient, lambda body: any(e["interface"] == "IHE XDS-I.b" for e in body))
    all_valid(repository)
    assert registration["manifests"][0]["instances"] == 2
    [submission_set] = orjson.loads((registry.data / "registry.json").read_bytes())["submission_sets"].values()

    [export] = [root for root in roots if event_of(root)[0] == "110106"]
    assert outcome_of(export) == "0" and "ITI-41" in event_types(export)
    assert patient_of(export) == cx(patient, issuer) and studies_of(export) == {study_uid}
    [submitted] = objects(export, "20")
    assert id_type(submitted) == SUBMISSION_SET
    assert submitted.get("ParticipantObjectID") == submission_set["uniqueId"]
    repository_url = xds["repository_url"]
    named = participants(export)
    assert named[repository_url] == Active(False, DESTINATION, urlsplit(repository_url).hostname or "")
    assert named["DICOMGW"].requestor and named["DICOMGW"].role == SOURCE

    [entry] = [e for e in log if e["interface"] == "IHE XDS-I.b"]
    assert (entry["event"], entry["outcome"], entry["recipient"], entry["disclosure"]) == (
        "Export", "0", repository_url, True)
    assert (entry["studies"], entry["instances"]) == ([study_uid], 2)


async def test_over_udp_each_message_is_one_datagram(tmp_path: Path, repository: Rsyslog) -> None:
    async with audited(tmp_path, repository, ["receiver", "store", "api"], transport="udp") as gateway:
        study_uid = await holding(gateway, tmp_path, "udp", 2, "P-UDP-1")
        async with (ClientSession(headers=api_headers(gateway.settings.data_dir)) as http,
                    http.get(f"{gateway.api}/dicomweb/studies", params={"PatientID": "P-UDP-1"}) as response):
            assert response.status == 200
        roots = await arrived(repository, lambda roots: {"110100", "110104", "110112"} <= {
            event_of(root)[0] for root in roots})
    received = repository.received()
    assert {message.input for message in received} == {"imudp"}
    all_valid(repository)  # two messages in one datagram would be one message that is not one XML document
    for message in received:
        assert message.pri == 85 and message.raw.startswith(b"<85>1 ")
        assert message.raw.count(b"<?xml") == 1
    stored_ = [root for root in roots if event_of(root) == ("110104", "C")]
    assert {patient_of(root) for root in stored_} == {"P-UDP-1"}
    assert set.union(*(studies_of(root) for root in stored_)) == {study_uid}


async def test_forwarded_instances_are_disclosed_per_patient_to_the_destination(
        tmp_path: Path, repository: Rsyslog, storescp: StoreScp) -> None:
    pacs = {"name": "pacs", **storescp.remote(), "storage_commitment": False}
    async with audited(tmp_path, repository, ["receiver", "store", "api", "forward"], forward={
            "destinations": [pacs], "batch_delay_seconds": 0.3, "max_batch_delay_seconds": 2,
            "retry_initial_seconds": 0.3, "retry_max_seconds": 1}) as gateway:
        first = await holding(gateway, tmp_path, "fwd-a", 1, "P-FWD-A")
        second = await holding(gateway, tmp_path, "fwd-b", 2, "P-FWD-B")
        for uid in (first, second):  # delivered: the storescp has them
            await gateway.until(f"/api/studies/{uid}", lambda body: [(f["destination"], f["state"])
                                                                     for f in body["forwarding"]] == [("pacs", "archived")])
        assert len(list(storescp.received.iterdir())) == 3
        roots = await arrived(repository, lambda roots: {"P-FWD-A", "P-FWD-B"} <= {
            patient_of(root) for root in roots if event_of(root) == ("110104", "R")}, timeout=10,
            what="a DICOM Instances Transferred (R) per patient forwarded")
        logs = {patient: await audit_log(gateway, patient, lambda body: any(
            e["interface"] == "DICOM C-STORE (forward)" for e in body)) for patient in ("P-FWD-A", "P-FWD-B")}
    all_valid(repository)
    forwarded = [root for root in roots if event_of(root) == ("110104", "R")]
    assert {patient_of(root): studies_of(root) for root in forwarded} == {"P-FWD-A": {first}, "P-FWD-B": {second}}
    for root in forwarded:
        named = participants(root)
        assert named[DESTINATION_AE] == Active(False, DESTINATION, "127.0.0.1")
        assert [user for user, p in named.items() if p.requestor and p.role == SOURCE] != []
        assert {o.get("ParticipantObjectDataLifeCycle") for o in objects(root, "1")} == {DISCLOSURE}
    for patient, uid in (("P-FWD-A", first), ("P-FWD-B", second)):
        sent = [e for e in logs[patient] if e["interface"] == "DICOM C-STORE (forward)"]
        assert {(e["event"], e["action"], e["recipient"], e["disclosure"]) for e in sent} == {
            ("DICOM Instances Transferred", "R", DESTINATION_AE, True)}
        assert {s for e in sent for s in e["studies"]} == {uid}


async def test_a_message_too_large_for_a_datagram_is_dead_lettered_and_the_rest_goes_on(
        tmp_path: Path, repository: Rsyslog) -> None:
    """An ADT message with 60 KB of notes: its Patient Record carries it (base64), beyond a UDP datagram. It goes
    to the dead letters with that reason, stays in the local audit log, and the records after it still go."""
    async with audited(tmp_path, repository, ["receiver", "store", "api", "hl7", "patient"], transport="udp",
                       hl7={"host": "127.0.0.1", "port": free_port(), "allowed_senders": [{"application": "HIS"}],
                            "local_authorities": [HOSP], "idle_timeout_seconds": 3},
                       validation={"test_environment": True}) as gateway:
        await stored(gateway, tmp_path, "big", 1, PatientID="P-BIG-1", PatientName="ISO^VIESTI")
        notes = "\r".join(f"NTE|{n}||{'x' * 990}" for n in range(60))
        large = adt("A08", "P-BIG-1", control_id="BIG-1", name="ISO^VIESTI") + "\r" + notes
        small = adt("A08", "P-BIG-1", control_id="BIG-2", name="PIENI^VIESTI")
        acks = await mllp_send(hl7_port(gateway), large, small, tmp=tmp_path)
        assert [(ack.code, ack.control_id) for ack in acks] == [("AA", "BIG-1"), ("AA", "BIG-2")]
        await applied(gateway, "P-BIG-1", "BIG-2")

        roots = await arrived(repository, lambda roots: any(
            event_of(root) == ("110110", "U") and hl7_message(root) == small.encode() for root in roots))
        _, dead = await gateway.until("/api/dlq", lambda body: any(e["stage"] == "audit" for e in body))
        log = await audit_log(gateway, "P-BIG-1", lambda body: sum(e["interface"] == "HL7 v2 ADT" for e in body) >= 2)
    all_valid(repository)
    assert not any(event_of(root)[0] == "110110" and hl7_message(root) == large.encode() for root in roots)
    [entry] = [e for e in dead if e["stage"] == "audit"]
    assert "datagram limit" in entry["reason"] and "P-BIG-1" not in entry["reason"]
    assert [e["action"] for e in log if e["interface"] == "HL7 v2 ADT"] == ["U", "U"]
