"""Forwarding throughput: the gateway's forward role against Orthanc sending the same instances to the same place.

    python -m benchmarks.forward [--quick] [--datasets ct,tiny] [--count N | --count ct=300,tiny=1000]
        [--associations 1,4] [--destinations storescp,orthanc] [--senders gateway,orthanc] [--repeats N]
        [--studies 1-10] [--batch-size N] [--batch-delay S] [--out DIR] [--work DIR]

Destination ``storescp``: dcmtk ``storescp --fork --ignore`` (reads every C-STORE and throws it away: the
protocol ceiling), without storage commitment. Destination ``orthanc``: a fresh Orthanc per run that takes the
instances and reports storage commitment on a new association (the gateway's destination with
``storage_commitment: true``, its receiver role running to take the report; Orthanc's store job with
``StorageCommitment: true``), done when every instance is reported committed.

Gateway side (embedded bus, filesystem objects, SQLite, in a temporary data dir): the receiver, store and api
roles take the instances from ``benchmarks.scu`` (fresh UIDs, ten studies) with no forward role running, and
stop; only instances stored (not quarantined) count, as only those are forwarded. Each run then starts from a
copy of that data dir (objects hard-linked) with ``--role forward --role api`` alone and the destination
configured: a new consumer group reads the events topic from its first record, so every stored instance is
queued, and the run is timed from the process's start until the API (``GET /api/forward/destinations``, polled)
shows every instance delivered (or committed). From the index afterwards: when the first instance was queued and
sent and the last one finished. ``max_associations`` is the
concurrency; the batch size (``--batch-size``, default a quarter of a study) splits each study over four
associations, and the batch delay is 0 (``--batch-delay``): the instances are all there already.

Orthanc side: the same instances (same sender, same count, fresh UIDs, ten studies) go into Orthanc 1.10; each
run is ``POST /modalities/{destination}/store`` of every instance (``Synchronous: true``): one job, or four jobs of a
quarter each at once (``ConcurrentJobs`` 4), timed from the first request to the last answer.

Figures: instances/s and MB/s over the sending window (gateway: first C-STORE answered to the last instance
finished; Orthanc: the job), the gateway's time from its process start to done and the rate over it, and
CPU-seconds per GB (data-set bytes of the load) of the forwarding process from ready to done (gateway) and of
Orthanc during its jobs. Ratios gateway/Orthanc per dataset, destination and concurrency.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.datasets import dataset
from benchmarks.proc import cpu_and_rss
from benchmarks.run import machine
from benchmarks.targets import DCMTK_ENV, ORTHANC, Target, free_port, make_targets

ROOT = Path(__file__).resolve().parent.parent
COUNTS = {"ct": 600, "tiny": 2000}
QUICK_COUNTS = {"ct": 300, "tiny": 1000}
FILES_ON_DISK = {"ct": 400, "tiny": 800}
"""As ``benchmarks.run``: the same generated files, cycled with fresh UIDs."""
STUDIES = 10
"""``benchmarks.datasets`` spreads each kind's files over ten studies (file n in study n % 10); the sender keeps
each one study. ``--studies K`` sends the files of the first K only."""
SPLIT = 4
"""The batch size splits a study over this many associations."""
GATEWAY_AE = "DICOMGW"
DEST = "dest"
FINAL = {"storescp": "delivered", "orthanc": "committed"}
"""The state an instance ends in at each destination: without storage commitment, and with it."""
POLL_SECONDS = 0.2


# --- processes ---------------------------------------------------------------------------------------------


def _get(url: str, token: str = "", timeout: float = 10) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def _kill(process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class Gateway:
    """``python -m gateway.cli run`` with the roles given, embedded backends, on its own data dir and ports."""

    def __init__(self, data_dir: Path, log: Path, roles: list[str], env: dict[str, str],
                 dicom_port: int = 0) -> None:
        self.data_dir = data_dir
        self.log = log
        self.dicom_port, self.http_port = dicom_port or free_port(), free_port()
        environment = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")} | {
            "GATEWAY_DATA_DIR": str(data_dir), "GATEWAY_SECRETS_DIR": str(data_dir.parent / "no-secrets"),
            "GATEWAY_DICOM__HOST": "127.0.0.1", "GATEWAY_DICOM__PORT": str(self.dicom_port),
            "GATEWAY_DICOM__AE_TITLE": GATEWAY_AE,
            "GATEWAY_HTTP__HOST": "127.0.0.1", "GATEWAY_HTTP__PORT": str(self.http_port),
            "GATEWAY_INTERNAL__HOST": "127.0.0.1", "GATEWAY_INTERNAL__PORT": str(free_port()),
            "GATEWAY_LOG__LEVEL": "WARNING"} | env
        argv = [sys.executable, "-m", "gateway.cli", "run", *(arg for role in roles for arg in ("--role", role))]
        self.started = time.time()
        with log.open("wb") as output:
            self.process = subprocess.Popen(argv, env=environment, stdout=output, stderr=subprocess.STDOUT,
                                            cwd=ROOT, start_new_session=True)

    def wait_ready(self, timeout: float = 90) -> float:
        """The wall time /readyz first answered 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return time.time()
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the gateway did not become ready; see {self.log}:\n{_tail(self.log)}")

    def metrics(self) -> dict[str, float]:
        """Every sample of the gateway's own metrics, by its exposition line's name and labels."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        samples = {}
        for line in text.splitlines():
            if line.startswith("dicomgw_"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def destinations(self) -> list[dict[str, Any]]:
        token = (self.data_dir / "api-token").read_text().strip()
        return list(_get(f"http://127.0.0.1:{self.http_port}/api/forward/destinations", token))

    def stop(self) -> None:
        _kill(self.process)


class Orthanc:
    """Orthanc 1.10 as ``benchmarks.targets`` runs it (16 DICOM threads, no compression, 128 KiB PDUs,
    TCP_NODELAY), with DICOM modalities to send to and four concurrent jobs."""

    def __init__(self, directory: Path, ae_title: str, modalities: dict[str, tuple[str, str, int]],
                 dicom_port: int = 0) -> None:
        if not Path(ORTHANC).exists():
            raise RuntimeError("Orthanc is not installed (apt-get install orthanc)")
        self.directory = directory
        self.ae_title = ae_title
        self.http_port, self.dicom_port = free_port(), dicom_port or free_port()
        directory.mkdir(parents=True, exist_ok=True)
        config = {"Name": ae_title.lower(), "StorageDirectory": str(directory / "storage"),
                  "IndexDirectory": str(directory / "index"), "HttpPort": self.http_port,
                  "DicomPort": self.dicom_port, "DicomAet": ae_title, "RemoteAccessAllowed": False,
                  "AuthenticationEnabled": False, "DicomThreadsCount": 16, "StorageCompression": False,
                  "MaximumPduLength": 131072, "ConcurrentJobs": SPLIT, "SaveJobs": False, "HttpTimeout": 3600,
                  "DicomModalities": {name: list(entry) for name, entry in modalities.items()}, "Plugins": []}
        (directory / "orthanc.json").write_text(json.dumps(config))
        self.log = directory / "orthanc.log"
        with self.log.open("ab") as output:
            self.process = subprocess.Popen([ORTHANC, str(directory / "orthanc.json")], stdout=output,
                                            stderr=subprocess.STDOUT, env={**os.environ, **DCMTK_ENV},
                                            start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.get("/system")
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"Orthanc did not start; see {self.log}:\n{_tail(self.log)}") from None
                time.sleep(0.1)

    def get(self, path: str) -> Any:
        return _get(f"http://127.0.0.1:{self.http_port}{path}")

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=json.dumps(body).encode(),
                                         method="POST")
        with urllib.request.urlopen(request, timeout=3600) as response:
            return json.loads(response.read() or b"null")

    def cpu(self) -> float:
        return cpu_and_rss(self.process.pid)[0]

    def stop(self) -> None:
        _kill(self.process)

    def clear(self) -> None:
        """Stopped: delete what it stored, keep its configuration and log."""
        for name in ("storage", "index"):
            shutil.rmtree(self.directory / name, ignore_errors=True)


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return ""


# --- loading ----------------------------------------------------------------------------------------------


@dataclass
class Load:
    dataset: str
    instances: int
    bytes: int
    """Data-set bytes sent (without the Part 10 file meta): the denominator of every MB/s and CPU s/GB."""
    seconds: float
    per_study: int


def send(port: int, ae_title: str, files: Path, count: int, out: Path) -> dict[str, Any]:
    """``count`` instances with fresh UIDs (one block: each file's study stays one study)."""
    subprocess.run([sys.executable, "-m", "benchmarks.scu", "--port", str(port), "--aec", ae_title,
                    "--concurrency", "4", "--files", str(files), "--count", str(count), "--unique",
                    "--study-size", str(count), "--out", str(out)], check=True, timeout=3600, cwd=ROOT)
    result: dict[str, Any] = json.loads(out.read_text())
    failed = {status: n for status, n in result["statuses"].items() if status != "0x0000"}
    if result["errors"] or failed or result["instances"] != count:
        raise RuntimeError(f"loading {ae_title}: {result['instances']} of {count} sent, "
                           f"{result['errors'][:1]} statuses {failed}")
    return result


def load_gateway(name: str, files: Path, count: int, studies: int, work: Path) -> tuple[Path, Load]:
    """A data dir holding ``count`` stored instances and their events, with no forward role having run."""
    data_dir = work / f"gateway-{name}" / "data"
    if data_dir.parent.exists():
        shutil.rmtree(data_dir.parent)
    data_dir.mkdir(parents=True)
    gateway = Gateway(data_dir, data_dir.parent / "load.log", ["receiver", "store", "api"], {})
    try:
        gateway.wait_ready()
        result = send(gateway.dicom_port, GATEWAY_AE, files, count, data_dir.parent / "sender.json")
        deadline = time.monotonic() + 600
        while True:
            through = {key: value for key, value in gateway.metrics().items()
                       if key.startswith("dicomgw_instances_stored_total{")}
            if sum(through.values()) >= count:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the store stage took {through} of {count} instances in 600 s")
            time.sleep(0.2)
    finally:
        gateway.stop()
    stored = sum(value for key, value in through.items() if 'event="instance.stored"' in key)
    if stored != count:
        raise RuntimeError(f"the gateway stored {stored} of {count} instances ({through}); only stored ones are "
                           f"forwarded: see {gateway.log}")
    return data_dir, Load(name, count, result["bytes"], result["elapsed"], math.ceil(count / studies))


def load_orthanc(orthanc: Orthanc, files: Path, count: int, work: Path) -> list[str]:
    send(orthanc.dicom_port, orthanc.ae_title, files, count, work / "orthanc-sender.json")
    ids: list[str] = orthanc.get("/instances")
    if len(ids) != count:
        raise RuntimeError(f"Orthanc holds {len(ids)} instances, {count} sent")
    return ids


def clone(source: Path, target: Path) -> None:
    """A copy of a stopped gateway's data dir: SQLite files copied, the objects (never written again) linked."""

    def link_or_copy(src: str, dst: str) -> None:
        if f"{os.sep}objects{os.sep}" in src:
            os.link(src, dst)
        else:
            shutil.copy2(src, dst)

    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, copy_function=link_or_copy)


