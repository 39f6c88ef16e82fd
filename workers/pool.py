"""A worker pool member: one consumer in its group, feeding the instances topic through a stage.

It retries when a service the stage needs is down: it leaves the group (committing only finished
instances), waits with exponential back-off, and joins again, so unfinished instances come back from their
first record and nothing busy-loops during an outage. An instance that can never succeed goes to the
dead-letter topic with its reason and the offsets of its records (``dicom-gateway dead-letter`` re-drives it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType

from gateway.bus import Bus, BusError, Producer, Record
from gateway.envelope import InstanceEnvelope, InstanceHeader
from gateway.metrics import Metrics
from gateway.settings import TopicSettings
from workers.consume import InstanceAssembler
from gateway.dead_letter import entry_value
from workers.store import DeadLetter, StoreStage, Unavailable

log = logging.getLogger(__name__)

RETRIABLE = (Unavailable, BusError, OSError)
"""A service is down: back off and retry the instance. Anything else is about the instance itself."""

StageFactory = Callable[[Producer], AbstractAsyncContextManager[StoreStage]]


class StorePool:
    """The ``store`` role."""

    name = "store"

    def __init__(self, bus: Bus, topics: TopicSettings, stage: StageFactory, metrics: Metrics,
                 orphan_timeout_seconds: float, retry_max_seconds: float, drain_timeout: float) -> None:
        self._bus = bus
        self._topics = topics
        self._stage_factory = stage
        self._metrics = metrics
        self._orphan_timeout_ms = int(orphan_timeout_seconds * 1000)
        self._retry_max = retry_max_seconds
        self._drain_timeout = drain_timeout
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.group = "dicomgw-store"

    async def __aenter__(self) -> StorePool:
        self._task = asyncio.create_task(self._run(), name="store-pool")
        return self

    async def wait(self) -> None:
        assert self._task is not None
        await asyncio.shield(self._task)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._stopping.set()
        assert self._task is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self._drain_timeout)
        except TimeoutError:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            try:
                await self._consume()
                return
            except RETRIABLE as exc:
                self._metrics.stage_retries.labels(self.name).inc()
                log.warning("store paused: a service is unavailable", extra={"error": str(exc), "retry_in": backoff})
                try:
                    await asyncio.wait_for(self._stopping.wait(), backoff)
                except TimeoutError:
                    pass
                backoff = min(backoff * 2, self._retry_max)

    async def _consume(self) -> None:
        async with self._bus.producer() as producer, self._stage_factory(producer) as stage:
            assembler: InstanceAssembler | None = None

            async def revoked(partitions: set[tuple[str, int]]) -> None:
                if assembler is not None:
                    assembler.forget(partitions)

            async with self._bus.consumer(self.group, [self._topics.instances], revoked) as consumer:
                assembler = InstanceAssembler(
                    _DeadLettering(stage, producer, self._topics, self._metrics), consumer.done,
                    self._orphan_timeout_ms,
                )
                try:
                    while not self._stopping.is_set():
                        await _feed_partitions_concurrently(assembler, await consumer.fetch(timeout=0.5))
                        await consumer.commit()
                        self._metrics.consumer_lag.labels(self.group, self._topics.instances).set(
                            sum((await consumer.lag()).values()))
                finally:
                    await stage.abandon_all()


async def _feed_partitions_concurrently(assembler: InstanceAssembler, records: list[Record]) -> None:
    """Partitions are independent (a study stays in one), so each batch's partitions are processed side by
    side, each in its own order: a worker's throughput is then not one instance's S3, index and bus latency."""
    by_partition: dict[tuple[str, int], list[Record]] = {}
    for record in records:
        by_partition.setdefault((record.topic, record.partition), []).append(record)

    async def feed(batch: list[Record]) -> None:
        for record in batch:
            await assembler.feed(record)

    try:
        async with asyncio.TaskGroup() as group:
            for batch in by_partition.values():
                group.create_task(feed(batch))
    except ExceptionGroup as failures:
        raise failures.exceptions[0] from None


class _DeadLettering:
    """Passes instances to the stage; what cannot be stored is recorded on the dead-letter topic.

    Besides the stage's own verdicts (DeadLetter), an unexpected error on one instance - a defect, a header
    no rule foresaw - dead-letters that instance rather than crash-looping the pool on it; once the cause is
    fixed, ``dicom-gateway dead-letter redrive`` sends it through again.
    """

    def __init__(self, stage: StoreStage, producer: Producer, topics: TopicSettings, metrics: Metrics) -> None:
        self._stage = stage
        self._producer = producer
        self._topics = topics
        self._metrics = metrics
        self._failed: dict[str, str] = {}

    async def begin(self, header: InstanceHeader) -> None:
        try:
            await self._stage.begin(header)
        except RETRIABLE:
            raise
        except Exception as exc:
            await self._fail(header.instance_id, exc)

    async def data(self, instance_id: str, data: bytes) -> None:
        if instance_id in self._failed:
            return
        try:
            await self._stage.data(instance_id, data)
        except RETRIABLE:
            raise
        except Exception as exc:
            await self._fail(instance_id, exc)

    async def end(self, instance: InstanceEnvelope, data: bytes, records: list[Record]) -> None:
        reason = self._failed.pop(instance.instance_id, None)
        if reason is None:
            try:
                await self._stage.end(instance, data, records)
                return
            except DeadLetter as verdict:
                reason = str(verdict)
            except RETRIABLE:
                raise
            except Exception as exc:
                log.exception("store failed on an instance", extra={"instance_id": instance.instance_id})
                reason = f"unexpected error: {exc!r}"
        await self._record(instance.instance_id, reason, instance.study_instance_uid, records)

    async def discard(self, instance_id: str, reason: str) -> None:
        self._failed.pop(instance_id, None)
        await self._stage.discard(instance_id, reason)

    async def broken(self, instance_id: str, reason: str, records: list[Record]) -> None:
        self._failed.pop(instance_id, None)
        await self._record(instance_id, reason, records[0].key.decode(errors="replace"), records)

    async def _fail(self, instance_id: str, exc: Exception) -> None:
        log.exception("store failed on an instance", extra={"instance_id": instance_id})
        self._failed[instance_id] = f"unexpected error: {exc!r}"
        await self._stage.discard(instance_id, "failed; it goes to the dead letters at its end")

    async def _record(self, instance_id: str, reason: str, study: str, records: list[Record]) -> None:
        value = entry_value("store", reason, instance_id, study, records)
        try:
            await self._producer.publish(self._topics.dead_letter, study.encode(), value)
        except BusError as exc:
            raise Unavailable(f"bus: {exc}") from exc
        self._metrics.dead_letters.labels("store").inc()
        log.error("instance dead-lettered", extra={"instance_id": instance_id, "reason": reason})
