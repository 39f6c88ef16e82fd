"""Sending one study's batch to one destination: C-STOREs streamed from the object store, then one
storage-commitment request (N-ACTION) for what the destination stored.

Each instance goes in its stored transfer syntax when the destination accepts it, else in an uncompressed syntax
it accepts by a lossless conversion (``transcode``), else it fails with the syntaxes named; never a lossy one.
Its result is recorded as soon as its C-STORE-RSP comes, which releases its lease. The commitment request is
written to the index before the N-ACTION goes (as dcm4chee persists its result row first), so a report can
never arrive for a transaction we do not know; a request that does not go through is undone.

C-STORE statuses decide an instance's fate: Success and the warnings (0xB000, 0xB006, 0xB007) mean stored;
0xA7xx (out of resources), 0x0213 and 0x0110 may pass later and are retried with back-off within the retry
budget; anything else is a refusal of this instance and fails it with the status and Error Comment. A destination
that cannot be reached (refused connection, rejected or aborted association, timeout) gets the batch back with
back-off; the instances of one study stay together on one association.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

from pydicom.uid import generate_uid

from gateway.core import audit
from gateway.core.audit import AuditRecord, AuditTrail
from gateway.core.errors import describe
from gateway.core.study import Patient
from gateway.dicom import commitment, contexts, dimse
from gateway.dicom.acse import IMPLICIT_LITTLE
from gateway.dicom.dataset import encode
from gateway.dicom.requestor import Peer, RequestorAssociation, open_association
from gateway.dicom.scu import ClientTls, client_tls_context
from gateway.dicom.service import VERIFICATION
from gateway.dicom.transcode import CannotTranscode, NotPart10, open_part10, transcode, with_patient
from gateway.index import Forwarding, ForwardItem, ForwardResult, ForwardState, ForwardTransaction, Patients
from gateway.metrics import Metrics
from gateway.objects import ObjectNotFound, ObjectStore, ObjectStoreError
from gateway.retrieve.disclosure import by_patient
from gateway.settings import ForwardDestination
from workers.deliver import RetryPolicy

log = logging.getLogger(__name__)

RESULTS_PER_WRITE = 32
_LATER = (0x0110, 0x0213)
"""Processing failure and resource limitation: statuses another try may pass, beside 0xA7xx."""

ReportApplier = Callable[[commitment.EventInformation, str], Awaitable[None]]
"""Applies a report (and the reporter's AE title) to the forwarding state."""


@dataclass(frozen=True, slots=True)
class SendPolicy:
    calling_ae: str
    timeout: float
    """Connecting, negotiating, and each response."""
    retry: RetryPolicy
    commitment_timeout_seconds: float
    report_wait_seconds: float
    tls: ClientTls = ClientTls()


class Unreachable(Exception):
    """The destination could not take the batch at all; the message says why (no patient data), ``retry_at``
    when to try it again."""

    def __init__(self, reason: str, retry_at: float) -> None:
        super().__init__(reason)
        self.retry_at = retry_at


class _Pacer:
    """At most ``rate_per_minute`` instances a minute to one destination (0: no limit)."""

    def __init__(self, rate_per_minute: int) -> None:
        self._interval = 60.0 / rate_per_minute if rate_per_minute else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self._interval:
            return
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)


class _Broken(Exception):
    """The association cannot go on after this instance (a conversion failed part-way through its data set)."""

    def __init__(self, result: ForwardResult) -> None:
        super().__init__(result.error)
        self.result = result


class SendIndex(Forwarding, Patients, Protocol):
    """Forwarding state, and the current patient of instances an ADT message changed."""


