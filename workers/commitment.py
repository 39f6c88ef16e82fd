"""Storage commitment: decide each referenced instance of a transaction, then queue the report.

An instance is committed only if its current version is stored (not quarantined), has the SOP Class the
requester named, and its object is still there as indexed: by default its bytes are read back and their
SHA-256 compared (``commitment_verification``). A transaction is decided when every reference has an
outcome; references not yet stored keep it waiting, until the instance arrives or the deadline passes and
they are reported as "no such object instance". The decision and its report are written in one index
transaction, so a worker killed at any point either decides again or finds the report queued.

A request too large for one bus record comes in parts (``CommitmentRequested.part`` of ``parts``): the index keeps
each part until the request is whole, in whatever order and however often they come, and only the whole request
becomes a transaction. Its deadline counts from the request time, which every part carries. The parts of a
request that never becomes whole (the receiver refused it when a part could not be published) are dropped after
``PARTS_KEPT_SECONDS``.

A Transaction UID must be new for each request (PS3.4 J.3.2). When a request comes again with one already in
use (not a re-delivery of the same request from the bus: its request time differs), the requester still gets
an answer, never silence: with the same references, the transaction's report once more (when decided; else the
report comes when it is); with other references, a report failing each of them with 0x0131 (Duplicate
Transaction UID). The first transaction stands either way.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

import aiohttp
import orjson

from gateway.core.errors import Permanent, retriable
from gateway.core.events import CommitmentRequested
from gateway.dicom import commitment as sc
from gateway.dicom.commitment import REPORTS_PATH, Decision
from gateway.dicom.scu import Outbound
from gateway.index import (
    Commitment,
    CommitmentItem,
    CommitmentLog,
    CommitmentPart,
    Delivery,
    DeliveryState,
    InstanceIndex,
    InstanceRow,
    InstanceStatus,
    OutboundQueue,
    StudyClock,
)
from gateway.metrics import Metrics
from gateway.objects import ObjectNotFound, ObjectStore
from gateway.settings import DicomSettings, NotifySettings
from workers.deliver import Sender
from workers.failure import reason

log = logging.getLogger(__name__)

REPORT = "commitment-report"
WAITING_AGES = (("lt_1m", 0.0, 60.0), ("1m_10m", 60.0, 600.0), ("10m_1h", 600.0, 3600.0),
                ("ge_1h", 3600.0, float("inf")))
"""Labels of ``dicomgw_commitments_waiting``: [low, high) seconds since the request."""
PARTS_KEPT_SECONDS = 7 * 24 * 3600.0
"""How long the parts of a request not yet whole are kept: Kafka's default retention, so a part re-driven from
the dead letters still finds the others."""


def report_id(transaction_uid: str) -> str:
    return f"{REPORT}:{transaction_uid}"


class _TrackerIndex(CommitmentLog, InstanceIndex, StudyClock, OutboundQueue, Protocol):
    pass


class CommitmentTracker:
    def __init__(self, index: _TrackerIndex, objects: ObjectStore, settings: NotifySettings, metrics: Metrics,
                 hasten_stability: bool) -> None:
        self._index = index
        self._objects = objects
        self._settings = settings
        self._metrics = metrics
        self._hasten_stability = hasten_stability

    async def requested(self, request: CommitmentRequested, source: dict[str, Any]) -> None:
        requested_at = datetime.fromisoformat(request.requested_at).timestamp()
        items = await self._whole(request, requested_at)
        if items is None:
            return
        commitment = Commitment(
            request.transaction_uid, request.requester_ae, requested_at,
            requested_at + self._settings.commitment_timeout_seconds, items,
            {**source, "reply_to": request.reply_to} if request.reply_to else source)
        if await self._index.add_commitment(commitment):
            log.info("commitment tracked", extra={"transaction_uid": request.transaction_uid,
                                                 "references": len(items), "records": request.parts})
            await self._evaluate(commitment, final=False)
        else:
            await self._again(commitment)
        if request.parts > 1:
            await self._index.drop_commitment_parts(request.transaction_uid, requested_at)

    async def _whole(self, request: CommitmentRequested, requested_at: float) -> tuple[CommitmentItem, ...] | None:
        """The request's references: a request in one record at once, one in several once every part is kept."""
        items = tuple(CommitmentItem(cls, inst) for cls, inst in request.references)
        if request.parts == 1:
            return items
        if not 1 <= request.part <= request.parts:
            raise Permanent(f"commitment.requested part {request.part} of {request.parts}")
        whole = await self._index.add_commitment_part(
            CommitmentPart(request.transaction_uid, requested_at, request.part, request.parts, items))
        if whole is None:
            log.debug("commitment request part kept", extra={"transaction_uid": request.transaction_uid,
                                                             "part": request.part, "parts": request.parts})
        return whole

    async def _again(self, commitment: Commitment) -> None:
        """The request came again: a bus re-delivery, a re-drive after its report failed for good, or a new
        request that re-uses the Transaction UID."""
        known = await self._index.commitment(commitment.transaction_uid)
        assert known is not None
        if abs(known.requested_at - commitment.requested_at) > 0.001:
            await self._reused(known, commitment)
            return
        if known.decided_at is None:  # the first time round failed before deciding (an outage, a restart)
            await self._evaluate(known, final=False)
            return
        for delivery in await self._index.deliveries(commitment.transaction_uid):
            if delivery.state is DeliveryState.FAILED:
                await self._index.put_delivery(Delivery(
                    delivery.delivery_id, delivery.kind, delivery.subject, delivery.target_ae, delivery.payload,
                    time.time(), time.time(), delivery.source), replace=True)
                log.info("commitment report queued again", extra={"transaction_uid": commitment.transaction_uid})

    async def _reused(self, known: Commitment, request: Commitment) -> None:
        same = [(i.sop_class_uid, i.sop_instance_uid) for i in known.items] == [
            (i.sop_class_uid, i.sop_instance_uid) for i in request.items]
        log.warning("Transaction UID of an earlier request used again", extra={
            "transaction_uid": request.transaction_uid, "same_references": same,
            "answer": "the transaction's report again" if same else "every reference failed with 0x0131"})
        if same and known.decided_at is None:
            await self._evaluate(known, final=False)
            return
        items = known.items if same else tuple(
            CommitmentItem(i.sop_class_uid, i.sop_instance_uid, sc.DUPLICATE_TRANSACTION_UID) for i in request.items)
        report = _report(f"{report_id(request.transaction_uid)}:{request.requested_at}", request, items, time.time())
        await self._index.put_delivery(report, replace=False)

    async def instances_changed(self, sop_instance_uids: list[str]) -> None:
        for transaction_uid in await self._index.commitments_waiting_for(sop_instance_uids):
            commitment = await self._index.commitment(transaction_uid)
            if commitment is not None and commitment.decided_at is None:
                await self._evaluate(commitment, final=False)

    async def sweep(self) -> None:
        """Decide the transactions whose time ran out, and count those still waiting for their report. The
        others need no polling: each is evaluated once it is recorded, and again on every event of an instance
        it references (both after the index has it). Parts of requests that never became whole go too."""
        for transaction_uid in await self._index.expire_commitment_parts(time.time() - PARTS_KEPT_SECONDS):
            log.warning("parts of a storage commitment request that never arrived whole are dropped",
                        extra={"transaction_uid": transaction_uid})
        while expired := await self._index.expired_commitments(time.time()):
            for commitment in expired:
                await self._evaluate(commitment, final=True)
        now = time.time()
        ages = [now - requested_at for requested_at in await self._index.waiting_commitments(REPORT)]
        for label, low, high in WAITING_AGES:
            self._metrics.commitments_waiting.labels(label).set(sum(1 for age in ages if low <= age < high))

    async def _evaluate(self, commitment: Commitment, final: bool) -> None:
        """Decide the transaction if every reference has an outcome (or ``final``). One that cannot be evaluated
        for a reason other than an outage is decided as failed: the requester gets a report saying so, never
        silence, and the other transactions go on."""
        try:
            decided = await self._decisions(commitment, final)
        except Exception as exc:
            if retriable(exc) is True:
                raise
            log.error("commitment could not be evaluated; every reference reported as failed", exc_info=exc,
                      extra={"transaction_uid": commitment.transaction_uid, "error": reason(exc)})
            decided = ([CommitmentItem(i.sop_class_uid, i.sop_instance_uid, sc.PROCESSING_FAILURE)
                        for i in commitment.items], set())
        if decided is not None:
            await self._decide(commitment, *decided, final=final)

    async def _decisions(self, commitment: Commitment, final: bool) -> tuple[list[CommitmentItem], set[str]] | None:
        """Each reference's outcome and the studies of the committed ones; None while one is still awaited.

        The index is asked about every reference at once, and objects are read back (the costly part) only once
        none is awaited: a transaction is evaluated on every event of an instance it references, and reading
        back what had already arrived each time cost n²/2 object reads for n references."""
        current = await self._index.current_instances([item.sop_instance_uid for item in commitment.items])
        if not final and any(item.sop_instance_uid not in current for item in commitment.items):
            return None
        decisions: list[CommitmentItem] = []
        studies: set[str] = set()
        for item in commitment.items:
            row = current.get(item.sop_instance_uid)
            outcome = await self._outcome(item, row)
            if outcome is None and row is not None:
                studies.add(row.study_instance_uid)
            decisions.append(CommitmentItem(item.sop_class_uid, item.sop_instance_uid, outcome))
        return decisions, studies

    async def _decide(self, commitment: Commitment, decisions: list[CommitmentItem], studies: set[str],
                      final: bool) -> None:
        now = time.time()
        report = _report(report_id(commitment.transaction_uid), commitment, decisions, now)
        if not await self._index.decide_commitment(commitment.transaction_uid, tuple(decisions), report, now):
            return
        failed = sum(1 for d in decisions if d.failure_reason is not None)
        self._metrics.commitments_decided.labels(str(sc.EVENT_SOME_FAILED if failed else sc.EVENT_ALL_COMMITTED)).inc()
        not_stored = sum(1 for d in decisions if d.failure_reason == sc.NO_SUCH_OBJECT_INSTANCE)
        (log.warning if final else log.info)(
            "commitment deadline passed; references not stored are reported as failed" if final
            else "commitment decided", extra={"transaction_uid": commitment.transaction_uid,
                                              "committed": len(decisions) - failed, "failed": failed,
                                              "not_stored": not_stored, "timed_out": final})
        if self._hasten_stability:
            for study in studies:
                await self._index.hasten_stability(study)

    async def _outcome(self, item: CommitmentItem, row: InstanceRow | None) -> int | None:
        if row is None:  # not stored by the deadline (awaited references never get this far before it)
            return sc.NO_SUCH_OBJECT_INSTANCE
        if row.sop_class_uid != item.sop_class_uid:
            return sc.CLASS_INSTANCE_CONFLICT
        if row.status is InstanceStatus.REJECTED:  # withdrawn by a rejection note: no longer available here
            return sc.NO_SUCH_OBJECT_INSTANCE
        if row.status is not InstanceStatus.STORED:
            return sc.PROCESSING_FAILURE
        if not await self._intact(row):
            log.error("stored object missing or changed; not committed",
                      extra={"sop_instance_uid": row.sop_instance_uid, "storage_key": row.storage_key})
            return sc.PROCESSING_FAILURE
        return None

    async def _intact(self, row: InstanceRow) -> bool:
        """The object as the index describes it; an unavailable store raises, and the worker retries."""
        mode = self._settings.commitment_verification
        if mode == "index":
            return True
        if mode == "size":
            info = await self._objects.stat(row.storage_key)
            return info is not None and info.size == row.size
        digest = hashlib.sha256()
        size = 0
        head: bytes | None = b""
        try:
            stream = await self._objects.read(row.storage_key)
        except ObjectNotFound:
            return False
        try:
            async for chunk in stream:
                size += len(chunk)
                if head is not None:
                    head += chunk
                    offset = _data_set_offset(head)
                    if offset is None:
                        continue
                    chunk, head = head[offset:], None
                digest.update(chunk)
        finally:
            await stream.aclose()
        return size == row.size and digest.hexdigest() == row.sha256


