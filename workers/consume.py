"""Consume: turn the instances topic's records back into instances, one partition at a time.

Records of several instances interleave in a partition (several associations send one study at once). The
assembler follows each instance by its id and hands its pieces to a sink as they arrive, never holding a
whole instance: ``begin`` with the header, ``data`` per chunk, ``end`` with the envelope and the last bytes,
``discard`` when the sender aborted or it was orphaned (no end for ``orphan_timeout`` of record time), or
``broken`` for a run that ended but cannot be stored (its start past retention, unreadable headers): those
go to the dead-letter topic. A record is marked done only when its instance has ended or been
discarded, so offsets are never committed past the first record of an unfinished instance, and a consumer
that restarts sees every unfinished instance again from its first chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from gateway.bus import Record
from gateway.core import envelope
from gateway.core.envelope import InstanceEnvelope, InstanceHeader

log = logging.getLogger(__name__)


class InstanceSink(Protocol):
    """The stage that consumes instances (storage); each call may raise to stop consumption and retry."""

    async def begin(self, header: InstanceHeader) -> None: ...

    async def data(self, instance_id: str, data: bytes) -> None: ...

    async def end(self, instance: InstanceEnvelope, data: bytes, records: list[Record]) -> None:
        """The last bytes; ``records`` are all of the instance's records (for the dead-letter reference)."""
        ...

    async def discard(self, instance_id: str, reason: str) -> None: ...

    async def broken(self, instance_id: str, reason: str, records: list[Record]) -> None:
        """A run that ended but cannot be stored (missing or unreadable parts): for the dead-letter topic."""
        ...


@dataclass(slots=True)
class _Open:
    header: InstanceHeader | None
    records: list[Record] = field(default_factory=list)
    next_sequence: int = 0
    last_timestamp_ms: int = 0
    broken: str | None = None
    """Why the run cannot be stored; it is then followed to its end and dead-lettered whole."""


def _header(data: bytes | None) -> InstanceHeader | None:
    try:
        return InstanceHeader.from_json(data) if data else None
    except (ValueError, TypeError):
        return None


def _envelope(record: Record) -> InstanceEnvelope | None:
    data = record.header(envelope.ENVELOPE)
    try:
        return InstanceEnvelope.from_json(data) if data else None
    except (ValueError, TypeError):
        return None


def _marker(record: Record) -> Record:
    """A record without its bytes: enough to mark it done later, without keeping a chunk in memory."""
    return Record(record.topic, record.partition, record.offset, record.key, b"", record.headers, record.timestamp_ms)


class InstanceAssembler:
    def __init__(self, sink: InstanceSink, done: Callable[[Record], None], orphan_timeout_ms: int) -> None:
        self._sink = sink
        self._done = done
        self._orphan_timeout_ms = orphan_timeout_ms
        self._open: dict[tuple[str, int], dict[str, _Open]] = {}

    def forget(self, partitions: set[tuple[str, int]]) -> None:
        """Partitions moved to another consumer, which will see their unfinished instances from the start."""
        for partition in partitions:
            self._open.pop(partition, None)

    async def feed(self, record: Record) -> None:
        partition = self._open.setdefault((record.topic, record.partition), {})
        await self._expire_orphans(partition, record.timestamp_ms)
        kind = record.header(envelope.KIND)
        instance_id = (record.header(envelope.INSTANCE) or b"").decode()
        sequence = int(record.header(envelope.SEQUENCE) or b"-1")
        current = partition.get(instance_id)
        if kind == envelope.ABORT or kind not in (envelope.CHUNK, envelope.END):
            if current is not None:
                await self._close(partition, instance_id, "the receiver aborted the instance")
            self._done(record)
            return
        if sequence == 0:
            if current is not None:  # the same run again (a redelivery we already began): start over
                await self._close(partition, instance_id, "restarted from its first record")
            if kind == envelope.END:
                await self._single(record)
                return
            current = partition[instance_id] = _Open(_header(record.header(envelope.BEGIN)))
            if current.header is None:
                current.broken = "its first record has no readable header"
            else:
                await self._sink.begin(current.header)
        elif current is None:
            current = partition[instance_id] = _Open(None, broken="its first records are missing from the bus")
        elif sequence != current.next_sequence:
            current.broken = current.broken or "its records are out of sequence"
        current.records.append(_marker(record))
        current.last_timestamp_ms = record.timestamp_ms
        current.next_sequence = sequence + 1
        if kind == envelope.CHUNK:
            if current.broken is None:
                await self._sink.data(instance_id, record.value)
            return
        del partition[instance_id]
        instance = _envelope(record)
        if current.broken is None and instance is not None:
            await self._sink.end(instance, record.value, current.records)
        else:
            await self._sink.discard(instance_id, current.broken or "unreadable envelope")
            await self._sink.broken(instance_id, current.broken or "its end record has no readable envelope",
                                    current.records)
        for done in current.records:
            self._done(done)

    async def _single(self, record: Record) -> None:
        instance = _envelope(record)
        if instance is None:
            instance_id = (record.header(envelope.INSTANCE) or b"").decode()
            await self._sink.broken(instance_id, "its only record has no readable envelope", [_marker(record)])
        else:
            await self._sink.begin(instance)
            await self._sink.end(instance, record.value, [_marker(record)])
        self._done(record)

    async def _close(self, partition: dict[str, _Open], instance_id: str, reason: str) -> None:
        closed = partition.pop(instance_id)
        await self._sink.discard(instance_id, reason)
        for done in closed.records:
            self._done(done)

    async def _expire_orphans(self, partition: dict[str, _Open], now_ms: int) -> None:
        for instance_id, current in list(partition.items()):
            if now_ms - current.last_timestamp_ms > self._orphan_timeout_ms:
                log.warning("instance orphaned: no end record arrived", extra={"instance_id": instance_id})
                await self._close(partition, instance_id, "orphaned: the sender never finished it")
