"""Chunk protocol or Kafka transactions per instance? The cost of each, on the real broker.

    python -m benchmarks.transactions [--instances 500] [--records 1]

Publishes ``--instances`` instances of ``--records`` records of ~10 KB each, one instance at a time as a
C-STORE does (wait until durable before the next), with the two ways of keeping consumers off partial
instances: (a) the gateway's chunk protocol (records, then an end record; acks=all, idempotent producer) and
(b) one Kafka transaction per instance (begin, send, commit; transactional producer). Reports instances/s.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from aiokafka import AIOKafkaProducer

PAYLOAD = b"x" * 10_000


async def chunk_protocol(bootstrap: str, topic: str, instances: int, records: int) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=0)
    await producer.start()
    try:
        started = time.perf_counter()
        for n in range(instances):
            deliveries = [await producer.send(topic, PAYLOAD, key=f"study-{n % 12}".encode())
                          for _ in range(records + 1)]  # the chunks and the end record
            await asyncio.gather(*deliveries)
        return instances / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def transactions(bootstrap: str, topic: str, instances: int, records: int) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"bench-{uuid.uuid4().hex[:8]}",
                                linger_ms=0)
    await producer.start()
    try:
        started = time.perf_counter()
        for n in range(instances):
            async with producer.transaction():
                for _ in range(records):
                    await producer.send(topic, PAYLOAD, key=f"study-{n % 12}".encode())
        return instances / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--records", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"chunk protocol": [], "transaction per instance": []}
    for _ in range(args.repeats):
        topic = f"bench-tx-{uuid.uuid4().hex[:8]}"
        results["chunk protocol"].append(await chunk_protocol(args.bootstrap, topic, args.instances, args.records))
        results["transaction per instance"].append(
            await transactions(args.bootstrap, topic, args.instances, args.records))
    for name, rates in results.items():
        print(f"{name:26} median {sorted(rates)[len(rates) // 2]:7.0f} instances/s  {[round(r) for r in rates]}")


if __name__ == "__main__":
    asyncio.run(main())
