"""HL7 v2 ADT over MLLP against the gateway in-process (receiver, store, api, hl7 and patient roles on the
embedded bus), sent by python-hl7's ``mllp_send`` and by HAPI HL7v2; what the messages change is seen through dcmtk's findscu and
getscu, WADO-RS and the operators' API."""

from __future__ import annotations

import asyncio
import hashlib
import io
import ssl
import sys
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hl7
import hl7.mllp
import pydicom
import pytest
from aiohttp import ClientSession, web
from pydicom.dataset import Dataset

from gateway.settings import XdsSettings
from gateway.xds import simulator
from gateway.xds.client import XdsClient
from tests.component.test_notify_embedded import Gateway, running
from tests.component.test_query_retrieve import study
from tests.component.test_receiver_tls import pki
from tests.component.test_register_embedded import REPOSITORY_UID, Simulator, registered
from tests.component.test_register_embedded import study as registered_study
from tests.conftest import dcmtk
from tests.hapi import hapi_send
from tests.helpers import api_headers, free_port, run

__all__ = ["pki"]

QR_AE = "VIEWER"
HOSP = "HOSP"
"""The district's local assigning authority in these tests (the hetu OID 1.2.246.21 is always trusted)."""


def adt(trigger: str, patient: str, *, control_id: str, prior: str | None = None, name: str | None = None,
        birth: str = "", sex: str = "", charset: str = "", authority: str = HOSP, version: str = "2.5",
        application: str = "HIS", facility: str = "HOSP", message_type: str = "ADT") -> str:
    """An ADT message as a HIS sends it (segments separated by CR)."""
    structure = {"A08": "ADT_A01", "A31": "ADT_A05", "A40": "ADT_A39", "A47": "ADT_A30"}.get(trigger, "ADT_A01")
    segments = [
        f"MSH|^~\\&|{application}|{facility}|DICOMGW|DISTRICT|20261130120000||{message_type}^{trigger}^{structure}|"
        f"{control_id}|P|{version}|||||FIN|{charset}".rstrip("|"),
        f"EVN|{trigger}|20261130120000",
        f"PID|1||{patient}^^^{authority}&{authority}&ISO^PI||{name or ''}||{birth}|{sex}",
        "PV1|1|O",
    ]
    if prior is not None:
        segments.append(f"MRG|{prior}^^^{authority}&{authority}&ISO^PI")
    return "\r".join(segments)


@dataclass
class Ack:
    code: str
    control_id: str
    error: str
    segments: list[list[str]]


def acks(output: bytes) -> list[Ack]:
    """The acknowledgments mllp_send printed (each still in its MLLP frame)."""
    found = []
    for framed in output.split(b"\x1c\r"):
        text = framed.strip(b"\x0b\r\n")
        if not text:
            continue
        segments = [line.split("|") for line in text.decode("latin-1").split("\r") if line]
        msa = next(fields for fields in segments if fields[0] == "MSA")
        err = next((fields for fields in segments if fields[0] == "ERR"), None)
        found.append(Ack(msa[1], msa[2], err[3].split("^")[0] if err else "", segments))
    return found


async def mllp_send(port: int, *messages: str | bytes, encoding: str = "utf-8", tmp: Path) -> list[Ack]:
    """python-hl7's mllp_send, one connection for all ``messages``, each encoded as ``encoding``."""
    path = tmp / f"messages-{free_port()}.hl7"
    path.write_bytes(b"".join(b"\x0b" + (m if isinstance(m, bytes) else m.encode(encoding)) + b"\x1c\r"
                              for m in messages))
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "mllp_send"), "-f", str(path), "-p", str(port), "127.0.0.1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode(errors="replace")
    return acks(out)


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running(tmp_path, ["receiver", "store", "api", "hl7", "patient"], dicom={
        "allowed_aes": [{"ae_title": "MODALITY1"}, {"ae_title": QR_AE, "permissions": ["query", "retrieve"]}],
    }, hl7={"host": "127.0.0.1", "port": free_port(), "allowed_senders": [{"application": "HIS"}],
            "local_authorities": [HOSP], "idle_timeout_seconds": 3},
            validation={"test_environment": True}) as gateway:
        yield gateway


