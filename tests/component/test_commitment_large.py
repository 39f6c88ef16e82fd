"""Storage commitment requests of many references on the embedded bus: published in parts, gathered whole by the
notify role, reported complete; the request over the maximum refused with its Error Comment.

The Action Information is built as bytes and handed to pynetdicom read back lazily, in the one transfer syntax the
requester proposes, so that it writes them as they are: encoding 25,000 items through pydicom would cost the test
more than the gateway spends on them.
"""

from __future__ import annotations

import asyncio
import io
import struct
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from gateway.app import build_bus
from gateway.bus import MAX_RECORD_BYTES
from gateway.core import events
from gateway.core.events import CommitmentRequested
from gateway.dicom import commitment
from gateway.index.sqlite import SqliteIndex
from gateway.ingest.stgcmt import REFERENCES_PER_RECORD
from gateway.metrics import Metrics
from tests.component.conftest import StartGateway
from tests.component.test_commitment_receiver import REQUESTER
from tests.component.test_commitment_receiver import events as published_events
from tests.component.test_notify_embedded import (
    CT_CLASS,
    Peer,
    copies,
    referenced,
    references,
    report_is,
    running,
)
from tests.helpers import free_port

MANY = 25_000
"""Over twice what one 1 MiB record held before requests were split (about 10,800 references)."""


def _element(tag: int, value: bytes) -> bytes:
    """An implicit VR little endian element of defined length, padded to even length."""
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def action_information_bytes(transaction_uid: str, refs: list[tuple[str, str]]) -> bytes:
    """Action Information in implicit VR little endian, the UIDs as given (valid or not)."""
    items = b"".join(
        b"\xfe\xff\x00\xe0" + struct.pack("<I", len(body)) + body
        for body in (_element(0x00081150, cls.encode()) + _element(0x00081155, inst.encode()) for cls, inst in refs))
    return _element(0x00081195, transaction_uid.encode()) + _element(0x00081199, items)


def raw_action_information(transaction_uid: str, refs: list[tuple[str, str]]) -> Dataset:
    return read_dataset(io.BytesIO(action_information_bytes(transaction_uid, refs)), True, True)


def unknown(count: int) -> list[tuple[str, str]]:
    """References to instances nobody sent, with long UIDs as some modalities make them."""
    root = f"{generate_uid(prefix='1.2.826.0.1.3680043.8.498.')}."[:50]
    return [(CT_CLASS, f"{root}{n}") for n in range(count)]


def n_action(port: int, dataset: Dataset, calling_ae: str = "MODALITY1") -> tuple[int, str]:
    """Send the N-ACTION; its status and Error Comment."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(StorageCommitmentPushModel, ImplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMGW")
    assert assoc.is_established
    try:
        status, _ = assoc.send_n_action(dataset, 1, StorageCommitmentPushModel, commitment.STORAGE_COMMITMENT_INSTANCE)
        return int(status.Status), str(status.get("ErrorComment", ""))
    finally:
        assoc.release()


@pytest.fixture(autouse=True)
def _quiet_pynetdicom() -> None:
    import logging

    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


async def test_a_request_of_many_references_is_published_in_parts_before_success(start_gateway: StartGateway) -> None:
    transaction = generate_uid()
    refs = unknown(MANY)
    async with start_gateway(remote_aes=(REQUESTER,)) as gateway:
        status, _ = await asyncio.to_thread(n_action, gateway.port, raw_action_information(transaction, refs))
        async with gateway.bus.consumer("test-events", [gateway.topics.events]) as consumer:
            records = await consumer.fetch(timeout=2.0)
    assert status == 0x0000
    parts = -(-MANY // REFERENCES_PER_RECORD)
    assert len(records) == parts and {record.key for record in records} == {transaction.encode()}
    assert len({record.partition for record in records}) == 1
    assert max(len(record.value) for record in records) < MAX_RECORD_BYTES // 2
    decoded = [events.decode(record.value) for record in records]
    assert all(isinstance(event, CommitmentRequested) for event in decoded)
    requests = [event for event in decoded if isinstance(event, CommitmentRequested)]
    assert [(event.part, event.parts) for event in requests] == [(n, parts) for n in range(1, parts + 1)]
    assert len({event.requested_at for event in requests}) == 1
    assert [ref for event in requests for ref in event.references] == refs


async def test_a_request_over_the_maximum_is_refused_with_its_count_and_nothing_is_published(
    start_gateway: StartGateway,
) -> None:
    over = commitment.MAX_REFERENCES + 1
    async with start_gateway(remote_aes=(REQUESTER,)) as gateway:
        status, comment = await asyncio.to_thread(
            n_action, gateway.port, raw_action_information(generate_uid(), unknown(over)))
        published = await published_events(gateway.bus, gateway.topics.events)
    assert status == 0x0213
    assert comment == f"too many references ({over} > {commitment.MAX_REFERENCES})"
    assert published == []


async def test_a_request_of_many_references_is_reported_complete(tmp_path: Path) -> None:
    """Two of them stored and committed, the others failed once the deadline passed: all in the one report."""
    modality = Peer("MODALITY1")
    instances = copies(tmp_path, 2)
    stored = references([dataset for _, dataset in instances])
    refs = [stored[0], *unknown(MANY - 2), stored[1]]
    transaction = generate_uid()
    with modality.listening():
        async with running(tmp_path, dicom={"remote_aes": [modality.remote()]},
                           notify={"commitment_timeout_seconds": 2}) as gateway:
            await gateway.store(*(path for path, _ in instances))
            status, _ = await asyncio.to_thread(n_action, gateway.settings.dicom.port,
                                                raw_action_information(transaction, refs))
            assert status == 0x0000
            await modality.wait(1)
            _, state = await gateway.until(f"/api/commitments/{transaction}", report_is("delivered"))
    [(event_type, report)] = modality.reports
    assert event_type == commitment.EVENT_SOME_FAILED and report.TransactionUID == transaction
    assert referenced(report, "ReferencedSOPSequence") == {inst: None for _, inst in stored}
    failed = referenced(report, "FailedSOPSequence")
    assert len(failed) == MANY - 2 and set(failed.values()) == {commitment.NO_SUCH_OBJECT_INSTANCE}
    assert [(i["sop_class_uid"], i["sop_instance_uid"]) for i in state["instances"]] == refs


async def test_a_report_of_many_references_goes_back_on_the_requesters_association(tmp_path: Path) -> None:
    """Its hand-over to the receiver holding the association is larger than aiohttp's default 1 MiB body."""
    offline = {"ae_title": "MODALITY1", "host": "127.0.0.1", "port": free_port()}
    refs = unknown(MANY)
    transaction = generate_uid()
    received: list[tuple[int, Dataset]] = []
    async with running(tmp_path, dicom={"remote_aes": [offline]},
                       notify={"report_on_same_association": True, "commitment_timeout_seconds": 2}) as gateway:

        def request_and_wait() -> int:
            ae = AE(ae_title="MODALITY1")
            ae.add_requested_context(StorageCommitmentPushModel, ImplicitVRLittleEndian)

            def report(event: evt.Event) -> tuple[int, None]:
                received.append((int(event.event_type), event.event_information))
                return 0x0000, None

            assoc = ae.associate("127.0.0.1", gateway.settings.dicom.port, ae_title="DICOMGW",
                                 evt_handlers=[(evt.EVT_N_EVENT_REPORT, report)])
            assert assoc.is_established
            try:
                status, _ = assoc.send_n_action(raw_action_information(transaction, refs), 1,
                                                StorageCommitmentPushModel, commitment.STORAGE_COMMITMENT_INSTANCE)
                deadline = time.monotonic() + 60
                while not received and time.monotonic() < deadline:
                    time.sleep(0.05)
                return int(status.Status)
            finally:
                assoc.release()

        assert await asyncio.to_thread(request_and_wait) == 0x0000
        _, state = await gateway.until(f"/api/commitments/{transaction}", report_is("delivered"))
    [(event_type, report)] = received
    assert event_type == commitment.EVENT_SOME_FAILED and report.TransactionUID == transaction
    assert len(referenced(report, "FailedSOPSequence")) == MANY
    assert state["report"]["attempts"] == 1


