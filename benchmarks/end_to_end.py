"""End to end: from C-STORE Success to stored in S3 and indexed, and from N-ACTION to N-EVENT-REPORT.

    python -m benchmarks.end_to_end [--seconds 90] [--rate 40] [--concurrency 4] [--dataset ct]
        [--verification hash|size|index] [--profiler py-spy] [--log-level WARNING] [--out DIR]

The gateway runs as ``dicom-gateway run`` (every role, one process) on real Kafka, SeaweedFS (S3) and
PostgreSQL from ``scripts/services`` (our own state dir). The sender offers a fixed rate (open loop) for a
fixed time, every instance with fresh UIDs, and asks for storage commitment of every ``--commit-every``
instances an association sends; a pynetdicom AE listening as the requester's SCU of Storage Commitment (it
accepts the gateway's SCP role proposal) records when each N-EVENT-REPORT arrives.

Stored and indexed: ``instances.stored_at``, which the store worker sets after the object is complete in S3
and just before the index transaction, read from PostgreSQL once everything has drained (no polling of
the API while the load runs; the wait polls only the store counter on /metrics). Latency is that minus the
wall-clock time the sender saw Success. Same host, same clock. CPU-seconds are counted per process tree:
the gateway, Kafka, SeaweedFS and PostgreSQL. ``--profiler py-spy`` samples the gateway meanwhile and
splits its CPU by stage.

A transaction answered Success whose report has not arrived when the wait ends is named with its state from
the gateway's API (``GET /api/commitments/{uid}``, asked before the gateway stops): never recorded, waiting
for instances (which), or decided with its report pending, failed or delivered (attempts, last error).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import asyncpg
from pynetdicom import AE, evt
from pynetdicom.events import Event

from benchmarks import services
from benchmarks.datasets import INSTITUTION, KANTA_PROFILE, dataset
from benchmarks.proc import cpu_and_rss, tree
from benchmarks.targets import free_port

STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
REQUESTER_AE = "BENCHSCU"
ORGANIZATION_OID = "1.2.246.10.12345678"
UNCOMPRESSED = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"]


@dataclass(frozen=True)
class Options:
    seconds: float = 90.0
    rate: float = 40.0
    """Instances/s offered: below what the store pool sustains, or latency only measures a growing queue.
    0: flat out, to find the capacity and the stage that limits it."""
    concurrency: int = 4
    dataset: str = "ct"
    commit_every: int = 50
    verification: str = "hash"
    drain_seconds: float = 180.0
    profiler: str = ""
    backends: str = "real"
    """real: Kafka, SeaweedFS and PostgreSQL from scripts/services; embedded: the gateway's embedded bus,
    filesystem objects and SQLite index (the single-workstation deployment)."""
    log_level: str = "WARNING"
    """The gateway's (its log is in the work dir): INFO names each transaction decided and report delivered."""
    settings: tuple[tuple[str, str], ...] = ()
    """GATEWAY_* variables given to the gateway over the benchmark's own: one change measured against another."""


class CommitmentListener:
    """The requester's other half: accepts the gateway's association and records each report's arrival."""

    def __init__(self) -> None:
        self.port = free_port()
        self.reports: dict[str, tuple[float, int]] = {}
        """Transaction UID -> (wall time received, Event Type ID)."""
        self.failure_reasons: Counter[str] = Counter()
        """Failure Reason of every reference reported failed."""
        self._ae = AE(ae_title=REQUESTER_AE)
        self._ae.maximum_associations = 1024  # the gateway opens an association per report, all at once
        self._ae.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL, UNCOMPRESSED, scu_role=True, scp_role=True)
        self._server: Any = None

    def _on_report(self, event: Event) -> tuple[int, None]:
        received = time.time()
        information = event.event_information
        self.reports[str(information.get("TransactionUID", ""))] = (received, int(event.request.EventTypeID or 0))
        for item in information.get("FailedSOPSequence") or []:
            self.failure_reasons[f"0x{int(item.get('FailureReason', 0)):04X}"] += 1
        return 0x0000, None

    def __enter__(self) -> CommitmentListener:
        self._server = self._ae.start_server(("127.0.0.1", self.port), block=False,
                                             evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)])
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()


