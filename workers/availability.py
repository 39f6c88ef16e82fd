"""Instance Availability Notification: when a study is complete here, tell its subscribers what is available.

The trigger is a study event: ``StudyStable`` (no new instance for the stability time), or
``StudyRegistered`` once XDS registration is on and the trigger says so. Each subscriber gets one IAN per
study generation (a study that receives more instances after it was stable gets a new generation, and a new
IAN listing everything then stored); a repeated event for the same generation changes nothing.

An IOCM rejection (``InstancesRejected``) sends one more IAN per subscriber right away, as the reference archive
does: the study's instances still available (ONLINE) and the ones withdrawn (UNAVAILABLE); for an incorrect
worklist entry (113038) with a Referenced Performed Procedure Step, as IOCM asks (a new UID: none is known here).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from pydicom.uid import generate_uid

from gateway.core.events import InstancesRejected, StudyRegistered, StudyStable
from gateway.core.iocm import Title
from gateway.core.study import InstanceStatus
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
        subscribers = self._subscribers({row.source_ae for row in rows})
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

    async def rejected(self, event: InstancesRejected, source: dict[str, Any]) -> None:
        """Queue the IAN of a rejection for each subscriber of the study, once per note (or move)."""
        if not event.instances:
            return
        study = event.study_instance_uid
        rows = await self._index.study_instances(study, include_rejected=True)
        subscribers = self._subscribers({row.source_ae for row in rows})
        if not subscribers:
            return
        withdrawn = {uid for _, _, uid in event.instances}
        instances = [[r.series_instance_uid, r.sop_class_uid, r.sop_instance_uid, ian.ONLINE] for r in rows
                     if r.status is InstanceStatus.STORED and r.sop_instance_uid not in withdrawn]
        instances += [[series, sop_class, uid, ian.UNAVAILABLE] for series, sop_class, uid in event.instances]
        payload = {"instances": instances, "procedure_step_uid":
                   generate_uid() if event.title == Title.WORKLIST.value else ""}
        cause = f"{event.note_sop_instance_uid or 'moved-' + event.instances[0][2]}:{event.part}"
        now = time.time()
        for subscriber in sorted(subscribers):
            await self._index.put_delivery(Delivery(f"{ian_id(study, subscriber)}:{cause}", IAN, study, subscriber,
                                                    payload, now, now, source), replace=False)
            log.info("IAN of a rejection queued", extra={"study_instance_uid": study, "subscriber": subscriber,
                                                         "unavailable": len(event.instances)})

    def _subscribers(self, source_aes: set[str]) -> set[str]:
        subscribers = set(self._settings.ian_subscribers)
        for source_ae in source_aes:
            subscribers.update(self._settings.ian_subscribers_by_calling_ae.get(source_ae, ()))
        return subscribers


def ian_sender(outbound: Outbound, dicom: DicomSettings) -> Sender:
    """Sends a queued IAN as an N-CREATE to its subscriber."""

    async def send(delivery: Delivery) -> None:
        instances = [ian.AvailableInstance(*values) for values in delivery.payload["instances"]]
        await outbound.availability(delivery.target_ae, ian.notification(
            delivery.subject, instances, dicom.ae_title,
            procedure_step_uid=delivery.payload.get("procedure_step_uid", "")))

    return send
