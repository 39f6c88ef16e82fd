"""IHE IOCM: what the receiver's rejection check costs a C-STORE, and how fast a rejection note is applied.

    python -m benchmarks.iocm [--quick] [--backends embedded,kafka] [--kinds tiny,ct] [--associations 4]
        [--instances N] [--repeats 3] [--note-instances 1000] [--warmup N] [--services-state DIR]
        [--py-spy] [--keep-services] [--log-level DEBUG|INFO|WARNING] [--out DIR] [--work DIR]

**Targets.** Per backend and setup a pair of gateways (``python -m gateway.cli run``, ``benchmarks.forward.Gateway``),
each on a data dir of its own, started together and kept for the whole setup: ``check on``
(``GATEWAY_IOCM__CHECK_ON_RECEIVE=true``, the default) and ``check off`` (``false``), with nothing else different.
Setups, one after the other: ``receiver`` (roles receiver and api: the check alone on the receive path, the cleanest
figure of its cost; skipped with ``--no-receiver-alone``), then ``receiver+store`` (receiver, store and api in one
process, as production runs a small site: the check reads the index the store stage writes, and the two share the
process's event loop and core). With the check on, the receiver refuses a rejected instance sent again
(``gateway.ingest.iocm.RejectionCheck``: since 0613ca2 from a set kept in memory and refreshed from the index; before,
one index query per C-STORE, awaited before the instance was published), and keeps a KOS whole to read it as a
rejection note before Success (``check_rejection``: the store stage's apply plan against the index, nothing
written).

- ``embedded``: the embedded bus (SQLite WAL, ``synchronous=FULL``), the SQLite index and filesystem objects.
- ``kafka``: Kafka and PostgreSQL from ``scripts/services`` (``benchmarks.services``, ``--services-state``, default
  ``$GATEWAY_SERVICES_STATE`` else ``/tmp/bench-services``; services it starts are stopped again only in
  ``/tmp/bench-services``), each gateway with a fresh database (dropped afterwards) and topics of its own;
  filesystem objects. Consumer group names are fixed in the gateway, so both store roles are members of one
  ``dicomgw-store`` group, each subscribed to its own topic.

**1. Receive (check on / off).** ``--instances`` per run (tiny 5000, ct 1000; ``--quick`` 1000 / 200) of each of
``--kinds`` (``benchmarks.datasets``: ``tiny`` 10 KB Secondary Capture, ``ct`` 0.5 MB), sent flat out by
``benchmarks.scu`` (one process, ``--associations`` 4 associations sharing one queue; every instance a fresh SOP
Instance UID, fresh study and series UIDs every hundred: none is rejected, as nearly every instance in practice). Each
gateway first takes ``--warmup`` untimed instances of each kind. Runs alternate between the two gateways (repeat 1 on
then off, repeat 2 off then on, ...), ``--repeats`` (3; ``--quick`` 2) of each per kind. With the store role, between
runs the benchmark waits (polling ``/metrics`` only) until the store stage of the gateway just loaded has taken
everything, so that no run's store backlog runs beside the next one; during a run the gateway's own store stage works
beside its receiver, as it does in production.
*Timed*: instances/s and MB/s (data-set bytes) from the sender's start to its last C-STORE-RSP (Success: durable
on the bus); C-STORE latency at the sender from the first byte of the request to the response, p50/p95 per run;
with the store role also *stored/s*, the instances over the time from the sender's start until the store stage
had taken them all (the store stage gets more of the shared event loop while receiving is slower, so this moves
less than the receive rate); CPU ms per instance of the gateway's process tree from the start of the run until its
store stage has taken everything (receive and store) and over the sending window alone, and for ``kafka`` of
PostgreSQL and Kafka over the same span; the other (idle) gateway's CPU during the run. Reported: medians over
the repeats, ratios on/off of the medians and the median of the per-repeat ratios (each pair measured back to
back).

**2. Applying a rejection note.** Per backend and gateway, ``--repeats`` times (alternating which gateway goes
first): a study of ``--note-instances`` (1000; ``--quick`` 200) tiny instances in one series is stored (the same
sender, fresh UIDs) and awaited until ``GET /api/studies/{uid}`` lists every one ``stored``; then one rejection note
(KOS, 113001 *Rejected for Quality Reasons*, built by ``gateway.dicom.rejection.build_note`` as ``dicom-gateway
reject`` builds one, explicit VR little endian) naming all of them is sent on one association by
``benchmarks.scu.Association``. Each gateway first takes an untimed note of 20 instances the same way (the first
KOS a process reads imports pydicom's SR dictionaries).
*Timed*: the note's C-STORE round trip (with the check on it includes the apply plan rolled back in the receiver);
and from its Success until ``GET /api/studies/{uid}`` (polled every 50 ms, each poll timed; the api role shares
the gateway's event loop) shows every instance it names ``rejected`` (the response's arrival; the request's start
is the lower bound), and withdrawn instances per second over that time.

``--py-spy`` records the loaded gateway (``py-spy record``, 100 Hz, non-blocking) in the first repeat of every
receive run and note, and reports its samples by component (the innermost project file; the check and the worker
threads apart) and its hottest leaves; the collapsed stacks stay in ``profiles/`` beside the results.

The commit (and any uncommitted change to ``gateway/`` and ``workers/``) is recorded at the start, for each gateway
when it starts and at the end: the checkout may be edited while the benchmark runs, and the report says so when the
code measured changed. Everything shares the machine's cores (sender, gateways, Kafka, PostgreSQL): read the ratios.
``results.json`` (every run and the summaries) and ``results.md`` go to
``benchmarks/results/<UTC time>-iocm[-quick]/`` after each run; the gateways' logs stay in the work dir
(``/tmp/dicom-gateway-bench/iocm/``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pydicom
import uvloop

from benchmarks import services
from benchmarks.datasets import dataset
from benchmarks.forward import GATEWAY_AE, Gateway, _get
from benchmarks.hl7 import _execute, log_section, log_summary
from benchmarks.proc import cpu_and_rss
from benchmarks.report import add_run_arguments, reported
from benchmarks.run import machine, percentile
from benchmarks.scu import Association
from gateway.core.iocm import Reference, Title
from gateway.dicom.acse import EXPLICIT_LITTLE
from gateway.dicom.dataset import encode
from gateway.dicom.kos_check import KEY_OBJECT_SELECTION_DOCUMENT_STORAGE
from gateway.dicom.rejection import build_note

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("embedded", "kafka")
KINDS = ("tiny", "ct")
INSTANCES, QUICK_INSTANCES = {"tiny": 5000, "ct": 1000}, {"tiny": 1000, "ct": 200}
FILES_ON_DISK = {"ct": 400, "tiny": 800}
"""As ``benchmarks.run``: the same generated files, cycled with fresh UIDs."""
STUDIES_ON_DISK = 10
"""``benchmarks.datasets`` puts file n in study n % 10; a note's study is sent from the files of study 0 only."""
WARMUP, QUICK_WARMUP = 300, 100
REPEATS, QUICK_REPEATS = 3, 2
NOTE_INSTANCES, QUICK_NOTE_INSTANCES = 1000, 200
NOTE_WARMUP = 20
"""Instances of the untimed note each gateway takes before the timed ones."""
ASSOCIATIONS = 4
CALLING_AE = "BENCHSCU"
POLL_SECONDS = 0.05
DRAIN_TIMEOUT = 900.0
"""Seconds a store stage may take to catch up with what it was sent."""
APPLY_TIMEOUT = 300.0
"""Seconds a note may take, after its Success, to show every instance rejected."""
CHECK = {True: "on", False: "off"}
RECEIVER_STORE, RECEIVER_ALONE = "receiver+store", "receiver"
SETUPS = {RECEIVER_ALONE: ("receiver",), RECEIVER_STORE: ("receiver", "store")}
"""Roles of each gateway pair (plus api); the receiver alone isolates the check, receiver+store is production."""


