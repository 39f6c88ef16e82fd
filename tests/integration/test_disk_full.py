"""A full disk (security issue #21): the gateway stays up, refuses C-STORE with 0xA700 "disk full", reports
unready with the reason, and resumes by itself once there is room; also when it starts on a full disk.

The disk is a 32 MiB tmpfs mounted for each test (root needed: a test that cannot mount fails, never skips),
filled to the last byte, so SQLite and the object files meet real ENOSPC, not only the free-space guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import UID

from gateway.app import store_pool
from gateway.bus import BusUnavailable
from gateway.bus.embedded import EmbeddedBus
from gateway.core.audit import NoAudit
from gateway.index import CorrectionPolicy, IndexUnavailable, Outcome
from gateway.index.sqlite import SqliteIndex
from gateway.ingest.receiver import Receiver
from gateway.metrics import Metrics
from gateway.objects import ObjectStoreUnavailable
from gateway.objects.filesystem import FilesystemObjectStore
from gateway.settings import (
    DicomSettings,
    EmbeddedBusSettings,
    RuntimeSettings,
    Settings,
    StoreSettings,
)
from tests.conftest import dcmtk
from tests.helpers import free_port, run
from tests.integration.test_index_contract import make_row
from tests.process import GatewayProcess
from workers.failure import Attempts, Verdict

CT = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700
SENDER = "MODALITY1"
ENVIRONMENT = {
    "GATEWAY_DICOM__ALLOWED_AES": f'[{{"ae_title": "{SENDER}"}}]',
    "GATEWAY_RUNTIME__MIN_FREE_BYTES": str(4 * 1024 * 1024),
    "GATEWAY_RUNTIME__DRAIN_TIMEOUT_SECONDS": "5",
    "GATEWAY_STORE__RETRY_MAX_SECONDS": "1",
    "GATEWAY_NOTIFY__RETRY_MAX_SECONDS": "1",
}
"""An allow-listed sender, a guard below the 32 MiB disk, and short back-offs so recovery takes seconds."""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the full-disk tests (they need root): {mounted.stderr.strip()}",
                    pytrace=False)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def gateways(small_disk: Path) -> Iterator[Callable[[], GatewayProcess]]:
    """Starts gateway processes whose data directory is the small disk (their logs are beside it, not on it)."""
    started: list[GatewayProcess] = []

    def start() -> GatewayProcess:
        started.append(GatewayProcess(small_disk, **ENVIRONMENT))
        return started[-1]

    yield start
    for gateway in started:
        gateway.stop(timeout=20)


def fill(disk: Path) -> Path:
    """Write a file until the disk refuses another byte."""
    filler = disk / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for chunk in (1024 * 1024, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(descriptor, b"\0" * chunk):
                    pass
    finally:
        os.close(descriptor)
    status = os.statvfs(disk)
    assert status.f_bavail == 0, "the disk still has room"
    return filler


def instance(directory: Path, number: int) -> tuple[Path, str]:
    """CT_small under a SOP Instance UID of its own."""
    dataset = pydicom.dcmread(CT)
    uid = f"2.25.2100{number}{time.time_ns()}"
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = UID(uid)
    path = directory / f"ct-{number}.dcm"
    dataset.save_as(path)
    return path, uid


def store(port: int, path: Path) -> tuple[int, str]:
    """C-STORE with dcmtk's storescu as the allow-listed sender: the DIMSE status and Error Comment answered."""
    result = subprocess.run([dcmtk("storescu"), "-d", "-aet", SENDER, "-aec", "DICOMGW", "127.0.0.1", str(port),
                             str(path)], capture_output=True, text=True, timeout=30)
    output = result.stdout + result.stderr
    status = re.search(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", output)
    assert status is not None, f"no C-STORE response:\n{output[-3000:]}"
    comment = re.search(r"\(0000,0902\) LO \[([^\]]*)\]", output)
    return int(status.group(1), 16), comment.group(1) if comment else ""


def readiness(gateway: GatewayProcess) -> tuple[int, dict[str, Any]]:
    status, body = gateway.http("/readyz")
    return status, json.loads(body)


def ready_gauge(gateway: GatewayProcess) -> float:
    metrics = gateway.http("/metrics")[1]
    match = re.search(r"^dicomgw_ready ([0-9.]+)$", metrics, re.MULTILINE)
    assert match is not None
    return float(match.group(1))


def eventually(check: Callable[[], bool], timeout: float, what: str, gateway: GatewayProcess) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert gateway.process.poll() is None, f"the gateway exited:\n{gateway.output()}"
        assert time.monotonic() < deadline, f"{what} within {timeout}s:\n{gateway.output()}"
        time.sleep(0.1)


def unready_for_disk(gateway: GatewayProcess, disk: Path) -> Callable[[], bool]:
    def check() -> bool:
        with contextlib.suppress(OSError):
            status, body = readiness(gateway)
            return status == 503 and body.get("reason", "").startswith("disk full: ") and str(disk) in body["reason"]
        return False

    return check


def stored(disk: Path, uid: str) -> str | None:
    """The instance's status in the SQLite index, read behind the gateway's back."""
    with contextlib.closing(sqlite3.connect(f"file:{disk / 'index.sqlite3'}?mode=ro", uri=True)) as connection:
        row = connection.execute("SELECT status FROM instances WHERE sop_instance_uid = ? AND is_current",
                                 (uid,)).fetchone()
    return None if row is None else str(row[0])


def stow(gateway: GatewayProcess, path: Path) -> tuple[int, str]:
    """STOW-RS of one file, with the generated admin token."""
    token = (gateway.data_dir / "api-token").read_text().strip()
    body = (b"--b\r\nContent-Type: application/dicom\r\n\r\n" + path.read_bytes() + b"\r\n--b--\r\n")
    request = urllib.request.Request(f"http://127.0.0.1:{gateway.http_port}/dicomweb/studies", data=body, headers={
        "Authorization": f"Bearer {token}", "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def whole_log(gateway: GatewayProcess) -> str:
    gateway.output()  # flushes
    return gateway.log.read_text(errors="replace")


def test_a_full_disk_refuses_instances_stays_up_and_recovers(small_disk: Path, tmp_path: Path,
                                                             gateways: Callable[[], GatewayProcess]) -> None:
    gateway = gateways()
    gateway.wait_ready()
    before, _ = instance(tmp_path, 1)
    assert store(gateway.dicom_port, before) == (SUCCESS, "")

    filler = fill(small_disk)
    eventually(unready_for_disk(gateway, small_disk), 5, "readiness did not report the full disk", gateway)
    assert ready_gauge(gateway) == 0
    refused, refused_uid = instance(tmp_path, 2)
    answers = set()
    deadline = time.monotonic() + 15  # it used to exit within about 10 s
    while time.monotonic() < deadline:
        assert gateway.process.poll() is None, f"the gateway exited on a full disk:\n{gateway.output()}"
        answers.add(store(gateway.dicom_port, refused))
        time.sleep(1)
    assert answers == {(OUT_OF_RESOURCES, "disk full")}
    assert stow(gateway, refused)[0] == 503  # STOW-RS is refused the same way
    assert unready_for_disk(gateway, small_disk)()
    log = whole_log(gateway)
    assert log.count("disk full: unready") == 1, "one warning when the disk turns full, not one per C-STORE"
    assert "cannot rollback" not in log and "role stopped unexpectedly" not in log

    filler.unlink()
    gateway.wait_ready(timeout=10)
    assert readiness(gateway) == (200, {"status": "ready"})
    assert ready_gauge(gateway) == 1
    assert "disk space recovered" in whole_log(gateway)
    after, after_uid = instance(tmp_path, 3)
    assert store(gateway.dicom_port, after) == (SUCCESS, "")
    eventually(lambda: stored(small_disk, after_uid) == "stored", 20, "the instance was not indexed", gateway)
    assert stored(small_disk, refused_uid) is None, "a refused instance must not be stored"


def test_starts_on_a_full_disk_unready_and_becomes_ready_with_room(small_disk: Path, tmp_path: Path,
                                                                   gateways: Callable[[], GatewayProcess]) -> None:
    first = gateways()
    first.wait_ready()
    assert first.stop() == 0  # a clean stop: SQLite removes its -shm files, which a full disk cannot recreate
    filler = fill(small_disk)

    gateway = gateways()
    eventually(unready_for_disk(gateway, small_disk), 15, "the gateway did not come up unready", gateway)
    refused, _ = instance(tmp_path, 1)
    assert store(gateway.dicom_port, refused) == (OUT_OF_RESOURCES, "disk full")
    time.sleep(2)
    assert gateway.process.poll() is None, f"the gateway exited on a full disk:\n{gateway.output()}"
    assert "cannot rollback" not in whole_log(gateway)

    filler.unlink()
    gateway.wait_ready(timeout=15)
    accepted, uid = instance(tmp_path, 2)
    assert store(gateway.dicom_port, accepted) == (SUCCESS, "")
    eventually(lambda: stored(small_disk, uid) == "stored", 20, "the instance was not indexed", gateway)


async def test_embedded_bus_survives_a_full_disk_and_opens_on_one(small_disk: Path) -> None:
    directory = small_disk / "bus"
    EmbeddedBus(directory, EmbeddedBusSettings(), Metrics())  # created and closed: no -shm file is left
    filler = fill(small_disk)

    bus = EmbeddedBus(directory, EmbeddedBusSettings(), Metrics())
    async with bus.producer() as producer:
        with pytest.raises(BusUnavailable, match="^disk full$"):
            await producer.publish("topic", b"key", b"refused")
        with pytest.raises(BusUnavailable, match="disk full"):
            async with bus.consumer("group", ["topic"]):
                pass
        waiting = asyncio.ensure_future(producer.wait())
        await asyncio.sleep(0.1)
        assert not waiting.done(), "the writer must outlive a full disk"
        waiting.cancel()

        filler.unlink()
        await producer.publish("topic", b"key", b"accepted")
    records = []
    async with bus.consumer("group", ["topic"]) as consumer:
        while batch := await consumer.fetch(timeout=0.5):
            records += batch
    assert [record.value for record in records] == [b"accepted"]


async def test_object_files_and_sqlite_index_on_a_full_disk_are_outages(small_disk: Path) -> None:
    objects = FilesystemObjectStore(small_disk / "objects")
    await objects.ensure_bucket()
    async with await SqliteIndex.open(small_disk / "index.sqlite3") as index:
        await index.migrate()
        filler = fill(small_disk)
        row = make_row()
        attempts = Attempts()
        with pytest.raises(ObjectStoreUnavailable) as object_error:
            await objects.put("a/b.dcm", b"\0" * 65536, {}, "0" * 64)
        with pytest.raises(IndexUnavailable, match="disk is full") as index_error:
            await index.record_instance(row, CorrectionPolicy.REPLACE)
        for error in (object_error.value, index_error.value):
            assert attempts.verdict(row.instance_id, error) is Verdict.RETRY, "an outage, never a dead letter"
        assert not [path for path in (small_disk / "objects").rglob("*") if path.is_file()], "no file left"

        filler.unlink()
        await objects.put("a/b.dcm", b"\0" * 65536, {}, "0" * 64)
        assert (await index.record_instance(row, CorrectionPolicy.REPLACE)).outcome is Outcome.INSERTED


async def test_store_pool_backs_off_on_a_full_disk_and_resumes(small_disk: Path, tmp_path: Path) -> None:
    """The bus on another disk takes the instance; its object file and index row wait for room."""
    settings = Settings(data_dir=small_disk, dicom=DicomSettings(host="127.0.0.1", port=free_port()),
                        embedded_bus=EmbeddedBusSettings(poll_interval_seconds=0.01),
                        store=StoreSettings(retry_max_seconds=1), runtime=RuntimeSettings(drain_timeout_seconds=5))
    metrics = Metrics()
    bus = EmbeddedBus(tmp_path / "bus", settings.embedded_bus, metrics)
    pool = store_pool(settings, bus, metrics, NoAudit())
    async with Receiver(settings.dicom, settings.topics, bus, metrics, 5), pool:
        async with asyncio.timeout(10):  # the index is created before the disk fills
            while not (small_disk / "index.sqlite3").exists():
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        filler = fill(small_disk)
        code, output = await run(dcmtk("storescu"), "-aec", "DICOMGW", "127.0.0.1", str(settings.dicom.port), str(CT))
        assert code == 0, output
        await asyncio.sleep(3)
        waiting = asyncio.ensure_future(pool.wait())
        await asyncio.sleep(0)
        assert not waiting.done(), "the store role must not stop on a full disk"
        waiting.cancel()
        assert metrics.stage_retries.labels("store")._value.get() > 0
        assert sum(counter._value.get() for counter in metrics.dead_letters._metrics.values()) == 0
        assert sum(counter._value.get() for counter in metrics.instances_stored._metrics.values()) == 0
        lag = metrics.consumer_lag.labels("dicomgw-store", settings.topics.instances)
        assert lag._value.get() > 0, "the instance retried through the outage still waits: the lag says so"

        filler.unlink()
        async with asyncio.timeout(15):
            while sum(counter._value.get() for counter in metrics.instances_stored._metrics.values()) < 1:
                await asyncio.sleep(0.1)
        async with asyncio.timeout(10):
            while lag._value.get() != 0:
                await asyncio.sleep(0.1)
    assert stored(small_disk, pydicom.dcmread(CT).SOPInstanceUID) == "stored"
    assert not list((small_disk / "objects").rglob("*.tmp")), "no temporary file left"

