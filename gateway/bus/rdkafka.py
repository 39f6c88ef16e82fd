"""The Kafka producer on librdkafka (confluent-kafka), for the receiver's produce path.

Measured here against the real broker with 1 MiB records, acks=all and idempotence
(``python -m benchmarks.produce_path``): aiokafka 2.5 CPU-seconds per GB, librdkafka 1.1, so the receiver
produces through librdkafka; consumers stay on aiokafka. librdkafka delivers its reports on the thread that
polls it; a small poller thread resolves each record's future on the event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from gateway.bus import MAX_RECORD_BYTES, BusUnavailable, Headers, ProducerDied, check_record_size
from gateway.metrics import Metrics
from gateway.settings import KafkaSettings

_RECORD_OVERHEAD = 64 * 1024
_QUEUE_FULL_PAUSE = 0.005


def producer_config(settings: KafkaSettings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": settings.client_id,
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