class Gateway:
    """``dicom-gateway run`` as a process, ready when /readyz answers 200."""

    def __init__(self, env: dict[str, str], work: Path, roles: list[str], profiler: str) -> None:
        self.dicom_port, self.http_port = free_port(), free_port()
        self.data_dir = work / f"data-{self.http_port}"
        self.log = work / f"gateway-{self.http_port}.log"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")} | env | {
            "GATEWAY_DICOM__PORT": str(self.dicom_port), "GATEWAY_DICOM__HOST": "127.0.0.1",
            "GATEWAY_HTTP__PORT": str(self.http_port), "GATEWAY_HTTP__HOST": "127.0.0.1",
            "GATEWAY_DATA_DIR": str(self.data_dir),
            "GATEWAY_SECRETS_DIR": str(work / "no-secrets")}
        argv = [sys.executable, "-m", "gateway.cli", "run", *(arg for role in roles for arg in ("--role", role))]
        self.profile = work / f"py-spy-{self.http_port}.txt"
        self.profiled = profiler == "py-spy"
        if self.profiled:
            argv = [str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw", "--rate", "50",
                    "--gil", "--nonblocking", "-o", str(self.profile), "--", *argv]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(argv, env=environment, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def ready(self, timeout: float = 90) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.2)
        return False

    @property
    def pid(self) -> int:
        """The gateway's own process, not py-spy's when it runs under it."""
        return tree(self.process.pid)[1] if self.profiled else self.process.pid

    def processed(self) -> float:
        """Instances through the store stage: stored, quarantined, duplicate, rejected or dead-lettered."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith(("dicomgw_instances_stored_total{", "dicomgw_dead_letters_total{")))

    def stop(self) -> None:
        if self.process.poll() is None:
            # py-spy writes its samples on SIGINT; the gateway drains on either
            os.killpg(self.process.pid, signal.SIGINT if self.profiled else signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def gateway_env(base: dict[str, str], work: Path, listener_port: int, verification: str,
                log_level: str = "WARNING") -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    profile = work / "fi-kanta-bench.yaml"
    profile.write_text(KANTA_PROFILE)
    return base | {
        "GATEWAY_TOPICS__INSTANCES": f"e2e-{suffix}", "GATEWAY_TOPICS__EVENTS": f"e2e-ev-{suffix}",
        "GATEWAY_TOPICS__DEAD_LETTER": f"e2e-dl-{suffix}", "GATEWAY_TOPICS__AUDIT": f"e2e-audit-{suffix}",
        "GATEWAY_KAFKA__PARTITIONS": "12",
        "GATEWAY_LOG__LEVEL": log_level,
        "GATEWAY_VALIDATION__DEFAULT_PROFILE": "fi-kanta", "GATEWAY_VALIDATION__TEST_ENVIRONMENT": "true",
        "GATEWAY_VALIDATION__PROFILE_FILES": json.dumps([str(profile)]),
        "GATEWAY_DICOM__ALLOWED_AES": json.dumps([{"ae_title": REQUESTER_AE, "organization": INSTITUTION,
                                                   "organization_oid": ORGANIZATION_OID}]),
        "GATEWAY_DICOM__REMOTE_AES": json.dumps([{"ae_title": REQUESTER_AE, "host": "127.0.0.1",
                                                  "port": listener_port, "tls": False}]),
        "GATEWAY_NOTIFY__COMMITMENT_VERIFICATION": verification,
    }


def start_gateway(env: dict[str, str], work: Path, profiler: str) -> Gateway:
    """Every role, as ``dicom-gateway run`` runs them."""
    gateway = Gateway(env, work, [], profiler)
    if not gateway.ready():
        gateway.stop()
        raise RuntimeError(f"the gateway did not start; see {gateway.log}")
    return gateway


def cpu(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_and_rss(pid)[0] for name, pid in pids.items()}


@contextmanager
def backends(kind: str, state: Path) -> Iterator[tuple[dict[str, str], dict[str, int]]]:
    """The gateway's environment for the backends, and the process ids of the services to account CPU to."""
    if kind == "embedded":
        yield {}, {}
        return
    with services.running(["kafka", "s3", "postgres"], state) as env:
        yield env, {name: found[0] for name, found in services.pids(state).items()}


