"""The XDS client against real HTTP peers on loopback: the gateway's XDS simulator (registry + repository), a
recording stub that answers with the public sample responses and failures the simulator does not make, and a
mutual-TLS endpoint. Every request the client sends is checked against the XDS schemas."""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydicom.dataset import Dataset

from gateway.core.study import StudyInstance
from gateway.settings import XdsSettings
from gateway.xds import cli as xds_cli
from gateway.xds import rules, soap, xsd
from gateway.xds.client import (
    APPROVED,
    DEPRECATED,
    RegistryResult,
    ResponseStatus,
    XdsClient,
    XdsPermanent,
    XdsTransient,
)
from gateway.xds.manifest import build_manifest, to_part10
from gateway.xds.metadata import AffinityDomain, Code, Submission, build_submission
from gateway.xds.simulator import create_app
from tests.component.test_receiver_tls import pki  # noqa: F401 - the CA, server and client certificates
from tests.helpers import free_port
from tests.unit.test_xds_manifest import NOW, ORGANIZATION_OID, REPOSITORY_OID, STUDY, instance_row, study_rows

DATA = Path(__file__).resolve().parent.parent / "data" / "xds_client"
PATIENT_CX = "131052-308T^^^&1.2.246.21&ISO"
IMAGES = Code(code="IMAGES", coding_scheme="1.3.6.1.4.1.19376.1.2.6.1", display_name="Images")


def submission(rows: list[StudyInstance] | None = None, *, sop_instance_uid: str = "2.25.1001",
               replaces: str | None = None, now: datetime = NOW) -> Submission:
    rows = study_rows() if rows is None else rows
    manifest: Dataset = build_manifest(rows, retrieve_ae_title="DICOMGW", retrieve_location_uid=REPOSITORY_OID,
                                       institution_name="Turun kaupunki", now=now, sop_instance_uid=sop_instance_uid)
    return build_submission(manifest, to_part10(manifest), rows, domain=AffinityDomain.load(),
                            source_id=ORGANIZATION_OID, organization_oid=ORGANIZATION_OID,
                            organization_name="Turun kaupunki", replaces_entry_uuid=replaces, now=now)


def settings(base: str, **changes: Any) -> XdsSettings:
    values: dict[str, Any] = {"repository_url": f"{base}/xds/repository", "registry_url": f"{base}/xds/registry",
                              "repository_unique_id": REPOSITORY_OID, "timeout_seconds": 5}
    return XdsSettings(**(values | changes))


def assert_schema_valid(body: bytes, content_type: str) -> soap.SoapMessage:
    """What the peer receives parses as SOAP and its XOP-resolved infoset is valid against the XDS schemas."""
    message = soap.parse(body, content_type)
    assert xsd.validate(message.resolved()) == []
    return message


# --- against the XDS simulator ---------------------------------------------------------------------------------


