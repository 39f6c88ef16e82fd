"""A worker role fed by the events topic: one consumer in its group, plus the stage's periodic loops.

What a stage learns from an event goes into the index before the event's offset is committed, so a worker
killed at any point finds it again. Each event is decoded once into its typed value (``gateway.core.events``)
and handled under the failure policy (``workers.failure``): an outage makes the whole member back off and
rejoin from the last committed offset; an event that cannot be decoded, or whose handling fails for good, is
dead-lettered with its reason and the consumer moves past it. The periodic loops (sweeps, deliveries) isolate
their own items; a loop that fails backs off by itself and never takes the consumer down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from gateway.bus import Bus, Consumer, Producer, Record
from gateway.core import events
from gateway.core.errors import retriable
from gateway.core.events import Event
from gateway.metrics import Metrics
from gateway.settings import TopicSettings
from workers.failure import Attempts, Verdict, dead_letter, reason
from workers.retry import WorkerRole

log = logging.getLogger(__name__)

_LINGER_RECORDS = 2000
"""The most records a lingering pool hands its stage at once."""
_IN_PLACE_PAUSE = 0.2
"""Before another try of an event whose handling failed with an error nobody classified."""


class Typed(Protocol):
    TYPE: ClassVar[str]


E = TypeVar("E", bound=Typed)
E_contra = TypeVar("E_contra", bound=Typed, contravariant=True)


class EventStage(Protocol[E_contra]):
    async def handle(self, event: E_contra, source: dict[str, Any]) -> None:
        """Act on one event; ``source`` names its record (topic, partition, offset) for re-drives. Raises a
        retriable error when a service is down, anything else when the event cannot be handled."""

    async def fetched(self) -> None:
        """Finish what the handled events of one fetch left to do together, before their offsets commit; may
        raise only when a service is down (the stage isolates its items)."""

    def loops(self) -> list[tuple[float, Callable[[], Awaitable[None]]]]:
        """Work to repeat every so many seconds beside the consumer (sweeps, deliveries)."""


def event(record: Record) -> Event:
    """A record of the events topic as its typed event."""
    return events.decode(record.value)


class EventPool(WorkerRole, Generic[E]):
    """Consumes ``topic`` (the events topic, or the hl7 topic for the patient role), each record decoded by
    ``decode``, which raises UndecodableEvent for one that is not what the topic carries."""

    def __init__(self, name: str, bus: Bus, topics: TopicSettings, topic: str, decode: Callable[[Record], E],
                 stage: Callable[[Producer], AbstractAsyncContextManager[EventStage[E]]], metrics: Metrics,
                 retry_max_seconds: float, drain_timeout: float, commit_each: bool = False,
                 linger: float = 0.0) -> None:
        """``commit_each``: commit after every record (a stage whose records each have an effect outside the
        index, such as a message sent on, so that an outage part-way through a fetch repeats none of them).
        ``linger``: once a fetch brings records, keep fetching for up to this many seconds (or until
        ``_LINGER_RECORDS``) and hand the stage them together (a stage that merges what belongs together)."""
        super().__init__(metrics, retry_max_seconds, drain_timeout)
        self.name = name
        self.group = f"dicomgw-{name}"
        self._bus = bus
        self._topics = topics
        self._topic = topic
        self._decode = decode
        self._commit_each = commit_each
        self._linger = linger
        self._stage_factory = stage
        self._attempts = Attempts()

    async def _consume(self) -> None:
        async with self._bus.producer() as producer, self._stage_factory(producer) as stage, \
                self._bus.consumer(self.group, [self._topic]) as consumer:
            loops = [asyncio.create_task(self._every(seconds, work), name=f"{self.name}-loop")
                     for seconds, work in stage.loops()]
            try:
                await self._events(consumer, stage, producer)
            finally:
                await self._report_lag(consumer, self._topic)
                for task in loops:
                    task.cancel()
                await asyncio.gather(*loops, return_exceptions=True)

    async def _every(self, seconds: float, work: Callable[[], Awaitable[None]]) -> None:
        pause = seconds
        while not self._stopping.is_set():
            try:
                await work()
                pause = seconds
            except Exception as exc:
                pause = min(max(pause * 2, 1.0), self._retry_max)
                self._metrics.stage_retries.labels(self.name).inc()
                log.warning("periodic work failed; trying again later", exc_info=retriable(exc) is not True,
                            extra={"stage": self.name, "error": reason(exc), "retry_in": pause})
            try:
                await asyncio.wait_for(self._stopping.wait(), pause)
            except TimeoutError:
                pass

    async def _events(self, consumer: Consumer, stage: EventStage[E], producer: Producer) -> None:
        while not self._stopping.is_set():
            records = await self._fetch(consumer)
            for record in records:
                await self._handle(record, stage, producer)
                if self._commit_each:
                    consumer.done(record)
                    await consumer.commit()
            await stage.fetched()
            # Done only now: fetched() finishes some events' work (the instance events' look-up of the transactions
            # awaiting them), and a consumer leaving on a failure commits what is marked done.
            if not self._commit_each:
                for record in records:
                    consumer.done(record)
                await consumer.commit()
            self._progressed = self._progressed or bool(records)
            await self._report_lag(consumer, self._topic)

    async def _fetch(self, consumer: Consumer) -> list[Record]:
        records = await consumer.fetch(timeout=0.5)
        if not (records and self._linger):
            return records
        deadline = asyncio.get_running_loop().time() + self._linger
        while len(records) < _LINGER_RECORDS and not self._stopping.is_set():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            records += await consumer.fetch(timeout=min(left, 0.5), max_records=_LINGER_RECORDS - len(records))
        return records

    async def _handle(self, record: Record, stage: EventStage[E], producer: Producer) -> None:
        source = {"topic": record.topic, "partition": record.partition, "offset": record.offset}
        key = (record.topic, record.partition, record.offset)
        try:
            event = self._decode(record)
        except events.UndecodableEvent as exc:
            await self._dead_letter(producer, record, f"unreadable event: {exc}")
            return
        while True:
            try:
                await stage.handle(event, source)
                self._attempts.succeeded(key)
                return
            except Exception as exc:
                if self._attempts.verdict(key, exc) is Verdict.DEAD_LETTER:
                    if retriable(exc) is None:
                        log.error("event failed", exc_info=exc, extra={"type": event.TYPE, "offset": record.offset})
                    await self._dead_letter(producer, record, f"{event.TYPE}: {reason(exc)}")
                    return
                if retriable(exc) is True:
                    raise
                log.warning("event failed; trying it again", exc_info=exc,
                            extra={"type": event.TYPE, "offset": record.offset})
                await asyncio.sleep(_IN_PLACE_PAUSE)

    async def _dead_letter(self, producer: Producer, record: Record, why: str) -> None:
        await dead_letter(producer, self._topics, self._metrics, self.name, why,
                          f"event:{record.topic}:{record.partition}:{record.offset}",
                          record.key.decode(errors="replace"), record.topic, record.partition, [record.offset])
