"""Sending what a worker queued in the index (commitment reports, IANs, XDS submissions), with retries.

Due deliveries of the kinds this worker sends are claimed with a lease, handed to the sender for their kind,
and their attempt recorded. ``DeliveryFailed``, or any error that is not an outage of the index or the bus,
is a failed attempt, retried with exponential back-off; after the last attempt, or at once for
``DeliveryRefused``, the delivery is ``failed`` and a dead-letter entry names it, its reason and the bus
record it came from, so that ``dicom-gateway dead-letter redrive`` queues it again. An outage of the index or
the bus stops the round (the lease brings the delivery back). A duplicate is possible (a worker killed after
sending, before recording), a lost delivery is not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from gateway.bus import BusError, Producer
from gateway.core.errors import DeliveryFailed, DeliveryRefused, Unavailable
from gateway.index import Delivery, DeliveryState, IndexFailure, OutboundQueue
from gateway.metrics import Metrics
from gateway.settings import TopicSettings
from workers.failure import dead_letter, reason

log = logging.getLogger(__name__)

CONCURRENT_DELIVERIES = 8
POLL_SECONDS = 1.0
"""How often a worker looks for deliveries that came due."""

Sender = Callable[[Delivery], Awaitable[None]]


def wanted(known: Delivery | None, generation: int) -> bool:
    """Whether a study generation's delivery must be queued: none yet, only an older generation's, or one that
    failed for good (its originating event coming again is how a dead letter is re-driven)."""
    return known is None or known.state is DeliveryState.FAILED or known.payload.get("generation", 0) < generation


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    initial_seconds: float
    max_seconds: float
    max_attempts: int
    lease_seconds: float
    """Longer than one attempt can take, so a live worker's claim never lapses."""

    def delay(self, failures: int) -> float:
        """Back-off after ``failures`` failed attempts in a row: doubling from the initial delay, capped."""
        return float(min(self.initial_seconds * 2 ** max(failures - 1, 0), self.max_seconds))


class Deliverer:
    def __init__(self, index: OutboundQueue, senders: Mapping[str, Sender], producer: Producer, topics: TopicSettings,
                 retry: RetryPolicy, stage: str, metrics: Metrics) -> None:
        self._index = index
        self._senders = dict(senders)
        self._producer = producer
        self._topics = topics
        self._retry = retry
        self._stage = stage
        self._metrics = metrics

    async def deliver_due(self) -> int:
        """Send what is due now; returns how many were attempted. Targets are served side by side, but one
        target's deliveries one after the other: a modality accepts few associations at once, and would
        refuse the rest."""
        due = await self._index.claim_deliveries(time.time(), self._retry.lease_seconds, CONCURRENT_DELIVERIES,
                                                 tuple(self._senders))
        by_target: dict[str, list[Delivery]] = {}
        for delivery in due:
            by_target.setdefault(delivery.target_ae, []).append(delivery)
        unfinished = {delivery.delivery_id: delivery for delivery in due}
        try:
            async with asyncio.TaskGroup() as targets:
                for deliveries in by_target.values():
                    targets.create_task(self._attempt_in_turn(deliveries, unfinished))
        except ExceptionGroup as failures:
            raise failures.exceptions[0] from None
        finally:
            # Interrupted (the member backs off and joins again, or stops): what it claimed and did not finish is
            # due again now, not once its lease runs out; one in flight may then go twice, a duplicate.
            for delivery in unfinished.values():
                await self._index.put_delivery(delivery, replace=True)
        return len(due)

    async def deliver_all_due(self) -> None:
        while await self.deliver_due():
            pass

    async def _attempt_in_turn(self, deliveries: list[Delivery], unfinished: dict[str, Delivery]) -> None:
        for delivery in deliveries:
            await self._attempt(delivery)
            del unfinished[delivery.delivery_id]

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            await self._senders[delivery.kind](delivery)
        except DeliveryFailed as exc:
            await self._failed(delivery, str(exc), refused=isinstance(exc, DeliveryRefused))
            return
        except (IndexFailure, BusError) as exc:
            if exc.retriable:
                raise
            await self._failed(delivery, reason(exc), refused=True)
            return
        except Exception as exc:
            log.warning("delivery attempt failed unexpectedly", exc_info=exc,
                        extra={"delivery_id": delivery.delivery_id})
            await self._failed(delivery, reason(exc), refused=False)
            return
        await self._index.finish_attempt(delivery.delivery_id, DeliveryState.DELIVERED, "", 0, time.time())
        self._metrics.deliveries.labels(delivery.kind, "delivered").inc()
        log.info("delivered", extra={"delivery_id": delivery.delivery_id, "target": delivery.target_ae,
                                     "attempts": delivery.attempts + 1})

    async def _failed(self, delivery: Delivery, error: str, refused: bool) -> None:
        attempts = delivery.attempts + 1
        now = time.time()
        if not refused and attempts < self._retry.max_attempts:
            delay = self._retry.delay(attempts)
            await self._index.finish_attempt(delivery.delivery_id, DeliveryState.PENDING, error, now + delay, now)
            self._metrics.deliveries.labels(delivery.kind, "retry").inc()
            log.warning("delivery failed, will retry", extra={
                "delivery_id": delivery.delivery_id, "reason": error, "attempts": attempts, "retry_in": delay})
            return
        source = delivery.source
        why = error if refused else f"{error} (after {attempts} attempts)"
        try:
            await dead_letter(self._producer, self._topics, self._metrics, self._stage, why, delivery.delivery_id,
                              delivery.subject, source["topic"], source["partition"], [source["offset"]])
        except Unavailable:
            log.warning("dead-letter topic unavailable; the delivery stays pending",
                        extra={"delivery_id": delivery.delivery_id})
            await self._index.finish_attempt(delivery.delivery_id, DeliveryState.PENDING, error,
                                             now + self._retry.max_seconds, now)
            return
        await self._index.finish_attempt(delivery.delivery_id, DeliveryState.FAILED, why, now, now)
        self._metrics.deliveries.labels(delivery.kind, "failed").inc()
