"""Forwarding survives its own death and the archive's absence: the forward role in a process of its own is
killed with SIGKILL mid-study and started again, and Orthanc (the archive) is stopped for 30 s under load. Every
instance ends committed in Orthanc's own index exactly once, and the outage is waited out with back-off, not
probed in a loop."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from tests.conftest import dcmtk
from tests.helpers import free_port, run
from tests.peers import Orthanc
from tests.process import GatewayProcess

CT = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]


def study(directory: Path, count: int) -> list[Path]:
    directory.mkdir(parents=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = []
    for n in range(count):
        dataset = pydicom.dcmread(CT)
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study_uid, series_uid
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.InstanceNumber = n + 1
        path = directory / f"{n:03d}.dcm"
        dataset.save_as(path)
        paths.append(path)
    return paths


def forwarding_environment(gateway_port: int, orthanc: Orthanc) -> dict[str, str]:
    destinations = [{"name": "kanta", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port,
                     "max_associations": 2, "rate_per_minute": 240}]
    return {
        "GATEWAY_DICOM__PORT": str(gateway_port),
        "GATEWAY_FORWARD__DESTINATIONS": json.dumps(destinations),
        "GATEWAY_FORWARD__BATCH_DELAY_SECONDS": "0.5",
        "GATEWAY_FORWARD__MAX_BATCH_DELAY_SECONDS": "2",
        "GATEWAY_FORWARD__BATCH_SIZE": "10",
        "GATEWAY_FORWARD__LEASE_SECONDS": "15",
        "GATEWAY_FORWARD__RETRY_INITIAL_SECONDS": "1",
        "GATEWAY_FORWARD__RETRY_MAX_SECONDS": "4",
        "GATEWAY_FORWARD__RETRY_MAX_ATTEMPTS": "100",
        "GATEWAY_FORWARD__ASSOCIATION_TIMEOUT_SECONDS": "10",
        "GATEWAY_FORWARD__COMMITMENT_TIMEOUT_SECONDS": "20",
        "GATEWAY_EMBEDDED_BUS__POLL_INTERVAL_SECONDS": "0.01",
    }


def forward_states(gateway: GatewayProcess) -> dict[str, int]:
    status, body = gateway.http("/api/forward/destinations")
    assert status == 200, body
    [kanta] = json.loads(body)
    return dict(kanta["instances"])


async def until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.5)


async def test_kill_9_of_the_forward_role_and_an_archive_outage_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    gateway_port = free_port()
    orthanc = await asyncio.to_thread(Orthanc, tmp_path / "orthanc", {"gateway": ("DICOMGW", "127.0.0.1",
                                                                                    gateway_port)})
    environment = forwarding_environment(gateway_port, orthanc)
    data = tmp_path / "data"
    ingest = GatewayProcess(data, ("receiver", "store", "api"), **environment)
    ingest.dicom_port = gateway_port
    forward = GatewayProcess(data, ("forward", "api"), **environment)
    sent: list[Path] = []
    try:
        await asyncio.to_thread(ingest.wait_ready)
        await asyncio.to_thread(forward.wait_ready)
        first = study(tmp_path / "first", 40)
        code, out = await run(dcmtk("storescu"), "-aec", "DICOMGW", "127.0.0.1", str(gateway_port),
                              *map(str, first))
        assert code == 0, out
        sent += first
        await until(lambda: forward_states(forward).get("committed", 0) >= 10, 120, "10 committed before the kill")
        forward.kill()
        assert forward_states(ingest).get("committed", 0) < 40  # killed mid-study
        forward = GatewayProcess(data, ("forward", "api"), **environment)
        await asyncio.to_thread(forward.wait_ready)
        await until(lambda: forward_states(forward).get("committed", 0) == 40, 180, "the first study committed")

        await asyncio.to_thread(orthanc.stop)
        outage_began = time.time()
        second = study(tmp_path / "second", 30)
        code, out = await run(dcmtk("storescu"), "-aec", "DICOMGW", "127.0.0.1", str(gateway_port),
                              *map(str, second))
        assert code == 0, out
        sent += second
        await asyncio.sleep(max(0.0, 30 - (time.time() - outage_began)))
        during = forward_states(forward)
        assert during.get("committed", 0) == 40 and during.get("failed", 0) == 0, during
        await asyncio.to_thread(orthanc.start)
        await until(lambda: forward_states(forward).get("committed", 0) == 70, 180, "every instance committed")
        states = forward_states(forward)
        log = forward.log.read_text(errors="replace")  # both forward processes' lines
        statistics = await asyncio.to_thread(orthanc.get, "/statistics")
        held = [await asyncio.to_thread(orthanc.post, "/tools/lookup", str(pydicom.dcmread(path).SOPInstanceUID)
                                        .encode()) for path in sent]
    finally:
        forward.stop()
        ingest.stop()
        await asyncio.to_thread(orthanc.stop)
    assert states == {"committed": 70}
    assert statistics["CountInstances"] == 70
    assert all(sum(1 for entry in found if entry["Type"] == "Instance") == 1 for found in held)
    attempts = log.count("destination unreachable; batch handed back")
    assert 0 < attempts <= 30, f"{attempts} attempts in a 30 s outage: a spin, or none at all"
