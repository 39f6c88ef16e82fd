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

from gateway.bus import Bus, BusError, Producer, Record
from gateway.dead_letter import entry_value
from gateway.envelope import InstanceEnvelope, InstanceHeader
from gateway.metrics import Metrics
from gateway.settings import TopicSettings
from workers.consume import InstanceAssembler
from workers.retry import RETRIABLE, Unavailable, WorkerRole
from workers.stability import StabilityClock
from workers.store import DeadLetter, StoreStage

log = logging.getLogger(__name__)

StageFactory = Callable[[Producer], AbstractAsyncContextManager[StoreStage]]
ClockFactory = Callable[[StoreStage, Producer], StabilityClock]


class StorePool(WorkerRole):
    """The ``store`` role."""

    name = "store"

    def __init__(self, bus: Bus, topics: TopicSettings, stage: StageFactory, clock: ClockFactory,
                 stability_check_seconds: float, metrics: Metrics, orphan_timeout_seconds: float,
                 retry_max_seconds: float, drain_timeout: float) -> None:
        super().__init__(metrics, retry_max_seconds, drain_timeout)
        self._bus = bus
        self._topics = topics
        self._stage_factory = stage
        self._clock_factory = clock
        self._stability_check = stability_check_seconds
        self._orphan_timeout_ms = int(orphan_timeout_seconds * 1000)
        self.group = "dicomgw-store"

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
                clock = self._clock_factory(stage, producer)
                next_check = 0.0
                try:
                    while not self._stopping.is_set():
                        await _feed_partitions_concurrently(assembler, await consumer.fetch(timeout=0.5))
                        await consumer.commit()
                        if (now := asyncio.get_running_loop().time()) >= next_check:
                            next_check = now + self._stability_check
                            await clock.tick(lambda study: consumer.owns(self._topics.instances, study.encode()))
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
        value = entry_value("store", reason, instance_id, study, records[0].topic, records[0].partition,
                            [record.offset for record in records])
        try:
            await self._producer.publish(self._topics.dead_letter, study.encode(), value)
        except BusError as exc:
            raise Unavailable(f"bus: {exc}") from exc
        self._metrics.dead_letters.labels("store").inc()
        log.error("instance dead-lettered", extra={"instance_id": instance_id, "reason": reason})
