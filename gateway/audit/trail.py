"""The audit trail a process's roles write to: records made durable on the audit topic, in order.

It is a role of its own, entered before every other role and left after them, so that Application Start is the
first record a process writes and Application Stop its last. Every record goes to one partition (one key): the
audit role delivers them to the repository in the order they were written.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import pwd
import socket
import time
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Self

from gateway.bus import Bus, Producer
from gateway.core import audit
from gateway.core.audit import (
    TRAIL_ROLE,
    Action,
    AuditRecord,
    Event,
    EventType,
    Interface,
    Outcome,
    Participant,
    Role,
)
from gateway.core.errors import describe, retriable
from gateway.metrics import Metrics

log = logging.getLogger(__name__)

KEY = b"audit"
_NOTE_DRAIN_SECONDS = 5.0
_START_RETRY_SECONDS = 0.5
_MAX_PENDING_NOTES = 1000
"""Refusals recorded without waiting that may wait for the bus at once; beyond, they are counted and dropped."""


class BusAuditTrail:
    name = TRAIL_ROLE

    def __init__(self, bus: Bus, topic: str, ae_title: str, metrics: Metrics, configuration: str = "") -> None:
        """``configuration``: a digest of the effective settings, named in Application Start so that an auditor
        sees when a process started with other settings than the one before it."""
        self._configuration = configuration
        self._bus = bus
        self._topic = topic
        self._ae_title = ae_title
        self._metrics = metrics
        self._producer: Producer | None = None
        self._opened: AbstractAsyncContextManager[Producer] | None = None
        self._notes: set[asyncio.Task[None]] = set()
        self._stopped = asyncio.Event()
        self._starting: asyncio.Task[None] | None = None
        self._dropped_logged_at = -math.inf
        self._node = socket.gethostname()
        self._process = str(os.getpid())

    async def __aenter__(self) -> Self:
        """Application Start is written before the other roles start; when the bus cannot take it (a full disk:
        the roles then start unready, as the runtime has them), it is written as soon as it can be."""
        opened = self._bus.producer()
        self._producer = await opened.__aenter__()
        self._opened = opened
        start = self._activity(EventType.APPLICATION_START)
        try:
            await self.record(start)
        except Exception as exc:
            if retriable(exc) is not True:
                raise
            log.warning("Application Start waits for the bus", extra={"error": describe(exc)})
            self._starting = asyncio.create_task(self._retried(start), name="audit-start")
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            if self._starting is not None and not self._starting.done():
                self._starting.cancel()
                log.error("Application Start was never audited: the bus did not take it")
            if self._notes:
                await asyncio.wait(self._notes, timeout=_NOTE_DRAIN_SECONDS)
            await self.record(self._activity(EventType.APPLICATION_STOP))
        except Exception as error:
            log.error("Application Stop could not be audited", extra={"error": describe(error)})
        finally:
            self._stopped.set()
            opened, self._opened, self._producer = self._opened, None, None
            if opened is not None:
                await opened.__aexit__(kind, exc, tb)

    async def _retried(self, record: AuditRecord) -> None:
        pause = _START_RETRY_SECONDS
        while True:
            await asyncio.sleep(pause)
            try:
                await self.record(record)
                return
            except Exception as exc:
                if retriable(exc) is not True:
                    log.error("Application Start could not be audited", extra={"error": describe(exc)})
                    return
                pause = min(pause * 2, 30.0)

    async def wait(self) -> None:
        await self._stopped.wait()

    async def record(self, record: AuditRecord) -> None:
        if self._producer is None:
            raise RuntimeError("the audit trail is not open")
        stamped = dataclasses.replace(record, node=self._node, process=self._process)
        await self._producer.publish(self._topic, KEY, audit.encode(stamped))
        self._metrics.audit_records.labels(record.event.meaning).inc()

    def note(self, record: AuditRecord) -> None:
        if len(self._notes) >= _MAX_PENDING_NOTES:  # a flood of refusals (a scan, a storm): bounded, counted
            self._metrics.audit_failures.inc()
            now = time.monotonic()
            if now - self._dropped_logged_at > 60:
                self._dropped_logged_at = now
                log.error("audit records of refusals dropped: too many waiting for the bus",
                          extra={"event": record.event.meaning, "waiting": len(self._notes)})
            return
        task = asyncio.create_task(self._safely(record), name="audit-note")
        self._notes.add(task)
        task.add_done_callback(self._notes.discard)

    async def _safely(self, record: AuditRecord) -> None:
        try:
            await self.record(record)
        except Exception as exc:
            self._metrics.audit_failures.inc()
            log.error("an audit record was lost: the bus did not take it",
                      extra={"event": record.event.meaning, "error": describe(exc)})

    def _activity(self, kind: audit.Code) -> AuditRecord:
        return AuditRecord(
            Event.APPLICATION_ACTIVITY, Outcome.SUCCESS,
            (audit.this_gateway(self._ae_title, Role.APPLICATION),
             Participant(_launcher(), True, Role.APPLICATION_LAUNCHER)),
            Interface.SYSTEM, Action.EXECUTE, (kind,),
            outcome_text=f"settings {self._configuration}" if self._configuration else "")


def _launcher() -> str:
    """Who started the process: the operating-system user (in Kubernetes, the container's)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())