def stored_at(env: dict[str, str], data_dir: Path, uids: list[str]) -> dict[str, tuple[float, str]]:
    """When each instance was stored, and its status, from the index: one query once the load has drained."""
    if "GATEWAY_DATABASE__URL" in env:
        return asyncio.run(_stored_at_postgres(env["GATEWAY_DATABASE__URL"], uids))
    with closing(sqlite3.connect(data_dir / "index.sqlite3")) as connection:
        rows = connection.execute("SELECT sop_instance_uid, stored_at, status FROM instances "
                                  "WHERE is_current").fetchall()
    wanted = set(uids)
    return {uid: (datetime.fromisoformat(at).timestamp(), status) for uid, at, status in rows if uid in wanted}


async def _stored_at_postgres(url: str, uids: list[str]) -> dict[str, tuple[float, str]]:
    connection = await asyncpg.connect(url)
    try:
        rows = await connection.fetch("SELECT sop_instance_uid, stored_at, status FROM instances "
                                      "WHERE sop_instance_uid = ANY($1::text[]) AND is_current", uids)
    finally:
        await connection.close()
    return {row["sop_instance_uid"]: (row["stored_at"].timestamp(), row["status"]) for row in rows}


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    return {"p50_ms": ordered[len(ordered) // 2] * 1000, "p99_ms": ordered[min(len(ordered) - 1,
            int(0.99 * len(ordered)))] * 1000, "max_ms": ordered[-1] * 1000, "mean_ms": statistics.fmean(ordered) * 1000}


def measure(options: Options, work: Path, state: Path, out: Path) -> dict[str, Any]:
    """Run the end-to-end measurement and return its figures (also written to ``out/end-to-end.json``)."""
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    files = dataset(options.dataset, 200, work.parent / "data")
    listing = work / "files"
    listing.write_text("\n".join(map(str, files)))
    print(f"end to end: {options.seconds:.0f} s at {options.rate or 'unlimited'} {options.dataset} instances/s, "
          f"{options.concurrency} associations, commitment verification {options.verification}", flush=True)
    with backends(options.backends, state) as (base, service_pids), CommitmentListener() as listener:
        gateway = start_gateway(gateway_env(base, work, listener.port, options.verification, options.log_level)
                                | dict(options.settings), work, options.profiler)
        try:
            pids = service_pids | {"gateway": gateway.pid}
            before, processed_before = cpu(pids), gateway.processed()
            result_file = work / "sender.json"
            subprocess.run([
                sys.executable, "-m", "benchmarks.scu", "--port", str(gateway.dicom_port), "--aec", "DICOMGW",
                "--calling-ae", REQUESTER_AE, "--concurrency", str(options.concurrency), "--files", str(listing),
                "--rate", str(options.rate), "--duration", str(options.seconds), "--unique", "--record",
                "--commit-every", str(options.commit_every), "--out", str(result_file)],
                check=True)
            sent = json.loads(result_file.read_text())
            acknowledged = sent["stored"]
            # Our own transactions only: the sweep also reports those an earlier run left in the same index,
            # to the same AE title, and counting those ended the wait before ours were in.
            awaited = [uid for uid, _, status, _ in sent["commitments"] if status == 0]
            waited = time.monotonic()
            while gateway.processed() - processed_before < len(acknowledged) or not all(
                    uid in listener.reports for uid in awaited):
                if time.monotonic() - waited > options.drain_seconds:
                    break
                time.sleep(0.5)
            drained = time.monotonic() - waited
            after = cpu(pids)
            unreported = unreported_transactions(gateway, sent["commitments"], listener.reports)
        finally:
            gateway.stop()
        times = stored_at(base, gateway.data_dir, [row[0] for row in acknowledged])
    figures = summarise(options, sent, acknowledged, times, listener.reports, drained,
                        {name: after[name] - before[name] for name in pids})
    figures["commitment"]["failure_reasons"] = dict(listener.failure_reasons)
    figures["commitment"]["unreported"] = unreported
    figures["gateway_log"] = str(gateway.log)
    if options.profiler == "py-spy" and gateway.profile.exists():
        figures["profile"] = profile_summary(gateway.profile)
    (out / "end-to-end.json").write_text(json.dumps(figures, indent=2))
    plot(sent, acknowledged, times, out)
    return figures


