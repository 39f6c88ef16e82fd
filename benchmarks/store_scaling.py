"""Does adding store workers raise throughput? Real Kafka, SeaweedFS (S3) and PostgreSQL on this machine.

    python -m benchmarks.store_scaling [--instances 400] [--workers 1,2]

For each worker count: fresh topics, a receiver process ingests the instances (dcmtk storescu, 4
associations) into Kafka, then that many ``dicom-gateway run --role store`` processes start together and we
time how long the group takes to store and index every instance. Instances are fresh each run, so nothing
is a duplicate. Reports instances/s per worker count and the ratio to one worker.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from benchmarks.datasets import KINDS, generate
from benchmarks.targets import DCMTK_ENV, free_port

ROOT = Path(__file__).resolve().parent.parent
STORESCU = "/usr/bin/storescu"


def services_env() -> dict[str, str]:
    services = [sys.executable, str(ROOT / "scripts" / "services")]
    subprocess.run([*services, "up", "kafka", "s3", "postgres"], check=True)
    exports = subprocess.run([*services, "env"], capture_output=True, text=True, check=True).stdout
    return dict(line.removeprefix("export ").split("=", 1) for line in exports.splitlines())


def start(role: str, env: dict[str, str], work: Path) -> tuple[subprocess.Popen[bytes], int]:
    http = free_port()
    log = (work / f"{role}-{http}.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "run", "--role", role],
        env={**os.environ, **env, "GATEWAY_HTTP__PORT": str(http), "GATEWAY_HTTP__HOST": "127.0.0.1",
             "GATEWAY_DATA_DIR": str(work / f"data-{http}"), "GATEWAY_LOG__LEVEL": "WARNING"},
        stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz", timeout=2) as response:
                if response.status == 200:
                    return process, http
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{role} did not start; see {log.name}") from None
        time.sleep(0.2)


def stored(http: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("dicomgw_instances_stored_total{"))


def run_once(workers: int, instances: int, base: dict[str, str], work: Path) -> float:
    suffix = uuid.uuid4().hex[:8]
    env = {**base, "GATEWAY_TOPICS__INSTANCES": f"scaling-{suffix}", "GATEWAY_TOPICS__EVENTS": f"scaling-ev-{suffix}",
           "GATEWAY_TOPICS__DEAD_LETTER": f"scaling-dl-{suffix}", "GATEWAY_TOPICS__AUDIT": f"scaling-audit-{suffix}",
           "GATEWAY_KAFKA__PARTITIONS": "12",
           "GATEWAY_DICOM__PORT": str(free_port()), "GATEWAY_DICOM__HOST": "127.0.0.1"}
    files = generate(KINDS["ct"], instances, work / f"ct-{suffix}", studies=24)
    receiver, _ = start("receiver", env, work)
    try:
        shares = [files[i::4] for i in range(4)]
        senders = [subprocess.Popen([STORESCU, "-aec", "DICOMGW", "127.0.0.1", env["GATEWAY_DICOM__PORT"],
                                     *map(str, share)], env={**os.environ, **DCMTK_ENV}) for share in shares]
        if any(sender.wait() != 0 for sender in senders):
            raise RuntimeError("ingest failed")
    finally:
        receiver.terminate()
        receiver.wait()
    pool = [start("store", env, work) for _ in range(workers)]
    started = time.perf_counter()
    try:
        while sum(stored(http) for _, http in pool) < instances:
            if time.perf_counter() - started > 600:
                raise RuntimeError("store pool did not finish in 10 minutes")
            time.sleep(0.2)
        return instances / (time.perf_counter() - started)
    finally:
        for process, _ in pool:
            process.terminate()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=400)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/dicom-gateway-bench/scaling"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    base = services_env()
    counts = [int(n) for n in args.workers.split(",")]
    rates: dict[int, list[float]] = {n: [] for n in counts}
    for _ in range(args.repeats):
        for n in counts:
            rate = run_once(n, args.instances, base, args.work)
            rates[n].append(rate)
            print(f"{n} store worker(s): {rate:.0f} instances/s", flush=True)
    best = {n: sorted(r)[len(r) // 2] for n, r in rates.items()}
    for n in counts:
        print(f"{n} worker(s): median {best[n]:.0f} instances/s, {best[n] / best[counts[0]]:.2f}x of {counts[0]}")


if __name__ == "__main__":
    main()