def hl7_port(gateway: Gateway) -> int:
    port = gateway.settings.hl7.port
    assert port is not None
    return port


async def stored(gateway: Gateway, tmp_path: Path, name: str, count: int, **attributes: Any) -> list[Dataset]:
    made = study(tmp_path, name, count, IssuerOfPatientID=HOSP, **attributes)
    await gateway.store(*(path for path, _ in made))
    uid = made[0][1].StudyInstanceUID
    await gateway.until("/api/studies?limit=1000", lambda body: any(
        s["study_instance_uid"] == uid and s["instances"] == count for s in body))
    return [dataset for _, dataset in made]


async def applied(gateway: Gateway, patient_id: str, control_id: str) -> dict[str, Any]:
    """The patient's record once the message with ``control_id`` shows in its history."""
    _, body = await gateway.until(f"/api/patients/{patient_id}?issuer={HOSP}", lambda body: any(
        change["message"] == control_id for change in body["history"]))
    return dict(body)


async def find(gateway: Gateway, tmp_path: Path, *keys: str) -> list[Dataset]:
    out = tmp_path / f"found-{free_port()}"
    out.mkdir()
    code, output = await run(dcmtk("findscu"), "-S", "-aet", QR_AE, "-aec", "DICOMGW", "-X", "-od", str(out),
                             "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "-k", "PatientName",
                             *(arg for key in keys for arg in ("-k", key)),
                             "127.0.0.1", str(gateway.settings.dicom.port))
    assert code == 0, output
    return [pydicom.dcmread(path) for path in sorted(out.iterdir())]


async def get_study(gateway: Gateway, tmp_path: Path, study_uid: str) -> list[Path]:
    out = tmp_path / f"got-{free_port()}"
    out.mkdir()
    code, output = await run(dcmtk("getscu"), "-S", "-aet", QR_AE, "-aec", "DICOMGW", "-od", str(out),
                             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}",
                             "127.0.0.1", str(gateway.settings.dicom.port))
    assert code == 0, output
    return sorted(out.iterdir())


def objects_digest(gateway: Gateway) -> dict[str, str]:
    root = gateway.settings.data_dir / "objects"
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest() for path in root.rglob("*") if path.is_file()}


async def test_a08_in_iso_8859_1_renames_the_patient_in_c_find_and_in_the_files_served_not_in_the_stored_ones(
        gateway: Gateway, tmp_path: Path) -> None:
    [first, *_] = await stored(gateway, tmp_path, "a", 2, PatientID="P100", PatientName="MAKELA^JYRKI",
                               PatientBirthDate="19700101", PatientSex="M", SpecificCharacterSet="")
    before = objects_digest(gateway)
    message = adt("A08", "P100", control_id="M-1", name="Mäkelä^Jyrki", birth="19700102", sex="M",
                  charset="8859/1")
    [ack] = await mllp_send(hl7_port(gateway), message, encoding="latin-1", tmp=tmp_path)
    assert (ack.code, ack.control_id) == ("AA", "M-1")
    msh = ack.segments[0]
    assert msh[8] == "ACK^A08^ACK" and (msh[2], msh[3], msh[4], msh[5]) == ("DICOMGW", "DISTRICT", "HIS", "HOSP")
    record = await applied(gateway, "P100", "M-1")
    assert (record["PatientName"], record["PatientBirthDate"]) == ("Mäkelä^Jyrki", "19700102")
    [answer] = await find(gateway, tmp_path, "PatientID=P100")
    assert str(answer.PatientName) == "Mäkelä^Jyrki"
    files = await get_study(gateway, tmp_path, first.StudyInstanceUID)
    assert len(files) == 2
    for path in files:
        served = pydicom.dcmread(path)
        assert served.SpecificCharacterSet == "ISO_IR 100"
        assert str(served.PatientName) == "Mäkelä^Jyrki" and served.PatientBirthDate == "19700102"
        assert "Mäkelä".encode("latin-1") in path.read_bytes()
        assert served.PixelData == first.PixelData
    assert objects_digest(gateway) == before  # stored objects are never rewritten


