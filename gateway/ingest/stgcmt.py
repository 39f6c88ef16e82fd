"""The Storage Commitment Push Model SCP (PS3.4 Annex J): an N-ACTION's request is published durably as a
``CommitmentRequested`` event before Success is answered; the notify role decides it and sends the report.

The request (a list of references) is gathered whole, bounded by ``ACTION_INFORMATION_LIMIT``, and may list up
to ``commitment.MAX_REFERENCES``; it is published in parts of ``REFERENCES_PER_RECORD`` (a bus record holds at
most 1 MiB), and Success is answered only once every part is durable. Refusals carry a status and an Error
Comment. When the report may go back on the requester's own association (the notify role asks over the
receiver's internal HTTP route, ``commitment.REPORTS_PATH``), the service keeps each requester's association
by Transaction UID while it stays open.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime

import orjson
from aiohttp import web

from gateway.bus import BusError, Producer
from gateway.core import events
from gateway.core.events import CommitmentRequested
from gateway.dicom import commitment, dimse
from gateway.dicom.acse import UNCOMPRESSED
from gateway.dicom.dataset import encode
from gateway.dicom.dimse import Command
from gateway.dicom.service import AssociationContext, DataSetSink, Response, WholeDataSet, permits
from gateway.metrics import Metrics

log = logging.getLogger(__name__)

ACTION_INFORMATION_LIMIT = 32 * 1024 * 1024
REFERENCES_PER_RECORD = 3_000
"""References in one ``CommitmentRequested`` record: a reference takes at most 136 bytes there (two 64-character
UIDs), so a part stays under 410 KB with everything else it carries, well within the bus's 1 MiB record."""
REPORT_HAND_OVER_LIMIT = commitment.MAX_REFERENCES * 256
"""Largest report hand-over body: a decision takes at most 140 bytes of JSON (two UIDs, a Failure Reason)."""


class ReportNotTaken(Exception):
    """The association could not carry the report (closed, or the peer answered a failure)."""


