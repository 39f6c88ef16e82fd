"""Orthanc, a real PACS, sending to the gateway as one of its configured modalities."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file

from tests.component.conftest import RunningGateway
from tests.peers import Orthanc

FILES = [Path(get_testdata_file(name)) for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm")]  # type: ignore[arg-type]


async def test_orthanc_stores_a_study_through_the_gateway(gateway: RunningGateway, tmp_path: Path) -> None:
    orthanc = await asyncio.to_thread(Orthanc, tmp_path / "orthanc", {"gateway": ("DICOMGW", "127.0.0.1", gateway.port)})
    try:
        ids = [(await asyncio.to_thread(orthanc.post, "/instances", path.read_bytes()))["ID"] for path in FILES]
        job = await asyncio.to_thread(orthanc.post, "/modalities/gateway/store",
                                      {"Resources": ids, "Synchronous": True})
        assert job["FailedInstancesCount"] == 0 and job["InstancesCount"] == len(FILES)
        contents = await gateway.instances()
        for orthanc_id, path in zip(ids, FILES, strict=True):
            meta, data = contents.complete[dcmread(path).SOPInstanceUID]
            assert meta.calling_ae == "ORTHANC"
            stored = await asyncio.to_thread(orthanc.request, "GET", f"/instances/{orthanc_id}/metadata?expand")
            assert meta.transfer_syntax_uid == stored["TransferSyntax"]
            assert len(data) == meta.size > 0
    finally:
        await asyncio.to_thread(orthanc.stop)
