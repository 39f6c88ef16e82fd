"""The composition root: the only module that knows which adapter serves each port."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import asyncpg

from gateway.api import Api
from gateway.bus import Bus, Producer
from gateway.bus.embedded import EmbeddedBus
from gateway.bus.kafka import KafkaBus
from gateway.index import CorrectionPolicy, Index
from gateway.index.postgres import PostgresIndex
from gateway.index.sqlite import SqliteIndex
from gateway.metrics import Metrics
from gateway.objects import ObjectStore, ObjectStoreError
from gateway.objects.filesystem import FilesystemObjectStore
from gateway.objects.s3 import S3ObjectStore
from gateway.receiver import Receiver
from gateway.runtime import Role
from gateway.settings import Settings
from workers.pool import StorePool
from workers.store import StoreStage, Unavailable
from workers.validation import ProfileSelector


_SERVICE_ERRORS = (ObjectStoreError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, sqlite3.Error)
"""Failures to reach S3 or the database while a worker starts: retried, like an outage mid-work."""


def build_bus(settings: Settings, metrics: Metrics) -> Bus:
    if settings.embedded_bus_enabled:
        return EmbeddedBus(settings.data_dir / "bus", settings.embedded_bus, metrics)
    return KafkaBus(settings.kafka, settings.topics, metrics)


def build_objects(settings: Settings) -> ObjectStore:
    if settings.s3.endpoint:
        return S3ObjectStore(settings.s3)
    return FilesystemObjectStore(settings.data_dir / "objects")


async def open_index(settings: Settings) -> Index:
    if settings.database.url is not None:
        return await PostgresIndex.connect(settings.database.url.get_secret_value())
    return await SqliteIndex.open(settings.data_dir / "index.sqlite3")


def store_stage(settings: Settings, metrics: Metrics) -> Callable[[Producer], AsyncIterator[StoreStage]]:
    profiles = ProfileSelector.from_settings(settings.validation)

    @asynccontextmanager
    async def open_stage(producer: Producer) -> AsyncIterator[StoreStage]:
        objects = build_objects(settings)
        try:
            try:
                await objects.ensure_bucket()
                index = await open_index(settings)
                await index.migrate()
            except _SERVICE_ERRORS as exc:
                raise Unavailable(f"cannot open the object store or index: {exc}") from exc
            async with index:
                yield StoreStage(objects, index, producer, settings.topics, profiles,
                                 CorrectionPolicy(settings.store.correction_policy), metrics)
        finally:
            await objects.close()

    return open_stage  # type: ignore[return-value]


def build_roles(names: Sequence[str], settings: Settings, bus: Bus, metrics: Metrics) -> list[Role]:
    drain = settings.runtime.drain_timeout_seconds
    factories: dict[str, Callable[[], Role]] = {
        "receiver": lambda: Receiver(settings.dicom, settings.topics, bus, metrics, drain),
        "api": lambda: Api(lambda: open_index(settings), bus, settings.topics),
        "store": lambda: StorePool(bus, settings.topics, store_stage(settings, metrics), metrics,
                                   settings.store.orphan_timeout_seconds, settings.store.retry_max_seconds, drain),
    }
    return [factories[name]() for name in names]
