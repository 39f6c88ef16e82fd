"""The gateway as an operator runs it: one process, real signals, kill -9."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode

from gateway.bus.embedded import EmbeddedBus
from gateway.metrics import Metrics
from gateway.settings import EmbeddedBusSettings
from tests.component.test_malformed_input import associate_rq, p_data
from tests.conftest import dcmtk
from tests.helpers import read_instances, run
from tests.process import GatewayProcess

CT = str(get_testdata_file("CT_small.dcm"))


@pytest.fixture
def gateway(tmp_path: Path):  # type: ignore[no-untyped-def]
    process = GatewayProcess(tmp_path / "data")
    process.wait_ready()
    yield process
    process.stop()


def test_echo_health_and_metrics(gateway: GatewayProcess) -> None:
    assert gateway.http("/healthz")[0] == 200
    assert gateway.http("/readyz")[0] == 200
    result = subprocess.run([dcmtk("echoscu"), "-aec", "DICOMGW", "127.0.0.1", str(gateway.dicom_port)],
                            capture_output=True, timeout=30)
    assert result.returncode == 0
    status, metrics = gateway.http("/metrics")
    assert status == 200
    assert 'dicomgw_associations_total{outcome="accepted"} 1.0' in metrics
    assert 'dicomgw_dimse_responses_total{command="0x8030",status="0x0000"} 1.0' in metrics


def open_store(port: int, dataset_prefix: bytes) -> socket.socket:
    """An association with a C-STORE whose data set has started but not finished."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(associate_rq())
    assert sock.recv(65536)[0] == 0x02
    command = Dataset()
    command.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    command.CommandField = 0x0001
    command.MessageID = 1
    command.Priority = 0
    command.CommandDataSetType = 0x0000
    command.AffectedSOPInstanceUID = "1.2.3.4.5"
    body = encode(command, True, True)
    sock.sendall(p_data(3, 0x03, struct.pack("<HHII", 0, 0, 4, len(body)) + body))
    for start in range(0, len(dataset_prefix), 16000):
        sock.sendall(p_data(3, 0x00, dataset_prefix[start : start + 16000]))
    return sock


def big_dataset_prefix(size: int) -> bytes:
    """The start of an explicit VR CT data set whose pixel data runs on past what is sent."""
    header = (
        b"\x08\x00\x16\x00UI\x1a\x00" + b"1.2.840.10008.5.1.4.1.1.2\x00"
        + b"\x08\x00\x18\x00UI\x0a\x00" + b"1.2.3.4.5\x00"
        + b"\x20\x00\x0d\x00UI\x08\x00" + b"1.2.3.6\x00"
        + b"\x20\x00\x0e\x00UI\x08\x00" + b"1.2.3.7\x00"
        + b"\x28\x00\x10\x00US\x02\x00\x00\x02"
    )
    pixel_header = b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", 64 * 1024 * 1024)
    return header + pixel_header + b"\x5a" * (size - len(header) - len(pixel_header))


def test_sigterm_turns_unready_drains_and_a_second_signal_forces_exit(gateway: GatewayProcess) -> None:
    sock = open_store(gateway.dicom_port, big_dataset_prefix(100_000))
    try:
        gateway.signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while gateway.http("/readyz")[0] != 503:
            assert time.monotonic() < deadline, "readiness did not turn 503 on SIGTERM"
            time.sleep(0.05)
        assert gateway.process.poll() is None, "exited without draining the open association"
        gateway.signal(signal.SIGTERM)
        assert gateway.process.wait(10) == 130
    finally:
        sock.close()


def test_sigterm_when_idle_exits_cleanly(gateway: GatewayProcess) -> None:
    gateway.signal(signal.SIGTERM)
    assert gateway.process.wait(30) == 0
    assert '"msg":"stopped"' in gateway.output()


async def test_receiver_killed_mid_instance_leaves_nothing_consumable(tmp_path: Path) -> None:
    gateway = GatewayProcess(tmp_path / "data")
    gateway.wait_ready()
    sock = open_store(gateway.dicom_port, big_dataset_prefix(3 * 1024 * 1024))
    await asyncio.sleep(1.0)
    gateway.kill()
    with pytest.raises(OSError):
        sock.settimeout(5)
        sock.sendall(p_data(3, 0x02, b"\x00" * 16))
        if not sock.recv(100):
            raise ConnectionResetError("closed")
    sock.close()
    bus = EmbeddedBus(tmp_path / "data" / "bus", EmbeddedBusSettings(), Metrics())
    contents = await read_instances(bus, "dicomgw.instances", "after-kill")
    assert contents.partial, "the chunks published before the kill should be on the bus"
    assert not contents.complete


PUBLISHER = """
import asyncio, sys
from pathlib import Path
from gateway.bus.embedded import EmbeddedBus
from gateway.metrics import Metrics
from gateway.settings import EmbeddedBusSettings

async def main():
    bus = EmbeddedBus(Path(sys.argv[1]), EmbeddedBusSettings(), Metrics())
    async with bus.producer() as producer:
        n = 0
        while True:
            deliveries = [await producer.send("t", f"k{(n + i) % 7}".encode(), str(n + i).encode() * 1000)
                          for i in range(10)]
            for i, delivery in enumerate(deliveries):
                await delivery
                print(n + i, flush=True)
            n += 10

asyncio.run(main())
"""


async def test_kill_9_mid_publish_loses_no_acknowledged_record(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(tmp_path / "bus")],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    acknowledged = []
    for line in process.stdout:
        acknowledged.append(int(line))
        if len(acknowledged) >= 3000:
            break
    process.kill()
    process.wait()
    acknowledged += [int(line) for line in process.stdout.read().split()]
    process.stdout.close()
    bus = EmbeddedBus(tmp_path / "bus", EmbeddedBusSettings(), Metrics())
    found: set[int] = set()
    async with bus.consumer("check", ["t"]) as consumer:
        while records := await consumer.fetch(timeout=1.0, max_records=5000):
            found.update(int(r.value[: len(r.value) // 1000]) for r in records)
    assert set(acknowledged) <= found


async def test_receiver_processes_share_the_port_and_merge_metrics(tmp_path: Path) -> None:
    gateway = GatewayProcess(tmp_path / "data", GATEWAY_DICOM__PROCESSES="3")
    try:
        gateway.wait_ready()
        results = await asyncio.gather(*[
            run(dcmtk("storescu"), "-aec", "DICOMGW", "127.0.0.1", str(gateway.dicom_port), CT) for _ in range(12)
        ])
        assert all(code == 0 for code, _ in results), results
        lines = [json.loads(line) for line in gateway.log.read_text().splitlines() if line.startswith("{")]
        serving = {line["pid"] for line in lines if line.get("msg") == "association accepted"}
        assert len(serving) >= 2, "associations were not spread over the receiver processes"
        _, metrics = gateway.http("/metrics")
        assert "dicomgw_instances_received_total 12.0" in metrics
        assert "dicomgw_ready 3.0" in metrics
    finally:
        assert gateway.stop() == 0
