"""QIDO-RS, WADO-RS and STOW-RS against the gateway in-process (receiver, store, api on the embedded bus), asked
by dicomweb-client (PyPI) and by plain HTTP where the bytes on the wire matter."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession
from dicomweb_client.api import DICOMwebClient
from pydicom.uid import generate_uid
from requests.exceptions import HTTPError

from tests.component.test_notify_embedded import Gateway, running
from tests.component.test_query_retrieve import new_study
from tests.helpers import api_headers, dataset_bytes


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running(tmp_path, ["receiver", "store", "api"]) as gateway:
        yield gateway


def client(gateway: Gateway) -> DICOMwebClient:
    return DICOMwebClient(f"{gateway.api}/dicomweb", headers=api_headers(gateway.settings.data_dir))


async def stored(gateway: Gateway, count: int) -> None:
    await gateway.until("/api/studies", lambda body: sum(s["instances"] for s in body) == count)


async def test_stow_then_qido_and_wado_round_trip(gateway: Gateway, tmp_path: Path) -> None:
    web = client(gateway)
    first = new_study(3, PatientID="P1", PatientName="Mäkelä^Jyrki", SpecificCharacterSet="ISO_IR 192",
                      AccessionNumber="ACC1")
    second = new_study(2, PatientID="P2", PatientName="Virtanen^Anna", AccessionNumber="ACC2")
    answer = await asyncio.to_thread(web.store_instances, first, first[0].StudyInstanceUID)
    assert len(answer.ReferencedSOPSequence) == 3 and "FailedSOPSequence" not in answer
    await asyncio.to_thread(web.store_instances, second)
    await stored(gateway, 5)

    studies = await asyncio.to_thread(web.search_for_studies, search_filters={"PatientName": "mäkelä*"})
    [study] = studies
    assert study["0020000D"]["Value"] == [first[0].StudyInstanceUID]
    assert study["00100010"]["Value"] == [{"Alphabetic": "Mäkelä^Jyrki"}]
    assert study["00201208"]["Value"] == [3]
    assert study["00081190"]["Value"][0].endswith(f"/dicomweb/studies/{first[0].StudyInstanceUID}")
    series = await asyncio.to_thread(web.search_for_series, first[0].StudyInstanceUID)
    assert [s["0020000E"]["Value"] for s in series] == [[first[0].SeriesInstanceUID]]
    found = await asyncio.to_thread(web.search_for_instances, first[0].StudyInstanceUID,
                                    first[0].SeriesInstanceUID, fields=["InstanceNumber"])
    assert sorted(i["00200013"]["Value"][0] for i in found) == [1, 2, 3]
    assert await asyncio.to_thread(web.search_for_studies, search_filters={"PatientID": "NOBODY"}) == []

    retrieved = await asyncio.to_thread(web.retrieve_study, first[0].StudyInstanceUID)
    assert sorted(d.SOPInstanceUID for d in retrieved) == sorted(d.SOPInstanceUID for d in first)
    metadata = await asyncio.to_thread(web.retrieve_instance_metadata, first[0].StudyInstanceUID,
                                         first[0].SeriesInstanceUID, first[0].SOPInstanceUID)
    assert metadata["00100020"]["Value"] == ["P1"]
    assert "7FE00010" not in metadata  # no bulk data in metadata

    # transfer-syntax=* gives each data set byte for byte as it was stored
    original = tmp_path / "original.dcm"
    first[1].save_as(original, enforce_file_format=True)
    url = (f"{gateway.api}/dicomweb/studies/{first[1].StudyInstanceUID}/series/{first[1].SeriesInstanceUID}"
           f"/instances/{first[1].SOPInstanceUID}")
    async with ClientSession(headers=api_headers(gateway.settings.data_dir)) as http, http.get(url, headers={
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}) as response:
        assert response.status == 200
        content_type = response.headers["Content-Type"]
        assert content_type.startswith('multipart/related; type="application/dicom"')
        body = await response.read()
    boundary = re.search(r"boundary=([^;]+)", content_type).group(1)  # type: ignore[union-attr]
    [part] = [chunk for chunk in body.split(f"--{boundary}".encode()) if b"Content-Type" in chunk]
    received = tmp_path / "received.dcm"
    received.write_bytes(part.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n"))
    assert dataset_bytes(received) == dataset_bytes(original)


async def test_stow_answers_per_instance_failures(gateway: Gateway) -> None:
    web = client(gateway)
    study = generate_uid()
    good = new_study(2, study)
    stray = new_study(1)
    answer = await asyncio.to_thread(web.store_instances, [good[0], stray[0], good[1]], study)  # 202
    assert [int(item.FailureReason) for item in answer.FailedSOPSequence] == [0xC409]
    assert answer.FailedSOPSequence[0].ReferencedSOPInstanceUID == stray[0].SOPInstanceUID
    assert len(answer.ReferencedSOPSequence) == 2
    with pytest.raises(HTTPError) as none:
        await asyncio.to_thread(web.store_instances, stray, study)
    assert none.value.response.status_code == 409
    await stored(gateway, 2)

    async with ClientSession(headers=api_headers(gateway.settings.data_dir)) as http:
        url = f"{gateway.api}/dicomweb/studies"
        async with http.post(url, data=b"--x\r\nnot a body", headers={
                "Content-Type": 'multipart/related; type="application/dicom"; boundary=y'}) as response:
            assert response.status == 400
        async with http.post(url, data=b"{}", headers={"Content-Type": "application/json"}) as response:
            assert response.status == 415
    async with ClientSession() as http, http.get(f"{gateway.api}/dicomweb/studies") as response:
        assert response.status == 401


async def test_qido_pages_and_says_when_there_are_more(gateway: Gateway) -> None:
    web = client(gateway)
    for _ in range(5):
        await asyncio.to_thread(web.store_instances, new_study(1, PatientID="PAGED"))
    await stored(gateway, 5)
    everything = await asyncio.to_thread(web.search_for_studies, search_filters={"PatientID": "PAGED"})
    uids = [study["0020000D"]["Value"][0] for study in everything]
    assert len(uids) == 5
    page = await asyncio.to_thread(web.search_for_studies, search_filters={"PatientID": "PAGED"}, limit=2,
                                   offset=2)
    assert [study["0020000D"]["Value"][0] for study in page] == uids[2:4]
    assert await asyncio.to_thread(web.search_for_studies, search_filters={"PatientID": "PAGED"}, offset=5) == []
    async with (ClientSession(headers=api_headers(gateway.settings.data_dir)) as http,
                http.get(f"{gateway.api}/dicomweb/studies?PatientID=PAGED&limit=2") as response):
        assert response.status == 200
        assert "offset=2" in response.headers["Warning"]
        async with http.get(f"{gateway.api}/dicomweb/studies?PatientID=PAGED&SeriesDescription=x") as partly:
            assert partly.status == 200 and "SeriesDescription" in partly.headers["Warning"]
        async with http.get(f"{gateway.api}/dicomweb/studies?NotAnAttribute=1") as bad:
            assert bad.status == 400
