"""Study stability: a study is complete once no instance has arrived for ``xds.stable_after_seconds``.

The store pool member that owns a study's partition decides it, between the batches it stores, so the
decision never races an instance of that study being written; the times live in the index (each
``record_instance`` touches its study), so the clock survives restarts and rebalances. A ``StudyStable``
event, keyed by the study, tells the notify and register stages. It is published before the study is marked
stable: a crash in between repeats the event (same generation), it never loses it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from gateway.bus import Producer
from gateway.core import events
from gateway.core.events import StudyStable
from gateway.index import StudyClock
from gateway.metrics import Metrics
from gateway.settings import TopicSettings

log = logging.getLogger(__name__)

BATCH = 200


class StabilityClock:
    def __init__(self, index: StudyClock, producer: Producer, topics: TopicSettings, stable_after_seconds: float,
                 metrics: Metrics) -> None:
        self._index = index
        self._producer = producer
        self._topics = topics
        self._stable_after = stable_after_seconds
        self._metrics = metrics

    async def tick(self, owns: Callable[[str], bool]) -> int:
        """Announce the owned studies that became stable; returns how many."""
        announced = 0
        for activity in await self._index.due_stable_studies(time.time() - self._stable_after, BATCH):
            study = activity.study_instance_uid
            if not owns(study):
                continue
            now = time.time()
            event = StudyStable(study_instance_uid=study, generation=activity.generation, stable_at=now)
            await self._producer.publish(self._topics.events, event.key, events.encode(event))
            if await self._index.mark_stable(activity, now):
                announced += 1
                self._metrics.studies_stable.inc()
                log.info("study stable", extra={"study_instance_uid": study, "generation": activity.generation})
        return announced
