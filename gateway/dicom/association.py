"""One association as the acceptor (PS3.8 upper layer, PS3.7 DIMSE), on an asyncio stream.

PDUs are framed here and P-DATA-TF is split into PDVs with memoryviews, so data-set fragments go to the
C-STORE handler without being copied into a whole-instance buffer. A Storage Commitment N-ACTION (small: a
list of references) is gathered whole, published to the events topic, and answered once it is durable; if
the configuration allows, the association is then offered to the notify role for the report (``Requesters``).
DIMSE dispatch is a table from Command Field to handler; the asynchronous operations window stays 1/1 (we do not
offer more), so one request is in progress at a time. Anything malformed or out of order is answered with A-ABORT and logged; it never
escapes as an exception from ``run``.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from pydicom.dataset import Dataset
from pynetdicom.pdu import A_ABORT_RQ, A_RELEASE_RP

from gateway.bus import BusError, Producer
from gateway.dicom import acse, commitment, dimse
from gateway.dicom.dataset import encode
from gateway.dicom.dimse import Command
from gateway.core import events
from gateway.core.errors import DicomStatusError
from gateway.core.events import CommitmentRequested
from gateway.logs import bind
from gateway.metrics import Metrics
from gateway.publish import InstancePublisher, Origin
from gateway.settings import DicomSettings, TopicSettings

log = logging.getLogger(__name__)

A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP_TYPE, A_ABORT = 0x04, 0x05, 0x06, 0x07
ASSOCIATE_RQ_LIMIT = 1024 * 1024
COMMAND_LIMIT = 64 * 1024
ACTION_INFORMATION_LIMIT = 32 * 1024 * 1024

# A-ABORT service-provider reasons, PS3.8 9.3.8
REASON_NOT_SPECIFIED = 0
REASON_UNRECOGNIZED_PDU = 1
REASON_UNEXPECTED_PDU = 2
REASON_INVALID_PARAMETER = 6

_HEADER = struct.Struct(">BBI")
_PDV_HEADER = struct.Struct(">IBB")
RELEASE_RP = bytes(A_RELEASE_RP().encode())


def abort_pdu(source: int, reason: int) -> bytes:
    pdu = A_ABORT_RQ()
    pdu.source = source
    pdu.reason_diagnostic = reason
    return bytes(pdu.encode())


class ProtocolError(Exception):
    """The peer broke the upper-layer protocol; we abort with ``reason``."""

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True)
class _Store:
    """The C-STORE in progress: its request and the publisher receiving its data set."""

    request: Command
    context_id: int
    publisher: InstancePublisher
    error: DicomStatusError | None = None


class Requesters:
    """Open associations that carried a storage-commitment request, by Transaction UID, so that its report can
    go back on the same association while the requester keeps it open."""

    def __init__(self) -> None:
        self._by_transaction: dict[str, Association] = {}

    def add(self, transaction_uid: str, association: Association) -> None:
        self._by_transaction[transaction_uid] = association

    def get(self, transaction_uid: str) -> Association | None:
        return self._by_transaction.get(transaction_uid)

    def ended(self, association: Association) -> None:
        for transaction_uid in [t for t, a in self._by_transaction.items() if a is association]:
            del self._by_transaction[transaction_uid]


class ReportNotTaken(Exception):
    """The association could not carry the report (closed, or the peer answered a failure)."""


@dataclass(slots=True)
class _Action:
    """The N-ACTION in progress: its request and the Action Information gathered so far."""

    request: Command
    context_id: int
    data: bytearray


class Association:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        settings: DicomSettings,
        producer: Producer,
        topics: TopicSettings,
        metrics: Metrics,
        open_associations: Callable[[], int],
        requesters: Requesters | None = None,
        reply_to: str = "",
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._settings = settings
        self._producer = producer
        self._topics = topics
        self._metrics = metrics
        self._open_associations = open_associations
        self._requesters = requesters
        self._reply_to = reply_to
        self._commitment_context = 0
        self._message_id = 0
        self._responses: dict[int, asyncio.Future[int]] = {}
        peer = writer.get_extra_info("peername") or ("", 0)
        self._peer_ip = str(peer[0])
        self._peer = f"{peer[0]}:{peer[1]}"
        self.id = uuid.uuid4().hex[:12]
        self._accepted: acse.Accepted | None = None
        self._command = bytearray()
        self._command_context = 0
        self._store: _Store | None = None
        self._action: _Action | None = None
        self._handlers: dict[int, Callable[[Command, int], Awaitable[None]]] = {
            dimse.C_ECHO_RQ: self._c_echo,
            dimse.C_STORE_RQ: self._c_store,
            dimse.N_ACTION_RQ: self._n_action,
            dimse.N_EVENT_REPORT_RSP: self._n_event_report_rsp,
        }

    async def run(self) -> None:
        bind(association=self.id, peer=self._peer)
        try:
            await self._establish()
            if self._accepted is not None:
                await self._serve()
        except ProtocolError as exc:
            self._metrics.protocol_errors.labels(_REASONS.get(exc.reason, "other")).inc()
            log.warning("protocol error, aborting association", extra={"reason": str(exc)})
            await self._send(abort_pdu(2, exc.reason))
        except TimeoutError:
            log.warning("association timed out, aborting")
            self._metrics.associations.labels("timeout").inc()
            await self._send(abort_pdu(2, REASON_NOT_SPECIFIED))
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            log.info("connection closed by peer", extra={"error": type(exc).__name__})
        finally:
            if self._requesters is not None:
                self._requesters.ended(self)
            for waiting in self._responses.values():
                if not waiting.done():
                    waiting.set_exception(ReportNotTaken("the association ended"))
            if self._store is not None:
                await self._store.publisher.abort("association ended before the data set was complete")
                log.warning("instance incomplete when the association ended; nothing acknowledged",
                            extra={"sop_instance_uid": self._store.request.affected_sop_instance_uid})
            self._writer.close()

    async def _read_pdu(self, limit: int) -> tuple[int, bytes]:
        header = await self._reader.readexactly(6)
        pdu_type, _, length = _HEADER.unpack(header)
        if pdu_type not in (A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF, A_RELEASE_RQ,
                            A_RELEASE_RP_TYPE, A_ABORT):
            raise ProtocolError(REASON_UNRECOGNIZED_PDU, f"unrecognised PDU type 0x{pdu_type:02x}")
        if length > limit:
            raise ProtocolError(REASON_INVALID_PARAMETER, f"PDU of {length} bytes exceeds the limit of {limit}")
        return pdu_type, header + await self._reader.readexactly(length)

    async def _establish(self) -> None:
        try:
            async with asyncio.timeout(self._settings.acse_timeout_seconds):
                pdu_type, pdu = await self._read_pdu(ASSOCIATE_RQ_LIMIT)
        except TimeoutError:
            # ARTIM expired before any A-ASSOCIATE-RQ: close the transport without an A-ABORT (PS3.8 AA-2)
            self._metrics.associations.labels("timeout").inc()
            log.warning("no A-ASSOCIATE-RQ within the ACSE timeout, closing")
            return
        if pdu_type == A_ABORT:
            return
        if pdu_type != A_ASSOCIATE_RQ:
            raise ProtocolError(REASON_UNEXPECTED_PDU, f"PDU type 0x{pdu_type:02x} before A-ASSOCIATE-RQ")
        try:
            outcome = acse.negotiate(pdu, self._settings, self._peer_ip, self._open_associations())
        except ValueError as exc:
            raise ProtocolError(REASON_INVALID_PARAMETER, str(exc)) from exc
        bind(calling_ae=outcome.calling_ae, called_ae=outcome.called_ae)
        await self._send(outcome.pdu)
        if isinstance(outcome, acse.Rejected):
            self._metrics.associations.labels("rejected").inc()
            log.warning("association rejected", extra={"reason": outcome.reason})
            return
        self._accepted = outcome
        self._metrics.associations.labels("accepted").inc()
        log.info("association accepted", extra={"contexts": len(outcome.contexts)})

    async def _serve(self) -> None:
        assert self._accepted is not None
        while True:
            busy = self._store is not None or self._action is not None
            timeout = self._settings.dimse_timeout_seconds if busy else self._settings.network_timeout_seconds
            async with asyncio.timeout(timeout):
                pdu_type, pdu = await self._read_pdu(self._settings.max_pdu_length)
            if pdu_type == P_DATA_TF:
                await self._p_data(memoryview(pdu)[6:])
            elif pdu_type == A_RELEASE_RQ:
                if self._store is not None or self._action is not None:
                    raise ProtocolError(REASON_UNEXPECTED_PDU, "A-RELEASE-RQ in the middle of a data set")
                await self._send(RELEASE_RP)
                self._metrics.associations.labels("released").inc()
                log.info("association released")
                return
            elif pdu_type == A_ABORT:
                self._metrics.associations.labels("aborted_by_peer").inc()
                log.warning("association aborted by peer")
                return
            else:
                raise ProtocolError(REASON_UNEXPECTED_PDU, f"unexpected PDU type 0x{pdu_type:02x}")

    async def _p_data(self, body: memoryview) -> None:
        assert self._accepted is not None
        offset, end = 0, len(body)
        while offset < end:
            if end - offset < _PDV_HEADER.size:
                raise ProtocolError(REASON_INVALID_PARAMETER, "PDV header truncated")
            length, context_id, control = _PDV_HEADER.unpack_from(body, offset)
            if length < 2 or offset + 4 + length > end:
                raise ProtocolError(REASON_INVALID_PARAMETER, "PDV longer than its PDU")
            if context_id not in self._accepted.contexts:
                raise ProtocolError(REASON_INVALID_PARAMETER, f"PDV on presentation context {context_id} "
                                    "that was not accepted")
            fragment = body[offset + 6 : offset + 4 + length]
            offset += 4 + length
            if control & 0x01:
                await self._command_fragment(context_id, fragment, last=bool(control & 0x02))
            else:
                await self._data_fragment(context_id, fragment, last=bool(control & 0x02))

    async def _command_fragment(self, context_id: int, fragment: memoryview, last: bool) -> None:
        if self._store is not None or self._action is not None:
            raise ProtocolError(REASON_UNEXPECTED_PDU, "command received while a data set was expected")
        if self._command and context_id != self._command_context:
            raise ProtocolError(REASON_INVALID_PARAMETER, "command fragments on different contexts")
        self._command_context = context_id
        self._command += fragment
        if len(self._command) > COMMAND_LIMIT:
            raise ProtocolError(REASON_INVALID_PARAMETER, "command set larger than 64 KiB")
        if not last:
            return
        data, self._command = bytes(self._command), bytearray()
        try:
            command = dimse.decode_command(data)
        except ValueError as exc:
            raise ProtocolError(REASON_INVALID_PARAMETER, str(exc)) from exc
        handler = self._handlers.get(command.command_field, self._unrecognized)
        await handler(command, context_id)

    async def _data_fragment(self, context_id: int, fragment: memoryview, last: bool) -> None:
        if self._action is not None:
            await self._action_fragment(context_id, fragment, last)
            return
        store = self._store
        if store is None or context_id != store.context_id:
            raise ProtocolError(REASON_UNEXPECTED_PDU, "data set fragment without a C-STORE request")
        if store.error is None:
            try:
                await store.publisher.write(fragment)
            except DicomStatusError as exc:
                store.error = exc
                await store.publisher.abort(exc.comment)
        if last:
            self._store = None
            await self._finish_store(store)

    async def _send(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, OSError):
            pass

    async def _send_command(self, context_id: int, command: bytes) -> None:
        await self._send(self._pdus(context_id, command, 0x01))

    def _pdus(self, context_id: int, message: bytes, kind: int) -> bytes:
        """A command set (``kind`` 1) or data set (0) as P-DATA-TF PDUs, fragmented to the peer's maximum."""
        assert self._accepted is not None
        room = self._accepted.peer_max_pdu - 6 if self._accepted.peer_max_pdu else len(message)
        room = max(room, 1)
        pdus = []
        for start in range(0, max(len(message), 1), room):
            piece = message[start : start + room]
            control = kind | (0x02 if start + room >= len(message) else 0x00)
            pdv = _PDV_HEADER.pack(len(piece) + 2, context_id, control) + piece
            pdus.append(_HEADER.pack(P_DATA_TF, 0, len(pdv)) + pdv)
        return b"".join(pdus)

    async def _respond(self, request: Command, context_id: int, status: int, comment: str | None = None) -> None:
        command_field = request.command_field | 0x8000
        await self._send_command(context_id, dimse.response(request, command_field, status, comment))
        self._metrics.dimse_statuses.labels(f"0x{command_field:04x}", f"0x{status:04x}").inc()

    async def _c_echo(self, request: Command, context_id: int) -> None:
        await self._respond(request, context_id, dimse.SUCCESS)

    async def _c_store(self, request: Command, context_id: int) -> None:
        assert self._accepted is not None
        if not request.has_data_set:
            raise ProtocolError(REASON_INVALID_PARAMETER, "C-STORE-RQ without a data set")
        caller = self._accepted.caller
        origin = Origin(
            calling_ae=self._accepted.calling_ae,
            called_ae=self._accepted.called_ae,
            peer=self._peer,
            organization=caller.organization if caller else "",
            organization_oid=caller.organization_oid if caller else "",
        )
        publisher = InstancePublisher(
            self._producer,
            self._topics.instances,
            origin,
            transfer_syntax=self._accepted.contexts[context_id],
            sop_class_uid=request.affected_sop_class_uid,
            sop_instance_uid=request.affected_sop_instance_uid,
            correlation_id=f"{self.id}-{request.message_id}",
            max_instance_bytes=self._settings.max_instance_bytes,
        )
        self._store = _Store(request, context_id, publisher)

    async def _finish_store(self, store: _Store) -> None:
        request = store.request
        error = store.error
        if error is None:
            started = asyncio.get_running_loop().time()
            try:
                published = await store.publisher.finish(self._settings.publish_timeout_seconds)
            except DicomStatusError as exc:
                error = exc
                await store.publisher.abort(exc.comment)
            else:
                self._metrics.publish_latency.observe(asyncio.get_running_loop().time() - started)
                self._metrics.instances_received.inc()
                self._metrics.bytes_received.inc(published.size)
                log.debug("instance durable", extra={"instance_id": published.instance_id,
                                                     "sop_instance_uid": published.sop_instance_uid})
                await self._respond(request, store.context_id, dimse.SUCCESS)
                return
        log.warning("C-STORE refused", extra={
            "status": f"0x{error.status:04x}", "reason": error.comment,
            "sop_instance_uid": request.affected_sop_instance_uid,
        })
        await self._respond(request, store.context_id, error.status, error.comment)

    async def _n_action(self, request: Command, context_id: int) -> None:
        if not request.has_data_set:
            await self._refuse_action(request, context_id, dimse.PROCESSING_FAILURE,
                                      "N-ACTION without Action Information")
            return
        self._action = _Action(request, context_id, bytearray())

    async def _action_fragment(self, context_id: int, fragment: memoryview, last: bool) -> None:
        action = self._action
        assert action is not None
        if context_id != action.context_id:
            raise ProtocolError(REASON_INVALID_PARAMETER, "N-ACTION data on another presentation context")
        action.data += fragment
        if len(action.data) > ACTION_INFORMATION_LIMIT:
            raise ProtocolError(REASON_INVALID_PARAMETER, "N-ACTION Action Information larger than 32 MiB")
        if last:
            self._action = None
            await self._request_commitment(action)

    async def _request_commitment(self, action: _Action) -> None:
        """Storage Commitment Push Model SCP: publish the request durably, then answer Success at once; the
        notify worker sends the N-EVENT-REPORT when it has decided."""
        assert self._accepted is not None
        request, context_id = action.request, action.context_id
        calling_ae = self._accepted.calling_ae
        if request.text(dimse.REQUESTED_SOP_CLASS_UID) != commitment.STORAGE_COMMITMENT_PUSH_MODEL:
            await self._refuse_action(request, context_id, dimse.NO_SUCH_SOP_CLASS, "not a Storage Commitment")
            return
        if request.text(dimse.REQUESTED_SOP_INSTANCE_UID) != commitment.STORAGE_COMMITMENT_INSTANCE:
            await self._refuse_action(request, context_id, dimse.NO_SUCH_SOP_INSTANCE,
                                      "Requested SOP Instance must be 1.2.840.10008.1.20.1.1")
            return
        if request.unsigned(dimse.ACTION_TYPE_ID) != commitment.REQUEST_STORAGE_COMMITMENT:
            await self._refuse_action(request, context_id, dimse.NO_SUCH_ACTION, "Action Type ID must be 1")
            return
        if self._settings.remote_ae(calling_ae) is None:
            await self._refuse_action(request, context_id, dimse.NOT_AUTHORIZED,
                                      f"{calling_ae} is not a configured remote AE")
            return
        try:
            transaction_uid, references = commitment.parse_action_information(
                bytes(action.data), self._accepted.contexts[context_id])
        except ValueError as exc:
            await self._refuse_action(request, context_id, dimse.PROCESSING_FAILURE, str(exc))
            return
        commitment_request = CommitmentRequested(
            transaction_uid=transaction_uid, requester_ae=calling_ae, called_ae=self._accepted.called_ae,
            peer=self._peer, references=references, requested_at=datetime.now(UTC).isoformat(),
            reply_to=self._reply_to if self._requesters is not None else "")
        bind(transaction_uid=transaction_uid)
        try:
            async with asyncio.timeout(self._settings.publish_timeout_seconds):
                await self._producer.publish(self._topics.events, commitment_request.key,
                                             events.encode(commitment_request))
        except (BusError, TimeoutError) as exc:
            await self._refuse_action(request, context_id, dimse.RESOURCE_LIMITATION,
                                      f"the bus is unavailable: {exc}"[:64])
            return
        self._metrics.commitment_requests.inc()
        log.info("storage commitment requested", extra={"references": len(references)})
        await self._respond(request, context_id, dimse.SUCCESS)
        if self._requesters is not None:
            self._commitment_context = context_id
            self._requesters.add(transaction_uid, self)

    async def send_event_report(self, event_type: int, information: Dataset, timeout: float) -> None:
        """The storage-commitment report on this association (we are the SCP of the class here already);
        raises ReportNotTaken unless the peer answers Success (or a warning)."""
        assert self._accepted is not None
        context_id = self._commitment_context
        self._message_id = self._message_id % 0xFFFF + 1
        answered = asyncio.get_running_loop().create_future()
        self._responses[self._message_id] = answered
        command = dimse.event_report(self._message_id, commitment.STORAGE_COMMITMENT_PUSH_MODEL,
                                     commitment.STORAGE_COMMITMENT_INSTANCE, event_type)
        data = encode(information, self._accepted.contexts[context_id])
        try:
            await self._send(self._pdus(context_id, command, 0x01) + self._pdus(context_id, data, 0x00))
            async with asyncio.timeout(timeout):
                status = await answered
        except TimeoutError as exc:
            raise ReportNotTaken("no N-EVENT-REPORT-RSP in time") from exc
        finally:
            self._responses.pop(self._message_id, None)
        if status != dimse.SUCCESS and not 0xB000 <= status <= 0xBFFF:
            raise ReportNotTaken(f"N-EVENT-REPORT answered with status 0x{status:04X}")

    async def _n_event_report_rsp(self, response: Command, context_id: int) -> None:
        answered = self._responses.get(response.message_id)
        if answered is None or answered.done():
            log.warning("N-EVENT-REPORT-RSP to no report of ours", extra={"message_id": response.message_id})
            return
        answered.set_result(response.unsigned(dimse.STATUS) or 0)

    async def _refuse_action(self, request: Command, context_id: int, status: int, comment: str) -> None:
        log.warning("N-ACTION refused", extra={"status": f"0x{status:04x}", "reason": comment})
        await self._respond(request, context_id, status, comment)

    async def _unrecognized(self, request: Command, context_id: int) -> None:
        if request.has_data_set:
            raise ProtocolError(REASON_UNEXPECTED_PDU, f"unsupported command 0x{request.command_field:04x}")
        await self._respond(request, context_id, dimse.UNRECOGNIZED_OPERATION)


_REASONS = {
    REASON_NOT_SPECIFIED: "not_specified",
    REASON_UNRECOGNIZED_PDU: "unrecognized_pdu",
    REASON_UNEXPECTED_PDU: "unexpected_pdu",
    REASON_INVALID_PARAMETER: "invalid_parameter",
}