async def test_parts_are_gathered_in_any_order_apart_from_a_partial_request_and_compared_whole(
    tmp_path: Path,
) -> None:
    """What a requester and the bus can do to the parts of one Transaction UID: a request that failed half-way
    (refused: one part never published) sent again, its parts out of order and one twice; a part delivered again
    after the report; then a new request re-using the Transaction UID that differs only in its last part."""
    modality = Peer("MODALITY1")
    instances = copies(tmp_path, 4)
    a, b, c, d = references([dataset for _, dataset in instances])
    transaction = generate_uid()
    now = datetime.now(UTC)

    def part(at: datetime, number: int, parts: int, *refs: tuple[str, str]) -> CommitmentRequested:
        return CommitmentRequested(transaction_uid=transaction, requester_ae="MODALITY1", called_ae="DICOMGW",
                                   peer="127.0.0.1:1", references=refs, requested_at=at.isoformat(), part=number,
                                   parts=parts)

    failed_half_way, sent_again, reused = now - timedelta(seconds=2), now - timedelta(seconds=1), now
    with modality.listening():
        async with running(tmp_path, dicom={"remote_aes": [modality.remote()]}) as gateway:
            await gateway.store(*(path for path, _ in instances))
            bus = build_bus(gateway.settings, Metrics())
            async with bus.producer() as producer:

                async def publish(*parts: CommitmentRequested) -> None:
                    for event in parts:
                        await producer.publish(gateway.settings.topics.events, event.key, events.encode(event))

                await publish(part(failed_half_way, 1, 3, a), part(failed_half_way, 3, 3, c))
                await publish(part(sent_again, 3, 3, c), part(sent_again, 1, 3, a), part(sent_again, 1, 3, a),
                              part(sent_again, 2, 3, b))
                await modality.wait(1)
                await publish(part(sent_again, 2, 3, b))
                await publish(part(reused, 1, 2, a), part(reused, 2, 2, d))
                await modality.wait(2)
                await asyncio.sleep(1)
            _, state = await gateway.until(f"/api/commitments/{transaction}", report_is("delivered"))
        async with await SqliteIndex.open(gateway.settings.data_dir / "index.sqlite3") as index:
            left = await index.expire_commitment_parts(time.time() + 1)
    assert len(modality.reports) == 2, "one report for the request, one for the re-use; none for the part again"
    (first_type, first), (second_type, second) = modality.reports
    assert first_type == commitment.EVENT_ALL_COMMITTED
    assert referenced(first, "ReferencedSOPSequence") == {a[1]: None, b[1]: None, c[1]: None}
    assert second_type == commitment.EVENT_SOME_FAILED and "ReferencedSOPSequence" not in second
    assert referenced(second, "FailedSOPSequence") == {a[1]: 0x0131, d[1]: 0x0131}
    assert [(i["sop_instance_uid"], i["outcome"]) for i in state["instances"]] == [
        (a[1], "committed"), (b[1], "committed"), (c[1], "committed")]
    assert left == [transaction], "only the request that never became whole keeps its parts"