async def wado(gateway: Gateway, study_uid: str) -> tuple[dict[str, Any], Dataset]:
    """WADO-RS metadata and the (first) instance of a study."""
    url = f"{gateway.api}/dicomweb/studies/{study_uid}"
    async with ClientSession(headers=api_headers(gateway.settings.data_dir)) as http:
        async with http.get(f"{url}/metadata") as response:
            assert response.status == 200
            [metadata, *_] = await response.json()
        async with http.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'}) as response:
            body = await response.read()
    part = body[body.index(b"\r\n\r\n") + 4: body.rindex(b"\r\n--")]
    return metadata, pydicom.dcmread(io.BytesIO(part))


async def test_a31_in_utf_8_is_served_by_wado_rs_in_a_character_set_that_holds_every_value(
        gateway: Gateway, tmp_path: Path) -> None:
    [ascii_only] = await stored(gateway, tmp_path, "u", 1, PatientID="P200", PatientName="AHO^ASKO",
                                SpecificCharacterSet="")
    [latin] = await stored(gateway, tmp_path, "l", 1, PatientID="P201", PatientName="SMIT^ANA",
                           SpecificCharacterSet="ISO_IR 100", StudyDescription="Pää ja kaula")
    answers = await mllp_send(hl7_port(gateway),
                              adt("A31", "P200", control_id="U-1", name="Åhö^Äskö", charset="UNICODE UTF-8"),
                              adt("A31", "P201", control_id="U-2", name="Šmit^Ana", charset="UNICODE UTF-8"),
                              tmp=tmp_path)
    assert [a.code for a in answers] == ["AA", "AA"]
    await applied(gateway, "P200", "U-1")
    await applied(gateway, "P201", "U-2")
    metadata, served = await wado(gateway, ascii_only.StudyInstanceUID)
    assert metadata["00100010"]["Value"][0]["Alphabetic"] == "Åhö^Äskö"
    assert served.SpecificCharacterSet == "ISO_IR 192" and str(served.PatientName) == "Åhö^Äskö"
    # Š is not in ISO 8859-1: the whole header is written again in UTF-8, its other text intact
    _, served = await wado(gateway, latin.StudyInstanceUID)
    assert served.SpecificCharacterSet == "ISO_IR 192"
    assert (str(served.PatientName), served.StudyDescription) == ("Šmit^Ana", "Pää ja kaula")


async def test_a40_merges_the_prior_patients_studies_into_the_surviving_one_and_keeps_the_history(
        gateway: Gateway, tmp_path: Path) -> None:
    prior_study = await stored(gateway, tmp_path, "p", 2, PatientID="P301", PatientName="VIRTANEN^ANNA")
    survivor_study = await stored(gateway, tmp_path, "s", 1, PatientID="P302", PatientName="VIRTANEN^ANNA^MARIA")
    [ack] = await mllp_send(hl7_port(gateway), adt("A40", "P302", prior="P301", control_id="G-1",
                                                   name="VIRTANEN^ANNA^MARIA"), tmp=tmp_path)
    assert ack.code == "AA"
    record = await applied(gateway, "P302", "G-1")
    assert {s["study_instance_uid"] for s in record["studies"]} == {
        prior_study[0].StudyInstanceUID, survivor_study[0].StudyInstanceUID}
    merge = next(change for change in record["history"] if change["message"] == "G-1")
    assert merge["action"] == "merged" and merge["other_patient"] == {"patient_id": "P301", "issuer": HOSP}
    assert merge["sender"] == "HIS^HOSP" and merge["trigger"] == "A40"
    _, prior = await gateway.get(f"/api/patients/P301?issuer={HOSP}")
    assert prior["merged_into"] == {"patient_id": "P302", "issuer": HOSP} and prior["studies"] == []
    assert await find(gateway, tmp_path, "PatientID=P301") == []
    found = await find(gateway, tmp_path, "PatientID=P302")
    assert {answer.StudyInstanceUID for answer in found} == {
        prior_study[0].StudyInstanceUID, survivor_study[0].StudyInstanceUID}
    files = await get_study(gateway, tmp_path, prior_study[0].StudyInstanceUID)
    assert {pydicom.dcmread(path).PatientID for path in files} == {"P302"}
    # a modality still sending the merged identifier: filed under the survivor, not quarantined
    late = await stored(gateway, tmp_path, "late", 1, PatientID="P301", PatientName="VIRTANEN^ANNA")
    _, late_study = await gateway.get(f"/api/studies/{late[0].StudyInstanceUID}")
    assert late_study["patient"]["PatientID"] == "P302"
    assert late_study["series"][0]["instances"][0]["status"] == "stored"
    # and one sending the survivor's identifier for the prior patient's study: admitted too
    more = study(tmp_path, "more", 1, IssuerOfPatientID=HOSP, PatientID="P302", PatientName="VIRTANEN^ANNA^MARIA")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        more[0][1].StudyInstanceUID = prior_study[0].StudyInstanceUID
        more[0][1].save_as(more[0][0], enforce_file_format=True)
    await gateway.store(more[0][0])
    _, merged_study = await gateway.until(f"/api/studies/{prior_study[0].StudyInstanceUID}", lambda body: sum(
        len(s["instances"]) for s in body["series"]) == 3)
    assert {i["status"] for s in merged_study["series"] for i in s["instances"]} == {"stored"}


