"""Forwarding end to end on the embedded bus: storescu → gateway (receiver, store, forward) → archives.

Orthanc is the upstream archive (its storage-commitment SCP reports on a new association to the gateway, as
the national archive's dcm4chee does), dcmtk's storescp a second destination that takes only uncompressed
syntaxes, and a pynetdicom archive plays the faults: refusals, commitment failures, a dropped association.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from aiohttp import ClientSession
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, StorageCommitmentPushModel  # type: ignore[attr-defined]

from gateway.dicom import commitment
from tests.component.test_notify_embedded import Gateway, copies, quarantined_copy, running
from tests.component.test_receiver_tls import pki
from tests.conftest import dcmtk
from tests.helpers import api_headers, free_port, run
from tests.peers import Orthanc

__all__ = ["pki"]
JPEG = Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))  # type: ignore[arg-type]
EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"


def destination(name: str, ae_title: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "ae_title": ae_title, "host": "127.0.0.1", "port": port, **extra}


def forward(*destinations: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"destinations": list(destinations), "batch_delay_seconds": 0.3, "max_batch_delay_seconds": 2,
            "retry_initial_seconds": 0.3, "retry_max_seconds": 1, **extra}


async def until_forwarded(gateway: Gateway, study: str, states: dict[str, str], timeout: float = 60) -> Any:
    """The study's forwarding, once each named destination is in the state given (the study may not even be
    stored yet when this starts)."""
    body: Any = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                status, body = await _get(gateway, f"/api/studies/{study}")
                found = {entry["destination"]: entry for entry in body.get("forwarding", [])} if status == 200 else {}
                if all(name in found and found[name]["state"] == state for name, state in states.items()):
                    return found
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"forwarding not {states} within {timeout}s: {body}") from None


@asynccontextmanager
async def orthanc_archive(tmp_path: Path, gateway_port: int) -> AsyncIterator[Orthanc]:
    orthanc = await asyncio.to_thread(Orthanc, tmp_path / "orthanc", {"gateway": ("DICOMGW", "127.0.0.1",
                                                                                     gateway_port)})
    try:
        yield orthanc
    finally:
        await asyncio.to_thread(orthanc.stop)


def orthanc_holds(orthanc: Orthanc, sop_instance_uid: str) -> int:
    """How many instances Orthanc's own index has under the UID (its lookup answers every level)."""
    found = orthanc.post("/tools/lookup", sop_instance_uid.encode())
    return sum(1 for entry in found if entry["Type"] == "Instance")


async def test_a_study_is_forwarded_to_orthanc_and_archived_once_orthanc_commits_it(tmp_path: Path) -> None:
    gateway_port = free_port()
    async with orthanc_archive(tmp_path, gateway_port) as orthanc:
        kanta = destination("kanta", "ORTHANC", orthanc.dicom_port)
        async with running(tmp_path, dicom={"port": gateway_port}, forward=forward(kanta)) as gateway:
            instances = copies(tmp_path, 5)
            await gateway.store(*(path for path, _ in instances))
            study = str(instances[0][1].StudyInstanceUID)
            forwarding = await until_forwarded(gateway, study, {"kanta": "archived"})
            _, destinations = await gateway.get("/api/forward/destinations")
            metrics = await _metrics(gateway)
        statistics = await asyncio.to_thread(orthanc.get, "/statistics")
        held = [await asyncio.to_thread(orthanc_holds, orthanc, str(d.SOPInstanceUID)) for _, d in instances]
    kanta_state = forwarding["kanta"]
    assert kanta_state["instances"] == {"committed": 5}
    assert len(kanta_state["transactions"]) == 1
    assert {item["transfer_syntax_sent"] for item in kanta_state["items"]} == {EXPLICIT}
    assert held == [1] * 5 and statistics["CountInstances"] == 5
    [shown] = destinations
    assert shown["name"] == "kanta" and shown["instances"] == {"committed": 5} and shown["lag_seconds"] is None
    assert shown["last_success_at"] is not None and not shown["paused"]
    assert 'dicomgw_forward_instances_total{destination="kanta",outcome="committed"} 5.0' in metrics
    assert 'dicomgw_forward_commitment_seconds_count{destination="kanta"} 1.0' in metrics
    assert 'dicomgw_commitment_reports_received_total{calling_ae="ORTHANC"} 1.0' in metrics


