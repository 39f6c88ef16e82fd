"""The embedded bus: Kafka's semantics on one machine, in a SQLite database in WAL mode.

Durability: a record's future completes only after the transaction holding it has committed with
``synchronous=FULL`` (the WAL is fsynced), so kill -9 of any process loses nothing that was acknowledged.
Writes from one process are group-committed by one writer task; several processes (receiver workers) may
share the file, SQLite serialises their transactions. Consumer groups: live members heartbeat into a table,
each is due the partitions ``p`` with ``p % members == its rank``, and a partition changes owner only
after the old owner released it or stopped heartbeating for ``session_timeout_seconds``, like a Kafka
consumer that left the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import struct
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from gateway import disk
from gateway.bus import (
    MAX_RECORD_BYTES,
    BusUnavailable,
    Headers,
    OffsetTracker,
    ProducerDied,
    Record,
    RevokeCallback,
    TopicPartition,
    check_record_size,
)
from gateway.metrics import Metrics
from gateway.settings import EmbeddedBusSettings
from gateway.sqlite import use_wal, write_transaction

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    "offset" INTEGER NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    headers BLOB NOT NULL,
    ts INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS records_position ON records (topic, partition, "offset");
CREATE INDEX IF NOT EXISTS records_ts ON records (ts);
CREATE TABLE IF NOT EXISTS log_end (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
CREATE TABLE IF NOT EXISTS committed (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, partition)
);
CREATE TABLE IF NOT EXISTS owners (
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    member TEXT NOT NULL,
    PRIMARY KEY (grp, topic, partition)
);
CREATE TABLE IF NOT EXISTS members (
    grp TEXT NOT NULL,
    member TEXT NOT NULL,
    heartbeat REAL NOT NULL,
    PRIMARY KEY (grp, member)
);
"""

_MAX_BATCH_BYTES = 64 * 1024 * 1024
_MAX_QUEUED_BYTES = 256 * 1024 * 1024
_RETENTION_CHECK_SECONDS = 60.0
_READ_PAGE = 32
_DISK_FULL = "disk full"


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False)
    # Before the first table only (a no-op later): a 0.5 MB record then spans 32 overflow pages, not 128,
    # which halves the CPU of writing it and cuts reading it (measured with SQLite 3.40 on this machine).
    connection.execute("PRAGMA page_size=16384")
    use_wal(connection, 60.0)
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA busy_timeout=60000")
    return connection


def _failure(exc: sqlite3.Error, directory: Path) -> str:
    """What a peer (Error Comment) and an operator are told of an SQLite error."""
    return _DISK_FULL if disk.exhausted(exc, directory) else str(exc)


