"""The audit trail (IHE ATNA): what auditing costs ingest, end to end as a modality sees it, on against off.

    python -m benchmarks.audit [--quick] [--backends embedded,kafka] [--instances N] [--rounds 3]
        [--associations 4] [--warmup N] [--services-state DIR] [--keep-services]
        [--log-level DEBUG|INFO|WARNING] [--out DIR] [--work DIR]

**Targets.** Per backend a pair of gateways (``python -m gateway.cli run``, ``benchmarks.forward.Gateway``), each on
a data dir of its own, started together and kept for every round: ``on`` (``GATEWAY_AUDIT__ENABLED=true``, roles
receiver, store, api and audit, a real rsyslog over TLS as the audit record repository: ``tests.rsyslog``) and
``off`` (``GATEWAY_AUDIT__ENABLED=false``, roles receiver, store and api), nothing else different. With auditing
on, the store stage makes a DICOM Instances Transferred record durable on the audit topic before it commits a
batch, and the audit role, in the same process, sends every record to rsyslog and keeps it in the index's audit log.

- ``embedded``: the embedded bus (SQLite WAL, ``synchronous=FULL``), the SQLite index and filesystem objects.
- ``kafka``: Kafka, PostgreSQL and SeaweedFS from ``scripts/services`` (``benchmarks.services``,
  ``--services-state``, default ``$GATEWAY_SERVICES_STATE`` else ``/tmp/bench-services``; services it starts are
  stopped again only in ``/tmp/bench-services``), each gateway with a fresh database (dropped afterwards) and topics
  of its own. Consumer group names are fixed in the gateway, so both store roles are members of one group, each
  subscribed to its own topic.

**A run.** ``--instances`` (2000; ``--quick`` 600) CT instances (0.5 MB, ``benchmarks.datasets``) sent flat out by
``benchmarks.scu`` (``--associations`` 4 sharing one queue; fresh UIDs, a new study every hundred). Each gateway
first takes ``--warmup`` untimed instances. Rounds (``--rounds``, 5) alternate which gateway goes first (on, off;
off, on; ...): the two runs of a round are measured back to back, so what drifts on the shared machine falls on
both. *Timed*: from the sender's start until the store stage has indexed every instance (its
``dicomgw_instances_stored_total`` at ``/metrics``, polled every 50 ms; polling the API instead would itself be
audited, a Query per poll, in the ``on`` gateway only). After the clock the API must list every instance sent as
stored (``GET /api/studies/{uid}``), and for ``on`` the seconds until rsyslog has had every record (audit catch-up)
are noted. Reported: instances/s received (the sender's window) and stored (end to end), C-STORE p50/p95 at the
sender, CPU ms per instance of the gateway's process tree from the start of the run until it owed nothing (stored,
and for ``on`` the records delivered) and of rsyslog; the ratio on/off of each round and their median, against
a target of at most 10 % cost (stored/s on/off of at least 0.90).

``results.json`` and ``results.md`` go to ``benchmarks/results/<UTC time>-audit[-quick]/`` after each run; the
gateways' and rsyslog's logs stay in the work dir (``/tmp/dicom-gateway-bench/audit/``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import uvloop

from benchmarks import services
from benchmarks.datasets import dataset
from benchmarks.forward import GATEWAY_AE, Gateway, _get
from benchmarks.hl7 import _execute, log_section, log_summary
from benchmarks.iocm import code_version
from benchmarks.proc import cpu_and_rss
from benchmarks.report import add_run_arguments, reported
from benchmarks.run import machine, percentile
from tests.rsyslog import Rsyslog, make_pki

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("embedded", "kafka")
QUICK_BACKENDS = ("embedded",)
INSTANCES, QUICK_INSTANCES = 2000, 600
WARMUP, QUICK_WARMUP = 300, 100
ROUNDS = 5
ASSOCIATIONS = 4
FILES_ON_DISK = 400
"""As ``benchmarks.run``: the same generated CT files, cycled with fresh UIDs."""
CALLING_AE = "BENCHSCU"
POLL_SECONDS = 0.05
DRAIN_TIMEOUT = 600.0
"""Seconds the store stage, or the audit role, may take to catch up with a run."""
TARGET = 0.90
"""Stored/s on/off the issue asks for: auditing may cost at most 10 %."""
AUDIT = {True: "on", False: "off"}
ROLES = {True: ("receiver", "store", "api", "audit"), False: ("receiver", "store", "api")}


# --- the gateways ----------------------------------------------------------------------------------------------


@dataclass
class Node:
    """One gateway of the pair, its repository (``on`` only) and how many instances it was sent."""

    backend: str
    audit: bool
    gateway: Gateway
    repository: Rsyslog | None
    sent: int = 0

    @property
    def name(self) -> str:
        return f"{self.backend}/audit {AUDIT[self.audit]}"

    @property
    def pid(self) -> int:
        return self.gateway.process.pid

    def repository_pid(self) -> int | None:
        if self.repository is None:
            return None
        try:
            return int((self.repository.directory / "rsyslogd.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def metric(self, prefix: str) -> float:
        """The sum of a metric's samples."""
        return sum(value for key, value in self.gateway.metrics().items() if key.startswith(prefix))

    def through_store(self) -> float:
        """Instances the store stage has indexed (every event it published) or dead-lettered."""
        return sum(value for key, value in self.gateway.metrics().items()
                   if key.startswith("dicomgw_instances_stored_total{")
                   or (key.startswith("dicomgw_dead_letters_total{") and 'stage="store"' in key))

    def audit_backlog(self) -> float:
        """Records made durable on the audit topic that the repository has not taken yet (0 with auditing off)."""
        return self.metric("dicomgw_audit_records_total{") - self.metric("dicomgw_audit_records_delivered_total{")

    def wait(self, done: Callable[[], bool], what: str) -> float:
        """Poll until ``done``; the seconds it took."""
        started = time.perf_counter()
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while not done():
            if self.gateway.process.poll() is not None:
                raise RuntimeError(f"{self.name}: the gateway exited; see {self.gateway.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: {what} not within {DRAIN_TIMEOUT:.0f} s")
            time.sleep(POLL_SECONDS)
        return time.perf_counter() - started

    def drain(self) -> float:
        return self.wait(lambda: self.through_store() >= self.sent, "the store stage indexing everything")

    def check_stored(self, studies: Counter[str]) -> None:
        """The API lists every instance sent to each study as stored (read after the clock: it is audited)."""
        token = (self.gateway.data_dir / "api-token").read_text().strip()
        for study_uid, count in studies.items():
            body = _get(f"http://127.0.0.1:{self.gateway.http_port}/api/studies/{study_uid}", token)
            stored = sum(1 for series in body["series"] for instance in series["instances"]
                         if instance["status"] == "stored")
            if stored < count:
                raise RuntimeError(f"{self.name}: the API lists {stored} of the {count} instances sent to {study_uid}")

    def warnings(self) -> int:
        with self.gateway.log.open("rb") as log:
            return sum(1 for line in log if b'"WARNING"' in line[:200] or b'"ERROR"' in line[:200])


