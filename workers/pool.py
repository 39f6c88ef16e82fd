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

from gateway.bus import Bus, Producer, Record
from gateway.core.envelope import InstanceEnvelope, InstanceHeader
from gateway.core.errors import Unavailable, retriable
from gateway.metrics import Metrics
from gateway.settings import TopicSettings
from workers.consume import InstanceAssembler
from workers.failure import Attempts, Verdict, dead_letter, reason
from workers.retry import WorkerRole
from workers.stability import StabilityClock
from workers.store import DeadLetter, StoreStage

log = logging.getLogger(__name__)

StageFactory = Callable[[Producer], AbstractAsyncContextManager[tuple[StoreStage, StabilityClock]]]
"""The store stage and the stability clock of one member, on the same index."""


class StorePool(WorkerRole):
    """The ``store`` role."""

    name = "store"

    def __init__(self, bus: Bus, topics: TopicSettings, stage: StageFactory, stability_check_seconds: float,
                 metrics: Metrics, orphan_timeout_seconds: float, retry_max_seconds: float,
                 drain_timeout: float) -> None:
        super().__init__(metrics, retry_max_seconds, drain_timeout)
        self._bus = bus
        self._topics = topics
        self._stage_factory = stage
        self._stability_check = stability_check_seconds
        self._orphan_timeout_ms = int(orphan_timeout_seconds * 1000)
        self.group = "dicomgw-store"
        self._attempts = Attempts()

    async def _consume(self) -> None:
        async with self._bus.producer() as producer, self._stage_factory(producer) as (stage, clock):
            assembler: InstanceAssembler | None = None

            async def revoked(partitions: set[tuple[str, int]]) -> None:
                if assembler is not None:
                    assembler.forget(partitions)

            async with self._bus.consumer(self.group, [self._topics.instances], revoked) as consumer:
                sink = _DeadLettering(stage, producer, self._topics, self._metrics, self._attempts)
                finished: list[Record] = []
                assembler = InstanceAssembler(sink, finished.append, self._orphan_timeout_ms)
                next_check = 0.0

                def owns(study: str) -> bool:
                    return consumer.owns(self._topics.instances, study.encode())

                try:
                    while not self._stopping.is_set():
                        records = await consumer.fetch(timeout=0.5)
                        await _feed_partitions_concurrently(assembler, records)
                        await sink.flush()
                        # Done only once indexed: the consumer commits done records when it leaves, too.
                        for record in finished:
                            consumer.done(record)
                        finished.clear()
                        await consumer.commit()
                        self._progressed = self._progressed or bool(records)
                        if (now := asyncio.get_running_loop().time()) >= next_check:
                            next_check = now + self._stability_check
                            await clock.tick(owns)
                            await stage.delete_expired(owns)
                        await self._report_lag(consumer, self._topics.instances)
                finally:
                    await self._report_lag(consumer, self._topics.instances)
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
    """Passes instances to the stage and applies the failure policy to each: an outage stops the member (it
    backs off and sees the instance again from its first record), a permanent error dead-letters the instance
    with its reason and the offsets of its records, an unclassified one gets a few tries and is then
    permanent. Once the cause is fixed, ``dicom-gateway dead-letter redrive`` sends it through again."""

    def __init__(self, stage: StoreStage, producer: Producer, topics: TopicSettings, metrics: Metrics,
                 attempts: Attempts) -> None:
        self._stage = stage
        self._producer = producer
        self._topics = topics
        self._metrics = metrics
        self._attempts = attempts
        self._failed: dict[str, str] = {}

    async def begin(self, header: InstanceHeader) -> None:
        try:
            await self._stage.begin(header)
        except Exception as exc:
            await self._fail(header.instance_id, exc)

    async def data(self, instance_id: str, data: bytes) -> None:
        if instance_id in self._failed:
            return
        try:
            await self._stage.data(instance_id, data)
        except Exception as exc:
            await self._fail(instance_id, exc)

    async def end(self, instance: InstanceEnvelope, data: bytes, records: list[Record]) -> None:
        why = self._failed.pop(instance.instance_id, None)
        if why is None:
            try:
                await self._stage.end(instance, data, records)
                return
            except Exception as exc:
                why = self._judge(instance.instance_id, exc)
        await self._record(instance.instance_id, why, instance.study_instance_uid, records)

    async def flush(self) -> None:
        try:
            outcome = await self._stage.flush()
        except Exception as exc:
            if retriable(exc) is not True:
                log.warning("store failed to index a batch; trying it again", exc_info=exc)
            raise Unavailable(f"retrying the batch after {reason(exc)}") from exc
        for stored, error in outcome:
            row = stored.row
            if error is None:
                self._attempts.succeeded(row.instance_id)
            else:
                why = self._judge(row.instance_id, error)
                await self._record(row.instance_id, why, row.study_instance_uid, stored.records)

    async def discard(self, instance_id: str, reason: str) -> None:
        self._failed.pop(instance_id, None)
        await self._stage.discard(instance_id, reason)

    async def broken(self, instance_id: str, reason: str, records: list[Record]) -> None:
        self._failed.pop(instance_id, None)
        await self._record(instance_id, reason, records[0].key.decode(errors="replace"), records)

    async def _fail(self, instance_id: str, exc: Exception) -> None:
        """A failure before the end: the rest of the instance is skipped, and dead-lettered at its end."""
        try:
            why = self._judge(instance_id, exc)
        finally:
            await self._stage.discard(instance_id, "failed; it goes to the dead letters at its end")
        self._failed[instance_id] = why

    def _judge(self, instance_id: str, exc: Exception) -> str:
        """The dead-letter reason, or raises to stop the member and see the instance again."""
        if self._attempts.verdict(instance_id, exc) is Verdict.RETRY:
            if retriable(exc) is True:
                raise exc
            log.warning("store failed on an instance; trying it again", exc_info=exc,
                        extra={"instance_id": instance_id})
            raise Unavailable(f"retrying after {reason(exc)}") from exc
        if not isinstance(exc, DeadLetter):
            log.error("store failed on an instance for good", exc_info=exc, extra={"instance_id": instance_id})
        return reason(exc)

    async def _record(self, instance_id: str, why: str, study: str, records: list[Record]) -> None:
        await dead_letter(self._producer, self._topics, self._metrics, "store", why, instance_id, study,
                          records[0].topic, records[0].partition, [record.offset for record in records])
