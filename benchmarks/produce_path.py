"""CPU cost of the receiver's produce path: aiokafka against confluent-kafka (librdkafka), real broker.

    python -m benchmarks.produce_path [--gigabytes 1] [--bootstrap 127.0.0.1:19092]

Each client sends the same 1 MiB-minus-16 KiB records with acks=all and idempotence, a bounded number in
flight (as the receiver does), in its own process; we report CPU-seconds (user + system) per GB sent and
MB/s. Run it on an otherwise idle machine; the ratio between the two is the figure that matters.
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

RECORD = 1_048_576 - 16 * 1024
IN_FLIGHT = 16


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def with_aiokafka(bootstrap: str, topic: str, count: int, payload: bytes) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=2,
                                max_batch_size=1_048_576, max_request_size=RECORD + 65536)
    await producer.start()
    try:
        pending: list[asyncio.Future[object]] = []
        for n in range(count):
            pending.append(await producer.send(topic, payload, key=f"study-{n % 12}".encode()))
            if len(pending) >= IN_FLIGHT:
                await pending.pop(0)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def with_confluent(bootstrap: str, topic: str, count: int, payload: bytes) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                         "linger.ms": 2, "message.max.bytes": RECORD + 65536, "batch.size": 1_048_576})
    for n in range(count):
        while True:
            try:
                producer.produce(topic, payload, key=f"study-{n % 12}".encode())
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError("confluent-kafka did not deliver everything")


def child(client: str, bootstrap: str, gigabytes: float) -> None:
    count = int(gigabytes * 1e9 / RECORD)
    payload = os.urandom(RECORD)
    topic = f"bench-produce-{uuid.uuid4().hex[:8]}"
    started_cpu, started = cpu_seconds(), time.perf_counter()
    if client == "aiokafka":
        asyncio.run(with_aiokafka(bootstrap, topic, count, payload))
    else:
        with_confluent(bootstrap, topic, count, payload)
    elapsed, cpu = time.perf_counter() - started, cpu_seconds() - started_cpu
    sent = count * RECORD / 1e9
    print(json.dumps({"client": client, "gb": sent, "seconds": elapsed, "cpu_s_per_gb": cpu / sent,
                      "mb_per_s": sent * 1000 / elapsed}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["aiokafka", "confluent"])
    args = parser.parse_args()
    if args.child:
        child(args.child, args.bootstrap, args.gigabytes)
        return
    results: dict[str, list[dict[str, float]]] = {"aiokafka": [], "confluent": []}
    for _ in range(args.repeats):
        for client in results:
            out = subprocess.run([sys.executable, "-m", "benchmarks.produce_path", "--child", client,
                                  "--gigabytes", str(args.gigabytes), "--bootstrap", args.bootstrap],
                                 capture_output=True, text=True, check=True).stdout
            results[client].append(json.loads(out))
            print(out.strip(), flush=True)
    for client, runs in results.items():
        cpu = sorted(r["cpu_s_per_gb"] for r in runs)[len(runs) // 2]
        rate = sorted(r["mb_per_s"] for r in runs)[len(runs) // 2]
        print(f"{client:10} median {cpu:.2f} CPU-s/GB, {rate:.0f} MB/s")


if __name__ == "__main__":
    main()
