"""The audit trail end to end on the embedded bus, with a real rsyslog as the audit record repository: what the
DICOM, DICOMweb and API interfaces do to a patient's data arrives there as DICOM audit messages that validate
against the PS3.15 A.5 schema, and the local audit log answers a patient's information request."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession
from lxml import etree
from pydicom.filereader import read_dataset

from gateway.audit.message import validate
from tests.component.test_hl7 import QR_AE, get_study
from tests.component.test_iocm_embedded import study
from tests.component.test_notify_embedded import Gateway, running
from tests.conftest import dcmtk
from tests.helpers import api_headers, free_port, run
from tests.rsyslog import BOM, ReceivedMessage, Rsyslog, make_pki

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
FIND_STUDY_ROOT = "1.2.840.10008.5.1.4.1.2.2.1"


@pytest.fixture
def repository(tmp_path: Path) -> AsyncIterator[Rsyslog]:
    (tmp_path / "rsyslog").mkdir()
    syslog = Rsyslog(tmp_path / "rsyslog", make_pki(tmp_path / "pki"))
    syslog.start()
    try:
        yield syslog  # type: ignore[misc]
    finally:
        syslog.stop()


@pytest.fixture
async def audited(tmp_path: Path, repository: Rsyslog) -> AsyncIterator[Gateway]:
    async with running(tmp_path, roles=["receiver", "store", "api", "audit"], dicom={
        "allowed_aes": [{"ae_title": "MODALITY1"}, {"ae_title": QR_AE, "permissions": ["query", "retrieve"]}],
        "remote_aes": [{"ae_title": "ARCHIVE", "host": "127.0.0.1", "port": free_port()}],
    }, audit={"repository_url": f"tls://127.0.0.1:{repository.tls_port}", "ca_file": str(repository.ca_file),
              "source_id": "DISTRICT-GW", "enterprise_site_id": "1.2.246.10.2048198"}) as gateway:
        yield gateway


def xml_of(message: ReceivedMessage) -> etree._Element:
    assert message.msg.startswith(BOM)
    return etree.fromstring(message.msg.removeprefix(BOM))


def event_of(root: etree._Element) -> tuple[str, str]:
    identification = root.find("EventIdentification")
    assert identification is not None
    event = identification.find("EventID")
    assert event is not None
    return event.get("csd-code", ""), identification.get("EventActionCode", "")


def patient_of(root: etree._Element) -> str:
    found = [o.get("ParticipantObjectID", "") for o in root.iter("ParticipantObjectIdentification")
             if o.get("ParticipantObjectTypeCodeRole") == "1"]
    return found[0] if found else ""


async def messages_until(repository: Rsyslog, wanted: Any, timeout: float = 30) -> list[etree._Element]:
    """The repository's messages as XML once ``wanted`` holds of them."""
    async with asyncio.timeout(timeout):
        while True:
            roots = [xml_of(message) for message in repository.received()]
            if wanted(roots):
                return roots
            await asyncio.sleep(0.2)


