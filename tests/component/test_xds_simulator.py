"""The XDS simulator on a loopback socket: RAD-68 in (MTOM and plain), ITI-18 and RAD-69 out, failures, RPLC,
restart, the request body limit and streamed bodies."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import io
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from lxml import etree
from yarl import URL

from gateway.xds import rules, soap, xsd
from gateway.xds import simulator as simulator_module
from gateway.xds.simulator import DEFAULT_REPOSITORY_UNIQUE_ID, create_app
from gateway.xds.soap import ACTIONS, NS, Attachment, SoapMessage
from tests.component.test_hl7 import mllp_send
from tests.helpers import free_port

DATA = Path(__file__).resolve().parent.parent / "data" / "xds"
R = "{urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0}"
X = f"{{{NS['xds']}}}"
PATIENT = "IDS-AD001-a^^^&1.3.6.1.4.1.21367.2005.13.20.1000&ISO"
KOS_UID = "2.25.193880843752755703630633023020422049279"
SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"
MiB = 1024 * 1024


def _rad68() -> tuple[etree._Element, bytes]:
    """The derived RAD-68 ProvideAndRegisterDocumentSetRequest and its KOS bytes."""
    message = soap.parse((DATA / "kos" / "DERIVED-rad68-pnr-request_SOAP.xml").read_bytes(), "application/soap+xml")
    pnr = copy.deepcopy(message.body())
    return pnr, message.document(pnr.find(X + "Document"))


def _variant(pnr: etree._Element, n: int) -> bytes:
    """Give the submission new uniqueIds and new document content; returns that content."""
    for ei in pnr.iter(f"{R}ExternalIdentifier"):
        if ei.get("identificationScheme") in (rules.scheme("document_entry", "uniqueId"),
                                              rules.scheme("submission_set", "uniqueId")):
            ei.set("value", f"{ei.get('value')}.{n}")
    data = b"KOS variant %d" % n
    pnr.find(X + "Document").text = base64.b64encode(data).decode()
    return data


def _entry(pnr: etree._Element) -> etree._Element:
    return pnr.find(f".//{R}ExtrinsicObject")


def _with_document(pnr: etree._Element, data: bytes) -> etree._Element:
    """The submission carrying ``data`` as its document (the sample's DocumentEntry has no hash or size Slot)."""
    pnr.find(X + "Document").text = base64.b64encode(data).decode()
    return pnr


async def _in_pieces(body: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """The body as an async generator, which aiohttp sends chunked, without a Content-Length."""
    for offset in range(0, len(body), size):
        yield body[offset:offset + size]


class Client:
    def __init__(self, session: ClientSession, base: str) -> None:
        self.session, self.base = session, base

    async def post(self, path: str, body: bytes, content_type: str, *,
                   chunked: bool = False) -> tuple[int, SoapMessage | None]:
        data = _in_pieces(body) if chunked else io.BytesIO(body)  # sized: sent with a Content-Length
        async with self.session.post(self.base + path, data=data, headers={"Content-Type": content_type}) as r:
            raw = await r.read()
            if not r.headers.get("Content-Type", "").startswith(("multipart/related", "application/soap+xml")):
                return r.status, None
            return r.status, soap.parse(raw, r.headers["Content-Type"])

    async def submit(self, pnr: etree._Element, *, mtom: bool = True,
                     chunked: bool = False) -> tuple[int, SoapMessage | None]:
        pnr = copy.deepcopy(pnr)
        attachments = []
        if mtom:
            for n, document in enumerate(pnr.iterfind(X + "Document")):
                data = base64.b64decode(document.text)
                attachments.append(Attachment(f"doc{n}@test", "application/dicom", data))
                soap.include(document, f"doc{n}@test")
        env, _ = soap.envelope(ACTIONS["RAD-68"], pnr, to=self.base + "/xds/repository")
        body, content_type = soap.mtom(env, attachments) if mtom else soap.plain(env)
        return await self.post("/xds/repository", body, content_type, chunked=chunked)

    async def query(self, query_id: str, params: dict[str, str], return_type: str = "LeafClass") -> SoapMessage:
        request = etree.Element(f"{{{NS['query']}}}AdhocQueryRequest", nsmap={"query": NS["query"], "rim": NS["rim"]})
        etree.SubElement(request, f"{{{NS['query']}}}ResponseOption", returnComposedObjects="true",
                         returnType=return_type)
        adhoc = etree.SubElement(request, f"{R}AdhocQuery", id=rules.rules()["stored_queries"]["ids"][query_id])
        for name, value in params.items():
            slot = etree.SubElement(adhoc, f"{R}Slot", name=name)
            etree.SubElement(etree.SubElement(slot, f"{R}ValueList"), f"{R}Value").text = value
        status, message = await self.post("/xds/registry", *soap.plain(soap.envelope(ACTIONS["ITI-18"], request)[0]))
        assert status == 200 and message is not None
        assert message.action == ACTIONS["ITI-18-response"]
        return message

    async def find(self, **extra: str) -> list[etree._Element]:
        params = {"$XDSDocumentEntryPatientId": f"'{PATIENT}'",
                  "$XDSDocumentEntryStatus": "('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')", **extra}
        message = await self.query("FindDocuments", params)
        assert message.body().get("status") == SUCCESS, etree.tostring(message.body())
        return list(message.body().iter(f"{R}ExtrinsicObject"))

    async def json(self, path: str) -> object:
        async with self.session.get(self.base + path) as r:
            assert r.status == 200
            return await r.json()


@pytest.fixture
async def simulator(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    """Starts (or restarts, on the same data directory) the simulator on a loopback port; keyword arguments go to
    create_app."""
    servers: list[TestServer] = []
    session = ClientSession()

    async def start(**options: Any) -> Client:
        if servers:
            await servers[-1].close()
        server = TestServer(create_app(tmp_path, **options), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return Client(session, str(server.make_url("")).rstrip("/"))

    yield start
    await session.close()
    await servers[-1].close()


def _errors(message: SoapMessage) -> list[tuple[str, str]]:
    return [(e.get("errorCode"), e.get("codeContext")) for e in message.body().iter(f"{{{NS['rs']}}}RegistryError")]


@pytest.mark.parametrize("mtom", [True, False], ids=["mtom", "plain"])
async def test_rad68_submission_query_and_retrieve(  # type: ignore[no-untyped-def]
        simulator, tmp_path: Path, mtom: bool) -> None:
    client = await simulator()
    pnr, kos = _rad68()
    status, response = await client.submit(pnr, mtom=mtom)
    assert status == 200 and response is not None
    assert response.action == ACTIONS["ITI-41-response"] and response.relates_to.startswith("urn:uuid:")
    assert response.body().get("status") == SUCCESS, _errors(response)
    assert xsd.validate(response.resolved()) == []

    raw = sorted((tmp_path / "messages").glob("*-RAD-68.raw"))
    saved = sorted((tmp_path / "messages").glob("*-RAD-68.xml"))
    assert len(raw) == len(saved) == 1
    assert raw[0].read_bytes().startswith(b"Content-Type: " + (b"multipart/related" if mtom else b"application/soap"))
    assert xsd.validate(soap.parse_xml(saved[0].read_bytes())) == []

    entries = await client.find(**{"$XDSDocumentEntryClassCode": "('IMAGES^^1.3.6.1.4.1.19376.1.2.6.1')",
                                   "$XDSDocumentEntryEventCodeList": "('CR^^1.2.840.10008.2.16.4')",
                                   "$XDSDocumentEntryCreationTimeFrom": "20161031",
                                   "$XDSDocumentEntryCreationTimeTo": "20161101"})
    assert len(entries) == 1
    entry = entries[0]
    assert entry.get("id").startswith("urn:uuid:") and entry.get("status") == rules.STATUS_APPROVED
    assert rules.slot_values(entry, "hash") == [hashlib.sha1(kos).hexdigest()]
    assert rules.slot_values(entry, "size") == [str(len(kos))]
    assert rules.slot_values(entry, "repositoryUniqueId") == [DEFAULT_REPOSITORY_UNIQUE_ID]
    assert await client.find(**{"$XDSDocumentEntryClassCode": "('PATIENT^^1.3.6.1.4.1.19376.1.2.6.1')"}) == []
    assert await client.find(**{"$XDSDocumentEntryCreationTimeFrom": "20161101"}) == []

    by_unique_id = await client.query("GetDocuments", {"$XDSDocumentEntryUniqueId": f"('{KOS_UID}')"})
    assert [e.get("id") for e in by_unique_id.body().iter(f"{R}ExtrinsicObject")] == [entry.get("id")]
    refs = await client.query("GetDocuments", {"$XDSDocumentEntryEntryUUID": f"('{entry.get('id')}')"}, "ObjectRef")
    assert [e.get("id") for e in refs.body().iter(f"{R}ObjectRef")] == [entry.get("id")]
    assert xsd.validate(refs.envelope) == []

    retrieve = etree.Element(f"{{{NS['xdsi']}}}RetrieveImagingDocumentSetRequest",
                             nsmap={"xdsi": NS["xdsi"], "xds": NS["xds"]})
    study = etree.SubElement(retrieve, f"{{{NS['xdsi']}}}StudyRequest", studyInstanceUID="1.2.3")
    series = etree.SubElement(study, f"{{{NS['xdsi']}}}SeriesRequest", seriesInstanceUID="1.2.3.4")
    document_request = etree.SubElement(series, X + "DocumentRequest")
    etree.SubElement(document_request, X + "RepositoryUniqueId").text = DEFAULT_REPOSITORY_UNIQUE_ID
    etree.SubElement(document_request, X + "DocumentUniqueId").text = KOS_UID
    ts = etree.SubElement(etree.SubElement(retrieve, f"{{{NS['xdsi']}}}TransferSyntaxUIDList"),
                          f"{{{NS['xdsi']}}}TransferSyntaxUID")
    ts.text = "1.2.840.10008.1.2.1"
    status, retrieved = await client.post("/xds/repository", *soap.plain(soap.envelope(ACTIONS["RAD-69"], retrieve)[0]))
    assert status == 200 and retrieved is not None and retrieved.attachments
    assert retrieved.action == ACTIONS["RAD-69-response"]
    assert retrieved.body().find(f"{{{NS['rs']}}}RegistryResponse").get("status") == SUCCESS
    assert retrieved.document(retrieved.body().find(f"{X}DocumentResponse/{X}Document")) == kos
    assert xsd.validate(retrieved.resolved()) == []

    assert await client.json("/status") == {"accepted": 7, "rejected": 0, "documents": 1, "approved": 1,
                                            "deprecated": 0, "submission_sets": 1,
                                            "repository_unique_id": DEFAULT_REPOSITORY_UNIQUE_ID}


async def test_retrieve_of_an_unknown_document_is_a_failure(simulator) -> None:  # type: ignore[no-untyped-def]
    client = await simulator()
    request = etree.Element(X + "RetrieveDocumentSetRequest", nsmap={"xds": NS["xds"]})
    document_request = etree.SubElement(request, X + "DocumentRequest")
    etree.SubElement(document_request, X + "RepositoryUniqueId").text = DEFAULT_REPOSITORY_UNIQUE_ID
    etree.SubElement(document_request, X + "DocumentUniqueId").text = "1.2.3"
    status, response = await client.post("/xds/repository", *soap.plain(soap.envelope(ACTIONS["ITI-43"], request)[0]))
    assert status == 200 and response is not None
    assert response.body().find(f"{{{NS['rs']}}}RegistryResponse").get("status") == FAILURE
    assert [code for code, _ in _errors(response)] == ["XDSDocumentUniqueIdError"]


def _short_association(pnr: etree._Element) -> None:
    pnr.find(f".//{R}Association").set("associationType", "HasMember")


def _other_patient(pnr: etree._Element) -> None:
    scheme = rules.scheme("document_entry", "patientId")
    next(e for e in pnr.iter(f"{R}ExternalIdentifier") if e.get("identificationScheme") == scheme).set(
        "value", "OTHER^^^&1.2.3&ISO")


def _misspelt(pnr: etree._Element) -> None:
    _entry(pnr).find(f"{R}Name").tag = f"{R}Nmae"


@pytest.mark.parametrize(("mutate", "code"), [
    (_short_association, "XDSRegistryMetadataError"),
    (_other_patient, "XDSPatientIdDoesNotMatch"),
    (lambda p: p.remove(p.find(X + "Document")), "XDSMissingDocument"),
    (_misspelt, "XDSRepositoryMetadataError"),
], ids=["short-association-type", "patient-mismatch", "missing-document", "schema"])
async def test_invalid_submissions_get_failure(simulator, mutate, code: str) -> None:  # type: ignore[no-untyped-def]
    client = await simulator()
    pnr, _ = _rad68()
    mutate(pnr)
    status, response = await client.submit(pnr)
    assert status == 200 and response is not None
    registry_response = response.body()
    assert registry_response.get("status") == FAILURE
    assert code in [c for c, _ in _errors(response)]
    assert all(e.get("severity") == "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"
               and e.get("location") for e in registry_response.iter(f"{{{NS['rs']}}}RegistryError"))
    assert xsd.validate(response.envelope) == []
    assert (await client.json("/status"))["documents"] == 0  # type: ignore[index]


async def test_not_soap_is_a_sender_fault(simulator) -> None:  # type: ignore[no-untyped-def]
    client = await simulator()
    status, response = await client.post("/xds/repository", b"hello", "text/plain")
    assert status == 400 and response is not None and response.fault() is not None
    assert response.fault()[0] == "Sender"
    messages = await client.json("/messages")
    assert [m["outcome"] for m in messages] == ["fault"]  # type: ignore[index, union-attr]


async def test_duplicate_unique_id(simulator) -> None:  # type: ignore[no-untyped-def]
    client = await simulator()
    pnr, _ = _rad68()
    assert (await client.submit(pnr))[1].body().get("status") == SUCCESS
    retry = await client.submit(pnr, mtom=False)  # the same document again: an idempotent retry
    assert retry[1].body().get("status") == SUCCESS
    assert (await client.json("/status"))["documents"] == 1  # type: ignore[index]
    changed, _ = _rad68()
    _variant(changed, 1)
    for ei in changed.iter(f"{R}ExternalIdentifier"):  # same document uniqueId, different content
        if ei.get("value", "").startswith(KOS_UID):
            ei.set("value", KOS_UID)
    status, response = await client.submit(changed)
    assert response.body().get("status") == FAILURE
    assert [c for c, _ in _errors(response)] == ["XDSDuplicateUniqueIdInRegistry"]


def _replacing(target: str) -> tuple[etree._Element, bytes]:
    pnr, _ = _rad68()
    data = _variant(pnr, 2)
    object_list = pnr.find(f".//{R}RegistryObjectList")
    etree.SubElement(object_list, f"{R}Association", id="urn:uuid:8a1f6c2e-6f0e-4a4e-9b1d-6f1f6a2b3c4d",
                     associationType=rules.RPLC, sourceObject="Document01", targetObject=target)
    return pnr, data


async def test_rplc_deprecates_the_replaced_entry(simulator) -> None:  # type: ignore[no-untyped-def]
    client = await simulator()
    pnr, _ = _rad68()
    await client.submit(pnr)
    [original] = await client.find()

    unknown, _ = _replacing("urn:uuid:00000000-0000-4000-8000-000000000000")
    response = (await client.submit(unknown))[1]
    assert response.body().get("status") == FAILURE
    assert [c for c, _ in _errors(response)] == ["XDSRegistryMetadataError"]

    replacement, data = _replacing(original.get("id"))
    response = (await client.submit(replacement))[1]
    assert response.body().get("status") == SUCCESS, _errors(response)
    [current] = await client.find()
    assert rules.slot_values(current, "hash") == [hashlib.sha1(data).hexdigest()]
    deprecated = await client.find(**{"$XDSDocumentEntryStatus":
                                      "('urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated')"})
    assert [e.get("id") for e in deprecated] == [original.get("id")]

    again, _ = _replacing(original.get("id"))
    _variant(again, 3)
    response = (await client.submit(again))[1]
    assert response.body().get("status") == FAILURE
    assert "not Approved" in _errors(response)[0][1]


async def test_query_with_short_status_is_a_failure(simulator) -> None:  # type: ignore[no-untyped-def]
    client = await simulator()
    message = await client.query("FindDocuments", {
        "$XDSDocumentEntryPatientId": f"'{PATIENT}'",
        "$XDSDocumentEntryStatus": "('urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Approved')"})
    assert message.body().tag == f"{{{NS['query']}}}AdhocQueryResponse"
    assert message.body().get("status") == FAILURE
    assert [c for c, _ in _errors(message)] == ["XDSRegistryMetadataError"]
    assert xsd.validate(message.envelope) == []


async def test_fault_injection(simulator) -> None:  # type: ignore[no-untyped-def]
    client = await simulator()
    pnr, _ = _rad68()
    command = orjson.dumps({"fail_next": 1, "http_status": 503})
    async with client.session.post(client.base + "/control", data=command) as r:
        assert r.status == 200
    assert (await client.submit(pnr))[0] == 503
    async with client.session.post(client.base + "/control",
                                   data=orjson.dumps({"fail_next": 1, "registry_error": "XDSRegistryBusy"})) as r:
        assert r.status == 200
    response = (await client.submit(pnr))[1]
    assert [c for c, _ in _errors(response)] == ["XDSRegistryBusy"]
    assert (await client.submit(pnr))[1].body().get("status") == SUCCESS
    async with client.session.post(client.base + "/control", data=b"{}") as r:
        assert r.status == 400


async def test_restart_keeps_the_registry(simulator) -> None:  # type: ignore[no-untyped-def]
    client = await simulator()
    pnr, kos = _rad68()
    await client.submit(pnr)
    client = await simulator()
    [entry] = await client.find()
    assert rules.slot_values(entry, "hash") == [hashlib.sha1(kos).hexdigest()]
    status = await client.json("/status")
    assert status["documents"] == 1 and status["accepted"] == 2  # type: ignore[index]
    assert len(await client.json("/messages")) == 2  # type: ignore[arg-type]


async def test_command_prints_ready_line_and_stops_on_sigterm(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.xds.simulator", "--port", "0", "--data", str(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
    assert line.startswith("xds-simulator listening on http://127.0.0.1:")
    async with ClientSession() as session, session.get(line.split()[-1] + "/status") as r:
        assert r.status == 200
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 30) == 0


# --- the request body limit and streamed bodies ------------------------------------------------------------------


async def _head_only(base: str, path: str, content_length: int) -> tuple[int, SoapMessage]:
    """POST only a request head announcing ``content_length`` bytes: an answer proves the body was not awaited."""
    url = URL(base)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\nContent-Type: application/soap+xml\r\n"
                     f"Content-Length: {content_length}\r\n\r\n".encode())
        status_line, *lines = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)).decode().split("\r\n")
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 30)
        assert headers["connection"] == "close"
        return int(status_line.split()[1]), soap.parse(body, headers["content-type"])
    finally:
        writer.close()


