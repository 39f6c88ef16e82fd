"""Supervision: a producer whose background work dies turns the process unready at once and stops it (after
the drain), so the orchestrator restarts it instead of leaving a pod that refuses every C-STORE."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from gateway.bus import ProducerDied
from gateway.bus.embedded import EmbeddedBus
from gateway.ingest.receiver import Receiver
from gateway.metrics import Metrics
from gateway.runtime import RoleCrashed, run_roles
from gateway.settings import DicomSettings, EmbeddedBusSettings, HttpSettings, RuntimeSettings, Settings
from tests.helpers import free_port


def readiness(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


async def test_a_dead_bus_writer_makes_the_receiver_unready_and_stops_the_process(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, dicom=DicomSettings(host="127.0.0.1", port=free_port()),
                        http=HttpSettings(host="127.0.0.1", port=free_port()),
                        embedded_bus=EmbeddedBusSettings(poll_interval_seconds=0.01),
                        runtime=RuntimeSettings(drain_timeout_seconds=3))
    metrics = Metrics()
    receiver = Receiver(settings.dicom, settings.topics, EmbeddedBus(tmp_path / "bus", settings.embedded_bus, metrics),
                        metrics, settings.runtime.drain_timeout_seconds)
    ready = asyncio.Event()
    running = asyncio.create_task(run_roles(settings, [receiver], metrics, on_ready=lambda _: ready.set()))
    await asyncio.wait_for(ready.wait(), 10)
    # a connection that has not associated yet keeps the drain busy, so readiness can be read during it
    _, idle = await asyncio.open_connection("127.0.0.1", settings.dicom.port)
    assert await asyncio.to_thread(readiness, settings.http.port) == 200

    writer = receiver._producer._writer  # type: ignore[union-attr]  # the task under test
    assert writer is not None
    writer.cancel()

    async with asyncio.timeout(2):
        while await asyncio.to_thread(readiness, settings.http.port) != 503:
            await asyncio.sleep(0.05)
    assert not running.done(), "unready during the drain, before the process stops"
    with pytest.raises(RoleCrashed, match="receiver") as crashed:
        await asyncio.wait_for(running, 10)
    assert isinstance(crashed.value.__cause__, ProducerDied)
    idle.close()


class _SlowToStop:
    """A role whose drain takes a while (a store pool finishing its batch); it unwinds before the receiver."""

    name = "slow"

    def __init__(self) -> None:
        self.draining = asyncio.Event()

    async def __aenter__(self) -> _SlowToStop:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.draining.set()
        await asyncio.sleep(2)

    async def wait(self) -> None:
        await asyncio.Event().wait()


async def test_on_stopping_the_dicom_port_refuses_new_associations_before_the_other_roles_drain(
        tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, dicom=DicomSettings(host="127.0.0.1", port=free_port()),
                        http=HttpSettings(host="127.0.0.1", port=free_port()),
                        embedded_bus=EmbeddedBusSettings(poll_interval_seconds=0.01),
                        runtime=RuntimeSettings(drain_timeout_seconds=3))
    metrics = Metrics()
    receiver = Receiver(settings.dicom, settings.topics, EmbeddedBus(tmp_path / "bus", settings.embedded_bus, metrics),
                        metrics, settings.runtime.drain_timeout_seconds)
    slow = _SlowToStop()
    stop, ready = asyncio.Event(), asyncio.Event()
    running = asyncio.create_task(run_roles(settings, [receiver, slow], metrics, stop=stop,
                                            on_ready=lambda _: ready.set()))
    await asyncio.wait_for(ready.wait(), 10)
    _, writer = await asyncio.open_connection("127.0.0.1", settings.dicom.port)
    writer.close()
    stop.set()
    await asyncio.wait_for(slow.draining.wait(), 2)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", settings.dicom.port)
    assert not running.done(), "refused while the other role still drains"
    await asyncio.wait_for(running, 10)
