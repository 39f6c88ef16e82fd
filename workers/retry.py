"""What a worker does when a service it needs is down: leave the group, back off, join again; and the shape
every worker role shares (one task, drained on stop)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

from gateway.bus import Consumer
from gateway.core.errors import retriable
from gateway.metrics import Metrics

log = logging.getLogger(__name__)


async def with_backoff(stage: str, consume: Callable[[], Awaitable[None]], stopping: asyncio.Event,
                       retry_max_seconds: float, metrics: Metrics,
                       progressed: Callable[[], bool] = lambda: False) -> None:
    """Run ``consume`` until it returns or ``stopping`` is set, backing off exponentially while it fails
    on an unavailable service, so nothing busy-loops during an outage. The back-off starts over after an
    attempt that got work done (``progressed``): its failure is a new outage, not more of the last one.
    Errors of a single message never get here (the failure policy dead-letters them); anything else that is
    not an outage is a crash."""
    backoff = 1.0
    while not stopping.is_set():
        try:
            await consume()
            return
        except Exception as exc:
            if retriable(exc) is not True:
                raise
            if progressed():
                backoff = 1.0
            metrics.stage_retries.labels(stage).inc()
            log.warning("stage paused: a service is unavailable",
                        extra={"stage": stage, "error": str(exc), "retry_in": backoff})
            try:
                await asyncio.wait_for(stopping.wait(), backoff)
            except TimeoutError:
                pass
            backoff = min(backoff * 2, retry_max_seconds)


class WorkerRole:
    """A worker role as the runtime sees it: its work runs in one task, backing off while a service is down;
    stopping lets in-flight work finish for ``drain_timeout`` seconds, then cancels it."""

    name = "worker"
    group = ""
    """The consumer group its members join."""

    def __init__(self, metrics: Metrics, retry_max_seconds: float, drain_timeout: float) -> None:
        self._metrics = metrics
        self._retry_max = retry_max_seconds
        self._drain_timeout = drain_timeout
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._progressed = False
        """Set by ``_consume`` when it has committed work since the last failure."""

    def _take_progress(self) -> bool:
        progressed, self._progressed = self._progressed, False
        return progressed

    async def _consume(self) -> None:
        raise NotImplementedError

    async def _report_lag(self, consumer: Consumer, topic: str) -> None:
        """Also as the member leaves on an outage: what it was retrying still waits, and the gauge, not updated
        while the member backs off, must say so rather than keep an earlier 0."""
        with contextlib.suppress(Exception):  # the bus may be what is down
            self._metrics.consumer_lag.labels(self.group, topic).set(sum((await consumer.lag()).values()))

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(
            with_backoff(self.name, self._consume, self._stopping, self._retry_max, self._metrics,
                         self._take_progress),
            name=f"{self.name}-pool")
        return self

    async def wait(self) -> None:
        assert self._task is not None
        await asyncio.shield(self._task)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._stopping.set()
        assert self._task is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self._drain_timeout)
        except TimeoutError:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