class StorageCommitmentService:
    command_fields = frozenset({dimse.N_ACTION_RQ})

    def __init__(self, producer: Producer, topic: str, metrics: Metrics, is_requester: Callable[[str], bool],
                 retrieve_ae_title: str, publish_timeout: float, report_timeout: float,
                 reply_to: str | None = None) -> None:
        self._producer = producer
        self._topic = topic
        self._metrics = metrics
        self._is_requester = is_requester
        self._retrieve_ae_title = retrieve_ae_title
        self._publish_timeout = publish_timeout
        self._report_timeout = report_timeout
        self._reply_to = reply_to
        self._requesters: dict[str, tuple[AssociationContext, int]] = {}

    def abstract_syntaxes(self) -> Mapping[str, Sequence[str]]:
        """Requests are read by us, so they come in an uncompressed syntax."""
        return {commitment.STORAGE_COMMITMENT_PUSH_MODEL: UNCOMPRESSED}

    async def request(self, association: AssociationContext, request: Command,
                      context_id: int) -> Response | DataSetSink:
        if not self._is_requester(association.calling_ae):  # before its data set: nothing is buffered for it
            return _refused(dimse.NOT_AUTHORIZED, f"{association.calling_ae} is not a configured remote AE")
        if not permits(association, "store"):
            return _refused(dimse.NOT_AUTHORIZED, f"{association.calling_ae} may not store here")
        if not request.has_data_set:
            return _refused(dimse.PROCESSING_FAILURE, "N-ACTION without Action Information")
        return WholeDataSet("N-ACTION", "Action Information",
                            lambda data: self.requested(association, request, context_id, data),
                            ACTION_INFORMATION_LIMIT, dimse.RESOURCE_LIMITATION)

    async def requested(self, association: AssociationContext, request: Command, context_id: int,
                        data: bytes) -> Response:
        """Publish the request durably, then answer Success; the notify role reports when it has decided."""
        calling_ae = association.calling_ae
        if request.text(dimse.REQUESTED_SOP_CLASS_UID) != commitment.STORAGE_COMMITMENT_PUSH_MODEL:
            return _refused(dimse.NO_SUCH_SOP_CLASS, "not a Storage Commitment")
        if request.text(dimse.REQUESTED_SOP_INSTANCE_UID) != commitment.STORAGE_COMMITMENT_INSTANCE:
            return _refused(dimse.NO_SUCH_SOP_INSTANCE, "Requested SOP Instance must be 1.2.840.10008.1.20.1.1")
        if request.unsigned(dimse.ACTION_TYPE_ID) != commitment.REQUEST_STORAGE_COMMITMENT:
            return _refused(dimse.NO_SUCH_ACTION, "Action Type ID must be 1")
        try:  # in a thread: reading 100,000 references takes seconds, which the other associations must not wait
            transaction_uid, references = await asyncio.to_thread(
                commitment.parse_action_information, data, association.transfer_syntax(context_id))
        except commitment.TooManyReferences as exc:
            return _refused(dimse.RESOURCE_LIMITATION, str(exc))
        except ValueError as exc:
            return _refused(dimse.PROCESSING_FAILURE, str(exc))
        requested_at = datetime.now(UTC).isoformat()
        split = [references[start:start + REFERENCES_PER_RECORD]
                 for start in range(0, len(references), REFERENCES_PER_RECORD)]
        records = [CommitmentRequested(
            transaction_uid=transaction_uid, requester_ae=calling_ae, called_ae=association.called_ae,
            peer=association.peer, references=part, requested_at=requested_at, reply_to=self._reply_to or "",
            part=number, parts=len(split)) for number, part in enumerate(split, 1)]
        try:
            async with asyncio.timeout(self._publish_timeout):
                await self._publish(records)
        except (BusError, TimeoutError) as exc:
            return _refused(dimse.RESOURCE_LIMITATION, f"the bus is unavailable: {exc}"[:64])
        self._metrics.commitment_requests.inc()
        log.info("storage commitment requested", extra={"transaction_uid": transaction_uid,
                                                         "references": len(references), "records": len(records)})
        if self._reply_to:
            self._requesters[transaction_uid] = (association, context_id)
            association.on_end(lambda: self._forget(transaction_uid))
        return Response(dimse.SUCCESS)

    async def _publish(self, records: list[CommitmentRequested]) -> None:
        """Queue every part in order (one key: one partition, in this order), then wait until all are durable.
        A part that fails fails the request; the parts already durable stay, and the notify role keeps them
        apart from the request the requester sends again (another request time)."""
        sent: list[Awaitable[None]] = []
        try:
            for record in records:
                sent.append(await self._producer.send(self._topic, record.key, events.encode(record)))
        except BusError:
            await asyncio.gather(*sent, return_exceptions=True)
            raise
        await asyncio.gather(*sent)

    def _forget(self, transaction_uid: str) -> None:
        self._requesters.pop(transaction_uid, None)

    async def report(self, transaction_uid: str, decisions: list[commitment.Decision]) -> int:
        """Send the report on the requester's association; returns the Event Type ID sent. LookupError when
        that association is no longer open here, ReportNotTaken when it could not carry it."""
        found = self._requesters.get(transaction_uid)
        if found is None:
            raise LookupError(transaction_uid)
        association, context_id = found
        event_type, information = await asyncio.to_thread(  # a report of many references takes seconds to encode
            _event_information, transaction_uid, decisions, self._retrieve_ae_title,
            association.transfer_syntax(context_id))

        def command(message_id: int) -> bytes:
            return dimse.event_report(message_id, commitment.STORAGE_COMMITMENT_PUSH_MODEL,
                                      commitment.STORAGE_COMMITMENT_INSTANCE, event_type)

        try:
            response = await association.send_request(context_id, command, information, self._report_timeout)
        except TimeoutError as exc:
            raise ReportNotTaken("no N-EVENT-REPORT-RSP in time") from exc
        except ConnectionError as exc:
            raise ReportNotTaken(str(exc)) from exc
        status = response.unsigned(dimse.STATUS) or 0
        if status != dimse.SUCCESS and not 0xB000 <= status <= 0xBFFF:
            raise ReportNotTaken(f"N-EVENT-REPORT answered with status 0x{status:04X}")
        return event_type

    async def handle_report_request(self, request: web.Request) -> web.Response:
        """The notify role hands over a report for an association held here: 200 once the requester answered
        it, 404 when that association is gone (notify then opens a new one)."""
        transaction_uid = request.match_info["transaction_uid"]
        try:
            decisions = _decisions(orjson.loads(await _body(request, REPORT_HAND_OVER_LIMIT))["decisions"])
        except (ValueError, KeyError, TypeError):
            raise web.HTTPBadRequest(text="expected {\"decisions\": [[class UID, instance UID, reason or null]]}") from None
        try:
            event_type = await self.report(transaction_uid, decisions)
        except LookupError:
            raise web.HTTPNotFound(text="the requester's association is no longer open here") from None
        except ReportNotTaken as exc:
            raise web.HTTPBadGateway(text=str(exc)) from exc
        log.info("commitment report sent on the requester's association", extra={"transaction_uid": transaction_uid})
        return web.json_response({"event_type": event_type})


def _event_information(transaction_uid: str, decisions: list[commitment.Decision], retrieve_ae_title: str,
                       transfer_syntax: str) -> tuple[int, bytes]:
    event_type, information = commitment.report(transaction_uid, decisions, retrieve_ae_title)
    return event_type, encode(information, transfer_syntax)


async def _body(request: web.Request, limit: int) -> bytes:
    """The request's body up to ``limit``: aiohttp's own 1 MiB limit would refuse the report of a large
    transaction, which then could not go back on the requester's association."""
    if (request.content_length or 0) > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length or 0)
    body = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        body += chunk
        if len(body) > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
    return bytes(body)


def _decisions(value: object) -> list[commitment.Decision]:
    """A report's decisions as the notify role sends them; ValueError/TypeError for anything else."""
    if not isinstance(value, list):
        raise TypeError("decisions is not a list")
    decisions = []
    for cls, inst, reason in value:
        if not (isinstance(cls, str) and isinstance(inst, str) and (reason is None or type(reason) is int)):
            raise TypeError("a decision is not [str, str, int | null]")
        decisions.append(commitment.Decision(cls, inst, reason))
    return decisions


def _refused(status: int, comment: str) -> Response:
    log.warning("N-ACTION refused", extra={"status": f"0x{status:04x}", "reason": comment})
    return Response(status, comment)