@contextlib.contextmanager
def _outage(directory: Path) -> Iterator[None]:
    """SQLite's operational errors (a full disk, I/O, a lock held past the busy timeout) mean the bus is
    unavailable, as Kafka being down does: the consumer's owner backs off and joins again."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise BusUnavailable(f"embedded bus: {_failure(exc, directory)}") from exc


_NAME_LENGTH = struct.Struct("<H")
_VALUE_LENGTH = struct.Struct("<I")


def encode_headers(headers: Headers) -> bytes:
    parts = []
    for name, value in headers:
        encoded = name.encode()
        parts += [_NAME_LENGTH.pack(len(encoded)), encoded, _VALUE_LENGTH.pack(len(value)), value]
    return b"".join(parts)


def decode_headers(data: bytes) -> tuple[tuple[str, bytes], ...]:
    headers = []
    offset = 0
    while offset < len(data):
        (size,) = _NAME_LENGTH.unpack_from(data, offset)
        name = data[offset + 2 : offset + 2 + size].decode()
        offset += 2 + size
        (size,) = _VALUE_LENGTH.unpack_from(data, offset)
        headers.append((name, data[offset + 4 : offset + 4 + size]))
        offset += 4 + size
    return tuple(headers)


def partition_for(key: bytes, partitions: int) -> int:
    return zlib.crc32(key) % partitions


class EmbeddedBus:
    kind = "embedded"

    def __init__(self, directory: Path, settings: EmbeddedBusSettings, metrics: Metrics) -> None:
        self._directory = directory
        self._path = directory / "bus.sqlite3"
        self._settings = settings
        self._metrics = metrics
        self._appended = asyncio.Event()
        """Wakes this process's consumers when this process appends; other processes are seen by polling."""
        self._schema_ready = False
        directory.mkdir(parents=True, exist_ok=True)
        try:
            self._open().close()
        except sqlite3.Error as exc:
            if not disk.exhausted(exc, directory):
                raise
            log.warning("disk full: the embedded bus opens once there is room", extra={"path": str(directory)})

    def _open(self) -> sqlite3.Connection:
        """A connection; the first one that can also creates the tables, which on a full disk is only once there
        is room again (SQLite cannot even create a WAL database's -shm file then)."""
        connection = _connect(self._path)
        if not self._schema_ready:
            try:
                connection.executescript(_SCHEMA)
            except BaseException:
                connection.close()
                raise
            self._schema_ready = True
        return connection

    @property
    def partitions(self) -> int:
        return self._settings.partitions

    async def ensure_topics(self) -> None:
        """Topics exist implicitly; nothing to create."""

    async def read(self, topic: str, partition: int, offsets: Sequence[int]) -> list[Record]:
        def select() -> list[Record]:
            with contextlib.closing(self._open()) as connection:
                placeholders = ",".join("?" * len(offsets))
                rows = connection.execute(
                    f'SELECT "offset", key, value, headers, ts FROM records WHERE topic = ? AND partition = ? '
                    f'AND "offset" IN ({placeholders}) ORDER BY "offset"',
                    (topic, partition, *offsets),
                ).fetchall()
            return [Record(topic, partition, o, k, v, decode_headers(h), ts) for o, k, v, h, ts in rows]

        return await asyncio.to_thread(select)

    async def backlog(self, group: str, topic: str) -> int:
        def count() -> int:
            with contextlib.closing(self._open()) as connection:
                row = connection.execute(
                    'SELECT COALESCE(SUM(e.next_offset - COALESCE(c.next_offset, (SELECT MIN(r."offset") FROM records r '
                    "WHERE r.topic = e.topic AND r.partition = e.partition), e.next_offset)), 0) FROM log_end e "
                    "LEFT JOIN committed c ON c.grp = ? AND c.topic = e.topic AND c.partition = e.partition "
                    "WHERE e.topic = ?", (group, topic)).fetchone()
            return int(row[0])

        return await asyncio.to_thread(count)

    @asynccontextmanager
    async def producer(self) -> AsyncIterator[EmbeddedProducer]:
        producer = EmbeddedProducer(self)
        await producer.start()
        try:
            yield producer
        finally:
            await producer.stop()

    @asynccontextmanager
    async def consumer(
        self, group: str, topics: Sequence[str], on_revoked: RevokeCallback | None = None
    ) -> AsyncIterator[EmbeddedConsumer]:
        consumer = EmbeddedConsumer(self, group, tuple(topics), on_revoked)
        await consumer.join()
        try:
            yield consumer
        finally:
            await consumer.leave()

    def _notify_appended(self) -> None:
        self._appended.set()
        self._appended = asyncio.Event()


_Pending = tuple[str, bytes, bytes, bytes, asyncio.Future[None]]