# --- the code measured ---------------------------------------------------------------------------------------


def code_version() -> dict[str, Any]:
    """The commit of the checkout the gateways run from, and its uncommitted changes to product code (read-only git:
    another engineer may be editing the same checkout, and a gateway runs whatever is on disk when it starts)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "--no-optional-locks", "-C", str(ROOT), *args], capture_output=True, text=True,
                              check=False).stdout

    diff = git("diff", "HEAD", "--", "gateway", "workers")
    return {"commit": git("rev-parse", "--short", "HEAD").strip(),
            "modified": [line[3:] for line in git("status", "--porcelain", "--untracked-files=no", "--", "gateway",
                                                  "workers").splitlines()],
            "diff_sha256": hashlib.sha256(diff.encode()).hexdigest()[:12] if diff else ""}


# --- the gateways ----------------------------------------------------------------------------------------------


@dataclass
class Node:
    """One gateway of a backend's pair and what was sent to it."""

    backend: str
    check: bool
    gateway: Gateway
    services_state: Path | None = None
    """scripts/services' state dir of Kafka and PostgreSQL, whose CPU is counted; None: embedded."""
    store: bool = True
    """It runs the store role (else the receiver alone: nothing to drain)."""
    sent: int = 0
    """Instances (notes included) answered Success so far: what its store stage must take."""
    code: dict[str, Any] = field(default_factory=code_version)
    """The code it was started from."""

    @property
    def name(self) -> str:
        return f"{self.backend}/{self.roles}/check {CHECK[self.check]}"

    @property
    def roles(self) -> str:
        return RECEIVER_STORE if self.store else RECEIVER_ALONE

    @property
    def pid(self) -> int:
        return self.gateway.process.pid

    @property
    def token(self) -> str:
        return (self.gateway.data_dir / "api-token").read_text().strip()

    def service_pids(self) -> dict[str, int]:
        if self.services_state is None:
            return {}
        return {name: found[0] for name, found in services.pids(self.services_state).items()
                if name in ("kafka", "postgres")}

    def through_store(self) -> float:
        """Instances the store stage has taken: every event it published, and what it dead-lettered."""
        return sum(value for key, value in self.gateway.metrics().items()
                   if key.startswith("dicomgw_instances_stored_total{")
                   or (key.startswith("dicomgw_dead_letters_total{") and 'stage="store"' in key))

    def store_events(self) -> dict[str, float]:
        return {key: value for key, value in self.gateway.metrics().items()
                if key.startswith(("dicomgw_instances_stored_total{", "dicomgw_dead_letters_total{",
                                   "dicomgw_instances_rejected_total{"))}

    def drain(self) -> float:
        """Wait until the store stage has taken everything sent; the seconds it took (0 without a store role)."""
        if not self.store:
            return 0.0
        started = time.perf_counter()
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while (through := self.through_store()) < self.sent:
            if self.gateway.process.poll() is not None:
                raise RuntimeError(f"{self.name}: the gateway exited; see {self.gateway.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: the store stage took {through:.0f} of {self.sent} in "
                                   f"{DRAIN_TIMEOUT:.0f} s")
            time.sleep(0.1)
        return time.perf_counter() - started

    def study(self, study_uid: str) -> dict[str, Any]:
        body: dict[str, Any] = _get(f"http://127.0.0.1:{self.gateway.http_port}/api/studies/{study_uid}", self.token)
        return body

    def warnings(self) -> int:
        try:
            with self.gateway.log.open("rb") as log:
                return sum(1 for line in log if any(level in line[:200] for level in (b'"WARNING"', b'"ERROR"',
                                                                                       b'"CRITICAL"')))
        except FileNotFoundError:
            return 0


