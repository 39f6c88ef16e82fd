"""One association as the acceptor (PS3.8 upper layer, PS3.7 DIMSE), on an asyncio stream.

PDUs are framed here and P-DATA-TF is split into PDVs with memoryviews, so a data set's fragments reach its
service without being copied into a whole-instance buffer. Each request is dispatched on (Command Field,
abstract syntax of its presentation context) to the service registered for it (``service.ServiceRegistry``);
the association knows nothing of what services do. Requests of our own on the association (a storage-commitment
report on the requester's association, a C-GET's C-STOREs) go out with ``send_request``, their responses matched
by Message ID. The asynchronous operations window stays 1/1 (we do not offer more), so one request is in progress
at a time; one answered by a stream of responses (``service.Operation``: C-FIND, C-MOVE, C-GET) runs as a task
while PDUs are still read, so that its C-CANCEL and its sub-operations' responses arrive. Anything malformed or out
of order is answered with A-ABORT and logged; it never escapes from ``run``.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import uuid
from collections.abc import AsyncIterable, Callable, Container, Iterator
from dataclasses import dataclass, field

from pynetdicom.pdu import A_ABORT_RQ, A_RELEASE_RP

from gateway.core import audit
from gateway.core.audit import AuditRecord, AuditTrail
from gateway.core.errors import DicomStatusError
from gateway.dicom import acse, dimse
from gateway.dicom.dimse import Command
from gateway.dicom.service import Caller, DataSetSink, Operation, Response, ServiceRegistry
from gateway.logs import bind
from gateway.metrics import Metrics

log = logging.getLogger(__name__)

A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP_TYPE, A_ABORT = 0x04, 0x05, 0x06, 0x07
ASSOCIATE_RQ_LIMIT = 256 * 1024
"""128 presentation contexts with 20 transfer syntaxes each and a user identity token fit several times over; a
larger request is aborted before it is read whole."""
COMMAND_LIMIT = 64 * 1024

# A-ABORT service-provider reasons, PS3.8 9.3.8
REASON_NOT_SPECIFIED = 0
REASON_UNRECOGNIZED_PDU = 1
REASON_UNEXPECTED_PDU = 2
REASON_INVALID_PARAMETER = 6

PDU_HEADER = struct.Struct(">BBI")
PDV_HEADER = struct.Struct(">IBB")
_PDU_TYPES = frozenset({A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP_TYPE,
                        A_ABORT})
RELEASE_RP = bytes(A_RELEASE_RP().encode())


def abort_pdu(source: int, reason: int) -> bytes:
    pdu = A_ABORT_RQ()
    pdu.source = source
    pdu.reason_diagnostic = reason
    return bytes(pdu.encode())


@dataclass(frozen=True, slots=True)
class Timeouts:
    acse_seconds: float
    """ARTIM: from connection to A-ASSOCIATE-RQ."""
    dimse_seconds: float
    """Between the PDUs of one message."""
    network_seconds: float
    """Idle time after which an open association is aborted."""


class ProtocolError(Exception):
    """The peer broke the upper-layer protocol; we abort with ``reason``."""

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason


async def read_pdu(reader: asyncio.StreamReader, limit: int) -> tuple[int, bytes]:
    """One PDU, header included; ProtocolError for an unknown type or one longer than ``limit`` (checked before
    its body is read). Both ends of an association read PDUs this way."""
    header = await reader.readexactly(PDU_HEADER.size)
    pdu_type, _, length = PDU_HEADER.unpack(header)
    if pdu_type not in _PDU_TYPES:
        raise ProtocolError(REASON_UNRECOGNIZED_PDU, f"unrecognised PDU type 0x{pdu_type:02x}")
    if length > limit:
        raise ProtocolError(REASON_INVALID_PARAMETER, f"PDU of {length} bytes exceeds the limit of {limit}")
    return pdu_type, header + await reader.readexactly(length)


def pdvs(body: memoryview, accepted: Container[int]) -> Iterator[tuple[int, memoryview, int]]:
    """The PDVs of a P-DATA-TF body as (presentation context ID, fragment, message control header), the
    fragments views into ``body``; ProtocolError for a truncated PDV or one on a context not ``accepted``."""
    offset, end = 0, len(body)
    while offset < end:
        if end - offset < PDV_HEADER.size:
            raise ProtocolError(REASON_INVALID_PARAMETER, "PDV header truncated")
        length, context_id, control = PDV_HEADER.unpack_from(body, offset)
        if length < 2 or offset + 4 + length > end:
            raise ProtocolError(REASON_INVALID_PARAMETER, "PDV longer than its PDU")
        if context_id not in accepted:
            raise ProtocolError(REASON_INVALID_PARAMETER, f"PDV on presentation context {context_id} "
                                "that was not accepted")
        yield context_id, body[offset + PDV_HEADER.size : offset + 4 + length], control
        offset += 4 + length


class CommandAssembler:
    """A command set gathered from its PDV fragments (all on one presentation context, at most
    ``COMMAND_LIMIT``), decoded once whole; both ends of an association read commands this way."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._context_id = 0

    @property
    def pending(self) -> bool:
        return bool(self._data)

    def add(self, context_id: int, fragment: memoryview, last: bool) -> Command | None:
        """The command once ``last`` completes it; raises ProtocolError for one that cannot be."""
        if self._data and context_id != self._context_id:
            raise ProtocolError(REASON_INVALID_PARAMETER, "command fragments on different contexts")
        self._context_id = context_id
        self._data += fragment
        if len(self._data) > COMMAND_LIMIT:
            raise ProtocolError(REASON_INVALID_PARAMETER, "command set larger than 64 KiB")
        if not last:
            return None
        data, self._data = bytes(self._data), bytearray()
        try:
            return dimse.decode_command(data)
        except ValueError as exc:
            raise ProtocolError(REASON_INVALID_PARAMETER, str(exc)) from exc


