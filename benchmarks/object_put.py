"""CPU cost of putting whole objects into S3: the minio SDK in a thread against aiohttp on the event loop.

    python -m benchmarks.object_put [--count 400] [--kb 525]   # with GATEWAY_S3__* set (scripts/services env)

Each client puts the same objects (with metadata and the sha256 tag, as the store stage does), 8 at a time,
into one SeaweedFS; we report CPU-milliseconds of this process per object and objects/s, median over repeats,
interleaved. SeaweedFS's own CPU is the same for both and is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import os
import resource
import time
import uuid
from functools import partial

import uvloop

from gateway.objects.s3 import S3ObjectStore, _headers, _tags
from gateway.settings import Settings


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(client: str, count: int, data: bytes) -> tuple[float, float]:
    settings = Settings().s3
    store = S3ObjectStore(settings)
    await store.ensure_bucket()
    digest = hashlib.sha256(data).hexdigest()
    metadata = {"sop-instance-uid": "1.2.3", "source-ae": "CT1", "instance-id": uuid.uuid4().hex}
    prefix = f"bench-put/{client}-{uuid.uuid4().hex[:8]}"
    gate = asyncio.Semaphore(8)

    async def one(n: int) -> None:
        key = f"{prefix}/{n}.dcm"
        async with gate:
            if client == "aiohttp":
                await store.put(key, data, metadata, digest)
            else:
                await asyncio.to_thread(partial(
                    store._client.put_object, settings.bucket, key, io.BytesIO(data), len(data),
                    metadata=_headers(metadata), tags=_tags(digest), num_parallel_uploads=1))

    started_cpu, started = cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(count)))
    elapsed, cpu = time.perf_counter() - started, cpu_seconds() - started_cpu
    await store.close()
    return cpu / count * 1000, count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--kb", type=int, default=525, help="525: a CT slice; 10: a tiny instance")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = os.urandom(args.kb * 1024)
    results: dict[str, list[tuple[float, float]]] = {"minio": [], "aiohttp": []}
    for _ in range(args.repeats):
        for client, runs in results.items():
            runs.append(uvloop.run(run(client, args.count, data)))
            print(f"{client:8} {runs[-1][0]:.2f} CPU-ms/object, {runs[-1][1]:.0f} objects/s", flush=True)
    for client, runs in results.items():
        cpu = sorted(r[0] for r in runs)[len(runs) // 2]
        rate = sorted(r[1] for r in runs)[len(runs) // 2]
        print(f"{client:8} median {cpu:.2f} CPU-ms per object, {rate:.0f} objects/s ({args.kb} KiB)")


if __name__ == "__main__":
    main()
