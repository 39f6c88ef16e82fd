"""CPU cost of putting whole objects into S3 and reading them back: the minio SDK in a thread against aiohttp
on the event loop.

    python -m benchmarks.object_put [--count 400] [--kb 525]   # with GATEWAY_S3__* set (scripts/services env)

Each client puts the same objects (with metadata and the sha256 tag, as the store stage does), 8 at a time,
into one SeaweedFS, then reads each back whole (as the commitment's verification and forwarding do); we report
CPU-milliseconds of this process per object and objects/s for each, median over repeats, interleaved.
SeaweedFS's own CPU is the same for both and is not counted.
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


Figures = dict[str, tuple[float, float]]


async def run(client: str, count: int, data: bytes) -> Figures:
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

    async def read(n: int) -> None:
        key = f"{prefix}/{n}.dcm"
        async with gate:
            if client == "aiohttp":
                got = b"".join([chunk async for chunk in await store.read(key)])
            else:
                got = await asyncio.to_thread(_minio_read, store, settings.bucket, key)
            assert len(got) == len(data)

    figures: Figures = {}
    for operation, call in (("put", one), ("read", read)):
        started_cpu, started = cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(call(n) for n in range(count)))
        elapsed, cpu = time.perf_counter() - started, cpu_seconds() - started_cpu
        figures[operation] = cpu / count * 1000, count / elapsed
    await store.close()
    return figures


def _minio_read(store: S3ObjectStore, bucket: str, key: str) -> bytes:
    response = store._client.get_object(bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--kb", type=int, default=525, help="525: a CT slice; 10: a tiny instance")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = os.urandom(args.kb * 1024)
    results: dict[str, list[Figures]] = {"minio": [], "aiohttp": []}
    for _ in range(args.repeats):
        for client, runs in results.items():
            runs.append(uvloop.run(run(client, args.count, data)))
            print(f"{client:8} " + ", ".join(f"{operation} {cpu:.2f} CPU-ms/object {rate:.0f}/s"
                                             for operation, (cpu, rate) in runs[-1].items()), flush=True)
    for client, runs in results.items():
        for operation in ("put", "read"):
            cpu = sorted(r[operation][0] for r in runs)[len(runs) // 2]
            rate = sorted(r[operation][1] for r in runs)[len(runs) // 2]
            print(f"{client:8} {operation:5} median {cpu:.2f} CPU-ms per object, {rate:.0f} objects/s ({args.kb} KiB)")


if __name__ == "__main__":
    main()