async def test_store_query_retrieve_and_api_reads_reach_the_repository_and_the_audit_log(
        audited: Gateway, repository: Rsyslog, tmp_path: Path) -> None:
    datasets = study(tmp_path, 1, 3)
    patient, study_uid = str(datasets[0].PatientID), str(datasets[0].StudyInstanceUID)
    await audited.store(*(tmp_path / f"{d.SOPInstanceUID}.dcm" for d in datasets))
    await audited.until(f"/api/studies/{study_uid}", lambda body: len(body["series"][0]["instances"]) == 3)

    found_dir = tmp_path / "found"
    found_dir.mkdir()
    code, output = await run(dcmtk("findscu"), "-S", "-aet", QR_AE, "-aec", "DICOMGW", "-X", "-od", str(found_dir),
                             "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={patient}",
                             "-k", "StudyInstanceUID", "127.0.0.1", str(audited.settings.dicom.port))
    assert code == 0, output
    got = await get_study(audited, tmp_path, study_uid)
    assert len(got) == 3
    async with ClientSession(headers=api_headers(audited.settings.data_dir)) as http:
        async with http.get(f"{audited.api}/dicomweb/studies/{study_uid}",
                            headers={"Accept": 'multipart/related; type="application/dicom"'}) as response:
            assert response.status == 200
            await response.read()
        async with http.get(f"{audited.api}/api/studies", params={"patient_id": patient}) as response:
            assert response.status == 200

    roots = await messages_until(repository, lambda roots: {"110102", "110112"} <= {
        event_of(root)[0] for root in roots} and sum(event_of(root) == ("110104", "R") for root in roots) >= 2)

    for message in repository.received():
        assert (message.pri, message.version, message.msgid, message.app_name) == (85, "1", "IHE+RFC-3881",
                                                                                   "dicom-gateway")
        assert validate(message.msg.removeprefix(BOM)) == [], message.msg[:300]
    events = [event_of(root) for root in roots]
    assert events[0] == ("110100", "E")  # Application Start, written before any role took work
    # one record per study, sender and patient of each store batch: together they count every instance once
    received = [root for root in roots if event_of(root) == ("110104", "C")]
    assert {patient_of(root) for root in received} == {patient}
    counted = [(s.get("UID"), int(s.get("NumberOfInstances", "0"))) for root in received for s in root.iter("SOPClass")]
    assert {uid for uid, _ in counted} == {CT_IMAGE} and sum(n for _, n in counted) == 3
    source = received[0].find("AuditSourceIdentification")
    assert source is not None and source.get("AuditSourceID") == "DISTRICT-GW"
    assert source.get("AuditEnterpriseSiteID") == "1.2.246.10.2048198"
    roles = {p.get("UserID"): p.find("RoleIDCode").get("csd-code")  # type: ignore[union-attr]
             for p in received[0].iter("ActiveParticipant")}
    assert roles == {"MODALITY1": "110153", "DICOMGW": "110152"}

    query = next(root for root in roots if event_of(root)[0] == "110112" and FIND_STUDY_ROOT in {
        o.get("ParticipantObjectID") for o in root.iter("ParticipantObjectIdentification")})
    assert patient_of(query) == patient  # the identifier names one patient: whose data it read
    identifier = base64.b64decode(query.findtext(".//ParticipantObjectQuery") or "")
    details = {d.get("type"): base64.b64decode(d.get("value", "")).decode()
               for d in query.iter("ParticipantObjectDetail")}
    asked = read_dataset(io.BytesIO(identifier), details["TransferSyntax"] == "1.2.840.10008.1.2", True)
    assert asked.PatientID == patient and asked.QueryRetrieveLevel == "STUDY"

    sent = [root for root in roots if event_of(root) == ("110104", "R")]
    disclosed = [root for root in sent if patient_of(root) == patient]
    assert len(disclosed) == 2, _debug(sent)  # C-GET and WADO-RS
    for root in disclosed:
        lifecycle = {o.get("ParticipantObjectDataLifeCycle") for o in root.iter("ParticipantObjectIdentification")}
        assert lifecycle == {"11"}

    status, log = await audited.until(f"/api/audit?patient_id={patient}", lambda body: len(body) >= 6)
    interfaces = [(entry["event"], entry["interface"], entry["disclosure"]) for entry in log]
    assert ("DICOM Instances Transferred", "DICOM C-STORE", False) in interfaces
    assert ("DICOM Instances Transferred", "DICOM C-GET", True) in interfaces
    assert ("DICOM Instances Transferred", "DICOMweb WADO-RS", True) in interfaces
    assert ("Begin Transferring DICOM Instances", "DICOM C-GET", False) in interfaces
    assert ("Query", "Operators' API", False) in interfaces
    get = next(entry for entry in log if entry["interface"] == "DICOM C-GET" and entry["disclosure"])
    assert (get["actor"], get["recipient"], get["studies"], get["instances"]) == (QR_AE, QR_AE, [study_uid], 3)

    code, output = await run(sys.executable, "-m", "gateway.cli", "audit", "export", "--patient", patient,
                             "--format", "json", env={**os.environ, "GATEWAY_DATA_DIR": str(audited.settings.data_dir)})
    assert code == 0, output
    report = orjson.loads(output[output.index("{"):])
    assert report["patient_id"] == patient and report["disclosures"] >= 2
    assert {entry["interface"] for entry in report["entries"]} >= {"DICOM C-STORE", "DICOM C-GET", "DICOMweb WADO-RS"}


