"""The ``forward`` role: what was stored is sent on to other archives (the national archive first), with
storage commitment, in order and without loss.

It reads the events topic (consumer group ``dicomgw-forward``). Instance events of one fetch are looked up
together in the index (their current version, modality, description), routed (``routing``), and queued per
destination in the index before their offsets commit: the index, not the bus, holds what is still to send, so
the bus's retention cannot lose it and a re-drive is a change of state. Commitment reports the receivers took
(``CommitmentReported``) are applied the same way. Beside the consumer, the deliverer claims due studies for
each destination, up to its ``max_associations`` at once, and hands each batch to the ``BatchSender``; the
sweep asks again for commitments whose report did not come, and publishes the queue's figures.

An IOCM rejection (``InstancesRejected``) stops the withdrawn instances from going anywhere they have not gone
yet (an instance stored in the same fetch is looked up after, found rejected and not queued), and queues the
rejection note to each destination that has or is being sent any of them, like an instance: an archive that has
not committed them yet answers 0xA772 and the note is sent again after the back-off.

An instance counts as archived at a destination only once the destination has reported it committed. A worker
killed at any point leaves leases that lapse: the instances it was sending are sent again (a duplicate C-STORE
the archive recognises; none is lost).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from gateway.core.events import CommitmentReported, Event, InstanceQuarantined, InstancesRejected, InstanceStored
from gateway.core.iocm import Title
from gateway.dicom import commitment
from gateway.index import Forwarding, ForwardItem, InstanceIndex, InstanceStatus
from gateway.metrics import Metrics
from gateway.settings import ForwardDestination, ForwardSettings
from workers.failure import reason
from workers.routing import Router
from workers.send import BatchSender, Unreachable

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
SWEEP_SECONDS = 5.0
_STATES = ("queued", "sent", "requested", "failed")
"""The states the sweep's gauges show (finished items are counted on request, by the API)."""


class ForwardIndex(InstanceIndex, Forwarding, Protocol):
    pass


