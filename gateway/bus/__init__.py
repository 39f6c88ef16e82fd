"""The bus port: durable, partitioned, at-least-once records with consumer groups.

Two adapters implement it with the same semantics: ``kafka`` (production) and ``embedded`` (one machine,
SQLite). The contract, checked by one test suite against both:

* ``send`` returns an awaitable that completes only when the record is durable (Kafka ``acks=all``;
  embedded: committed to disk), or raises ``BusUnavailable``; ``publish`` awaits it.
* Records with the same key go to the same partition and keep their order.
* A consumer commits only what it marked done, up to the first gap; a consumer that dies before committing
  gets the records again (at-least-once), and a group shares partitions among its live members.
* A record larger than ``max_record_bytes`` is refused with ``RecordTooLarge`` before anything is written.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

Headers = Sequence[tuple[str, bytes]]
TopicPartition = tuple[str, int]
RevokeCallback = Callable[[set[TopicPartition]], Awaitable[None]]

MAX_RECORD_BYTES = 1_048_576
"""Largest record (key + value + headers) the gateway puts on any bus: 1 MiB."""


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class BusError(Exception):
    """A bus failure; ``retriable`` says whether the same call may succeed later."""

    retriable = False


class ProducerDied(BusError):
    """The producer's background work stopped while it was in use."""


class BusUnavailable(BusError):
    """The bus did not make a record durable in time (broker down, disk full, timeout)."""

    retriable = True


class RecordTooLarge(BusError):
    """The record exceeds the bus's record limit; the sender must chunk it."""


def record_size(key: bytes, value: bytes | memoryview, headers: Headers) -> int:
    return len(key) + len(value) + sum(len(name) + len(data) for name, data in headers)


def check_record_size(key: bytes, value: bytes | memoryview, headers: Headers, limit: int) -> None:
    size = record_size(key, value, headers)
    if size > limit:
        raise RecordTooLarge(f"record of {size} bytes exceeds the bus limit of {limit} bytes")


class Producer(Protocol):
    max_record_bytes: int

    async def send(self, topic: str, key: bytes, value: bytes, headers: Headers = ()) -> Awaitable[None]:
        """Queue a record; await the result to know it is durable. Waits here when the queue is full."""
        ...

    async def publish(self, topic: str, key: bytes, value: bytes, headers: Headers = ()) -> None:
        """Send and wait until durable."""
        ...

    async def wait(self) -> None:
        """Return or raise only if the producer's background work (poller, writer, sender) died: it can make
        nothing durable any more, so its owner must stop and be restarted, not refuse every send quietly."""
        ...


class Consumer(Protocol):
    group: str

    async def fetch(self, timeout: float = 1.0, max_records: int = 500) -> list[Record]:
        """Next records of the assigned partitions, in offset order per partition; [] after ``timeout``."""
        ...

    def done(self, record: Record) -> None:
        """Mark a record processed; ``commit`` may then move past it once everything before it is done."""
        ...

    async def commit(self) -> None:
        """Commit, per partition, the offset after the last contiguous done record."""
        ...

    def assignment(self) -> set[TopicPartition]: ...

    def owns(self, topic: str, key: bytes) -> bool:
        """Whether records with ``key`` on ``topic`` go to a partition assigned to this member now, so that
        work on a key's state (a study's stability) is done by the one member that also receives its records."""
        ...

    async def lag(self) -> dict[TopicPartition, int]:
        """Records on each assigned partition not yet done by this member (not fetched, or fetched and not
        finished, e.g. an instance being retried): what is waiting."""
        ...


class Bus(Protocol):
    """Creates producers and consumer-group members; ``kind`` names the adapter for logs and metrics."""

    kind: str

    async def ensure_topics(self) -> None: ...

    def producer(self) -> AbstractAsyncContextManager[Producer]: ...

    async def read(self, topic: str, partition: int, offsets: Sequence[int]) -> list[Record]:
        """Particular records, outside any group (re-driving dead letters); those past retention are missing."""
        ...

    def consumer(
        self, group: str, topics: Sequence[str], on_revoked: RevokeCallback | None = None
    ) -> AbstractAsyncContextManager[Consumer]: ...

    async def backlog(self, group: str, topic: str) -> int:
        """Records on ``topic`` that ``group`` has not committed yet, over every partition and whichever members
        (or pods) hold them; a partition the group has never committed counts from its earliest record held."""
        ...


@dataclass(slots=True)
class _PartitionProgress:
    fetched: deque[int] = field(default_factory=deque)
    done: set[int] = field(default_factory=set)
    committable: int | None = None


class OffsetTracker:
    """Which offset each partition may commit: after the last record that it and all before it are done.

    Records of one partition may finish out of order when processed concurrently; committing past an
    unfinished one would lose it on a crash, so the commit stops at the first gap (as faust does).
    """

    def __init__(self) -> None:
        self._partitions: dict[TopicPartition, _PartitionProgress] = {}

    def fetched(self, record: Record) -> None:
        self._partitions.setdefault((record.topic, record.partition), _PartitionProgress()).fetched.append(
            record.offset
        )

    def done(self, record: Record) -> None:
        progress = self._partitions.get((record.topic, record.partition))
        if progress is None:
            return
        progress.done.add(record.offset)
        while progress.fetched and progress.fetched[0] in progress.done:
            offset = progress.fetched.popleft()
            progress.done.discard(offset)
            progress.committable = offset + 1

    def take_committable(self, partitions: set[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """Offsets to commit now (each only once), optionally for some partitions only."""
        offsets: dict[TopicPartition, int] = {}
        for tp, progress in self._partitions.items():
            if progress.committable is not None and (partitions is None or tp in partitions):
                offsets[tp] = progress.committable
                progress.committable = None
        return offsets

    def unfinished(self, tp: TopicPartition) -> int:
        """Records of the partition fetched but not yet done: an instance being retried is still waiting."""
        progress = self._partitions.get(tp)
        return 0 if progress is None else len(progress.fetched)

    def forget(self, partitions: set[TopicPartition]) -> None:
        """Drop state of partitions no longer assigned: their records will be redelivered to the new owner."""
        for tp in partitions:
            self._partitions.pop(tp, None)