async def test_an_uncompressed_only_destination_gets_a_lossless_conversion_and_a_clear_failure(
        tmp_path: Path) -> None:
    """storescp +xi takes Implicit VR Little Endian only: the CT goes converted from Explicit, the JPEG image
    cannot go losslessly and fails with its reason, while the rest of the study goes."""
    port = free_port()
    received = tmp_path / "storescp"
    received.mkdir()
    storescp = await asyncio.create_subprocess_exec(dcmtk("storescp"), "+xi", "-aet", "PACS", "-od", str(received),
                                                    str(port))
    try:
        await _listening(port)
        pacs = destination("pacs", "PACS", port, storage_commitment=False)
        async with running(tmp_path, forward=forward(pacs)) as gateway:
            instances = copies(tmp_path, 2)
            jpeg = pydicom.dcmread(JPEG)
            for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "PatientSex",
                            "AccessionNumber", "StudyDate", "StudyTime", "StudyID", "ReferringPhysicianName"):
                setattr(jpeg, keyword, instances[0][1].get(keyword, ""))  # one study, one patient
            jpeg.SOPInstanceUID = generate_uid()
            jpeg.file_meta.MediaStorageSOPInstanceUID = jpeg.SOPInstanceUID
            jpeg.save_as(tmp_path / "jpeg.dcm")
            await gateway.store(*(path for path, _ in instances))
            code, out = await run(dcmtk("storescu"), "-xy", "-aec", "DICOMGW", "127.0.0.1",
                                  str(gateway.settings.dicom.port), str(tmp_path / "jpeg.dcm"))
            assert code == 0, out
            study = str(instances[0][1].StudyInstanceUID)
            forwarding = await until_forwarded(gateway, study, {"pacs": "partial"})
            _, failed = await gateway.get("/api/forward/failed?destination=pacs")
    finally:
        storescp.terminate()
        await storescp.wait()
    items = {item["sop_instance_uid"]: item for item in forwarding["pacs"]["items"]}
    for _, dataset in instances:
        item = items[str(dataset.SOPInstanceUID)]
        assert item["state"] == "delivered" and item["transfer_syntax_sent"] == IMPLICIT
    [bad] = failed
    assert bad["sop_instance_uid"] == str(jpeg.SOPInstanceUID)
    assert bad["last_error"].startswith("no acceptable transfer syntax: stored 1.2.840.10008.1.2.4.50")
    files = sorted(received.iterdir())
    assert len(files) == 2
    for path in files:
        copy = pydicom.dcmread(path)
        assert copy.file_meta.TransferSyntaxUID == IMPLICIT
        original = next(d for _, d in instances if d.SOPInstanceUID == copy.SOPInstanceUID)
        assert copy.PixelData == original.PixelData and copy.PatientName == original.PatientName


