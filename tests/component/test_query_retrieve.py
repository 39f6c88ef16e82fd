"""C-FIND, C-MOVE and C-GET against the gateway in-process (receiver, store, api on the embedded bus), asked by
dcmtk's findscu, movescu and getscu and by pynetdicom, with dcmtk's storescp as the Move Destination."""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from tests.component.test_notify_embedded import CT, Gateway, running
from tests.conftest import dcmtk
from tests.helpers import free_port, run
from tests.peers import Orthanc

QR_AE = "VIEWER"
STORESCP_AE = "STORESCP"


def new_study(count: int, study_uid: str | None = None, **attributes: Any) -> list[Dataset]:
    """``count`` CT instances of a study (new unless ``study_uid``), one series, with ``attributes`` set."""
    study_uid, series_uid = study_uid or generate_uid(), generate_uid()
    made = []
    for n in range(count):
        dataset = pydicom.dcmread(CT)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study_uid, series_uid
            dataset.SOPInstanceUID = generate_uid()
            dataset.InstanceNumber = n + 1
            for keyword, value in attributes.items():
                setattr(dataset, keyword, value)
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        made.append(dataset)
    return made


def study(tmp_path: Path, name: str, count: int, **attributes: Any) -> list[tuple[Path, Dataset]]:
    """``new_study`` saved as files to send."""
    made = []
    for n, dataset in enumerate(new_study(count, **attributes)):
        path = tmp_path / f"{name}-{n}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        made.append((path, dataset))
    return made


@pytest.fixture
async def archive(tmp_path: Path) -> AsyncIterator[tuple[Gateway, int, dict[str, list[tuple[Path, Dataset]]]]]:
    """A gateway holding two studies of one patient and one of another, with a storescp as Move Destination."""
    storescp_port = free_port()
    async with running(tmp_path, ["receiver", "store", "api"], dicom={
        "allowed_aes": [{"ae_title": "MODALITY1"},
                        {"ae_title": QR_AE, "permissions": ["query", "retrieve"]},
                        {"ae_title": "STOREONLY"}],
        "remote_aes": [{"ae_title": STORESCP_AE, "host": "127.0.0.1", "port": storescp_port}],
    }) as gateway:
        studies = {
            "makela-ct": study(tmp_path, "a", 3, PatientID="P1", PatientName="Mäkelä^Jyrki",
                               SpecificCharacterSet="ISO_IR 192", StudyDate="20260105", AccessionNumber="A_1",
                               StudyDescription="THORAX"),
            "makela-old": study(tmp_path, "b", 1, PatientID="P1", PatientName="Mäkelä^Jyrki",
                                SpecificCharacterSet="ISO_IR 192", StudyDate="20250101", AccessionNumber="AB1"),
            "virtanen": study(tmp_path, "c", 2, PatientID="P2", PatientName="Virtanen^Anna", StudyDate="20260106",
                              AccessionNumber="X1", StudyDescription="thorax ap"),
        }
        await gateway.store(*(path for made in studies.values() for path, _ in made))
        await gateway.until("/api/studies", lambda body: sum(s["instances"] for s in body) == 6)
        yield gateway, storescp_port, studies


