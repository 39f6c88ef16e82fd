"""A multi-GB-class instance is streamed through the receiver without being held in memory."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from tests.conftest import dcmtk
from tests.process import GatewayProcess

SIZE = 2 * 1024**3
"""2 GiB, as the acceptance asks; it takes about 15 s here."""
RSS_LIMIT = 512 * 1024**2
"""A quarter of the instance: holding it (or a growing share of it) would exceed it. With glibc's mmap threshold
left to adjust itself the peak was mostly what its heaps kept of freed chunk buffers, 270-830 MiB from run to run;
with the threshold fixed (``gateway.cli._bound_allocator``) it is 290-330 MiB for 2 GiB on this machine. Python's
own allocations stay under 30 MiB (tracemalloc)."""


def write_large_instance(path: Path, pixel_bytes: int) -> None:
    """A valid CT-like instance whose pixel data is written in blocks, never built in memory."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.9.7433.5.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.9.7433.5.2", "1.2.826.0.1.3680043.9.7433.5.3"
    ds.PatientID, ds.Modality = "010101-900R", "CT"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32768, pixel_bytes // 65536, 16, 16, 15
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    ds.save_as(path, enforce_file_format=True)
    block = os.urandom(4 * 1024 * 1024)
    with path.open("ab") as fp:
        fp.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes))
        for _ in range(pixel_bytes // len(block)):
            fp.write(block)


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_two_gib_instance_with_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "large.dcm"
    write_large_instance(path, SIZE)
    gateway = GatewayProcess(tmp_path / "data", GATEWAY_EMBEDDED_BUS__RETENTION_HOURS="1")
    try:
        gateway.wait_ready()
        result = subprocess.run([dcmtk("storescu"), "-aec", "DICOMGW", "127.0.0.1", str(gateway.dicom_port),
                                 str(path)], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        rss = peak_rss(gateway.process.pid)
        print(f"peak RSS of the gateway receiving {SIZE / 1024**3:.1f} GiB: {rss / 1024**2:.0f} MiB")
        assert rss < RSS_LIMIT, f"peak RSS {rss / 1024**2:.0f} MiB"
        _, metrics = gateway.http("/metrics")
        assert "dicomgw_instances_received_total 1.0" in metrics
    finally:
        gateway.stop()
