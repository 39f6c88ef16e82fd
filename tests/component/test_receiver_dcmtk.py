"""The receiver with dcmtk's real tools as the senders."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from tests.component.conftest import RunningGateway, StartGateway
from tests.conftest import dcmtk
from tests.helpers import dataset_bytes, free_port, run

CT = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
MR = Path(get_testdata_file("MR_small.dcm"))  # type: ignore[arg-type]
JPEG2K = Path(get_testdata_file("JPEG2000.dcm"))  # type: ignore[arg-type]


async def test_echoscu_gets_success(gateway: RunningGateway) -> None:
    code, out = await run(dcmtk("echoscu"), "-aec", "DICOMGW", "127.0.0.1", str(gateway.port))
    assert code == 0, out


@pytest.fixture
async def storescp(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    """dcmtk's storescp writing bit-preserved files: the reference for what storescu put on the wire
    (storescu re-encodes, e.g. it drops trailing padding, so the source file is not that reference)."""
    port, directory = free_port(), tmp_path / "storescp"
    directory.mkdir()
    process = await asyncio.create_subprocess_exec(
        dcmtk("storescp"), "--bit-preserving", "+xa", "-od", str(directory), str(port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    for _ in range(100):
        if (await run(dcmtk("echoscu"), "127.0.0.1", str(port)))[0] == 0:
            break
        await asyncio.sleep(0.1)
    yield port, directory
    process.terminate()
    await process.wait()


async def storescu_to_both(gateway_port: int, reference_port: int, *arguments: str) -> None:
    for port in (gateway_port, reference_port):
        code, out = await run(dcmtk("storescu"), "-aec", "DICOMGW", "127.0.0.1", str(port), *arguments)
        assert code == 0, out


async def test_storescu_instances_arrive_byte_identical(
    gateway: RunningGateway, storescp: tuple[int, Path]
) -> None:
    reference_port, received = storescp
    await storescu_to_both(gateway.port, reference_port, str(CT), str(MR))
    # -xw proposes JPEG 2000, so the compressed file goes as it is rather than being decompressed
    await storescu_to_both(gateway.port, reference_port, "-xw", str(JPEG2K))
    contents = await gateway.instances()
    assert len(contents.complete) == 3 and not contents.partial
    for path in received.iterdir():
        source = dcmread(path, stop_before_pixels=True)
        meta, data = contents.complete[source.SOPInstanceUID]
        assert data == dataset_bytes(path)
        assert meta.study_instance_uid == source.StudyInstanceUID
        assert meta.series_instance_uid == source.SeriesInstanceUID
        assert meta.sop_class_uid == source.SOPClassUID
        assert meta.transfer_syntax_uid == source.file_meta.TransferSyntaxUID
        assert meta.patient_id == source.PatientID
        assert meta.modality == source.Modality
        assert meta.calling_ae == "STORESCU" and meta.called_ae == "DICOMGW"
        assert meta.received_at.endswith("+00:00")
    assert dcmread(JPEG2K).file_meta.TransferSyntaxUID == contents.complete[
        dcmread(JPEG2K).SOPInstanceUID][0].transfer_syntax_uid


async def test_unknown_calling_ae_is_rejected(start_gateway: StartGateway) -> None:
    allowed = [{"ae_title": "CT1", "organization": "Example Hospital",
                "organization_oid": "1.2.246.10.1234567.10"}]
    async with start_gateway(allowed_aes=allowed) as gateway:
        code, out = await run(dcmtk("storescu"), "-aet", "INTRUDER", "-aec", "DICOMGW", "127.0.0.1",
                              str(gateway.port), str(CT))
        assert code != 0
        assert "Rejected" in out or "rejected" in out
        code, out = await run(dcmtk("storescu"), "-aet", "CT1", "-aec", "DICOMGW", "127.0.0.1",
                              str(gateway.port), str(CT))
        assert code == 0, out
        meta, _ = (await gateway.instances()).complete[dcmread(CT).SOPInstanceUID]
        assert meta.organization_oid == "1.2.246.10.1234567.10"
        assert gateway.metrics.associations.labels("rejected")._value.get() == 1


async def test_caller_outside_its_network_is_rejected(start_gateway: StartGateway) -> None:
    allowed = [{"ae_title": "CT1", "networks": ["10.1.0.0/16"]}]
    async with start_gateway(allowed_aes=allowed) as gateway:
        code, out = await run(dcmtk("echoscu"), "-aet", "CT1", "-aec", "DICOMGW", "127.0.0.1", str(gateway.port))
        assert code != 0, out


async def test_wrong_called_ae_is_rejected(gateway: RunningGateway) -> None:
    code, out = await run(dcmtk("echoscu"), "-aec", "SOMEONE", "127.0.0.1", str(gateway.port))
    assert code != 0
    assert "Called AE Title Not Recognized" in out or "0006:0317" not in out


async def test_eight_concurrent_associations(gateway: RunningGateway, tmp_path: Path) -> None:
    source = dcmread(CT)
    paths = []
    for n in range(16):
        source.SOPInstanceUID = f"1.2.826.0.1.3680043.9.7433.99.{n}"
        path = tmp_path / f"ct{n}.dcm"
        source.save_as(path, enforce_file_format=True)
        paths.append(path)
    results = await asyncio.gather(*[
        run(dcmtk("storescu"), "-aec", "DICOMGW", "127.0.0.1", str(gateway.port), str(paths[i]), str(paths[i + 8]))
        for i in range(8)
    ])
    for code, out in results:
        assert code == 0, out
    contents = await gateway.instances()
    assert {dcmread(path).SOPInstanceUID for path in paths} <= set(contents.complete)