@dataclass
class Simulator:
    server: TestServer
    data: Path

    @property
    def base(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def sent(self, transaction: str) -> list[soap.SoapMessage]:
        """The requests of ``transaction`` as the simulator recorded them, oldest first, each schema-checked."""
        found = []
        for raw in sorted((self.data / "messages").glob(f"*-{transaction}.raw")):
            head, _, body = raw.read_bytes().partition(b"\r\n\r\n")
            found.append(assert_schema_valid(body, head.decode("latin-1").removeprefix("Content-Type: ")))
        return found

    async def fail_next(self, **command: Any) -> None:
        """Make the simulator fail the next submissions (its /control fault injection)."""
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{self.base}/control", json=command) as response:
                assert response.status == 200, await response.text()


@pytest.fixture
async def simulator(tmp_path: Path) -> AsyncIterator[Simulator]:
    app = create_app(tmp_path / "sim", repository_unique_id=REPOSITORY_OID, patient_id_domain="1.2.246.21")
    async with TestServer(app, host="127.0.0.1") as server:
        yield Simulator(server, tmp_path / "sim")


async def test_rad68_registers_the_manifest_by_mtom(simulator: Simulator) -> None:
    sub = submission()
    async with XdsClient(settings(simulator.base)) as client:
        result = await client.provide_and_register(sub)
    assert result == RegistryResult(ResponseStatus.SUCCESS, ())
    (message,) = simulator.sent("RAD-68")
    assert message.action == "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
    payload = message.body()
    document = payload.find("{urn:ihe:iti:xds-b:2007}Document")
    assert document is not None and document.get("id") == sub.document_entry_uuid
    assert document.find("{http://www.w3.org/2004/08/xop/include}Include") is not None
    assert message.document(document) == sub.document
    (attachment,) = message.attachments.values()
    assert attachment.content_type == "application/dicom"
    resolved_body = message.resolved().find("{http://www.w3.org/2003/05/soap-envelope}Body")[0]
    assert rules.check_submission(resolved_body, transaction="RAD-68", patient_id_domain="1.2.246.21") == []


async def test_find_get_and_retrieve_what_was_registered(simulator: Simulator) -> None:
    sub = submission()
    async with XdsClient(settings(simulator.base)) as client:
        await client.provide_and_register(sub)
        found = await client.find_documents(PATIENT_CX, class_codes=[IMAGES])
        by_unique_id = await client.get_documents(unique_ids=[sub.unique_id])
        by_uuid = await client.get_documents(entry_uuids=[sub.document_entry_uuid])
        refs = await client.find_documents(PATIENT_CX, return_type="ObjectRef")
        document = await client.retrieve_document(sub.unique_id, REPOSITORY_OID)
    (entry,) = found
    assert by_unique_id == by_uuid == found
    assert [r.entry_uuid for r in refs] == [sub.document_entry_uuid] and refs[0].unique_id == ""
    assert entry.entry_uuid == sub.document_entry_uuid
    assert entry.unique_id == sub.unique_id
    assert entry.patient_id == PATIENT_CX
    assert entry.status == APPROVED
    assert entry.mime_type == "application/dicom"
    assert entry.repository_unique_id == REPOSITORY_OID
    assert entry.format_code is not None and entry.format_code.code == "1.2.840.10008.5.1.4.1.1.88.59"
    assert entry.class_code == IMAGES
    assert [c.code for c in entry.event_codes] == ["CT"]
    assert entry.service_start_time == "20240105081500"
    assert entry.size == str(len(sub.document))
    assert f"{STUDY}^^^^urn:ihe:iti:xds:2016:studyInstanceUID" in entry.reference_ids
    assert entry.to_dict()["formatCode"]["codingScheme"] == "1.2.840.10008.2.6.1"
    assert document == sub.document
    for query in simulator.sent("ITI-18"):
        assert rules.check_query(query.body()) == []


async def test_find_documents_filters(simulator: Simulator) -> None:
    other = Code(code="REPORTS", coding_scheme="1.3.6.1.4.1.19376.1.2.6.1", display_name="Reports")
    async with XdsClient(settings(simulator.base)) as client:
        await client.provide_and_register(submission())
        assert await client.find_documents(PATIENT_CX, class_codes=[other]) == []
        assert await client.find_documents("010594Y9032^^^&1.2.246.21&ISO") == []
        assert len(await client.find_documents(PATIENT_CX, creation_from=NOW - timedelta(minutes=1),
                                               creation_to=NOW + timedelta(minutes=1))) == 1
        assert await client.find_documents(PATIENT_CX, creation_from=NOW + timedelta(minutes=1)) == []
    for query in simulator.sent("ITI-18"):
        assert rules.check_query(query.body()) == []


async def test_rplc_deprecates_the_previous_manifest(simulator: Simulator) -> None:
    first = submission()
    async with XdsClient(settings(simulator.base)) as client:
        await client.provide_and_register(first)
        second = submission(sop_instance_uid="2.25.1003", replaces=first.document_entry_uuid,
                            now=NOW + timedelta(hours=1))
        await client.provide_and_register(second)
        approved = await client.find_documents(PATIENT_CX)
        deprecated = await client.find_documents(PATIENT_CX, status=[DEPRECATED])
    assert [e.unique_id for e in approved] == [second.unique_id]
    assert [e.unique_id for e in deprecated] == [first.unique_id]


async def test_rad69_retrieves_from_the_imaging_document_source(simulator: Simulator) -> None:
    sub = submission()
    async with XdsClient(settings(simulator.base)) as client:
        await client.provide_and_register(sub)
        # the simulator's repository holds only manifests: the KOS itself is the one retrievable "instance"
        (document,) = await client.retrieve_imaging(STUDY, {"2.25.1002": [sub.unique_id]}, REPOSITORY_OID)
        with pytest.raises(XdsPermanent) as missing:
            await client.retrieve_imaging(STUDY, {f"{STUDY}.1": [f"{STUDY}.1.1.1"]}, REPOSITORY_OID)
    assert (document.document_unique_id, document.repository_unique_id) == (sub.unique_id, REPOSITORY_OID)
    assert document.data == sub.document and document.mime_type == "application/dicom"
    assert missing.value.codes == ("XDSDocumentUniqueIdError",)
    assert len(simulator.sent("RAD-69")) == 2


@pytest.mark.parametrize(("command", "kind", "codes"), [
    ({"registry_error": "XDSRegistryBusy"}, XdsTransient, ("XDSRegistryBusy",)),
    ({"registry_error": "XDSRepositoryOutOfResources"}, XdsTransient, ("XDSRepositoryOutOfResources",)),
    ({"registry_error": "XDSRegistryError"}, XdsTransient, ("XDSRegistryError",)),
    ({"registry_error": "XDSRegistryMetadataError"}, XdsPermanent, ("XDSRegistryMetadataError",)),
    ({"http_status": 503}, XdsTransient, ()),
    ({"http_status": 429}, XdsTransient, ()),
    ({"http_status": 404}, XdsPermanent, ()),
])
async def test_injected_failures_are_classified(simulator: Simulator, command: dict[str, Any],
                                                kind: type[Exception], codes: tuple[str, ...]) -> None:
    await simulator.fail_next(fail_next=1, **command)
    sub = submission()
    async with XdsClient(settings(simulator.base)) as client:
        with pytest.raises(kind) as failure:
            await client.provide_and_register(sub)
        assert await client.provide_and_register(sub) == RegistryResult(ResponseStatus.SUCCESS, ())
    assert isinstance(failure.value, XdsTransient | XdsPermanent)
    assert failure.value.codes == codes


async def test_unknown_patient_is_retried_since_the_identity_feed_may_not_have_reached_the_registry(
        simulator: Simulator) -> None:
    rows = [instance_row(f"{STUDY}.1.1.1", issuer_of_patient_id="", patient_attributes={
        "PatientID": "010594Y9032", "IssuerOfPatientID": "1.2.246.10.2048198.22.2024"})]
    async with XdsClient(settings(simulator.base)) as client:
        with pytest.raises(XdsTransient) as failure:
            await client.provide_and_register(submission(rows))
    assert set(failure.value.codes) == {"XDSUnknownPatientId"}


async def test_a_retried_submission_is_idempotent_and_a_changed_one_a_duplicate(simulator: Simulator) -> None:
    """A retry after a lost answer sends the same bytes: the repository's hash recognises it. A different
    manifest under a registered uniqueId is XDSDuplicateUniqueIdInRegistry, which no retry can fix."""
    sub = submission()
    changed = submission(now=NOW + timedelta(minutes=5))
    assert changed.unique_id == sub.unique_id and changed.document != sub.document
    async with XdsClient(settings(simulator.base)) as client:
        await client.provide_and_register(sub)
        assert (await client.provide_and_register(sub)).status is ResponseStatus.SUCCESS
        with pytest.raises(XdsPermanent) as failure:
            await client.provide_and_register(changed)
        (registered,) = await client.get_documents(unique_ids=[sub.unique_id])
    assert "XDSDuplicateUniqueIdInRegistry" in failure.value.codes
    assert registered.entry_uuid == sub.document_entry_uuid


# --- against a recording stub with the public sample responses ----------------------------------------------------


@dataclass
class Stub:
    """Answers every POST with ``reply`` (status, body, content type) after ``delay``; keeps the requests."""

    reply: tuple[int, bytes, str] = (200, b"", "text/plain")
    delay: float = 0.0
    requests: list[tuple[str, bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.headers.get("Content-Type", ""), await request.read()))
        await asyncio.sleep(self.delay)
        status, body, content_type = self.reply
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    def answer(self, payload_file: str, action: str, status: int = 200) -> None:
        """Answer with a sample's payload (the first Body child of a SOAP sample, or the whole file)."""
        root = soap.parse_xml((DATA / payload_file).read_bytes())
        body = root.find("{http://www.w3.org/2003/05/soap-envelope}Body")
        payload = root if body is None else body[0]
        env, _ = soap.envelope(action, payload, relates_to="urn:uuid:00000000-0000-0000-0000-000000000000")
        self.reply = (status, *soap.plain(env))

    def sent(self) -> list[soap.SoapMessage]:
        return [assert_schema_valid(body, content_type) for content_type, body in self.requests]


@pytest.fixture
async def stub() -> AsyncIterator[tuple[Stub, str]]:
    state = Stub()
    app = web.Application()
    app.router.add_post("/{path:.*}", state.handle)
    async with TestServer(app, host="127.0.0.1") as server:
        yield state, str(server.make_url("")).rstrip("/")


async def test_nist_success_response(stub: tuple[Stub, str]) -> None:
    state, base = stub
    state.answer("soap-pnr-resp.xml", soap.ACTIONS["ITI-41-response"])
    async with XdsClient(settings(base)) as client:
        result = await client.provide_and_register(submission())
    assert result.status is ResponseStatus.SUCCESS
    (message,) = state.sent()
    assert message.attachments


async def test_nist_metadata_failure_is_permanent_with_every_error(stub: tuple[Stub, str]) -> None:
    state, base = stub
    state.answer("pnr-response-failure-metadata-error_SOAP.xml", soap.ACTIONS["ITI-41-response"])
    async with XdsClient(settings(base)) as client:
        with pytest.raises(XdsPermanent) as failure:
            await client.provide_and_register(submission())
    assert failure.value.codes == ("XDSRegistryMetadataError",) * 6
    assert failure.value.errors[0].location == "CodeValidation"
    assert "not found in the Affinity Domain" in failure.value.errors[0].code_context
    assert "Affinity Domain" not in str(failure.value)  # codeContext may quote patient data: not in the message


async def test_nist_leaf_class_query_response(stub: tuple[Stub, str]) -> None:
    state, base = stub
    state.answer("sq-resp-lc.xml", soap.ACTIONS["ITI-18-response"])
    async with XdsClient(settings(base)) as client:
        entries = await client.find_documents(PATIENT_CX)
    assert len(entries) == 2
    first = entries[0]
    assert first.entry_uuid == "urn:uuid:974330cc-26ff-4ef8-aca5-f71efc3f1fb0"
    assert first.repository_unique_id == "1.19.6.24.109.42.1"
    assert first.hash == "e543712c0e10501972de13a5bfcbe826c49feb75"
    assert first.status == APPROVED and first.mime_type == "text/xml"
    assert first.unique_id and first.patient_id
    (query,) = state.sent()
    assert rules.check_query(query.body()) == []


async def test_partial_success_query_returns_what_came(stub: tuple[Stub, str]) -> None:
    state, base = stub
    text = (DATA / "sq-resp-lc.xml").read_text().replace(
        "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success",
        "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess")
    payload = soap.parse_xml(text.encode())
    env, _ = soap.envelope(soap.ACTIONS["ITI-18-response"], payload, relates_to="urn:uuid:1")
    state.reply = (200, *soap.plain(env))
    async with XdsClient(settings(base)) as client:
        assert len(await client.find_documents(PATIENT_CX)) == 2


async def test_ihe_retrieve_response_with_inline_documents(stub: tuple[Stub, str]) -> None:
    state, base = stub
    state.answer("RetrieveDocumentSetResponse_SOAP.xml", soap.ACTIONS["ITI-43-response"])
    async with XdsClient(settings(base)) as client:
        data = await client.retrieve_document("1.3.6.1.4...2300", "1.3.6.1.4...1000")
    assert data == b"R0lGODlhcgGSALMAAAQCAEMmCZtuMFQxDS8b"
    (request,) = state.sent()
    assert request.action == "urn:ihe:iti:2007:RetrieveDocumentSet"


@pytest.mark.parametrize(("code", "http_status", "kind"), [
    ("Receiver", 500, XdsTransient),
    ("Sender", 400, XdsPermanent),
    ("MustUnderstand", 500, XdsPermanent),
])
async def test_soap_faults(stub: tuple[Stub, str], code: str, http_status: int, kind: type[Exception]) -> None:
    state, base = stub
    state.reply = (http_status, *soap.plain(soap.fault(code, "simulated")))
    async with XdsClient(settings(base)) as client:
        with pytest.raises(kind, match=f"SOAP {code} fault"):
            await client.find_documents(PATIENT_CX)


@pytest.mark.parametrize(("status", "body", "kind"), [
    (502, b"<html>bad gateway</html>", XdsTransient),
    (408, b"", XdsTransient),
    (403, b"forbidden", XdsPermanent),
    (200, b"<not-soap/>", XdsPermanent),
])
async def test_answers_that_are_not_soap(stub: tuple[Stub, str], status: int, body: bytes,
                                         kind: type[Exception]) -> None:
    state, base = stub
    state.reply = (status, body, "text/html")
    async with XdsClient(settings(base)) as client:
        with pytest.raises(kind):
            await client.provide_and_register(submission())


async def test_wrong_payload_is_permanent(stub: tuple[Stub, str]) -> None:
    state, base = stub
    state.answer("soap-pnr-resp.xml", soap.ACTIONS["ITI-41-response"])
    async with XdsClient(settings(base)) as client:
        with pytest.raises(XdsPermanent, match="AdhocQueryResponse"):
            await client.find_documents(PATIENT_CX)


async def test_timeout_is_transient(stub: tuple[Stub, str]) -> None:
    state, base = stub
    state.delay = 2.0
    async with XdsClient(settings(base, timeout_seconds=0.2)) as client:
        with pytest.raises(XdsTransient):
            await client.find_documents(PATIENT_CX)


async def test_connection_refused_is_transient() -> None:
    async with XdsClient(settings(f"http://127.0.0.1:{free_port()}")) as client:
        with pytest.raises(XdsTransient):
            await client.provide_and_register(submission())


async def test_no_endpoint_configured_is_permanent() -> None:
    async with XdsClient(XdsSettings()) as client:
        with pytest.raises(XdsPermanent, match="no endpoint"):
            await client.find_documents(PATIENT_CX)


async def test_get_documents_needs_exactly_one_key() -> None:
    async with XdsClient(XdsSettings()) as client:
        with pytest.raises(ValueError):
            await client.get_documents()
        with pytest.raises(ValueError):
            await client.get_documents(unique_ids=["1.2"], entry_uuids=["urn:uuid:x"])


# --- mutual TLS -------------------------------------------------------------------------------------------------


@pytest.fixture
async def tls_endpoint(pki: Path) -> AsyncIterator[tuple[Stub, str]]:  # noqa: F811 - the imported fixture
    state = Stub()
    state.answer("soap-pnr-resp.xml", soap.ACTIONS["ITI-41-response"])
    app = web.Application()
    app.router.add_post("/{path:.*}", state.handle)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    context.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
    context.verify_mode = ssl.CERT_REQUIRED
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield state, f"https://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_mutual_tls_with_the_configured_certificate(
        tls_endpoint: tuple[Stub, str], pki: Path) -> None:  # noqa: F811 - the imported fixture
    state, base = tls_endpoint

    def tls(identity: str) -> XdsSettings:
        return settings(base, cert_file=pki / f"{identity}.pem", key_file=pki / f"{identity}.key",
                        ca_file=pki / "ca.pem")

    async with XdsClient(tls("client")) as client:
        assert (await client.provide_and_register(submission())).status is ResponseStatus.SUCCESS
    async with XdsClient(tls("stranger")) as client:
        with pytest.raises(XdsTransient):
            await client.provide_and_register(submission())
    async with XdsClient(settings(base, ca_file=pki / "ca.pem")) as client:
        with pytest.raises(XdsTransient):
            await client.provide_and_register(submission())
    assert len(state.requests) == 1


