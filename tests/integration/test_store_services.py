"""The store pool on the production adapters: real Kafka, SeaweedFS (S3) and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from minio import Minio

from benchmarks.datasets import KINDS, generate
from tests.conftest import SERVICES, dcmtk, fresh_database, start_services
from tests.helpers import dataset_bytes, run
from tests.process import GatewayProcess


@pytest.fixture(scope="module")
def services() -> dict[str, str]:
    return start_services("kafka", "s3", "postgres")


@pytest.fixture
async def environment(services: dict[str, str]) -> dict[str, str]:
    """Topics and a database of the test's own: a role of one test never sees another's studies or deliveries."""
    suffix = uuid.uuid4().hex[:8]
    return {**services, "GATEWAY_DATABASE__URL": await fresh_database(services["GATEWAY_DATABASE__URL"]),
            "GATEWAY_TOPICS__INSTANCES": f"instances-{suffix}", "GATEWAY_TOPICS__EVENTS": f"events-{suffix}",
            "GATEWAY_TOPICS__DEAD_LETTER": f"dead-letter-{suffix}", "GATEWAY_TOPICS__AUDIT": f"audit-{suffix}",
            "GATEWAY_KAFKA__PARTITIONS": "4",
            "GATEWAY_STORE__RETRY_MAX_SECONDS": "4", "GATEWAY_KAFKA__SESSION_TIMEOUT_MS": "6000"}


@pytest.fixture
def studies(tmp_path: Path) -> list[Path]:
    return generate(KINDS["ct"], 40, tmp_path / "ct", studies=4)


def minio(services: dict[str, str]) -> Minio:
    return Minio(services["GATEWAY_S3__ENDPOINT"], services["GATEWAY_S3__ACCESS_KEY"],
                 services["GATEWAY_S3__SECRET_KEY"], secure=False)


async def index_rows(environment: dict[str, str], sop_uids: set[str]) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(environment["GATEWAY_DATABASE__URL"])
    try:
        return await connection.fetch(
            "SELECT sop_instance_uid, storage_key, sha256, status FROM instances WHERE sop_instance_uid = ANY($1)",
            list(sop_uids))
    finally:
        await connection.close()


async def until(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.5)


@pytest.fixture
def processes(tmp_path: Path, environment: dict[str, str]) -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    yield started
    for process in started:
        process.stop()


def start(tmp_path: Path, environment: dict[str, str], role: str, started: list[GatewayProcess]) -> GatewayProcess:
    process = GatewayProcess(tmp_path / f"{role}-{len(started)}", role=role, **environment)
    started.append(process)
    process.wait_ready()
    return process


async def check_stored_once(environment: dict[str, str], studies: list[Path]) -> None:
    uids = {path.stem: path for path in studies}
    import pydicom

    by_uid = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in uids.values()}
    rows = await index_rows(environment, set(by_uid))
    assert sorted(r["sop_instance_uid"] for r in rows) == sorted(by_uid), "missing or duplicate index rows"
    client = minio(environment)
    for row in rows:
        response = client.get_object(environment["GATEWAY_S3__BUCKET"], row["storage_key"])
        try:
            stored = response.read()
        finally:
            response.close()
            response.release_conn()
        source = dataset_bytes(by_uid[row["sop_instance_uid"]])
        assert stored.endswith(source) and hashlib.sha256(source).hexdigest() == row["sha256"]
        prefix = row["storage_key"].rsplit("/", 1)[0] + "/"
        versions = list(client.list_objects(environment["GATEWAY_S3__BUCKET"], prefix=prefix))
        assert len(versions) == 1, f"stored more than once: {[v.object_name for v in versions]}"


async def test_worker_killed_mid_batch_then_restarted_stores_each_instance_once(
    tmp_path: Path, environment: dict[str, str], services: dict[str, str], studies: list[Path],
    processes: list[GatewayProcess],
) -> None:
    receiver = start(tmp_path, environment, "receiver", processes)
    code, out = await run(dcmtk("storescu"), "-aec", "DICOMGW", "127.0.0.1", str(receiver.dicom_port),
                          *map(str, studies))
    assert code == 0, out
    worker = start(tmp_path, environment, "store", processes)
    await until(lambda: _stored_at_least(worker, 5), 60, "the first instances to be stored")
    worker.kill()
    start(tmp_path, environment, "store", processes)
    await asyncio.sleep(1)
    await until(lambda: _all_indexed(environment, studies), 120, "every instance to be indexed")
    await check_stored_once(environment, studies)


async def test_s3_outage_under_load_loses_nothing_and_does_not_spin(
    tmp_path: Path, environment: dict[str, str], services: dict[str, str], studies: list[Path],
    processes: list[GatewayProcess],
) -> None:
    gateway = start(tmp_path, environment, "all", processes)
    subprocess.run([sys.executable, str(SERVICES), "down", "s3"], check=True, capture_output=True)
    try:
        code, out = await run(dcmtk("storescu"), "-aec", "DICOMGW", "127.0.0.1", str(gateway.dicom_port),
                              *map(str, studies))
        assert code == 0, out  # ingest does not depend on S3
        await asyncio.sleep(30)
        _, metrics = gateway.http("/metrics")
        retries = _metric(metrics, 'dicomgw_stage_retries_total{stage="store"}')
        assert 1 <= retries <= 15, f"{retries} retries in 30 s: the worker should back off, not spin"
    finally:
        start_services("s3")
    await until(lambda: _all_indexed(environment, studies), 120, "the worker to catch up after S3 returned")
    await check_stored_once(environment, studies)


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def _stored_at_least(process: GatewayProcess, count: int) -> bool:
    _, metrics = process.http("/metrics")
    return _metric(metrics, 'dicomgw_instances_stored_total{event="instance.stored"}') >= count


async def _all_indexed(environment: dict[str, str], studies: list[Path]) -> bool:
    import pydicom

    uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in studies}
    return len({r["sop_instance_uid"] for r in await index_rows(environment, uids)}) == len(uids)


async def test_pydicom_corpus_round_trips_into_s3(
    tmp_path: Path, environment: dict[str, str], services: dict[str, str], processes: list[GatewayProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pynetdicom

    from tests.component.test_receiver_pynetdicom import corpus, send_all

    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    gateway = start(tmp_path, environment, "all", processes)
    samples = [sample for sample in corpus() if sample.valid]
    statuses = await asyncio.to_thread(send_all, gateway.dicom_port, samples)
    assert all(status is not None and status.Status == 0 for status in statuses.values())
    uids = {sample.sop_instance for sample in samples}

    async def all_stored() -> bool:
        return len({r["sop_instance_uid"] for r in await index_rows(environment, uids)}) == len(uids)

    await until(all_stored, 120, "the corpus to be stored")
    await asyncio.sleep(2)  # versions and variants of one UID (the corpus has several encodings under one) settle
    client = minio(services)
    stored: set[tuple[str, bytes]] = set()
    connection = await asyncpg.connect(environment["GATEWAY_DATABASE__URL"])
    try:
        variants = await connection.fetch(
            "SELECT sop_instance_uid, storage_key FROM instance_variants WHERE sop_instance_uid = ANY($1)", list(uids))
    finally:
        await connection.close()
    for row in [*await index_rows(environment, uids), *variants]:
        response = client.get_object(services["GATEWAY_S3__BUCKET"], row["storage_key"])
        try:
            stored.add((row["sop_instance_uid"], response.read()))
        finally:
            response.close()
            response.release_conn()
    for sample in samples:
        source = dataset_bytes(sample.path)
        assert any(uid == sample.sop_instance and data.endswith(source) for uid, data in stored), sample.path