def start_node(backend: str, audit: bool, work: Path, env: dict[str, str], log_level: str) -> Node:
    directory = work / f"{backend}-audit-{AUDIT[audit]}"
    shutil.rmtree(directory, ignore_errors=True)
    (directory / "data").mkdir(parents=True)
    repository = None
    audit_env = {"GATEWAY_AUDIT__ENABLED": "false"}
    if audit:
        (directory / "rsyslog").mkdir()
        repository = Rsyslog(directory / "rsyslog", make_pki(work / "pki"))
        repository.start()
        audit_env = {"GATEWAY_AUDIT__ENABLED": "true",
                     "GATEWAY_AUDIT__REPOSITORY_URL": f"tls://127.0.0.1:{repository.tls_port}",
                     "GATEWAY_AUDIT__CA_FILE": str(repository.ca_file)}
    gateway = Gateway(directory / "data", directory / "gateway.log", list(ROLES[audit]),
                      {**env, **audit_env, "GATEWAY_LOG__LEVEL": log_level})
    node = Node(backend, audit, gateway, repository)
    try:
        gateway.wait_ready()
    except BaseException:
        stop_node(node)
        raise
    return node


def stop_node(node: Node) -> None:
    node.gateway.stop()
    if node.repository is not None:
        node.repository.stop()
    shutil.rmtree(node.gateway.data_dir, ignore_errors=True)