async def test_a_body_over_the_limit_is_refused_before_it_is_read(  # type: ignore[no-untyped-def]
        simulator, tmp_path: Path) -> None:
    client = await simulator(max_body_bytes=MiB)
    status, fault = await _head_only(client.base, "/xds/repository", MiB + 1)
    assert status == 413 and fault.fault() == ("Sender", f"request body exceeds the simulator's limit of {MiB} bytes")
    status, refused = await client.post("/xds/registry", b"x" * 2 * MiB, "application/soap+xml")
    assert status == 413 and refused is not None and refused.fault()[0] == "Sender"

    pnr, _ = _rad68()
    status, response = await client.submit(pnr)
    assert status == 200 and response.body().get("status") == SUCCESS, _errors(response)
    messages = await client.json("/messages")
    assert [(m["outcome"], m["http_status"]) for m in messages] == [  # type: ignore[index, union-attr]
        ("too-large", 413), ("too-large", 413), ("accepted", 200)]
    assert len(list((tmp_path / "messages").glob("*.raw"))) == 1  # nothing is kept of a refused body


async def test_a_chunked_body_over_the_limit_is_refused(simulator) -> None:  # type: ignore[no-untyped-def]
    client = await simulator(max_body_bytes=MiB)
    pnr, _ = _rad68()
    status, response = await client.submit(_with_document(copy.deepcopy(pnr), os.urandom(MiB)), chunked=True)
    assert status == 413 and response is not None and response.fault()[0] == "Sender"
    status, response = await client.submit(pnr, chunked=True)
    assert status == 200 and response.body().get("status") == SUCCESS, _errors(response)
    assert [m["outcome"] for m in await client.json("/messages")] == [  # type: ignore[index, union-attr]
        "too-large", "accepted"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_large_document_is_streamed_and_kept_intact(  # type: ignore[no-untyped-def]
        simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunked: bool) -> None:
    monkeypatch.setattr(simulator_module, "SPOOL_BYTES", 256 * 1024)  # the body goes to a file, as a large one does
    client = await simulator(max_body_bytes=2 * MiB)
    pnr, _ = _rad68()
    document = os.urandom(3 * MiB // 2)
    status, response = await client.submit(_with_document(pnr, document), chunked=chunked)
    assert status == 200 and response.body().get("status") == SUCCESS, _errors(response)

    [stored] = (tmp_path / "documents").iterdir()
    assert stored.name == f"{hashlib.sha256(document).hexdigest()}.bin"
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == hashlib.sha256(document).hexdigest()
    [entry] = await client.find()
    assert rules.slot_values(entry, "hash") == [hashlib.sha1(document).hexdigest()]
    assert rules.slot_values(entry, "size") == [str(len(document))]
    [raw] = (tmp_path / "messages").glob("*-RAD-68.raw")
    head, _, body = raw.read_bytes().partition(b"\r\n\r\n")
    received = soap.parse(body, head.decode("latin-1").removeprefix("Content-Type: "))
    assert received.document(received.body().find(X + "Document")) == document
    [saved] = (tmp_path / "messages").glob("*-RAD-68.xml")
    resolved = soap.parse_xml(saved.read_bytes())
    assert base64.b64decode(resolved.find(f".//{X}Document").text) == document
    assert xsd.validate(resolved) == []


@pytest.mark.parametrize("chunk", [1, 7])
async def test_boundaries_across_reads(  # type: ignore[no-untyped-def]
        simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """The body is received and searched for its MIME boundaries in reads this short, so that boundaries straddle
    two reads (every one of them at 1 byte)."""
    monkeypatch.setattr(simulator_module, "_CHUNK", chunk)
    client = await simulator()
    pnr, kos = _rad68()
    status, response = await client.submit(pnr)
    assert status == 200 and response.body().get("status") == SUCCESS, _errors(response)
    [stored] = (tmp_path / "documents").iterdir()
    assert stored.read_bytes() == kos


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


async def test_memory_stays_bounded_for_a_large_body(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.xds.simulator", "--port", "0", "--data", str(tmp_path),
        "--max-body-bytes", str(48 * MiB), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        base = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().split()[-1]
        async with ClientSession() as session:
            client = Client(session, base)
            pnr, _ = _rad68()
            assert (await client.submit(copy.deepcopy(pnr)))[1].body().get("status") == SUCCESS  # warm: schemas
            Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
            baseline = _rss_kib(process.pid, "VmRSS")
            document = os.urandom(40 * MiB)
            _variant(pnr, 1)
            status, response = await client.submit(_with_document(pnr, document))
            assert status == 200 and response.body().get("status") == SUCCESS, _errors(response)
            growth_mib = (_rss_kib(process.pid, "VmHWM") - baseline) / 1024
            assert growth_mib < 20, f"peak RSS grew by {growth_mib:.0f} MiB receiving a 40 MiB document"
            status, _ = await _head_only(base, "/xds/repository", 48 * MiB + 1)
            assert status == 413  # --max-body-bytes
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0


async def test_the_identity_feed_merges_registered_patient_ids_and_refuses_other_messages(  # type: ignore[no-untyped-def]
        simulator, tmp_path: Path) -> None:
    feed_port = free_port()
    client = await simulator(patient_feed=("127.0.0.1", feed_port))
    pnr, _ = _rad68()
    await client.submit(pnr)
    patient, authority = PATIENT.split("^^^&")[0], PATIENT.split("&")[1]
    merge = (f"MSH|^~\\&|MPI|D|REG|D|20261130||ADT^A40^ADT_A39|M1|P|2.5\rEVN|A40\r"
             f"PID|1||NEW-1^^^&{authority}&ISO\rMRG|{patient}^^^&{authority}&ISO")
    other = "MSH|^~\\&|MPI|D|REG|D|20261130||ORU^R01|M2|P|2.5\rPID|1||X^^^&1.2.3&ISO"
    answers = await mllp_send(feed_port, merge, other, "not hl7", tmp=tmp_path)
    assert [(a.code, a.control_id, a.error) for a in answers] == [("AA", "M1", ""), ("AR", "M2", "201"),
                                                                  ("AR", "", "100")]
    assert await client.find() == []  # the old patientId has no documents any more
    [entry] = await client.find(**{"$XDSDocumentEntryPatientId": f"'NEW-1^^^&{authority}&ISO'"})
    assert entry is not None