# --- runs -------------------------------------------------------------------------------------------------


@dataclass
class Run:
    sender: str
    """gateway or orthanc."""
    dataset: str
    destination: str
    associations: int
    instances: int
    megabytes: float
    seconds: float
    """Sending window: gateway, first C-STORE answered to the last instance finished; Orthanc, its jobs."""
    cpu_seconds: float
    """Gateway: the forward process from ready to done; Orthanc: during its jobs."""
    done: int
    """Instances that reached the final state (delivered or committed)."""
    from_start_seconds: float = 0.0
    """Gateway: from its process's start to every instance done (per the API)."""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.instances / self.seconds if self.seconds else 0.0

    @property
    def cpu_s_per_gb(self) -> float:
        return self.cpu_seconds / (self.megabytes / 1000) if self.megabytes else 0.0


def forward_env(destination: dict[str, Any], batch_size: int, batch_delay: float) -> dict[str, str]:
    return {"GATEWAY_FORWARD__DESTINATIONS": json.dumps([destination]),
            "GATEWAY_FORWARD__BATCH_SIZE": str(batch_size),
            "GATEWAY_FORWARD__BATCH_DELAY_SECONDS": str(batch_delay),
            "GATEWAY_FORWARD__MAX_BATCH_DELAY_SECONDS": str(batch_delay),
            "GATEWAY_FORWARD__RETRY_INITIAL_SECONDS": "1", "GATEWAY_FORWARD__RETRY_MAX_SECONDS": "5"}


