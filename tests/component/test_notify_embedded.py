"""Storage commitment and IAN end to end on the embedded bus: receiver, store and notify roles in-process, with
pynetdicom peers as the requester (which receives the N-EVENT-REPORT on a new association) and the IAN receiver.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from aiohttp import ClientSession
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    InstanceAvailabilityNotification,
    StorageCommitmentPushModel,
)

from gateway import dead_letter
from gateway.app import build_bus
from gateway.cli import _serve
from gateway.dicom import commitment
from gateway.index import DeliveryState
from gateway.metrics import Metrics
from gateway.settings import Settings
from tests.component.test_commitment_receiver import action_information
from tests.component.test_receiver_tls import pki
from tests.conftest import dcmtk
from tests.helpers import api_headers, free_port, run

CT = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
__all__ = ["pki"]


@dataclass
class Peer:
    """A modality or RIS: a pynetdicom SCP that records the N-EVENT-REPORTs and N-CREATEs it receives."""

    ae_title: str
    port: int = field(default_factory=free_port)
    reports: list[tuple[int, Dataset]] = field(default_factory=list)
    notifications: list[Dataset] = field(default_factory=list)
    received: threading.Event = field(default_factory=threading.Event)
    tls: ssl.SSLContext | None = None
    max_associations: int = 10

    @contextmanager
    def listening(self) -> Iterator[None]:
        ae = AE(ae_title=self.ae_title)
        ae.maximum_associations = self.max_associations
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        ae.add_supported_context(InstanceAvailabilityNotification)

        def report(event: evt.Event) -> tuple[int, None]:
            self.reports.append((int(event.event_type), event.event_information))
            self.received.set()
            return 0x0000, None

        def created(event: evt.Event) -> tuple[int, Dataset]:
            self.notifications.append(event.attribute_list)
            self.received.set()
            return 0x0000, event.attribute_list

        server = ae.start_server(("127.0.0.1", self.port), block=False, ssl_context=self.tls, evt_handlers=[
            (evt.EVT_N_EVENT_REPORT, report), (evt.EVT_N_CREATE, created)])
        try:
            yield
        finally:
            server.shutdown()

    async def wait(self, count: int, what: str = "reports", timeout: float = 60) -> None:
        async with asyncio.timeout(timeout):
            while len(getattr(self, what)) < count:
                await asyncio.sleep(0.05)

    def remote(self) -> dict[str, Any]:
        return {"ae_title": self.ae_title, "host": "127.0.0.1", "port": self.port, "tls": self.tls is not None}


@dataclass
class Gateway:
    settings: Settings

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.settings.http.port}"

    async def store(self, *paths: Path, calling_ae: str = "MODALITY1") -> None:
        code, out = await run(dcmtk("storescu"), "-aet", calling_ae, "-aec", "DICOMGW", "127.0.0.1",
                              str(self.settings.dicom.port), *map(str, paths))
        assert code == 0, out

    async def request_commitment(self, references: list[tuple[str, str]], calling_ae: str = "MODALITY1",
                                 transaction: str | None = None) -> str:
        return await request_commitment(self.settings.dicom.port, references, calling_ae, transaction)

    async def get(self, path: str) -> Any:
        async with (ClientSession(headers=api_headers(self.settings.data_dir)) as http,
                    http.get(f"{self.api}{path}") as response):
            if response.content_type != "application/json":  # a 404 before the study is indexed is text
                return response.status, await response.text()
            return response.status, await response.json()

    async def until(self, path: str, condition: Callable[[Any], bool], timeout: float = 30) -> Any:
        """GET ``path`` until ``condition`` holds of its JSON (a state recorded just after a peer saw it)."""
        async with asyncio.timeout(timeout):
            while True:
                status, body = await self.get(path)
                if status == 200 and condition(body):
                    return status, body
                await asyncio.sleep(0.1)


async def request_commitment(port: int, references: list[tuple[str, str]], calling_ae: str = "MODALITY1",
                             transaction: str | None = None) -> str:
    """N-ACTION Request Storage Commitment as a modality sends it; returns the Transaction UID."""
    transaction = transaction or generate_uid()
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(StorageCommitmentPushModel)

    def send() -> int:
        assoc = ae.associate("127.0.0.1", port, ae_title="DICOMGW")
        assert assoc.is_established
        try:
            status, _ = assoc.send_n_action(action_information(transaction, references), 1,
                                            StorageCommitmentPushModel, commitment.STORAGE_COMMITMENT_INSTANCE)
            return int(status.Status)
        finally:
            assoc.release()

    assert await asyncio.to_thread(send) == 0x0000
    return transaction


@asynccontextmanager
async def running(tmp_path: Path, roles: list[str] | None = None, **sections: Any) -> AsyncIterator[Gateway]:
    """The gateway in-process, yielded once ready: the roles these tests need (or ``roles``), with settings
    ``sections`` over fast test defaults."""
    settings = Settings(
        data_dir=tmp_path / "data",
        dicom={"host": "127.0.0.1", "port": free_port(), **sections.pop("dicom", {})},
        http={"host": "127.0.0.1", "port": free_port(), **sections.pop("http", {})},
        internal={"host": "127.0.0.1", "port": free_port()},
        embedded_bus={"poll_interval_seconds": 0.01},
        notify={"retry_initial_seconds": 0.5, "retry_max_seconds": 2, **sections.pop("notify", {})},
        xds={"stable_after_seconds": 2, "stability_check_seconds": 0.5, **sections.pop("xds", {})},
        runtime={"drain_timeout_seconds": 5},
        **sections,
    )
    roles = roles or ["receiver", "store", "notify", "api", *(["register"] if settings.xds.enabled else []),
                      *(["forward"] if settings.forward.destinations else [])]
    server = asyncio.create_task(_serve(settings, roles, None, None))
    gateway = Gateway(settings)
    try:
        async with asyncio.timeout(30), ClientSession() as http:
            while True:
                if server.done():
                    server.result()
                try:
                    async with http.get(f"{gateway.api}/readyz") as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                await asyncio.sleep(0.1)
        yield gateway
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)


def quarantined_copy(tmp_path: Path) -> tuple[Path, Dataset]:
    bad = pydicom.dcmread(CT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bad.SOPInstanceUID = generate_uid()
        bad.SeriesInstanceUID = "1.2.03.4"  # leading zero in a UID component: fails validation
        path = tmp_path / "bad.dcm"
        bad.save_as(path)
    return path, bad


def copies(tmp_path: Path, count: int) -> list[tuple[Path, Dataset]]:
    """Instances of one new study, each its own SOP Instance UID."""
    study, series = generate_uid(), generate_uid()
    made = []
    for n in range(count):
        dataset = pydicom.dcmread(CT)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        path = tmp_path / f"ct-{n}.dcm"
        dataset.save_as(path)
        made.append((path, dataset))
    return made


def report_is(state: str) -> Callable[[dict[str, Any]], bool]:
    """A commitment's report, once queued, is in ``state``."""
    return lambda commitment: bool(commitment["report"]) and commitment["report"]["state"] == state


