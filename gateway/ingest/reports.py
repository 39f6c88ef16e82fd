"""Storage-commitment reports from the archives we forward to (PS3.4 J.3.3, the gateway as requester).

An archive reports on a new association (dcm4chee and Orthanc always do, PS3.4 J.3.3.1.3 requires a requester to
take it so), proposing itself as SCP of the Storage Commitment Push Model; any receiver process may get it.
The report is published durably as ``CommitmentReported`` records (parts of ``REFERENCES_PER_RECORD``) for
the forward role before Success is answered. When it cannot be kept the association is aborted instead of
answered with a failure: dcm4chee and Orthanc never send a report again for a failure status, but dcm4chee
retries one whose association broke, and the forward role asks again once its commitment timeout passes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

from gateway.bus import BusError, Producer
from gateway.core import events
from gateway.core.events import CommitmentReported
from gateway.dicom import commitment, dimse
from gateway.dicom.acse import UNCOMPRESSED
from gateway.dicom.association import REASON_NOT_SPECIFIED, ProtocolError
from gateway.dicom.dimse import Command
from gateway.dicom.service import AssociationContext, DataSetSink, Response, WholeDataSet
from gateway.ingest.stgcmt import ACTION_INFORMATION_LIMIT, REFERENCES_PER_RECORD
from gateway.metrics import Metrics

log = logging.getLogger(__name__)


class CommitmentReportService:
    command_fields = frozenset({dimse.N_EVENT_REPORT_RQ})

    def __init__(self, producer: Producer, topic: str, metrics: Metrics, is_destination: Callable[[str], bool],
                 publish_timeout: float) -> None:
        self._producer = producer
        self._topic = topic
        self._metrics = metrics
        self._is_destination = is_destination
        self._publish_timeout = publish_timeout

    def abstract_syntaxes(self) -> Mapping[str, Sequence[str]]:
        return {commitment.STORAGE_COMMITMENT_PUSH_MODEL: UNCOMPRESSED}

    async def request(self, association: AssociationContext, request: Command,
                      context_id: int) -> Response | DataSetSink:
        if not self._is_destination(association.calling_ae):
            return _refused(dimse.PROCESSING_FAILURE, f"{association.calling_ae} is not a forwarding destination")
        if request.affected_sop_instance_uid != commitment.STORAGE_COMMITMENT_INSTANCE:
            return _refused(dimse.NO_SUCH_SOP_INSTANCE, "Affected SOP Instance must be 1.2.840.10008.1.20.1.1")
        event_type = request.unsigned(dimse.EVENT_TYPE_ID)
        if event_type not in (commitment.EVENT_ALL_COMMITTED, commitment.EVENT_SOME_FAILED):
            return _refused(0x0113, "Event Type ID must be 1 or 2")  # No such event type
        if not request.has_data_set:
            return _refused(dimse.PROCESSING_FAILURE, "N-EVENT-REPORT without Event Information")
        return WholeDataSet("N-EVENT-REPORT", "Event Information",
                            lambda data: self.reported(association, event_type, context_id, data),
                            ACTION_INFORMATION_LIMIT, dimse.RESOURCE_LIMITATION)

    async def reported(self, association: AssociationContext, event_type: int, context_id: int,
                       data: bytes) -> Response:
        try:
            information = await asyncio.to_thread(
                commitment.parse_event_information, data, association.transfer_syntax(context_id))
        except ValueError as exc:
            return _refused(dimse.PROCESSING_FAILURE, str(exc))
        reported_at = datetime.now(UTC).isoformat()
        committed, failed = information.committed, information.failed
        size = REFERENCES_PER_RECORD
        parts = max((len(committed) + size - 1) // size, (len(failed) + size - 1) // size, 1)
        records = [CommitmentReported(
            transaction_uid=information.transaction_uid, reporter_ae=association.calling_ae, event_type=event_type,
            committed=committed[start:start + size], failed=failed[start:start + size], reported_at=reported_at,
            retrieve_ae_title=information.retrieve_ae_title, part=number, parts=parts)
            for number, start in enumerate(range(0, parts * size, size), 1)]
        try:
            async with asyncio.timeout(self._publish_timeout):
                sent = [await self._producer.send(self._topic, record.key, events.encode(record))
                        for record in records]
                await asyncio.gather(*sent)
        except (BusError, TimeoutError) as exc:
            log.warning("commitment report not kept, aborting so that the archive sends it again",
                        extra={"transaction_uid": information.transaction_uid, "error": type(exc).__name__})
            raise ProtocolError(REASON_NOT_SPECIFIED, "the report could not be made durable") from exc
        self._metrics.commitment_reports_received.labels(association.calling_ae).inc()
        log.info("storage commitment report received", extra={
            "transaction_uid": information.transaction_uid, "committed": len(information.committed),
            "failed": len(information.failed), "records": len(records)})
        return Response(dimse.SUCCESS)


def _refused(status: int, comment: str) -> Response:
    log.warning("N-EVENT-REPORT refused", extra={"status": f"0x{status:04x}", "reason": comment})
    return Response(status, comment)