async def test_refusals_self_merge_a47_onto_an_existing_identifier_merged_identifier_and_bad_messages(
        gateway: Gateway, tmp_path: Path) -> None:
    await stored(gateway, tmp_path, "r", 1, PatientID="P401", PatientName="KORHONEN^PEKKA")
    await stored(gateway, tmp_path, "q", 1, PatientID="P402", PatientName="KORHONEN^PEKKA")
    port = hl7_port(gateway)
    answers = await mllp_send(
        port,
        adt("A40", "P401", prior="P401", control_id="R-1"),  # self-merge
        adt("A47", "P402", prior="P401", control_id="R-2"),  # the new identifier exists already
        adt("A99", "P401", control_id="R-3"),  # unknown trigger
        adt("A01", "P401", control_id="R-4", message_type="ORU"),  # not ADT
        adt("A08", "", control_id="R-5"),  # no PID-3
        adt("A40", "P401", control_id="R-6"),  # no MRG
        adt("A08", "P401", control_id="R-7", authority="ELSEWHERE"),  # untrusted assigning authority
        adt("A08", "P401", control_id="R-8", application="INTRUDER"),  # sender not allowed
        adt("A08", "P401", control_id="R-9", birth="1970-01-01"),  # not a date
        adt("A08", "010594Y9033", control_id="R-10", authority="1.2.246.21"),  # hetu check character
        tmp=tmp_path)
    got = [(a.control_id, a.code, a.error) for a in answers]
    assert got == [("R-1", "AE", "205"), ("R-2", "AE", "205"), ("R-3", "AR", "201"), ("R-4", "AR", "200"),
                   ("R-5", "AE", "101"), ("R-6", "AE", "101"), ("R-7", "AE", "204"), ("R-8", "AR", "103"),
                   ("R-9", "AE", "102"), ("R-10", "AE", "102")]
    err = next(fields for fields in answers[0].segments if fields[0] == "ERR")
    assert err[2] == "MRG^1^1" and err[4] == "E"
    [merged] = await mllp_send(port, adt("A40", "P402", prior="P401", control_id="R-11"), tmp=tmp_path)
    assert merged.code == "AA"
    await applied(gateway, "P402", "R-11")
    [late] = await mllp_send(port, adt("A08", "P401", control_id="R-12", name="X^Y"), tmp=tmp_path)
    assert (late.code, late.error) == ("AE", "204")  # the merged identifier is no longer updated
    odd = await mllp_send(port, adt("A08", "P401", control_id="R-13", charset="UNICODE UTF-16"),
                          adt("Z" * 200, "P401", control_id="R-14"), tmp=tmp_path)
    assert [(a.control_id, a.code, a.error) for a in odd] == [("R-13", "AR", "103"), ("R-14", "AR", "201")]
    async with ClientSession() as http, http.get(f"{gateway.api}/metrics") as response:
        metrics = await response.text()
    assert 'dicomgw_hl7_messages_total{acknowledgment="AR",trigger="other"}' in metrics
    assert "ZZZ" not in metrics  # a trigger a sender invents is no label
    _, record = await gateway.get(f"/api/patients/P402?issuer={HOSP}")
    assert len(record["studies"]) == 2


