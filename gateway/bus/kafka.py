"""The production bus on Apache Kafka through aiokafka, with every setting that matters said explicitly.

aiokafka's defaults are wrong for a gateway that promises durability: acks, idempotence, auto-commit and the
1 MiB request limit are all set here from ``KafkaSettings`` rather than inherited.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import murmur2

from gateway.bus import (
    MAX_RECORD_BYTES,
    BusError,
    BusUnavailable,
    Consumer,
    Headers,
    OffsetTracker,
    Producer,
    ProducerDied,
    Record,
    RevokeCallback,
    check_record_size,
)
from gateway.bus import TopicPartition as TP
from gateway.bus.rdkafka import rdkafka_consumer, rdkafka_producer
from gateway.metrics import Metrics
from gateway.settings import KafkaSettings, TopicSettings

log = logging.getLogger(__name__)

_RECORD_OVERHEAD = 64 * 1024
"""Room above MAX_RECORD_BYTES for batch framing, so a full-size record passes the broker's batch limit."""


class KafkaBus:
    kind = "kafka"

    def __init__(self, settings: KafkaSettings, topics: TopicSettings, metrics: Metrics) -> None:
        self._settings = settings
        self._topics = topics
        self._metrics = metrics

    def _common(self) -> dict[str, Any]:
        s = self._settings
        options: dict[str, Any] = {
            "bootstrap_servers": s.bootstrap_servers,
            "client_id": s.client_id,
            "request_timeout_ms": s.request_timeout_ms,
            "security_protocol": s.security_protocol,
        }
        if s.security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = create_ssl_context(
                cafile=str(s.ssl_ca_file) if s.ssl_ca_file else None,
                certfile=str(s.ssl_cert_file) if s.ssl_cert_file else None,
                keyfile=str(s.ssl_key_file) if s.ssl_key_file else None,
            )
        if s.security_protocol.startswith("SASL"):
            options["sasl_mechanism"] = s.sasl_mechanism
            options["sasl_plain_username"] = s.sasl_username
            options["sasl_plain_password"] = s.sasl_password.get_secret_value() if s.sasl_password else None
        return options

    async def ensure_topics(self) -> None:
        """Create the gateway's topics if absent, with the replication the settings ask for."""
        s = self._settings
        configs = {
            "min.insync.replicas": str(s.min_insync_replicas),
            "max.message.bytes": str(MAX_RECORD_BYTES + _RECORD_OVERHEAD),
            "cleanup.policy": "delete",
        }
        wanted = [self._topics.instances, self._topics.events, self._topics.dead_letter, self._topics.hl7]
        admin = AIOKafkaAdminClient(**self._common())
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [name for name in wanted if name not in existing]
            if not missing:
                return
            new = [NewTopic(name, s.partitions, s.replication_factor, topic_configs=configs) for name in missing]
            try:
                response = await admin.create_topics(new)
            except TopicAlreadyExistsError:
                return
            for name, code, *_ in getattr(response, "topic_errors", []):
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise BusError(f"creating topic {name} failed with Kafka error code {code}")
            log.info("topics created", extra={"topics": missing, "partitions": s.partitions})
        finally:
            await admin.close()

    async def backlog(self, group: str, topic: str) -> int:
        admin = AIOKafkaAdminClient(**self._common())
        client = AIOKafkaConsumer(**self._common(), enable_auto_commit=False, group_id=None,
                                  isolation_level="read_committed")
        try:
            await admin.start()
            await client.start()
            [described] = await admin.describe_topics([topic])
            partitions = sorted(TopicPartition(topic, p["partition"]) for p in described.get("partitions", ()))
            if described.get("error_code") or not partitions:
                return 0
            committed = await admin.list_consumer_group_offsets(group, partitions=partitions)
            ends = await client.end_offsets(partitions)
            starts = await client.beginning_offsets(partitions)
        except KafkaError as exc:
            raise BusUnavailable(f"Kafka did not say the group's offsets: {type(exc).__name__}") from exc
        finally:
            await client.stop()
            await admin.close()
        total = 0
        for tp in partitions:
            done = committed.get(tp)
            position = done.offset if done is not None and done.offset >= 0 else starts[tp]
            total += max(ends[tp] - position, 0)
        return total

    async def read(self, topic: str, partition: int, offsets: Sequence[int]) -> list[Record]:
        wanted = set(offsets)
        tp = TopicPartition(topic, partition)
        client = AIOKafkaConsumer(**self._common(), enable_auto_commit=False, group_id=None,
                                  isolation_level="read_committed",
                                  max_partition_fetch_bytes=4 * (MAX_RECORD_BYTES + _RECORD_OVERHEAD))
        await client.start()
        records: list[Record] = []
        try:
            client.assign([tp])
            client.seek(tp, min(wanted))
            end = (await client.end_offsets([tp]))[tp]
            while wanted and await client.position(tp) < min(end, max(wanted) + 1):
                for message in (await client.getmany(tp, timeout_ms=1000)).get(tp, []):
                    if message.offset in wanted:
                        wanted.discard(message.offset)
                        records.append(Record(topic, partition, message.offset, message.key or b"",
                                              message.value or b"", tuple(message.headers), message.timestamp))
        finally:
            await client.stop()
        return records

    def producer(self) -> AbstractAsyncContextManager[Producer]:
        if self._settings.producer_client == "librdkafka":
            return rdkafka_producer(self._settings, self._metrics)
        return self._aiokafka_producer()

    @asynccontextmanager
    async def _aiokafka_producer(self) -> AsyncIterator[Producer]:
        s = self._settings
        client = AIOKafkaProducer(
            **self._common(),
            acks="all",
            enable_idempotence=True,
            compression_type=None,
            linger_ms=s.linger_ms,
            max_batch_size=s.max_batch_bytes,
            max_request_size=MAX_RECORD_BYTES + _RECORD_OVERHEAD,
        )
        try:
            await client.start()
        except KafkaError as exc:
            await client.stop()
            raise BusUnavailable(f"cannot connect to Kafka at {s.bootstrap_servers}: {exc}") from exc
        try:
            yield AioKafkaProducer(client, self._metrics)
        finally:
            await client.stop()

    def consumer(
        self, group: str, topics: Sequence[str], on_revoked: RevokeCallback | None = None
    ) -> AbstractAsyncContextManager[Consumer]:
        if self._settings.consumer_client == "librdkafka":
            return rdkafka_consumer(self._settings, group, topics, self._metrics, on_revoked)
        return self._aiokafka_consumer(group, topics, on_revoked)

    @asynccontextmanager
    async def _aiokafka_consumer(
        self, group: str, topics: Sequence[str], on_revoked: RevokeCallback | None
    ) -> AsyncIterator[KafkaConsumer]:
        s = self._settings
        client = AIOKafkaConsumer(
            **self._common(),
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.session_timeout_ms // 3,
            max_poll_interval_ms=s.max_poll_interval_ms,
            fetch_max_bytes=s.fetch_max_bytes,
            max_partition_fetch_bytes=4 * (MAX_RECORD_BYTES + _RECORD_OVERHEAD),
            partition_assignment_strategy=(RoundRobinPartitionAssignor,),
        )
        consumer = KafkaConsumer(client, group, self._metrics, on_revoked)
        client.subscribe(list(topics), listener=consumer.listener)
        await client.start()
        try:
            yield consumer
        finally:
            try:
                await consumer.commit()
            finally:
                await client.stop()