@dataclass(slots=True)
class _Request:
    """The request whose data set is arriving: its service's sink, or the response already decided (no
    service, or refused part-way), in which case the rest of the data set is read and dropped."""

    command: Command
    context_id: int
    sink: DataSetSink | None
    response: Response | None = None


@dataclass(slots=True)
class _Running:
    """An operation answering with a stream of responses, running beside the read loop."""

    command: Command
    operation: Operation
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


_DETACHED: set[asyncio.Task[None]] = set()
"""Operations that outlive their association (a C-MOVE whose requestor went away), held until they end."""


class Association:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        policy: acse.AcceptorPolicy,
        services: ServiceRegistry,
        timeouts: Timeouts,
        metrics: Metrics,
        occupancy: acse.Occupancy,
        audit: AuditTrail,
    ) -> None:
        """``occupancy`` counts the acceptor's associations; this one joins it once accepted; ``audit`` hears of
        associations refused (Security Alert)."""
        self._audit = audit
        self._reader = reader
        self._writer = writer
        self._policy = policy
        self._services = services
        self._timeouts = timeouts
        self._metrics = metrics
        self._occupancy = occupancy
        peer = writer.get_extra_info("peername") or ("", 0)
        self._peer_ip = str(peer[0])
        self.peer = f"{peer[0]}:{peer[1]}"
        self.id = uuid.uuid4().hex[:12]
        self.calling_ae = self.called_ae = self.user = ""
        self.caller: Caller | None = None
        self._accepted: acse.Accepted | None = None
        self._command = CommandAssembler()
        self._request: _Request | None = None
        self._running: _Running | None = None
        self._idle: asyncio.Timeout | None = None
        """The read in progress's deadline, re-armed when an operation ends (it was read without one)."""
        self._message_id = 0
        self._responses: dict[int, asyncio.Future[Command]] = {}
        self._on_end: list[Callable[[], None]] = []

    def transfer_syntax(self, context_id: int) -> str:
        assert self._accepted is not None
        return self._accepted.contexts[context_id]

    def on_end(self, callback: Callable[[], None]) -> None:
        self._on_end.append(callback)

    def contexts_as_scu(self, abstract_syntax: str) -> dict[str, int]:
        assert self._accepted is not None
        return {self._accepted.contexts[number]: number for number in sorted(self._accepted.as_scu)
                if self._accepted.abstract_syntaxes[number] == abstract_syntax}

    async def run(self) -> None:
        bind(association=self.id, peer=self.peer)
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
            await self._end()

    async def _end(self) -> None:
        running, self._running = self._running, None
        if running is not None and running.task is not None and not running.task.done():
            if running.operation.detached:
                _DETACHED.add(running.task)
                running.task.add_done_callback(_DETACHED.discard)
                log.info("association ended; its operation goes on", extra={
                    "message_id": running.command.message_id})
            else:
                running.task.cancel()
                await asyncio.gather(running.task, return_exceptions=True)
        for callback in self._on_end:
            try:
                callback()
            except Exception:
                log.exception("association end callback failed")
        for waiting in self._responses.values():
            if not waiting.done():
                waiting.set_exception(ConnectionError("the association ended"))
        request, self._request = self._request, None
        if request is not None and request.sink is not None and request.response is None:
            await request.sink.abort("association ended before the data set was complete")
            log.warning("data set incomplete when the association ended; nothing acknowledged", extra={
                "command_field": f"0x{request.command.command_field:04x}",
                "sop_instance_uid": request.command.affected_sop_instance_uid})
        self._writer.close()

    async def _establish(self) -> None:
        try:
            async with asyncio.timeout(self._timeouts.acse_seconds):
                pdu_type, pdu = await read_pdu(self._reader, ASSOCIATE_RQ_LIMIT)
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
            outcome = acse.negotiate(pdu, self._policy, self._services.contexts_for, self._peer_ip,
                                     self._occupancy)
        except ValueError as exc:
            raise ProtocolError(REASON_INVALID_PARAMETER, str(exc)) from exc
        self.calling_ae, self.called_ae = outcome.calling_ae, outcome.called_ae
        bind(calling_ae=outcome.calling_ae, called_ae=outcome.called_ae)
        await self._send(outcome.pdu)
        if isinstance(outcome, acse.Rejected):
            self._metrics.associations.labels("rejected").inc()
            log.warning("association rejected", extra={"reason": outcome.reason})
            self._audit.note(AuditRecord(
                audit.Event.SECURITY_ALERT, audit.Outcome.MINOR_FAILURE,
                (audit.peer(outcome.calling_ae or "-", self._peer_ip, audit.Role.SOURCE),
                 audit.this_gateway(outcome.called_ae or "-", audit.Role.DESTINATION)),
                audit.Interface.DICOM, audit.Action.EXECUTE, (audit.EventType.ASSOCIATION_REFUSED,),
                outcome_text=f"association rejected: {outcome.reason}"))
            return
        self._accepted = outcome
        self.caller = outcome.caller
        self.user = outcome.user
        self.on_end(self._occupancy.admit(self.calling_ae))
        self._metrics.associations.labels("accepted").inc()
        log.info("association accepted", extra={"contexts": len(outcome.contexts), "user": outcome.user})

    async def _serve(self) -> None:
        while True:
            timeout: float | None = self._timeouts.dimse_seconds if self._request else self._timeouts.network_seconds
            if self._running is not None and self._request is None:
                timeout = None  # the requestor waits for our responses: our side has the timeouts now
            async with asyncio.timeout(timeout) as self._idle:
                pdu_type, pdu = await read_pdu(self._reader, self._policy.max_pdu_length)
            self._idle = None
            if pdu_type == P_DATA_TF:
                await self._p_data(memoryview(pdu)[6:])
            elif pdu_type == A_RELEASE_RQ:
                if self._request is not None:
                    raise ProtocolError(REASON_UNEXPECTED_PDU, "A-RELEASE-RQ in the middle of a data set")
                running = self._running
                if running is not None and running.task is not None:
                    await asyncio.gather(running.task, return_exceptions=True)
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
        for context_id, fragment, control in pdvs(body, self._accepted.contexts):
            if control & 0x01:
                await self._command_fragment(context_id, fragment, last=bool(control & 0x02))
            else:
                await self._data_fragment(context_id, fragment, last=bool(control & 0x02))

    async def _command_fragment(self, context_id: int, fragment: memoryview, last: bool) -> None:
        if self._request is not None:
            raise ProtocolError(REASON_UNEXPECTED_PDU, "command received while a data set was expected")
        command = self._command.add(context_id, fragment, last)
        if command is None:
            return
        if command.command_field & 0x8000:
            self._response(command)
        elif command.command_field == dimse.C_CANCEL_RQ:
            running = self._running
            if running is not None and running.command.message_id == command.message_id:
                log.info("C-CANCEL", extra={"message_id": command.message_id})
                running.cancelled.set()
            else:
                log.info("C-CANCEL for no operation in progress", extra={"message_id": command.message_id})
        elif self._running is not None:
            raise ProtocolError(REASON_UNEXPECTED_PDU, "a request while another is in progress (the asynchronous "
                                "operations window is 1)")
        else:
            await self._dispatch(command, context_id)

    async def _dispatch(self, command: Command, context_id: int) -> None:
        assert self._accepted is not None
        abstract_syntax = self._accepted.abstract_syntaxes[context_id]
        service = self._services.find(command.command_field, abstract_syntax)
        outcome: Response | DataSetSink
        if service is None:
            log.warning("request no service takes", extra={"command_field": f"0x{command.command_field:04x}",
                                                           "abstract_syntax": abstract_syntax})
            outcome = Response(dimse.UNRECOGNIZED_OPERATION, "no such service on this presentation context")
        else:
            try:
                outcome = await service.request(self, command, context_id)
            except DicomStatusError as exc:
                outcome = Response(exc.status, exc.comment)
            except Exception:
                log.exception("service failed on a request", extra={"command_field": f"0x{command.command_field:04x}"})
                outcome = Response(dimse.PROCESSING_FAILURE, "the gateway failed on this request")
        if isinstance(outcome, Response):
            if command.has_data_set:
                self._request = _Request(command, context_id, None, outcome)
            else:
                await self._respond(command, context_id, outcome)
            return
        if not command.has_data_set:
            await outcome.abort("request without a data set")
            raise ProtocolError(REASON_INVALID_PARAMETER,
                                f"request 0x{command.command_field:04x} without the data set it needs")
        self._request = _Request(command, context_id, outcome)

    async def _data_fragment(self, context_id: int, fragment: memoryview, last: bool) -> None:
        request = self._request
        if request is None or context_id != request.context_id:
            raise ProtocolError(REASON_UNEXPECTED_PDU, "data set fragment without a request")
        if request.sink is not None and request.response is None:
            try:
                await request.sink.write(fragment)
            except DicomStatusError as exc:
                request.response = Response(exc.status, exc.comment)
                await request.sink.abort(exc.comment)
        if not last:
            return
        self._request = None
        response: Response | Operation | None = request.response
        if response is None:
            assert request.sink is not None
            try:
                response = await request.sink.finish()
            except DicomStatusError as exc:
                response = Response(exc.status, exc.comment)
                await request.sink.abort(exc.comment)
            except Exception:
                log.exception("service failed on a request", extra={
                    "command_field": f"0x{request.command.command_field:04x}"})
                response = Response(dimse.PROCESSING_FAILURE, "the gateway failed on this request")
        if isinstance(response, Response):
            await self._respond(request.command, request.context_id, response)
        else:
            self._start(request.command, request.context_id, response)

    def _start(self, command: Command, context_id: int, operation: Operation) -> None:
        running = _Running(command, operation)
        self._running = running

        async def run() -> None:
            try:
                async for response in operation.responses(running.cancelled):
                    await self._respond(command, context_id, response)
                    await asyncio.sleep(0)  # let the read loop take a C-CANCEL between responses
            except Exception:
                log.exception("operation failed", extra={"command_field": f"0x{command.command_field:04x}"})
                await self._respond(command, context_id, Response(dimse.UNABLE_TO_PROCESS,
                                                                  "the gateway failed on this request"))
            finally:
                if self._running is running:
                    self._running = None
                    if self._idle is not None and self._idle.when() is None:
                        self._idle.reschedule(asyncio.get_running_loop().time() + self._timeouts.network_seconds)

        running.task = asyncio.create_task(run(), name=f"dimse-operation-{self.id}")

    async def _send(self, data: bytes) -> None:
        if self._writer.is_closing():
            return
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, OSError):
            pass

    def _pdus(self, context_id: int, message: bytes, kind: int, last: bool = True) -> bytes:
        """A command set (``kind`` 1) or data set (0) as P-DATA-TF PDUs, fragmented to the peer's maximum;
        ``last`` false leaves the final fragment unmarked (more of the data set follows)."""
        assert self._accepted is not None
        room = self._accepted.peer_max_pdu - 6 if self._accepted.peer_max_pdu else len(message)
        room = max(room, 1)
        parts: list[bytes | memoryview] = []
        view = memoryview(message)
        for start in range(0, max(len(message), 1), room):
            piece = view[start : start + room]
            control = kind | (0x02 if last and start + room >= len(message) else 0x00)
            parts.append(PDU_HEADER.pack(P_DATA_TF, 0, len(piece) + PDV_HEADER.size)
                         + PDV_HEADER.pack(len(piece) + 2, context_id, control))
            parts.append(piece)
        return b"".join(parts)  # one copy of the message, not two

    async def _respond(self, request: Command, context_id: int, response: Response) -> None:
        command_field = request.command_field | 0x8000
        message = self._pdus(context_id, dimse.response(request, command_field, response.status, response.comment,
                                                        response.data_set is not None, response.counts), 0x01)
        if response.data_set is not None:
            message += self._pdus(context_id, response.data_set, 0x00)
        await self._send(message)
        self._metrics.dimse_statuses.labels(f"0x{command_field:04x}", f"0x{response.status:04x}").inc()

    async def send_request(self, context_id: int, command: Callable[[int], bytes],
                           data_set: bytes | AsyncIterable[bytes] | None, timeout: float) -> Command:
        """Send a request of ours (``command`` builds its command set from the Message ID given; a data set
        given as chunks streams, each chunk's PDUs written before the next is read) and return the peer's
        response; ConnectionError if the association ends first, TimeoutError if none comes."""
        if self._accepted is None or self._writer.is_closing():
            raise ConnectionError("the association is not open")
        self._message_id = self._message_id % 0xFFFF + 1
        message_id = self._message_id
        answered: asyncio.Future[Command] = asyncio.get_running_loop().create_future()
        self._responses[message_id] = answered
        message = self._pdus(context_id, command(message_id), 0x01)
        if isinstance(data_set, bytes):
            message += self._pdus(context_id, data_set, 0x00)
        try:
            await self._send(message)
            if data_set is not None and not isinstance(data_set, bytes):
                try:
                    await self._stream(context_id, data_set, timeout)
                except Exception as exc:
                    # half a data set is on the wire: the peer could not tell it from a whole one
                    log.warning("data set failed part-way; aborting the association",
                                extra={"error": type(exc).__name__})
                    await self._send(abort_pdu(2, REASON_NOT_SPECIFIED))
                    self._writer.close()
                    raise ConnectionAbortedError("the data set failed part-way; association aborted") from exc
            async with asyncio.timeout(timeout):
                return await answered
        finally:
            self._responses.pop(message_id, None)

    async def _stream(self, context_id: int, chunks: AsyncIterable[bytes], timeout: float) -> None:
        """A data set's chunks as P-DATA-TF, one chunk held back so that the last fragment is marked last."""
        held: bytes | None = None
        async for chunk in chunks:
            if not chunk:
                continue
            if held is not None:
                await self._send_fragments(context_id, held, last=False, timeout=timeout)
            held = chunk
        await self._send_fragments(context_id, held or b"", last=True, timeout=timeout)

    async def _send_fragments(self, context_id: int, data: bytes, last: bool, timeout: float) -> None:
        if self._writer.is_closing():
            raise ConnectionError("the association ended")
        message = self._pdus(context_id, data, 0x00, last)
        async with asyncio.timeout(timeout):
            await self._send(message)

    def _response(self, response: Command) -> None:
        answered = self._responses.get(response.message_id)
        if answered is None or answered.done():
            log.warning("a response to no request of ours", extra={"message_id": response.message_id})
            return
        answered.set_result(response)


_REASONS = {
    REASON_NOT_SPECIFIED: "not_specified",
    REASON_UNRECOGNIZED_PDU: "unrecognized_pdu",
    REASON_UNEXPECTED_PDU: "unexpected_pdu",
    REASON_INVALID_PARAMETER: "invalid_parameter",
}