@contextmanager
def gateway_pair(backend: str, work: Path, log_level: str, state: Path, keep: bool) -> Iterator[dict[bool, Node]]:
    """The auditing and the not-auditing gateway; on Kafka each with a new database, dropped at the end, and
    topics named for it."""
    nodes: dict[bool, Node] = {}
    databases: list[str] = []
    with _services(backend, state, keep) as env:
        base_url = env.get("GATEWAY_DATABASE__URL", "")
        try:
            for audit in (True, False):
                node_env = dict(env)
                if backend == "kafka":
                    suffix = f"{uuid.uuid4().hex[:10]}_{AUDIT[audit]}"
                    database = f"bench_audit_{suffix}"
                    uvloop.run(_execute(base_url, f'CREATE DATABASE "{database}"'))
                    databases.append(database)
                    node_env |= {"GATEWAY_DATABASE__URL": f"{base_url.rsplit('/', 1)[0]}/{database}", **{
                        f"GATEWAY_TOPICS__{topic.upper().replace('-', '_')}": f"bench-audit-{topic}-{suffix}"
                        for topic in ("instances", "events", "dead-letter", "hl7", "audit")}}
                nodes[audit] = start_node(backend, audit, work, node_env, log_level)
            yield nodes
        finally:
            for node in nodes.values():
                stop_node(node)
            for database in databases:
                try:
                    uvloop.run(_execute(base_url, f'DROP DATABASE IF EXISTS "{database}"'))
                except (OSError, asyncpg.PostgresError) as exc:
                    print(f"dropping {database}: {exc}", file=sys.stderr)


@contextmanager
def _services(backend: str, state: Path, keep: bool) -> Iterator[dict[str, str]]:
    if backend == "embedded":
        yield {}
        return
    with services.running(["kafka", "s3", "postgres"], state, keep=keep) as env:
        yield env


# --- a run -----------------------------------------------------------------------------------------------------


@dataclass
class Run:
    backend: str
    audit: bool
    round: int
    instances: int
    megabytes: float
    send_s: float
    """The sender's start to its last C-STORE-RSP (Success: durable on the bus)."""
    stored_s: float
    """The sender's start until the store stage had indexed every instance."""
    latency_ms: dict[str, float]
    cpu_ms_per_instance: float
    """The gateway's process tree, from the start until it owed nothing for the run (stored; records delivered)."""
    repository_cpu_ms_per_instance: float
    idle_cpu_ms_per_instance: float
    """The other gateway (not loaded) over the same span."""
    catch_up_s: float
    """After the last instance was indexed, until the repository had every record (``on``)."""
    sender_cpu_s: float
    log_warnings: int

    @property
    def received_per_second(self) -> float:
        return self.instances / self.send_s

    @property
    def stored_per_second(self) -> float:
        return self.instances / self.stored_s


def send(node: Node, files: Path, count: int, associations: int, out: Path) -> dict[str, Any]:
    """``count`` instances with fresh UIDs by ``benchmarks.scu``; raises unless every one got Success."""
    argv = [sys.executable, "-m", "benchmarks.scu", "--port", str(node.gateway.dicom_port), "--aec", GATEWAY_AE,
            "--calling-ae", CALLING_AE, "--concurrency", str(associations), "--files", str(files), "--count",
            str(count), "--unique", "--record", "--out", str(out)]
    subprocess.run(argv, check=True, timeout=3600, cwd=ROOT)
    result: dict[str, Any] = json.loads(out.read_text())
    node.sent += result["statuses"].get("0x0000", 0)
    failed = {status: n for status, n in result["statuses"].items() if status != "0x0000"}
    if result["errors"] or failed or result["instances"] != count:
        raise RuntimeError(f"{node.name}: {result['instances']} of {count} sent, {result['errors'][:1]} "
                           f"statuses {failed}")
    return result