def references(datasets: list[Dataset]) -> list[tuple[str, str]]:
    return [(str(d.SOPClassUID), str(d.SOPInstanceUID)) for d in datasets]


def referenced(report: Dataset, sequence: str) -> dict[str, int | None]:
    return {str(item.ReferencedSOPInstanceUID): (int(item.FailureReason) if "FailureReason" in item else None)
            for item in report.get(sequence, [])}


async def test_stored_instances_are_reported_committed_on_a_new_association(tmp_path: Path) -> None:
    modality = Peer("MODALITY1")
    instances = copies(tmp_path, 3)
    with modality.listening():
        async with running(tmp_path, dicom={"remote_aes": [modality.remote()]}) as gateway:
            await gateway.store(*(path for path, _ in instances))
            transaction = await gateway.request_commitment(references([d for _, d in instances]))
            await modality.wait(1)
            status, state = await gateway.until(f"/api/commitments/{transaction}", report_is("delivered"))
    [(event_type, report)] = modality.reports
    assert event_type == commitment.EVENT_ALL_COMMITTED
    assert report.TransactionUID == transaction
    assert referenced(report, "ReferencedSOPSequence") == {d.SOPInstanceUID: None for _, d in instances}
    assert "FailedSOPSequence" not in report
    assert report.RetrieveAETitle == "DICOMGW"
    assert status == 200 and state["requester_ae"] == "MODALITY1"
    assert state["report"]["state"] == "delivered" and state["report"]["attempts"] == 1
    assert {i["sop_instance_uid"]: i["outcome"] for i in state["instances"]} == {
        d.SOPInstanceUID: "committed" for _, d in instances}


