"""Orthanc, a real PACS, as a storage-commitment requester: its store job asks the gateway for commitment and
Orthanc's own storage-commitment report says whether the gateway took responsibility."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pydicom import dcmread

from tests.component.test_notify_embedded import copies, running
from tests.helpers import free_port
from tests.peers import Orthanc


async def test_orthanc_store_job_with_storage_commitment_reports_success(tmp_path: Path) -> None:
    gateway_port = free_port()
    orthanc = await asyncio.to_thread(Orthanc, tmp_path / "orthanc",
                                      {"gateway": ("DICOMGW", "127.0.0.1", gateway_port)})
    try:
        remote = {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}
        async with running(tmp_path, dicom={"port": gateway_port, "remote_aes": [remote]}):
            instances = copies(tmp_path, 3)
            ids = [(await asyncio.to_thread(orthanc.post, "/instances", path.read_bytes()))["ID"]
                   for path, _ in instances]
            job = await asyncio.to_thread(orthanc.post, "/modalities/gateway/store",
                                          {"Resources": ids, "StorageCommitment": True, "Asynchronous": True})
            transaction = await _transaction_of(orthanc, job["ID"])
            report = await _report(orthanc, transaction)
    finally:
        await asyncio.to_thread(orthanc.stop)
    assert report["Status"] == "Success", report
    assert report["RemoteAET"] == "DICOMGW"
    assert {item["SOPInstanceUID"] for item in report["Success"]} == {
        str(dcmread(path).SOPInstanceUID) for path, _ in instances}
    assert report["Failures"] == []


async def _transaction_of(orthanc: Orthanc, job_id: str) -> str:
    """The store job names the storage-commitment transaction it requested once it has sent the instances."""
    async with asyncio.timeout(60):
        while True:
            job: dict[str, Any] = await asyncio.to_thread(orthanc.get, f"/jobs/{job_id}")
            assert job["State"] not in ("Failure", "Paused"), job
            transaction = job["Content"].get("StorageCommitmentTransactionUID")
            if job["State"] == "Success" and transaction:
                return str(transaction)
            await asyncio.sleep(0.2)


async def _report(orthanc: Orthanc, transaction: str) -> dict[str, Any]:
    async with asyncio.timeout(60):
        while True:
            report: dict[str, Any] = await asyncio.to_thread(orthanc.get, f"/storage-commitment/{transaction}")
            if report["Status"] != "Pending":
                return report
            await asyncio.sleep(0.2)