def one_run(node: Node, other: Node, round_: int, files: Path, count: int, associations: int, work: Path) -> Run:
    pids = {"gateway": node.pid, "idle": other.pid}
    if (repository := node.repository_pid()) is not None:
        pids["repository"] = repository
    warned = node.warnings()
    before = {key: cpu_and_rss(pid)[0] for key, pid in pids.items()}
    started = time.perf_counter()
    result = send(node, files, count, associations, work / "sender.json")
    node.drain()
    stored = time.perf_counter() - started
    catch_up = node.wait(lambda: node.audit_backlog() <= 0, "the repository getting every record")
    spent = {key: (cpu_and_rss(pid)[0] - before[key]) * 1000 / count for key, pid in pids.items()}
    node.check_stored(Counter(study for _, study, _ in result["stored"]))
    return Run(node.backend, node.audit, round_, result["instances"], result["bytes"] / 1e6, result["elapsed"],
               stored, {"p50": percentile(result["latency_ms"], 0.50), "p95": percentile(result["latency_ms"], 0.95)},
               spent["gateway"], spent.get("repository", 0.0), spent["idle"], catch_up, result["cpu_seconds"],
               node.warnings() - warned)


# --- figures ---------------------------------------------------------------------------------------------------


def summary(runs: list[Run]) -> list[dict[str, Any]]:
    rows = []
    for backend, audit in dict.fromkeys((r.backend, r.audit) for r in runs):
        mine = [r for r in runs if (r.backend, r.audit) == (backend, audit)]
        rows.append({
            "backend": backend, "audit": AUDIT[audit], "runs": len(mine),
            "stored_per_second": statistics.median(r.stored_per_second for r in mine),
            "stored_min": min(r.stored_per_second for r in mine), "stored_max": max(r.stored_per_second for r in mine),
            "received_per_second": statistics.median(r.received_per_second for r in mine),
            "p50_ms": statistics.median(r.latency_ms["p50"] for r in mine),
            "p95_ms": statistics.median(r.latency_ms["p95"] for r in mine),
            "cpu_ms_per_instance": statistics.median(r.cpu_ms_per_instance for r in mine),
            "repository_cpu_ms_per_instance": statistics.median(r.repository_cpu_ms_per_instance for r in mine),
            "catch_up_s": statistics.median(r.catch_up_s for r in mine),
            "log_warnings": sum(r.log_warnings for r in mine)})
    return rows


def rounds(runs: list[Run]) -> list[dict[str, Any]]:
    """On/off of each round (its two runs back to back)."""
    by_key = {(r.backend, r.round, r.audit): r for r in runs}
    return [{"backend": backend, "round": round_,
             "stored": on.stored_per_second / off.stored_per_second,
             "received": on.received_per_second / off.received_per_second,
             "p50_ms": on.latency_ms["p50"] / off.latency_ms["p50"],
             "cpu": on.cpu_ms_per_instance / off.cpu_ms_per_instance}
            for (backend, round_, audit), on in by_key.items()
            if audit and (off := by_key.get((backend, round_, False))) is not None]