async def test_unknown_and_quarantined_instances_are_reported_failed_with_their_reasons(tmp_path: Path) -> None:
    modality = Peer("MODALITY1")
    [(good_path, good)] = copies(tmp_path, 1)
    bad_path, bad = quarantined_copy(tmp_path)
    unknown = ("1.2.840.10008.5.1.4.1.1.2", generate_uid())
    conflicting = ("1.2.840.10008.5.1.4.1.1.4", str(good.SOPInstanceUID))  # MR class for a CT instance
    with modality.listening():
        async with running(tmp_path, dicom={"remote_aes": [modality.remote()]},
                           notify={"commitment_timeout_seconds": 3}) as gateway:
            await gateway.store(good_path, bad_path)
            await gateway.request_commitment([*references([good, bad]), unknown])
            await gateway.request_commitment([conflicting])
            await modality.wait(2)
    by_transaction = {report.TransactionUID: (event_type, report) for event_type, report in modality.reports}
    assert len(by_transaction) == 2
    outcomes = []
    for event_type, report in by_transaction.values():
        assert event_type == commitment.EVENT_SOME_FAILED
        outcomes.append((referenced(report, "ReferencedSOPSequence"), referenced(report, "FailedSOPSequence")))
    assert ({good.SOPInstanceUID: None}, {bad.SOPInstanceUID: 0x0110, unknown[1]: 0x0112}) in outcomes
    assert ({}, {good.SOPInstanceUID: 0x0119}) in outcomes


async def test_a_reused_transaction_uid_is_answered_never_silently(tmp_path: Path) -> None:
    """The same references again: the report again. Other references: each failed with 0x0131 (Duplicate
    Transaction UID). The first transaction's outcome stands."""
    modality = Peer("MODALITY1")
    instances = copies(tmp_path, 2)
    first, second = references([instances[0][1]]), references([instances[1][1]])
    with modality.listening():
        async with running(tmp_path, dicom={"remote_aes": [modality.remote()]}) as gateway:
            await gateway.store(*(path for path, _ in instances))
            transaction = await gateway.request_commitment(first)
            await modality.wait(1)
            await gateway.request_commitment(first, transaction=transaction)
            await modality.wait(2)
            await gateway.request_commitment(second, transaction=transaction)
            await modality.wait(3)
            status, state = await gateway.until(f"/api/commitments/{transaction}", report_is("delivered"))
    assert [(event_type, report.TransactionUID) for event_type, report in modality.reports] == [
        (commitment.EVENT_ALL_COMMITTED, transaction), (commitment.EVENT_ALL_COMMITTED, transaction),
        (commitment.EVENT_SOME_FAILED, transaction)]
    assert referenced(modality.reports[1][1], "ReferencedSOPSequence") == {first[0][1]: None}
    assert referenced(modality.reports[2][1], "FailedSOPSequence") == {second[0][1]: 0x0131}
    assert "ReferencedSOPSequence" not in modality.reports[2][1]
    assert {i["sop_instance_uid"]: i["outcome"] for i in state["instances"]} == {first[0][1]: "committed"}


async def test_a_request_before_its_instances_is_answered_once_they_are_stored(tmp_path: Path) -> None:
    modality = Peer("MODALITY1")
    instances = copies(tmp_path, 2)
    with modality.listening():
        async with running(tmp_path, dicom={"remote_aes": [modality.remote()]}) as gateway:
            await gateway.request_commitment(references([d for _, d in instances]))
            await asyncio.sleep(2)
            assert modality.reports == []
            await gateway.store(*(path for path, _ in instances))
            await modality.wait(1)
    [(event_type, report)] = modality.reports
    assert event_type == commitment.EVENT_ALL_COMMITTED
    assert set(referenced(report, "ReferencedSOPSequence")) == {d.SOPInstanceUID for _, d in instances}


PYNETDICOM_LEAKS_REFUSED_SOCKETS = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
"""pynetdicom 3.0.4 shuts down but never closes its socket when a connection is refused (transport.py,
AssociationSocket.connect); CPython then reports the unclosed socket. Only tests of an offline peer need this."""