def unreported_transactions(gateway: Gateway, transactions: list[list[Any]],
                            reports: dict[str, tuple[float, int]]) -> list[dict[str, Any]]:
    """Each transaction answered Success whose report has not arrived, with its state in the gateway's index."""
    found = []
    for uid, requested_at, status, _ in transactions:
        if status != 0 or uid in reports:
            continue
        entry: dict[str, Any] = {"transaction_uid": uid,
                                 "requested_at": datetime.fromtimestamp(requested_at).isoformat()}
        try:
            request = urllib.request.Request(
                f"http://127.0.0.1:{gateway.http_port}/api/commitments/{uid}",
                headers={"Authorization": f"Bearer {(gateway.data_dir / 'api-token').read_text().strip()}"})
            with urllib.request.urlopen(request, timeout=10) as response:
                state = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            entry["state"] = ("not recorded by the notify role" if exc.code == 404
                              else f"API: HTTP {exc.code} {exc.read()[:200]!r}")
        except OSError as exc:
            entry["state"] = f"API unreachable: {exc}"
        else:
            outcomes = Counter(item["outcome"] for item in state["instances"])
            report = state["report"]
            entry |= {
                "state": ("waiting" if state["decided_at"] is None
                          else f"decided, report {report['state'] if report else 'missing'}"),
                "decided_at": state["decided_at"], "deadline": state["deadline"], "outcomes": dict(outcomes),
                "waiting_for": [item["sop_instance_uid"] for item in state["instances"]
                                if item["outcome"] == "waiting"][:3],
                "report": report}
        found.append(entry)
    return found


def summarise(options: Options, sent: dict[str, Any], acknowledged: list[list[Any]],
              times: dict[str, tuple[float, str]],
              reports: dict[str, tuple[float, int]], drained: float,
              cpu_seconds: dict[str, float]) -> dict[str, Any]:
    e2e = [times[sop][0] - success for sop, _, success in acknowledged if sop in times]
    gigabytes = sent["bytes"] / 1e9
    figures: dict[str, Any] = {
        "options": asdict(options), "offered_per_s": options.rate, "sent": sent["instances"],
        "statuses": sent["statuses"], "errors": sent["errors"],
        "ingest_per_s": sent["instances"] / sent["elapsed"], "ingest_mb_per_s": sent["bytes"] / 1e6 / sent["elapsed"],
        "c_store": _ms([ms / 1000 for ms in sent["latency_ms"]]),
        "stored_and_indexed": len(e2e), "not_stored_after_drain": len(acknowledged) - len(e2e),
        "index_status": dict(Counter(status for _, status in times.values())),
        "stored_per_s": len(times) / (max(at for at, _ in times.values()) - sent["started_wall"]) if times else 0.0,
        "drain_seconds": drained, "stored_to_indexed": _ms(e2e),
        "cpu_seconds": cpu_seconds, "cpu_seconds_per_gb": {k: v / gigabytes for k, v in cpu_seconds.items()},
    }
    transactions = sent["commitments"]
    delays = [reports[uid][0] - at for uid, at, status, _ in transactions if status == 0 and uid in reports]
    figures["commitment"] = {
        "verification": options.verification, "requested": len(transactions),
        "references_each": options.commit_every, "reported": len(delays),
        "all_committed": sum(1 for uid, *_ in transactions if reports.get(uid, (0, 0))[1] == 1),
        "action_statuses": dict(Counter(f"0x{status:04X}" for _, _, status, _ in transactions)),
        **_ms(delays)}
    return figures


