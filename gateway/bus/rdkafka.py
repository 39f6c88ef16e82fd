"""The Kafka producer and consumer on librdkafka (confluent-kafka).

Measured here against the real broker with 1 MiB records, acks=all and idempotence
(``python -m benchmarks.produce_path``): aiokafka 2.5 CPU-seconds per GB produced, librdkafka 1.1; consuming
(``python -m benchmarks.consume_path``) the difference is larger, as aiokafka decodes every fetch response in
Python on the event loop while librdkafka does it in its own threads. librdkafka delivers its reports on the
thread that polls it; a small poller thread resolves each record's future on the event loop. A consumer polls
on a thread of its own, where librdkafka also runs its rebalance callbacks: those hand the work to the event
loop and wait for it, so that what is done is committed before a partition moves on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from aiokafka.partitioner import murmur2
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka import TopicPartition as KafkaPartition

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
from gateway.settings import KafkaSettings

log = logging.getLogger(__name__)

_RECORD_OVERHEAD = 64 * 1024
_QUEUE_FULL_PAUSE = 0.005
_REVOKE_WAIT_SECONDS = 120.0


def producer_config(settings: KafkaSettings) -> dict[str, Any]:
    config = _connection(settings)
    config.update({
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": "none",
        "partitioner": "murmur2_random",  # Kafka's Java (and aiokafka's) key hashing: a study keeps its partition
        "linger.ms": settings.linger_ms,
        "batch.size": settings.max_batch_bytes,
        "message.max.bytes": MAX_RECORD_BYTES + _RECORD_OVERHEAD,
        "request.timeout.ms": settings.request_timeout_ms,
        "delivery.timeout.ms": max(settings.request_timeout_ms * 2, 60_000),
        "queue.buffering.max.kbytes": 262_144,
    })
    return config


def consumer_config(settings: KafkaSettings, group: str) -> dict[str, Any]:
    """What aiokafka's consumer had, said to librdkafka: offsets committed only by the tracker, committed
    transactions only, Java's round-robin assignor (members on either client can share a group during an
    upgrade), and a prefetch queue bounded by the fetch size rather than librdkafka's 64 MiB default."""
    config = _connection(settings)
    partition_fetch = 4 * (MAX_RECORD_BYTES + _RECORD_OVERHEAD)
    fetch = max(settings.fetch_max_bytes, partition_fetch)
    config.update({
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": settings.session_timeout_ms // 3,
        "max.poll.interval.ms": settings.max_poll_interval_ms,
        "partition.assignment.strategy": "roundrobin",
        "fetch.max.bytes": fetch,
        "max.partition.fetch.bytes": partition_fetch,
        "receive.message.max.bytes": fetch + _RECORD_OVERHEAD,
        "queued.max.messages.kbytes": fetch // 1024,
        "fetch.queue.backoff.ms": 10,  # a full prefetch queue otherwise holds a partition's next fetch for 1 s
        "error_cb": _client_error,
    })
    return config


def _client_error(error: KafkaError) -> None:
    """librdkafka's own reports (a broker down, all brokers down): it reconnects by itself."""
    log.warning("Kafka client error", extra={"error": error.str(), "fatal": error.fatal()})


def _connection(settings: KafkaSettings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": settings.client_id,
        "security.protocol": settings.security_protocol.lower(),
    }
    if settings.ssl_ca_file:
        config["ssl.ca.location"] = str(settings.ssl_ca_file)
    if settings.ssl_cert_file:
        config["ssl.certificate.location"] = str(settings.ssl_cert_file)
    if settings.ssl_key_file:
        config["ssl.key.location"] = str(settings.ssl_key_file)
    if settings.security_protocol.startswith("SASL"):
        config["sasl.mechanism"] = settings.sasl_mechanism
        config["sasl.username"] = settings.sasl_username or ""
        config["sasl.password"] = settings.sasl_password.get_secret_value() if settings.sasl_password else ""
    return config


