"""Instance Availability Notification: when a study is complete here, tell its subscribers what is available.

The trigger is a study event: ``StudyStable`` (no new instance for the stability time), or
``StudyRegistered`` once XDS registration is on and the trigger says so. Each subscriber gets one IAN per
study generation (a study that receives more instances after it was stable gets a new generation, and a new
IAN listing everything then stored); a repeated event for the same generation changes nothing.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from gateway.core.events import StudyRegistered, StudyStable
from gateway.dicom import ian
from gateway.dicom.scu import Outbound
from gateway.index import Delivery, InstanceIndex, OutboundQueue
from gateway.settings import DicomSettings, NotifySettings
from workers.deliver import Sender, wanted

log = logging.getLogger(__name__)

IAN = "ian"


def ian_id(study_instance_uid: str, subscriber: str) -> str:
    return f"{IAN}:{study_instance_uid}:{subscriber}"


class _NotifierIndex(InstanceIndex, OutboundQueue, Protocol):
    pass


class AvailabilityNotifier:
    def __init__(self, index: _NotifierIndex, settings: NotifySettings) -> None:
        self._index = index
        self._settings = settings
        self.trigger: type[StudyStable | StudyRegistered] = (
            StudyStable if settings.ian_trigger == "stable" else StudyRegistered)

    async def study_event(self, event: StudyStable | StudyRegistered, source: dict[str, Any]) -> None:
        study, generation = event.study_instance_uid, event.generation
        rows = await self._index.study_instances(study)
        if not rows:
            return
        subscribers = set(self._settings.ian_subscribers)
        for source_ae in {row.source_ae for row in rows}:
            subscribers.update(self._settings.ian_subscribers_by_calling_ae.get(source_ae, ()))
        if not subscribers:
            return
        existing = {d.delivery_id: d for d in await self._index.deliveries(study)}
        payload = {"generation": generation,
                   "instances": [[r.series_instance_uid, r.sop_class_uid, r.sop_instance_uid] for r in rows]}
        now = time.time()
        for subscriber in sorted(subscribers):
            delivery_id = ian_id(study, subscriber)
            if not wanted(existing.get(delivery_id), generation):
                continue
            await self._index.put_delivery(
                Delivery(delivery_id, IAN, study, subscriber, payload, now, now, source), replace=True)
            log.info("IAN queued", extra={"study_instance_uid": study, "subscriber": subscriber,
                                          "generation": generation, "instances": len(rows)})


def ian_sender(outbound: Outbound, dicom: DicomSettings) -> Sender:
    """Sends a queued IAN as an N-CREATE to its subscriber."""

    async def send(delivery: Delivery) -> None:
        instances = [ian.AvailableInstance(*values) for values in delivery.payload["instances"]]
        await outbound.availability(delivery.target_ae,
                                    ian.notification(delivery.subject, instances, dicom.ae_title))

    return send