def start_node(backend: str, check: bool, roles: tuple[str, ...], work: Path, env: dict[str, str], log_level: str,
               services_state: Path | None) -> Node:
    directory = work / f"{backend}-{'-'.join(roles)}-check-{CHECK[check]}"
    shutil.rmtree(directory, ignore_errors=True)
    (directory / "data").mkdir(parents=True)
    gateway = Gateway(directory / "data", directory / "gateway.log", [*roles, "api"],
                      {**env, "GATEWAY_IOCM__CHECK_ON_RECEIVE": "true" if check else "false",
                       "GATEWAY_LOG__LEVEL": log_level})
    node = Node(backend, check, gateway, services_state, store="store" in roles)
    try:
        gateway.wait_ready()
    except BaseException:
        stop_node(node)
        raise
    return node


def stop_node(node: Node) -> None:
    node.gateway.stop()
    shutil.rmtree(node.gateway.data_dir, ignore_errors=True)


@contextmanager
def backend_services(backend: str, state: Path, keep: bool) -> Iterator[dict[str, str]]:
    """The environment of the backend's services: Kafka and PostgreSQL from scripts/services, or none."""
    if backend == "embedded":
        yield {}
        return
    with services.running(["kafka", "postgres"], state, keep=keep) as env:
        yield env


@contextmanager
def gateway_pair(backend: str, roles: tuple[str, ...], env: dict[str, str], work: Path, log_level: str,
                 state: Path) -> Iterator[dict[bool, Node]]:
    """The check-on and the check-off gateway. On Kafka and PostgreSQL each has a new database, dropped at the
    end, and topics named for it."""
    nodes: dict[bool, Node] = {}
    databases: list[str] = []
    base_url = env.get("GATEWAY_DATABASE__URL", "")
    try:
        for check in (True, False):
            node_env: dict[str, str] = {}
            if backend == "kafka":
                suffix = f"{uuid.uuid4().hex[:10]}_{CHECK[check]}"
                database = f"bench_iocm_{suffix}"
                uvloop.run(_execute(base_url, f'CREATE DATABASE "{database}"'))
                databases.append(database)
                node_env = {**env, "GATEWAY_DATABASE__URL": f"{base_url.rsplit('/', 1)[0]}/{database}",
                            "GATEWAY_TOPICS__INSTANCES": f"bench-iocm-instances-{suffix}",
                            "GATEWAY_TOPICS__EVENTS": f"bench-iocm-events-{suffix}",
                            "GATEWAY_TOPICS__DEAD_LETTER": f"bench-iocm-dead-letter-{suffix}",
                            "GATEWAY_TOPICS__HL7": f"bench-iocm-hl7-{suffix}",
                            "GATEWAY_TOPICS__AUDIT": f"bench-iocm-audit-{suffix}"}
            nodes[check] = start_node(backend, check, roles, work, node_env, log_level,
                                      state if backend == "kafka" else None)
        yield nodes
    finally:
        for node in nodes.values():
            stop_node(node)
        for database in databases:
            try:
                uvloop.run(_execute(base_url, f'DROP DATABASE IF EXISTS "{database}"'))
            except (OSError, asyncpg.PostgresError) as exc:
                print(f"dropping {database}: {exc}", file=sys.stderr)


# --- sending ---------------------------------------------------------------------------------------------------


def send(node: Node, files: Path, count: int, associations: int, out: Path, study_size: int = 100,
         record: bool = False) -> dict[str, Any]:
    """``count`` instances with fresh UIDs by ``benchmarks.scu``; raises unless every one got Success."""
    argv = [sys.executable, "-m", "benchmarks.scu", "--port", str(node.gateway.dicom_port), "--aec", GATEWAY_AE,
            "--calling-ae", CALLING_AE, "--concurrency", str(associations), "--files", str(files), "--count",
            str(count), "--unique", "--study-size", str(study_size), "--out", str(out), *(["--record"] if record else [])]
    subprocess.run(argv, check=True, timeout=3600, cwd=ROOT)
    result: dict[str, Any] = json.loads(out.read_text())
    node.sent += result["statuses"].get("0x0000", 0)
    failed = {status: n for status, n in result["statuses"].items() if status != "0x0000"}
    if result["errors"] or failed or result["instances"] != count:
        raise RuntimeError(f"{node.name}: {result['instances']} of {count} sent, {result['errors'][:1]} "
                           f"statuses {failed}")
    return result


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"p50": percentile(values, 0.50), "p95": percentile(values, 0.95), "max": max(values), "n": len(values)}