class RdKafkaProducer:
    max_record_bytes = MAX_RECORD_BYTES

    def __init__(self, settings: KafkaSettings, metrics: Metrics) -> None:
        self._client = Producer(producer_config(settings))
        self._metrics = metrics
        self._loop = asyncio.get_running_loop()
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="rdkafka-poller", daemon=True)
        self._died: asyncio.Future[None] = self._loop.create_future()
        self._closing = False
        self._pending: set[asyncio.Future[None]] = set()
        """Sent and not yet reported: failed at once if the poller dies, which would never report them."""

    def _poll(self) -> None:
        error: BaseException | None = None
        try:
            while not self._stopping.is_set():
                self._client.poll(0.1)
        except BaseException as exc:
            error = exc
        finally:
            if not self._closing and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._poller_ended, error)

    def _poller_ended(self, error: BaseException | None) -> None:
        died = ProducerDied(f"the librdkafka poller stopped: {error!r}")
        if not self._died.done():
            self._died.set_exception(died)
        for future in self._pending:
            if not future.done():
                future.set_exception(died)
        self._pending.clear()

    async def wait(self) -> None:
        await asyncio.shield(self._died)

    async def start(self, timeout: float) -> None:
        """Fail fast, as the aiokafka producer does, when no broker answers."""
        try:
            await asyncio.to_thread(self._client.list_topics, timeout=timeout)
        except KafkaException as exc:
            raise BusUnavailable(f"cannot connect to Kafka: {exc}") from exc
        self._poller.start()

    async def stop(self) -> None:
        self._closing = True
        await asyncio.to_thread(self._client.flush, 30)
        self._stopping.set()
        if self._poller.is_alive():
            await asyncio.to_thread(self._poller.join)

    async def send(self, topic: str, key: bytes, value: bytes, headers: Headers = ()) -> Awaitable[None]:
        check_record_size(key, value, headers, self.max_record_bytes)
        if self._died.done():
            raise BusUnavailable("the librdkafka poller has stopped")
        future: asyncio.Future[None] = self._loop.create_future()
        size = len(value)

        def delivered(error: KafkaError | None, _: Message) -> None:
            self._loop.call_soon_threadsafe(self._settle, future, topic, size, error)

        while True:
            try:
                self._client.produce(topic, value, key, headers=list(headers), on_delivery=delivered)
                self._pending.add(future)
                return future
            except BufferError:
                await asyncio.sleep(_QUEUE_FULL_PAUSE)  # librdkafka's queue is full: backpressure
            except KafkaException as exc:
                self._metrics.bus_publish_failures.labels(topic).inc()
                raise BusUnavailable(f"Kafka refused the record: {exc}") from exc

    def _settle(self, future: asyncio.Future[None], topic: str, size: int, error: KafkaError | None) -> None:
        self._pending.discard(future)
        if future.done():
            return
        if error is not None:
            self._metrics.bus_publish_failures.labels(topic).inc()
            future.set_exception(BusUnavailable(f"Kafka did not acknowledge the record: {error.str()}"))
        else:
            self._metrics.bus_records_published.labels(topic).inc()
            self._metrics.bus_bytes_published.labels(topic).inc(size)
            future.set_result(None)

    async def publish(self, topic: str, key: bytes, value: bytes, headers: Headers = ()) -> None:
        await (await self.send(topic, key, value, headers))


@asynccontextmanager
async def rdkafka_producer(settings: KafkaSettings, metrics: Metrics) -> AsyncIterator[RdKafkaProducer]:
    producer = RdKafkaProducer(settings, metrics)
    await producer.start(timeout=settings.request_timeout_ms / 1000)
    try:
        yield producer
    finally:
        await producer.stop()