@dataclass
class FaultyArchive:
    """A pynetdicom archive whose faults are set per test: C-STORE statuses to answer first, instances to report
    not committed, or an association to abort after so many instances. Reports come on a new association."""

    gateway_port: int
    port: int = field(default_factory=free_port)
    statuses: dict[str, list[int]] = field(default_factory=dict)
    """SOP Instance UID -> statuses to answer, one per attempt, before Success."""
    not_committed: dict[str, list[int]] = field(default_factory=dict)
    """SOP Instance UID -> Failure Reasons to report, one per request, before committed."""
    abort_after: int | None = None
    tls: ssl.SSLContext | None = None
    report_here: bool = False
    """Report on the N-ACTION's own association (it must stay open for it) instead of a new one."""
    stored: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def listening(self) -> Iterator[None]:
        ae = AE(ae_title="ARCHIVE")
        ae.add_supported_context(CTImageStorage, [EXPLICIT, IMPLICIT])
        ae.add_supported_context(StorageCommitmentPushModel)

        def store(event: evt.Event) -> int:
            uid = str(event.request.AffectedSOPInstanceUID)
            with self.lock:
                if self.abort_after is not None and len(self.stored) >= self.abort_after:
                    self.abort_after = None
                    event.assoc.abort()
                    return 0xA700
                planned = self.statuses.get(uid)
                if planned:
                    return planned.pop(0)
                self.stored.append(uid)
            return 0x0000

        def action(event: evt.Event) -> tuple[int, None]:
            request = event.action_information
            self.requests.append(str(request.TransactionUID))
            threading.Thread(target=self._report, args=(request, event.assoc if self.report_here else None),
                             daemon=True).start()
            return 0x0000, None

        server = ae.start_server(("127.0.0.1", self.port), block=False, ssl_context=self.tls,
                                 evt_handlers=[(evt.EVT_C_STORE, store), (evt.EVT_N_ACTION, action)])
        try:
            yield
        finally:
            server.shutdown()

    def _report(self, request: Dataset, here: Association | None) -> None:
        time.sleep(0.2)
        report = Dataset()
        report.TransactionUID = request.TransactionUID
        committed, failed = [], []
        with self.lock:
            for reference in request.ReferencedSOPSequence:
                item = Dataset()
                item.ReferencedSOPClassUID = reference.ReferencedSOPClassUID
                item.ReferencedSOPInstanceUID = reference.ReferencedSOPInstanceUID
                reasons = self.not_committed.get(str(reference.ReferencedSOPInstanceUID))
                if reasons:
                    item.FailureReason = reasons.pop(0)
                    failed.append(item)
                else:
                    committed.append(item)
        if committed:
            report.ReferencedSOPSequence = committed
        if failed:
            report.FailedSOPSequence = failed
        if here is not None:
            status, _ = here.send_n_event_report(report, 2 if failed else 1, StorageCommitmentPushModel,
                                                 commitment.STORAGE_COMMITMENT_INSTANCE)
            assert status.Status == 0x0000
            return
        ae = AE(ae_title="ARCHIVE")
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", self.gateway_port, ae_title="DICOMGW",
                             ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)])
        assert assoc.is_established, "the gateway refused the report association"
        try:
            status, _ = assoc.send_n_event_report(report, 2 if failed else 1, StorageCommitmentPushModel,
                                                  commitment.STORAGE_COMMITMENT_INSTANCE)
            assert status.Status == 0x0000
        finally:
            assoc.release()


async def test_refusals_commitment_failures_and_a_dropped_association_end_committed_once(tmp_path: Path) -> None:
    gateway_port = free_port()
    archive = FaultyArchive(gateway_port)
    instances = copies(tmp_path, 6)
    uids = [str(d.SOPInstanceUID) for _, d in instances]
    archive.statuses = {uids[0]: [0xA700, 0xA702]}  # out of resources twice, then stored
    archive.not_committed = {uids[1]: [0x0112]}  # "no such instance" once: sent again, then committed
    archive.abort_after = 3  # the association drops while the fourth instance goes
    with archive.listening():
        async with running(tmp_path, dicom={"port": gateway_port},
                           forward=forward(destination("archive", "ARCHIVE", archive.port))) as gateway:
            await gateway.store(*(path for path, _ in instances))
            forwarding = await until_forwarded(gateway, str(instances[0][1].StudyInstanceUID),
                                               {"archive": "archived"})
    items = {item["sop_instance_uid"]: item for item in forwarding["archive"]["items"]}
    assert all(item["state"] == "committed" for item in items.values())
    assert items[uids[1]]["sends"] == 2
    assert sorted(set(archive.stored)) == sorted(uids)
    assert archive.stored.count(uids[1]) == 2  # the one not committed went again, nothing else twice
    assert len(archive.stored) == 7
    assert len(archive.requests) >= 2