COMPONENTS = (
    ("receiver (upper layer, DIMSE, publish)", ("gateway/ingest/", "gateway/listen.py", "gateway/dicom/association.py",
                                                "gateway/dicom/acse.py", "gateway/dicom/dimse.py",
                                                "gateway/dicom/service.py", "gateway/dicom/header.py")),
    ("notify (commitment, deliveries)", ("workers/commitment.py", "workers/notify.py", "workers/deliver.py",
                                         "workers/availability.py", "gateway/dicom/scu.py")),
    ("bus client (produce, consume)", ("gateway/bus/",)),
    ("object store client", ("gateway/objects/",)),
    ("index client", ("gateway/index/",)),
    ("store worker (reassembly, validation, decisions)", ("workers/",)),
    ("api / http", ("gateway/api.py", "gateway/http.py")),
)
"""Component of a sample: that of the innermost project frame (library frames count to their caller)."""


def profile_summary(path: Path) -> dict[str, Any]:
    """py-spy's raw samples of threads holding the GIL: CPU share by component and library, and the leaf
    functions that take most samples."""
    stages: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        samples = int(count)
        stage = next((name for frame in reversed(frames) for name, files in COMPONENTS
                      if any(f in frame for f in files)), "event loop and runtime (no project frame)")
        stages[stage] += samples
        leaves[frames[-1]] += samples
        library = next((part for frame in reversed(frames) for part in ("aiokafka", "confluent_kafka", "minio",
                        "urllib3", "asyncpg", "pydicom", "hashlib", "ssl", "uvloop", "asyncio", "orjson")
                        if part in frame), "")
        libraries[library or "own code / builtins"] += samples
    total = sum(stages.values()) or 1
    return {"samples": total,
            "components": {k: round(100 * v / total, 1) for k, v in stages.most_common()},
            "libraries": {k: round(100 * v / total, 1) for k, v in libraries.most_common(10)},
            "top_leaf_functions": [(k, round(100 * v / total, 1)) for k, v in leaves.most_common(15)]}