class EmbeddedProducer:
    """Appends through one writer task. A batch that fails (a full disk, an I/O error) fails only its own
    records' futures with ``BusUnavailable``; the writer goes on, and the next batch opens a fresh connection."""

    max_record_bytes = MAX_RECORD_BYTES

    def __init__(self, bus: EmbeddedBus) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._queued_bytes = 0
        self._room = asyncio.Condition()
        self._writer: asyncio.Task[None] | None = None
        self._connection: sqlite3.Connection | None = None
        """Opened by the first batch, so the producer starts even while the disk is too full to open the bus."""
        self._next_retention_check = 0.0
        self._failing: str | None = None
        """The failure last logged, so a failing disk logs once, not once per batch."""

    async def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="embedded-bus-writer")

    async def wait(self) -> None:
        assert self._writer is not None
        try:
            await asyncio.shield(self._writer)
        except asyncio.CancelledError:
            if self._writer.cancelled():
                raise ProducerDied("the embedded bus writer was cancelled") from None
            raise
        except Exception as exc:
            raise ProducerDied(f"the embedded bus writer failed: {exc!r}") from exc
        raise ProducerDied("the embedded bus writer stopped")

    async def stop(self) -> None:
        """Flush what is queued, then close."""
        if self._writer is not None and not self._writer.done():
            await self._queue.join()
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._connection is not None:
            await asyncio.to_thread(self._connection.close)

    async def send(self, topic: str, key: bytes, value: bytes, headers: Headers = ()) -> Awaitable[None]:
        check_record_size(key, value, headers, self.max_record_bytes)
        if self._writer is None or self._writer.done():
            raise BusUnavailable("embedded bus writer is not running")
        size = len(value)
        async with self._room:
            await self._room.wait_for(lambda: self._queued_bytes < _MAX_QUEUED_BYTES)
            self._queued_bytes += size
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        encoded_headers = encode_headers(headers)
        self._queue.put_nowait((topic, bytes(key), bytes(value), encoded_headers, future))
        return future

    async def publish(self, topic: str, key: bytes, value: bytes, headers: Headers = ()) -> None:
        await (await self.send(topic, key, value, headers))

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0][2])
            while not self._queue.empty() and size < _MAX_BATCH_BYTES:
                item = self._queue.get_nowait()
                batch.append(item)
                size += len(item[2])
            try:
                await asyncio.to_thread(self._write, batch)
            except sqlite3.Error as exc:
                failure = _failure(exc, self._bus._directory)
                if failure != self._failing:
                    self._failing = failure
                    if failure == _DISK_FULL:
                        log.error("embedded bus write failed: disk full",
                                  extra={"path": str(self._bus._directory), "records": len(batch)})
                    else:
                        log.error("embedded bus write failed", extra={"error": failure, "records": len(batch)})
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(BusUnavailable(
                            failure if failure == _DISK_FULL else f"embedded bus write failed: {failure}"))
                self._bus._metrics.bus_publish_failures.labels(batch[0][0]).inc(len(batch))
            else:
                if self._failing is not None:
                    self._failing = None
                    log.info("embedded bus writes again", extra={"path": str(self._bus._directory)})
                for topic, _, value, _, future in batch:
                    if not future.done():
                        future.set_result(None)
                    self._bus._metrics.bus_records_published.labels(topic).inc()
                    self._bus._metrics.bus_bytes_published.labels(topic).inc(len(value))
                self._bus._notify_appended()
            finally:
                for _ in batch:
                    self._queue.task_done()
                async with self._room:
                    self._queued_bytes -= size
                    self._room.notify_all()

    def _write(self, batch: list[_Pending]) -> None:
        if self._connection is None:
            self._connection = self._bus._open()
        try:
            self._append(self._connection, batch)
        except BaseException:
            self._connection.close()  # whatever a failed transaction left in it, the next batch starts afresh
            self._connection = None
            raise

    def _append(self, connection: sqlite3.Connection, batch: list[_Pending]) -> None:
        now_ms = int(time.time() * 1000)
        partitions = self._bus.partitions
        with write_transaction(connection):
            ends: dict[TopicPartition, int] = {}
            for topic, key, value, headers, _ in batch:
                tp = (topic, partition_for(key, partitions))
                if tp not in ends:
                    row = connection.execute(
                        "SELECT next_offset FROM log_end WHERE topic = ? AND partition = ?", tp
                    ).fetchone()
                    ends[tp] = row[0] if row else 0
                connection.execute(
                    'INSERT INTO records (topic, partition, "offset", key, value, headers, ts) '
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (tp[0], tp[1], ends[tp], key, value, headers, now_ms),
                )
                ends[tp] += 1
            connection.executemany(
                "INSERT INTO log_end (topic, partition, next_offset) VALUES (?, ?, ?) "
                "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
                [(topic, partition, end) for (topic, partition), end in ends.items()],
            )
            if time.monotonic() >= self._next_retention_check:
                self._next_retention_check = time.monotonic() + _RETENTION_CHECK_SECONDS
                horizon = now_ms - int(self._bus._settings.retention_hours * 3_600_000)
                connection.execute("DELETE FROM records WHERE ts < ?", (horizon,))


