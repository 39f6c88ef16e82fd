"""HL7 v2 ADT over MLLP: the gateway's hl7 and patient roles against HAPI HL7v2's own server, in one run.

    python -m benchmarks.hl7 [--quick] [--messages N] [--connections 1,4] [--patients N] [--repeats N]
        [--warmup N] [--targets gateway-kafka,gateway-embedded,hapi] [--services-state DIR] [--keep-services]
        [--log-level DEBUG|INFO|WARNING] [--out DIR] [--work DIR]

Targets, each started once and kept for the whole run:

- ``gateway-kafka``: ``python -m gateway.cli run --role hl7 --role patient --role api`` (``benchmarks.forward.Gateway``)
  on Kafka and PostgreSQL from ``scripts/services`` (``benchmarks.services``; a fresh database and topics of its
  own, so that a test suite sharing the services meets nothing of ours). Its ``AA`` means: parsed, the sender
  allow-listed, the change checked against the index (the pre-check: the whole apply transaction, rolled back),
  and the record acknowledged by Kafka (``acks=all``, idempotent producer). The patient role in the same process
  consumes the hl7 topic and applies each message in one PostgreSQL transaction.
- ``gateway-embedded``: the same roles on the embedded bus (SQLite WAL, ``synchronous=FULL``) and the SQLite
  index, in a temporary data dir.
- ``hapi``: HAPI HL7v2 2.6's own receiving server (``benchmarks/peers/HapiAck.java``: ``HapiContext.newServer``,
  one thread per connection) whose application answers ``message.generateACK()`` to everything: it parses each
  message into HAPI's typed model and encodes an ACK, durable nowhere. Compiled once into the tools cache beside
  the jars ``tests/hapi.py`` fetches. The ceiling of a mainstream HL7 stack on this machine, not a like-for-like
  peer: the ratio says what durability, the pre-check and the gateway's Python cost against it.

**Load.** ``--messages`` (2000; ``--quick`` 500) ADT^A08 per run, each a different MSH-10 (never repeated in a
run of the benchmark: the gateway would answer a repeat from its index without publishing it) and a new Patient's
Name, for ``--patients`` (300) patients in turn (PID-3 ``Bnnnnn^^^HOSP&HOSP&ISO^PI``, MSH-3 ``HIS``, as
``tests/component/test_hl7.py`` builds them; 2.5, no MSH-18: ASCII). With ``--connections`` C (1 and 4), message n
goes on connection n mod C, and each connection sends its share one at a time, waiting for each ACK before the
next (original mode). Every ACK must be ``AA`` with MSA-2 the message's MSH-10; the run stops with an error
otherwise (after writing what it measured).

**Client.** This process, asyncio on uvloop, the same code for every target: an MLLP frame (0x0B, message,
0x1C 0x0D) written per message, the answer read up to 0x1C 0x0D and its MSA read with ``split``. All connections
are opened before the clock starts.

**Timed.** *messages/s*: messages over the time from the first frame written to the last ACK read (client clock,
``perf_counter``). *ACK round trip*: from writing a frame to reading its ACK, p50/p95/max over every message.
For the gateways, *ACK → applied*: ``hl7_messages.applied_at`` (the patient role's ``time.time()`` taken just
before its apply transaction, epoch seconds; so it leaves out that transaction's own commit) minus the wall time
the client read the ACK (``time.time()`` at the start of the run plus the ``perf_counter`` elapsed: one clock, one
machine); it can be negative when the patient role starts applying before the ACK reaches the client. p50/p95/max
over every message; *last applied*: from the first frame written to the latest ``applied_at`` of the run, and
the rate over it. Between runs the benchmark waits until the gateway's ``dicomgw_patient_changes_total`` (read from
``/metrics``, the only thing polled) reaches every message sent so far, so that no run's apply backlog spills into
the next; ``hl7_messages`` is read once per run after that (asyncpg for PostgreSQL, sqlite3 for SQLite).
*CPU ms per message*: user + system CPU of the target's process tree (``benchmarks.proc``) from the first frame to
the last ACK (HAPI) or to the drain (the gateways, so that applying counts), and, for ``gateway-kafka``, of Kafka
and PostgreSQL over the same span; and the client's own (this process) from the first frame to the last ACK.

Each gateway first takes ``--warmup`` (1000) untimed messages over the most connections timed (it opens its
connections and fills its caches), HAPI ten times that (its JIT compiles its hot paths; each round's rate is in
``results.json``, ``warmup``). Targets are then interleaved: every repeat runs each connection count on each target
(their order alternating between repeats) before the next. Ratios gateway/HAPI are of the medians of messages/s. At
the end, each gateway's ``GET /api/patients/B00000?issuer=HOSP`` must list every message sent for that patient in
its history. Everything shares the machine's cores (client, target, Kafka, PostgreSQL); read the ratios.
``results.json`` (every run and the summaries) and ``results.md`` go to
``benchmarks/results/<UTC time>-hl7[-quick]/`` after each run; the targets' logs stay in the work dir
(``/tmp/dicom-gateway-bench/hl7/``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import uvloop

from benchmarks import services
from benchmarks.forward import Gateway, _get, _kill, _level, _tail
from benchmarks.proc import cpu_and_rss
from benchmarks.report import add_run_arguments, reported
from benchmarks.run import machine, percentile
from benchmarks.targets import free_port
from tests.hapi import _build, _require, hapi_jars

ROOT = Path(__file__).resolve().parent.parent
MESSAGES, QUICK_MESSAGES = 2000, 500
REPEATS, QUICK_REPEATS = 3, 1
WARMUP = 1000
"""Untimed messages each target takes first, over the most connections timed: HAPI's JIT and the gateway's
connections, caches and first transactions (HAPI's first 200 cost it about 4x the CPU of later ones)."""
HAPI_WARMUP_ROUNDS = 10
"""HAPI takes the warm-up this many times: its JVM was still getting faster after 3000 messages (859, 1635, then
3319 messages/s on one connection in a first full run with one round), as HotSpot's C2 compiles after ~10 000
calls of a method."""
PATIENTS = 300
CONNECTIONS = (1, 4)
TARGETS = ("gateway-kafka", "gateway-embedded", "hapi")
AUTHORITY = "HOSP"
SENDER = "HIS"
FACILITY = "HOSP"
HAPI_ACK = ROOT / "benchmarks" / "peers" / "HapiAck.java"
START, END = b"\x0b", b"\x1c\r"
RUN_TIMEOUT = 600.0
"""Seconds one run (every message of it acknowledged) may take."""
DRAIN_TIMEOUT = 600.0
"""Seconds the gateway may take, after a run's last ACK, to apply everything acknowledged so far."""
CHECKED_PATIENT = 0
"""The patient whose history the API must show in full at the end."""


# --- messages ---------------------------------------------------------------------------------------------


def patient_id(patient: int) -> str:
    return f"B{patient:05d}"


def a08(control_id: str, patient: int, name: str) -> bytes:
    """An ADT^A08 as ``tests/component/test_hl7.py``'s ``adt`` builds it (segments separated by CR)."""
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    segments = [
        f"MSH|^~\\&|{SENDER}|{FACILITY}|DICOMGW|DISTRICT|{now}||ADT^A08^ADT_A01|{control_id}|P|2.5|||||FIN",
        f"EVN|A08|{now}",
        f"PID|1||{patient_id(patient)}^^^{AUTHORITY}&{AUTHORITY}&ISO^PI||{name}||{1940 + patient % 60}0101|"
        f"{'FM'[patient % 2]}",
        "PV1|1|O",
    ]
    return "\r".join(segments).encode("ascii")


@dataclass(frozen=True)
class Planned:
    control_id: str
    patient: int
    frame: bytes


def plan(prefix: str, messages: int, patients: int) -> list[Planned]:
    """``messages`` A08s, MSH-10 ``<prefix><n>`` (at most 20 characters, HL7's length for MSH-10)."""
    planned = []
    for n in range(messages):
        control_id = f"{prefix}{n:06d}"
        assert len(control_id) <= 20, control_id
        patient = n % patients
        planned.append(Planned(control_id, patient, START + a08(control_id, patient, f"BENCH^P{patient}^{control_id}")
                               + END))
    return planned


# --- the client ---------------------------------------------------------------------------------------------


@dataclass
class Exchange:
    control_id: str
    sent: float
    """perf_counter seconds, from the start of the run."""
    acked: float
    code: str
    acknowledged_id: str


def _msa(answer: bytes) -> tuple[str, str]:
    """MSA-1 and MSA-2 of an ACK as read (still framed)."""
    for segment in answer.strip(b"\x0b\x1c\r\n").split(b"\r"):
        if segment.startswith(b"MSA|"):
            fields = segment.decode("latin-1").split("|")
            return (fields[1] if len(fields) > 1 else "", fields[2] if len(fields) > 2 else "")
    return "", ""


async def _send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, share: list[Planned], origin: float,
                out: list[Exchange]) -> None:
    clock = time.perf_counter
    for message in share:
        sent = clock()
        writer.write(message.frame)
        answer = await reader.readuntil(END)
        acked = clock()
        code, acknowledged = _msa(answer)
        out.append(Exchange(message.control_id, sent - origin, acked - origin, code, acknowledged))


