"""IHE IOCM end to end on the embedded bus: rejection notes built by the tests (highdicom, pydicom by hand) and
sent by pynetdicom and dcmtk's storescu withdraw instances from C-FIND, C-GET, WADO-RS and storage commitment,
tell the IAN subscriber which are UNAVAILABLE, and refuse what the reference archive refuses, with its status."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path

import pydicom
import pytest
import requests
from aiohttp import ClientSession
from dicomweb_client.api import DICOMwebClient
from highdicom.ko import KeyObjectSelection, KeyObjectSelectionDocument
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from gateway.core.iocm import ALREADY_REJECTED, DUPLICATE_NOTE, EXPIRY_NOT_AUTHORISED, SUBSEQUENT_OCCURRENCE
from tests.component.test_hl7 import QR_AE, get_study
from tests.component.test_notify_embedded import (
    CT,
    Gateway,
    Peer,
    referenced,
    references,
    request_commitment,
    running,
)
from tests.conftest import dcmtk
from tests.helpers import api_headers, free_port, run
from tests.notes import dcmtk_note

KOS = "1.2.840.10008.5.1.4.1.1.88.59"
REFRESH = 0.2
"""How often the receivers take in new rejections here; a test waits a few of these before it expects 0xA771."""
TITLES = {"113001": codes.DCM.RejectedForQualityReasons, "113037": codes.DCM.RejectedForPatientSafetyReasons,
          "113038": codes.DCM.IncorrectModalityWorklistEntry, "113039": codes.DCM.DataRetentionPolicyExpired}


def study(tmp_path: Path, series: int, each: int) -> list[Dataset]:
    """A study of ``series`` series of ``each`` CT instances, saved under ``tmp_path``."""
    study_uid = generate_uid()
    made = []
    for s in range(series):
        series_uid = generate_uid()
        for n in range(each):
            dataset = pydicom.dcmread(CT)
            dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study_uid, series_uid
            dataset.SeriesNumber, dataset.InstanceNumber = s + 1, n + 1
            dataset.SOPInstanceUID = generate_uid()
            dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
            dataset.save_as(tmp_path / f"{dataset.SOPInstanceUID}.dcm")
            made.append(dataset)
    return made


def note(title: str, rejected: list[Dataset]) -> Dataset:
    """A rejection note as a modality's software makes one, with highdicom's KOS builder."""
    content = KeyObjectSelection(document_title=TITLES[title], referenced_objects=rejected)
    return KeyObjectSelectionDocument(evidence=rejected, content=content, series_instance_uid=generate_uid(),
                                      series_number=99, sop_instance_uid=generate_uid(), instance_number=1,
                                      manufacturer="Modality")


def paths(tmp_path: Path, datasets: list[Dataset]) -> list[Path]:
    return [tmp_path / f"{dataset.SOPInstanceUID}.dcm" for dataset in datasets]


async def send(gateway: Gateway, dataset: Dataset, calling_ae: str = "MODALITY1") -> int:
    """C-STORE by pynetdicom; the status the gateway answered."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(str(dataset.SOPClassUID), ExplicitVRLittleEndian)

    def store() -> int:
        assoc = ae.associate("127.0.0.1", gateway.settings.dicom.port, ae_title="DICOMGW")
        assert assoc.is_established
        try:
            return int(assoc.send_c_store(dataset).Status)
        finally:
            assoc.release()

    return await asyncio.to_thread(store)


async def find(gateway: Gateway, tmp_path: Path, level: str, *keys: str) -> list[Dataset]:
    out = tmp_path / f"found-{free_port()}"
    out.mkdir()
    code, output = await run(dcmtk("findscu"), "-S", "-aet", QR_AE, "-aec", "DICOMGW", "-X", "-od", str(out),
                             "-k", f"QueryRetrieveLevel={level}", *(arg for key in keys for arg in ("-k", key)),
                             "127.0.0.1", str(gateway.settings.dicom.port))
    assert code == 0, output
    return [pydicom.dcmread(path) for path in out.iterdir()]