class RdKafkaConsumer:
    """A consumer-group member polling librdkafka on a thread of its own.

    A fetch cancelled by its caller (a worker stopping, a timeout around it) is not lost: librdkafka has moved
    past those records, so the next fetch returns them first. Committing past a record fetched and never seen
    would lose it."""

    def __init__(self, settings: KafkaSettings, group: str, metrics: Metrics,
                 on_revoked: RevokeCallback | None) -> None:
        self.group = group
        self._metrics = metrics
        self._on_revoked = on_revoked
        self._loop = asyncio.get_running_loop()
        self._tracker = OffsetTracker()
        self._assigned: frozenset[TopicPartition] = frozenset()
        self._partitions: dict[str, int] = {}
        self._timeout = settings.request_timeout_ms / 1000
        self._poller = ThreadPoolExecutor(1, thread_name_prefix=f"rdkafka-{group}")
        self._fetching: asyncio.Future[list[Message]] | None = None
        try:
            self._client = Consumer(consumer_config(settings, group))
        except KafkaException as exc:
            raise BusUnavailable(f"librdkafka refused the consumer's settings: {exc}") from exc

    async def start(self, topics: Sequence[str]) -> None:
        """Fail fast, as aiokafka's consumer does, when no broker answers."""
        try:
            metadata = await self._loop.run_in_executor(self._poller, lambda: self._client.list_topics(
                timeout=self._timeout))
        except KafkaException as exc:
            raise BusUnavailable(f"cannot connect to Kafka: {exc}") from exc
        self._count_partitions(metadata)
        self._client.subscribe(list(topics), on_assign=self._assigned_now, on_revoke=self._revoked_now)

    async def close(self) -> None:
        if self._fetching is not None:
            await asyncio.gather(self._fetching, return_exceptions=True)
        try:
            await self._loop.run_in_executor(self._poller, self._client.close)
        finally:
            self._poller.shutdown(wait=False)

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def owns(self, topic: str, key: bytes) -> bool:
        """librdkafka's murmur2_random, like Java's default partitioner, for keyed records."""
        count = self._partitions.get(topic)
        if not count:
            return False
        return (topic, (murmur2(key) & 0x7FFFFFFF) % count) in self._assigned

    async def lag(self) -> dict[TopicPartition, int]:
        lags = {}
        assigned = [KafkaPartition(topic, partition) for topic, partition in self._assigned]
        positions = {(tp.topic, tp.partition): tp.offset for tp in self._client.position(assigned)}
        for tp in assigned:
            _, highwater = self._client.get_watermark_offsets(tp, cached=True)
            position = positions.get((tp.topic, tp.partition), -1)
            if highwater >= 0 and position >= 0:
                lags[(tp.topic, tp.partition)] = (max(0, highwater - position)
                                                  + self._tracker.unfinished((tp.topic, tp.partition)))
        return lags

    async def fetch(self, timeout: float = 1.0, max_records: int = 500) -> list[Record]:
        if self._fetching is None:
            self._fetching = self._loop.run_in_executor(self._poller, self._client.consume, max_records, timeout)
        fetching = self._fetching
        try:
            messages = await asyncio.shield(fetching)
        except asyncio.CancelledError:
            raise  # still fetching: the next call takes its records
        except KafkaException as exc:
            self._fetching = None
            raise BusUnavailable(f"Kafka consumer failed: {exc}") from exc
        self._fetching = None
        records: list[Record] = []
        counts: dict[str, int] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise BusUnavailable(f"Kafka consumer failed: {error.str()}")
                log.warning("Kafka consumer error", extra={"error": error.str(), "group": self.group})
                continue
            topic = message.topic() or ""
            record = Record(topic, message.partition() or 0, message.offset() or 0, message.key() or b"",
                            message.value() or b"", _headers(message), message.timestamp()[1])
            self._tracker.fetched(record)
            records.append(record)
            counts[topic] = counts.get(topic, 0) + 1
        for topic, count in counts.items():
            self._metrics.bus_records_consumed.labels(topic, self.group).inc(count)
        return records

    def done(self, record: Record) -> None:
        self._tracker.done(record)

    async def commit(self, partitions: set[TopicPartition] | None = None) -> None:
        """On a thread of the loop's pool, not the poller's: a rebalance callback waiting on the poller commits."""
        offsets = self._tracker.take_committable(set(self._assigned) if partitions is None
                                                 else partitions & self._assigned)
        if not offsets:
            return
        wanted = [KafkaPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()]
        try:
            await asyncio.to_thread(self._client.commit, offsets=wanted, asynchronous=False)
        except KafkaException as exc:
            raise BusUnavailable(f"Kafka did not take the commit: {exc}") from exc
        self._metrics.bus_commits.labels(self.group).inc()

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        """Before partitions move to another member: commit what is done here and forget the rest."""
        try:
            await self.commit(partitions)
        except BusUnavailable as exc:
            log.warning("commit on revoke failed; records will be redelivered", extra={"error": str(exc)})
        self._tracker.forget(partitions)
        if self._on_revoked is not None:
            await self._on_revoked(partitions)

    def _assigned_now(self, client: Consumer, partitions: list[KafkaPartition]) -> None:
        """On the poller thread, inside ``consume``: before any record of these partitions is returned."""
        self._assigned = self._assigned | {(tp.topic, tp.partition) for tp in partitions}
        if any(tp.topic not in self._partitions for tp in partitions):
            self._count_partitions(client.list_topics(timeout=self._timeout))
        log.info("partitions assigned", extra={
            "group": self.group, "partitions": sorted((tp.topic, tp.partition) for tp in partitions)})

    def _revoked_now(self, _: Consumer, partitions: list[KafkaPartition]) -> None:
        """On the poller thread: the loop commits and lets go while librdkafka waits."""
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        if revoked and not self._loop.is_closed():
            handed = asyncio.run_coroutine_threadsafe(self.revoked(revoked), self._loop)
            try:
                handed.result(timeout=_REVOKE_WAIT_SECONDS)  # a loop that stopped meanwhile never answers
            except Exception as exc:
                handed.cancel()
                log.warning("letting go of partitions failed; their records will be delivered again",
                            extra={"group": self.group, "error": repr(exc)})
        self._assigned = self._assigned - revoked

    def _count_partitions(self, metadata: Any) -> None:
        self._partitions.update({name: len(topic.partitions) for name, topic in metadata.topics.items()
                                 if topic.error is None})


def _headers(message: Message) -> tuple[tuple[str, bytes], ...]:
    headers = message.headers() or ()
    pairs = headers.items() if isinstance(headers, dict) else headers
    return tuple((name, value.encode() if isinstance(value, str) else value or b"") for name, value in pairs)


@asynccontextmanager
async def rdkafka_consumer(settings: KafkaSettings, group: str, topics: Sequence[str], metrics: Metrics,
                           on_revoked: RevokeCallback | None) -> AsyncIterator[RdKafkaConsumer]:
    consumer = RdKafkaConsumer(settings, group, metrics, on_revoked)
    try:
        await consumer.start(topics)
    except BaseException:
        await consumer.close()
        raise
    try:
        yield consumer
    finally:
        try:
            await consumer.commit()
        finally:
            await consumer.close()