async def test_a47_changes_the_identifier_and_a_resent_message_is_applied_once(
        gateway: Gateway, tmp_path: Path) -> None:
    [first] = await stored(gateway, tmp_path, "c", 1, PatientID="TMP-900", PatientName="UNKNOWN^MALE")
    message = adt("A47", "P500", prior="TMP-900", control_id="C-1", name="NIEMINEN^VEIKKO")
    answers = await mllp_send(hl7_port(gateway), message, message, tmp=tmp_path)
    assert [(a.code, a.control_id) for a in answers] == [("AA", "C-1"), ("AA", "C-1")]
    record = await applied(gateway, "P500", "C-1")
    assert record["PatientName"] == "NIEMINEN^VEIKKO"
    assert [s["study_instance_uid"] for s in record["studies"]] == [first.StudyInstanceUID]
    assert [c["action"] for c in record["history"] if c["message"] == "C-1"].count("identifier-changed") == 1
    [answer] = await find(gateway, tmp_path, "PatientID=P500")
    assert answer.StudyInstanceUID == first.StudyInstanceUID
    assert await find(gateway, tmp_path, "PatientID=TMP-900") == []


async def test_mllp_framing_garbage_split_writes_and_oversized_messages(gateway: Gateway, tmp_path: Path) -> None:
    port = hl7_port(gateway)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        one = adt("A08", "P600", control_id="F-1", name="LAINE^OLLI").encode()
        two = adt("A08", "P600", control_id="F-2", name="LAINE^OLLI^J").encode()
        writer.write(b"garbage before any frame\r\n" + b"\x0b" + one[:10])
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(one[10:] + b"\x1c\r\x0b" + two + b"\x1c\r")  # the rest of one and all of two in one write
        await writer.drain()
        for expected in ("F-1", "F-2"):
            answer = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 30)
            assert f"MSA|AA|{expected}".encode() in answer
        writer.write(b"\x0bnot an HL7 message\x1c\r")
        answer = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 30)
        assert b"MSA|AR|" in answer and b"|100^" in answer
        filler = "NTE|1||" + "x" * 1_100_000
        writer.write(b"\x0b" + (adt("A08", "P600", control_id="F-3") + "\r" + filler).encode() + b"\x1c\r")
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 30)
        assert b"MSA|AE|" in answer and b"exceeds the limit" in answer
        writer.write(b"\x0b" + two.replace(b"F-2", b"F-4") + b"\x1c\r")
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 30)
        assert b"MSA|AA|F-4" in answer  # the connection is still usable
    finally:
        writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"\x0bMSH|^~\\&|HIS|")  # a frame begun and never finished
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 30) == b""  # closed once idle, without an answer
    finally:
        writer.close()
    big = adt("A08", "P600", control_id="F-5", name="LAINE^OLLI") + "\rNTE|1||" + "y" * 990_000
    [ack] = await mllp_send(port, big, tmp=tmp_path)
    assert ack.code == "AA"  # a 1 MB message is within the limit
    await applied(gateway, "P600", "F-5")


