"""XDS-I.b registration end to end on the embedded bus, against the project's XDS simulator: a study sent with
dcmtk becomes stable, its KOS manifest is registered by RAD-68, found by ITI-18 and retrieved by ITI-43."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from io import BytesIO
from pathlib import Path
from typing import Any

import aiohttp
import pydicom
import pytest
from aiohttp import web

from benchmarks.datasets import KINDS, generate
from gateway import dead_letter
from gateway.app import build_bus
from gateway.dicom.kos_check import check_kos
from gateway.metrics import Metrics
from gateway.settings import XdsSettings
from gateway.xds import simulator, soap, xsd
from gateway.xds.client import XdsClient
from tests.component.test_notify_embedded import Gateway, Peer, running
from tests.helpers import free_port

REPOSITORY_UID = "1.2.246.10.1234567.99.1"


class Simulator:
    def __init__(self, data: Path, port: int) -> None:
        self.data = data
        self.url = f"http://127.0.0.1:{port}"

    async def control(self, command: dict[str, Any]) -> None:
        async with aiohttp.ClientSession() as http, http.post(f"{self.url}/control", json=command) as response:
            assert response.status == 200, await response.text()

    async def status(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(f"{self.url}/status") as response:
            result: dict[str, Any] = await response.json()
            return result

    def xds(self) -> dict[str, Any]:
        return {"repository_url": f"{self.url}/xds/repository", "registry_url": f"{self.url}/xds/registry",
                "repository_unique_id": REPOSITORY_UID, "organization_oid": "1.2.246.10.1234567",
                "organization_name": "Example Hospital District", "retrieve_location_uid": REPOSITORY_UID,
                "retry_initial_seconds": 0.5, "retry_max_seconds": 1, "stable_after_seconds": 2,
                "stability_check_seconds": 0.5, "trigger_on_commitment": False}


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Simulator]:
    port = free_port()
    runner = web.AppRunner(simulator.create_app(tmp_path / "xds", repository_unique_id=REPOSITORY_UID))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield Simulator(tmp_path / "xds", port)
    await runner.cleanup()


def study(tmp_path: Path, count: int) -> list[Path]:
    return generate(KINDS["tiny"], count, tmp_path / f"study-{count}", studies=1)


async def registered(gateway: Gateway, study_uid: str, generation: int = 1) -> dict[str, Any]:
    _, body = await gateway.until(f"/api/studies/{study_uid}", lambda s: s["registration"]["state"] == "registered"
                                  and s["registration"]["manifests"][0]["generation"] >= generation, timeout=60)
    registration: dict[str, Any] = body["registration"]
    return registration


async def test_a_stable_study_is_registered_found_and_retrieved(tmp_path: Path, registry: Simulator) -> None:
    files = study(tmp_path, 3)
    for path in files:  # the study's own attributes, which its manifest must carry (type 2 in the KOS IOD)
        dataset = pydicom.dcmread(path)
        dataset.SpecificCharacterSet = "ISO_IR 192"
        dataset.StudyID, dataset.ReferringPhysicianName = "S42", "Lääkäri^Liisa"
        dataset.save_as(path)
    datasets = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    study_uid, patient_id = str(datasets[0].StudyInstanceUID), str(datasets[0].PatientID)
    async with running(tmp_path, xds=registry.xds()) as gateway:
        await gateway.store(*files)
        registration = await registered(gateway, study_uid)
        status, found = await gateway.get(f"/api/xds/documents?patient_id={patient_id}")

    [manifest] = registration["manifests"]
    assert manifest["status"] == "current" and manifest["instances"] == 3
    assert status == 200
    [entry] = found
    assert entry["uniqueId"] == manifest["document_unique_id"]
    assert entry["mimeType"] == "application/dicom"

    accepted = (await registry.status())
    assert accepted["accepted"] >= 1 and accepted["rejected"] == 0, accepted
    for saved in (registry.data / "messages").glob("*RAD-68*.xml"):
        assert xsd.validate(soap.parse_xml(saved.read_bytes())) == [], saved.name

    async with XdsClient(XdsSettings(**{k: v for k, v in registry.xds().items()
                                        if k in XdsSettings.model_fields})) as client:
        document = await client.retrieve_document(manifest["document_unique_id"], REPOSITORY_UID)
    kos = pydicom.dcmread(BytesIO(document))
    assert kos.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59"
    assert (kos.StudyID, str(kos.ReferringPhysicianName)) == ("S42", "Lääkäri^Liisa")
    assert [f for f in check_kos(kos, manifest=True) if f.severity == "error"] == []
    assert kos.SOPInstanceUID == manifest["document_unique_id"]
    [evidence] = kos.CurrentRequestedProcedureEvidenceSequence
    listed = {str(item.ReferencedSOPInstanceUID)
              for series in evidence.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert listed == {str(d.SOPInstanceUID) for d in datasets}


async def test_more_instances_after_registration_replace_the_manifest(tmp_path: Path, registry: Simulator) -> None:
    files = study(tmp_path, 4)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    async with running(tmp_path, xds=registry.xds()) as gateway:
        await gateway.store(*files[:2])
        first = (await registered(gateway, study_uid))["manifests"][0]
        await gateway.store(*files[2:])
        replaced = await registered(gateway, study_uid, generation=2)
        patient_id = str(pydicom.dcmread(files[0], stop_before_pixels=True).PatientID)
        _, approved = await gateway.get(f"/api/xds/documents?patient_id={patient_id}")
    current, previous = replaced["manifests"]
    assert current["status"] == "current" and current["instances"] == 4
    assert current["replaces_entry_uuid"] == first["entry_uuid"] == previous["entry_uuid"]
    assert previous["status"] == "replaced"
    assert [entry["uniqueId"] for entry in approved] == [current["document_unique_id"]]


async def test_registry_down_is_retried_until_it_answers(tmp_path: Path, registry: Simulator) -> None:
    files = study(tmp_path, 2)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    await registry.control({"fail_next": 2, "http_status": 503})
    async with running(tmp_path, xds=registry.xds()) as gateway:
        await gateway.store(*files)
        registration = await registered(gateway, study_uid)
    assert registration["attempts"] == 3


async def test_metadata_refused_by_the_registry_is_dead_lettered_with_its_codes(
    tmp_path: Path, registry: Simulator,
) -> None:
    files = study(tmp_path, 2)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    await registry.control({"fail_next": 1, "registry_error": "XDSRegistryMetadataError"})
    async with running(tmp_path, xds=registry.xds()) as gateway:
        await gateway.store(*files)
        _, body = await gateway.until(f"/api/studies/{study_uid}",
                                      lambda s: s["registration"]["state"] == "failed", timeout=60)
        bus = build_bus(gateway.settings, Metrics())
        [entry] = await dead_letter.entries(bus, gateway.settings.topics)
        assert entry.stage == "register" and "XDSRegistryMetadataError" in entry.reason
        assert body["registration"]["attempts"] == 1

        await dead_letter.redrive(bus, gateway.settings.topics, entry)
        await registered(gateway, study_uid)


async def test_ian_waits_for_registration_when_so_configured(tmp_path: Path, registry: Simulator) -> None:
    ris = Peer("RIS1")
    files = study(tmp_path, 2)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    await registry.control({"fail_next": 2, "http_status": 503})
    with ris.listening():
        async with running(tmp_path, xds=registry.xds(), dicom={"remote_aes": [ris.remote()]},
                           notify={"ian_subscribers": ["RIS1"], "ian_trigger": "registered"}) as gateway:
            await gateway.store(*files)
            await registered(gateway, study_uid)
            await ris.wait(1, "notifications")
            await asyncio.sleep(1)
            _, body = await gateway.get(f"/api/studies/{study_uid}")
    [notification] = ris.notifications
    assert str(notification.StudyInstanceUID) == study_uid
    assert body["registration"]["attempts"] == 3  # the IAN came after the registration, not at stability
