"""IHE IOCM rejection notes through the gateway as a real process: a note sent with dcmtk withdraws an instance,
is forwarded to the archive that stored it (Orthanc, with storage commitment) only once that archive had the
instances, and to no other; and a SIGKILL between the note's application and the study's re-registration loses
neither the replacement manifest (RPLC) nor the IAN that says the instance is UNAVAILABLE, nor, once every
instance is withdrawn, the deprecation of the manifest (ITI-57)."""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from benchmarks.datasets import KINDS, generate
from gateway.settings import XdsSettings
from gateway.xds.client import XdsClient
from tests.component.test_notify_embedded import Peer
from tests.component.test_register_embedded import REPOSITORY_UID, Simulator, registry
from tests.conftest import dcmtk
from tests.helpers import free_port, run
from tests.integration.test_forward_resilience import forwarding_environment, study
from tests.peers import Orthanc
from tests.process import GatewayProcess

__all__ = ["registry"]

KOS = "1.2.840.10008.5.1.4.1.1.88.59"
QUALITY = ("113001", "DCM", "Rejected for Quality Reasons")
COPIED = ("SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
          "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
"""Patient and General Study attributes the note takes from the study (type 2 ones empty when absent)."""
OPTIONAL = ("SpecificCharacterSet", "IssuerOfPatientID")
"""Of those, the ones copied only when the study has them (type 3, or 1C)."""


# --- helpers ------------------------------------------------------------------------------------------------------


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


def _sop(instance: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = instance.SOPClassUID
    item.ReferencedSOPInstanceUID = instance.SOPInstanceUID
    return item


def rejection_note(withdrawn: Sequence[Dataset], path: Path, title: tuple[str, str, str] = QUALITY) -> Dataset:
    """A KOS rejection note for ``withdrawn`` (instances of one study and series), built by hand as a modality or
    a PACS workstation would (PS3.3 A.35.4, TID 2010, CID 7011 title), saved as a Part 10 file at ``path``."""
    first = withdrawn[0]
    note = Dataset()
    for keyword in COPIED:
        if keyword in first:
            note[keyword] = first[keyword]
        elif keyword not in OPTIONAL:
            setattr(note, keyword, "")
    note.SOPClassUID = KOS
    note.SOPInstanceUID = generate_uid()
    note.Modality = "KO"
    note.SeriesInstanceUID = generate_uid()
    note.SeriesNumber = 999
    note.InstanceNumber = 1
    note.Manufacturer = "IOCM test"
    now = datetime.now()
    note.ContentDate, note.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    note.ReferencedPerformedProcedureStepSequence = DicomSequence()
    note.ValueType = "CONTAINER"
    note.ContinuityOfContent = "SEPARATE"
    note.ConceptNameCodeSequence = DicomSequence([_code(*title)])
    template = Dataset()
    template.MappingResource, template.TemplateIdentifier = "DCMR", "2010"
    note.ContentTemplateSequence = DicomSequence([template])
    content = []
    for instance in withdrawn:
        item = Dataset()
        item.RelationshipType, item.ValueType = "CONTAINS", "IMAGE"
        item.ReferencedSOPSequence = DicomSequence([_sop(instance)])
        content.append(item)
    note.ContentSequence = DicomSequence(content)
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ReferencedSOPSequence = DicomSequence([_sop(instance) for instance in withdrawn])
    evidence = Dataset()
    evidence.StudyInstanceUID = first.StudyInstanceUID
    evidence.ReferencedSeriesSequence = DicomSequence([series])
    note.CurrentRequestedProcedureEvidenceSequence = DicomSequence([evidence])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = UID(KOS), note.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    note.file_meta = meta
    note.save_as(path, enforce_file_format=True)
    return note


async def storescu(port: int, *paths: Path) -> None:
    """dcmtk's storescu, as MODALITY1; every C-STORE must be answered Success."""
    code, out = await run(dcmtk("storescu"), "-v", "-aet", "MODALITY1", "-aec", "DICOMGW", "127.0.0.1", str(port),
                          *map(str, paths))
    assert code == 0, out
    assert out.count("Received Store Response (Success)") == len(paths), out


async def api(gateway: GatewayProcess, path: str) -> Any:
    """GET an API path off the event loop (an in-process peer may be serving on it); None unless 200."""
    status, body = await asyncio.to_thread(gateway.http, path)
    return json.loads(body) if status == 200 else None


async def until(probe: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """Call ``probe()`` (awaiting what it returns when it is a coroutine) until the result is truthy; return it."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if inspect.isawaitable(found):
            found = await found
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(interval)


def instance_statuses(body: dict[str, Any]) -> dict[str, str]:
    return {instance["sop_instance_uid"]: instance["status"]
            for series in body["series"] for instance in series["instances"]}


def unavailable(notification: Dataset) -> set[str]:
    """The SOP Instance UIDs an IAN says are UNAVAILABLE."""
    return {str(item.ReferencedSOPInstanceUID) for series in notification.ReferencedSeriesSequence
            for item in series.ReferencedSOPSequence if item.InstanceAvailability == "UNAVAILABLE"}


@contextmanager
def storescp(directory: Path, ae_title: str) -> Iterator[int]:
    """dcmtk's storescp writing what it receives into ``directory``; yields its port once it listens."""
    directory.mkdir(parents=True)
    port = free_port()
    log = (directory.parent / f"{directory.name}.log").open("wb")
    process = subprocess.Popen([dcmtk("storescp"), "-aet", ae_title, "-od", str(directory), str(port)],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("storescp did not start:\n" + (directory.parent / f"{directory.name}.log")
                                         .read_text(errors="replace")) from None
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.wait(20)
        log.close()


# --- forwarding -----------------------------------------------------------------------------------------------------


async def test_a_rejection_note_reaches_orthanc_only_after_the_instances_it_withdraws(tmp_path: Path) -> None:
    gateway_port = free_port()
    orthanc = await asyncio.to_thread(Orthanc, tmp_path / "orthanc",
                                      {"gateway": ("DICOMGW", "127.0.0.1", gateway_port)})
    gateway: GatewayProcess | None = None
    try:
        with storescp(tmp_path / "other", "OTHER") as other_port:
            environment = forwarding_environment(gateway_port, orthanc)
            destinations = [*json.loads(environment["GATEWAY_FORWARD__DESTINATIONS"]),
                            {"name": "other", "ae_title": "OTHER", "host": "127.0.0.1", "port": other_port,
                             "storage_commitment": False}]
            environment |= {"GATEWAY_FORWARD__DESTINATIONS": json.dumps(destinations),
                            # "other" is configured, but no instance of the study is routed to it
                            "GATEWAY_FORWARD__RULES": json.dumps([{"destinations": ["kanta"]}])}
            gateway = GatewayProcess(tmp_path / "data", ("receiver", "store", "notify", "api", "forward"),
                                     **environment)
            gateway.dicom_port = gateway_port
            await asyncio.to_thread(gateway.wait_ready)

            files = study(tmp_path / "study", 3)
            datasets = [pydicom.dcmread(path) for path in files]
            study_uid = str(datasets[0].StudyInstanceUID)
            withdrawn, kept = datasets[1], [datasets[0], datasets[2]]
            withdrawn_uid = str(withdrawn.SOPInstanceUID)
            await storescu(gateway_port, *files)

            async def forwarding(destination: str) -> dict[str, Any] | None:
                body = await api(gateway, f"/api/studies/{study_uid}")
                return next((entry for entry in body["forwarding"] if entry["destination"] == destination),
                            None) if body else None

            async def all_committed() -> bool:
                kanta = await forwarding("kanta")
                return kanta is not None and kanta["instances"] == {"committed": 3}

            await until(all_committed, 40, "the study's 3 instances committed at Orthanc")

            note = rejection_note([withdrawn], tmp_path / "note.dcm")
            note_uid = str(note.SOPInstanceUID)
            await storescu(gateway_port, tmp_path / "note.dcm")

            async def rejected() -> dict[str, Any] | None:
                body = await api(gateway, f"/api/studies/{study_uid}")
                return body if body and instance_statuses(body).get(withdrawn_uid) == "rejected" else None

            body = await until(rejected, 20, "the instance shown rejected")

            async def note_committed() -> dict[str, Any] | None:
                kanta = await forwarding("kanta")
                items = {item["sop_instance_uid"]: item for item in kanta["items"]} if kanta else {}
                return items if items.get(note_uid, {}).get("state") == "committed" else None

            items = await until(note_committed, 40, "the rejection note committed at Orthanc")
            found = await asyncio.to_thread(orthanc.post, "/tools/lookup", note_uid.encode())
            [held] = [entry for entry in found if entry["Type"] == "Instance"]
            tags = await asyncio.to_thread(orthanc.get, f"/instances/{held['ID']}/simplified-tags")
            received = {}
            for uid in (note_uid, withdrawn_uid):
                [entry] = [e for e in await asyncio.to_thread(orthanc.post, "/tools/lookup", uid.encode())
                           if e["Type"] == "Instance"]
                metadata = await asyncio.to_thread(orthanc.get, f"/instances/{entry['ID']}/metadata?expand")
                received[uid] = metadata["ReceptionDate"]
            await asyncio.sleep(2)  # a note wrongly queued for "other" would have been sent by now
            final = await api(gateway, f"/api/studies/{study_uid}")
            statuses = await api(gateway, "/api/forward/destinations")
            rejections = await api(gateway, f"/api/studies/{study_uid}/rejections")
            statistics = await asyncio.to_thread(orthanc.get, "/statistics")
    finally:
        if gateway is not None:
            gateway.stop()
        await asyncio.to_thread(orthanc.stop)

    statuses_at_rejection = instance_statuses(body)
    assert statuses_at_rejection[withdrawn_uid] == "rejected"
    assert all(statuses_at_rejection[str(d.SOPInstanceUID)] == "stored" for d in kept)
    assert instance_statuses(final)[note_uid] == "stored"
    assert [(n["sop_instance_uid"], n["title"], n["source_ae"], n["instances"]) for n in rejections["notes"]] == [
        (note_uid, "113001", "MODALITY1", 1)]
    assert [(i["sop_instance_uid"], i["held"]) for i in rejections["instances"]] == [(withdrawn_uid, True)]

    assert tags["Modality"] == "KO" and tags["SOPClassUID"] == KOS
    assert tags["StudyInstanceUID"] == study_uid
    assert statistics["CountInstances"] == 4  # the 3 images and the note, each once

    # the note went after the instance it withdraws was committed there, in the gateway's record and Orthanc's
    assert items[note_uid]["sent_at"] >= items[withdrawn_uid]["finished_at"], items
    assert received[note_uid] >= received[withdrawn_uid], received
    assert items[note_uid]["sends"] == 1

    # "other" stored none of the study, so it gets nothing of it, the note least of all
    assert all(entry["destination"] == "kanta" for entry in final["forwarding"]), final["forwarding"]
    by_name = {destination["name"]: destination for destination in statuses}
    assert by_name["other"]["instances"] == {}, by_name["other"]
    assert by_name["kanta"]["instances"] == {"committed": 4}, by_name["kanta"]
    assert list((tmp_path / "other").iterdir()) == []


# --- registration across a SIGKILL ----------------------------------------------------------------------------------


def xds_environment(registry: Simulator) -> dict[str, str]:
    """The simulator's settings (``Simulator.xds``) as the gateway process reads them, stable after 3 s."""
    return {f"GATEWAY_XDS__{key.upper()}": str(value).lower() if isinstance(value, bool) else str(value)
            for key, value in {**registry.xds(), "stable_after_seconds": 3}.items()}


def xds_client(registry: Simulator) -> XdsClient:
    return XdsClient(XdsSettings(registry_url=f"{registry.url}/xds/registry",
                                 repository_url=f"{registry.url}/xds/repository"))


def manifests_by_status(body: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for manifest in body["registration"]["manifests"]:
        found.setdefault(manifest["status"], []).append(manifest)
    return found


async def test_kill_9_between_marking_and_re_registering_loses_nothing(tmp_path: Path, registry: Simulator) -> None:
    ris = Peer("RIS1")
    environment = {**xds_environment(registry),
                   "GATEWAY_DICOM__REMOTE_AES": json.dumps([ris.remote()]),
                   "GATEWAY_NOTIFY__IAN_SUBSCRIBERS": json.dumps(["RIS1"]),
                   "GATEWAY_NOTIFY__RETRY_INITIAL_SECONDS": "0.5", "GATEWAY_NOTIFY__RETRY_MAX_SECONDS": "1",
                   "GATEWAY_EMBEDDED_BUS__POLL_INTERVAL_SECONDS": "0.01"}
    roles = ("receiver", "store", "notify", "api", "register")
    data = tmp_path / "data"
    files = generate(KINDS["tiny"], 3, tmp_path / "study", studies=1)
    datasets = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    study_uid, patient_id = str(datasets[0].StudyInstanceUID), str(datasets[0].PatientID)
    uids = [str(d.SOPInstanceUID) for d in datasets]
    first_rejected, remaining = uids[1], [uids[0], uids[2]]

    async def study_body(gateway: GatewayProcess) -> dict[str, Any] | None:
        body: dict[str, Any] | None = await api(gateway, f"/api/studies/{study_uid}")
        return body

    def unavailable_ians(wanted: set[str]) -> list[Dataset]:
        return [n for n in list(ris.notifications) if str(n.StudyInstanceUID) == study_uid and unavailable(n) == wanted]

    with ris.listening():
        gateway = GatewayProcess(data, roles, **environment)
        try:
            await asyncio.to_thread(gateway.wait_ready)
            await storescu(gateway.dicom_port, *files)

            async def registered(generation: int) -> dict[str, Any] | None:
                body = await study_body(gateway)
                current = manifests_by_status(body).get("current", []) if body else []
                return body if body and body["registration"]["state"] == "registered" and current \
                    and current[0]["generation"] == generation else None

            first = await until(lambda: registered(1), 40, "generation 1 registered", 0.1)
            [manifest_1] = first["registration"]["manifests"]
            assert manifest_1["instances"] == 3

            rejection_note([datasets[1]], tmp_path / "note-1.dcm")
            await storescu(gateway.dicom_port, tmp_path / "note-1.dcm")

            async def marked() -> dict[str, Any] | None:
                body = await study_body(gateway)
                return body if body and instance_statuses(body).get(first_rejected) == "rejected" else None

            at_kill = await until(marked, 20, "the instance shown rejected", 0.02)
            gateway.kill()
            # killed after the index marked it, before the study was stable (and registered) again
            assert at_kill["stability"]["stable_at"] is None, at_kill["stability"]
            assert [m["generation"] for m in manifests_by_status(at_kill)["current"]] == [1]
            assert (await registry.status())["documents"] == 1

            gateway = GatewayProcess(data, roles, **environment)
            await asyncio.to_thread(gateway.wait_ready)
            second = await until(lambda: registered(2), 40, "generation 2 registered after the restart", 0.2)
            await ris.wait(1, "notifications")
            await until(lambda: unavailable_ians({first_rejected}), 30,
                        "an IAN saying the rejected instance is UNAVAILABLE")
            found = await api(gateway, f"/api/xds/documents?patient_id={patient_id}")
            status_after_replace = await registry.status()
            async with xds_client(registry) as client:
                kos = pydicom.dcmread(BytesIO(await client.retrieve_document(
                    manifests_by_status(second)["current"][0]["document_unique_id"], REPOSITORY_UID)))

            # every remaining instance withdrawn by one more note: the manifest is deprecated, not replaced
            rejection_note([datasets[0], datasets[2]], tmp_path / "note-2.dcm")
            await storescu(gateway.dicom_port, tmp_path / "note-2.dcm")

            async def deprecated() -> dict[str, Any] | None:
                body = await study_body(gateway)
                return body if body and body["registration"]["state"] == "deprecated" else None

            third = await until(deprecated, 40, "the registration deprecated")
            await until(lambda: unavailable_ians(set(remaining)), 30,
                        "an IAN saying the other two instances are UNAVAILABLE")
            found_after = await api(gateway, f"/api/xds/documents?patient_id={patient_id}")
            status_after_deprecate = await registry.status()
            ians = list(ris.notifications)
        finally:
            gateway.stop()

    # generation 2 replaces generation 1 (RPLC) and lists the two instances still available
    manifests = manifests_by_status(second)
    [current], [replaced] = manifests["current"], manifests["replaced"]
    assert (current["generation"], current["instances"]) == (2, 2)
    assert current["replaces_entry_uuid"] == manifest_1["entry_uuid"] == replaced["entry_uuid"]
    assert instance_statuses(second)[first_rejected] == "rejected"
    assert [entry["uniqueId"] for entry in found] == [current["document_unique_id"]]
    assert (status_after_replace["approved"], status_after_replace["documents"]) == (1, 2), status_after_replace
    listed = {str(item.ReferencedSOPInstanceUID) for evidence in kos.CurrentRequestedProcedureEvidenceSequence
              for series in evidence.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert listed == set(remaining)

    # the IAN of the first rejection came (perhaps twice, after the kill), never lost; each lists the
    # rejected instance UNAVAILABLE and the other two ONLINE
    [first_ians, second_ians] = [[n for n in ians if str(n.StudyInstanceUID) == study_uid and unavailable(n) == w]
                                 for w in ({first_rejected}, set(remaining))]
    assert 1 <= len(first_ians) <= 2, len(first_ians)
    for notification in first_ians:
        online = {str(item.ReferencedSOPInstanceUID) for series in notification.ReferencedSeriesSequence
                  for item in series.ReferencedSOPSequence if item.InstanceAvailability == "ONLINE"}
        assert set(remaining) <= online, online
    assert len(second_ians) >= 1

    # every instance withdrawn: the current manifest deprecated (ITI-57), none Approved for the patient
    statuses = instance_statuses(third)
    assert all(statuses[uid] == "rejected" for uid in uids), statuses
    assert manifests_by_status(third).get("current") is None
    assert [m["generation"] for m in manifests_by_status(third)["deprecated"]] == [2]
    assert found_after == []
    assert status_after_deprecate["approved"] == 0 and status_after_deprecate["rejected"] == 0, \
        status_after_deprecate
