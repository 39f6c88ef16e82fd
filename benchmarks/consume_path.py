"""CPU cost of the workers' consume path: the gateway's Kafka consumer on aiokafka against librdkafka, real broker.

    python -m benchmarks.consume_path [--gigabytes 1] [--record-kb 1008] [--bootstrap 127.0.0.1:19092]

One topic of 12 partitions is filled once (records of ``--record-kb``, keyed as studies are); then each client,
in its own process, reads all of it through ``KafkaBus.consumer`` as a store worker does (fetch, done, commit
per fetch) in a group of its own. We report CPU-seconds (user + system, every thread) per GB read and MB/s,
median over repeats, interleaved. Run it on an otherwise idle machine; the ratio between the two is the figure
that matters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
import uuid

from gateway.bus.kafka import KafkaBus
from gateway.metrics import Metrics
from gateway.settings import KafkaSettings, TopicSettings

CLIENTS = ("aiokafka", "librdkafka")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bus(bootstrap: str, client: str, topic: str) -> KafkaBus:
    settings = KafkaSettings(bootstrap_servers=bootstrap, partitions=12, producer_client="librdkafka",
                             consumer_client=client)
    return KafkaBus(settings, TopicSettings(instances=topic, events=f"{topic}-ev", dead_letter=f"{topic}-dl",
                                            hl7=f"{topic}-hl7"), Metrics())


async def fill(bootstrap: str, topic: str, count: int, size: int) -> None:
    target = bus(bootstrap, "librdkafka", topic)
    await target.ensure_topics()
    payload = os.urandom(size)
    async with target.producer() as producer:
        pending = [await producer.send(topic, f"study-{n % 97}".encode(), payload, [("gw-kind", b"chunk")])
                   for n in range(count)]
        await asyncio.gather(*pending)


async def drain(bootstrap: str, client: str, topic: str, count: int) -> None:
    seen = 0
    async with bus(bootstrap, client, topic).consumer(f"bench-{client}-{uuid.uuid4().hex[:6]}", [topic]) as consumer:
        while seen < count:
            records = await consumer.fetch(timeout=0.5)
            for record in records:
                consumer.done(record)
            seen += len(records)
            await consumer.commit()


def child(client: str, bootstrap: str, topic: str, count: int, size: int) -> None:
    import uvloop

    started_cpu, started = cpu_seconds(), time.perf_counter()
    uvloop.run(drain(bootstrap, client, topic, count))
    elapsed, cpu = time.perf_counter() - started, cpu_seconds() - started_cpu
    read = count * size / 1e9
    print(json.dumps({"client": client, "gb": read, "seconds": elapsed, "cpu_s_per_gb": cpu / read,
                      "mb_per_s": read * 1000 / elapsed}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument("--record-kb", type=int, default=1008, help="1008: a full chunk; 10: a tiny instance")
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=CLIENTS)
    parser.add_argument("--topic")
    args = parser.parse_args()
    size = args.record_kb * 1024
    count = int(args.gigabytes * 1e9 / size)
    if args.child:
        child(args.child, args.bootstrap, args.topic, count, size)
        return
    topic = f"bench-consume-{uuid.uuid4().hex[:8]}"
    asyncio.run(fill(args.bootstrap, topic, count, size))
    results: dict[str, list[dict[str, float]]] = {client: [] for client in CLIENTS}
    for _ in range(args.repeats):
        for client in CLIENTS:
            out = subprocess.run([sys.executable, "-m", "benchmarks.consume_path", "--child", client, "--topic", topic,
                                  "--gigabytes", str(args.gigabytes), "--record-kb", str(args.record_kb),
                                  "--bootstrap", args.bootstrap], capture_output=True, text=True, check=True).stdout
            results[client].append(json.loads(out))
            print(out.strip(), flush=True)
    for client, runs in results.items():
        cpu = sorted(r["cpu_s_per_gb"] for r in runs)[len(runs) // 2]
        rate = sorted(r["mb_per_s"] for r in runs)[len(runs) // 2]
        print(f"{client:10} median {cpu:.2f} CPU-s/GB, {rate:.0f} MB/s ({args.record_kb} KiB records)")


if __name__ == "__main__":
    main()