class Upstream:
    """The national service's HL7 interface as python-hl7's asyncio MLLP server: records what it receives and
    answers AA, or AE with error 207 for a control ID listed in ``refuse``."""

    def __init__(self, port: int, refuse: set[str], tls: ssl.SSLContext | None = None) -> None:
        self.port = port
        self.refuse = refuse
        self.tls = tls
        self.received: list[str] = []

    async def serve(self, reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        try:
            while not reader.at_eof():
                message = await reader.readmessage()
                control_id = str(message.segment("MSH")[10])
                self.received.append(control_id)
                refused = control_id in self.refuse
                ack = message.create_ack("AE" if refused else "AA")
                if refused:
                    ack = hl7.parse(str(ack) + "\rERR||PID^1^3|207^Application internal error^HL70357|E")
                writer.writemessage(ack)
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> Upstream:
        self.server = await hl7.mllp.start_hl7_server(self.serve, "127.0.0.1", self.port, encoding="latin-1",
                                                      ssl=self.tls)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.server.close()
        await self.server.wait_closed()


async def test_accepted_messages_are_passed_on_upstream_in_order_through_an_outage_and_a_refusal_dead_letters(
        tmp_path: Path) -> None:
    upstream_port, port = free_port(), free_port()
    async with running(tmp_path, ["api", "hl7", "patient"], hl7={
        "host": "127.0.0.1", "port": port, "allowed_senders": [{"application": "HIS"}], "local_authorities": [HOSP],
        "forward_to": {"host": "127.0.0.1", "port": upstream_port, "timeout_seconds": 5, "retry_max_seconds": 1},
    }) as gateway:
        first = [adt("A08", "P700", control_id=f"X-{n}", name=f"HÄME^ANNA^{n}", charset="8859/1")
                 for n in (1, 2)]
        answers = await mllp_send(port, *first, encoding="latin-1", tmp=tmp_path)
        assert [a.code for a in answers] == ["AA", "AA"]  # acknowledged while the upstream is down
        await asyncio.sleep(2)
        async with Upstream(upstream_port, refuse={"X-3"}) as upstream:
            later = [adt("A08", "P700", control_id=f"X-{n}", name="HÄME^ANNA", charset="8859/1") for n in (3, 4)]
            answers = await mllp_send(port, *later, encoding="latin-1", tmp=tmp_path)
            assert [a.code for a in answers] == ["AA", "AA"]
            async with asyncio.timeout(60):
                while len(upstream.received) < 4:
                    await asyncio.sleep(0.1)
        assert upstream.received == ["X-1", "X-2", "X-3", "X-4"]
        _, entries = await gateway.until("/api/dlq", lambda body: any(
            e["stage"] == "hl7-forward" for e in body))
        [entry] = [e for e in entries if e["stage"] == "hl7-forward"]
        assert entry["reason"] == "hl7.adt: upstream answered AE with error code 207"


async def test_hapi_hl7v2_as_the_sender_gets_its_acknowledgments_and_its_latin_1_name_arrives_intact(
        gateway: Gateway, tmp_path: Path) -> None:
    [made] = await stored(gateway, tmp_path, "h", 1, PatientID="P800", PatientName="SODERSTROM^AKE",
                          SpecificCharacterSet="")
    messages = [adt("A08", "P800", control_id="H-1", name="Söderström^Åke", charset="8859/1", version="2.3.1"),
                adt("A40", "P801", prior="P800", control_id="H-2", name="Söderström^Åke", charset="8859/1"),
                adt("A99", "P801", control_id="H-3")]
    answers = await asyncio.to_thread(hapi_send, "127.0.0.1", hl7_port(gateway), messages, "ISO-8859-1")
    codes = [next(line.split("|")[1:3] for line in answer.split("\r") if line.startswith("MSA")) for answer in answers]
    assert codes == [["AA", "H-1"], ["AA", "H-2"], ["AR", "H-3"]]
    record = await applied(gateway, "P801", "H-2")
    assert record["PatientName"] == "Söderström^Åke" and record["SpecificCharacterSet"] == "ISO_IR 100"
    [answer] = await find(gateway, tmp_path, "PatientID=P801")
    assert answer.StudyInstanceUID == made.StudyInstanceUID and str(answer.PatientName) == "Söderström^Åke"


async def test_mllp_over_tls_from_hapi_and_on_to_a_tls_upstream(tmp_path: Path, pki: Path) -> None:
    upstream_port, port = free_port(), free_port()
    async with running(tmp_path, ["api", "hl7", "patient"], hl7={
        "host": "127.0.0.1", "port": port, "allowed_senders": [{"application": "HIS"}], "local_authorities": [HOSP],
        "tls": {"cert_file": pki / "server.pem", "key_file": pki / "server.key"},
        "forward_to": {"host": "127.0.0.1", "port": upstream_port, "tls": True, "ca_file": pki / "ca.pem",
                       "timeout_seconds": 5, "retry_max_seconds": 1},
    }) as gateway:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki / "server.pem", pki / "server.key")
        async with Upstream(upstream_port, refuse=set(), tls=context) as upstream:
            message = adt("A08", "P900", control_id="T-1", name="TURVA^TIINA")
            [answer] = await asyncio.to_thread(hapi_send, "127.0.0.1", port, [message], tls_ca=pki / "ca.pem")
            assert answer.split("\r")[1].startswith("MSA|AA|T-1")
            with pytest.raises(RuntimeError):  # the port speaks TLS only
                await asyncio.to_thread(hapi_send, "127.0.0.1", port, [message], timeout=5)
            async with asyncio.timeout(60):
                while upstream.received != ["T-1"]:
                    await asyncio.sleep(0.1)
            await applied(gateway, "P900", "T-1")