async def test_refusals_are_security_events_and_reading_the_log_is_audited(
        audited: Gateway, repository: Rsyslog, tmp_path: Path) -> None:
    datasets = study(tmp_path, 1, 1)
    code, output = await run(dcmtk("storescu"), "-aet", "STRANGER", "-aec", "DICOMGW", "127.0.0.1",
                             str(audited.settings.dicom.port), str(tmp_path / f"{datasets[0].SOPInstanceUID}.dcm"))
    assert code != 0
    async with ClientSession() as http:
        async with http.get(f"{audited.api}/api/studies", headers={"Authorization": "Bearer wrong"}) as response:
            assert response.status == 401
    status, _ = await audited.get("/api/audit?patient_id=010101-123N")
    assert status == 200

    roots = await messages_until(repository, lambda roots: {"110113", "110114", "110101"} <= {
        event_of(root)[0] for root in roots})

    alert = next(root for root in roots if event_of(root)[0] == "110113")
    assert alert.find("EventIdentification").get("EventOutcomeIndicator") == "4"  # type: ignore[union-attr]
    assert [p.get("UserID") for p in alert.iter("ActiveParticipant")][0] == "STRANGER"
    login = next(root for root in roots if event_of(root)[0] == "110114"
                 and root.find("EventIdentification").get("EventOutcomeIndicator") == "4")  # type: ignore[union-attr]
    assert login.find(".//EventTypeCode").get("csd-code") == "110122"  # type: ignore[union-attr]
    used = next(root for root in roots if event_of(root)[0] == "110101")
    assert patient_of(used) == "010101-123N"
    failures = [m for m in repository.received() if xml_of(m).find("EventIdentification").get(  # type: ignore[union-attr]
        "EventOutcomeIndicator") != "0"]
    assert failures and {m.pri for m in failures} == {84}


def _debug(roots: list[etree._Element]) -> str:
    return "\n".join(etree.tostring(root).decode()[:1500] for root in roots)


async def test_a_rejection_note_and_a_failed_tls_handshake_are_audited(
        tmp_path: Path, repository: Rsyslog, test_env: dict[str, str]) -> None:
    pki = tmp_path / "pki"
    async with running(tmp_path, roles=["receiver", "store", "api", "audit"], dicom={
        "allowed_aes": [{"ae_title": "MODALITY1"}],
        "tls": {"port": free_port(), "cert_file": str(pki / "server.pem"), "key_file": str(pki / "server.key"),
                "ca_file": str(pki / "ca.pem"), "require_client_cert": True},
        "tls_only": False,
    }, audit={"repository_url": f"tls://127.0.0.1:{repository.tls_port}", "ca_file": str(repository.ca_file)},
    ) as gateway:
        datasets = study(tmp_path, 1, 2)
        patient, study_uid = str(datasets[0].PatientID), str(datasets[0].StudyInstanceUID)
        await gateway.store(*(tmp_path / f"{d.SOPInstanceUID}.dcm" for d in datasets))
        await gateway.until(f"/api/studies/{study_uid}", lambda body: len(body["series"][0]["instances"]) == 2)
        code, output = await run(sys.executable, "-m", "gateway.cli", "reject", study_uid, "--reason", "113001",
                                 env=test_env | {"GATEWAY_DATA_DIR": str(gateway.settings.data_dir)})
        assert code == 0, output
        code, output = await run(dcmtk("storescu"), "+tls", str(pki / "stranger.key"), str(pki / "stranger.pem"),
                                 "+cf", str(pki / "ca.pem"), "-aet", "MODALITY1", "-aec", "DICOMGW", "127.0.0.1",
                                 str(gateway.settings.dicom.tls.port), str(tmp_path / f"{datasets[0].SOPInstanceUID}.dcm"))
        assert code != 0, output

        roots = await messages_until(repository, lambda roots: {"110105", "110113"} <= {
            event_of(root)[0] for root in roots})

    deleted = next(root for root in roots if event_of(root)[0] == "110105")
    assert event_of(deleted)[1] == "D" and patient_of(deleted) == patient
    assert "113001" in (deleted.findtext(".//EventOutcomeDescription") or "")
    assert [p.get("UserID") for p in deleted.iter("ActiveParticipant")][0] == "DICOMGW-CLI"
    refused = next(root for root in roots if event_of(root)[0] == "110113")
    assert refused.find(".//EventTypeCode").get("csd-code") == "110126"  # type: ignore[union-attr]
    assert [p.get("NetworkAccessPointID") for p in refused.iter("ActiveParticipant")][0] == "127.0.0.1"
    assert all(validate(m.msg.removeprefix(BOM)) == [] for m in repository.received())
