"""One association as the requestor (PS3.8 upper layer, PS3.7 DIMSE), on an asyncio stream: the counterpart of
``association`` (the acceptor), for sending stored instances on to an archive and asking it to commit them.

A C-STORE's data set comes from an async iterator of chunks (an object store read) and leaves in P-DATA-TF PDUs
cut to the peer's maximum length, each written once the transport has room for it; one chunk is read ahead to
know which PDV is the last, so an instance is never held whole. One reader task per association reads what the
peer sends: it hands each response to the request waiting for it (by Message ID), answers an N-EVENT-REPORT the
peer sends on this association (a storage commitment report) and notices a release or an A-ABORT, upon which
every request still waiting fails at once rather than at its timeout. No asynchronous operations window is
proposed, so it is 1/1 and our requests go one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ, A_RELEASE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext

from gateway.dicom import acse, association, dimse
from gateway.dicom.association import PDU_HEADER, PDV_HEADER, CommandAssembler, ProtocolError, pdvs, read_pdu
from gateway.dicom.dimse import Command

log = logging.getLogger(__name__)

_DRAIN_AT = 512 * 1024
"""Bytes the transport may hold before a PDU waits for it to drain (memory stays bounded by about this)."""
MAX_CONTEXTS = 128
"""Presentation context IDs are the odd numbers 1 to 255 (PS3.8 9.3.2.2)."""
UNLIMITED_PDV_BYTES = 1024 * 1024
"""Data per PDV when the peer sets no maximum length (0): one PDU a chunk rather than one for the instance."""
DATA_SET_LIMIT = 32 * 1024 * 1024
"""A data set the peer sends us is held whole: a storage commitment report of 100,000 references fits."""
ASSOCIATE_AC_LIMIT = 64 * 1024
"""An A-ASSOCIATE-AC answering 128 contexts is a few kilobytes."""
ABORT_GRACE_SECONDS = 1.0
"""How long an A-ABORT may take to leave before the connection is dropped: the peer may be why we abort."""

_COMMAND, _LAST = 0x01, 0x02
_RELEASE_RQ = bytes(A_RELEASE_RQ().encode())
_REJECT_REASONS = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised",
    (1, 7): "called AE title not recognised",
    (2, 1): "no reason given",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}
"""A-ASSOCIATE-RJ (source, reason/diagnostic), PS3.8 9.3.4."""


class AssociationRejected(ConnectionError):
    """A-ASSOCIATE-RJ. ``permanent`` (result 1) says asking again unchanged will not help; a transient rejection
    (result 2: congestion, too many associations) may pass later."""

    def __init__(self, result: int, source: int, diagnostic: int) -> None:
        self.result, self.source, self.diagnostic = result, source, diagnostic
        self.permanent = result == 0x01
        self.reason = _REJECT_REASONS.get((source, diagnostic), f"source {source}, diagnostic {diagnostic}")
        super().__init__(f"association rejected ({'permanent' if self.permanent else 'transient'}): {self.reason}")


class AssociationAborted(ConnectionError):
    """The association ended before the request was answered: A-ABORT (from the peer, or ours when it broke the
    protocol or a request could not be completed) or a lost connection. What the peer kept is unknown."""


@dataclass(frozen=True, slots=True)
class Peer:
    host: str
    port: int
    ae_title: str


@dataclass(frozen=True, slots=True)
class DimseResult:
    status: int
    comment: str = ""
    """Error Comment (0000,0902), if the peer gave one."""
    command: Command | None = None


EventReportHandler = Callable[[Command, bytes], Awaitable[int]]
"""An N-EVENT-REPORT-RQ arriving on this association (a storage commitment report on the same association): given
the command and its whole data set (small), returns the status to answer. Raising aborts the association, so
that the peer sends the report again rather than taking a failure status as final."""


@dataclass(slots=True)
class _Incoming:
    """A message whose data set is arriving."""

    command: Command
    context_id: int
    data: bytearray = field(default_factory=bytearray)


async def open_association(
    peer: Peer,
    calling_ae: str,
    contexts: Sequence[tuple[str, Sequence[str]]],
    *,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
    max_pdu_length: int = 262_144,
    scp_roles: Collection[str] = (),
    on_event_report: EventReportHandler | None = None,
) -> RequestorAssociation:
    """Connect and negotiate within ``timeout``, proposing ``contexts`` (abstract syntax, transfer syntaxes) with
    IDs 1, 3, 5… in their order, and SCP/SCU Role Selection (both roles) for ``scp_roles``, so that the peer may
    report on this association. ``timeout`` is also how long an answer to the peer's requests may take to leave.

    Raises AssociationRejected, AssociationAborted, TimeoutError or the connection's OSError (refused,
    unreachable, TLS); the socket is closed on every failure."""
    if not 0 < len(contexts) <= MAX_CONTEXTS:
        raise ValueError(f"{len(contexts)} presentation contexts proposed: 1 to {MAX_CONTEXTS} may be")
    request = _associate_rq(peer.ae_title, calling_ae, contexts, max_pdu_length, scp_roles)
    fields = {"peer": f"{peer.host}:{peer.port}", "called_ae": peer.ae_title, "calling_ae": calling_ae}
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                peer.host, peer.port, ssl=ssl_context, server_hostname=peer.host if ssl_context else None)
            writer.write(request)
            await writer.drain()
            pdu_type, pdu = await read_pdu(reader, ASSOCIATE_AC_LIMIT)
        if pdu_type == association.A_ASSOCIATE_RJ and len(pdu) >= 10:
            raise AssociationRejected(pdu[7], pdu[8], pdu[9])
        if pdu_type == association.A_ABORT:
            raise AssociationAborted("the peer aborted the association request")
        if pdu_type != association.A_ASSOCIATE_AC:
            raise ProtocolError(association.REASON_UNEXPECTED_PDU,
                                 f"PDU type 0x{pdu_type:02x} in answer to A-ASSOCIATE-RQ")
        accepted, peer_max_pdu = _negotiated(pdu, contexts)
    except AssociationRejected as exc:
        log.warning("association rejected", extra={**fields, "reason": exc.reason, "permanent": exc.permanent})
        _close(writer)
        raise
    except ProtocolError as exc:
        log.warning("the peer broke the protocol while associating, aborting", extra={**fields, "reason": str(exc)})
        if writer is not None:
            writer.write(association.abort_pdu(2, exc.reason))
        _close(writer)
        raise AssociationAborted(str(exc)) from exc
    except asyncio.IncompleteReadError as exc:
        _close(writer)
        raise AssociationAborted("the peer closed the connection instead of answering A-ASSOCIATE-RQ") from exc
    except BaseException:
        _close(writer)
        raise
    established = RequestorAssociation(reader, writer, accepted, peer_max_pdu, max_pdu_length, timeout,
                                       on_event_report, fields)
    log.info("association established", extra={**fields, "association": established.id,
                                               "contexts": len(accepted), "peer_max_pdu": peer_max_pdu})
    return established


def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        writer.close()


def _associate_rq(called_ae: str, calling_ae: str, contexts: Sequence[tuple[str, Sequence[str]]],
                  max_pdu_length: int, scp_roles: Collection[str]) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = acse.APPLICATION_CONTEXT
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = called_ae
    proposed = []
    for number, (abstract_syntax, transfer_syntaxes) in enumerate(contexts):
        context = PresentationContext()
        context.context_id = 2 * number + 1
        context.abstract_syntax = abstract_syntax
        context.transfer_syntax = list(transfer_syntaxes)
        proposed.append(context)
    primitive.presentation_context_definition_list = proposed
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu_length
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = acse.IMPLEMENTATION_CLASS_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = acse.IMPLEMENTATION_VERSION
    roles = []
    for abstract_syntax in dict.fromkeys(scp_roles):
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = abstract_syntax
        role.scu_role = role.scp_role = True
        roles.append(role)
    primitive.user_information = [max_length, class_uid, version, *roles]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def _negotiated(pdu: bytes, contexts: Sequence[tuple[str, Sequence[str]]]) -> tuple[dict[int, tuple[str, str]], int]:
    """The accepted contexts of an A-ASSOCIATE-AC (ID -> abstract syntax, transfer syntax) and the peer's
    maximum PDU length (0 = unlimited)."""
    answer = A_ASSOCIATE_AC()
    try:
        answer.decode(pdu)
        primitive = answer.to_primitive()
    except Exception as exc:
        raise ProtocolError(association.REASON_INVALID_PARAMETER, f"A-ASSOCIATE-AC does not decode: {exc}") from exc
    accepted: dict[int, tuple[str, str]] = {}
    for result in primitive.presentation_context_definition_results_list:
        number = (result.context_id or 0) - 1
        if result.result != 0x00 or number % 2 or not 0 <= number // 2 < len(contexts) or not result.transfer_syntax:
            continue
        abstract_syntax, transfer_syntaxes = contexts[number // 2]
        transfer_syntax = str(result.transfer_syntax[0])
        if transfer_syntax not in transfer_syntaxes:
            raise ProtocolError(association.REASON_INVALID_PARAMETER,
                                 f"context {result.context_id} accepted with a transfer syntax not proposed")
        accepted[number + 1] = (abstract_syntax, transfer_syntax)
    peer_max_pdu = next((item.maximum_length_received or 0 for item in primitive.user_information
                         if isinstance(item, MaximumLengthNotification)), 0)
    return accepted, peer_max_pdu


class RequestorAssociation:
    """An established association on which we are the requestor; ``release`` it, or use it with ``async with``
    (released on leaving, aborted when leaving with an exception)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 accepted: dict[int, tuple[str, str]], peer_max_pdu: int, max_pdu_length: int, timeout: float,
                 on_event_report: EventReportHandler | None, fields: dict[str, str]) -> None:
        self.peer_max_pdu = peer_max_pdu
        """Largest P-DATA-TF the peer accepts (0 = unlimited)."""
        self.id = uuid.uuid4().hex[:12]
        self._reader = reader
        self._writer = writer
        self._accepted = accepted
        self._read_limit = max_pdu_length or 0xFFFFFFFF
        self._timeout = timeout
        self._on_event_report = on_event_report
        self._fields = {**fields, "association": self.id}
        self._room = max(peer_max_pdu - PDV_HEADER.size, 1) if peer_max_pdu else UNLIMITED_PDV_BYTES
        self._message_id = 0
        self._requesting = asyncio.Lock()
        """One request of ours at a time (the 1/1 operations window)."""
        self._writing = asyncio.Lock()
        """One message at a time on the wire: a response of ours waits for a C-STORE being sent."""
        self._responses: dict[int, tuple[int, asyncio.Future[DimseResult]]] = {}
        """Message ID -> (response Command Field expected, its future)."""
        self._command = CommandAssembler()
        self._incoming: _Incoming | None = None
        self._serving: set[asyncio.Task[None]] = set()
        self._releasing = False
        self._ended = asyncio.Event()
        self._end_reason = ""
        self._reading = asyncio.create_task(self._read(), name=f"association-{self.id}")

    def accepted(self) -> dict[int, tuple[str, str]]:
        """Context ID -> (abstract syntax, transfer syntax) of the accepted contexts only."""
        return dict(self._accepted)

    def context_for(self, abstract_syntax: str, transfer_syntax: str) -> int | None:
        return next((number for number, accepted in self._accepted.items()
                     if accepted == (abstract_syntax, transfer_syntax)), None)

    def contexts(self, abstract_syntax: str) -> dict[str, int]:
        """Transfer syntax -> context ID of the contexts accepted for ``abstract_syntax``, in context order."""
        return {transfer_syntax: number for number, (accepted, transfer_syntax) in sorted(self._accepted.items())
                if accepted == abstract_syntax}

    def accepted_syntaxes(self, abstract_syntax: str) -> list[str]:
        """The transfer syntaxes accepted for ``abstract_syntax``, in context order."""
        return list(dict.fromkeys(transfer_syntax for _, (accepted, transfer_syntax) in sorted(self._accepted.items())
                                  if accepted == abstract_syntax))

    async def c_store(self, context_id: int, sop_class_uid: str, sop_instance_uid: str,
                      data_set: AsyncIterable[bytes], *, timeout: float, priority: int = 0,
                      move_originator: tuple[str, int] | None = None) -> DimseResult:
        """Send one instance and return the peer's response. ``data_set`` is the data set without file meta, in
        the context's transfer syntax; ``timeout`` bounds each write and the wait for the response.

        Raises ValueError before anything is sent (context not accepted, empty data set), AssociationAborted,
        or TimeoutError; after a timeout, or when ``data_set`` fails part-way, the association is aborted (the
        peer cannot tell a half-sent data set from a whole one otherwise), and that error is raised."""
        self._check_context(context_id)
        chunks = aiter(data_set)
        first = b""
        while not first:
            chunk = await anext(chunks, None)
            if chunk is None:
                raise ValueError("an empty data set cannot be stored")
            first = chunk
        result = await self._request(
            context_id, dimse.C_STORE_RSP,
            lambda message_id: dimse.c_store_rq(message_id, sop_class_uid, sop_instance_uid, priority,
                                                move_originator),
            _ahead(first, chunks), timeout)
        log.debug("C-STORE answered", extra={**self._fields, "sop_instance_uid": sop_instance_uid,
                                             "status": f"0x{result.status:04x}"})
        return result

    async def n_action(self, context_id: int, sop_class_uid: str, sop_instance_uid: str, action_type: int,
                       data_set: bytes, *, timeout: float) -> DimseResult:
        """An N-ACTION (a storage commitment request) with its Action Information encoded in the context's
        transfer syntax (empty: none); errors as for ``c_store``."""
        self._check_context(context_id)
        return await self._request(
            context_id, dimse.N_ACTION_RSP,
            lambda message_id: dimse.n_action_rq(message_id, sop_class_uid, sop_instance_uid, action_type,
                                            bool(data_set)),
            _once(data_set) if data_set else None, timeout)

    async def wait_for_event_reports(self, seconds: float) -> None:
        """Keep the association open, answering the peer's N-EVENT-REPORTs, for ``seconds``, or until the peer
        releases or aborts it."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._ended.wait()

    async def release(self, timeout: float) -> None:
        """A-RELEASE; aborted instead when the peer does not answer within ``timeout``. Nothing to do once the
        association has ended."""
        if not self._ended.is_set():
            self._releasing = True
            try:
                async with asyncio.timeout(timeout):
                    async with self._writing:
                        self._writer.write(_RELEASE_RQ)
                        await self._writer.drain()
                    await self._ended.wait()
            except TimeoutError:
                log.warning("no A-RELEASE-RP in time, aborting", extra=self._fields)
                await self.abort()
                return
            except OSError:
                pass  # the connection is gone, which is what a release ends with
        await self._reading

    async def abort(self) -> None:
        """A-ABORT and close; a peer that does not take it within ``ABORT_GRACE_SECONDS`` is cut off."""
        self._abort_now(source=0, reason=association.REASON_NOT_SPECIFIED)
        done, _ = await asyncio.wait({self._reading}, timeout=ABORT_GRACE_SECONDS)
        if not done:
            self._writer.transport.abort()
            await self._reading

    async def __aenter__(self) -> RequestorAssociation:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        if exc_type is None:
            await self.release(self._timeout)
        else:
            await self.abort()

    def _check_context(self, context_id: int) -> None:
        if context_id not in self._accepted:
            raise ValueError(f"presentation context {context_id} was not accepted")

    async def _request(self, context_id: int, response_field: int, command: Callable[[int], bytes],
                       data_set: AsyncIterator[bytes] | None, timeout: float) -> DimseResult:
        async with self._requesting:
            if self._ended.is_set():
                raise AssociationAborted(self._end_reason)
            self._message_id = self._message_id % 0xFFFF + 1
            message_id = self._message_id
            message = command(message_id)
            answered: asyncio.Future[DimseResult] = asyncio.get_running_loop().create_future()
            self._responses[message_id] = (response_field, answered)
            try:
                await self._send_message(context_id, message, data_set, timeout)
                async with asyncio.timeout(timeout):
                    return await answered
            except AssociationAborted:
                raise
            except BaseException as exc:
                log.warning("request not completed, aborting the association",
                            extra={**self._fields, "error": type(exc).__name__})
                await self.abort()
                raise
            finally:
                self._responses.pop(message_id, None)
                if answered.done() and not answered.cancelled():
                    answered.exception()  # retrieved: a failure already surfaced another way

    async def _send_message(self, context_id: int, command: bytes, data_set: AsyncIterator[bytes] | None,
                            timeout: float) -> None:
        async with self._writing:
            for piece, last in _fragments(command, self._room):
                await self._pdv(context_id, _COMMAND | (_LAST if last else 0), piece, timeout)
            if data_set is not None:
                await self._send_data_set(context_id, data_set, timeout)

    async def _send_data_set(self, context_id: int, chunks: AsyncIterator[bytes], timeout: float) -> None:
        """Full PDVs as the chunks come, holding back the last 1 to ``room`` bytes until the next chunk shows
        whether they end the data set."""
        room = self._room
        held = b""
        async for chunk in chunks:
            view = memoryview(chunk)
            if held:
                take = room - len(held)
                if len(view) <= take:
                    held += chunk
                    continue
                await self._pdv(context_id, 0, held + view[:take], timeout)
                view = view[take:]
            whole = (len(view) - 1) // room * room
            for start in range(0, whole, room):
                await self._pdv(context_id, 0, view[start : start + room], timeout)
            held = bytes(view[whole:])
        await self._pdv(context_id, _LAST, held, timeout)

    async def _pdv(self, context_id: int, control: int, data: bytes | memoryview, timeout: float) -> None:
        """One P-DATA-TF PDU of one PDV, waiting until the transport has room for more."""
        if self._ended.is_set() or self._writer.is_closing():
            raise AssociationAborted(self._end_reason or "the association is closing")
        self._writer.write(PDU_HEADER.pack(association.P_DATA_TF, 0, len(data) + PDV_HEADER.size)
                           + PDV_HEADER.pack(len(data) + 2, context_id, control))
        self._writer.write(data)
        if self._writer.transport.get_write_buffer_size() < _DRAIN_AT:
            return  # the transport took it or holds little: waiting on it per PDU only costs
        try:
            async with asyncio.timeout(timeout):
                await self._writer.drain()
        except TimeoutError:
            raise
        except OSError as exc:
            raise AssociationAborted(self._end_reason or "the connection was lost") from exc

    def _abort_now(self, source: int, reason: int) -> None:
        """Send A-ABORT and close; the reader then sees the connection end and fails what is pending."""
        if self._ended.is_set() or self._writer.is_closing():
            return
        self._end_reason = self._end_reason or "the association was aborted"
        self._writer.write(association.abort_pdu(source, reason))
        self._writer.close()

    async def _read(self) -> None:
        reason = "the connection was lost"
        try:
            reason = await self._serve()
        except ProtocolError as exc:
            log.warning("the peer broke the protocol, aborting", extra={**self._fields, "reason": str(exc)})
            reason = f"aborted: {exc}"
            self._abort_now(source=2, reason=exc.reason)
        except (asyncio.IncompleteReadError, OSError) as exc:
            if not self._writer.is_closing():
                log.warning("connection lost", extra={**self._fields, "error": type(exc).__name__})
        finally:
            self._end(reason)

    async def _serve(self) -> str:
        """Read PDUs until the association ends; returns how it ended."""
        while True:
            pdu_type, pdu = await read_pdu(self._reader, self._read_limit)
            if pdu_type == association.P_DATA_TF:
                self._p_data(memoryview(pdu)[PDU_HEADER.size :])
            elif pdu_type == association.A_RELEASE_RQ:
                if self._releasing:
                    # release collision (PS3.8 7.2.2): the requestor answers, then waits for the acceptor's RP
                    self._writer.write(association.RELEASE_RP)
                    continue
                if not self._idle():
                    raise ProtocolError(association.REASON_UNEXPECTED_PDU, "A-RELEASE-RQ while a message is open")
                self._writer.write(association.RELEASE_RP)
                log.info("association released by the peer", extra=self._fields)
                return "the peer released the association"
            elif pdu_type == association.A_RELEASE_RP_TYPE and self._releasing:
                log.info("association released", extra=self._fields)
                return "the association was released"
            elif pdu_type == association.A_ABORT:
                log.warning("association aborted by the peer", extra=self._fields)
                return "the peer aborted the association"
            else:
                raise ProtocolError(association.REASON_UNEXPECTED_PDU, f"unexpected PDU type 0x{pdu_type:02x}")

    def _idle(self) -> bool:
        return (self._incoming is None and not self._command.pending and not self._serving and not self._writing.locked()
                and all(answered.done() for _, answered in self._responses.values()))

    def _end(self, reason: str) -> None:
        self._end_reason = self._end_reason or reason
        self._ended.set()
        for _, answered in self._responses.values():
            if not answered.done():
                answered.set_exception(AssociationAborted(self._end_reason))
        for task in list(self._serving):
            task.cancel()
        self._writer.close()

    def _p_data(self, body: memoryview) -> None:
        for context_id, fragment, control in pdvs(body, self._accepted):
            if control & _COMMAND:
                self._command_fragment(context_id, fragment, last=bool(control & _LAST))
            else:
                self._data_fragment(context_id, fragment, last=bool(control & _LAST))

    def _command_fragment(self, context_id: int, fragment: memoryview, last: bool) -> None:
        if self._incoming is not None:
            raise ProtocolError(association.REASON_UNEXPECTED_PDU, "command received while a data set was expected")
        command = self._command.add(context_id, fragment, last)
        if command is None:
            return
        if command.has_data_set:
            self._incoming = _Incoming(command, context_id)
        else:
            self._message(command, context_id, b"")

    def _data_fragment(self, context_id: int, fragment: memoryview, last: bool) -> None:
        incoming = self._incoming
        if incoming is None or context_id != incoming.context_id:
            raise ProtocolError(association.REASON_UNEXPECTED_PDU, "data set fragment without its command")
        incoming.data += fragment
        if len(incoming.data) > DATA_SET_LIMIT:
            raise ProtocolError(association.REASON_INVALID_PARAMETER, f"data set over {DATA_SET_LIMIT} bytes")
        if last:
            self._incoming = None
            self._message(incoming.command, context_id, bytes(incoming.data))

    def _message(self, command: Command, context_id: int, data: bytes) -> None:
        if command.command_field & 0x8000:
            self._response(command)
            return
        task = asyncio.create_task(self._answer(command, context_id, data))
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    def _response(self, response: Command) -> None:
        pending = self._responses.get(response.message_id)
        if pending is None or pending[1].done():
            log.warning("a response to no request of ours", extra={**self._fields, "message_id": response.message_id})
            return
        expected, answered = pending
        status = response.unsigned(dimse.STATUS)
        if response.command_field != expected or status is None:
            raise ProtocolError(association.REASON_INVALID_PARAMETER,
                                 f"response 0x{response.command_field:04x} without a status or to another request")
        answered.set_result(DimseResult(status, response.text(dimse.ERROR_COMMENT), response))

    async def _answer(self, request: Command, context_id: int, data: bytes) -> None:
        """Serve a request of the peer's: an N-EVENT-REPORT through the handler; anything else is refused."""
        if request.command_field == dimse.N_EVENT_REPORT_RQ and self._on_event_report is not None:
            try:
                status = await self._on_event_report(request, data)
            except Exception as exc:
                log.warning("event report not taken, aborting so that the peer sends it again",
                            extra={**self._fields, "error": type(exc).__name__})
                self._abort_now(source=0, reason=association.REASON_NOT_SPECIFIED)
                return
        else:
            log.warning("a request we do not serve", extra={**self._fields,
                                                           "command_field": f"0x{request.command_field:04x}"})
            status = dimse.UNRECOGNIZED_OPERATION
        response = dimse.response(request, request.command_field | 0x8000, status)
        try:
            await self._send_message(context_id, response, None, self._timeout)
        except AssociationAborted:
            log.warning("association ended before our response left", extra=self._fields)
        except TimeoutError:
            log.warning("the peer does not read our response, aborting", extra=self._fields)
            self._abort_now(source=0, reason=association.REASON_NOT_SPECIFIED)


def _fragments(message: bytes, room: int) -> Iterator[tuple[memoryview, bool]]:
    view = memoryview(message)
    for start in range(0, len(view), room):
        yield view[start : start + room], start + room >= len(view)


async def _ahead(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