@PYNETDICOM_LEAKS_REFUSED_SOCKETS
async def test_a_requester_offline_gets_its_report_once_it_is_back(tmp_path: Path) -> None:
    modality = Peer("MODALITY1")
    instances = copies(tmp_path, 1)
    async with running(tmp_path, dicom={"remote_aes": [modality.remote()]}) as gateway:
        await gateway.store(*(path for path, _ in instances))
        transaction = await gateway.request_commitment(references([d for _, d in instances]))
        await gateway.until(f"/api/commitments/{transaction}",
                            lambda state: bool(state["report"]) and state["report"]["attempts"] >= 2)
        with modality.listening():
            await modality.wait(1)
    [(event_type, _)] = modality.reports
    assert event_type == commitment.EVENT_ALL_COMMITTED


@PYNETDICOM_LEAKS_REFUSED_SOCKETS
async def test_a_transaction_past_its_deadline_and_unreported_is_listed_counted_and_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    modality = Peer("MODALITY1")
    never_sent = (CT_CLASS, generate_uid())
    async with running(tmp_path, dicom={"remote_aes": [modality.remote()]},
                       notify={"commitment_timeout_seconds": 2}) as gateway:
        transaction = await gateway.request_commitment([never_sent])
        _, overdue = await gateway.until("/api/commitments/overdue", lambda listed: bool(listed) and all(
            entry["report"] and entry["report"]["attempts"] >= 1 for entry in listed))
        [entry] = overdue
        assert entry["transaction_uid"] == transaction and entry["decided_at"] is not None
        assert entry["instances"] == [{"sop_class_uid": never_sent[0], "sop_instance_uid": never_sent[1],
                                       "outcome": "failed", "failure_reason": "0x0112"}]
        assert entry["report"]["state"] == "pending" and "unreachable" in entry["report"]["last_error"]
        async with ClientSession() as http, http.get(f"{gateway.api}/metrics") as response:
            assert 'dicomgw_commitments_waiting{age="lt_1m"} 1.0' in await response.text()
        assert any(record.levelname == "WARNING" and "deadline passed" in record.getMessage()
                   and getattr(record, "transaction_uid", "") == transaction for record in caplog.records)

        with modality.listening():
            await modality.wait(1)
            await gateway.until("/api/commitments/overdue", lambda listed: listed == [])
    [(event_type, report)] = modality.reports
    assert event_type == commitment.EVENT_SOME_FAILED
    assert referenced(report, "FailedSOPSequence") == {never_sent[1]: commitment.NO_SUCH_OBJECT_INSTANCE}


@PYNETDICOM_LEAKS_REFUSED_SOCKETS
async def test_a_report_out_of_attempts_is_dead_lettered_and_can_be_redriven(tmp_path: Path) -> None:
    modality = Peer("MODALITY1")
    instances = copies(tmp_path, 1)
    async with running(tmp_path, dicom={"remote_aes": [modality.remote()]},
                       notify={"retry_max_attempts": 2}) as gateway:
        await gateway.store(*(path for path, _ in instances))
        transaction = await gateway.request_commitment(references([d for _, d in instances]))
        bus = build_bus(gateway.settings, Metrics())
        async with asyncio.timeout(30):
            while not (entries := await dead_letter.entries(bus, gateway.settings.topics)):
                await asyncio.sleep(0.2)
        [entry] = entries
        assert entry.stage == "notify" and entry.subject == transaction
        assert "unreachable" in entry.reason and "after 2 attempts" in entry.reason
        await gateway.until(f"/api/commitments/{transaction}", report_is(DeliveryState.FAILED))

        with modality.listening():
            await dead_letter.redrive(bus, gateway.settings.topics, entry)
            await modality.wait(1)
        assert await dead_letter.entries(bus, gateway.settings.topics) == []
    [(event_type, report)] = modality.reports
    assert event_type == commitment.EVENT_ALL_COMMITTED and report.TransactionUID == transaction


