"""ITI-57 Update Document Set between the XDS client and the XDS simulator on loopback: a manifest registered by
RAD-68 is deprecated without a replacement (all its instances rejected, RAD TF RAD68-007), and the registry's
refusals reach the caller as the failures they are."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from lxml import etree

from gateway.xds import rules, soap, xsd
from gateway.xds.client import APPROVED, DEPRECATED, RegistryResult, ResponseStatus, XdsClient, XdsPermanent, XdsTransient
from gateway.xds.metadata import AffinityDomain, StatusUpdate, Submission, build_status_update
from gateway.xds.simulator import create_app
from tests.component.test_xds_client import PATIENT_CX, Simulator, settings, submission
from tests.unit.test_xds_manifest import NOW, ORGANIZATION_OID, REPOSITORY_OID

RIM = "{%s}" % soap.NS["rim"]
RS = "{%s}" % soap.NS["rs"]
FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Simulator]:
    app = create_app(tmp_path / "sim", repository_unique_id=REPOSITORY_OID, patient_id_domain="1.2.246.21")
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield Simulator(server, tmp_path / "sim")
    await server.close()


def deprecation(entry_uuid: str, patient_id: str = PATIENT_CX, **changes: Any) -> StatusUpdate:
    arguments: dict[str, Any] = {"domain": AffinityDomain.load(), "source_id": ORGANIZATION_OID,
                                 "organization_oid": ORGANIZATION_OID, "organization_name": "Turun kaupunki",
                                 "now": NOW + timedelta(hours=2)}
    return build_status_update(entry_uuid, patient_id, **(arguments | changes))


async def registered(client: XdsClient) -> Submission:
    sub = submission()
    await client.provide_and_register(sub)
    return sub


async def status(registry: Simulator) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{registry.base}/status") as response:
        body: dict[str, Any] = await response.json()
        return body


async def test_deprecating_a_registered_manifest(registry: Simulator) -> None:
    async with XdsClient(settings(registry.base)) as client:
        sub = await registered(client)
        update = deprecation(sub.document_entry_uuid, sub.patient_id)
        result = await client.update_document_set(update)
        approved = await client.find_documents(PATIENT_CX)
        deprecated = await client.find_documents(PATIENT_CX, status=[DEPRECATED])
        (entry,) = await client.get_documents(entry_uuids=[sub.document_entry_uuid])
    assert result == RegistryResult(ResponseStatus.SUCCESS, ())
    assert approved == []
    assert [e.entry_uuid for e in deprecated] == [sub.document_entry_uuid]
    assert (entry.unique_id, entry.status) == (sub.unique_id, DEPRECATED)
    counters = await status(registry)
    assert {k: counters[k] for k in ("accepted", "rejected", "documents", "approved", "deprecated",
                                     "submission_sets", "status_updates")} == {
        "accepted": 5, "rejected": 0, "documents": 1, "approved": 0, "deprecated": 1, "submission_sets": 2,
        "status_updates": 1}
    (message,) = registry.sent("ITI-57")  # kept under DIR/messages, schema-checked there
    assert message.action == "urn:ihe:iti:2010:UpdateDocumentSet" and not message.attachments
    assert rules.check_update(message.body(), patient_id_domain="1.2.246.21") == []


async def test_rplc_deprecated_entries_show_their_status_too(registry: Simulator) -> None:
    async with XdsClient(settings(registry.base)) as client:
        first = await registered(client)
        await client.provide_and_register(submission(sop_instance_uid="2.25.1003", replaces=first.document_entry_uuid,
                                                     now=NOW + timedelta(hours=1)))
        (entry,) = await client.get_documents(entry_uuids=[first.document_entry_uuid])
    assert entry.status == DEPRECATED


async def test_a_deprecated_manifest_can_be_approved_again(registry: Simulator) -> None:
    async with XdsClient(settings(registry.base)) as client:
        sub = await registered(client)
        await client.update_document_set(deprecation(sub.document_entry_uuid))
        await client.update_document_set(deprecation(sub.document_entry_uuid, original_status=DEPRECATED,
                                                     new_status=APPROVED))
        (entry,) = await client.find_documents(PATIENT_CX)
    assert (entry.entry_uuid, entry.status) == (sub.document_entry_uuid, APPROVED)
    assert (await status(registry))["status_updates"] == 2


async def test_a_second_deprecation_does_not_match_the_original_status(registry: Simulator) -> None:
    async with XdsClient(settings(registry.base)) as client:
        sub = await registered(client)
        update = deprecation(sub.document_entry_uuid)
        await client.update_document_set(update)
        with pytest.raises(XdsPermanent) as again:
            await client.update_document_set(deprecation(sub.document_entry_uuid))
        with pytest.raises(XdsPermanent) as resent:  # the very same message, as after a lost answer
            await client.update_document_set(update)
        (entry,) = await client.get_documents(entry_uuids=[sub.document_entry_uuid])
    assert again.value.codes == resent.value.codes == ("XDSMetadataUpdateError",)
    assert "OriginalStatus" in again.value.errors[0].code_context
    assert entry.status == DEPRECATED
    assert (await status(registry))["submission_sets"] == 2  # the refused updates registered nothing


async def test_an_unknown_entry_is_a_metadata_update_error(registry: Simulator) -> None:
    async with XdsClient(settings(registry.base)) as client:
        await registered(client)
        with pytest.raises(XdsPermanent) as failure:
            await client.update_document_set(deprecation("urn:uuid:00000000-0000-4000-8000-000000000000"))
        assert len(await client.find_documents(PATIENT_CX)) == 1
    assert failure.value.codes == ("XDSMetadataUpdateError",)


async def test_another_patients_submission_set_does_not_match(registry: Simulator) -> None:
    """XDSPatientIdDoesNotMatch is retried (XdsTransient) as for RAD-68: a merge may not have reached the registry."""
    async with XdsClient(settings(registry.base)) as client:
        sub = await registered(client)
        with pytest.raises(XdsTransient) as failure:
            await client.update_document_set(deprecation(sub.document_entry_uuid, "010594Y9032^^^&1.2.246.21&ISO"))
        (entry,) = await client.get_documents(entry_uuids=[sub.document_entry_uuid])
    assert failure.value.codes == ("XDSPatientIdDoesNotMatch",)
    assert entry.status == APPROVED


async def post(registry: Simulator, payload: etree._Element) -> tuple[int, soap.SoapMessage]:
    env, _ = soap.envelope(soap.ACTIONS["ITI-57"], payload, to=f"{registry.base}/xds/registry")
    body, content_type = soap.plain(env)
    async with aiohttp.ClientSession() as session, session.post(
            f"{registry.base}/xds/registry", data=body, headers={"Content-Type": content_type}) as response:
        return response.status, soap.parse(await response.read(), response.headers["Content-Type"])


def _misspelt(request: etree._Element) -> etree._Element:
    slot = request.find(f".//{RIM}Association/{RIM}Slot")
    assert slot is not None
    slot.tag = f"{RIM}Slto"
    return request


def _query(_: etree._Element) -> etree._Element:
    return etree.Element("{%s}AdhocQueryRequest" % soap.NS["query"], nsmap={"query": soap.NS["query"]})


def _with_a_reference(request: etree._Element) -> etree._Element:
    """An ITI-57 operation other than UpdateAvailabilityStatus: a HasMember to a registered entry."""
    objects = request.find(f"{RIM}RegistryObjectList")
    ss = request.find(f".//{RIM}RegistryPackage")
    assert objects is not None and ss is not None
    etree.SubElement(objects, f"{RIM}Association", id="urn:uuid:0b7e3d6c-5a36-4c9b-9f0e-6f2f1b1a2c0b",
                     associationType=rules.HAS_MEMBER, sourceObject=ss.get("id", ""),
                     targetObject="urn:uuid:0b7e3d6c-5a36-4c9b-9f0e-6f2f1b1a2c0c")
    return request


@pytest.mark.parametrize(("mutate", "code"), [
    (_misspelt, "XDSRegistryMetadataError"),
    (_query, "XDSRegistryMetadataError"),
    (_with_a_reference, "XDSMetadataUpdateOperationError"),
], ids=["schema-invalid", "not-submit-objects", "unsupported-operation"])
async def test_a_malformed_update_gets_a_failure_response(registry: Simulator, mutate: Any, code: str) -> None:
    async with XdsClient(settings(registry.base)) as client:
        sub = await registered(client)
    request = mutate(copy.deepcopy(deprecation(sub.document_entry_uuid).request))
    http_status, message = await post(registry, request)
    assert http_status == 200
    assert message.action == "urn:ihe:iti:2010:UpdateDocumentSetResponse"
    response = message.body()
    assert response.tag == f"{RS}RegistryResponse" and response.get("status") == FAILURE
    assert code in [e.get("errorCode") for e in response.iter(f"{RS}RegistryError")]
    assert xsd.validate(message.envelope) == []
    counters = await status(registry)
    assert (counters["approved"], counters["rejected"]) == (1, 1)
    assert list((registry.data / "messages").glob("*-ITI-57.raw"))


async def test_the_client_refuses_to_send_a_schema_invalid_update(registry: Simulator) -> None:
    update = deprecation("urn:uuid:00000000-0000-4000-8000-000000000000")
    _misspelt(update.request)
    async with XdsClient(settings(registry.base)) as client:
        with pytest.raises(XdsPermanent, match="not schema-valid"):
            await client.update_document_set(update)
    assert registry.sent("ITI-57") == []
