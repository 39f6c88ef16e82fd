"""The receiver on the real Kafka broker: Success only when durable there, 0xA700 while it is down."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE

from gateway.bus.kafka import KafkaBus
from gateway.ingest.receiver import Receiver
from gateway.metrics import Metrics
from gateway.settings import DicomSettings, KafkaSettings, TopicSettings
from tests.conftest import SERVICES, start_services
from tests.helpers import free_port, read_instances


def store(port: int, dataset: Dataset) -> int:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(dataset.SOPClassUID, [dataset.file_meta.TransferSyntaxUID])
    association = ae.associate("127.0.0.1", port, ae_title="DICOMGW")
    assert association.is_established
    try:
        status = association.send_c_store(dataset)
        return int(status.Status) if status else -1
    finally:
        association.release()


def copy_with_uid(source: Dataset, n: int) -> Dataset:
    dataset = source.copy()
    dataset.SOPInstanceUID = f"1.2.826.0.1.3680043.9.7433.77.{n}"
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    return dataset


def services(command: str) -> None:
    subprocess.run([sys.executable, str(SERVICES), command, "kafka"], check=True, timeout=300,
                   capture_output=True)


async def test_kafka_down_refuses_with_a700_and_sending_resumes(kafka_bootstrap: str, tmp_path: Path) -> None:
    topics = TopicSettings(instances=f"instances-{uuid.uuid4().hex[:8]}", events=f"ev-{uuid.uuid4().hex[:8]}",
                           dead_letter=f"dl-{uuid.uuid4().hex[:8]}")
    metrics = Metrics()
    bus = KafkaBus(KafkaSettings(bootstrap_servers=kafka_bootstrap, partitions=3, request_timeout_ms=5000),
                   topics, metrics)
    await bus.ensure_topics()
    settings = DicomSettings(host="127.0.0.1", port=free_port(), publish_timeout_seconds=5)
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    acknowledged = []
    try:
        async with Receiver(settings, topics, bus, metrics, drain_timeout=5):
            first = copy_with_uid(source, 1)
            assert await asyncio.to_thread(store, settings.port, first) == 0x0000
            acknowledged.append(first.SOPInstanceUID)

            await asyncio.to_thread(services, "down")
            refused = copy_with_uid(source, 2)
            assert await asyncio.to_thread(store, settings.port, refused) == 0xA700

            await asyncio.to_thread(start_services, "kafka")
            for n in range(3, 6):
                again = copy_with_uid(source, n)
                status = -1
                for _ in range(30):  # the producer reconnects on its own; the modality retries as it would
                    status = await asyncio.to_thread(store, settings.port, again)
                    if status == 0:
                        break
                    await asyncio.sleep(1)
                assert status == 0x0000
                acknowledged.append(again.SOPInstanceUID)
    finally:
        await asyncio.to_thread(start_services, "kafka")
    contents = await read_instances(bus, topics.instances, "check", idle=3.0)
    # every acknowledged instance is there; the refused one may be too (the producer delivered it once the
    # broker came back, after we had answered 0xA700), which the modality's resend makes a duplicate
    assert set(acknowledged) <= set(contents.complete)
    assert not contents.partial
    _, data = contents.complete[acknowledged[0]]
    assert pydicom.dcmread(__import__("io").BytesIO(data), force=True).SOPInstanceUID == acknowledged[0]