def find(port: int, model: str, identifier: Dataset, calling_ae: str = QR_AE,
         cancel_after: int | None = None) -> list[tuple[int, Dataset | None]]:
    """C-FIND as pynetdicom sends it: every response's status and identifier."""
    ae = AE(ae_title=calling_ae)
    uid = (PatientRootQueryRetrieveInformationModelFind if model == "patient"
           else StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(uid)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMGW")
    assert assoc.is_established
    responses = []
    try:
        for status, found in assoc.send_c_find(identifier, uid, msg_id=7):
            responses.append((int(status.Status), found))
            if cancel_after is not None and len(responses) == cancel_after:
                assoc.send_c_cancel(7, assoc._get_valid_context(uid, "", "scu").context_id)
    finally:
        assoc.release()
    return responses


def keys(**values: str) -> Dataset:
    dataset = Dataset()
    for keyword, value in values.items():
        setattr(dataset, keyword, value)
    return dataset


async def test_findscu_study_level_returns_the_requested_keys_of_each_match(
        archive: tuple[Gateway, int, dict[str, Any]], tmp_path: Path) -> None:
    gateway, _, studies = archive
    out = tmp_path / "found"
    out.mkdir()
    code, output = await run(
        dcmtk("findscu"), "-S", "-aet", QR_AE, "-aec", "DICOMGW", "-X", "-od", str(out),
        "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=P1", "-k", "StudyDate=20260101-20260131",
        "-k", "StudyInstanceUID", "-k", "PatientName", "-k", "ModalitiesInStudy",
        "-k", "NumberOfStudyRelatedInstances", "127.0.0.1", str(gateway.settings.dicom.port))
    assert code == 0, output
    [answer] = [pydicom.dcmread(path) for path in sorted(out.iterdir())]
    assert answer.StudyInstanceUID == studies["makela-ct"][0][1].StudyInstanceUID
    assert str(answer.PatientName) == "Mäkelä^Jyrki"
    assert answer.ModalitiesInStudy == "CT"
    assert int(answer.NumberOfStudyRelatedInstances) == 3
    assert answer.QueryRetrieveLevel == "STUDY"
    assert "AccessionNumber" not in answer  # only the keys asked for come back


async def test_matching_rules_person_names_wildcards_literals_and_uid_lists(
        archive: tuple[Gateway, int, dict[str, Any]]) -> None:
    gateway, _, studies = archive
    port = gateway.settings.dicom.port

    def study_uids(**values: str) -> set[str]:
        responses = find(port, "study", keys(**{"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "", **values}))
        assert responses[-1][0] == 0x0000
        return {str(found.StudyInstanceUID) for status, found in responses[:-1] if found is not None}

    uid = {name: made[0][1].StudyInstanceUID for name, made in studies.items()}
    assert await asyncio.to_thread(study_uids, PatientName="MÄKE*") == {uid["makela-ct"], uid["makela-old"]}
    assert await asyncio.to_thread(study_uids, StudyDescription="thorax*") == {uid["virtanen"]}
    assert await asyncio.to_thread(study_uids, AccessionNumber="A_1") == {uid["makela-ct"]}
    assert await asyncio.to_thread(study_uids, StudyDate="-20251231") == {uid["makela-old"]}
    assert await asyncio.to_thread(
        study_uids, StudyInstanceUID=f"{uid['makela-old']}\\{uid['virtanen']}") == {uid["makela-old"],
                                                                                    uid["virtanen"]}


async def test_patient_root_and_image_level_follow_the_hierarchy(
        archive: tuple[Gateway, int, dict[str, Any]]) -> None:
    gateway, _, studies = archive
    port = gateway.settings.dicom.port
    patients = await asyncio.to_thread(find, port, "patient", keys(
        QueryRetrieveLevel="PATIENT", PatientID="P1", PatientName="", NumberOfPatientRelatedStudies=""))
    [(status, patient), (final, _)] = patients
    assert (status, final) == (0xFF00, 0x0000)
    assert patient is not None and int(patient.NumberOfPatientRelatedStudies) == 2
    made = studies["makela-ct"]
    images = await asyncio.to_thread(find, port, "study", keys(
        QueryRetrieveLevel="IMAGE", StudyInstanceUID=made[0][1].StudyInstanceUID,
        SeriesInstanceUID=made[0][1].SeriesInstanceUID, SOPInstanceUID="", InstanceNumber=""))
    assert sorted(int(found.InstanceNumber) for _, found in images[:-1] if found) == [1, 2, 3]
    # a SERIES query in the Study Root model must name its study; an IMAGE key in a STUDY query is invalid
    [(status, _)] = await asyncio.to_thread(find, port, "study", keys(QueryRetrieveLevel="SERIES",
                                                                      SeriesInstanceUID=""))
    assert status == 0xA900
    [(status, _)] = await asyncio.to_thread(find, port, "study", keys(QueryRetrieveLevel="STUDY",
                                                                      SOPInstanceUID=""))
    assert status == 0xA900


async def test_an_ae_without_permission_is_refused(archive: tuple[Gateway, int, dict[str, Any]]) -> None:
    gateway, _, _ = archive
    port = gateway.settings.dicom.port
    [(status, _)] = await asyncio.to_thread(find, port, "study", keys(QueryRetrieveLevel="STUDY",
                                                                      StudyInstanceUID=""), "STOREONLY")
    assert status == 0x0124


async def test_movescu_delivers_the_study_to_the_move_destination(
        archive: tuple[Gateway, int, dict[str, Any]], tmp_path: Path) -> None:
    gateway, storescp_port, studies = archive
    received = tmp_path / "received"
    received.mkdir()
    storescp = await asyncio.create_subprocess_exec(
        dcmtk("storescp"), "-aet", STORESCP_AE, "-od", str(received), "+B", str(storescp_port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        await asyncio.sleep(0.5)
        made = studies["makela-ct"]
        code, output = await run(
            dcmtk("movescu"), "-S", "-aet", QR_AE, "-aec", "DICOMGW", "-aem", STORESCP_AE,
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={made[0][1].StudyInstanceUID}",
            "127.0.0.1", str(gateway.settings.dicom.port))
        assert code == 0, output
    finally:
        storescp.terminate()
        await storescp.wait()
    files = {pydicom.dcmread(path).SOPInstanceUID: path for path in received.iterdir()}
    assert set(files) == {dataset.SOPInstanceUID for _, dataset in made}
    for path, dataset in made:  # the attributes as sent (storescp drops the trailing padding CT_small has)
        sent, arrived = pydicom.dcmread(path), pydicom.dcmread(files[dataset.SOPInstanceUID])
        del sent[0xFFFCFFFC]
        assert arrived == sent


def move(port: int, destination: str, identifier: Dataset) -> list[tuple[int, Dataset]]:
    ae = AE(ae_title=QR_AE)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMGW")
    assert assoc.is_established
    try:
        return [(int(status.Status), status) for status, _ in
                assoc.send_c_move(identifier, destination, StudyRootQueryRetrieveInformationModelMove)]
    finally:
        assoc.release()


async def test_move_to_an_unknown_or_unreachable_destination(archive: tuple[Gateway, int, dict[str, Any]]) -> None:
    gateway, _, studies = archive
    port = gateway.settings.dicom.port
    identifier = keys(QueryRetrieveLevel="STUDY", StudyInstanceUID=studies["virtanen"][0][1].StudyInstanceUID)
    [(status, _)] = await asyncio.to_thread(move, port, "NOBODY", identifier)
    assert status == 0xA801
    # STORESCP is configured but nothing listens: every sub-operation fails, none was possible
    responses = await asyncio.to_thread(move, port, STORESCP_AE, identifier)
    status, final = responses[-1]
    assert status == 0xA702
    assert int(final.NumberOfFailedSuboperations) == 2


async def test_c_get_returns_the_instances_on_the_requestors_association(
        archive: tuple[Gateway, int, dict[str, Any]], tmp_path: Path) -> None:
    gateway, _, studies = archive
    made = studies["virtanen"]
    received: list[Dataset] = []

    def stored(event: evt.Event) -> int:
        received.append(event.dataset)
        return 0x0000

    def get(roles: bool) -> list[tuple[int, Dataset]]:
        ae = AE(ae_title=QR_AE)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", gateway.settings.dicom.port, ae_title="DICOMGW",
                             ext_neg=[build_role(CTImageStorage, scp_role=True)] if roles else [],
                             evt_handlers=[(evt.EVT_C_STORE, stored)])
        assert assoc.is_established
        try:
            return [(int(status.Status), status) for status, _ in assoc.send_c_get(
                keys(QueryRetrieveLevel="SERIES", StudyInstanceUID=made[0][1].StudyInstanceUID,
                     SeriesInstanceUID=made[0][1].SeriesInstanceUID), StudyRootQueryRetrieveInformationModelGet)]
        finally:
            assoc.release()

    responses = await asyncio.to_thread(get, True)
    assert responses[-1][0] == 0x0000
    assert int(responses[-1][1].NumberOfCompletedSuboperations) == 2
    assert sorted(d.SOPInstanceUID for d in received) == sorted(d.SOPInstanceUID for _, d in made)
    # without the SCP role the requestor cannot receive: the sub-operations fail, the request does not hang
    responses = await asyncio.to_thread(get, False)
    assert responses[-1][0] == 0xA702
    assert int(responses[-1][1].NumberOfFailedSuboperations) == 2

    out = tmp_path / "getscu"
    out.mkdir()
    code, output = await run(dcmtk("getscu"), "-S", "-aet", QR_AE, "-aec", "DICOMGW", "-od", str(out),
                             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={made[0][1].StudyInstanceUID}",
                             "127.0.0.1", str(gateway.settings.dicom.port))
    assert code == 0, output
    assert sorted(pydicom.dcmread(path).SOPInstanceUID for path in out.iterdir()) == sorted(
        d.SOPInstanceUID for _, d in made)


async def test_cancel_stops_the_matches_and_too_many_matches_are_refused_before_any_is_sent(tmp_path: Path) -> None:
    made = tmp_path / "made"
    made.mkdir()
    study_uid, series_uid = generate_uid(), generate_uid()
    for n in range(300):
        dataset = Dataset()
        dataset.SOPClassUID, dataset.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", generate_uid()
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study_uid, series_uid
        dataset.PatientID, dataset.PatientName, dataset.Modality, dataset.InstanceNumber = "P3", "Many^Images", "OT", n
        dataset.file_meta = pydicom.dataset.FileMetaDataset()
        dataset.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
        dataset.save_as(made / f"{n}.dcm", enforce_file_format=True)
    async with running(tmp_path, ["receiver", "store", "api"], dicom={
            "allowed_aes": [{"ae_title": "MODALITY1"}, {"ae_title": QR_AE, "permissions": ["query"]}]},
            query={"max_results": 299}) as gateway:
        await gateway.store(*sorted(made.iterdir()))
        await gateway.until("/api/studies", lambda body: sum(s["instances"] for s in body) == 300)
        port = gateway.settings.dicom.port
        images = keys(QueryRetrieveLevel="IMAGE", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid,
                      SOPInstanceUID="")
        [(status, _)] = await asyncio.to_thread(find, port, "study", images)
        assert status == 0xA700  # 300 match, 299 may be returned: refused before the first
    async with running(tmp_path, ["receiver", "api"], dicom={
            "allowed_aes": [{"ae_title": QR_AE, "permissions": ["query"]}]}) as gateway:
        responses = await asyncio.to_thread(find, gateway.settings.dicom.port, "study", images, QR_AE, 1)
        assert responses[-1][0] == 0xFE00
        assert 1 <= len(responses) - 1 < 300


async def test_orthanc_queries_the_gateway_and_moves_a_study_to_itself(tmp_path: Path) -> None:
    gateway_port = free_port()
    orthanc = await asyncio.to_thread(Orthanc, tmp_path / "orthanc",
                                      {"gateway": ("DICOMGW", "127.0.0.1", gateway_port)})
    try:
        async with running(tmp_path, ["receiver", "store", "api"], dicom={
                "port": gateway_port,
                "allowed_aes": [{"ae_title": "MODALITY1"}, {"ae_title": "ORTHANC", "permissions": ["query", "retrieve"]}],
                "remote_aes": [{"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}]}) as gateway:
            made = study(tmp_path, "o", 2, PatientID="P7", PatientName="Östman^Åke", SpecificCharacterSet="ISO_IR 192",
                         AccessionNumber="ORT1")
            await gateway.store(*(path for path, _ in made))
            await gateway.until("/api/studies", lambda body: sum(s["instances"] for s in body) == 2)
            query = await asyncio.to_thread(orthanc.post, "/modalities/gateway/query", {
                "Level": "Study", "Query": {"PatientID": "P7", "PatientName": "", "AccessionNumber": ""}})
            answers = await asyncio.to_thread(orthanc.get, f"/queries/{query['ID']}/answers?expand")
            [answer] = answers
            assert answer["0020,000d"]["Value"] == made[0][1].StudyInstanceUID
            assert answer["0010,0010"]["Value"] == "Östman^Åke"
            assert answer["0008,0050"]["Value"] == "ORT1"
            await asyncio.to_thread(orthanc.post, f"/queries/{query['ID']}/retrieve",
                                    {"TargetAet": "ORTHANC", "Synchronous": True})
            instances = await asyncio.to_thread(orthanc.get, "/instances?expand")
    finally:
        await asyncio.to_thread(orthanc.stop)
    assert sorted(i["MainDicomTags"]["SOPInstanceUID"] for i in instances) == sorted(
        d.SOPInstanceUID for _, d in made)


async def test_a_move_goes_on_when_its_requestor_aborts(archive: tuple[Gateway, int, dict[str, Any]],
                                                        tmp_path: Path) -> None:
    gateway, storescp_port, studies = archive
    made = studies["makela-ct"]
    received = tmp_path / "after-abort"
    received.mkdir()
    storescp = await asyncio.create_subprocess_exec(
        dcmtk("storescp"), "-aet", STORESCP_AE, "-od", str(received), str(storescp_port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)

    def move_then_abort() -> int:
        ae = AE(ae_title=QR_AE)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate("127.0.0.1", gateway.settings.dicom.port, ae_title="DICOMGW")
        assert assoc.is_established
        responses = assoc.send_c_move(keys(QueryRetrieveLevel="STUDY", StudyInstanceUID=made[0][1].StudyInstanceUID),
                                      STORESCP_AE, StudyRootQueryRetrieveInformationModelMove)
        status, _ = next(responses)
        assoc.abort()
        return int(status.Status)

    try:
        await asyncio.sleep(0.5)
        assert await asyncio.to_thread(move_then_abort) == 0xFF00
        async with asyncio.timeout(30):
            while len(list(received.iterdir())) < len(made):
                await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # the last file is written out
    finally:
        storescp.terminate()
        await storescp.wait()
    assert sorted(pydicom.dcmread(path).SOPInstanceUID for path in received.iterdir()) == sorted(
        d.SOPInstanceUID for _, d in made)


async def test_an_association_idle_after_a_query_is_still_timed_out(tmp_path: Path) -> None:
    async with running(tmp_path, ["receiver", "api"], dicom={
            "network_timeout_seconds": 1.5, "allowed_aes": [{"ae_title": QR_AE, "permissions": ["query"]}]}) as gateway:

        def query_then_idle() -> bool:
            ae = AE(ae_title=QR_AE)
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
            assoc = ae.associate("127.0.0.1", gateway.settings.dicom.port, ae_title="DICOMGW")
            assert assoc.is_established
            [(status, _)] = [(s, i) for s, i in assoc.send_c_find(
                keys(QueryRetrieveLevel="STUDY", StudyInstanceUID=""), StudyRootQueryRetrieveInformationModelFind)]
            assert int(status.Status) == 0x0000
            for _ in range(50):  # up to 5 s
                if not assoc.is_established:
                    return True
                time.sleep(0.1)
            assoc.release()
            return False

        assert await asyncio.to_thread(query_then_idle)