async def found(gateway: Gateway, tmp_path: Path, study_uid: str) -> set[str]:
    """SOP Instance UIDs dcmtk's findscu finds in the study, series by series (the hierarchical query)."""
    series = await find(gateway, tmp_path, "SERIES", f"StudyInstanceUID={study_uid}", "SeriesInstanceUID")
    instances = set()
    for answer in series:
        instances |= {str(image.SOPInstanceUID) for image in await find(
            gateway, tmp_path, "IMAGE", f"StudyInstanceUID={study_uid}",
            f"SeriesInstanceUID={answer.SeriesInstanceUID}", "SOPInstanceUID")}
    return instances


async def got(gateway: Gateway, tmp_path: Path, study_uid: str) -> set[str]:
    """SOP Instance UIDs dcmtk's getscu retrieves of the study."""
    return {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            for path in await get_study(gateway, tmp_path, study_uid)}


async def statuses(gateway: Gateway, study_uid: str) -> dict[str, str]:
    _, body = await gateway.get(f"/api/studies/{study_uid}")
    return {i["sop_instance_uid"]: i["status"] for s in body["series"] for i in s["instances"]}


async def until_status(gateway: Gateway, study_uid: str, uid: str, status: str) -> None:
    await gateway.until(f"/api/studies/{study_uid}", lambda body: any(
        i["sop_instance_uid"] == uid and i["status"] == status for s in body["series"] for i in s["instances"]))


async def unavailable_ians(ris: Peer, study_uid: str) -> list[Dataset]:
    """The IANs of the study that list an instance UNAVAILABLE, once there is one (those of rejections)."""
    async with asyncio.timeout(30):
        while True:
            found = [ian for ian in ris.notifications if str(ian.StudyInstanceUID) == study_uid and any(
                item.InstanceAvailability == "UNAVAILABLE" for series in ian.ReferencedSeriesSequence
                for item in series.ReferencedSOPSequence)]
            if found:
                return found
            await asyncio.sleep(0.1)


@pytest.fixture
def ris() -> Peer:
    return Peer("RIS")


@pytest.fixture
async def gateway(tmp_path: Path, ris: Peer) -> AsyncIterator[Gateway]:
    allowed = [{"ae_title": "MODALITY1"}, {"ae_title": "RIS"}, {"ae_title": "ADMIN", "permissions": ["store", "expire"]},
               {"ae_title": QR_AE, "permissions": ["query", "retrieve"]}]
    with ris.listening():
        async with running(tmp_path, dicom={"allowed_aes": allowed, "remote_aes": [ris.remote()]},
                           notify={"ian_subscribers": ["RIS"]}, iocm={"refresh_seconds": REFRESH}) as started:
            yield started


