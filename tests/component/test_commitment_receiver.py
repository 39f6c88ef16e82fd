"""The receiver as Storage Commitment Push Model SCP, driven by pynetdicom's SCU (PS3.4 J.3.2)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from gateway.bus.embedded import EmbeddedBus
from gateway.dicom import commitment
from gateway.settings import RemoteAE
from tests.component.conftest import StartGateway

CT = "1.2.840.10008.5.1.4.1.1.2"
REQUESTER = RemoteAE(ae_title="MODALITY1", host="127.0.0.1", port=11113)


def action_information(transaction_uid: str, references: list[tuple[str, str]]) -> Dataset:
    dataset = Dataset()
    dataset.TransactionUID = transaction_uid
    items = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    dataset.ReferencedSOPSequence = items
    return dataset


def n_action(port: int, dataset: Dataset | None, calling_ae: str = "MODALITY1", action_type: int = 1,
             instance_uid: str = commitment.STORAGE_COMMITMENT_INSTANCE) -> int:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMGW",
                         ext_neg=[build_role(StorageCommitmentPushModel, scu_role=True, scp_role=True)])
    assert assoc.is_established
    try:
        status, _ = assoc.send_n_action(dataset, action_type, StorageCommitmentPushModel, instance_uid)
        return int(status.Status) if status else -1
    finally:
        assoc.release()


async def events(bus: EmbeddedBus, topic: str) -> list[dict[str, Any]]:
    async with bus.consumer("test-events", [topic]) as consumer:
        return [orjson.loads(record.value) for record in await consumer.fetch(timeout=1.0)]


async def test_a_request_is_published_with_its_references_before_success(start_gateway: StartGateway) -> None:
    references = [(CT, generate_uid()) for _ in range(3)]
    transaction = generate_uid()
    async with start_gateway(remote_aes=(REQUESTER,)) as gateway:
        status = await asyncio.to_thread(n_action, gateway.port, action_information(transaction, references))
        published = await events(gateway.bus, gateway.topics.events)
    assert status == 0x0000
    [request] = published
    assert request["type"] == "commitment.requested"
    assert request["transaction_uid"] == transaction
    assert request["requester_ae"] == "MODALITY1"
    assert [tuple(r) for r in request["references"]] == references


@pytest.mark.parametrize(("calling_ae", "dataset", "action_type", "instance_uid", "expected"), [
    ("STRANGER", action_information("1.2.3", [(CT, "1.2.3.4")]), 1, commitment.STORAGE_COMMITMENT_INSTANCE,
     0x0124),
    ("MODALITY1", action_information("1.2.3", [(CT, "1.2.3.4")]), 2, commitment.STORAGE_COMMITMENT_INSTANCE,
     0x0123),
    ("MODALITY1", action_information("1.2.3", [(CT, "1.2.3.4")]), 1, "1.2.3.4.5", 0x0112),
    ("MODALITY1", action_information("", [(CT, "1.2.3.4")]), 1, commitment.STORAGE_COMMITMENT_INSTANCE, 0x0110),
    ("MODALITY1", action_information("1.2.3", []), 1, commitment.STORAGE_COMMITMENT_INSTANCE, 0x0110),
    ("MODALITY1", action_information("1.2.3", [(CT, "")]), 1, commitment.STORAGE_COMMITMENT_INSTANCE, 0x0110),
], ids=["unknown-requester", "wrong-action", "wrong-instance", "no-transaction", "no-references",
        "reference-without-instance"])
async def test_bad_requests_are_refused_with_a_status_and_nothing_is_published(
    start_gateway: StartGateway, calling_ae: str, dataset: Dataset, action_type: int, instance_uid: str,
    expected: int,
) -> None:
    async with start_gateway(remote_aes=(REQUESTER,)) as gateway:
        status = await asyncio.to_thread(n_action, gateway.port, dataset, calling_ae, action_type, instance_uid)
        published = await events(gateway.bus, gateway.topics.events)
        # the association survives a refused request: a verification on a new one still works
        echo = AE(ae_title="MODALITY1")
        echo.add_requested_context("1.2.840.10008.1.1")
        assoc = await asyncio.to_thread(echo.associate, "127.0.0.1", gateway.port, ae_title="DICOMGW")
        assert assoc.is_established
        await asyncio.to_thread(assoc.release)
    assert status == expected
    assert published == []