def verdicts(paired: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per backend the median of the rounds' ratios, and whether auditing stayed within the target."""
    out = []
    for backend in dict.fromkeys(r["backend"] for r in paired):
        mine = [r for r in paired if r["backend"] == backend]
        stored = statistics.median(r["stored"] for r in mine)
        out.append({"backend": backend, "rounds": len(mine), "stored": stored,
                    "received": statistics.median(r["received"] for r in mine),
                    "p50_ms": statistics.median(r["p50_ms"] for r in mine),
                    "cpu": statistics.median(r["cpu"] for r in mine), "within_target": stored >= TARGET})
    return out


def markdown(state: dict[str, Any]) -> str:
    lines = [state["header"], ""]
    runs = state.get("runs", [])
    if runs:
        lines += ["## Runs", "",
                  "Received/s: the sender's window (Success = durable on the bus). Stored/s: the sender's start until "
                  "the store stage had indexed every instance. CPU: the gateway's process tree per instance until it "
                  "owed nothing for the run; rsyslog's; the idle gateway's. Catch-up: after the last instance was "
                  "indexed, until rsyslog had every record.", "",
                  "| backend | round | audit | instances | received/s | stored/s | C-STORE p50 ms | p95 ms | "
                  "gateway CPU ms/inst | rsyslog CPU ms/inst | idle gateway CPU ms/inst | catch-up s | log warnings |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in runs:
            lines.append(f"| {r['backend']} | {r['round']} | {AUDIT[r['audit']]} | {r['instances']} | "
                         f"{r['instances'] / r['send_s']:.0f} | {r['instances'] / r['stored_s']:.0f} | "
                         f"{r['latency_ms']['p50']:.1f} | {r['latency_ms']['p95']:.1f} | "
                         f"{r['cpu_ms_per_instance']:.2f} | {r['repository_cpu_ms_per_instance']:.3f} | "
                         f"{r['idle_cpu_ms_per_instance']:.3f} | {r['catch_up_s']:.2f} | {r['log_warnings']} |")
    rows = state.get("summary", [])
    if rows:
        lines += ["", "## Medians", "",
                  "| backend | audit | runs | stored/s | min–max | received/s | C-STORE p50 ms | p95 ms | "
                  "gateway CPU ms/inst | rsyslog CPU ms/inst | catch-up s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['backend']} | {r['audit']} | {r['runs']} | {r['stored_per_second']:.0f} | "
                  f"{r['stored_min']:.0f}–{r['stored_max']:.0f} | {r['received_per_second']:.0f} | {r['p50_ms']:.1f} | "
                  f"{r['p95_ms']:.1f} | {r['cpu_ms_per_instance']:.2f} | {r['repository_cpu_ms_per_instance']:.3f} | "
                  f"{r['catch_up_s']:.2f} |" for r in rows]
    paired = state.get("rounds", [])
    if paired:
        lines += ["", "## On / off by round", "",
                  "Below 1 for stored/s and received/s: auditing costs throughput; above 1 for latency and CPU.", "",
                  "| backend | round | stored/s | received/s | C-STORE p50 | gateway CPU/inst |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['backend']} | {r['round']} | {r['stored']:.3f} | {r['received']:.3f} | {r['p50_ms']:.3f} | "
                  f"{r['cpu']:.3f} |" for r in paired]
        lines += ["", "| backend | rounds | stored/s on/off (median) | received/s | C-STORE p50 | gateway CPU/inst | "
                  f"cost within {100 - TARGET * 100:.0f} % |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {v['backend']} | {v['rounds']} | **{v['stored']:.3f}** | {v['received']:.3f} | {v['p50_ms']:.3f} | "
                  f"{v['cpu']:.3f} | {'yes' if v['within_target'] else '**no**'} |" for v in state.get("verdicts", [])]
    if state.get("repositories"):
        lines += ["", ("Audit records made by the `on` gateway / messages rsyslog received (a study's receipts gathered "
                  "together go as one): ") + "; ".join(
            f"{name}: {found['records']:.0f} / {found['received']}" for name, found in state["repositories"].items())]
    if state.get("skipped"):
        lines += ["", f"Skipped: {state['skipped']}"]
    return "\n".join(lines + log_section(state)) + "\n"


# --- the run ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    backends: tuple[str, ...]
    instances: int
    rounds: int
    associations: int
    warmup: int
    log_level: str
    keep_services: bool


def measure(options: Options, work: Path, state_dir: Path, state: dict[str, Any], report: Callable[[], None]) -> None:
    """Per backend the pair of gateways, a warm-up each, then the rounds; stopped before the next backend."""
    listing = work / "ct.files"
    listing.write_text("\n".join(map(str, dataset("ct", FILES_ON_DISK, work.parent / "data"))))
    runs: list[Run] = []
    state["logs"] = {}
    for backend in options.backends:
        nodes: dict[bool, Node] = {}
        try:
            with gateway_pair(backend, work, options.log_level, state_dir, options.keep_services) as nodes:
                for node in nodes.values():
                    if options.warmup:
                        send(node, listing, options.warmup, options.associations, work / "warmup.json")
                    print(f"warm-up {node.name}: {options.warmup} instances, indexed {node.drain():.1f} s after",
                          flush=True)
                for round_ in range(1, options.rounds + 1):
                    for audit in ((True, False) if round_ % 2 else (False, True)):
                        run = one_run(nodes[audit], nodes[not audit], round_, listing, options.instances,
                                      options.associations, work)
                        runs.append(run)
                        print(f"[{round_}/{options.rounds}] {backend:8} audit {AUDIT[audit]:3}: {run.instances} in "
                              f"{run.stored_s:6.2f} s = {run.stored_per_second:5.0f} stored/s ({run.received_per_second:5.0f}"
                              f" received/s), C-STORE p50 {run.latency_ms['p50']:.1f} ms p95 {run.latency_ms['p95']:.1f}"
                              f" ms, CPU {run.cpu_ms_per_instance:.2f} ms/inst, catch-up {run.catch_up_s:.2f} s",
                              flush=True)
                        state["runs"] = [asdict(r) for r in runs]
                        state["summary"] = summary(runs)
                        state["rounds"] = rounds(runs)
                        state["verdicts"] = verdicts(state["rounds"])
                        report()
                on = nodes[True]
                assert on.repository is not None
                state.setdefault("repositories", {})[on.name] = {
                    "records": on.metric("dicomgw_audit_records_total{"), "received": len(on.repository.received())}
        except services.PortTaken as exc:
            state["skipped"] = f"{backend}: {exc}"
            print(f"skipping {backend}: {exc}", file=sys.stderr)
        finally:
            for node in nodes.values():
                state["logs"][node.name] = log_summary(node.gateway.log)
            report()



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_INSTANCES} instances per run, {QUICK_WARMUP} warm-up, backends "
                             f"{','.join(QUICK_BACKENDS)} unless --backends says otherwise")
    parser.add_argument("--backends", default="", help=f"some of {','.join(BACKENDS)} (default all)")
    parser.add_argument("--instances", type=int, default=0, help=f"CT instances per run (default {INSTANCES})")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="rounds of an on and an off run")
    parser.add_argument("--associations", type=int, default=ASSOCIATIONS)
    parser.add_argument("--warmup", type=int, default=-1, help=f"untimed instances per gateway first (default {WARMUP})")
    add_run_arguments(parser, "audit")
    args = parser.parse_args()
    quick = args.quick
    backends = tuple(name for name in args.backends.split(",") if name) or (QUICK_BACKENDS if quick else BACKENDS)
    if set(backends) - set(BACKENDS):
        parser.error(f"unknown backends: {sorted(set(backends) - set(BACKENDS))}")
    options = Options(backends, args.instances or (QUICK_INSTANCES if quick else INSTANCES), args.rounds,
                      args.associations, args.warmup if args.warmup >= 0 else (QUICK_WARMUP if quick else WARMUP),
                      args.log_level,
                      args.keep_services or args.services_state.resolve() != services.DEFAULT_STATE.resolve())
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out / f"{stamp}-audit{'-quick' if quick else ''}"
    out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.audit " + " ".join(sys.argv[1:])
    code = code_version()
    state: dict[str, Any] = {
        "options": asdict(options), "machine": machine(), "command": command, "code": code,
        "header": (f"# The audit trail (IHE ATNA): ingest with auditing on and off, {stamp}\n\n`{command}`\n\n"
                   f"Machine: {machine()}. Gateways: a pair per backend, `GATEWAY_AUDIT__ENABLED` true (on: roles "
                   "receiver, store, api, audit; rsyslog over TLS as the repository) or false (off: receiver, store, "
                   "api); embedded = embedded bus + SQLite + filesystem objects, kafka = Kafka + PostgreSQL + "
                   f"SeaweedFS (scripts/services). {options.instances} CT instances (0.5 MB) per run, fresh UIDs, "
                   f"{options.associations} associations (benchmarks.scu), {options.rounds} round(s) of on and off "
                   f"back to back, alternating which goes first; {options.warmup} untimed instances per gateway first. "
                   f"Code: commit {code['commit']}, {len(code['modified'])} files of gateway/ and workers/ changed "
                   "since (`code` in results.json).")}

    reported(out, state, markdown, lambda report: measure(options, args.work, args.services_state, state, report),
             finish=lambda: state.update(code_after=code_version()))


if __name__ == "__main__":
    main()