@contextmanager
def profiled(pid: int, out: Path | None) -> Iterator[None]:
    """``py-spy record`` of the process (100 Hz, non-blocking, collapsed stacks) while the block runs."""
    if out is None:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen([shutil.which("py-spy") or "py-spy", "record", "-p", str(pid), "--rate", "100", "--nonblocking",
                            "--format", "raw", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # attached before the load starts
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()


def _component(frames: list[str]) -> str:
    files = [frame.rsplit("(", 1)[-1].split(":", 1)[0] for frame in frames]
    if any(path.startswith("gateway/ingest/iocm.py") for path in files):
        return "iocm check (gateway/ingest/iocm.py)"
    if any(path.startswith("concurrent/futures/thread.py") for path in files):
        inner = [path for path in files if path.startswith(("gateway/", "workers/"))]
        return f"worker thread: {inner[-1] if inner else 'other'}"
    inner = [path for path in files if path.startswith(("gateway/", "workers/", "benchmarks/"))]
    return inner[-1] if inner else "event loop and runtime (no project frame)"


def profile_summary(path: Path) -> dict[str, Any]:
    """Samples by component (the innermost project file; the check and worker threads apart) and by leaf."""
    components: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return {}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        components[_component(frames)] += int(count)
        leaves[frames[-1]] += int(count)
    total = sum(components.values()) or 1
    return {"file": str(path), "samples": sum(components.values()),
            "components": {name: round(100 * n / total, 1) for name, n in components.most_common(12)},
            "leaves": {name: round(100 * n / total, 1) for name, n in leaves.most_common(12)}}


# --- 1. receive, check on and off ---------------------------------------------------------------------------


@dataclass
class ReceiveRun:
    backend: str
    roles: str
    kind: str
    check: bool
    repeat: int
    instances: int
    megabytes: float
    seconds: float
    latency_ms: dict[str, float]
    cpu_ms_per_instance: float
    """The gateway's process tree from the start of the run until its store stage had taken everything."""
    receive_cpu_ms_per_instance: float
    """The same over the sending window only (its store stage works beside the receiver)."""
    idle_cpu_ms_per_instance: float
    """The other gateway (not loaded) over the same span."""
    drain_s: float
    sender_cpu_s: float
    service_cpu_ms_per_instance: dict[str, float] = field(default_factory=dict)
    log_warnings: int = 0

    @property
    def per_second(self) -> float:
        return self.instances / self.seconds

    @property
    def mb_per_second(self) -> float:
        return self.megabytes / self.seconds

    @property
    def stored_per_second(self) -> float:
        """From the sender's start until the store stage had taken everything (receiver alone: received)."""
        return self.instances / (self.seconds + self.drain_s)


def receive_run(node: Node, other: Node, kind: str, repeat: int, files: Path, count: int, associations: int,
                work: Path, profile: Path | None = None) -> ReceiveRun:
    pids = {"gateway": node.pid, "idle": other.pid, **node.service_pids()}
    warned = node.warnings()
    with profiled(node.pid, profile):
        before = {key: cpu_and_rss(pid)[0] for key, pid in pids.items()}
        result = send(node, files, count, associations, work / "sender.json")
        received = cpu_and_rss(node.pid)[0]
        drain = node.drain()
    after = {key: cpu_and_rss(pid)[0] for key, pid in pids.items()}
    now = {"gateway": node.pid, "idle": other.pid, **node.service_pids()}
    spent = {key: (after[key] - before[key]) * 1000 / count for key in pids if now.get(key) == pids[key]}
    return ReceiveRun(node.backend, node.roles, kind, node.check, repeat, result["instances"], result["bytes"] / 1e6,
                      result["elapsed"], _spread(result["latency_ms"]), spent.pop("gateway"),
                      (received - before["gateway"]) * 1000 / count, spent.pop("idle", 0.0), drain,
                      result["cpu_seconds"], spent, node.warnings() - warned)


def receive_summary(runs: list[ReceiveRun]) -> list[dict[str, Any]]:
    rows = []
    for backend, roles, kind, check in dict.fromkeys((r.backend, r.roles, r.kind, r.check) for r in runs):
        mine = [r for r in runs if (r.backend, r.roles, r.kind, r.check) == (backend, roles, kind, check)]
        rates = [r.per_second for r in mine]
        rows.append({
            "backend": backend, "roles": roles, "kind": kind, "check": CHECK[check], "runs": len(mine),
            "instances": sum(r.instances for r in mine),
            "per_second": statistics.median(rates), "min": min(rates), "max": max(rates),
            "mb_per_second": statistics.median(r.mb_per_second for r in mine),
            "stored_per_second": statistics.median(r.stored_per_second for r in mine),
            "p50_ms": statistics.median(r.latency_ms["p50"] for r in mine),
            "p95_ms": statistics.median(r.latency_ms["p95"] for r in mine),
            "cpu_ms_per_instance": statistics.median(r.cpu_ms_per_instance for r in mine),
            "receive_cpu_ms_per_instance": statistics.median(r.receive_cpu_ms_per_instance for r in mine),
            "idle_cpu_ms_per_instance": statistics.median(r.idle_cpu_ms_per_instance for r in mine),
            "service_cpu_ms_per_instance": {
                key: statistics.median(values) for key in ("kafka", "postgres")
                if (values := [r.service_cpu_ms_per_instance[key] for r in mine if key in r.service_cpu_ms_per_instance])},
            "drain_s": statistics.median(r.drain_s for r in mine),
            "log_warnings": sum(r.log_warnings for r in mine)})
    return rows


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def receive_ratios(rows: list[dict[str, Any]], runs: list[ReceiveRun]) -> list[dict[str, Any]]:
    """On / off of the medians, and the median (min, max) of the per-repeat ratios."""
    by_key = {(r["backend"], r["roles"], r["kind"], r["check"]): r for r in rows}
    out = []
    for (backend, roles, kind, check), on in by_key.items():
        off = by_key.get((backend, roles, kind, "off"))
        if check != "on" or off is None:
            continue
        paired = [a.per_second / b.per_second for a in runs for b in runs
                  if (a.backend, a.roles, a.kind, a.repeat, a.check) == (backend, roles, kind, b.repeat, True)
                  and (b.backend, b.roles, b.kind, b.check) == (backend, roles, kind, False)]
        on_pg, off_pg = (row["service_cpu_ms_per_instance"].get("postgres") for row in (on, off))
        out.append({"backend": backend, "roles": roles, "kind": kind,
                    "per_second": _ratio(on["per_second"], off["per_second"]),
                    "stored_per_second": _ratio(on["stored_per_second"], off["stored_per_second"]),
                    "paired_per_second": statistics.median(paired) if paired else None,
                    "paired_min": min(paired) if paired else None, "paired_max": max(paired) if paired else None,
                    "mb_per_second": _ratio(on["mb_per_second"], off["mb_per_second"]),
                    "p50_ms": _ratio(on["p50_ms"], off["p50_ms"]), "p95_ms": _ratio(on["p95_ms"], off["p95_ms"]),
                    "cpu_ms_per_instance": _ratio(on["cpu_ms_per_instance"], off["cpu_ms_per_instance"]),
                    "receive_cpu_ms_per_instance": _ratio(on["receive_cpu_ms_per_instance"],
                                                          off["receive_cpu_ms_per_instance"]),
                    "postgres_cpu_ms_per_instance": (on_pg, off_pg)})
    return out


# --- 2. a rejection note ---------------------------------------------------------------------------------------


@dataclass
class NoteRun:
    backend: str
    check: bool
    repeat: int
    study_instance_uid: str
    instances: int
    load_s: float
    """Sending the study, until the API listed every instance stored."""
    note_bytes: int
    note_status: str
    round_trip_ms: float
    """The note's C-STORE, first byte of the request to the response."""
    applied_s: float
    """From the note's Success to the API response that first showed every instance rejected."""
    applied_lower_s: float
    """The same to the start of that request."""
    rejected: int
    polls: int
    poll_ms: dict[str, float]
    withdrawn_metric: float
    """What ``dicomgw_instances_rejected_total`` grew by."""

    @property
    def withdrawn_per_second(self) -> float:
        return self.rejected / self.applied_s if self.applied_s > 0 else 0.0


def _rejected_total(node: Node) -> float:
    return sum(value for key, value in node.gateway.metrics().items()
               if key.startswith("dicomgw_instances_rejected_total{"))


def _instances(study: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(series["series_instance_uid"], instance) for series in study.get("series", [])
            for instance in series.get("instances", [])]


async def _c_store_note(port: int, data: bytes, sop_instance_uid: str) -> tuple[int, float, float]:
    """The note's status, its round trip in seconds and the ``perf_counter`` time of its response."""
    association = await Association.open("127.0.0.1", port, CALLING_AE, GATEWAY_AE,
                                         [(KEY_OBJECT_SELECTION_DOCUMENT_STORAGE, EXPLICIT_LITTLE)])
    try:
        started = time.perf_counter()
        status = await association.c_store(KEY_OBJECT_SELECTION_DOCUMENT_STORAGE, EXPLICIT_LITTLE, sop_instance_uid,
                                           data)
        answered = time.perf_counter()
        elapsed = answered - started
    finally:
        await association.release()
    return status, elapsed, answered


def note_run(node: Node, repeat: int, files: Path, template: Path, count: int, associations: int,
             work: Path, profile: Path | None = None) -> NoteRun:
    started = time.perf_counter()
    result = send(node, files, count, associations, work / "note-study.json", study_size=count, record=True)
    studies = {study for _, study, _ in result["stored"]}
    if len(studies) != 1:
        raise RuntimeError(f"{node.name}: the study was sent as {len(studies)} studies")
    study_uid = studies.pop()
    sent = {sop for sop, _, _ in result["stored"]}
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:
        try:
            held = {instance["sop_instance_uid"]: (series, instance)
                    for series, instance in _instances(node.study(study_uid))}
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
            held = {}
        if sent <= held.keys() and all(held[sop][1]["status"] == "stored" for sop in sent):
            break
        quarantined = [sop for sop in sent if sop in held and held[sop][1]["status"] != "stored"]
        if quarantined or time.monotonic() > deadline:
            raise RuntimeError(f"{node.name}: {len(sent & held.keys())} of {count} instances of the study held, "
                               f"{len(quarantined)} not stored ({held[quarantined[0]][1]['status'] if quarantined else ''})")
        time.sleep(0.2)
    load_s = time.perf_counter() - started
    node.drain()
    references = [Reference(study_uid, series, instance["sop_class_uid"], sop)
                  for sop, (series, instance) in sorted(held.items()) if sop in sent]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attributes = pydicom.dcmread(template, stop_before_pixels=True)
        attributes.StudyInstanceUID = study_uid
        note = build_note(Title.QUALITY, attributes, references, datetime.now().astimezone(), "dicom-gateway-bench")
        data = encode(note, EXPLICIT_LITTLE)
    metric_before = _rejected_total(node)
    polls: list[float] = []
    applied = lower = 0.0
    rejected = 0
    with profiled(node.pid, profile):
        status, round_trip, answered = uvloop.run(_c_store_note(node.gateway.dicom_port, data, note.SOPInstanceUID))
        if status != 0x0000:
            raise RuntimeError(f"{node.name}: the rejection note was answered 0x{status:04X}")
        node.sent += 1
        deadline = time.monotonic() + APPLY_TIMEOUT
        while True:
            asked = time.perf_counter()
            statuses = {instance["sop_instance_uid"]: instance["status"]
                        for _, instance in _instances(node.study(study_uid))}
            arrived = time.perf_counter()
            polls.append((arrived - asked) * 1000)
            rejected = sum(1 for sop in sent if statuses.get(sop) == "rejected")
            if rejected == len(sent):
                applied, lower = arrived - answered, asked - answered
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.name}: {rejected} of {len(sent)} rejected {APPLY_TIMEOUT:.0f} s after the "
                                   "note's Success")
            time.sleep(max(0.0, asked + POLL_SECONDS - time.perf_counter()))
        node.drain()
    return NoteRun(node.backend, node.check, repeat, study_uid, len(sent), load_s, len(data), f"0x{status:04X}",
                   round_trip * 1000, applied, lower, rejected, len(polls), _spread(polls),
                   _rejected_total(node) - metric_before)


