"""The audit role: audit records from their topic to the audit record repository and the local audit log.

Two consumer groups of the audit topic, so that a repository outage never holds back the local log. Each lingers
after a fetch (``LINGER_SECONDS``) and merges the receipts that belong together (``core.audit.merged``: the store
stage writes one per batch, a study arriving over a minute is then a few messages, not hundreds). Delivery
sends the records as one batch and commits only once the repository has them: while it is down the records
wait on the bus (durably, in order) and the member backs off and comes back for them. A record the repository can
never take (too large for a datagram) is dead-lettered with that reason. The log writes a fetch's records in one
transaction, once each, and purges what is older than the retention.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.audit.message import AuditSource, render
from gateway.audit.syslog import Repository, syslog_message
from gateway.core.audit import AuditRecord, Outcome, merged
from gateway.core.errors import describe, retriable
from gateway.index import AuditLog
from gateway.metrics import Metrics

log = logging.getLogger(__name__)

_PURGE_SECONDS = 3600.0
LINGER_SECONDS = 2.0
"""How long the audit role gathers records before it merges and sends them: the delay a record may have."""


class AuditDelivery:
    def __init__(self, repository: Repository, source: AuditSource, app_name: str, bom: bool, transport: str,
                 metrics: Metrics) -> None:
        self._repository = repository
        self._source = source
        self._app_name = app_name
        self._bom = bom
        self._transport = transport
        self._metrics = metrics
        self._batch: list[tuple[AuditRecord, bytes]] = []

    async def handle(self, record: AuditRecord, source: dict[str, Any]) -> None:
        """Rendered and checked one by one, so that a record the repository can never take is dead-lettered
        alone."""
        message = self._message(record)
        self._repository.check(message)
        self._batch.append((record, message))

    async def fetched(self) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return
        rendered = dict(batch)
        messages = [rendered.get(record) or self._message(record) for record in merged([r for r, _ in batch])]
        await self._repository.send(messages)
        self._metrics.audit_delivered.labels(self._transport).inc(len(batch))

    def loops(self) -> list[tuple[float, Callable[[], Awaitable[None]]]]:
        return []

    def _message(self, record: AuditRecord) -> bytes:
        return syslog_message(render(record, self._source), at=record.at, hostname=record.node,
                              app_name=self._app_name, procid=record.process,
                              failure=record.outcome is not Outcome.SUCCESS, bom=self._bom)


class AuditLogStage:
    def __init__(self, index: AuditLog, retention_days: int, metrics: Metrics) -> None:
        self._metrics = metrics
        self._index = index
        self._retention = retention_days * 86400.0
        self._batch: list[AuditRecord] = []

    async def handle(self, record: AuditRecord, source: dict[str, Any]) -> None:
        self._batch.append(record)

    async def fetched(self) -> None:
        """One transaction for the fetch; when the index refuses it for good, record by record, and one it refuses
        alone is logged and left out (it still goes to the repository: the other group sends it)."""
        batch, self._batch = merged(self._batch), []
        try:
            await self._index.log_audit(batch)
        except Exception as exc:
            if retriable(exc) is True:
                raise
            for record in batch:
                try:
                    await self._index.log_audit([record])
                except Exception as alone:
                    if retriable(alone) is True:
                        raise
                    self._metrics.audit_failures.inc()
                    log.error("an audit record was left out of the audit log: the index refused it",
                              extra={"record_id": record.id, "event": record.event.meaning,
                                     "error": describe(alone)})

    def loops(self) -> list[tuple[float, Callable[[], Awaitable[None]]]]:
        return [(_PURGE_SECONDS, self._purge)]

    async def _purge(self) -> None:
        await self._index.purge_audit(time.time() - self._retention)
