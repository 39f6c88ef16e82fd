"""Storage commitment and IAN on the production adapters (real Kafka, SeaweedFS, PostgreSQL), with the roles in
separate processes as pods would run them, and the notify process killed with SIGKILL mid-flight."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from benchmarks.datasets import KINDS, generate
from tests.component.test_notify_embedded import Peer, referenced, request_commitment
from tests.conftest import dcmtk
from tests.helpers import run
from tests.integration.test_store_services import environment, processes, services, start, until
from tests.process import GatewayProcess

__all__ = ["environment", "processes", "services"]

STUDIES = 4
PER_STUDY = 10


@pytest.fixture
def peer() -> Iterator[Peer]:
    modality = Peer("MODALITY1")
    with modality.listening():
        yield modality


def study_files(tmp_path: Path) -> dict[str, list[pydicom.Dataset]]:
    by_study: dict[str, list[pydicom.Dataset]] = {}
    for path in generate(KINDS["ct"], STUDIES * PER_STUDY, tmp_path / "ct", studies=STUDIES):
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        dataset.filename = str(path)
        by_study.setdefault(str(dataset.StudyInstanceUID), []).append(dataset)
    return by_study


async def test_every_transaction_is_reported_correctly_although_notify_is_killed_mid_flight(
    tmp_path: Path, environment: dict[str, str], processes: list[GatewayProcess], peer: Peer,
) -> None:
    settings = {
        **environment,
        "GATEWAY_DICOM__REMOTE_AES": json.dumps([peer.remote()]),
        "GATEWAY_NOTIFY__IAN_SUBSCRIBERS": json.dumps(["MODALITY1"]),
        "GATEWAY_NOTIFY__RETRY_INITIAL_SECONDS": "0.5",
        # a delivery's lease is 4 association timeouts + 30 s: what the killed process held comes back after 42 s,
        # not the default 150 s
        "GATEWAY_NOTIFY__ASSOCIATION_TIMEOUT_SECONDS": "3",
        "GATEWAY_XDS__STABLE_AFTER_SECONDS": "3",
        "GATEWAY_XDS__STABILITY_CHECK_SECONDS": "0.5",
        "GATEWAY_XDS__TRIGGER_ON_COMMITMENT": "false",
    }
    receiver = start(tmp_path, settings, "receiver", processes)
    start(tmp_path, settings, "store", processes)
    notify = start(tmp_path, settings, "notify", processes)
    by_study = study_files(tmp_path)

    transactions: dict[str, set[str]] = {}
    for datasets in by_study.values():
        code, out = await run(dcmtk("storescu"), "-aet", "MODALITY1", "-aec", "DICOMGW", "127.0.0.1",
                              str(receiver.dicom_port), *(d.filename for d in datasets))
        assert code == 0, out
        for half in (datasets[: PER_STUDY // 2], datasets[PER_STUDY // 2 :]):
            references = [(str(d.SOPClassUID), str(d.SOPInstanceUID)) for d in half]
            transactions[await request_commitment(receiver.dicom_port, references)] = {r[1] for r in references}

    await peer.wait(1, timeout=120)
    notify.kill()
    notify = start(tmp_path, settings, "notify", processes)

    async def all_reported() -> bool:
        return {report.TransactionUID for _, report in peer.reports} >= set(transactions)

    await until(all_reported, 180, "a report for every transaction")
    for event_type, report in peer.reports:
        assert event_type == 1, report
        assert set(referenced(report, "ReferencedSOPSequence")) == transactions[report.TransactionUID]
        assert "FailedSOPSequence" not in report

    async def every_study_announced() -> bool:
        return {str(n.StudyInstanceUID) for n in peer.notifications} >= set(by_study)

    await until(every_study_announced, 120, "an IAN for every study")
    for notification in peer.notifications:
        [series] = notification.ReferencedSeriesSequence
        listed = {str(item.ReferencedSOPInstanceUID) for item in series.ReferencedSOPSequence}
        assert listed == {str(d.SOPInstanceUID) for d in by_study[str(notification.StudyInstanceUID)]}