def _report(delivery_id: str, commitment: Commitment, decisions: Sequence[CommitmentItem], now: float) -> Delivery:
    """The report of ``decisions`` to the transaction's requester, queued to go now."""
    return Delivery(
        delivery_id, REPORT, commitment.transaction_uid, commitment.requester_ae,
        {"decisions": [[d.sop_class_uid, d.sop_instance_uid, d.failure_reason] for d in decisions],
         "reply_to": commitment.source.get("reply_to", "")},
        now, now, commitment.source)


def _data_set_offset(head: bytes) -> int | None:
    """Where the data set starts after the gateway's Part 10 preamble and file meta (whose first element is
    the group length), the index's ``sha256`` being of the data set as stored; None until enough has arrived."""
    if len(head) < 144:
        return None
    if head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00" or head[136:138] != b"UL":
        return 0
    return 144 + int.from_bytes(head[140:144], "little")


def report_sender(outbound: Outbound, dicom: DicomSettings, http: aiohttp.ClientSession,
                  internal_secret: str) -> Sender:
    """Sends a queued report as an N-EVENT-REPORT to its requester: on the requester's own association when
    the receiver holding it still has it open (asked on its internal port), else on a new association."""

    async def send(delivery: Delivery) -> None:
        if delivery.payload.get("reply_to") and await _on_the_same_association(http, delivery, internal_secret):
            return
        decided = [Decision(cls, inst, reason) for cls, inst, reason in delivery.payload["decisions"]]
        event_type, information = await asyncio.to_thread(  # a report of many references takes seconds to build
            sc.report, delivery.subject, decided, dicom.ae_title)
        await outbound.commitment_report(delivery.target_ae, event_type, information)

    return send


async def _on_the_same_association(http: aiohttp.ClientSession, delivery: Delivery, secret: str) -> bool:
    url = f"{delivery.payload['reply_to']}{REPORTS_PATH}/{delivery.subject}"
    try:
        # a stream, not bytes: aiohttp warns of bodies over 1 MiB sent whole, which reports of large requests are
        body = io.BytesIO(orjson.dumps({"decisions": delivery.payload["decisions"]}))
        async with http.post(url, data=body, headers={"Authorization": f"Bearer {secret}",
                                                      "Content-Type": "application/json"}) as response:
            if response.status == 200:
                return True
            reason = f"HTTP {response.status}: {(await response.text())[:200]}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    log.info("report not taken on the requester's association; opening a new one",
             extra={"transaction_uid": delivery.subject, "reason": reason})
    return False