async def _client(port: int, planned: list[Planned], connections: int) -> tuple[float, float, list[Exchange]]:
    """Send ``planned`` over ``connections`` connections (message n on connection n mod C); the wall time and
    perf_counter at the start, and every exchange."""
    opened = [await asyncio.open_connection("127.0.0.1", port) for _ in range(connections)]
    out: list[Exchange] = []
    try:
        wall, origin = time.time(), time.perf_counter()
        async with asyncio.timeout(RUN_TIMEOUT):
            await asyncio.gather(*(_send(reader, writer, planned[k::connections], origin, out)
                                   for k, (reader, writer) in enumerate(opened)))
    finally:
        for _, writer in opened:
            writer.close()
        for _, writer in opened:
            try:
                await writer.wait_closed()
            except OSError:
                pass
    return wall, origin, out


# --- the targets --------------------------------------------------------------------------------------------


class Hapi:
    """``HapiAck`` on a port of its own; compiled once per version of its source into HAPI's tools cache."""

    def __init__(self, work: Path) -> None:
        libs = hapi_jars()
        classes = libs.parent / f"bench-classes-{hashlib.sha256(HAPI_ACK.read_bytes()).hexdigest()[:16]}"
        if not (classes / "HapiAck.class").is_file():
            javac = _require("javac")
            _build(classes, lambda out: [javac, "-nowarn", "-d", str(out), "-cp", str(libs / "*"), str(HAPI_ACK)])
        self.port = free_port()
        self.log = work / "hapi.log"
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(
                [_require("java"), "-cp", f"{classes}{os.pathsep}{libs / '*'}", "HapiAck", str(self.port)],
                stdout=subprocess.PIPE, stderr=output, start_new_session=True)
        assert self.process.stdout is not None
        deadline = time.monotonic() + 60
        line = b""
        while time.monotonic() < deadline and not line.startswith(b"READY"):
            line = self.process.stdout.readline()
            if not line and self.process.poll() is not None:
                break
        if not line.startswith(b"READY"):
            self.stop()
            raise RuntimeError(f"HapiAck did not start; see {self.log}:\n{_tail(self.log)}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        _kill(self.process)


@dataclass
class GatewayTarget:
    """A gateway with the hl7, patient and api roles, and where to read what it applied."""

    name: str
    gateway: Gateway
    port: int
    database_url: str | None
    """PostgreSQL; None: the data dir's SQLite index."""
    services_state: Path | None = None
    """scripts/services' state dir of Kafka and PostgreSQL, whose CPU is counted; None: embedded."""

    @property
    def pid(self) -> int:
        return self.gateway.process.pid

    def service_pids(self) -> dict[str, int]:
        """Kafka's and PostgreSQL's process ids now (read again each run: a service restarted has a new one)."""
        if self.services_state is None:
            return {}
        return {name: found[0] for name, found in services.pids(self.services_state).items()
                if name in ("kafka", "postgres")}

    def first_applications(self) -> int:
        """Messages the patient role applied for the first time, or refused (``dicomgw_patient_changes_total``
        without ``duplicate``: a message the consumer reads again after a restart of PostgreSQL or a rebalance is
        counted again as a duplicate)."""
        return int(sum(value for key, value in self.gateway.metrics().items()
                       if key.startswith("dicomgw_patient_changes_total{") and 'action="duplicate"' not in key))

    def warnings(self) -> int:
        """WARNING and worse lines in its log so far."""
        try:
            with self.gateway.log.open("rb") as log:
                return sum(1 for line in log if any(level in line[:200] for level in (b'"WARNING"', b'"ERROR"',
                                                                                       b'"CRITICAL"')))
        except FileNotFoundError:
            return 0

    def acknowledgments(self) -> dict[str, float]:
        return {key: value for key, value in self.gateway.metrics().items() if key.startswith("dicomgw_hl7_messages_total{")}

    def applied(self, prefix: str) -> dict[str, tuple[float, float]]:
        """received_at and applied_at of each message of the run, by MSH-10."""
        pattern = f"{SENDER}|{FACILITY}|{prefix}%"
        if self.database_url is None:
            with closing(sqlite3.connect(f"file:{self.gateway.data_dir / 'index.sqlite3'}?mode=ro", uri=True)) as db:
                rows = db.execute("SELECT message_key, received_at, applied_at FROM hl7_messages "
                                  "WHERE message_key LIKE ?", (pattern,)).fetchall()
        else:
            rows = uvloop.run(_fetch(self.database_url, "SELECT message_key, received_at, applied_at FROM hl7_messages "
                                                        "WHERE message_key LIKE $1", pattern))
        return {str(key).rsplit("|", 1)[-1]: (float(received), float(applied)) for key, received, applied in rows}

    def patient(self, patient: int) -> dict[str, Any]:
        token = (self.gateway.data_dir / "api-token").read_text().strip()
        body = _get(f"http://127.0.0.1:{self.gateway.http_port}/api/patients/{patient_id(patient)}?issuer={AUTHORITY}",
                    token)
        return dict(body)


async def _fetch(url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    connection = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await connection.fetch(query, *args)]
    finally:
        await connection.close()


async def _execute(url: str, statement: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def gateway_env(port: int, log_level: str) -> dict[str, str]:
    return {"GATEWAY_HL7__HOST": "127.0.0.1", "GATEWAY_HL7__PORT": str(port),
            "GATEWAY_HL7__ALLOWED_SENDERS": json.dumps([{"application": SENDER}]),
            "GATEWAY_HL7__LOCAL_AUTHORITIES": json.dumps([AUTHORITY]), "GATEWAY_LOG__LEVEL": log_level}


def start_gateway(name: str, work: Path, env: dict[str, str], log_level: str, database_url: str | None,
                  services_state: Path | None) -> GatewayTarget:
    directory = work / name
    shutil.rmtree(directory, ignore_errors=True)
    (directory / "data").mkdir(parents=True)
    port = free_port()
    gateway = Gateway(directory / "data", directory / "gateway.log", ["hl7", "patient", "api"],
                      {**env, **gateway_env(port, log_level)})
    gateway.wait_ready()
    return GatewayTarget(name, gateway, port, database_url, services_state)


@contextmanager
def kafka_gateway(work: Path, state: Path, keep: bool, log_level: str) -> Iterator[GatewayTarget]:
    """The gateway on Kafka and PostgreSQL from scripts/services: a new database, dropped at the end, and topics
    named for this run."""
    with services.running(["kafka", "postgres"], state, keep=keep) as env:
        base_url = env["GATEWAY_DATABASE__URL"]
        database = f"bench_hl7_{uuid.uuid4().hex[:12]}"
        uvloop.run(_execute(base_url, f'CREATE DATABASE "{database}"'))
        url = f"{base_url.rsplit('/', 1)[0]}/{database}"
        suffix = database.removeprefix("bench_hl7_")
        gateway_env = {**env, "GATEWAY_DATABASE__URL": url,
                       "GATEWAY_TOPICS__INSTANCES": f"bench-instances-{suffix}",
                       "GATEWAY_TOPICS__EVENTS": f"bench-events-{suffix}",
                       "GATEWAY_TOPICS__DEAD_LETTER": f"bench-dead-letter-{suffix}",
                       "GATEWAY_TOPICS__HL7": f"bench-hl7-{suffix}",
                       "GATEWAY_TOPICS__AUDIT": f"bench-audit-{suffix}"}
        target = None
        try:
            target = start_gateway("gateway-kafka", work, gateway_env, log_level, url, state)
            yield target
        finally:
            if target is not None:
                target.gateway.stop()
                shutil.rmtree(target.gateway.data_dir, ignore_errors=True)
            try:
                uvloop.run(_execute(base_url, f'DROP DATABASE IF EXISTS "{database}"'))
            except (OSError, asyncpg.PostgresError) as exc:
                print(f"dropping {database}: {exc}", file=sys.stderr)


@contextmanager
def embedded_gateway(work: Path, log_level: str) -> Iterator[GatewayTarget]:
    target = start_gateway("gateway-embedded", work, {}, log_level, None, None)
    try:
        yield target
    finally:
        target.gateway.stop()
        shutil.rmtree(target.gateway.data_dir, ignore_errors=True)


# --- a run ----------------------------------------------------------------------------------------------------


@dataclass
class Run:
    target: str
    connections: int
    repeat: int
    prefix: str
    messages: int
    seconds: float
    per_second: float
    codes: dict[str, int]
    mismatched: int
    """ACKs whose MSA-2 is not the message's MSH-10."""
    round_trip_ms: dict[str, float]
    cpu_ms_per_message: float
    client_cpu_ms_per_message: float
    service_cpu_ms_per_message: dict[str, float] = field(default_factory=dict)
    applied: int = 0
    ack_to_applied_ms: dict[str, float] = field(default_factory=dict)
    received_to_ack_ms: dict[str, float] = field(default_factory=dict)
    """The listener's received_at (before publishing) to the client reading the ACK."""
    last_applied_s: float = 0.0
    """From the first frame written to the run's latest applied_at."""
    applied_per_second: float = 0.0
    drain_s: float = 0.0
    """From the last ACK until the gateway counted every change applied."""
    restarted: list[str] = field(default_factory=list)
    """Services whose process changed during the run (someone restarted them): their CPU is left out."""
    log_warnings: int = 0
    """WARNING and worse lines the gateway logged during the run and its drain."""
    ack_to_applied_samples_ms: list[float] = field(default_factory=list)
    round_trip_samples_ms: list[float] = field(default_factory=list)

    @property
    def all_aa(self) -> bool:
        return self.codes == {"AA": self.messages} and not self.mismatched


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"p50": percentile(values, 0.50), "p95": percentile(values, 0.95), "max": max(values), "n": len(values)}


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_run(target: GatewayTarget | Hapi, name: str, connections: int, repeat: int, planned: list[Planned],
            prefix: str, expected_changes: int) -> Run:
    port = target.port
    gateway = target if isinstance(target, GatewayTarget) else None
    pids = {name: target.pid, **(gateway.service_pids() if gateway else {})}
    warnings = gateway.warnings() if gateway else 0
    cpu_before = {key: cpu_and_rss(pid)[0] for key, pid in pids.items()}
    client_before = _own_cpu()
    wall, _, exchanges = uvloop.run(_client(port, planned, connections))
    client_ms = (_own_cpu() - client_before) * 1000 / len(exchanges)
    first = min(e.sent for e in exchanges)
    last = max(e.acked for e in exchanges)
    seconds = last - first
    by_id = {m.control_id for m in planned}
    mismatched = sum(1 for e in exchanges if e.acknowledged_id != e.control_id or e.control_id not in by_id)
    round_trips = [(e.acked - e.sent) * 1000 for e in exchanges]
    run = Run(name, connections, repeat, prefix, len(exchanges), seconds, len(exchanges) / seconds,
              dict(Counter(e.code for e in exchanges)), mismatched, _spread(round_trips), 0.0, client_ms,
              round_trip_samples_ms=[round(v, 3) for v in round_trips])
    if gateway is not None:
        ended = time.perf_counter()
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while gateway.first_applications() < expected_changes and time.monotonic() < deadline:
            time.sleep(0.1)
        applied = gateway.applied(prefix)
        while len(applied) < len(planned) and time.monotonic() < deadline:  # the counter and the index disagree
            time.sleep(0.5)
            applied = gateway.applied(prefix)
        run.drain_s = time.perf_counter() - ended
        acked_wall = {e.control_id: wall + e.acked for e in exchanges}
        latencies = [(applied[c][1] - acked_wall[c]) * 1000 for c in acked_wall if c in applied]
        received = [(acked_wall[c] - applied[c][0]) * 1000 for c in acked_wall if c in applied]
        run.applied = len(latencies)
        run.ack_to_applied_ms = _spread(latencies)
        run.received_to_ack_ms = _spread(received)
        run.ack_to_applied_samples_ms = [round(v, 3) for v in latencies]
        if applied:
            run.last_applied_s = max(at for _, at in applied.values()) - (wall + first)
            run.applied_per_second = len(applied) / run.last_applied_s if run.last_applied_s > 0 else 0.0
    cpu_after = {key: cpu_and_rss(pid)[0] for key, pid in pids.items()}
    now = {name: target.pid, **(gateway.service_pids() if gateway else {})}
    spent = {key: (cpu_after[key] - cpu_before[key]) * 1000 / len(exchanges) for key in pids if now.get(key) == pids[key]}
    run.restarted = sorted(key for key in pids if now.get(key) != pids[key])
    run.cpu_ms_per_message = spent.pop(name)
    run.service_cpu_ms_per_message = spent
    run.log_warnings = (gateway.warnings() - warnings) if gateway else 0
    return run


# --- summaries and report -------------------------------------------------------------------------------------


def summary(runs: list[Run]) -> list[dict[str, Any]]:
    rows = []
    for name in dict.fromkeys(r.target for r in runs):
        for connections in sorted({r.connections for r in runs if r.target == name}):
            mine = [r for r in runs if r.target == name and r.connections == connections]
            rates = [r.per_second for r in mine]
            row: dict[str, Any] = {
                "target": name, "connections": connections, "runs": len(mine),
                "messages": sum(r.messages for r in mine), "all_aa": all(r.all_aa for r in mine),
                "per_second": statistics.median(rates), "min": min(rates), "max": max(rates),
                "round_trip_ms": _spread([v for r in mine for v in r.round_trip_samples_ms]),
                "cpu_ms_per_message": statistics.median(r.cpu_ms_per_message for r in mine),
                "client_cpu_ms_per_message": statistics.median(r.client_cpu_ms_per_message for r in mine),
                "service_cpu_ms_per_message": {key: statistics.median(values) for key in ("kafka", "postgres")
                                               if (values := [r.service_cpu_ms_per_message[key] for r in mine
                                                              if key in r.service_cpu_ms_per_message])},
                "log_warnings": sum(r.log_warnings for r in mine),
                "restarted": sorted({key for r in mine for key in r.restarted})}
            if name.startswith("gateway"):
                row |= {"applied": sum(r.applied for r in mine),
                        "ack_to_applied_ms": _spread([v for r in mine for v in r.ack_to_applied_samples_ms]),
                        "last_applied_s": statistics.median(r.last_applied_s for r in mine),
                        "applied_per_second": statistics.median(r.applied_per_second for r in mine),
                        "drain_s": statistics.median(r.drain_s for r in mine)}
            rows.append(row)
    return rows


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    hapi = {r["connections"]: r for r in rows if r["target"] == "hapi"}
    return [{"target": r["target"], "connections": r["connections"], "gateway_per_s": r["per_second"],
             "hapi_per_s": hapi[r["connections"]]["per_second"],
             "ratio": r["per_second"] / hapi[r["connections"]]["per_second"],
             "gateway_cpu_ms_per_message": r["cpu_ms_per_message"],
             "hapi_cpu_ms_per_message": hapi[r["connections"]]["cpu_ms_per_message"]}
            for r in rows if r["target"].startswith("gateway") and r["connections"] in hapi]


def log_summary(path: Path) -> dict[str, Any]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return {}
    notable = [line[:400] for line in lines if _level(line) in ("ERROR", "WARNING", "CRITICAL")
               or line.startswith(("Exception", "Traceback", "SEVERE", "[main] WARN", "[main] ERROR"))]
    return {"log": str(path), "lines": len(lines), "levels": dict(Counter(_level(line) for line in lines)),
            "notable": list(dict.fromkeys(notable))[:12]}


def log_section(state: dict[str, Any]) -> list[str]:
    """The end of a results.md: each process's log summary (``log_summary``), and the error that stopped the run."""
    logs = state.get("logs", {})
    lines = ["", "## Logs", ""] if logs else []
    for name, s in logs.items():
        lines.append(f"- {name}: {s.get('lines', 0)} lines, by level {s.get('levels')} ({s.get('log')})")
        lines += [f"  - `{line}`" for line in s.get("notable", [])[:5]]
    if state.get("error"):
        lines += ["", f"**Stopped by an error:** {state['error']}"]
    return lines


def _ms(spread: dict[str, float], key: str) -> str:
    return f"{spread[key]:.1f}" if key in spread else "–"


def markdown(state: dict[str, Any]) -> str:
    lines = [state["header"], ""]
    rows = state.get("summary", [])
    if rows:
        lines += ["## Acknowledged messages/s", "",
                  "From the first frame written to the last ACK read; each connection sends its share one at a time "
                  "(original mode). CPU: the target's process tree per message (gateways: until everything was "
                  "applied).", "",
                  "| target | conn | messages | all AA | messages/s (median) | min–max | ACK round trip p50 ms | p95 ms "
                  "| max ms | CPU ms/msg | Kafka / PostgreSQL CPU ms/msg | client CPU ms/msg | log warnings |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            services_cpu = " / ".join(f"{r['service_cpu_ms_per_message'][key]:.2f}"
                                      for key in ("kafka", "postgres") if key in r["service_cpu_ms_per_message"])
            rt = r["round_trip_ms"]
            lines.append(f"| {r['target']} | {r['connections']} | {r['messages']} | {'yes' if r['all_aa'] else 'NO'} | "
                         f"{r['per_second']:.0f} | {r['min']:.0f}–{r['max']:.0f} | {_ms(rt, 'p50')} | {_ms(rt, 'p95')} | "
                         f"{_ms(rt, 'max')} | {r['cpu_ms_per_message']:.2f} | {services_cpu or '–'} | "
                         f"{r['client_cpu_ms_per_message']:.2f} | {r['log_warnings']}"
                         f"{' (restarted: ' + ', '.join(r['restarted']) + ')' if r['restarted'] else ''} |")
    ratio_rows = state.get("ratios", [])
    if ratio_rows:
        lines += ["", "Gateway / HAPI (messages/s medians; above 1: the gateway is faster):", "",
                  "| target | conn | gateway msg/s | HAPI msg/s | gateway/HAPI | CPU ms/msg gateway | CPU ms/msg HAPI |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['target']} | {r['connections']} | {r['gateway_per_s']:.0f} | {r['hapi_per_s']:.0f} | "
                  f"{r['ratio']:.2f} | {r['gateway_cpu_ms_per_message']:.2f} | {r['hapi_cpu_ms_per_message']:.2f} |"
                  for r in ratio_rows]
    applied_rows = [r for r in rows if r["target"].startswith("gateway")]
    if applied_rows:
        lines += ["", "## ACK → applied", "",
                  "`hl7_messages.applied_at` (set just before the apply transaction) minus the wall time the client "
                  "read the ACK; negative: the patient role started before the ACK reached the client. *Last applied*: "
                  "first frame written to the run's latest `applied_at`.", "",
                  "| target | conn | applied | ACK→applied p50 ms | p95 ms | max ms | last applied s | applied/s | "
                  "received→ACK p50 ms |", "|---|---|---|---|---|---|---|---|---|"]
        for r in applied_rows:
            spread = r["ack_to_applied_ms"]
            received = _spread([])
            per_run = [run for run in state.get("runs", []) if run["target"] == r["target"]
                       and run["connections"] == r["connections"]]
            if per_run:
                received = {"p50": statistics.median(run["received_to_ack_ms"].get("p50", 0.0) for run in per_run)}
            lines.append(f"| {r['target']} | {r['connections']} | {r['applied']}/{r['messages']} | {_ms(spread, 'p50')} | "
                         f"{_ms(spread, 'p95')} | {_ms(spread, 'max')} | {r['last_applied_s']:.2f} | "
                         f"{r['applied_per_second']:.0f} | {_ms(received, 'p50')} |")
    spot = state.get("history_check", {})
    if spot:
        lines += ["", "History check (`GET /api/patients/" + patient_id(CHECKED_PATIENT) + f"?issuer={AUTHORITY}`): "
                  + "; ".join(f"{name} {c['found']} of {c['expected']} messages in the history"
                              for name, c in spot.items())]
    if state.get("skipped"):
        lines += ["", f"Skipped: {state['skipped']}"]
    return "\n".join(lines + log_section(state)) + "\n"


# --- the run ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    messages: int
    connections: tuple[int, ...]
    patients: int
    repeats: int
    warmup: int
    targets: tuple[str, ...]
    log_level: str


def measure(options: Options, work: Path, state_dir: Path, keep: bool, state: dict[str, Any],
            report: Callable[[], None]) -> None:
    targets: dict[str, GatewayTarget | Hapi] = {}
    hapi: Hapi | None = None
    runs: list[Run] = []
    with ExitStack() as stack:
        try:
            if "gateway-kafka" in options.targets:
                try:
                    targets["gateway-kafka"] = stack.enter_context(kafka_gateway(work, state_dir, keep,
                                                                                 options.log_level))
                except services.PortTaken as exc:
                    state["skipped"] = f"gateway-kafka: {exc}"
                    print(f"skipping gateway-kafka: {exc}", file=sys.stderr)
            if "gateway-embedded" in options.targets:
                targets["gateway-embedded"] = stack.enter_context(embedded_gateway(work, options.log_level))
            if "hapi" in options.targets:
                hapi = Hapi(work)
                stack.callback(hapi.stop)
                targets["hapi"] = hapi
            sent: Counter[str] = Counter()
            per_patient: dict[str, int] = Counter()
            tag = uuid.uuid4().hex[:6].upper()
            state["warmup"] = []
            for name, target in targets.items():
                for _ in range(HAPI_WARMUP_ROUNDS if name == "hapi" else 1):
                    if not options.warmup:
                        break
                    prefix = f"{tag}W{len(state['warmup']):02d}"
                    planned = plan(prefix, options.warmup, options.patients)
                    sent[name] += len(planned)
                    per_patient[name] += sum(1 for m in planned if m.patient == CHECKED_PATIENT)
                    warm = one_run(target, name, max(options.connections), 0, planned, prefix, sent[name])
                    state["warmup"].append({k: v for k, v in asdict(warm).items() if not k.endswith("_samples_ms")})
                    print(f"warm-up {name:16} x{warm.connections}: {warm.messages} in {warm.seconds:6.2f} s = "
                          f"{warm.per_second:6.0f}/s, {warm.codes}", flush=True)
            number = 0
            for repeat in range(1, options.repeats + 1):
                order = list(targets) if repeat % 2 else list(targets)[::-1]
                for connections in options.connections:
                    for name in order:
                        number += 1
                        prefix = f"{tag}{number:03d}"
                        planned = plan(prefix, options.messages, options.patients)
                        sent[name] += len(planned)
                        per_patient[name] += sum(1 for m in planned if m.patient == CHECKED_PATIENT)
                        run = one_run(targets[name], name, connections, repeat, planned, prefix, sent[name])
                        runs.append(run)
                        applied = (f", applied {run.applied} (ACK→applied p50 {_ms(run.ack_to_applied_ms, 'p50')} ms, "
                                   f"p95 {_ms(run.ack_to_applied_ms, 'p95')} ms, last {run.last_applied_s:.2f} s)"
                                   if name.startswith("gateway") else "")
                        disturbed = (f", {run.log_warnings} log warnings" if run.log_warnings else "") + (
                            f", restarted {run.restarted}" if run.restarted else "")
                        print(f"[{repeat}/{options.repeats}] {name:16} x{connections}: {run.messages} in "
                              f"{run.seconds:6.2f} s = {run.per_second:6.0f}/s, RTT p50 "
                              f"{_ms(run.round_trip_ms, 'p50')} ms, {run.codes}{applied}, "
                              f"CPU {run.cpu_ms_per_message:.2f} ms/msg{disturbed}", flush=True)
                        state["runs"] = [{k: v for k, v in asdict(r).items() if not k.endswith("_samples_ms")}
                                         | {"all_aa": r.all_aa} for r in runs]
                        state["samples"] = {f"{r.target} x{r.connections} r{r.repeat}": {
                            "round_trip_ms": r.round_trip_samples_ms, "ack_to_applied_ms": r.ack_to_applied_samples_ms}
                            for r in runs}
                        state["summary"] = summary(runs)
                        state["ratios"] = ratios(state["summary"])
                        report()
            state["history_check"] = {}
            for name, target in targets.items():
                if isinstance(target, GatewayTarget):
                    record = target.patient(CHECKED_PATIENT)
                    found = len([change for change in record.get("history", [])
                                 if str(change.get("message", "")).startswith(tag)])
                    state["history_check"][name] = {"expected": per_patient[name], "found": found}
                    state["acknowledgments"] = {**state.get("acknowledgments", {}), name: target.acknowledgments()}
            report()
        finally:
            stack.close()
            state["logs"] = {}
            for name, target in targets.items():
                log = target.gateway.log if isinstance(target, GatewayTarget) else target.log
                state["logs"][name] = log_summary(log)
    failed = [f"{r.target} x{r.connections} r{r.repeat}: {r.codes}, {r.mismatched} mismatched" for r in runs
              if not r.all_aa]
    unapplied = [f"{r.target} x{r.connections} r{r.repeat}: {r.applied}/{r.messages}" for r in runs
                 if r.target.startswith("gateway") and r.applied != r.messages]
    wrong_history = [f"{name}: {c['found']}/{c['expected']}" for name, c in state.get("history_check", {}).items()
                     if c["found"] != c["expected"]]
    if failed or unapplied or wrong_history:
        raise RuntimeError(f"not every message AA: {failed}; not applied: {unapplied}; history: {wrong_history}")



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_MESSAGES} messages per run, {QUICK_REPEATS} repeat(s)")
    parser.add_argument("--messages", type=int, default=0, help=f"messages per run (default {MESSAGES})")
    parser.add_argument("--connections", default=",".join(map(str, CONNECTIONS)),
                        help="connection counts, comma-separated (default 1,4)")
    parser.add_argument("--patients", type=int, default=PATIENTS, help=f"patients the messages update (default {PATIENTS})")
    parser.add_argument("--repeats", type=int, default=0, help=f"runs of each target and count (default {REPEATS})")
    parser.add_argument("--warmup", type=int, default=WARMUP,
                        help=f"untimed messages each target takes first (default {WARMUP})")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"some of {','.join(TARGETS)}")
    add_run_arguments(parser, "hl7")
    args = parser.parse_args()
    quick = args.quick
    targets = tuple(name for name in args.targets.split(",") if name)
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}")
    options = Options(args.messages or (QUICK_MESSAGES if quick else MESSAGES),
                      tuple(int(n) for n in args.connections.split(",") if n), args.patients,
                      args.repeats or (QUICK_REPEATS if quick else REPEATS), args.warmup, targets, args.log_level)
    keep = args.keep_services or args.services_state.resolve() != services.DEFAULT_STATE.resolve()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out / f"{stamp}-hl7{'-quick' if quick else ''}"
    out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.hl7 " + " ".join(sys.argv[1:])
    state: dict[str, Any] = {
        "options": asdict(options), "machine": machine(), "command": command,
        "header": (f"# HL7 v2 ADT over MLLP: gateway against HAPI HL7v2, {stamp}\n\n`{command}`\n\nMachine: {machine()}. "
                   f"{options.messages} ADT^A08 per run ({options.patients} patients, every MSH-10 new), connections "
                   f"{', '.join(map(str, options.connections))}, {options.repeats} repeat(s). Gateways: hl7, patient "
                   "and api roles in one process (AA = durable on the bus after the index pre-check); "
                   "gateway-kafka on Kafka and PostgreSQL (scripts/services), gateway-embedded on the embedded bus "
                   "and SQLite. HAPI: HAPI HL7v2 2.6 SimpleServer answering generateACK(), durable nowhere. Client: "
                   "one asyncio (uvloop) process, the same for all.")}

    reported(out, state, markdown,
             lambda report: measure(options, args.work, args.services_state, keep, state, report))


if __name__ == "__main__":
    main()