async def kos_of(registry: Simulator, document_unique_id: str) -> Dataset:
    settings = XdsSettings(**{k: v for k, v in registry.xds().items() if k in XdsSettings.model_fields})
    async with XdsClient(settings) as client:
        return pydicom.dcmread(io.BytesIO(await client.retrieve_document(document_unique_id, REPOSITORY_UID)))


@pytest.fixture
async def feed(tmp_path: Path) -> AsyncIterator[tuple[Simulator, int]]:
    """The XDS simulator with its ITI-8 Patient Identity Feed, where the gateway passes ADT on to."""
    port, feed_port = free_port(), free_port()
    runner = web.AppRunner(simulator.create_app(tmp_path / "xds", repository_unique_id=REPOSITORY_UID,
                                                patient_feed=("127.0.0.1", feed_port)))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield Simulator(tmp_path / "xds", port), feed_port
    await runner.cleanup()


@pytest.mark.parametrize("reregister", [False, True])
async def test_registered_manifests_follow_a_merge_by_the_next_registration_or_at_once_when_the_domain_wants_it(
        tmp_path: Path, feed: tuple[Simulator, int], reregister: bool) -> None:
    """The merge goes on to the registry's identity feed, which merges the registered entries' patientId; the
    gateway's next manifest, a replacement, carries the surviving patient."""
    registry, feed_port = feed
    files = registered_study(tmp_path, 3)
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    study_uid, prior = str(header.StudyInstanceUID), str(header.PatientID)
    survivor, port = "010594Y9032", free_port()
    async with running(tmp_path, ["receiver", "store", "notify", "api", "register", "hl7", "patient"],
                       xds={**registry.xds(), "reregister_on_patient_change": reregister},
                       hl7={"host": "127.0.0.1", "port": port, "allowed_senders": [{"application": "HIS"}],
                            "forward_to": {"host": "127.0.0.1", "port": feed_port, "retry_max_seconds": 1}},
                       validation={"test_environment": True}) as gateway:
        await gateway.store(*files[:2])
        first = (await registered(gateway, study_uid))["manifests"][0]
        merge = adt("A40", survivor, prior=prior, control_id="X-1", name="Yhdistetty^Potilas", charset="8859/1",
                    authority="1.2.246.21")
        [ack] = await mllp_send(port, merge, encoding="latin-1", tmp=tmp_path)
        assert ack.code == "AA"
        await gateway.until(f"/api/patients/{survivor}", lambda body: len(body["studies"]) == 1)
        if reregister:  # the study becomes stable again as a new generation, whose manifest replaces the first
            latest = (await registered(gateway, study_uid, generation=2))["manifests"][0]
        else:
            await asyncio.sleep(4)  # twice the stability time: nothing is registered again
            _, body = await gateway.get(f"/api/studies/{study_uid}")
            assert [m["generation"] for m in body["registration"]["manifests"]] == [1]
            await gateway.store(*files[2:])
            latest = (await registered(gateway, study_uid, generation=2))["manifests"][0]
        _, found = await gateway.get(f"/api/xds/documents?patient_id={survivor}")
    assert (await registry.status())["merges"] == 1
    assert latest["replaces_entry_uuid"] == first["entry_uuid"]
    assert [entry["uniqueId"] for entry in found] == [latest["document_unique_id"]]
    kos = await kos_of(registry, latest["document_unique_id"])
    assert (kos.PatientID, str(kos.PatientName)) == (survivor, "Yhdistetty^Potilas")
    assert kos.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == "1.2.246.21"