def note_summary(runs: list[NoteRun]) -> list[dict[str, Any]]:
    rows = []
    for backend, check in dict.fromkeys((r.backend, r.check) for r in runs):
        mine = [r for r in runs if (r.backend, r.check) == (backend, check)]
        rows.append({
            "backend": backend, "check": CHECK[check], "runs": len(mine), "instances": mine[0].instances,
            "note_kb": statistics.median(r.note_bytes for r in mine) / 1000,
            "round_trip_ms": statistics.median(r.round_trip_ms for r in mine),
            "round_trip_min": min(r.round_trip_ms for r in mine), "round_trip_max": max(r.round_trip_ms for r in mine),
            "applied_s": statistics.median(r.applied_s for r in mine),
            "applied_min": min(r.applied_s for r in mine), "applied_max": max(r.applied_s for r in mine),
            "applied_lower_s": statistics.median(r.applied_lower_s for r in mine),
            "withdrawn_per_second": statistics.median(r.withdrawn_per_second for r in mine),
            "poll_ms": statistics.median(r.poll_ms["p50"] for r in mine),
            "all_rejected": all(r.rejected == r.instances for r in mine),
            "metric_counted": all(r.withdrawn_metric == r.instances for r in mine),
            "load_per_second": statistics.median(r.instances / r.load_s for r in mine)})
    return rows


