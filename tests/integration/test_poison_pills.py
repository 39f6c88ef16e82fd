"""Poison pills on the production adapters (real Kafka, SeaweedFS, PostgreSQL): one message that can never
succeed is dead-lettered with its reason, and what follows it in the same partition goes on.

Each topic has a single partition here, so "behind it in the same partition" holds for every record.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pydicom
import pytest

from benchmarks.datasets import KINDS, generate
from gateway.bus.kafka import KafkaBus
from gateway.core import events
from gateway.core.events import CommitmentRequested
from gateway.metrics import Metrics
from gateway.settings import KafkaSettings, TopicSettings
from tests.conftest import dcmtk
from tests.helpers import run
from tests.integration.test_store_services import environment, minio, services, until
from tests.process import GatewayProcess

__all__ = ["environment", "services"]

CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def single_partition(environment: dict[str, str]) -> dict[str, str]:
    """The store tests' topics and database of its own, on one partition each."""
    return {**environment, "GATEWAY_KAFKA__PARTITIONS": "1", "GATEWAY_NOTIFY__RETRY_MAX_SECONDS": "4"}


@pytest.fixture
def gateway(tmp_path: Path, single_partition: dict[str, str]) -> Iterator[GatewayProcess]:
    process = GatewayProcess(tmp_path / "gateway", **single_partition)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def dead_letters(gateway: GatewayProcess) -> list[dict[str, Any]]:
    status, body = gateway.http("/api/dlq")
    assert status == 200, body
    entries: list[dict[str, Any]] = orjson.loads(body)
    return entries


async def indexed(environment: dict[str, str], sop_uids: set[str]) -> set[str]:
    connection = await asyncpg.connect(environment["GATEWAY_DATABASE__URL"])
    try:
        rows = await connection.fetch("SELECT sop_instance_uid FROM instances WHERE sop_instance_uid = ANY($1)",
                                      list(sop_uids))
    finally:
        await connection.close()
    return {row["sop_instance_uid"] for row in rows}


async def test_an_instance_postgresql_refuses_is_dead_lettered_and_the_rest_of_its_study_is_stored(
    tmp_path: Path, services: dict[str, str], environment: dict[str, str], gateway: GatewayProcess,
) -> None:
    study = generate(KINDS["ct"], 6, tmp_path / "ct", studies=1)
    poison = pydicom.dcmread(study[0])
    poison.PatientID = "AB\x00CD"  # PostgreSQL text cannot hold a NUL; SQLite can, which is why this runs here
    poison_path = tmp_path / "poison.dcm"
    poison.save_as(poison_path)
    healthy = {pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID: path for path in study[1:]}

    code, out = await run(dcmtk("storescu"), "-aec", "DICOMGW", "127.0.0.1", str(gateway.dicom_port),
                          str(poison_path), *map(str, healthy.values()))
    assert code == 0, out

    async def rest_indexed() -> bool:
        return await indexed(environment, set(healthy)) == set(healthy)

    await until(rest_indexed, 90, "the instances behind the poison pill to be stored")

    async def dead_lettered() -> bool:
        return bool(dead_letters(gateway))

    await until(dead_lettered, 30, "the poison pill's dead-letter entry")
    [entry] = dead_letters(gateway)
    assert entry["stage"] == "store"
    assert entry["subject"] == poison.StudyInstanceUID
    assert entry["reason"] == ("the index refused the instance: "
                               "PostgreSQL CharacterNotInRepertoireError (SQLSTATE 22021)")
    assert "AB" not in entry["reason"], "a dead-letter reason must not quote patient data"
    assert await indexed(environment, {poison.SOPInstanceUID}) == set()
    bucket = services["GATEWAY_S3__BUCKET"]
    leftovers = [o.object_name for o in minio(services).list_objects(bucket, prefix="", recursive=True)
                 if poison.SOPInstanceUID in (o.object_name or "")]
    assert leftovers == [], "the object of an instance the index refused must not stay behind"
    _, metrics = gateway.http("/metrics")
    assert 'dicomgw_dead_letters_total{stage="store"} 1.0' in metrics


async def test_an_event_whose_handling_raises_is_dead_lettered_and_the_events_behind_it_are_handled(
    services: dict[str, str], environment: dict[str, str], gateway: GatewayProcess,
) -> None:
    topics = TopicSettings(instances=environment["GATEWAY_TOPICS__INSTANCES"],
                           events=environment["GATEWAY_TOPICS__EVENTS"],
                           dead_letter=environment["GATEWAY_TOPICS__DEAD_LETTER"])
    bus = KafkaBus(KafkaSettings(bootstrap_servers=services["GATEWAY_KAFKA__BOOTSTRAP_SERVERS"]), topics, Metrics())
    poison_uid, healthy_uid = f"2.25.{uuid.uuid4().int}", f"2.25.{uuid.uuid4().int}"

    def request(transaction_uid: str, requested_at: str) -> CommitmentRequested:
        return CommitmentRequested(transaction_uid=transaction_uid, requester_ae="MODALITY1", called_ae="DICOMGW",
                                   peer="127.0.0.1:1", references=((CT_CLASS, f"2.25.{uuid.uuid4().int}"),),
                                   requested_at=requested_at)

    async with bus.producer() as producer:
        # a request whose time does not parse makes the notify stage raise ValueError on every try
        for event in (request(poison_uid, "yesterday"), request(healthy_uid, datetime.now(UTC).isoformat())):
            await producer.publish(topics.events, event.key, events.encode(event))
        await producer.publish(topics.events, b"x", b'{"type": "patient.teleported", "v": 1}')

    async def healthy_tracked() -> bool:
        return gateway.http(f"/api/commitments/{healthy_uid}")[0] == 200

    await until(healthy_tracked, 60, "the request behind the poison pill to be tracked")

    async def both_dead_lettered() -> bool:
        return len(dead_letters(gateway)) == 2

    await until(both_dead_lettered, 30, "the poison pill and the unknown event to be dead-lettered")
    entries = {entry["subject"]: entry for entry in dead_letters(gateway)}
    assert entries[poison_uid]["stage"] == "notify"
    assert "commitment.requested" in entries[poison_uid]["reason"]
    assert "ValueError" in entries[poison_uid]["reason"]
    assert "unknown event type 'patient.teleported'" in entries["x"]["reason"]
    assert gateway.http(f"/api/commitments/{poison_uid}")[0] == 404