async def test_each_stable_study_gets_one_ian_listing_exactly_its_stored_instances(tmp_path: Path) -> None:
    ris = Peer("RIS1")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = copies(tmp_path / "a", 3), copies(tmp_path / "b", 2)
    bad_path, bad = quarantined_copy(tmp_path)
    with ris.listening():
        async with running(tmp_path, dicom={"remote_aes": [ris.remote()]},
                           notify={"ian_subscribers": ["RIS1"]}) as gateway:
            await gateway.store(*(path for path, _ in first), *(path for path, _ in second), bad_path)
            await ris.wait(2, "notifications")
            await asyncio.sleep(4)  # nothing more comes: one IAN per study, none for one with nothing stored
            _, study = await gateway.until(f"/api/studies/{first[0][1].StudyInstanceUID}",
                                           lambda study: study["notifications"][0]["state"] == "delivered")
    by_study = {str(n.StudyInstanceUID): n for n in ris.notifications}
    assert len(ris.notifications) == 2 == len(by_study)
    assert str(bad.StudyInstanceUID) not in by_study
    for instances in (first, second):
        notification = by_study[str(instances[0][1].StudyInstanceUID)]
        [series] = notification.ReferencedSeriesSequence
        assert series.SeriesInstanceUID == instances[0][1].SeriesInstanceUID
        listed = {str(item.ReferencedSOPInstanceUID) for item in series.ReferencedSOPSequence}
        assert listed == {str(d.SOPInstanceUID) for _, d in instances}
        assert {item.InstanceAvailability for item in series.ReferencedSOPSequence} == {"ONLINE"}
        assert {item.RetrieveAETitle for item in series.ReferencedSOPSequence} == {"DICOMGW"}
    [notification] = study["notifications"]
    assert notification["target_ae"] == "RIS1" and notification["state"] == "delivered"


async def test_a_study_receiving_more_after_its_ian_gets_a_new_one(tmp_path: Path) -> None:
    ris = Peer("RIS1")
    instances = copies(tmp_path, 3)
    with ris.listening():
        async with running(tmp_path, dicom={"remote_aes": [ris.remote()]},
                           notify={"ian_subscribers": ["RIS1"]}) as gateway:
            await gateway.store(instances[0][0])
            await ris.wait(1, "notifications")
            await gateway.store(instances[1][0], instances[2][0])
            await ris.wait(2, "notifications")
    first, second = ris.notifications
    assert len(first.ReferencedSeriesSequence[0].ReferencedSOPSequence) == 1
    assert len(second.ReferencedSeriesSequence[0].ReferencedSOPSequence) == 3


@pytest.fixture(autouse=True)
def _quiet_pynetdicom() -> None:
    """pynetdicom's peers log every association at INFO; the gateway's JSON logs are what matters here."""
    import logging

    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