class AioKafkaProducer:
    max_record_bytes = MAX_RECORD_BYTES

    def __init__(self, client: AIOKafkaProducer, metrics: Metrics) -> None:
        self._client = client
        self._metrics = metrics

    async def send(self, topic: str, key: bytes, value: bytes, headers: Headers = ()) -> Awaitable[None]:
        check_record_size(key, value, headers, self.max_record_bytes)
        sender = self._sender_task()
        if sender is not None and sender.done():
            raise BusUnavailable("aiokafka's sender task has stopped")  # a record queued now would never go out
        try:
            delivery = await self._client.send(topic, value, key=key, headers=list(headers))
        except KafkaError as exc:
            self._metrics.bus_publish_failures.labels(topic).inc()
            raise BusUnavailable(f"Kafka refused the record: {exc}") from exc
        return asyncio.ensure_future(self._delivered(topic, len(value), delivery))

    async def _delivered(self, topic: str, size: int, delivery: asyncio.Future[Any]) -> None:
        try:
            await delivery
        except KafkaError as exc:
            self._metrics.bus_publish_failures.labels(topic).inc()
            raise BusUnavailable(f"Kafka did not acknowledge the record: {exc}") from exc
        self._metrics.bus_records_published.labels(topic).inc()
        self._metrics.bus_bytes_published.labels(topic).inc(size)

    async def publish(self, topic: str, key: bytes, value: bytes, headers: Headers = ()) -> None:
        await (await self.send(topic, key, value, headers))

    def _sender_task(self) -> asyncio.Task[Any] | None:
        """aiokafka runs one sender task per producer and fails every pending send when it dies; it offers no
        public handle on it, so this finds the one its producer keeps."""
        task = getattr(getattr(self._client, "_sender", None), "sender_task", None)
        return task if isinstance(task, asyncio.Task) else None

    async def wait(self) -> None:
        sender = self._sender_task()
        if sender is None:
            await asyncio.Event().wait()
            return
        try:
            await asyncio.shield(sender)
        except asyncio.CancelledError:
            if sender.cancelled():
                raise ProducerDied("aiokafka's sender task was cancelled") from None
            raise
        except Exception as exc:
            raise ProducerDied(f"aiokafka's sender task failed: {exc!r}") from exc
        raise ProducerDied("aiokafka's sender task stopped")


