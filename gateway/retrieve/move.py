"""C-MOVE and C-GET SCP (PS3.4 C.4.2, C.4.3), Patient Root and Study Root: the matched instances sent as C-STORE
sub-operations, streamed from the object store in their stored transfer syntax, or converted losslessly where the
receiver accepted only another (``contexts.choose``); never lossy.

C-MOVE sends on a new association to the Move Destination, which must be one of ``dicom.remote_aes`` (else
0xA801, and no association is tried); C-GET sends back on the requestor's own association, on the storage
contexts it proposed with the SCP role. A pending response follows every sub-operation with the counts. The
final status is 0x0000 when all completed, 0xB000 (with the Failed SOP Instance UID List) when some failed or
were stored with warnings, 0xA702 when none could be sent (the destination refused the association, say), and
0xFE00 after a C-CANCEL, whose remaining instances are not sent. A C-MOVE whose requestor goes away runs on to
the end (as dcm4chee does): the destination still receives everything the requestor asked for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from pydicom.dataset import Dataset

from gateway.core import audit
from gateway.core.audit import AuditTrail
from gateway.core.errors import describe
from gateway.core.query import (
    GET_PATIENT_ROOT,
    GET_STUDY_ROOT,
    MOVE_PATIENT_ROOT,
    MOVE_STUDY_ROOT,
    InvalidQuery,
    Level,
    Query,
)
from gateway.dicom import contexts, dimse
from gateway.dicom.dataset import encode
from gateway.dicom.dimse import Command, SubOperations
from gateway.dicom.requestor import Peer, RequestorAssociation, open_association
from gateway.dicom.scu import Outbound, RemoteAE, client_tls_context
from gateway.dicom.service import (
    VERIFICATION,
    AssociationContext,
    DataSetSink,
    Operation,
    Response,
    WholeDataSet,
    permits,
    requestor,
)
from gateway.dicom.transcode import CannotTranscode, NotPart10, open_part10, transcode, with_patient
from gateway.index import IndexFailure, Stored
from gateway.metrics import Metrics
from gateway.objects import ChunkStream, ObjectNotFound, ObjectStoreError
from gateway.retrieve import Holdings, stored_instances
from gateway.retrieve.disclosure import Transfer, by_patient, instance_classes
from gateway.retrieve.find import IDENTIFIER_LIMIT, QUERY_SYNTAXES, read_identifier
from gateway.settings import QuerySettings

log = logging.getLogger(__name__)



class RetrieveService:
    command_fields = frozenset({dimse.C_MOVE_RQ, dimse.C_GET_RQ})

    def __init__(self, holdings: Holdings, settings: QuerySettings, outbound: Outbound, metrics: Metrics,
                 audit: AuditTrail) -> None:
        self._audit = audit
        self._holdings = holdings
        self._settings = settings
        self._outbound = outbound
        self._metrics = metrics

    def abstract_syntaxes(self) -> Mapping[str, Sequence[str]]:
        return {uid: QUERY_SYNTAXES for uid in (MOVE_PATIENT_ROOT, MOVE_STUDY_ROOT, GET_PATIENT_ROOT, GET_STUDY_ROOT)}

    async def request(self, association: AssociationContext, request: Command,
                      context_id: int) -> Response | DataSetSink:
        what = "C-MOVE" if request.command_field == dimse.C_MOVE_RQ else "C-GET"
        if not permits(association, "retrieve"):
            log.warning(f"{what} refused: the calling AE may not retrieve")
            return Response(dimse.NOT_AUTHORIZED, "this AE may not retrieve")
        return WholeDataSet(what, "Identifier", lambda data: self._retrieve(association, request, context_id, data),
                            IDENTIFIER_LIMIT, dimse.OUT_OF_RESOURCES)

    async def _retrieve(self, association: AssociationContext, request: Command, context_id: int,
                        data: bytes) -> Response | Operation:
        moving = request.command_field == dimse.C_MOVE_RQ
        syntax = association.transfer_syntax(context_id)
        try:
            query = read_identifier(data, syntax, request.affected_sop_class_uid,
                                    self._settings.case_insensitive_names, retrieve=True)
        except InvalidQuery as exc:
            log.warning("retrieve refused", extra={"reason": str(exc)})
            return Response(dimse.IDENTIFIER_DOES_NOT_MATCH, str(exc))
        destination: RemoteAE | None = None
        if moving:
            name = request.text(dimse.MOVE_DESTINATION).strip()
            destination = self._outbound.resolve(name)
            if destination is None:
                log.warning("C-MOVE refused: unknown move destination", extra={"move_destination": name})
                return Response(dimse.MOVE_DESTINATION_UNKNOWN, f"unknown move destination {name}")
        try:
            instances = await self._matches(Query(query.model, Level.IMAGE, query.conditions))
        except IndexFailure as exc:
            log.error("retrieve failed: the index is unavailable", extra={"error": describe(exc)})
            return Response(dimse.OUT_OF_RESOURCES, "the index is unavailable")
        if instances is None:
            return Response(dimse.CANNOT_CALCULATE_MATCHES,
                            f"more than {self._settings.max_retrieve_instances} instances match")
        log.info("C-MOVE" if moving else "C-GET", extra={
            "level": query.level, "instances": len(instances),
            "move_destination": destination.ae_title if destination else None})
        gateway = audit.this_gateway(association.called_ae, audit.Role.SOURCE)
        participants: tuple[audit.Participant, ...]
        if destination is not None:
            participants = (dataclasses.replace(requestor(association), role=None), gateway,
                            audit.peer(destination.ae_title, destination.host, audit.Role.DESTINATION, False))
        else:
            participants = (dataclasses.replace(requestor(association), role=audit.Role.DESTINATION), gateway)
        try:
            transfer = Transfer(self._audit, audit.Interface.C_MOVE if moving else audit.Interface.C_GET,
                                participants, destination.ae_title if destination else association.calling_ae,
                                await by_patient(await self._holdings.index(), instance_classes(instances)))
            await transfer.begin()
        except Exception as exc:
            log.error("retrieve refused: it could not be audited", extra={"error": describe(exc)})
            return Response(dimse.OUT_OF_RESOURCES, "the audit trail is unavailable")
        if destination is not None:
            return _Retrieval(self, instances, syntax, "c-move", self._moving(destination, instances, (
                association.calling_ae, request.message_id)), transfer, detached=True)
        return _Retrieval(self, instances, syntax, "c-get", _on_requestor(association, self._outbound.timeout),
                          transfer, detached=False)

    async def _matches(self, images: Query) -> list[Stored] | None:
        """Where the matched instances are; None when more match than one retrieve may send."""
        index = await self._holdings.index()
        limit = self._settings.max_retrieve_instances
        if await index.count_matches(images, limit + 1) > limit:
            return None
        return await stored_instances(index, images)

    def _moving(self, destination: RemoteAE, instances: Sequence[Stored],
                originator: tuple[str, int]) -> AbstractAsyncContextManager[_Target]:
        outbound = self._outbound

        @asynccontextmanager
        async def target() -> AsyncIterator[_Target]:
            proposed = contexts.propose(
                contexts.stored_syntaxes((s.sop_class_uid, s.transfer_syntax_uid) for s in instances), (),
                contexts.MAX_CONTEXTS - 1)
            proposed.append((VERIFICATION, [contexts.UNCOMPRESSED[1]]))
            association = await open_association(
                Peer(destination.host, destination.port, destination.ae_title), outbound.ae_title, proposed,
                timeout=outbound.timeout, ssl_context=client_tls_context(outbound.tls) if destination.tls else None)
            try:
                yield _OnDestination(association, outbound.timeout, originator)
            except BaseException:
                await association.abort()
                raise
            await association.release(outbound.timeout)

        return target()

    def count(self, interface: str, outcome: str, size: int) -> None:
        self._metrics.retrieved.labels(interface, outcome).inc()
        if outcome != "failed":
            self._metrics.retrieved_bytes.labels(interface).inc(size)

    @property
    def holdings(self) -> Holdings:
        return self._holdings


class _Target(Protocol):
    """Where sub-operations go: the Move Destination's association, or the C-GET requestor's own."""

    def contexts(self, sop_class_uid: str) -> dict[str, int]: ...

    async def c_store(self, context_id: int, stored: Stored, data_set: AsyncIterator[bytes]) -> int:
        """The C-STORE-RSP status; ConnectionError or TimeoutError when the association is gone."""
        ...


@dataclass(frozen=True, slots=True)
class _OnDestination:
    association: RequestorAssociation
    timeout: float
    originator: tuple[str, int]

    def contexts(self, sop_class_uid: str) -> dict[str, int]:
        return self.association.contexts(sop_class_uid)

    async def c_store(self, context_id: int, stored: Stored, data_set: AsyncIterator[bytes]) -> int:
        result = await self.association.c_store(context_id, stored.sop_class_uid, stored.sop_instance_uid, data_set,
                                                timeout=self.timeout, move_originator=self.originator)
        return result.status


@dataclass(frozen=True, slots=True)
class _OnRequestor:
    association: AssociationContext
    timeout: float

    def contexts(self, sop_class_uid: str) -> dict[str, int]:
        return self.association.contexts_as_scu(sop_class_uid)

    async def c_store(self, context_id: int, stored: Stored, data_set: AsyncIterator[bytes]) -> int:
        response = await self.association.send_request(
            context_id, lambda message_id: dimse.c_store_rq(message_id, stored.sop_class_uid,
                                                            stored.sop_instance_uid, 0),
            data_set, self.timeout)
        return response.unsigned(dimse.STATUS) or 0


@asynccontextmanager
async def _on_requestor(association: AssociationContext, timeout: float) -> AsyncIterator[_Target]:
    yield _OnRequestor(association, timeout)


class _Retrieval:
    def __init__(self, service: RetrieveService, instances: list[Stored], transfer_syntax: str, interface: str,
                 target: AbstractAsyncContextManager[_Target], transfer: Transfer, detached: bool) -> None:
        self._transfer = transfer
        self._service = service
        self._instances = instances
        self._syntax = transfer_syntax
        self._interface = interface
        self._target = target
        self.detached = detached

    async def responses(self, cancelled: asyncio.Event) -> AsyncIterator[Response]:
        progress = _Progress(remaining=len(self._instances))
        if not self._instances:
            await self._transfer.end(0, 0)
            yield progress.final(False, self._syntax)
            return
        objects = self._service.holdings.objects()
        opening: asyncio.Task[ChunkStream] | None = None
        try:
            async with self._target as target:
                for position, stored in enumerate(self._instances):
                    if cancelled.is_set():
                        break
                    opened = opening or asyncio.ensure_future(objects.read(stored.storage_key))
                    opening = None
                    if position + 1 < len(self._instances):  # opened while this one is sent and answered
                        opening = asyncio.ensure_future(objects.read(self._instances[position + 1].storage_key))
                    outcome, reason = await _send_one(opened, stored, target)
                    progress.count(stored.sop_instance_uid, outcome)
                    self._service.count(self._interface, outcome, stored.size)
                    if outcome == "failed":
                        log.warning("retrieve sub-operation failed", extra={
                            "sop_instance_uid": stored.sop_instance_uid, "reason": reason})
                    if progress.remaining:
                        yield Response(dimse.PENDING, counts=progress.counts(final=False))
        except (OSError, TimeoutError) as exc:
            reason = f"cannot send: {describe(exc)}"
            log.warning("retrieve stopped", extra={"reason": reason, "interface": self._interface})
            progress.fail_rest(self._instances, reason)
        finally:
            if opening is not None:
                _discard(opening)
        try:
            await self._transfer.end(progress.completed + progress.warning, progress.failed, progress.broken)
        except Exception as exc:
            log.error("the end of a retrieve could not be audited", extra={"error": describe(exc)})
        yield progress.final(cancelled.is_set(), self._syntax)


def _discard(opening: asyncio.Task[ChunkStream]) -> None:
    """Close an object opened ahead that will not be sent, whenever its opening ends."""

    def close(task: asyncio.Task[ChunkStream]) -> None:
        if not task.cancelled() and task.exception() is None:
            _CLOSING.add(closing := asyncio.ensure_future(task.result().aclose()))
            closing.add_done_callback(_CLOSING.discard)

    opening.add_done_callback(close)


_CLOSING: set[asyncio.Future[None]] = set()


async def _send_one(opened: asyncio.Future[ChunkStream], stored: Stored, target: _Target) -> tuple[str, str]:
    """One sub-operation, its object being opened by ``opened``: (completed | warning | failed, why it failed).
    Raises OSError or TimeoutError when the association is gone, since the rest cannot go either."""
    try:
        chunks = await opened
    except ObjectNotFound:
        return "failed", "the stored object is missing from the object store"
    except ObjectStoreError as exc:
        return "failed", f"object store: {describe(exc)}"
    try:
        try:
            meta, data_set = await open_part10(chunks)
        except NotPart10 as exc:
            return "failed", f"the stored object is not a Part 10 file: {exc}"
        if stored.patient is not None:
            data_set = with_patient(data_set, meta.transfer_syntax_uid, stored.patient)
        chosen = contexts.choose(target.contexts(stored.sop_class_uid), meta.transfer_syntax_uid)
        if chosen is None:
            return "failed", f"no accepted context for {stored.sop_class_uid} in {meta.transfer_syntax_uid} or a " \
                             "lossless conversion of it"
        context_id, syntax = chosen
        stream = data_set if syntax == meta.transfer_syntax_uid else \
            transcode(data_set, meta.transfer_syntax_uid, syntax)
        try:
            status = await target.c_store(context_id, stored, stream)
        except (CannotTranscode, ObjectStoreError) as exc:  # part-way: the association was aborted
            raise ConnectionAbortedError(f"sending {stored.sop_instance_uid} failed part-way: "
                                         f"{describe(exc)}") from exc
    finally:
        await chunks.aclose()
    if status == dimse.SUCCESS:
        return "completed", ""
    if status in dimse.STORED_WITH_WARNING:
        return "warning", ""
    return "failed", f"C-STORE answered 0x{status:04X}"


@dataclass(slots=True)
class _Progress:
    remaining: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)
    broken: str = ""
    """Why the rest could not be sent (the association went away, or never came)."""

    def count(self, sop_instance_uid: str, outcome: str) -> None:
        self.remaining -= 1
        if outcome == "completed":
            self.completed += 1
        elif outcome == "warning":
            self.warning += 1
        else:
            self.failed += 1
            self.failed_uids.append(sop_instance_uid)

    def counts(self, final: bool) -> SubOperations:
        return SubOperations(None if final else self.remaining, self.completed, self.failed, self.warning)

    def fail_rest(self, instances: Sequence[Stored], reason: str) -> None:
        self.broken = reason
        for stored in instances[len(instances) - self.remaining:]:
            self.count(stored.sop_instance_uid, "failed")

    def final(self, cancelled: bool, transfer_syntax: str) -> Response:
        """The last response: the counts, and the Failed SOP Instance UID List when anything failed."""
        failed = self._failed(transfer_syntax)
        if cancelled:
            return Response(dimse.CANCELLED, counts=self.counts(final=False), data_set=failed)
        if self.failed and self.completed + self.warning == 0:
            return Response(dimse.CANNOT_PERFORM_SUB_OPERATIONS, self.broken or "no instance could be sent",
                            counts=self.counts(final=True), data_set=failed)
        if self.failed or self.warning:
            return Response(dimse.SUB_OPERATIONS_WITH_FAILURES, self.broken or None, counts=self.counts(final=True),
                            data_set=failed)
        return Response(dimse.SUCCESS, counts=self.counts(final=True))

    def _failed(self, transfer_syntax: str) -> bytes | None:
        if not self.failed_uids:
            return None
        dataset = Dataset()
        dataset.FailedSOPInstanceUIDList = self.failed_uids
        return encode(dataset, transfer_syntax)
