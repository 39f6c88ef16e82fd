"""A worker role fed by the events topic: one consumer in its group, plus the stage's periodic loops.

What a stage learns from an event goes into the index before the event's offset is committed, so a worker
killed at any point finds it again. An event that cannot be read is dead-lettered; a failing service (index,
object store, bus) makes the whole member back off and rejoin, from the last committed offset.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import orjson

from gateway.bus import Bus, BusError, Consumer, Producer, Record
from gateway.dead_letter import entry_value
from gateway.metrics import Metrics
from gateway.settings import TopicSettings
from workers.retry import Unavailable, WorkerRole

log = logging.getLogger(__name__)


class EventStage(Protocol):
    async def handle(self, event: dict[str, Any], source: dict[str, Any]) -> None:
        """Act on one event; ``source`` names its record (topic, partition, offset) for re-drives.
        Raises KeyError/ValueError/TypeError when the event is malformed."""

    async def fetched(self) -> None:
        """Finish what the handled events of one fetch left to do together, before their offsets commit."""

    def loops(self) -> list[tuple[float, Callable[[], Awaitable[None]]]]:
        """Work to repeat every so many seconds beside the consumer (sweeps, deliveries)."""


class EventPool(WorkerRole):
    def __init__(self, name: str, bus: Bus, topics: TopicSettings,
                 stage: Callable[[Producer], AbstractAsyncContextManager[EventStage]], metrics: Metrics,
                 retry_max_seconds: float, drain_timeout: float) -> None:
        super().__init__(metrics, retry_max_seconds, drain_timeout)
        self.name = name
        self.group = f"dicomgw-{name}"
        self._bus = bus
        self._topics = topics
        self._stage_factory = stage

    async def _consume(self) -> None:
        async with self._bus.producer() as producer, self._stage_factory(producer) as stage, \
                self._bus.consumer(self.group, [self._topics.events]) as consumer:
            try:
                async with asyncio.TaskGroup() as loops:
                    loops.create_task(self._events(consumer, stage, producer))
                    for seconds, work in stage.loops():
                        loops.create_task(self._every(seconds, work))
            except ExceptionGroup as failures:
                raise failures.exceptions[0] from None

    async def _every(self, seconds: float, work: Callable[[], Awaitable[None]]) -> None:
        while not self._stopping.is_set():
            await _unavailable_on_failure(work())
            try:
                await asyncio.wait_for(self._stopping.wait(), seconds)
            except TimeoutError:
                pass

    async def _events(self, consumer: Consumer, stage: EventStage, producer: Producer) -> None:
        while not self._stopping.is_set():
            records = await consumer.fetch(timeout=0.5)
            for record in records:
                await _unavailable_on_failure(self._handle(record, stage, producer))
                consumer.done(record)
            await _unavailable_on_failure(stage.fetched())
            await consumer.commit()
            if records:
                self._metrics.consumer_lag.labels(self.group, self._topics.events).set(
                    sum((await consumer.lag()).values()))

    async def _handle(self, record: Record, stage: EventStage, producer: Producer) -> None:
        source = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
        try:
            event: dict[str, Any] = orjson.loads(record.value)
            await stage.handle(event, source)
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            await self._dead_letter(producer, record, f"unreadable event: {exc!r}")

    async def _dead_letter(self, producer: Producer, record: Record, reason: str) -> None:
        subject = record.key.decode(errors="replace")
        value = entry_value(self.name, reason, f"event:{record.topic}:{record.partition}:{record.offset}", subject,
                            record.topic, record.partition, [record.offset])
        await producer.publish(self._topics.dead_letter, record.key, value)
        self._metrics.dead_letters.labels(self.name).inc()
        log.error("event dead-lettered", extra={"reason": reason, "offset": record.offset})


async def _unavailable_on_failure(work: Awaitable[Any]) -> Any:
    """The index, the object store or the bus failed under us: back off and retry from the last commit."""
    try:
        return await work
    except (Unavailable, BusError, asyncio.CancelledError):
        raise
    except Exception as exc:
        log.exception("worker stage failed; retrying after a back-off")
        raise Unavailable(str(exc)) from exc