class BatchSender:
    def __init__(self, index: SendIndex, objects: ObjectStore, policy: SendPolicy, metrics: Metrics,
                 apply_report: ReportApplier, audit: AuditTrail) -> None:
        self._audit = audit
        self._index = index
        self._objects = objects
        self._policy = policy
        self._metrics = metrics
        self._apply_report = apply_report
        self._pacers: dict[str, _Pacer] = {}

    async def send(self, destination: ForwardDestination, items: list[ForwardItem]) -> None:
        """Send the batch; raises ``Unreachable`` (the batch handed back with back-off) when the destination
        could not be reached or the association broke."""
        name = destination.name
        pending = {item.sop_instance_uid: item for item in items}
        to_send = [item for item in items if item.state is ForwardState.QUEUED]
        commits = destination.storage_commitment
        proposed, left_out = _contexts(destination, to_send, commits)
        if left_out:  # classes beyond one association's contexts: the next batch takes them
            await self._hand_back(name, [pending.pop(item.sop_instance_uid) for item in left_out], time.time())
            to_send = [item for item in to_send if item.sop_instance_uid in pending]
        try:
            association = await open_association(
                Peer(destination.host, destination.port, destination.ae_title), self._policy.calling_ae, proposed,
                timeout=self._policy.timeout,
                ssl_context=client_tls_context(self._policy.tls) if destination.tls else None,
                scp_roles=(commitment.STORAGE_COMMITMENT_PUSH_MODEL,) if commits and self._policy.report_wait_seconds
                else (), on_event_report=lambda command, data: self._report_here(destination, data))
        except (OSError, TimeoutError) as exc:
            retry_at = await self._unreachable(destination, list(pending.values()),
                                               f"cannot associate: {describe(exc)}")
            raise Unreachable(describe(exc), retry_at) from exc
        self._metrics.forward_associations.labels(name).inc()
        try:
            await self._index.update_forward_destination(name, time.time(), succeeded=True)
            await self._send_all(association, destination, to_send, pending)
            awaiting = [item for item in pending.values() if item.state is ForwardState.SENT]
            if commits and awaiting:
                await self._request(association, destination, awaiting)
                for item in awaiting:
                    del pending[item.sop_instance_uid]
                if self._policy.report_wait_seconds:
                    await association.wait_for_event_reports(self._policy.report_wait_seconds)
            await association.release(self._policy.timeout)
        except (OSError, TimeoutError) as exc:
            await association.abort()
            retry_at = await self._unreachable(destination, list(pending.values()),
                                               f"association failed: {describe(exc)}")
            raise Unreachable(describe(exc), retry_at) from exc
        except _Broken as exc:
            await association.abort()
            await self._index.record_forward_results(name, [exc.result], time.time())
            pending.pop(exc.result.sop_instance_uid, None)
            await self._hand_back(name, list(pending.values()), time.time())
        except BaseException:
            await association.abort()
            await asyncio.shield(self._hand_back(name, list(pending.values()), time.time()))
            raise
        finally:
            self._metrics.forward_associations.labels(name).dec()

    async def _send_all(self, association: RequestorAssociation, destination: ForwardDestination,
                        to_send: list[ForwardItem], pending: dict[str, ForwardItem]) -> None:
        """Results are recorded in groups (one index transaction each, and always before this returns or
        fails): an instance stored keeps the batch's lease until its commitment is requested, so a result lost
        with the process only means that instance goes again."""
        pacer = self._pacers.setdefault(destination.name, _Pacer(destination.rate_per_minute))
        unrecorded: list[ForwardResult] = []
        rewrites = await self._index.patients_to_write([item.sop_instance_uid for item in to_send])
        sent: list[ForwardItem] = []
        try:
            for item in to_send:
                await pacer.wait()
                result = await self._store(association, destination, item, rewrites.get(item.sop_instance_uid))
                unrecorded.append(result)
                if result.stored:
                    sent.append(item)
                if result.state is ForwardState.SENT:
                    pending[item.sop_instance_uid] = replace(item, state=ForwardState.SENT)
                else:
                    del pending[item.sop_instance_uid]
                if len(unrecorded) >= RESULTS_PER_WRITE:
                    await self._index.record_forward_results(destination.name, unrecorded, time.time())
                    unrecorded = []
        finally:
            if unrecorded:
                await asyncio.shield(self._index.record_forward_results(destination.name, unrecorded, time.time()))
            if sent:
                await asyncio.shield(self._audit_sent(destination, sent))

    async def _audit_sent(self, destination: ForwardDestination, sent: list[ForwardItem]) -> None:
        """DICOM Instances Transferred to the destination, one record per patient: after the results are recorded,
        so an outage of the bus here loses the records (logged), never a send."""
        try:
            groups = await by_patient(self._index, [(item.study_instance_uid, item.sop_class_uid) for item in sent])
            participants = (audit.this_gateway(self._policy.calling_ae, audit.Role.SOURCE, requestor=True),
                            audit.peer(destination.ae_title, destination.host, audit.Role.DESTINATION, False))
            await asyncio.gather(*(self._audit.record(AuditRecord(
                audit.Event.INSTANCES_TRANSFERRED, audit.Outcome.SUCCESS, participants, audit.Interface.FORWARD,
                audit.Action.READ, patient=patient if patient.id else None, studies=studies,
                recipient=destination.ae_title)) for patient, studies in groups))
        except Exception as exc:
            log.error("forwarded instances could not be audited", extra={
                "destination": destination.name, "instances": len(sent), "error": describe(exc)})

    async def _store(self, association: RequestorAssociation, destination: ForwardDestination,
                     item: ForwardItem, patient: Patient | None) -> ForwardResult:
        """``patient``: the current patient to write over the object's (an ADT message changed it)."""
        name = destination.name
        try:
            chunks = await self._objects.read(item.storage_key)
        except ObjectNotFound:
            return self._failed(name, item, "the stored object is missing from the object store")
        except ObjectStoreError as exc:
            return self._later(name, item, f"object store: {describe(exc)}")
        try:
            try:
                meta, data_set = await open_part10(chunks)
            except NotPart10 as exc:
                return self._failed(name, item, f"the stored object is not a Part 10 file: {exc}")
            if patient is not None:
                data_set = with_patient(data_set, meta.transfer_syntax_uid, patient)
            chosen = contexts.choose(association.contexts(item.sop_class_uid), meta.transfer_syntax_uid,
                                     destination.transfer_syntaxes)
            if chosen is None:
                accepted = ", ".join(association.accepted_syntaxes(item.sop_class_uid)) or "none"
                return self._failed(name, item, f"no acceptable transfer syntax: stored "
                                                f"{meta.transfer_syntax_uid}, accepted {accepted}")
            context_id, syntax = chosen
            stream: AsyncIterator[bytes] = data_set
            if syntax != meta.transfer_syntax_uid:
                stream = transcode(data_set, meta.transfer_syntax_uid, syntax)
            try:
                outcome = await association.c_store(context_id, item.sop_class_uid, item.sop_instance_uid, stream,
                                                    timeout=self._policy.timeout)
            except CannotTranscode as exc:
                raise _Broken(self._failed(name, item, f"cannot convert to {syntax}: {exc}")) from exc
        finally:
            await chunks.aclose()
        status = outcome.status
        comment = f": {outcome.comment}" if outcome.comment else ""
        if status == dimse.SUCCESS or status in dimse.STORED_WITH_WARNING:
            outcome_label = "sent" if status == dimse.SUCCESS else "warning"
            self._metrics.forwarded.labels(name, outcome_label).inc()
            self._metrics.forwarded_bytes.labels(name).inc(item.size)
            state = ForwardState.SENT if destination.storage_commitment else ForwardState.DELIVERED
            warning = "" if status == dimse.SUCCESS else f"stored with warning 0x{status:04X}{comment}"
            return ForwardResult(item.sop_instance_uid, item.version, state, error=warning,
                                 transfer_syntax_sent=syntax, stored=True)
        if 0xA700 <= status <= 0xA7FF or status in _LATER:
            return self._later(name, item, f"C-STORE answered 0x{status:04X}{comment}")
        return self._failed(name, item, f"C-STORE refused with 0x{status:04X}{comment}")

    def _failed(self, destination: str, item: ForwardItem, error: str) -> ForwardResult:
        self._metrics.forwarded.labels(destination, "failed").inc()
        log.error("instance not forwarded", extra={"destination": destination, "reason": error,
                                                   "sop_instance_uid": item.sop_instance_uid})
        return ForwardResult(item.sop_instance_uid, item.version, ForwardState.FAILED, error=error,
                             failed_attempt=True)

    def _later(self, destination: str, item: ForwardItem, error: str) -> ForwardResult:
        attempts = item.attempts + 1
        if attempts >= self._policy.retry.max_attempts:
            return self._failed(destination, item, f"{error} (after {attempts} attempts)")
        self._metrics.forwarded.labels(destination, "retry").inc()
        return ForwardResult(item.sop_instance_uid, item.version, ForwardState.QUEUED,
                             due_at=time.time() + self._policy.retry.delay(attempts), error=error, failed_attempt=True)

    async def _request(self, association: RequestorAssociation, destination: ForwardDestination,
                       awaiting: list[ForwardItem]) -> None:
        now = time.time()
        transaction = ForwardTransaction(generate_uid(), destination.name, awaiting[0].study_instance_uid,
                                         len(awaiting), now, now + self._policy.commitment_timeout_seconds)
        await self._index.request_forward_commitment(transaction, [item.sop_instance_uid for item in awaiting])
        context_id = association.context_for(commitment.STORAGE_COMMITMENT_PUSH_MODEL, IMPLICIT_LITTLE)
        if context_id is None:
            await self._undo(transaction, awaiting, "the destination did not accept Storage Commitment")
            return
        information = await asyncio.to_thread(encode, commitment.action_information(
            transaction.transaction_uid, [(item.sop_class_uid, item.sop_instance_uid) for item in awaiting]),
            IMPLICIT_LITTLE)
        try:
            outcome = await association.n_action(
                context_id, commitment.STORAGE_COMMITMENT_PUSH_MODEL, commitment.STORAGE_COMMITMENT_INSTANCE,
                commitment.REQUEST_STORAGE_COMMITMENT, information, timeout=self._policy.timeout)
        except BaseException:
            await asyncio.shield(self._undo(transaction, awaiting, "the N-ACTION did not go through"))
            raise
        if outcome.status != dimse.SUCCESS and not 0xB000 <= outcome.status <= 0xBFFF:
            comment = f": {outcome.comment}" if outcome.comment else ""
            await self._undo(transaction, awaiting, f"N-ACTION answered 0x{outcome.status:04X}{comment}")
            return
        log.info("storage commitment requested", extra={
            "destination": destination.name, "transaction_uid": transaction.transaction_uid,
            "instances": len(awaiting)})

    async def _undo(self, transaction: ForwardTransaction, awaiting: list[ForwardItem], error: str) -> None:
        attempts = max(item.attempts for item in awaiting) + 1
        due = time.time() + self._policy.retry.delay(attempts)
        await self._index.cancel_forward_commitment(transaction.transaction_uid, due, error)
        log.warning("storage commitment not requested", extra={
            "destination": transaction.destination, "transaction_uid": transaction.transaction_uid, "reason": error})

    async def _report_here(self, destination: ForwardDestination, data: bytes) -> int:
        """A report on our own association (the request's context is Implicit VR Little Endian)."""
        try:
            information = commitment.parse_event_information(data, IMPLICIT_LITTLE)
        except ValueError as exc:
            log.warning("commitment report on our association does not parse", extra={"reason": str(exc)})
            return dimse.PROCESSING_FAILURE
        await self._apply_report(information, destination.ae_title)
        return dimse.SUCCESS

    async def _unreachable(self, destination: ForwardDestination, items: list[ForwardItem], error: str) -> float:
        """Hand the batch back with back-off; each instance's attempts count, so a destination that stays away
        fails its instances once the retry budget is spent (re-drivable) instead of holding them forever.
        Returns when the destination is worth trying again."""
        now = time.time()
        results = []
        for item in items:
            attempts = item.attempts + 1
            if attempts >= self._policy.retry.max_attempts:
                results.append(ForwardResult(item.sop_instance_uid, item.version, ForwardState.FAILED,
                                             error=f"{error} (after {attempts} attempts)", failed_attempt=True))
            else:
                results.append(ForwardResult(item.sop_instance_uid, item.version, item.state,
                                             due_at=now + self._policy.retry.delay(attempts), error=error,
                                             failed_attempt=True))
        await self._index.record_forward_results(destination.name, results, now)
        failures = max((item.attempts for item in items), default=0) + 1
        retry_at = now + self._policy.retry.delay(failures)
        await self._index.update_forward_destination(destination.name, now, error=error, backoff_until=retry_at)
        self._metrics.forwarded.labels(destination.name, "retry").inc(len(items))
        log.warning("destination unreachable; batch handed back", extra={
            "destination": destination.name, "reason": error, "instances": len(items)})
        return retry_at

    async def _hand_back(self, destination: str, items: list[ForwardItem], due_at: float) -> None:
        """Release items untried (stopping, or left for another association)."""
        await self._index.record_forward_results(destination, [
            ForwardResult(item.sop_instance_uid, item.version, item.state, due_at=due_at, error=item.last_error)
            for item in items], time.time())


def _contexts(destination: ForwardDestination, items: list[ForwardItem],
              commits: bool) -> tuple[list[tuple[str, list[str]]], list[ForwardItem]]:
    """The instances' contexts (``contexts.propose``), then the commitment context, and Verification, which every
    archive accepts: dcmtk's storescp rejects an association none of whose contexts it accepts, and an instance
    it cannot take must fail by itself, not hold the study back as if the archive were away. Items of classes
    that do not fit in one association come back as left out."""
    stored = contexts.stored_syntaxes((item.sop_class_uid, item.transfer_syntax_uid) for item in items)
    proposed = contexts.propose(stored, destination.transfer_syntaxes, contexts.MAX_CONTEXTS - (2 if commits else 1))
    taken = {sop_class for sop_class, _ in proposed}
    if commits:
        proposed.append((commitment.STORAGE_COMMITMENT_PUSH_MODEL, [IMPLICIT_LITTLE]))
    proposed.append((VERIFICATION, [IMPLICIT_LITTLE]))
    return proposed, [item for item in items if item.sop_class_uid not in taken]