def gateway_run(load: Load, loaded: Path, destination: str, peer: tuple[str, str, int], associations: int,
                batch_size: int, batch_delay: float, work: Path, timeout: float,
                gateway_port: int = 0, repeat: int = 1, log_level: str = "WARNING") -> Run:
    """The forward role alone on a copy of the loaded data dir, timed until the API shows every instance done."""
    ae_title, host, port = peer
    final = FINAL[destination]
    commitment = destination == "orthanc"
    run_dir = work / f"forward-{load.dataset}-{destination}-{associations}-r{repeat}"
    clone(loaded, run_dir / "data")
    env = forward_env({"name": DEST, "ae_title": ae_title, "host": host, "port": port,
                       "max_associations": associations, "storage_commitment": commitment},
                      batch_size, batch_delay) | {"GATEWAY_LOG__LEVEL": log_level}
    roles = ["forward", "api", *(["receiver"] if commitment else [])]
    gateway = Gateway(run_dir / "data", run_dir / "gateway.log", roles, env, gateway_port)
    polls: list[tuple[float, dict[str, int]]] = []
    try:
        ready = gateway.wait_ready()
        cpu_ready = cpu_and_rss(gateway.process.pid)[0]
        deadline = time.monotonic() + timeout
        first_active = done_at = 0.0
        while True:
            [status] = gateway.destinations()
            states = {k: int(v) for k, v in status["instances"].items()}
            now = time.time()
            polls.append((now, states))
            if not first_active and any(v for k, v in states.items() if k != "queued"):
                first_active = now
            if states.get(final, 0) >= load.instances:
                done_at = now
                break
            finished = states.get(final, 0) + states.get("failed", 0)
            if finished >= load.instances or time.monotonic() > deadline or gateway.process.poll() is not None:
                break
            time.sleep(POLL_SECONDS)
        cpu_done = cpu_and_rss(gateway.process.pid)[0]
        metrics = gateway.metrics()
    finally:
        gateway.stop()
    with closing(sqlite3.connect(run_dir / "data" / "index.sqlite3")) as connection:
        queued_at, sent_at, finished_at, sends = connection.execute(
            "SELECT min(queued_at), min(sent_at), max(finished_at), max(sends) FROM forward_items "
            "WHERE destination = ?", (DEST,)).fetchone()
        states = dict(connection.execute("SELECT state, count(*) FROM forward_items WHERE destination = ? "
                                         "GROUP BY state", (DEST,)).fetchall())
        errors = Counter(error for (error,) in connection.execute(
            "SELECT last_error FROM forward_items WHERE destination = ? AND last_error != ''", (DEST,)))
    log_lines = Counter(_level(line) for line in gateway.log.read_text(errors="replace").splitlines())
    outcomes = {key.split('outcome="')[1].split('"')[0]: value for key, value in metrics.items()
                if key.startswith("dicomgw_forward_instances_total{")}
    done = int(states.get(final, 0))
    sending = (finished_at - sent_at) if done and finished_at and sent_at else 0.0
    details = {
        "states": states, "outcomes": outcomes, "max_sends": sends, "errors": dict(errors.most_common(5)),
        "start_to_ready_s": ready - gateway.started,
        "start_to_first_queued_s": (queued_at - gateway.started) if queued_at else None,
        "start_to_first_sent_s": (sent_at - gateway.started) if sent_at else None,
        "start_to_first_active_poll_s": (first_active - gateway.started) if first_active else None,
        "cpu_seconds_from_start": cpu_done, "batch_size": batch_size, "batch_delay_seconds": batch_delay,
        "forward_bytes": metrics.get(f'dicomgw_forward_bytes_total{{destination="{DEST}"}}'),
        "log_levels": dict(log_lines), "log": str(gateway.log), "polls": len(polls),
        "progress": [(round(t - gateway.started, 2), s) for t, s in polls[:: max(1, len(polls) // 40)]],
    }
    shutil.rmtree(run_dir / "data", ignore_errors=True)
    return Run("gateway", load.dataset, destination, associations, load.instances, load.bytes / 1e6, sending,
               cpu_done - cpu_ready, done, (done_at - gateway.started) if done_at else 0.0, details)


def _level(line: str) -> str:
    for level in ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"):
        if level in line[:200]:
            return level
    return "other"


def orthanc_run(load: Load, orthanc: Orthanc, ids: list[str], destination: str, associations: int,
                commitment: bool, timeout: float) -> Run:
    """``associations`` store jobs of an equal share of the instances each, all at once, to the destination
    (Orthanc's modality of that name)."""
    shares = [ids[i::associations] for i in range(associations)]
    answers: list[Any] = [None] * associations
    failures: list[str] = []

    def job(n: int) -> None:
        body: dict[str, Any] = {"Resources": shares[n], "Synchronous": True}
        if commitment:
            body["StorageCommitment"] = True
        try:
            answers[n] = orthanc.post(f"/modalities/{destination}/store", body)
        except (OSError, urllib.error.HTTPError) as exc:
            failures.append(f"job {n}: {exc}")

    threads = [threading.Thread(target=job, args=(n,)) for n in range(associations)]
    cpu_before = orthanc.cpu()
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored_at = time.monotonic()
    failed = sum(int(answer.get("FailedInstancesCount", 0)) for answer in answers if answer)
    done = 0 if failures else sum(int(answer.get("InstancesCount", 0)) for answer in answers if answer) - failed
    details: dict[str, Any] = {"answers": [{k: v for k, v in answer.items() if k != "ParentResources"}
                                           for answer in answers if answer], "failures": failures, "jobs": associations,
                               "stored_s": stored_at - started}
    if commitment and not failures:
        done, details["commitment"] = _wait_committed(orthanc, answers, timeout)
    elapsed = time.monotonic() - started
    cpu_after = orthanc.cpu()
    return Run("orthanc", load.dataset, destination, associations, load.instances, load.bytes / 1e6, elapsed,
               cpu_after - cpu_before, done, details=details)


def _wait_committed(orthanc: Orthanc, answers: list[Any], timeout: float) -> tuple[int, list[Any]]:
    """Poll each job's storage-commitment transaction until its report came; the instances reported committed."""
    transactions = [answer.get("StorageCommitmentTransactionUID") for answer in answers]
    if not all(transactions):
        return 0, [f"no StorageCommitmentTransactionUID in the job's answer: {answers}"]
    deadline = time.monotonic() + timeout
    reports: list[Any] = [None] * len(transactions)
    while time.monotonic() < deadline:
        for n, uid in enumerate(transactions):
            if reports[n] is None or reports[n].get("Status") == "Pending":
                reports[n] = orthanc.get(f"/storage-commitment/{uid}")
        if all(report.get("Status") != "Pending" for report in reports):
            break
        time.sleep(0.05)
    committed = sum(len(report.get("Success", [])) for report in reports if report)
    return committed, [{"status": report.get("Status"), "failures": report.get("Failures", [])[:3]}
                       for report in reports if report]


# --- the benchmark ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    datasets: tuple[str, ...]
    counts: dict[str, int]
    associations: tuple[int, ...]
    destinations: tuple[str, ...]
    repeats: int
    batch_size: int
    """0: a quarter of a study (``SPLIT``)."""
    batch_delay: float
    senders: tuple[str, ...]
    studies: int = STUDIES
    log_level: str = "WARNING"
    """The forward process's (its log is in the work dir, beside the archive's)."""


def storescp(work: Path) -> Target:
    [target] = make_targets(["storescp-ignore"], work / "destinations", None)
    target.start()
    return target


def measure(options: Options, work: Path, report: Any) -> list[Run]:
    """Every dataset: load the gateway and Orthanc once, then per repeat, destination and concurrency a gateway run
    and an Orthanc run, one after the other."""
    runs: list[Run] = []
    total = options.repeats * len(options.datasets) * len(options.destinations) * len(options.associations) * len(
        options.senders)
    started = time.monotonic()
    sink = storescp(work)
    try:
        for name in options.datasets:
            count = options.counts[name]
            files = work / f"{name}.files"
            paths = dataset(name, FILES_ON_DISK.get(name, count), work.parent / "data")
            files.write_text("\n".join(str(path) for n, path in enumerate(paths) if n % STUDIES < options.studies))
            loaded: Path | None = None
            load = Load(name, count, 0, 0.0, math.ceil(count / options.studies))
            if "gateway" in options.senders:
                loaded, load = load_gateway(name, files, count, options.studies, work)
                print(f"gateway loaded: {count} {name} instances ({load.bytes / 1e6:.0f} MB) in {load.seconds:.1f} s",
                      flush=True)
            batch = options.batch_size or math.ceil(load.per_study / SPLIT)
            orthanc_port = free_port()
            archive_port = free_port()
            source = None
            ids: list[str] = []
            if "orthanc" in options.senders:
                source = Orthanc(work / f"orthanc-{name}", "ORTHANC", {
                    "storescp": (sink.ae_title, "127.0.0.1", sink.port),
                    "orthanc": ("ARCHIVE", "127.0.0.1", archive_port)}, orthanc_port)
                ids = load_orthanc(source, files, count, work)
                if not load.bytes:
                    load = Load(name, count, json.loads((work / "orthanc-sender.json").read_text())["bytes"], 0.0,
                                load.per_study)
                print(f"Orthanc loaded: {len(ids)} {name} instances", flush=True)
            try:
                for repeat in range(options.repeats):
                    for destination in options.destinations:
                        for associations in options.associations:
                            for sender in options.senders:
                                run = one_run(sender, destination, associations, load, loaded, source, ids, batch,
                                              options.batch_delay, sink, archive_port, work, repeat + 1,
                                              options.log_level)
                                run.details["repeat"] = repeat + 1
                                runs.append(run)
                                print(f"[{len(runs)}/{total} {time.monotonic() - started:5.0f}s] {name:5} "
                                      f"-> {destination:8} x{associations} {sender:8} {run.done}/{run.instances} "
                                      f"{run.per_second:7.0f} inst/s {run.megabytes / run.seconds if run.seconds else 0:6.0f}"
                                      f" MB/s CPU {run.cpu_s_per_gb:6.1f} s/GB"
                                      + (f", start to done {run.from_start_seconds:.1f} s" if sender == "gateway"
                                         else ""), flush=True)
                                report(runs)
            finally:
                if source is not None:
                    source.stop()
                    source.clear()
                if loaded is not None:
                    shutil.rmtree(loaded.parent, ignore_errors=True)
    finally:
        sink.stop()
    return runs


def one_run(sender: str, destination: str, associations: int, load: Load, loaded: Path | None,
            source: Orthanc | None, ids: list[str], batch: int, batch_delay: float, sink: Target,
            archive_port: int, work: Path, repeat: int, log_level: str) -> Run:
    timeout = max(120.0, load.instances / 5)
    archive = None
    gateway_port = free_port()
    if destination == "orthanc":
        # A fresh archive each run, which knows both senders so that it reports commitment to them.
        modalities = {"gateway": (GATEWAY_AE, "127.0.0.1", gateway_port),
                      "source": ("ORTHANC", "127.0.0.1", source.dicom_port if source else 1)}
        archive = Orthanc(work / f"archive-{load.dataset}-{associations}-r{repeat}", "ARCHIVE", modalities,
                          archive_port)
    try:
        if sender == "gateway":
            assert loaded is not None
            peer = (sink.ae_title, "127.0.0.1", sink.port) if archive is None else ("ARCHIVE", "127.0.0.1",
                                                                                     archive.dicom_port)
            return gateway_run(load, loaded, destination, peer, associations, batch, batch_delay, work, timeout,
                               gateway_port, repeat, log_level)
        assert source is not None
        return orthanc_run(load, source, ids, destination, associations, archive is not None, timeout)
    finally:
        if archive is not None:
            archive.stop()
            archive.clear()


def summarise(runs: list[Run]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, int, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.dataset, run.destination, run.associations, run.sender), []).append(run)
    rows = []
    for (name, destination, associations, sender), group in sorted(groups.items(), key=_order):
        complete = [r for r in group if r.done == r.instances and r.seconds] or group
        rates = [r.per_second for r in complete]
        rows.append({
            "dataset": name, "destination": destination, "associations": associations, "sender": sender,
            "repeats": len(group), "complete": sum(1 for r in group if r.done == r.instances),
            "instances": group[0].instances, "instances_per_s": statistics.median(rates),
            "min": min(rates), "max": max(rates),
            "mb_per_s": statistics.median(r.megabytes / r.seconds if r.seconds else 0.0 for r in complete),
            "seconds": statistics.median(r.seconds for r in complete),
            "from_start_seconds": statistics.median(r.from_start_seconds for r in complete),
            "from_start_per_s": statistics.median(r.instances / r.from_start_seconds if r.from_start_seconds else 0.0
                                                  for r in complete),
            "cpu_s_per_gb": statistics.median(r.cpu_s_per_gb for r in complete),
        })
    return rows


def _order(item: tuple[tuple[str, str, int, str], Any]) -> tuple[str, int, int, str]:
    """Dataset, then the ceiling (storescp) before the archive, then concurrency and sender."""
    name, destination, associations, sender = item[0]
    return name, list(FINAL).index(destination), associations, sender


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_key = {(r["dataset"], r["destination"], r["associations"], r["sender"]): r for r in rows}
    result = []
    for (name, destination, associations, sender), gateway in sorted(by_key.items(), key=_order):
        orthanc = by_key.get((name, destination, associations, "orthanc"))
        if sender != "gateway" or orthanc is None or not orthanc["instances_per_s"]:
            continue
        result.append({
            "dataset": name, "destination": destination, "associations": associations,
            "ratio": gateway["instances_per_s"] / orthanc["instances_per_s"],
            "ratio_from_start": gateway["from_start_per_s"] / orthanc["instances_per_s"],
            "gateway_per_s": gateway["instances_per_s"], "orthanc_per_s": orthanc["instances_per_s"],
            "gateway_cpu_s_per_gb": gateway["cpu_s_per_gb"], "orthanc_cpu_s_per_gb": orthanc["cpu_s_per_gb"]})
    return result


def markdown(rows: list[dict[str, Any]], ratio_rows: list[dict[str, Any]], runs: list[Run], header: str) -> str:
    lines = [header, "",
             "| dataset | destination | assoc | sender | instances | done | instances/s (median) | min–max | MB/s | "
             "sending s | start → done s | instances/s from start | CPU s/GB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        from_start = (f"{r['from_start_seconds']:.1f} | {r['from_start_per_s']:.0f}" if r["sender"] == "gateway"
                      else "| ")
        lines.append(f"| {r['dataset']} | {r['destination']} | {r['associations']} | {r['sender']} | "
                     f"{r['instances']} | {r['complete']}/{r['repeats']} | {r['instances_per_s']:.0f} | "
                     f"{r['min']:.0f}–{r['max']:.0f} | {r['mb_per_s']:.0f} | {r['seconds']:.2f} | {from_start} | "
                     f"{r['cpu_s_per_gb']:.1f} |")
    if ratio_rows:
        lines += ["", "Gateway / Orthanc (instances/s medians; above 1: the gateway forwards faster):", "",
                  "| dataset | destination | assoc | sending | from the process's start | CPU s/GB gateway | "
                  "CPU s/GB Orthanc |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['dataset']} | {r['destination']} | {r['associations']} | {r['ratio']:.2f} | "
                  f"{r['ratio_from_start']:.2f} | {r['gateway_cpu_s_per_gb']:.1f} | {r['orthanc_cpu_s_per_gb']:.1f} |"
                  for r in ratio_rows]
    gateway_runs = [r for r in runs if r.sender == "gateway"]
    if gateway_runs:
        lines += ["", "Gateway runs, from the process's start (s): ready, first instance queued, first sent, done; "
                  "CPU-seconds of the process from its start; outcomes (metrics); log lines by level:", "",
                  "| dataset | destination | assoc | batch | ready | queued | sent | done | CPU s | outcomes | "
                  "log | errors |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in gateway_runs:
            d = r.details
            lines.append(f"| {r.dataset} | {r.destination} | {r.associations} | {d['batch_size']} | "
                         f"{d['start_to_ready_s']:.2f} | {_s(d['start_to_first_queued_s'])} | "
                         f"{_s(d['start_to_first_sent_s'])} | {r.from_start_seconds:.2f} | "
                         f"{d['cpu_seconds_from_start']:.1f} | {d['outcomes']} | {d['log_levels']} | "
                         f"{d['errors'] or ''} |")
    return "\n".join(lines) + "\n"


def _s(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _counts(text: str, names: tuple[str, ...], quick: bool) -> dict[str, int]:
    base = dict(QUICK_COUNTS if quick else COUNTS)
    if not text:
        return {name: base.get(name, 200) for name in names}
    if "=" not in text:
        return dict.fromkeys(names, int(text))
    given = {key: int(value) for key, value in (part.split("=") for part in text.split(","))}
    return {name: given.get(name, base.get(name, 200)) for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"fewer instances ({QUICK_COUNTS}) and one repeat")
    parser.add_argument("--datasets", default="ct,tiny")
    parser.add_argument("--count", default="", help=f"instances per dataset: N, or ct=N,tiny=M (default {COUNTS})")
    parser.add_argument("--associations", default="1,4")
    parser.add_argument("--destinations", default="",
                        help="storescp (no commitment), orthanc (storage commitment); default both")
    parser.add_argument("--senders", default="gateway,orthanc")
    parser.add_argument("--repeats", type=int, default=0, help="default 3, with --quick 1")
    parser.add_argument("--batch-size", type=int, default=0,
                        help=f"GATEWAY_FORWARD__BATCH_SIZE; 0: a study's instances / {SPLIT}")
    parser.add_argument("--studies", type=int, default=STUDIES, choices=range(1, STUDIES + 1),
                        metavar=f"1-{STUDIES}", help="studies the instances are spread over")
    parser.add_argument("--batch-delay", type=float, default=0.0, help="GATEWAY_FORWARD__BATCH_DELAY_SECONDS")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING"], default="WARNING",
                        help="the forward process's log level (its log is in the work dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dicom-gateway-bench" / "forward")
    args = parser.parse_args()
    names = tuple(args.datasets.split(","))
    unknown = [name for name in names if name not in FILES_ON_DISK]
    if unknown:
        parser.error(f"unknown datasets {unknown}: {sorted(FILES_ON_DISK)}")
    destinations = tuple((args.destinations or "storescp,orthanc").split(","))
    if set(destinations) - set(FINAL):
        parser.error(f"--destinations: {sorted(FINAL)}")
    options = Options(names, _counts(args.count, names, args.quick),
                      tuple(int(n) for n in args.associations.split(",")), destinations,
                      args.repeats or (1 if args.quick else 3), args.batch_size, args.batch_delay,
                      tuple(args.senders.split(",")), args.studies, args.log_level)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out / f"{stamp}-forward{'-quick' if args.quick else ''}"
    out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    header = (f"# Forwarding: gateway forward role against Orthanc, {stamp}\n\nMachine: {machine()}. Counts "
              f"{options.counts}, {options.studies} studies each, {options.repeats} repeat(s); gateway batch size "
              f"{options.batch_size or f'a study / {SPLIT}'}, batch delay {options.batch_delay} s; embedded "
              "backends. Destinations: storescp = dcmtk `storescp --fork --ignore` (no commitment); orthanc = a "
              "fresh Orthanc per run, with storage commitment (done = reported committed).")
    state: dict[str, Any] = {}

    def report(runs: list[Run]) -> None:
        rows = summarise(runs)
        ratio_rows = ratios(rows)
        state["markdown"] = markdown(rows, ratio_rows, runs, header)
        (out / "results.md").write_text(state["markdown"])
        (out / "results.json").write_text(json.dumps({
            "options": asdict(options), "machine": machine(), "runs": [asdict(r) for r in runs], "summary": rows,
            "ratios": ratio_rows}, indent=2, default=str))

    runs = measure(options, args.work, report)
    report(runs)
    print()
    print(state["markdown"])
    print(f"results in {out}")


if __name__ == "__main__":
    main()