async def test_a_quality_rejection_withdraws_a_series_everywhere_and_tells_the_subscriber(
        tmp_path: Path, gateway: Gateway, ris: Peer) -> None:
    instances = study(tmp_path, 2, 2)
    study_uid = str(instances[0].StudyInstanceUID)
    kept, withdrawn = instances[:2], instances[2:]
    await gateway.store(*paths(tmp_path, instances))
    await ris.wait(1, "notifications")  # the study's IAN once stable: everything ONLINE

    rejection = note("113001", withdrawn)
    assert await send(gateway, rejection) == 0x0000
    await ris.wait(2, "notifications")

    ian = ris.notifications[1]
    availability = {str(item.ReferencedSOPInstanceUID): str(item.InstanceAvailability)
                    for series in ian.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert {uid: availability[uid] for uid in (str(d.SOPInstanceUID) for d in instances)} == {
        **{str(d.SOPInstanceUID): "ONLINE" for d in kept}, **{str(d.SOPInstanceUID): "UNAVAILABLE" for d in withdrawn}}
    assert not ian.ReferencedPerformedProcedureStepSequence
    assert await found(gateway, tmp_path, study_uid) == {str(d.SOPInstanceUID) for d in kept} | {
        str(rejection.SOPInstanceUID)}  # the note itself is an instance of the study, as in the reference archive
    assert await got(gateway, tmp_path, study_uid) >= {str(d.SOPInstanceUID) for d in kept}
    assert not await got(gateway, tmp_path, study_uid) & {str(d.SOPInstanceUID) for d in withdrawn}
    listed = await statuses(gateway, study_uid)
    assert [listed[str(d.SOPInstanceUID)] for d in instances] == ["stored", "stored", "rejected", "rejected"]
    _, rejections = await gateway.get(f"/api/studies/{study_uid}/rejections")
    assert [(n["sop_instance_uid"], n["title"], n["source_ae"]) for n in rejections["notes"]] == [
        (str(rejection.SOPInstanceUID), "113001", "MODALITY1")]
    assert {i["sop_instance_uid"] for i in rejections["instances"]} == {str(d.SOPInstanceUID) for d in withdrawn}

    series, uid = str(withdrawn[0].SeriesInstanceUID), str(withdrawn[0].SOPInstanceUID)
    async with (ClientSession(headers=api_headers(gateway.settings.data_dir)) as http,
                http.get(f"{gateway.api}/dicomweb/studies/{study_uid}/series/{series}/instances/{uid}") as response):
        assert response.status == 404  # WADO-RS: a rejected instance is not there to retrieve
    assert all((gateway.settings.data_dir / "objects").rglob(f"*{d.SOPInstanceUID}*") for d in withdrawn)

    await request_commitment(gateway.settings.dicom.port, references(instances), calling_ae="RIS")
    await ris.wait(1)
    [(_, report)] = ris.reports
    assert referenced(report, "ReferencedSOPSequence") == {str(d.SOPInstanceUID): None for d in kept}
    assert referenced(report, "FailedSOPSequence") == {  # no such object instance: not available here any more
        str(d.SOPInstanceUID): 0x0112 for d in withdrawn}


async def test_what_the_reference_archive_refuses_is_refused_with_its_status(tmp_path: Path, gateway: Gateway) -> None:
    instances = study(tmp_path, 1, 3)
    study_uid = str(instances[0].StudyInstanceUID)
    await gateway.store(*paths(tmp_path, instances))
    first, second, third = instances
    await until_status(gateway, study_uid, str(third.SOPInstanceUID), "stored")

    safety = note("113037", [first])
    assert await send(gateway, safety) == 0x0000
    await until_status(gateway, study_uid, str(first.SOPInstanceUID), "rejected")
    await asyncio.sleep(5 * REFRESH)  # the receiver has taken the rejection in
    assert await send(gateway, first) == SUBSEQUENT_OCCURRENCE  # hidden for patient safety: not taken again
    assert await send(gateway, note("113001", [first])) == ALREADY_REJECTED  # a lighter reason cannot overwrite
    assert await send(gateway, safety) == 0x0000  # the same note again, byte for byte: nothing to do
    other_content = copy.deepcopy(safety)
    other_content.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID = str(second.SOPInstanceUID)
    other_content.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID = str(second.SOPInstanceUID)
    assert await send(gateway, other_content) == DUPLICATE_NOTE  # its UID, other references
    assert await send(gateway, note("113039", [second])) == EXPIRY_NOT_AUTHORISED  # MODALITY1 may not delete
    broken = note("113001", [second])
    del broken.CurrentRequestedProcedureEvidenceSequence
    assert await send(gateway, broken) == 0xC000  # a note half understood withdraws nothing

    await asyncio.sleep(1)  # whatever was refused would have been stored by now
    listed = await statuses(gateway, study_uid)
    assert (listed[str(first.SOPInstanceUID)], listed[str(second.SOPInstanceUID)]) == ("rejected", "stored")


async def test_re_sent_rejected_instances_follow_their_title(tmp_path: Path, gateway: Gateway) -> None:
    instances = study(tmp_path, 1, 2)
    study_uid = str(instances[0].StudyInstanceUID)
    quality, expired = instances
    await gateway.store(*paths(tmp_path, instances))
    await until_status(gateway, study_uid, str(expired.SOPInstanceUID), "stored")
    assert await send(gateway, note("113001", [quality])) == 0x0000
    assert await send(gateway, note("113039", [expired]), calling_ae="ADMIN") == 0x0000
    await until_status(gateway, study_uid, str(quality.SOPInstanceUID), "rejected")
    await until_status(gateway, study_uid, str(expired.SOPInstanceUID), "rejected")

    code, output = await run(dcmtk("storescu"), "-aet", "MODALITY1", "-aec", "DICOMGW", "127.0.0.1",
                             str(gateway.settings.dicom.port), *map(str, paths(tmp_path, instances)))
    assert code == 0, output  # both answered Success: one ignored, one restored

    await until_status(gateway, study_uid, str(expired.SOPInstanceUID), "stored")  # retention no longer in force
    assert await found(gateway, tmp_path, study_uid) >= {str(expired.SOPInstanceUID)}
    listed = await statuses(gateway, study_uid)
    assert listed[str(quality.SOPInstanceUID)] == "rejected"
    _, body = await gateway.get(f"/api/studies/{study_uid}")
    versions = [i for s in body["series"] for i in s["instances"] if i["sop_instance_uid"] == str(quality.SOPInstanceUID)]
    assert len(versions) == 1  # the ignored copy was not kept


async def test_a_note_before_its_instances_rejects_them_on_arrival_and_an_incorrect_worklist_ian_names_a_step(
        tmp_path: Path, gateway: Gateway, ris: Peer) -> None:
    instances = study(tmp_path, 1, 2)
    study_uid = str(instances[0].StudyInstanceUID)
    early = note("113038", instances[1:])
    assert await send(gateway, early) == 0x0000
    await gateway.store(*paths(tmp_path, instances))
    await until_status(gateway, study_uid, str(instances[1].SOPInstanceUID), "rejected")
    assert await found(gateway, tmp_path, study_uid) == {str(instances[0].SOPInstanceUID), str(early.SOPInstanceUID)}
    _, rejections = await gateway.get(f"/api/studies/{study_uid}/rejections")
    assert [i["held"] for i in rejections["instances"]] == [True]

    late = note("113038", instances[:1])
    assert await send(gateway, late) == 0x0000
    [ian] = await unavailable_ians(ris, study_uid)
    [step] = ian.ReferencedPerformedProcedureStepSequence
    assert step.ReferencedSOPClassUID == "1.2.840.10008.3.1.2.3.3"
    assert pydicom.uid.UID(step.ReferencedSOPInstanceUID).is_valid


async def test_a_note_made_and_sent_by_dcmtk_is_applied(tmp_path: Path, gateway: Gateway) -> None:
    instances = study(tmp_path, 1, 2)
    study_uid, first = str(instances[0].StudyInstanceUID), instances[0]
    await gateway.store(*paths(tmp_path, instances))
    await until_status(gateway, study_uid, str(instances[1].SOPInstanceUID), "stored")
    path = dcmtk_note(tmp_path, "113037", "Rejected for Patient Safety Reasons",
                      [(str(first.SOPClassUID), str(first.SOPInstanceUID))], study_uid, str(first.SeriesInstanceUID),
                      patient_id=str(first.PatientID), patient_name=str(first.PatientName))
    code, output = await run(dcmtk("storescu"), "-aet", "MODALITY1", "-aec", "DICOMGW", "127.0.0.1",
                             str(gateway.settings.dicom.port), str(path))
    assert code == 0, output
    await until_status(gateway, study_uid, str(first.SOPInstanceUID), "rejected")
    await asyncio.sleep(5 * REFRESH)
    code, output = await run(dcmtk("storescu"), "-d", "-aet", "MODALITY1", "-aec", "DICOMGW", "127.0.0.1",
                             str(gateway.settings.dicom.port), str(paths(tmp_path, [first])[0]))
    assert "0xa771" in output.lower(), output  # storescu names the refusal; its exit code does not


async def test_stow_rs_takes_notes_and_refuses_rejected_instances_with_the_same_status(
        tmp_path: Path, gateway: Gateway) -> None:
    instances = study(tmp_path, 1, 2)
    study_uid, first = str(instances[0].StudyInstanceUID), instances[0]
    web = DICOMwebClient(f"{gateway.api}/dicomweb", headers=api_headers(gateway.settings.data_dir))
    await asyncio.to_thread(web.store_instances, instances, study_uid)
    await until_status(gateway, study_uid, str(instances[1].SOPInstanceUID), "stored")
    await asyncio.to_thread(web.store_instances, [note("113037", [first])], study_uid)
    await until_status(gateway, study_uid, str(first.SOPInstanceUID), "rejected")
    await asyncio.sleep(5 * REFRESH)

    with pytest.raises(requests.HTTPError) as refused:
        await asyncio.to_thread(web.store_instances, [first], study_uid)
    assert refused.value.response.status_code == 409
    [failed] = refused.value.response.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [SUBSEQUENT_OCCURRENCE]


async def test_a_note_found_contradictory_after_success_is_dead_lettered_with_its_status(
        tmp_path: Path, ris: Peer) -> None:
    instances = study(tmp_path, 1, 1)
    study_uid, first = str(instances[0].StudyInstanceUID), instances[0]
    with ris.listening():
        async with running(tmp_path, iocm={"check_on_receive": False}) as gateway:
            await gateway.store(*paths(tmp_path, instances))
            await until_status(gateway, study_uid, str(first.SOPInstanceUID), "stored")
            assert await send(gateway, note("113037", [first])) == 0x0000
            await until_status(gateway, study_uid, str(first.SOPInstanceUID), "rejected")
            lighter = note("113001", [first])
            assert await send(gateway, lighter) == 0x0000  # nothing asked before Success: the store stage decides
            expiry = note("113039", [first])
            assert await send(gateway, expiry) == 0x0000  # from an AE without the expire permission
            _, entries = await gateway.until("/api/dlq", lambda body: len(
                [e for e in body if e["stage"] == "store"]) == 2)
            _, rejections = await gateway.get(f"/api/studies/{study_uid}/rejections")
            listed = await statuses(gateway, study_uid)

    reasons = [e["reason"] for e in entries if e["stage"] == "store"]
    assert any("0xA774" in reason for reason in reasons) and any("0xA775" in reason for reason in reasons), reasons
    assert [n["title"] for n in rejections["notes"]] == ["113037"]
    assert not {str(lighter.SOPInstanceUID), str(expiry.SOPInstanceUID)} & set(listed)  # refused notes: not kept


async def test_a_retention_expiry_deletes_the_objects_once_its_grace_has_passed(tmp_path: Path, ris: Peer) -> None:
    instances = study(tmp_path, 1, 2)
    study_uid = str(instances[0].StudyInstanceUID)
    expired, kept = instances
    allowed = [{"ae_title": "MODALITY1"}, {"ae_title": "ADMIN", "permissions": ["store", "expire"]}]
    with ris.listening():
        async with running(tmp_path, dicom={"allowed_aes": allowed}, iocm={"retention_grace_seconds": 0}) as gateway:
            await gateway.store(*paths(tmp_path, instances))
            await until_status(gateway, study_uid, str(kept.SOPInstanceUID), "stored")
            objects = gateway.settings.data_dir / "objects"
            assert list(objects.rglob(f"*{expired.SOPInstanceUID}*"))
            assert await send(gateway, note("113039", [expired]), calling_ae="ADMIN") == 0x0000

            _, rejections = await gateway.until(f"/api/studies/{study_uid}/rejections", lambda body: all(
                i["deleted_at"] for i in body["instances"]) and bool(body["instances"]))
            listed = await statuses(gateway, study_uid)

    assert [(i["sop_instance_uid"], i["title"]) for i in rejections["instances"]] == [
        (str(expired.SOPInstanceUID), "113039")]
    assert not [path for path in objects.rglob(f"*{expired.SOPInstanceUID}*") if path.is_file()]
    assert str(expired.SOPInstanceUID) not in listed and listed[str(kept.SOPInstanceUID)] == "stored"


async def test_a_correction_that_moves_an_instance_to_another_study_withdraws_it_from_the_old_one(
        tmp_path: Path, gateway: Gateway, ris: Peer) -> None:
    instances = study(tmp_path, 1, 2)
    old_study = str(instances[0].StudyInstanceUID)
    await gateway.store(*paths(tmp_path, instances))
    await ris.wait(1, "notifications")
    moved = copy.deepcopy(instances[1])
    moved.StudyInstanceUID, moved.SeriesInstanceUID = generate_uid(), generate_uid()
    assert await send(gateway, moved) == 0x0000

    [ian] = await unavailable_ians(ris, old_study)
    assert {str(item.ReferencedSOPInstanceUID): str(item.InstanceAvailability)
            for series in ian.ReferencedSeriesSequence for item in series.ReferencedSOPSequence} == {
        str(instances[0].SOPInstanceUID): "ONLINE", str(instances[1].SOPInstanceUID): "UNAVAILABLE"}
    assert await found(gateway, tmp_path, old_study) == {str(instances[0].SOPInstanceUID)}
    assert await found(gateway, tmp_path, str(moved.StudyInstanceUID)) == {str(moved.SOPInstanceUID)}
