"""The composition root: the only module that knows which adapter serves each port."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gateway.bus import Bus
from gateway.bus.embedded import EmbeddedBus
from gateway.bus.kafka import KafkaBus
from gateway.metrics import Metrics
from gateway.receiver import Receiver
from gateway.runtime import Role
from gateway.settings import Settings


def build_bus(settings: Settings, metrics: Metrics) -> Bus:
    if settings.embedded_bus_enabled:
        return EmbeddedBus(settings.data_dir / "bus", settings.embedded_bus, metrics)
    return KafkaBus(settings.kafka, settings.topics, metrics)


def build_roles(names: Sequence[str], settings: Settings, bus: Bus, metrics: Metrics) -> list[Role]:
    factories: dict[str, Callable[[], Role]] = {
        "receiver": lambda: Receiver(
            settings.dicom, settings.topics, bus, metrics, settings.runtime.drain_timeout_seconds
        ),
    }
    return [factories[name]() for name in names]
