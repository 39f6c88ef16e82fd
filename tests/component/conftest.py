from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.bus.embedded import EmbeddedBus
from gateway.ingest.receiver import Receiver
from gateway.metrics import Metrics
from gateway.settings import DicomSettings, EmbeddedBusSettings, TopicSettings
from tests.helpers import BusContents, free_port, read_instances


@dataclass
class RunningGateway:
    port: int
    tls_port: int | None
    bus: EmbeddedBus
    topics: TopicSettings
    metrics: Metrics
    settings: DicomSettings

    async def instances(self, group: str = "test-reader") -> BusContents:
        return await read_instances(self.bus, self.topics.instances, group)


StartGateway = Callable[..., AbstractAsyncContextManager[RunningGateway]]


@pytest.fixture
def start_gateway(tmp_path: Path) -> StartGateway:
    """An in-process receiver on free ports over an embedded bus; keyword arguments override DicomSettings."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[RunningGateway]:
        settings = DicomSettings(**{"host": "127.0.0.1", "port": free_port(), **overrides})
        topics = TopicSettings()
        metrics = Metrics()
        bus = EmbeddedBus(tmp_path / "bus", EmbeddedBusSettings(), metrics)
        async with Receiver(settings, topics, bus, metrics, drain_timeout=5) as receiver:
            tls_port = receiver.ports[-1] if settings.tls.enabled else None
            yield RunningGateway(receiver.ports[0], tls_port, bus, topics, metrics, settings)

    return start


@pytest.fixture
async def gateway(start_gateway: StartGateway) -> AsyncIterator[RunningGateway]:
    async with start_gateway() as running:
        yield running
