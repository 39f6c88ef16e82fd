"""The bus contract, run against the embedded bus and a real Apache Kafka broker alike."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.bus import MAX_RECORD_BYTES, Bus, BusError, Consumer, Producer, ProducerDied, Record, RecordTooLarge
from gateway.bus.embedded import EmbeddedBus, EmbeddedProducer
from gateway.bus.kafka import AioKafkaProducer, KafkaBus
from gateway.bus.rdkafka import RdKafkaProducer
from gateway.metrics import Metrics
from gateway.settings import EmbeddedBusSettings, KafkaSettings, TopicSettings


@pytest.fixture(params=["embedded", "kafka", "kafka-aiokafka"])
async def bus_and_topic(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Bus, str]]:
    topics = TopicSettings(
        instances=f"contract-{uuid.uuid4().hex[:8]}", events=f"ev-{uuid.uuid4().hex[:8]}",
        dead_letter=f"dl-{uuid.uuid4().hex[:8]}",
    )
    bus: Bus
    if request.param == "embedded":
        bus = EmbeddedBus(tmp_path / "bus", EmbeddedBusSettings(partitions=4, session_timeout_seconds=2), Metrics())
    else:
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        client = "aiokafka" if request.param == "kafka-aiokafka" else "librdkafka"
        bus = KafkaBus(KafkaSettings(bootstrap_servers=bootstrap, partitions=4, session_timeout_ms=6000,
                                     producer_client=client, consumer_client=client), topics, Metrics())
    await bus.ensure_topics()
    yield bus, topics.instances


async def drain(consumer: Consumer, want: int, timeout: float = 60.0, mark_done: bool = True) -> list[Record]:
    records: list[Record] = []
    try:
        async with asyncio.timeout(timeout):
            while len(records) < want:
                for record in await consumer.fetch(timeout=0.5):
                    records.append(record)
                    if mark_done:
                        consumer.done(record)
    except TimeoutError:
        got = sorted((r.partition, r.offset) for r in records)
        pytest.fail(f"{consumer.group}: {len(records)} of {want} records in {timeout:.0f} s (partition, offset: "
                    f"{got}); assigned {sorted(consumer.assignment())}")
    return records


async def test_published_record_comes_back_whole(bus_and_topic: tuple[Bus, str]) -> None:
    bus, topic = bus_and_topic
    async with bus.producer() as producer:
        await producer.publish(topic, b"study-1", b"\x00payload\xff", [("kind", b"chunk"), ("seq", b"0")])
    async with bus.consumer("g1", [topic]) as consumer:
        [record] = await drain(consumer, 1)
    assert (record.topic, record.key, record.value) == (topic, b"study-1", b"\x00payload\xff")
    assert record.header("kind") == b"chunk" and record.header("seq") == b"0"
    assert record.timestamp_ms > 0


async def test_order_is_kept_per_key(bus_and_topic: tuple[Bus, str]) -> None:
    bus, topic = bus_and_topic
    keys = [f"study-{n}".encode() for n in range(6)]
    async with bus.producer() as producer:
        deliveries = [await producer.send(topic, keys[i % 6], str(i).encode()) for i in range(300)]
        await asyncio.gather(*deliveries)
    async with bus.consumer("order", [topic]) as consumer:
        records = await drain(consumer, 300)
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for record in records:
        by_key[record.key].append(int(record.value))
    assert set(by_key) == set(keys)
    for key, values in by_key.items():
        assert values == sorted(values), f"{key!r} out of order"
        assert len(values) == 50


async def test_uncommitted_records_are_delivered_again(bus_and_topic: tuple[Bus, str]) -> None:
    bus, topic = bus_and_topic
    async with bus.producer() as producer:
        for i in range(10):
            await producer.publish(topic, b"same-key", str(i).encode())
    async with bus.consumer("redeliver", [topic]) as consumer:
        records = await drain(consumer, 10, mark_done=False)
        for record in records[:4]:
            consumer.done(record)
        consumer.done(records[6])  # done out of order: the commit must stop at the gap (record 4)
        await consumer.commit()
    async with bus.consumer("redeliver", [topic]) as consumer:
        again = await drain(consumer, 6)
    assert [int(r.value) for r in again] == [4, 5, 6, 7, 8, 9]


async def test_a_groups_backlog_is_what_it_has_not_committed_on_any_partition(bus_and_topic: tuple[Bus, str]) -> None:
    """What the operators' page shows as consumer lag, read from outside the group (another pod's API)."""
    bus, topic = bus_and_topic
    assert await bus.backlog("backlog", topic) == 0
    async with bus.producer() as producer:
        await asyncio.gather(*[await producer.send(topic, f"k{i}".encode(), b"v") for i in range(12)])
    assert await bus.backlog("backlog", topic) == 12, "never committed: every record waits"
    async with bus.consumer("backlog", [topic]) as consumer:
        records = await drain(consumer, 12, mark_done=False)
        for record in records:
            if record.key != b"k3":  # one key's partition stops at k3
                consumer.done(record)
        await consumer.commit()
        waiting = await bus.backlog("backlog", topic)
    behind = [r for r in records if r.partition == next(x for x in records if x.key == b"k3").partition]
    after = next(i for i, r in enumerate(sorted(behind, key=lambda r: r.offset)) if r.key == b"k3")
    assert waiting == len(behind) - after
    assert await bus.backlog("someone-else", topic) == 12


async def test_each_group_gets_every_record(bus_and_topic: tuple[Bus, str]) -> None:
    bus, topic = bus_and_topic
    async with bus.producer() as producer:
        await asyncio.gather(*[await producer.send(topic, f"k{i}".encode(), b"v") for i in range(20)])
    assert await bus.backlog(f"nobody-{topic}", topic) == 20, "every acknowledged record is on the broker"
    for group in (f"store-{topic}", f"notify-{topic}"):  # new groups, as a new deployment's pools are
        async with bus.consumer(group, [topic]) as consumer:
            assert len(await drain(consumer, 20)) == 20


async def test_group_members_share_partitions(bus_and_topic: tuple[Bus, str]) -> None:
    bus, topic = bus_and_topic
    async with bus.producer() as producer:
        await asyncio.gather(*[await producer.send(topic, f"study-{i}".encode(), str(i).encode())
                               for i in range(200)])
    async with bus.consumer("shared", [topic]) as first, bus.consumer("shared", [topic]) as second:
        seen: list[Record] = []
        async with asyncio.timeout(60):
            while len({int(r.value) for r in seen}) < 200 or not (first.assignment() and second.assignment()):
                for consumer in (first, second):
                    for record in await consumer.fetch(timeout=0.2):
                        seen.append(record)
                        consumer.done(record)
                    await consumer.commit()
        assert first.assignment() and second.assignment()
        assert not first.assignment() & second.assignment()
        # the member a key's records went to is the one that owns the key
        for record in seen[-50:]:
            owner = first if (record.topic, record.partition) in first.assignment() else second
            other = second if owner is first else first
            assert owner.owns(topic, record.key) and not other.owns(topic, record.key)
    assert {int(r.value) for r in seen} == set(range(200))


async def test_oversized_record_is_refused(bus_and_topic: tuple[Bus, str]) -> None:
    bus, topic = bus_and_topic
    async with bus.producer() as producer:
        with pytest.raises(RecordTooLarge):
            await producer.publish(topic, b"k", b"x" * (MAX_RECORD_BYTES + 1))
        biggest = b"y" * (MAX_RECORD_BYTES - 1)
        await producer.publish(topic, b"k", biggest)
    async with bus.consumer("big", [topic]) as consumer:
        [record] = await drain(consumer, 1)
    assert record.value == biggest


async def test_lag_counts_what_is_waiting(bus_and_topic: tuple[Bus, str]) -> None:
    """Waiting: not fetched yet, or fetched and not done (an instance being retried is not progress)."""
    bus, topic = bus_and_topic
    async with bus.producer() as producer:
        await asyncio.gather(*[await producer.send(topic, b"one-study", str(i).encode()) for i in range(30)])
    async with bus.consumer("lagging", [topic]) as consumer:
        fetched: list[Record] = []
        async with asyncio.timeout(30):
            while not fetched:
                fetched = await consumer.fetch(timeout=0.5, max_records=5)
            assert 0 < len(fetched) <= 5
            while sum((await consumer.lag()).values()) != 30:
                await asyncio.sleep(0.1)  # Kafka learns the high watermark with its fetches
            for record in fetched:
                consumer.done(record)
            assert sum((await consumer.lag()).values()) == 30 - len(fetched)
            while len(fetched) < 30:
                more = await consumer.fetch(timeout=0.5)
                for record in more:
                    consumer.done(record)
                fetched += more
        assert sum((await consumer.lag()).values()) == 0


def kill_background_work(producer: Producer) -> None:
    """What each adapter runs beside its caller: the embedded writer task, librdkafka's poller thread,
    aiokafka's sender task."""
    if isinstance(producer, EmbeddedProducer):
        assert producer._writer is not None
        producer._writer.cancel()
    elif isinstance(producer, RdKafkaProducer):
        producer._stopping.set()
    else:
        assert isinstance(producer, AioKafkaProducer)
        sender = producer._sender_task()
        assert sender is not None
        sender.cancel()


async def test_a_producer_whose_background_work_dies_says_so_and_refuses_records(
    bus_and_topic: tuple[Bus, str],
) -> None:
    bus, topic = bus_and_topic
    async with bus.producer() as producer:
        await producer.publish(topic, b"k", b"before")
        watching = asyncio.create_task(producer.wait())
        await asyncio.sleep(0.3)
        assert not watching.done(), "a healthy producer's wait() does not return"
        kill_background_work(producer)
        with pytest.raises(ProducerDied):
            await asyncio.wait_for(watching, 5)
        with pytest.raises(BusError):
            await asyncio.wait_for(producer.publish(topic, b"k", b"after"), 5)
