"""A storage commitment request of more references than one Kafka record held (about 10,800 before requests were
split) on the production adapters (real Kafka, SeaweedFS, PostgreSQL): answered Success, and reported complete."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from gateway.dicom import commitment
from gateway.ingest.stgcmt import REFERENCES_PER_RECORD
from tests.component.test_commitment_large import MANY, n_action, raw_action_information, unknown
from tests.component.test_notify_embedded import Peer, copies, referenced, references
from tests.conftest import dcmtk
from tests.helpers import run
from tests.integration.test_store_services import environment, processes, services, start
from tests.process import GatewayProcess

__all__ = ["environment", "processes", "services"]


@pytest.fixture
def peer() -> Iterator[Peer]:
    modality = Peer("MODALITY1")
    with modality.listening():
        yield modality


def logged(gateway: GatewayProcess, message: str) -> list[dict[str, object]]:
    lines = gateway.log.read_text(errors="replace").splitlines()
    return [entry for entry in map(json.loads, (line for line in lines if line.startswith("{")))
            if entry.get("msg") == message]


async def test_a_request_of_many_references_is_answered_success_and_reported_complete_over_kafka(
    tmp_path: Path, environment: dict[str, str], processes: list[GatewayProcess], peer: Peer,
) -> None:
    gateway = start(tmp_path, {
        **environment,
        "GATEWAY_DICOM__REMOTE_AES": json.dumps([peer.remote()]),
        "GATEWAY_NOTIFY__COMMITMENT_TIMEOUT_SECONDS": "2",
        "GATEWAY_XDS__TRIGGER_ON_COMMITMENT": "false",
    }, "all", processes)
    instances = copies(tmp_path, 2)
    code, out = await run(dcmtk("storescu"), "-aet", "MODALITY1", "-aec", "DICOMGW", "127.0.0.1",
                          str(gateway.dicom_port), *(str(path) for path, _ in instances))
    assert code == 0, out
    stored = references([dataset for _, dataset in instances])
    refs = [stored[0], *unknown(MANY - 2), stored[1]]
    transaction = generate_uid()

    status, comment = await asyncio.to_thread(n_action, gateway.dicom_port, raw_action_information(transaction, refs))
    assert (status, comment) == (0x0000, "")
    await peer.wait(1, timeout=120)

    [(event_type, report)] = peer.reports
    assert event_type == commitment.EVENT_SOME_FAILED and report.TransactionUID == transaction
    committed = referenced(report, "ReferencedSOPSequence")
    failed = referenced(report, "FailedSOPSequence")
    assert committed == {inst: None for _, inst in stored}
    assert len(failed) == MANY - 2 and set(failed.values()) == {commitment.NO_SUCH_OBJECT_INSTANCE}
    assert set(committed) | set(failed) == {inst for _, inst in refs}
    [requested] = [entry for entry in logged(gateway, "storage commitment requested")
                   if entry.get("transaction_uid") == transaction]
    assert requested["references"] == MANY and requested["records"] == -(-MANY // REFERENCES_PER_RECORD)
