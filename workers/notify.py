"""The ``notify`` role: storage-commitment reports and Instance Availability Notifications.

It reads the events topic (consumer group ``dicomgw-notify``): commitment requests from the receiver, instance
events from the store pool (an awaited instance may have arrived), study events (stable, or registered) and
rejections (an IAN telling the subscribers which instances are no longer available).
Beside the consumer run a sweep that decides the transactions past their deadline, and the deliverer that
sends what is due.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.core.events import (
    CommitmentRequested,
    Event,
    InstanceEvent,
    InstancesRejected,
    StudyRegistered,
    StudyStable,
)
from workers.availability import AvailabilityNotifier
from workers.commitment import CommitmentTracker
from workers.deliver import POLL_SECONDS, Deliverer

SWEEP_SECONDS = 5.0


@dataclass(slots=True)
class NotifyStage:
    tracker: CommitmentTracker
    notifier: AvailabilityNotifier
    deliverer: Deliverer
    _changed: list[str] = field(default_factory=list)
    """Instances stored (or quarantined, rejected) in this fetch: looked up together, once per fetch."""

    async def handle(self, event: Event, source: dict[str, Any]) -> None:
        if isinstance(event, CommitmentRequested):
            await self.tracker.requested(event, source)
        elif isinstance(event, InstanceEvent):
            self._changed.append(event.sop_instance_uid)
        elif isinstance(event, InstancesRejected):
            self._changed += [uid for _, _, uid in event.instances]
            await self.notifier.rejected(event, source)
        elif isinstance(event, StudyStable | StudyRegistered) and isinstance(event, self.notifier.trigger):
            await self.notifier.study_event(event, source)

    async def fetched(self) -> None:
        if self._changed:
            await self.tracker.instances_changed(self._changed)
            self._changed.clear()

    def loops(self) -> list[tuple[float, Callable[[], Awaitable[None]]]]:
        return [(SWEEP_SECONDS, self.tracker.sweep), (POLL_SECONDS, self.deliverer.deliver_all_due)]
