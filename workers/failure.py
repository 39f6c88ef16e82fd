"""The one failure policy of every consumer (store pool, events pool, deliveries).

An error is either retriable (a dependency is down: back off, rejoin, never spin and never dead-letter) or
permanent (this message can never succeed: dead-letter it with its reason and offsets, commit past it, go on).
Port errors say which (``gateway.core.errors.retriable``). An exception nobody classified gets
``UNKNOWN_ATTEMPTS`` tries on the same message and is then permanent, so no message is retried forever and
no single message stops a partition.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Hashable
from enum import Enum

from gateway.bus import BusError, Producer
from gateway.core.errors import Unavailable, describe, retriable
from gateway.dead_letter import entry_value
from gateway.metrics import Metrics
from gateway.settings import TopicSettings

log = logging.getLogger(__name__)

UNKNOWN_ATTEMPTS = 3
_REMEMBERED = 10_000


class Verdict(Enum):
    RETRY = "retry"
    DEAD_LETTER = "dead-letter"


class Attempts:
    """Failures of unclassified errors per message (bounded memory: the oldest keys are forgotten)."""

    def __init__(self) -> None:
        self._counts: OrderedDict[Hashable, int] = OrderedDict()

    def verdict(self, key: Hashable, exc: BaseException) -> Verdict:
        flag = retriable(exc)
        if flag is True:
            return Verdict.RETRY
        if flag is False:
            self._counts.pop(key, None)
            return Verdict.DEAD_LETTER
        count = self._counts.pop(key, 0) + 1
        if count >= UNKNOWN_ATTEMPTS:
            return Verdict.DEAD_LETTER
        self._counts[key] = count
        while len(self._counts) > _REMEMBERED:
            self._counts.popitem(last=False)
        return Verdict.RETRY

    def succeeded(self, key: Hashable) -> None:
        self._counts.pop(key, None)


def reason(exc: BaseException) -> str:
    """A dead-letter reason without patient data (``describe``: our errors' messages, others' types only)."""
    return describe(exc)


async def dead_letter(producer: Producer, topics: TopicSettings, metrics: Metrics, stage: str, why: str,
                      entry_id: str, subject: str, topic: str, partition: int, offsets: list[int]) -> None:
    """Record what could not be processed on the dead-letter topic, from where ``dicom-gateway dead-letter
    redrive`` sends it through again. Raises ``Unavailable`` if the bus cannot take it (nothing is lost:
    the message is then retried)."""
    value = entry_value(stage, why, entry_id, subject, topic, partition, offsets)
    try:
        await producer.publish(topics.dead_letter, subject.encode(), value)
    except BusError as exc:
        raise Unavailable(f"dead-letter topic: {exc}") from exc
    metrics.dead_letters.labels(stage).inc()
    log.error("dead-lettered", extra={"stage": stage, "reason": why, "entry_id": entry_id,
                                      "topic": topic, "partition": partition, "offsets": offsets[:20]})