class KafkaConsumer:
    def __init__(
        self, client: AIOKafkaConsumer, group: str, metrics: Metrics, on_revoked: RevokeCallback | None
    ) -> None:
        self.group = group
        self._client = client
        self._metrics = metrics
        self._tracker = OffsetTracker()
        self._on_revoked = on_revoked
        self.listener = _Listener(self)

    def assignment(self) -> set[TP]:
        return {(tp.topic, tp.partition) for tp in self._client.assignment()}

    def owns(self, topic: str, key: bytes) -> bool:
        """Java's default partitioner, which librdkafka's murmur2_random and aiokafka's follow for keyed records."""
        partitions = self._client.partitions_for_topic(topic)
        if not partitions:
            return False
        partition = (murmur2(key) & 0x7FFFFFFF) % len(partitions)
        return (topic, partition) in self.assignment()

    async def lag(self) -> dict[TP, int]:
        lags = {}
        for tp in self._client.assignment():
            highwater = self._client.highwater(tp)
            if highwater is not None:
                lags[(tp.topic, tp.partition)] = (max(0, highwater - await self._client.position(tp))
                                                  + self._tracker.unfinished((tp.topic, tp.partition)))
        return lags

    async def fetch(self, timeout: float = 1.0, max_records: int = 500) -> list[Record]:
        batches = await self._client.getmany(timeout_ms=int(timeout * 1000), max_records=max_records)
        records: list[Record] = []
        for tp, messages in batches.items():
            for message in messages:
                record = Record(
                    tp.topic, tp.partition, message.offset, message.key or b"", message.value or b"",
                    tuple(message.headers), message.timestamp,
                )
                self._tracker.fetched(record)
                records.append(record)
            self._metrics.bus_records_consumed.labels(tp.topic, self.group).inc(len(messages))
        return records

    def done(self, record: Record) -> None:
        self._tracker.done(record)

    async def commit(self, partitions: set[TP] | None = None) -> None:
        assigned = self.assignment()
        offsets = self._tracker.take_committable(assigned if partitions is None else partitions & assigned)
        if offsets:
            await self._client.commit({TopicPartition(t, p): offset for (t, p), offset in offsets.items()})
            self._metrics.bus_commits.labels(self.group).inc()

    async def revoked(self, partitions: set[TP]) -> None:
        """Before partitions move to another member: commit what is done here and forget the rest."""
        try:
            await self.commit(partitions)
        except KafkaError as exc:
            log.warning("commit on revoke failed; records will be redelivered", extra={"error": str(exc)})
        self._tracker.forget(partitions)
        if self._on_revoked is not None:
            await self._on_revoked(partitions)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: KafkaConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            await self._consumer.revoked({(tp.topic, tp.partition) for tp in revoked})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("partitions assigned", extra={
            "group": self._consumer.group, "partitions": sorted((tp.topic, tp.partition) for tp in assigned)
        })