def plot(sent: dict[str, Any], acknowledged: list[list[Any]], times: dict[str, tuple[float, str]],
         out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    start = sent["started_wall"]
    points = [(success - start, (times[sop][0] - success) * 1000) for sop, _, success in acknowledged
              if sop in times]
    figure, axis = plt.subplots(figsize=(8, 4))
    axis.scatter([p[0] for p in points], [p[1] for p in points], s=2)
    axis.set(xlabel="seconds into the run (C-STORE Success)", ylabel="Success → stored and indexed, ms",
             yscale="log", title="end to end, per instance")
    figure.tight_layout()
    figure.savefig(out / "end-to-end.png", dpi=100)
    plt.close(figure)


def markdown(figures: dict[str, Any]) -> str:
    if not figures:
        return ""
    if "skipped" in figures:
        return f"## End to end\n\nSkipped: {figures['skipped']}\n"
    options = figures["options"]
    c_store, e2e = figures["c_store"], figures["stored_to_indexed"]
    backend = ("real Kafka, SeaweedFS S3, PostgreSQL" if options["backends"] == "real"
               else "embedded bus, filesystem objects, SQLite index")
    lines = [
        f"## End to end ({backend}; `dicom-gateway run`, every role in one process)", "",
        f"{options['seconds']:.0f} s of {options['dataset']} at {options['rate'] or 'unlimited'} instances/s offered over "
        f"{options['concurrency']} associations; sent {figures['sent']} "
        f"({figures['ingest_per_s']:.1f} instances/s, {figures['ingest_mb_per_s']:.1f} MB/s), statuses "
        f"{figures['statuses']}.", "",
        "| figure | p50 ms | p99 ms | max ms |", "|---|---|---|---|",
        f"| C-STORE (sender) | {c_store.get('p50_ms', 0):.1f} | {c_store.get('p99_ms', 0):.1f} | "
        f"{c_store.get('max_ms', 0):.1f} |",
        f"| Success → stored and indexed | {e2e.get('p50_ms', 0):.0f} | {e2e.get('p99_ms', 0):.0f} | "
        f"{e2e.get('max_ms', 0):.0f} |",
    ]
    commitment = figures["commitment"]
    lines.append(f"| N-ACTION Success → N-EVENT-REPORT received ({commitment['verification']}, "
                 f"{commitment['references_each']} references) | {commitment.get('p50_ms', 0):.0f} | "
                 f"{commitment.get('p99_ms', 0):.0f} | {commitment.get('max_ms', 0):.0f} |")
    if "note" in figures:
        lines += ["", f"Note: {figures['note']}."]
    lines += ["", f"Stored and indexed: {figures['stored_and_indexed']} of {figures['sent']} "
              f"({figures['index_status']}), {figures['not_stored_after_drain']} missing after waiting "
              f"{figures['drain_seconds']:.0f} s."]
    lines.append(f"Storage commitment: {commitment['requested']} requested, {commitment['reported']} reported "
                 f"({commitment['all_committed']} all committed; failed references by Failure Reason "
                 f"{commitment.get('failure_reasons', {})}), N-ACTION statuses {commitment['action_statuses']}.")
    for entry in commitment.get("unreported", []):
        report = entry.get("report") or {}
        lines.append(f"- not reported: {entry['transaction_uid']} (requested {entry['requested_at']}): {entry['state']}"
                     + (f", decided {entry['decided_at']}, outcomes {entry['outcomes']}" if entry.get("decided_at")
                        else f", outcomes {entry['outcomes']}" if "outcomes" in entry else "")
                     + (f"; report attempts {report['attempts']}, last error {report['last_error']!r}, "
                        f"next attempt {report['next_attempt_at']}" if report else ""))
    lines += [f"Stored and indexed {figures['stored_per_s']:.1f} instances/s from the first C-STORE to the last "
              "index row.", "", "CPU-seconds per GB sent, by process: " + ", ".join(
        f"{name} {value:.1f}" for name, value in figures["cpu_seconds_per_gb"].items()) + "."]
    profile = figures.get("profile")
    if profile:
        lines += ["", f"py-spy, {profile['samples']} samples of the gateway process: by component "
                  + ", ".join(f"{k} {v}%" for k, v in profile["components"].items()) + "; by library "
                  + ", ".join(f"{k} {v}%" for k, v in profile["libraries"].items()) + ".", "",
                  "| leaf function (self time) | % |", "|---|---|"]
        lines += [f"| `{name}` | {share} |" for name, share in profile["top_leaf_functions"][:12]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Options()
    parser.add_argument("--seconds", type=float, default=defaults.seconds)
    parser.add_argument("--rate", type=float, default=defaults.rate)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--dataset", default=defaults.dataset)
    parser.add_argument("--commit-every", type=int, default=defaults.commit_every)
    parser.add_argument("--verification", choices=["hash", "size", "index"], default=defaults.verification)
    parser.add_argument("--drain-seconds", type=float, default=defaults.drain_seconds)
    parser.add_argument("--profiler", choices=["", "py-spy"], default="")
    parser.add_argument("--backends", choices=["real", "embedded"], default=defaults.backends)
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING"], default=defaults.log_level)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dicom-gateway-bench/end-to-end"))
    parser.add_argument("--services-state", type=Path, default=services.DEFAULT_STATE)
    parser.add_argument("--setting", action="append", default=[], metavar="GATEWAY_X=VALUE",
                        help="a setting for the gateway over the benchmark's (repeatable), e.g. "
                             "GATEWAY_KAFKA__CONSUMER_CLIENT=aiokafka")
    args = parser.parse_args()
    settings = tuple(tuple(item.split("=", 1)) for item in args.setting)
    if any(len(pair) != 2 or not pair[0].startswith("GATEWAY_") for pair in settings):
        parser.error("--setting takes GATEWAY_NAME=VALUE")
    options = Options(args.seconds, args.rate, args.concurrency, args.dataset, args.commit_every, args.verification,
                      args.drain_seconds, args.profiler, args.backends, args.log_level,
                      cast(tuple[tuple[str, str], ...], settings))
    out = args.out / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-end-to-end"
    out.mkdir(parents=True, exist_ok=True)
    figures = measure(options, args.work, args.services_state, out)
    print(markdown(figures))
    print(json.dumps(figures.get("profile", {}), indent=2))
    print(f"results in {out}")


if __name__ == "__main__":
    main()
