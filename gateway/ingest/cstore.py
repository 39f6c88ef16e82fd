"""The Storage SCP (PS3.4 Annex B): each C-STORE's data set streams into the bus, and Success is answered
only once every record of the instance is durable there.

Every storage SOP Class of pydicom's UID dictionary is accepted, retired ones included (older devices still
send them), with every transfer syntax: instances are stored as received and never transcoded, so any encoding
a sender offers is fine (``acse`` chooses among several). Configured extra (private) SOP Classes are accepted
too, and with ``accept_any_storage_class`` any SOP Class not known to be something other than storage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from functools import cache

from pydicom._uid_dict import UID_dictionary
from pydicom.uid import AllTransferSyntaxes

from gateway.bus import Producer
from gateway.core.errors import DicomStatusError, OutOfResources
from gateway.core.iocm import NoteRefused
from gateway.core.uid import is_uid
from gateway.dicom import dimse
from gateway.dicom.dimse import Command
from gateway.dicom.service import AssociationContext, DataSetSink, Response, permits
from gateway.ingest.iocm import EXPIRE_PERMISSION, NoteCheck, RejectionCheck
from gateway.ingest.publish import InstancePublisher, Origin
from gateway.metrics import Metrics

log = logging.getLogger(__name__)


NOT_STORAGE = ("Storage Commitment", "Media Storage Directory")
"""SOP Classes whose names say Storage but that C-STORE does not carry."""


@cache
def storage_sop_classes() -> tuple[str, ...]:
    """The storage SOP Classes of PS3.4 Annex B (and the retired ones), as pydicom's dictionary names them."""
    return tuple(uid for uid, (name, kind, *_) in UID_dictionary.items()
                 if kind == "SOP Class" and "Storage" in name and not name.startswith(NOT_STORAGE))


def could_be_storage(uid: str) -> bool:
    """For ``accept_any_storage_class``: a well-formed UID that pydicom does not know as anything else."""
    if not is_uid(uid):
        return False
    known = UID_dictionary.get(uid)
    return known is None or uid in storage_sop_classes()


def all_transfer_syntaxes() -> tuple[str, ...]:
    return tuple(str(ts) for ts in AllTransferSyntaxes)


class StorageService:
    command_fields = frozenset({dimse.C_STORE_RQ})

    def __init__(self, producer: Producer, topic: str, metrics: Metrics, max_instance_bytes: int,
                 publish_timeout: float, extra_sop_classes: Sequence[str] = (),
                 shortage: Callable[[], str | None] = lambda: None, rejections: RejectionCheck | None = None) -> None:
        """``shortage`` says why no instance may be taken now (a full disk: ``gateway.disk``), or None;
        ``rejections`` checks IOCM before Success (``gateway.ingest.iocm``)."""
        self._rejections = rejections
        self._extra_sop_classes = tuple(extra_sop_classes)
        self._shortage = shortage
        self._producer = producer
        self._topic = topic
        self._metrics = metrics
        self._max_instance_bytes = max_instance_bytes
        self._publish_timeout = publish_timeout

    def abstract_syntaxes(self) -> Mapping[str, Sequence[str]]:
        syntaxes = all_transfer_syntaxes()
        return {sop_class: syntaxes for sop_class in (*storage_sop_classes(), *self._extra_sop_classes)}

    async def request(self, association: AssociationContext, request: Command,
                      context_id: int) -> Response | DataSetSink:
        if self._shortage() is not None:  # refused before a byte reaches the bus; logged once by the watcher
            raise OutOfResources("disk full")
        if not permits(association, "store"):
            log.warning("C-STORE refused: the calling AE may not store", extra={
                "sop_instance_uid": request.affected_sop_instance_uid})
            return Response(dimse.NOT_AUTHORIZED, "this AE may not store here")
        may_expire = permits(association, EXPIRE_PERMISSION)
        check = None
        if self._rejections is not None:
            try:
                check = self._rejections.begin(request.affected_sop_instance_uid, request.affected_sop_class_uid,
                                               association.transfer_syntax(context_id), may_expire)
            except NoteRefused as exc:
                log.warning("C-STORE refused", extra={"status": f"0x{exc.status:04x}", "reason": exc.comment,
                                                      "sop_instance_uid": request.affected_sop_instance_uid})
                return Response(exc.status, exc.comment)
        caller = association.caller
        origin = Origin(
            calling_ae=association.calling_ae, called_ae=association.called_ae, peer=association.peer,
            organization=caller.organization if caller else "",
            organization_oid=caller.organization_oid if caller else "", may_expire=may_expire,
            user=association.user,
        )
        publisher = InstancePublisher(
            self._producer, self._topic, origin,
            transfer_syntax=association.transfer_syntax(context_id),
            sop_class_uid=request.affected_sop_class_uid,
            sop_instance_uid=request.affected_sop_instance_uid,
            correlation_id=f"{association.id}-{request.message_id}",
            max_instance_bytes=self._max_instance_bytes,
        )
        return _Instance(publisher, request, self._metrics, self._publish_timeout, check)


class _Instance:
    """One C-STORE's data set on its way into the bus."""

    def __init__(self, publisher: InstancePublisher, request: Command, metrics: Metrics,
                 publish_timeout: float, check: NoteCheck | None = None) -> None:
        self._publisher = publisher
        self._request = request
        self._metrics = metrics
        self._publish_timeout = publish_timeout
        self._check = check

    async def write(self, fragment: memoryview) -> None:
        try:
            await self._publisher.write(fragment)
        except DicomStatusError as exc:
            self._refused(exc)
            raise
        if self._check is not None:
            self._check.write(fragment)

    async def finish(self) -> Response:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            if self._check is not None:
                await self._check.finish()
            published = await self._publisher.finish(self._publish_timeout)
        except DicomStatusError as exc:
            self._refused(exc)
            raise
        self._metrics.publish_latency.observe(loop.time() - started)
        self._metrics.instances_received.inc()
        self._metrics.bytes_received.inc(published.size)
        log.debug("instance durable", extra={"instance_id": published.instance_id,
                                             "sop_instance_uid": published.sop_instance_uid})
        return Response(dimse.SUCCESS)

    async def abort(self, reason: str) -> None:
        await self._publisher.abort(reason)

    def _refused(self, error: DicomStatusError) -> None:
        log.warning("C-STORE refused", extra={"status": f"0x{error.status:04x}", "reason": error.comment,
                                              "sop_instance_uid": self._request.affected_sop_instance_uid})