class ForwardStage:
    def __init__(self, index: ForwardIndex, router: Router, settings: ForwardSettings, metrics: Metrics,
                 lease_seconds: float) -> None:
        self._index = index
        self._router = router
        self._settings = settings
        self._metrics = metrics
        self._lease_seconds = lease_seconds
        self._sender: BatchSender | None = None
        self._changed: dict[str, dict[str, Any]] = {}
        self._running: dict[str, set[asyncio.Task[None]]] = {d.name: set() for d in settings.destinations}
        self._filling = {d.name: asyncio.Lock() for d in settings.destinations}
        self._wake: asyncio.TimerHandle | None = None
        self._woken: set[asyncio.Task[None]] = set()
        self._closing = False
        self._backoff_until: dict[str, float] = {}
        self._paused: set[str] | None = None
        """Destinations paused in the index, as the last sweep read them (None: not read yet)."""

    def attach(self, sender: BatchSender) -> None:
        self._sender = sender

    async def handle(self, event: Event, source: dict[str, Any]) -> None:
        if isinstance(event, InstanceStored | InstanceQuarantined):
            self._changed[event.sop_instance_uid] = source
        elif isinstance(event, CommitmentReported):
            await self.apply(event.transaction_uid, event.reporter_ae, event.committed, event.failed)
        elif isinstance(event, InstancesRejected):
            await self._rejected(event, source)

    async def _rejected(self, event: InstancesRejected, source: dict[str, Any]) -> None:
        """The withdrawn instances go nowhere more; the note follows them where they went, except a retention
        expiry's, which is this organisation's own business (the reference archive does not export those)."""
        withdrawn = {uid for _, _, uid in event.instances}
        destinations = await self._index.withdraw_forwards(event.study_instance_uid, withdrawn, time.time())
        note = event.note_sop_instance_uid
        if not note or not destinations or event.title == Title.RETENTION_EXPIRED.value:
            return
        row = (await self._index.current_instances([note])).get(note)
        if row is None:
            return
        configured = {destination.name for destination in self._settings.destinations}
        items = [ForwardItem(name, note, row.version, row.study_instance_uid, row.series_instance_uid,
                             row.sop_class_uid, row.transfer_syntax_uid, row.storage_key, row.size, source)
                 for name in destinations if name in configured]
        queued = await self._index.enqueue_forwards(items, time.time(), self._settings.batch_delay_seconds,
                                                    self._settings.max_batch_delay_seconds)
        log.info("rejection note queued for forwarding", extra={
            "sop_instance_uid": note, "destinations": [item.destination for item in items], "queued": queued})
        if queued:
            self._wake_after(self._settings.batch_delay_seconds)

    async def fetched(self) -> None:
        if not self._changed:
            return
        rows = await self._index.current_instances(list(self._changed))
        items = [ForwardItem(name, uid, row.version, row.study_instance_uid, row.series_instance_uid,
                             row.sop_class_uid, row.transfer_syntax_uid, row.storage_key, row.size, source)
                 for uid, source in self._changed.items()
                 if (row := rows.get(uid)) is not None and row.status is not InstanceStatus.REJECTED
                 for name in self._router.destinations(row)]
        queued = await self._index.enqueue_forwards(items, time.time(), self._settings.batch_delay_seconds,
                                                    self._settings.max_batch_delay_seconds)
        if queued:
            log.info("instances queued for forwarding", extra={"queued": queued})
            self._wake_after(self._settings.batch_delay_seconds)
        self._changed.clear()

    def _wake_after(self, delay: float) -> None:
        """Look for due studies once the instances just queued come due, not at the next poll."""
        if self._wake is not None or self._closing:
            return

        def wake() -> None:
            self._wake = None
            task = asyncio.create_task(self._deliver_now(), name="forward-wake")
            self._woken.add(task)
            task.add_done_callback(self._woken.discard)

        self._wake = asyncio.get_running_loop().call_later(delay + 0.05, wake)

    async def _deliver_now(self) -> None:
        try:
            await self.deliver()
        except Exception as exc:  # the poll tries again in a second
            log.info("looking for due studies failed", extra={"error": reason(exc)})

    async def apply_report(self, information: commitment.EventInformation, reporter_ae: str) -> None:
        await self.apply(information.transaction_uid, reporter_ae, information.committed, information.failed)

    async def apply(self, transaction_uid: str, reporter_ae: str, committed: tuple[tuple[str, str], ...],
                    failed: tuple[tuple[str, str, int], ...]) -> None:
        now = time.time()
        decisions = [(uid, f"not committed: Failure Reason 0x{reason:04X}",
                      reason in commitment.PERMANENT_FAILURE_REASONS) for _, uid, reason in failed]
        applied = await self._index.apply_forward_report(
            transaction_uid, [uid for _, uid in committed], decisions, now, self._settings.resend_limit,
            now + self._settings.retry_initial_seconds)
        if applied is None:
            log.warning("storage commitment report for a transaction we did not request",
                        extra={"transaction_uid": transaction_uid, "reporter_ae": reporter_ae})
            return
        before, newly_committed = applied
        name = before.destination
        if before.reported_at is None:
            self._metrics.forward_commit_latency.labels(name).observe(max(now - before.requested_at, 0.0))
            self._metrics.forwarded.labels(name, "not_committed").inc(len(failed))
        self._metrics.forwarded.labels(name, "committed").inc(newly_committed)
        log.info("storage commitment reported", extra={
            "destination": name, "transaction_uid": transaction_uid, "committed": len(committed),
            "failed": len(failed)})

    def loops(self) -> list[tuple[float, Callable[[], Awaitable[None]]]]:
        return [(POLL_SECONDS, self.deliver), (SWEEP_SECONDS, self.sweep)]

    async def deliver(self) -> None:
        """Start a send for each due study, per destination up to its association limit; a send that ends
        starts the next at once (``_fill``), so this poll only finds work that came due meanwhile."""
        if self._paused is None:
            await self.sweep()
        for destination in self._settings.destinations:
            await self._fill(destination)

    async def _fill(self, destination: ForwardDestination) -> None:
        name = destination.name
        running = self._running[name]
        async with self._filling[name]:  # the poll and a send that ended: never more than max_associations
            while (len(running) < destination.max_associations and not self._closing and self._paused is not None
                   and name not in self._paused and self._backoff_until.get(name, 0.0) <= time.time()):
                items = await self._index.claim_forwards(name, time.time(), self._lease_seconds,
                                                         self._settings.batch_size)
                if not items:
                    return
                task = asyncio.create_task(self._send(destination, items), name=f"forward-{name}")
                running.add(task)
                task.add_done_callback(running.discard)

    async def _send(self, destination: ForwardDestination, items: list[ForwardItem]) -> None:
        assert self._sender is not None
        try:
            await self._sender.send(destination, items)
            self._backoff_until.pop(destination.name, None)
            self._running[destination.name].discard(asyncio.current_task())
            await self._fill(destination)
        except Unreachable as exc:
            self._backoff_until[destination.name] = exc.retry_at
        except Exception as exc:
            log.warning("forwarding a batch failed; its instances come due again when their lease ends",
                        exc_info=exc, extra={"destination": destination.name})

    async def sweep(self) -> None:
        now = time.time()
        expired = await self._index.expire_forward_commitments(now, self._settings.commitment_requests,
                                                               self._settings.resend_limit)
        for transaction in expired:
            self._metrics.forwarded.labels(transaction.destination, "commitment_expired").inc(transaction.instances)
            log.warning("no storage commitment report before the timeout; asking again", extra={
                "destination": transaction.destination, "transaction_uid": transaction.transaction_uid})
        statuses = await self._index.forward_destinations(finished=False)
        self._paused = {status.name for status in statuses if status.paused}
        for status in statuses:
            for state in _STATES:
                self._metrics.forward_items.labels(status.name, state).set(status.items.get(state, 0))
            since = status.oldest_waiting_since
            self._metrics.forward_lag.labels(status.name).set(0.0 if since is None else max(now - since, 0.0))

    async def close(self) -> None:
        """Stop the sends in flight; what they had not finished is handed back (or its lease lapses)."""
        self._closing = True
        if self._wake is not None:
            self._wake.cancel()
        tasks = [*self._woken, *(task for running in self._running.values() for task in running)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
