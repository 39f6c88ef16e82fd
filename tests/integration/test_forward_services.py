"""Forwarding on the production adapters (real Kafka, SeaweedFS, PostgreSQL), roles in separate processes as pods
run them, two forward processes competing for the same destination: every study reaches Orthanc and is committed,
each instance sent once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pydicom

from benchmarks.datasets import KINDS, generate
from tests.conftest import dcmtk
from tests.helpers import free_port, run
from tests.integration.test_store_services import environment, processes, services, start, until
from tests.peers import Orthanc
from tests.process import GatewayProcess

__all__ = ["environment", "processes", "services"]


async def test_two_forward_processes_share_the_work_and_send_each_instance_once(
    tmp_path: Path, environment: dict[str, str], processes: list[GatewayProcess],
) -> None:
    gateway_port = free_port()
    orthanc = await asyncio.to_thread(Orthanc, tmp_path / "orthanc", {"gateway": ("DICOMGW", "127.0.0.1",
                                                                                    gateway_port)})
    try:
        destinations = [{"name": "kanta", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port,
                         "max_associations": 2}]
        settings = {**environment, "GATEWAY_DICOM__PORT": str(gateway_port),
                    "GATEWAY_FORWARD__DESTINATIONS": json.dumps(destinations),
                    "GATEWAY_FORWARD__BATCH_DELAY_SECONDS": "1", "GATEWAY_FORWARD__BATCH_SIZE": "5",
                    "GATEWAY_FORWARD__RETRY_INITIAL_SECONDS": "1"}
        start(tmp_path, settings, "receiver", processes)
        start(tmp_path, settings, "store", processes)
        api = start(tmp_path, settings, "api", processes)
        start(tmp_path, settings, "forward", processes)
        start(tmp_path, settings, "forward", processes)
        paths = generate(KINDS["ct"], 40, tmp_path / "ct", studies=4)
        code, out = await run(dcmtk("storescu"), "-aec", "DICOMGW", "127.0.0.1", str(gateway_port),
                              *map(str, paths))
        assert code == 0, out

        def states() -> dict[str, int]:
            status, body = api.http("/api/forward/destinations")
            assert status == 200, body
            return dict(json.loads(body)[0]["instances"])

        async def committed() -> bool:
            return (await asyncio.to_thread(states)).get("committed", 0) == 40

        await until(committed, 180, "every instance committed at Orthanc")
        studies = {str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID) for path in paths}
        sends = []
        for study in studies:
            status, body = api.http(f"/api/studies/{study}")
            assert status == 200, body
            [kanta] = json.loads(body)["forwarding"]
            assert kanta["state"] == "archived"
            sends += [item["sends"] for item in kanta["items"]]
        statistics = await asyncio.to_thread(orthanc.get, "/statistics")
    finally:
        await asyncio.to_thread(orthanc.stop)
    assert states() == {"committed": 40}
    assert sends == [1] * 40
    assert statistics["CountInstances"] == 40
