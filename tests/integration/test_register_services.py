"""XDS-I.b registration on the production adapters (real Kafka, SeaweedFS, PostgreSQL) with the gateway and the
XDS simulator as separate processes, as a hospital would run its pre-production test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest

from benchmarks.datasets import KINDS, generate
from gateway.settings import XdsSettings
from gateway.xds import soap, xsd
from gateway.xds.client import XdsClient
from tests.conftest import dcmtk
from tests.helpers import free_port, run
from tests.integration.test_store_services import environment, processes, services, start, until
from tests.process import GatewayProcess

__all__ = ["environment", "processes", "services"]

REPOSITORY_UID = "1.2.246.10.1234567.99.1"


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "xds-simulator", "--host", "127.0.0.1", "--port", str(port),
         "--data", str(tmp_path / "xds"), "--repository-unique-id", REPOSITORY_UID],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    assert "listening" in line, line
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(20)
    process.stdout.close()


async def test_a_study_sent_with_storescu_is_registered_and_found_with_iti18(
    tmp_path: Path, environment: dict[str, str], processes: list[GatewayProcess], simulator: str,
) -> None:
    xds = {"GATEWAY_XDS__REPOSITORY_URL": f"{simulator}/xds/repository",
           "GATEWAY_XDS__REGISTRY_URL": f"{simulator}/xds/registry",
           "GATEWAY_XDS__REPOSITORY_UNIQUE_ID": REPOSITORY_UID,
           "GATEWAY_XDS__ORGANIZATION_OID": "1.2.246.10.1234567",
           "GATEWAY_XDS__ORGANIZATION_NAME": "Example Hospital District",
           "GATEWAY_XDS__RETRIEVE_LOCATION_UID": REPOSITORY_UID,
           "GATEWAY_XDS__STABLE_AFTER_SECONDS": "3", "GATEWAY_XDS__STABILITY_CHECK_SECONDS": "0.5"}
    gateway = start(tmp_path, {**environment, **xds}, "all", processes)
    files = generate(KINDS["ct"], 5, tmp_path / "ct", studies=1)
    datasets = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    study_uid, patient_id = str(datasets[0].StudyInstanceUID), str(datasets[0].PatientID)
    code, out = await run(dcmtk("storescu"), "-aec", "DICOMGW", "127.0.0.1", str(gateway.dicom_port),
                          *map(str, files))
    assert code == 0, out

    async def is_registered() -> bool:
        status, body = gateway.http(f"/api/studies/{study_uid}")
        return status == 200 and json.loads(body)["registration"]["state"] == "registered"

    await until(is_registered, 120, "the study registered")
    [manifest] = json.loads(gateway.http(f"/api/studies/{study_uid}")[1])["registration"]["manifests"]

    for saved in (tmp_path / "xds" / "messages").glob("*.xml"):
        assert xsd.validate(soap.parse_xml(saved.read_bytes())) == [], saved.name
    with urllib.request.urlopen(f"{simulator}/status", timeout=10) as response:
        assert json.loads(response.read())["rejected"] == 0

    code, out = await run(sys.executable, "-m", "gateway.cli", "xds", "find", "--patient", patient_id, "--json",
                          env={**os.environ, "GATEWAY_XDS__REGISTRY_URL": f"{simulator}/xds/registry"})
    assert code == 0, out
    [entry] = json.loads(out)
    assert entry["uniqueId"] == manifest["document_unique_id"]

    async with XdsClient(XdsSettings(registry_url=f"{simulator}/xds/registry",
                                     repository_url=f"{simulator}/xds/repository")) as client:
        [found] = await client.get_documents(unique_ids=[manifest["document_unique_id"]])
        kos_bytes = await client.retrieve_document(found.unique_id, REPOSITORY_UID)
    kos = pydicom.dcmread(BytesIO(kos_bytes))
    listed = {str(item.ReferencedSOPInstanceUID) for evidence in kos.CurrentRequestedProcedureEvidenceSequence
              for series in evidence.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert listed == {str(d.SOPInstanceUID) for d in datasets}