async def test_reports_go_over_dicom_tls_with_the_gateways_certificate(tmp_path: Path, pki: Path) -> None:
    """A requester that demands TLS with client certificates from its CA gets its report that way."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    tls.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
    tls.verify_mode = ssl.CERT_REQUIRED
    modality = Peer("MODALITY1", tls=tls)
    instances = copies(tmp_path, 1)
    gateway_tls = {"port": free_port(), "cert_file": str(pki / "client.pem"), "key_file": str(pki / "client.key"),
                   "ca_file": str(pki / "ca.pem")}
    with modality.listening():
        async with running(tmp_path, dicom={"remote_aes": [modality.remote()], "tls": gateway_tls,
                                            "tls_only": False}) as gateway:  # the modality sends on the plain port
            await gateway.store(*(path for path, _ in instances))
            await gateway.request_commitment(references([d for _, d in instances]))
            await modality.wait(1)
    [(event_type, _)] = modality.reports
    assert event_type == commitment.EVENT_ALL_COMMITTED


async def test_a_modality_taking_few_associations_at_a_time_gets_every_report_at_the_first_attempt(
    tmp_path: Path,
) -> None:
    """Reports to one AE go one association after another (pynetdicom counts a released association for a moment
    longer, hence two), not all at once: a modality that limits its associations refuses the surplus."""
    modality = Peer("MODALITY1", max_associations=2)
    instances = copies(tmp_path, 6)
    with modality.listening():
        async with running(tmp_path, dicom={"remote_aes": [modality.remote()]}) as gateway:
            await gateway.store(*(path for path, _ in instances))
            transactions = [await gateway.request_commitment(references([dataset]))
                            for _, dataset in instances]
            await modality.wait(len(transactions))
            states = [(await gateway.until(f"/api/commitments/{t}", report_is("delivered")))[1] for t in transactions]
    assert {report.TransactionUID for _, report in modality.reports} == set(transactions)
    assert [state["report"]["attempts"] for state in states] == [1] * len(transactions)


async def test_a_requester_keeping_its_association_open_gets_the_report_on_it(tmp_path: Path) -> None:
    """With report_on_same_association, the report goes back on the N-ACTION's association; nothing listens at
    the requester's configured port, so a report on a new association could not arrive."""
    instances = copies(tmp_path, 2)
    offline = {"ae_title": "MODALITY1", "host": "127.0.0.1", "port": free_port()}
    received: list[tuple[int, Dataset]] = []
    async with running(tmp_path, dicom={"remote_aes": [offline]},
                       notify={"report_on_same_association": True}) as gateway:
        await gateway.store(*(path for path, _ in instances))
        transaction = generate_uid()

        def request_and_wait() -> int:
            ae = AE(ae_title="MODALITY1")
            ae.add_requested_context(StorageCommitmentPushModel)

            def report(event: evt.Event) -> tuple[int, None]:
                received.append((int(event.event_type), event.event_information))
                return 0x0000, None

            assoc = ae.associate("127.0.0.1", gateway.settings.dicom.port, ae_title="DICOMGW",
                                 evt_handlers=[(evt.EVT_N_EVENT_REPORT, report)])
            assert assoc.is_established
            try:
                status, _ = assoc.send_n_action(
                    action_information(transaction, references([d for _, d in instances])), 1,
                    StorageCommitmentPushModel, commitment.STORAGE_COMMITMENT_INSTANCE)
                for _ in range(600):
                    if received:
                        break
                    threading.Event().wait(0.05)
                return int(status.Status)
            finally:
                assoc.release()

        assert await asyncio.to_thread(request_and_wait) == 0x0000
        _, state = await gateway.until(f"/api/commitments/{transaction}", report_is("delivered"))
    [(event_type, report)] = received
    assert event_type == commitment.EVENT_ALL_COMMITTED and report.TransactionUID == transaction
    assert set(referenced(report, "ReferencedSOPSequence")) == {d.SOPInstanceUID for _, d in instances}
    assert state["report"]["attempts"] == 1


async def test_a_requester_that_released_its_association_gets_the_report_on_a_new_one(tmp_path: Path) -> None:
    modality = Peer("MODALITY1")
    instances = copies(tmp_path, 1)
    with modality.listening():
        async with running(tmp_path, dicom={"remote_aes": [modality.remote()]},
                           notify={"report_on_same_association": True}) as gateway:
            await gateway.store(*(path for path, _ in instances))
            transaction = await gateway.request_commitment(references([d for _, d in instances]))
            await modality.wait(1)
            _, state = await gateway.until(f"/api/commitments/{transaction}", report_is("delivered"))
    [(event_type, _)] = modality.reports
    assert event_type == commitment.EVENT_ALL_COMMITTED and state["report"]["attempts"] == 1


async def test_the_internal_report_route_answers_malformed_hand_overs_with_400(tmp_path: Path) -> None:
    async with running(tmp_path, notify={"report_on_same_association": True}) as gateway, ClientSession() as http:
        path = f"{commitment.REPORTS_PATH}/{generate_uid()}"
        async with http.post(f"{gateway.api}{path}", json={"decisions": []},
                             headers=api_headers(gateway.settings.data_dir)) as response:
            assert response.status == 404, "the API port does not serve the internal routes"
        url = f"http://127.0.0.1:{gateway.settings.internal.port}{path}"
        for wrong in ({}, {"Authorization": "Bearer not-the-secret"}, api_headers(gateway.settings.data_dir)):
            async with http.post(url, json={"decisions": [[CT_CLASS, generate_uid(), None]]},
                                 headers=wrong) as response:
                assert response.status == 401, wrong
        secret = (gateway.settings.data_dir / "internal-secret").read_text().strip()
        http.headers["Authorization"] = f"Bearer {secret}"
        for body in (b"not json", b"{}", b'{"decisions": 7}', b'{"decisions": [["1.2", "3.4"]]}',
                     b'{"decisions": [["1.2", "3.4", "0x0112"]]}'):
            async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                assert response.status == 400, body
        async with http.post(url, json={"decisions": [[CT_CLASS, generate_uid(), None]]}) as response:
            assert response.status == 404, "a well-formed hand-over for no open association"