class EmbeddedConsumer:
    """One member of a consumer group; fetches from the partitions the group gives it. Its calls raise
    ``BusUnavailable`` when SQLite fails on them (``_outage``)."""

    def __init__(
        self, bus: EmbeddedBus, group: str, topics: tuple[str, ...], on_revoked: RevokeCallback | None
    ) -> None:
        self.group = group
        self._bus = bus
        self._topics = topics
        self._on_revoked = on_revoked
        self._member = f"{group}-{uuid.uuid4()}"
        self._connection: sqlite3.Connection | None = None
        self._assigned: set[TopicPartition] = set()
        self._positions: dict[TopicPartition, int] = {}
        self._tracker = OffsetTracker()
        self._last_heartbeat = 0.0
        self._heartbeat_interval = min(bus._settings.session_timeout_seconds / 4, 0.5)

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def owns(self, topic: str, key: bytes) -> bool:
        return (topic, partition_for(key, self._bus.partitions)) in self._assigned

    async def lag(self) -> dict[TopicPartition, int]:
        def ends() -> dict[TopicPartition, int]:
            assert self._connection is not None
            return {(topic, partition): end for topic, partition, end in self._connection.execute(
                "SELECT topic, partition, next_offset FROM log_end").fetchall()}

        with _outage(self._bus._directory):
            log_ends = await asyncio.to_thread(ends)
        return {tp: max(0, log_ends.get(tp, 0) - position) + self._tracker.unfinished(tp)
                for tp, position in self._positions.items()}

    async def join(self) -> None:
        with _outage(self._bus._directory):
            self._connection = await asyncio.to_thread(self._bus._open)
            try:
                await self._rebalance()
            except BaseException:
                await asyncio.to_thread(self._connection.close)
                raise

    async def leave(self) -> None:
        """Commit what is done and leave the group, so the partitions move on without waiting for a timeout."""
        try:
            with _outage(self._bus._directory):
                await self.commit()
                await asyncio.to_thread(self._leave)
        finally:
            if self._connection is not None:
                await asyncio.to_thread(self._connection.close)

    async def fetch(self, timeout: float = 1.0, max_records: int = 500) -> list[Record]:
        deadline = time.monotonic() + timeout
        while True:
            appended = self._bus._appended
            with _outage(self._bus._directory):
                if time.monotonic() - self._last_heartbeat >= self._heartbeat_interval:
                    await self._rebalance()
                records = await asyncio.to_thread(self._read, max_records)
            if records:
                for record in records:
                    self._positions[(record.topic, record.partition)] = record.offset + 1
                    self._tracker.fetched(record)
                    self._bus._metrics.bus_records_consumed.labels(record.topic, self.group).inc()
                return records
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            try:
                await asyncio.wait_for(
                    appended.wait(), min(remaining, self._bus._settings.poll_interval_seconds * 4)
                )
            except TimeoutError:
                pass

    def done(self, record: Record) -> None:
        if (record.topic, record.partition) in self._assigned:
            self._tracker.done(record)

    async def commit(self) -> None:
        with _outage(self._bus._directory):
            await self._commit_partitions(self._assigned)

    async def _commit_partitions(self, partitions: set[TopicPartition]) -> None:
        offsets = self._tracker.take_committable(partitions)
        if offsets:
            await asyncio.to_thread(self._commit, offsets)
            self._bus._metrics.bus_commits.labels(self.group).inc()

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit only partitions this member still owns: a member the group expelled is fenced off."""
        assert self._connection is not None
        self._connection.executemany(
            "INSERT INTO committed (grp, topic, partition, next_offset) "
            "SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM owners WHERE grp = ? AND topic = ? "
            "AND partition = ? AND member = ?) "
            "ON CONFLICT (grp, topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
            [
                (self.group, topic, partition, offset, self.group, topic, partition, self._member)
                for (topic, partition), offset in offsets.items()
            ],
        )

    async def _rebalance(self) -> None:
        """Heartbeat, give up partitions the group now assigns elsewhere, then claim the free ones of ours.

        A partition changes hands only through the owners table, after its old owner committed and
        released it (or timed out), so two live members never process one partition at once.
        """
        target, owned = await asyncio.to_thread(self._heartbeat)
        self._last_heartbeat = time.monotonic()
        lost = self._assigned - owned
        if lost:
            log.warning("partitions lost after a missed heartbeat", extra={"group": self.group})
            await self._revoke(lost)
        surplus = self._assigned - target
        if surplus:
            await self._commit_partitions(surplus)
            await self._revoke(surplus)
            await asyncio.to_thread(self._release, surplus)
        wanted = target - self._assigned
        if wanted:
            claimed = await asyncio.to_thread(self._claim, wanted)
            if claimed:
                self._positions.update(await asyncio.to_thread(self._committed_offsets, claimed))
                self._assigned |= claimed
                log.info("partitions assigned", extra={"group": self.group, "partitions": sorted(claimed)})

    async def _revoke(self, partitions: set[TopicPartition]) -> None:
        self._tracker.forget(partitions)
        for tp in partitions:
            self._positions.pop(tp, None)
        self._assigned -= partitions
        if self._on_revoked is not None:
            await self._on_revoked(partitions)

    def _heartbeat(self) -> tuple[set[TopicPartition], set[TopicPartition]]:
        """Returns (partitions the group assigns to this member, partitions it owns now)."""
        assert self._connection is not None
        now = time.time()
        with write_transaction(self._connection) as connection:
            connection.execute(
                "INSERT INTO members (grp, member, heartbeat) VALUES (?, ?, ?) "
                "ON CONFLICT (grp, member) DO UPDATE SET heartbeat = excluded.heartbeat",
                (self.group, self._member, now),
            )
            connection.execute(
                "DELETE FROM members WHERE grp = ? AND heartbeat < ?",
                (self.group, now - self._bus._settings.session_timeout_seconds),
            )
            connection.execute(
                "DELETE FROM owners WHERE grp = ? AND member NOT IN (SELECT member FROM members WHERE grp = ?)",
                (self.group, self.group),
            )
            members = [row[0] for row in connection.execute(
                "SELECT member FROM members WHERE grp = ? ORDER BY member", (self.group,)
            )]
            owned = {(row[0], row[1]) for row in connection.execute(
                "SELECT topic, partition FROM owners WHERE grp = ? AND member = ?", (self.group, self._member)
            )}
        rank, count = members.index(self._member), len(members)
        target = {
            (topic, partition)
            for topic in self._topics
            for partition in range(self._bus.partitions)
            if partition % count == rank
        }
        return target, owned

    def _claim(self, partitions: set[TopicPartition]) -> set[TopicPartition]:
        assert self._connection is not None
        with write_transaction(self._connection) as connection:
            claimed = set()
            for topic, partition in partitions:
                cursor = connection.execute(
                    "INSERT INTO owners (grp, topic, partition, member) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (grp, topic, partition) DO NOTHING",
                    (self.group, topic, partition, self._member),
                )
                if cursor.rowcount:
                    claimed.add((topic, partition))
        return claimed

    def _release(self, partitions: set[TopicPartition]) -> None:
        assert self._connection is not None
        self._connection.executemany(
            "DELETE FROM owners WHERE grp = ? AND topic = ? AND partition = ? AND member = ?",
            [(self.group, topic, partition, self._member) for topic, partition in partitions],
        )

    def _leave(self) -> None:
        assert self._connection is not None
        with write_transaction(self._connection) as connection:
            connection.execute("DELETE FROM owners WHERE grp = ? AND member = ?", (self.group, self._member))
            connection.execute("DELETE FROM members WHERE grp = ? AND member = ?", (self.group, self._member))

    def _committed_offsets(self, partitions: set[TopicPartition]) -> dict[TopicPartition, int]:
        assert self._connection is not None
        starts = {}
        for topic, partition in partitions:
            row = self._connection.execute(
                "SELECT next_offset FROM committed WHERE grp = ? AND topic = ? AND partition = ?",
                (self.group, topic, partition),
            ).fetchone()
            if row is None:
                row = self._connection.execute(
                    'SELECT COALESCE(MIN("offset"), 0) FROM records WHERE topic = ? AND partition = ?',
                    (topic, partition),
                ).fetchone()
            starts[(topic, partition)] = row[0]
        return starts

    def _read(self, max_records: int) -> list[Record]:
        """Each query is read to its end (fetchall under a small LIMIT): an unfinished cursor would keep a
        read transaction open on this connection and stall its next write."""
        assert self._connection is not None
        records: list[Record] = []
        budget = _MAX_BATCH_BYTES
        for (topic, partition), position in sorted(self._positions.items()):
            while len(records) < max_records and budget > 0:
                rows = self._connection.execute(
                    'SELECT "offset", key, value, headers, ts FROM records '
                    'WHERE topic = ? AND partition = ? AND "offset" >= ? ORDER BY "offset" LIMIT ?',
                    (topic, partition, position, min(_READ_PAGE, max_records - len(records))),
                ).fetchall()
                for offset, key, value, headers, ts in rows:
                    records.append(Record(topic, partition, offset, key, value, decode_headers(headers), ts))
                    budget -= len(value)
                    position = offset + 1
                if len(rows) < _READ_PAGE:
                    break
        return records