# --- the report ------------------------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(state: dict[str, Any]) -> str:
    lines = [state["header"], ""]
    versions = {json.dumps(code, sort_keys=True) for code in
                [state["code"], *state.get("code_by_gateway", {}).values(), *([state["code_after"]]
                                                                               if "code_after" in state else [])]}
    lines += [f"Code measured: commit {state['code']['commit']}"
              + (f", with uncommitted changes to {', '.join(state['code']['modified'])}"
                 if state["code"]["modified"] else "") + "."
              + ("" if len(versions) == 1 else " **The product code changed during the run** (another checkout user): "
                 "see `code`, `code_by_gateway` and `code_after` in results.json."), ""]
    rows = state.get("receive_summary", [])
    if rows:
        lines += ["## 1. Receive with the check on and off", "",
                  "Sender start to last C-STORE-RSP (Success = durable on the bus); C-STORE latency at the sender; "
                  "CPU of the gateway's process tree per instance from the start of the run until its store stage "
                  "took everything (receive + store), and over the sending window only; the idle gateway over the "
                  "same span.", "",
                  "| backend | roles | dataset | check | runs | instances/s (median) | min–max | MB/s | C-STORE p50 ms | "
                  "p95 ms | stored/s | gateway CPU ms/inst | during send | PostgreSQL / Kafka CPU ms/inst | "
                  "idle gateway CPU ms/inst | store drain s | log warnings |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            svc = r["service_cpu_ms_per_instance"]
            services_cpu = " / ".join(f"{svc[key]:.3f}" for key in ("postgres", "kafka") if key in svc)
            stored = f"{r['stored_per_second']:.0f}" if r["roles"] == RECEIVER_STORE else "–"
            lines.append(f"| {r['backend']} | {r['roles']} | {r['kind']} | {r['check']} | {r['runs']} | "
                         f"{r['per_second']:.0f} | {r['min']:.0f}–{r['max']:.0f} | {r['mb_per_second']:.1f} | "
                         f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {stored} | {r['cpu_ms_per_instance']:.3f} | "
                         f"{r['receive_cpu_ms_per_instance']:.3f} | "
                         f"{services_cpu or '–'} | {r['idle_cpu_ms_per_instance']:.3f} | {r['drain_s']:.1f} | "
                         f"{r['log_warnings']} |")
    ratio_rows = state.get("receive_ratios", [])
    if ratio_rows:
        lines += ["", "Check on / check off (below 1 for instances/s: the check costs throughput; above 1 for "
                  "latency and CPU: it costs time). *Paired*: the median (min–max) of each repeat's on/off, the two "
                  "runs measured back to back.", "",
                  "| backend | roles | dataset | instances/s | paired | MB/s | C-STORE p50 | p95 | stored/s | "
                  "gateway CPU/inst | during send | PostgreSQL CPU/inst on / off |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in ratio_rows:
            paired = (f"{r['paired_per_second']:.3f} ({r['paired_min']:.3f}–{r['paired_max']:.3f})"
                      if r["paired_per_second"] is not None else "–")
            stored = _f(r["stored_per_second"], 3) if r["roles"] == RECEIVER_STORE else "–"
            on_pg, off_pg = r["postgres_cpu_ms_per_instance"]
            pg = "–" if on_pg is None or off_pg is None else f"{on_pg:.3f} / {off_pg:.3f} ms"
            lines.append(f"| {r['backend']} | {r['roles']} | {r['kind']} | {_f(r['per_second'], 3)} | {paired} | "
                         f"{_f(r['mb_per_second'], 3)} | {_f(r['p50_ms'], 3)} | {_f(r['p95_ms'], 3)} | {stored} | "
                         f"{_f(r['cpu_ms_per_instance'], 3)} | {_f(r['receive_cpu_ms_per_instance'], 3)} | {pg} |")
    notes = state.get("note_summary", [])
    if notes:
        lines += ["", "## 2. Applying a rejection note", "",
                  "A study of tiny instances stored and listed `stored` by the API, then one 113001 note naming all of "
                  "them. *Round trip*: the note's C-STORE at the sender. *Success → all rejected*: until a "
                  f"`GET /api/studies/{{uid}}` (every {POLL_SECONDS * 1000:.0f} ms) answered with every instance "
                  "`rejected` (the start of that request in brackets: the lower bound). Medians.", "",
                  "| backend | check | instances | note kB | note C-STORE round trip ms | min–max | "
                  "Success → all rejected s | min–max | withdrawn/s | API poll p50 ms | study load inst/s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in notes:
            flags = "" if r["all_rejected"] and r["metric_counted"] else " (NOT all rejected/counted)"
            lines.append(f"| {r['backend']} | {r['check']} | {r['instances']} | {r['note_kb']:.0f} | "
                         f"{r['round_trip_ms']:.1f} | {r['round_trip_min']:.1f}–{r['round_trip_max']:.1f} | "
                         f"{r['applied_s']:.2f} ({r['applied_lower_s']:.2f}) | {r['applied_min']:.2f}–"
                         f"{r['applied_max']:.2f} | {r['withdrawn_per_second']:.0f}{flags} | {r['poll_ms']:.1f} | "
                         f"{r['load_per_second']:.0f} |")
        by_key = {(r["backend"], r["check"]): r for r in notes}
        pairs = [(backend, by_key[(backend, "on")], by_key[(backend, "off")]) for backend in dict.fromkeys(
            r["backend"] for r in notes) if (backend, "on") in by_key and (backend, "off") in by_key]
        if pairs:
            lines += ["", "| backend | note round trip on / off | Success → all rejected on / off |", "|---|---|---|"]
            lines += [f"| {backend} | {on['round_trip_ms'] / off['round_trip_ms']:.2f} | "
                      f"{on['applied_s'] / off['applied_s']:.2f} |" for backend, on, off in pairs]
    profiles = state.get("profiles", {})
    if profiles:
        lines += ["", "## py-spy (first repeat; share of samples by component, then the hottest leaves)", ""]
        for name, p in profiles.items():
            if not p:
                continue
            lines.append(f"- {name}: {p['samples']} samples; " + ", ".join(
                f"{component} {share}%" for component, share in p["components"].items()))
            lines.append("  - leaves: " + ", ".join(f"`{leaf}` {share}%" for leaf, share in list(p["leaves"].items())[:6]))
    if state.get("skipped"):
        lines += ["", f"Skipped: {state['skipped']}"]
    if state.get("store_events"):
        lines += ["", "Store stage outcomes per gateway (`/metrics` at the end): " + "; ".join(
            f"{name}: " + ", ".join(f"{key.split('{', 1)[1].rstrip('}')} {value:.0f}" for key, value in events.items()
                                    if value)
            for name, events in state["store_events"].items())]
    return "\n".join(lines + log_section(state)) + "\n"


# --- the run ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    backends: tuple[str, ...]
    kinds: tuple[str, ...]
    associations: int
    instances: dict[str, int]
    repeats: int
    note_instances: int
    warmup: int
    log_level: str
    setups: tuple[str, ...]
    keep_services: bool


def file_list(kind: str, work: Path, only_study: int | None = None) -> tuple[Path, list[Path]]:
    paths = dataset(kind, FILES_ON_DISK[kind], work.parent / "data")
    chosen = [path for n, path in enumerate(paths) if only_study is None or n % STUDIES_ON_DISK == only_study]
    listing = work / f"{kind}{'' if only_study is None else f'-study{only_study}'}.files"
    listing.write_text("\n".join(map(str, chosen)))
    return listing, chosen


def warm_up(nodes: dict[bool, Node], options: Options, lists: dict[str, Path], work: Path) -> None:
    for node in nodes.values():
        for kind in options.kinds:
            if options.warmup:
                send(node, lists[kind], options.warmup, options.associations, work / "warmup.json")
        print(f"warm-up {node.name}: {options.warmup} of each of {', '.join(options.kinds)}, store drained in "
              f"{node.drain():.1f} s", flush=True)


def receive_phase(backend: str, roles: str, nodes: dict[bool, Node], options: Options, lists: dict[str, Path],
                  work: Path, state: dict[str, Any], runs: list[ReceiveRun], report: Callable[[], None],
                  profiles: Path | None) -> None:
    for kind in options.kinds:
        for repeat in range(1, options.repeats + 1):
            for check in ((True, False) if repeat % 2 else (False, True)):
                profile = (profiles / f"receive-{backend}-{roles}-{kind}-check-{CHECK[check]}.txt"
                           if profiles is not None and repeat == 1 else None)
                run = receive_run(nodes[check], nodes[not check], kind, repeat, lists[kind], options.instances[kind],
                                  options.associations, work, profile)
                runs.append(run)
                print(f"[{repeat}/{options.repeats}] {backend:8} {roles:14} {kind:4} check {CHECK[check]:3}: "
                      f"{run.instances} in {run.seconds:6.2f} s = {run.per_second:6.0f}/s {run.mb_per_second:6.1f} "
                      f"MB/s, C-STORE p50 {run.latency_ms['p50']:.2f} ms p95 {run.latency_ms['p95']:.2f} ms, CPU "
                      f"{run.cpu_ms_per_instance:.2f} ms/inst (send {run.receive_cpu_ms_per_instance:.2f}), drain "
                      f"{run.drain_s:.1f} s", flush=True)
                state["receive_runs"] = [asdict(r) for r in runs]
                state["receive_summary"] = receive_summary(runs)
                state["receive_ratios"] = receive_ratios(state["receive_summary"], runs)
                if profile is not None:
                    state.setdefault("profiles", {})[profile.stem] = profile_summary(profile)
                report()


def note_phase(backend: str, nodes: dict[bool, Node], options: Options, work: Path, state: dict[str, Any],
               runs: list[NoteRun], report: Callable[[], None], profiles: Path | None) -> None:
    listing, chosen = file_list("tiny", work, only_study=0)
    for node in nodes.values():
        if options.warmup:  # the first KOS a process reads imports pydicom's SR concept dictionaries (~0.1 s)
            warm = note_run(node, 0, listing, chosen[0], NOTE_WARMUP, options.associations, work)
            state.setdefault("note_warmup", []).append(asdict(warm))
            print(f"warm-up {node.name}: a note of {warm.instances} in {warm.round_trip_ms:.1f} ms, all rejected "
                  f"{warm.applied_s:.2f} s after Success", flush=True)
    for repeat in range(1, options.repeats + 1):
        for check in ((True, False) if repeat % 2 else (False, True)):
            profile = (profiles / f"note-{backend}-check-{CHECK[check]}.txt"
                       if profiles is not None and repeat == 1 else None)
            note = note_run(nodes[check], repeat, listing, chosen[0], options.note_instances, options.associations,
                            work, profile)
            if profile is not None:
                state.setdefault("profiles", {})[profile.stem] = profile_summary(profile)
            runs.append(note)
            print(f"[{repeat}/{options.repeats}] {backend:8} note check {CHECK[check]:3}: {note.instances} instances, "
                  f"note {note.note_bytes / 1000:.0f} kB {note.note_status} in {note.round_trip_ms:.1f} ms, all "
                  f"rejected {note.applied_s:.2f} s after Success ({note.withdrawn_per_second:.0f}/s; "
                  f"{note.polls} polls, p50 {note.poll_ms['p50']:.1f} ms), study loaded in {note.load_s:.1f} s",
                  flush=True)
            state["note_runs"] = [asdict(r) for r in runs]
            state["note_summary"] = note_summary(runs)
            report()


def measure(options: Options, work: Path, state_dir: Path, state: dict[str, Any],
            report: Callable[[], None], profiles: Path | None = None) -> None:
    """Per backend, each setup's pair of gateways in turn (the receiver alone first), stopped before the next."""
    receive_runs: list[ReceiveRun] = []
    note_runs: list[NoteRun] = []
    state["logs"] = {}
    lists = {kind: file_list(kind, work)[0] for kind in options.kinds}
    for backend in options.backends:
        try:
            with backend_services(backend, state_dir, options.keep_services) as env:
                for roles in options.setups:
                    nodes: dict[bool, Node] = {}
                    try:
                        with gateway_pair(backend, SETUPS[roles], env, work, options.log_level, state_dir) as nodes:
                            warm_up(nodes, options, lists, work)
                            receive_phase(backend, roles, nodes, options, lists, work, state, receive_runs, report,
                                          profiles)
                            if roles == RECEIVER_STORE:
                                note_phase(backend, nodes, options, work, state, note_runs, report, profiles)
                            state.setdefault("store_events", {}).update(
                                {node.name: node.store_events() for node in nodes.values() if node.store})
                    finally:
                        for node in nodes.values():
                            state["logs"][node.name] = log_summary(node.gateway.log)
                            state.setdefault("code_by_gateway", {})[node.name] = node.code
                        report()
        except services.PortTaken as exc:
            state["skipped"] = f"{backend}: {exc}"
            print(f"skipping {backend}: {exc}", file=sys.stderr)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_INSTANCES} instances per run, {QUICK_REPEATS} repeats, a note of "
                             f"{QUICK_NOTE_INSTANCES}")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"some of {','.join(BACKENDS)}")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"some of {','.join(KINDS)}")
    parser.add_argument("--associations", type=int, default=ASSOCIATIONS)
    parser.add_argument("--instances", type=int, default=0,
                        help=f"instances per receive run, every kind (default {INSTANCES})")
    parser.add_argument("--repeats", type=int, default=0, help=f"runs of each setting (default {REPEATS})")
    parser.add_argument("--note-instances", type=int, default=0,
                        help=f"instances the rejection note names (default {NOTE_INSTANCES})")
    parser.add_argument("--warmup", type=int, default=-1,
                        help=f"untimed instances of each kind per gateway first (default {WARMUP})")
    parser.add_argument("--py-spy", action="store_true",
                        help="record each gateway with py-spy (100 Hz, non-blocking) in the first repeat of every "
                             "receive run and note; collapsed stacks and a summary in OUT/profiles")
    parser.add_argument("--no-receiver-alone", action="store_true",
                        help="measure the check only with the receiver and store roles together (not also the receiver "
                             "alone)")
    add_run_arguments(parser, "iocm")
    args = parser.parse_args()
    quick = args.quick
    backends = tuple(name for name in args.backends.split(",") if name)
    kinds = tuple(name for name in args.kinds.split(",") if name)
    if set(backends) - set(BACKENDS) or set(kinds) - set(KINDS):
        parser.error(f"unknown backends or kinds: {sorted(set(backends) - set(BACKENDS))} "
                     f"{sorted(set(kinds) - set(KINDS))}")
    counts = QUICK_INSTANCES if quick else INSTANCES
    options = Options(backends, kinds, args.associations,
                      {kind: args.instances or counts[kind] for kind in kinds},
                      args.repeats or (QUICK_REPEATS if quick else REPEATS),
                      args.note_instances or (QUICK_NOTE_INSTANCES if quick else NOTE_INSTANCES),
                      args.warmup if args.warmup >= 0 else (QUICK_WARMUP if quick else WARMUP), args.log_level,
                      (RECEIVER_STORE,) if args.no_receiver_alone else (RECEIVER_ALONE, RECEIVER_STORE),
                      args.keep_services or args.services_state.resolve() != services.DEFAULT_STATE.resolve())
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out / f"{stamp}-iocm{'-quick' if quick else ''}"
    out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.iocm " + " ".join(sys.argv[1:])
    state: dict[str, Any] = {
        "options": asdict(options), "machine": machine(), "command": command, "code": code_version(),
        "header": (f"# IHE IOCM: the receiver's rejection check and applying a note, {stamp}\n\n`{command}`\n\n"
                   f"Machine: {machine()}. Gateways: a pair per backend and setup, `GATEWAY_IOCM__CHECK_ON_RECEIVE` "
                   f"true (on) or false (off), setups {', '.join(options.setups)} (roles, plus api; one process); "
                   "embedded = embedded bus + SQLite, kafka = Kafka + PostgreSQL (scripts/services), filesystem "
                   f"objects. Receive: {', '.join(f'{n} {k}' for k, n in options.instances.items())} instances per "
                   f"run (fresh UIDs), {options.associations} associations, {options.repeats} repeat(s) of each "
                   f"setting, interleaved. Note: a study of {options.note_instances} tiny instances, one 113001 note "
                   "naming all of them. Sender: benchmarks.scu (one asyncio process).")}

    profiles = out / "profiles" if args.py_spy else None
    reported(out, state, markdown,
             lambda report: measure(options, args.work, args.services_state, state, report, profiles),
             finish=lambda: state.update(code_after=code_version()))


if __name__ == "__main__":
    main()