# --- dicom-gateway xds find / get --------------------------------------------------------------------------------


@pytest.fixture
def simulator_thread(tmp_path: Path) -> Iterator[str]:
    """The simulator on its own event loop in a thread (the CLI runs its own loop); yields its base URL."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(create_app(tmp_path / "sim", repository_unique_id=REPOSITORY_OID))
    port = free_port()

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()

    loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def xds_command(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="dicom-gateway")
    xds_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["xds", *argv])
    return int(args.func(args))


def test_cli_find_and_get(simulator_thread: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    config = tmp_path / "gateway.yaml"
    config.write_text(f"xds:\n  registry_url: {simulator_thread}/xds/registry\n"
                      f"  repository_url: {simulator_thread}/xds/repository\n")
    sub = submission()

    async def register() -> None:
        async with XdsClient(settings(simulator_thread)) as client:
            await client.provide_and_register(sub)

    asyncio.run(register())
    assert xds_command("find", "--patient", "131052-308T", "--config", str(config)) == 0
    out = capsys.readouterr().out
    assert sub.unique_id in out and "Approved" in out and "1 entry" in out
    assert "131052-308T" not in out
    assert xds_command("find", "--patient", PATIENT_CX, "--class-code", "IMAGES^^1.3.6.1.4.1.19376.1.2.6.1",
                       "--json", "--config", str(config)) == 0
    (entry,) = orjson.loads(capsys.readouterr().out)
    assert entry["uniqueId"] == sub.unique_id and entry["repositoryUniqueId"] == REPOSITORY_OID
    assert xds_command("find", "--patient", PATIENT_CX, "--status", "deprecated", "--config", str(config)) == 0
    assert "0 entries" in capsys.readouterr().out
    assert xds_command("get", "--unique-id", sub.unique_id, "2.25.9", "--json", "--config", str(config)) == 0
    assert [e["entryUUID"] for e in orjson.loads(capsys.readouterr().out)] == [sub.document_entry_uuid]


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    config = tmp_path / "gateway.yaml"
    config.write_text(f"xds:\n  registry_url: http://127.0.0.1:{free_port()}/xds/registry\n")
    assert xds_command("find", "--patient", "not-a-hetu", "--config", str(config)) == 2
    assert xds_command("find", "--patient", PATIENT_CX, "--class-code", "IMAGES", "--config", str(config)) == 2
    assert xds_command("find", "--patient", PATIENT_CX, "--config", str(tmp_path / "missing.yaml")) == 2
    assert xds_command("find", "--patient", PATIENT_CX, "--config", str(config)) == 1
    assert "dicom-gateway xds:" in capsys.readouterr().err