async def test_a_destination_over_dicom_tls_reporting_on_our_own_association(tmp_path: Path, pki: Path) -> None:
    """The archive demands TLS with a client certificate from its CA, and reports while we keep the association
    open (GATEWAY_FORWARD__REPORT_WAIT_SECONDS): the report is applied from there, no new association needed."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    tls.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
    tls.verify_mode = ssl.CERT_REQUIRED
    archive = FaultyArchive(free_port(), tls=tls, report_here=True)
    client = {"port": free_port(), "cert_file": str(pki / "client.pem"), "key_file": str(pki / "client.key"),
              "ca_file": str(pki / "ca.pem")}
    instances = copies(tmp_path, 3)
    with archive.listening():
        async with running(tmp_path, dicom={"tls": client, "tls_only": False},
                           forward=forward(destination("archive", "ARCHIVE", archive.port, tls=True),
                                           report_wait_seconds=5)) as gateway:
            await gateway.store(*(path for path, _ in instances))
            forwarding = await until_forwarded(gateway, str(instances[0][1].StudyInstanceUID),
                                               {"archive": "archived"})
            metrics = await _metrics(gateway)
    assert forwarding["archive"]["instances"] == {"committed": 3}
    assert sorted(archive.stored) == sorted(str(d.SOPInstanceUID) for _, d in instances)
    assert "dicomgw_commitment_reports_received_total{" not in metrics  # none came to the receiver
    assert 'dicomgw_forward_instances_total{destination="archive",outcome="committed"} 3.0' in metrics


async def test_a_paused_destination_gets_nothing_until_resumed_and_a_refused_instance_is_redriven(
        tmp_path: Path) -> None:
    gateway_port = free_port()
    archive = FaultyArchive(gateway_port)
    instances = copies(tmp_path, 2)
    uids = [str(d.SOPInstanceUID) for _, d in instances]
    archive.statuses = {uids[0]: [0xC123]}  # a refusal: failed at once, with its status
    with archive.listening():
        async with running(tmp_path, dicom={"port": gateway_port},
                           forward=forward(destination("archive", "ARCHIVE", archive.port))) as gateway:
            assert (await _post(gateway, "/api/forward/destinations/archive/pause"))[0] == 200
            await asyncio.sleep(5.5)  # the forward role reads pauses with each sweep
            await gateway.store(*(path for path, _ in instances))
            study = str(instances[0][1].StudyInstanceUID)
            await until_forwarded(gateway, study, {"archive": "pending"})
            await asyncio.sleep(2)
            assert archive.stored == []
            assert (await _post(gateway, "/api/forward/destinations/archive/resume"))[0] == 200
            forwarding = await until_forwarded(gateway, study, {"archive": "partial"})
            refused = next(i for i in forwarding["archive"]["items"] if i["sop_instance_uid"] == uids[0])
            assert refused["last_error"] == "C-STORE refused with 0xC123"
            status, body = await _post(gateway, "/api/forward/redrive", {"study_instance_uid": study})
            assert status == 200 and body == {"queued": 1}
            await until_forwarded(gateway, study, {"archive": "archived"})
            assert (await _post(gateway, "/api/forward/redrive", {"destination": "nowhere"}))[0] == 404
            anonymous = await _post(gateway, "/api/forward/destinations/archive/pause", token=False)
    assert anonymous[0] == 401
    assert sorted(archive.stored) == sorted(uids)


async def test_rules_route_by_modality_and_keep_quarantined_instances_back(tmp_path: Path) -> None:
    gateway_port = free_port()
    archive = FaultyArchive(gateway_port)
    with archive.listening():
        rules = [{"destinations": ["archive"], "modalities": ["CT"], "study_description": "^(?!.*research)"}]
        async with running(tmp_path, dicom={"port": gateway_port},
                           forward=forward(destination("archive", "ARCHIVE", archive.port),
                                           destination("mr-only", "NOBODY", free_port()),
                                           rules=rules)) as gateway:
            instances = copies(tmp_path, 2)
            bad, _ = quarantined_copy(tmp_path)  # a leading zero in a UID component
            await gateway.store(*(path for path, _ in instances), bad)
            forwarding = await until_forwarded(gateway, str(instances[0][1].StudyInstanceUID),
                                               {"archive": "archived"})
    assert set(forwarding) == {"archive"}
    assert sorted(archive.stored) == sorted(str(d.SOPInstanceUID) for _, d in instances)


async def _get(gateway: Gateway, path: str) -> tuple[int, Any]:
    async with (ClientSession(headers=api_headers(gateway.settings.data_dir)) as http,
                http.get(f"{gateway.api}{path}") as response):
        text = await response.text()
        return response.status, json.loads(text) if response.content_type == "application/json" else text


async def _post(gateway: Gateway, path: str, body: dict[str, Any] | None = None,
                token: bool = True) -> tuple[int, Any]:
    headers = api_headers(gateway.settings.data_dir) if token else {}
    async with (ClientSession(headers=headers) as http,
                http.post(f"{gateway.api}{path}", json=body or {}) as response):
        text = await response.text()
        return response.status, json.loads(text) if response.content_type == "application/json" else text


async def _metrics(gateway: Gateway) -> str:
    async with ClientSession() as http, http.get(f"{gateway.api}/metrics") as response:
        return await response.text()


async def _listening(port: int) -> None:
    async with asyncio.timeout(20):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.1)


async def test_reports_are_taken_only_from_destinations_and_an_unknown_transaction_changes_nothing(
        tmp_path: Path) -> None:
    """The receiver takes N-EVENT-REPORTs on Storage Commitment only from forwarding destinations' AE titles
    (an allow-list in force lets them in); another AE is refused, a report of a transaction we never requested
    is answered Success (the archive must not retry it forever) and changes nothing."""
    gateway_port = free_port()

    def report_from(calling_ae: str, event_type: int = 1, transaction: bool = True) -> int:
        report = Dataset()
        if transaction:
            report.TransactionUID = generate_uid()
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = str(CTImageStorage), generate_uid()
        report.ReferencedSOPSequence = [item]
        ae = AE(ae_title=calling_ae)
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", gateway_port, ae_title="DICOMGW",
                             ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)])
        if not assoc.is_established:
            return -1
        try:
            status, _ = assoc.send_n_event_report(report, event_type, StorageCommitmentPushModel,
                                                  commitment.STORAGE_COMMITMENT_INSTANCE)
            return int(status.Status)
        finally:
            assoc.release()

    allowed = [{"ae_title": "MODALITY1"}, {"ae_title": "STRANGER"}]
    async with running(tmp_path, dicom={"port": gateway_port, "allowed_aes": allowed},
                       forward=forward(destination("archive", "ARCHIVE", free_port()))) as gateway:
        from_archive = await asyncio.to_thread(report_from, "ARCHIVE")
        from_stranger = await asyncio.to_thread(report_from, "STRANGER")
        from_unknown = await asyncio.to_thread(report_from, "NOBODY")
        wrong_event = await asyncio.to_thread(report_from, "ARCHIVE", 3)
        no_transaction = await asyncio.to_thread(report_from, "ARCHIVE", 1, False)
        metrics = await _metrics(gateway)
        _, destinations = await _get(gateway, "/api/forward/destinations")
    assert from_archive == 0x0000
    assert from_stranger == 0x0110
    assert from_unknown == -1, "not on the allow-list nor a destination: the association is rejected"
    assert wrong_event == 0x0113, "no such event type"
    assert no_transaction == 0x0110, "Event Information without a Transaction UID"
    assert 'dicomgw_commitment_reports_received_total{calling_ae="ARCHIVE"} 1.0' in metrics
    assert destinations[0]["instances"] == {}
