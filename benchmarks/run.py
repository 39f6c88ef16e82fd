"""Load benchmark: the gateway against Orthanc, pynetdicom, dcmtk and a raw TCP ceiling on this machine.

    python -m benchmarks.run --profile smoke|quick|full [--targets a,b] [--datasets ct,tiny] [--out DIR]
        [--baseline CHECKOUT]

Every target gets the same sender (``benchmarks.scu``, one process, N associations) and the same instances,
each sent with fresh UIDs so that no receiver can skip one as already stored. Runs of different targets are
interleaved and repeated; the report gives the median with min and max, C-STORE latency percentiles
measured at the sender, the target's CPU-seconds per GB and peak RSS, and the ratios of the gateway to each
peer, as a markdown table, JSON and PNG plots. ``--baseline CHECKOUT`` adds each gateway target again as
``NAME@baseline``, run from that checkout (e.g. a ``git worktree`` of the previous commit), interleaved with the
rest: a change is measured against the code before it in the same run. The quick and full profiles then run the end-to-end
measurement (``benchmarks.end_to_end``) against real Kafka, S3 and PostgreSQL. Absolute numbers on a
shared machine are noise: read the ratios.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import end_to_end, services
from benchmarks.datasets import dataset
from benchmarks.proc import cpu_and_rss
from benchmarks.targets import Target, make_targets

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Profile:
    datasets: dict[str, int]
    """Dataset name -> instances per run (files on disk are cycled when there are fewer)."""
    concurrency: tuple[int, ...]
    repeats: int
    end_to_end_seconds: float
    """0: no end-to-end run."""


PROFILES = {
    "smoke": Profile({"ct": 8, "tiny": 16}, (1, 4), 1, 0),
    "quick": Profile({"ct": 200, "tiny": 400, "mammo": 16, "district": 100}, (1, 4, 16), 3, 90),
    "full": Profile({"ct": 2000, "tiny": 4000, "mammo": 48, "district": 1000}, (1, 4, 16), 5, 600),
}
FILES_ON_DISK = {"ct": 400, "tiny": 800, "mammo": 8, "district": 200}
"""Distinct files generated per dataset; runs cycle through them with fresh UIDs."""
DEFAULT_TARGETS = ["gateway-embedded", "gateway-kafka", "gateway-kafka-2p", "orthanc", "pynetdicom", "storescp-disk",
                   "storescp-ignore", "tcp-loopback"]
"""gateway-*: the receiver role alone (ingest into the bus; Success = durable there); -2p: two receiver
processes on one port. storescp-ignore and tcp-loopback are ceilings, not competitors."""
PEERS = ["orthanc", "storescp-disk", "pynetdicom", "storescp-ignore", "tcp-loopback"]


@dataclass
class Run:
    target: str
    dataset: str
    concurrency: int
    instances: int
    megabytes: float
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    sender_cpu_seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def per_second(self) -> float:
        return self.instances / self.seconds

    @property
    def mb_per_second(self) -> float:
        return self.megabytes / self.seconds


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def send(target: Target, files: Path, count: int, concurrency: int, work: Path,
         duration: float = 0.0) -> dict[str, Any]:
    """One run of the sender process (``count`` instances, or for ``duration`` seconds); raises when any C-STORE
    failed, since a refused instance is not ingest."""
    out = work / "sender.json"
    argv = [sys.executable, "-m", "benchmarks.scu", "--port", str(target.port), "--aec", target.ae_title,
            "--concurrency", str(concurrency), "--files", str(files), "--unique", "--out", str(out),
            *(["--duration", str(duration)] if duration else ["--count", str(count)])]
    subprocess.run([*argv, *(["--raw"] if target.raw else [])], check=True, timeout=3600)
    result: dict[str, Any] = json.loads(out.read_text())
    failed = {status: n for status, n in result["statuses"].items() if status != "0x0000"}
    if result["errors"] or failed:
        raise RuntimeError(f"{target.name}: {result['errors'][:1]} statuses {failed}")
    return result


def measure(target: Target, name: str, files: Path, count: int, concurrency: int, work: Path) -> Run:
    assert target.process is not None
    cpu_before, _ = cpu_and_rss(target.process.pid)
    result = send(target, files, count, concurrency, work)
    cpu_after, rss = cpu_and_rss(target.process.pid)
    if not target.name.startswith("gateway"):
        target.clear()
    latency = result["latency_ms"]
    return Run(target.name, name, concurrency, result["instances"], result["bytes"] / 1e6, result["elapsed"],
               cpu_after - cpu_before, rss, result["cpu_seconds"], percentile(latency, 0.5),
               percentile(latency, 0.99), max(latency))


def summarise(runs: list[Run]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.dataset, run.target, run.concurrency), []).append(run)
    rows = []
    for (name, target, concurrency), group in sorted(groups.items()):
        rates = [r.per_second for r in group]
        rows.append({
            "dataset": name, "target": target, "concurrency": concurrency, "repeats": len(group),
            "instances_per_s": statistics.median(rates), "min": min(rates), "max": max(rates),
            "mb_per_s": statistics.median(r.mb_per_second for r in group),
            "p50_ms": statistics.median(r.p50_ms for r in group),
            "p99_ms": statistics.median(r.p99_ms for r in group),
            "cpu_s_per_gb": statistics.median(r.cpu_seconds / (r.megabytes / 1000) for r in group),
            "peak_rss_mb": max(r.peak_rss_mb for r in group),
            "sender_cpu_s_per_gb": statistics.median(r.sender_cpu_seconds / (r.megabytes / 1000) for r in group),
        })
    return rows


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_key = {(r["dataset"], r["target"], r["concurrency"]): r for r in rows}
    result = []
    for (name, target, concurrency), row in sorted(by_key.items()):
        if not target.startswith("gateway"):
            continue
        for peer in PEERS:
            other = by_key.get((name, peer, concurrency))
            if other:
                result.append({"dataset": name, "gateway": target, "peer": peer, "concurrency": concurrency,
                               "ratio": row["instances_per_s"] / other["instances_per_s"]})
    return result


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    memory = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    return f"{model}, {os.cpu_count()} cores, {memory:.0f} GiB, {platform.system()} {platform.release()}"


def markdown(rows: list[dict[str, Any]], ratio_rows: list[dict[str, Any]], header: str) -> str:
    lines = [header, "",
             "| dataset | target | assoc | instances/s (median) | min–max | MB/s | C-STORE p50 ms | p99 ms | "
             "CPU s/GB | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['target']} | {r['concurrency']} | {r['instances_per_s']:.0f} | "
                     f"{r['min']:.0f}–{r['max']:.0f} | {r['mb_per_s']:.0f} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {r['cpu_s_per_gb']:.1f} | {r['peak_rss_mb']:.0f} |")
    gateways = sorted({r["gateway"] for r in ratio_rows})
    peers = [p for p in PEERS if any(r["peer"] == p for r in ratio_rows)]
    if gateways and peers:
        lines += ["", "Throughput ratios, gateway / peer (instances/s medians; above 1: the gateway is faster):", "",
                  "| dataset | assoc | " + " | ".join(f"{g.removeprefix('gateway-')} / {p}" for g in gateways
                                                      for p in peers) + " |",
                  "|---|---|" + "---|" * (len(gateways) * len(peers))]
        by_key = {(r["dataset"], r["concurrency"], r["gateway"], r["peer"]): r["ratio"] for r in ratio_rows}
        for name, concurrency in sorted({(r["dataset"], r["concurrency"]) for r in ratio_rows}):
            cells = [by_key.get((name, concurrency, g, p)) for g in gateways for p in peers]
            lines.append(f"| {name} | {concurrency} | " + " | ".join("" if c is None else f"{c:.2f}" for c in cells)
                         + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots (pip install -e '.[bench]')", file=sys.stderr)
        return
    for name in sorted({r["dataset"] for r in rows}):
        mine = [r for r in rows if r["dataset"] == name]
        targets = sorted({r["target"] for r in mine})
        figure, axis = plt.subplots(figsize=(7, 4))
        for target in targets:
            points = sorted((r["concurrency"], r["instances_per_s"], r["min"], r["max"])
                            for r in mine if r["target"] == target)
            axis.errorbar([p[0] for p in points], [p[1] for p in points], marker="o", label=target, capsize=3,
                          yerr=[[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]])
        axis.set(xlabel="concurrent associations", ylabel="instances/s", xscale="log", yscale="log",
                 title=f"{name}: throughput vs concurrency (median, min–max)")
        axis.set_xscale("log", base=2)
        axis.legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(out / f"throughput-{name}.png", dpi=100)
        plt.close(figure)
        figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for axis, key in zip(axes, ("p50_ms", "p99_ms"), strict=True):
            for target in targets:
                points = sorted((r["concurrency"], r[key]) for r in mine if r["target"] == target)
                axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=target)
            axis.set(xlabel="concurrent associations", ylabel="C-STORE latency, ms", yscale="log",
                     title=f"{name}: {key.removesuffix('_ms')}")
            axis.set_xscale("log", base=2)
        axes[0].legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(out / f"latency-{name}.png", dpi=100)
        plt.close(figure)


def throughput(profile: Profile, names: list[str], datasets: list[str], work: Path,
               environment: dict[str, str], baseline: Path | None = None) -> list[Run]:
    lists = {}
    for name in datasets:
        files = dataset(name, FILES_ON_DISK.get(name, profile.datasets[name]), work / "data")
        lists[name] = work / f"{name}.files"
        lists[name].write_text("\n".join(map(str, files)))
    targets = make_targets(names, work / "targets", environment.get("GATEWAY_KAFKA__BOOTSTRAP_SERVERS"), baseline)
    runs: list[Run] = []
    total = profile.repeats * len(datasets) * len(profile.concurrency) * len(targets)
    started = time.monotonic()
    try:
        for target in targets:
            target.start()
            print(f"started {target.name} on {target.port}", flush=True)
        for repeat in range(profile.repeats):
            for name in datasets:
                for concurrency in profile.concurrency:
                    count = max(profile.datasets[name], concurrency)
                    for target in targets:
                        run = measure(target, name, lists[name], count, concurrency, work)
                        runs.append(run)
                        print(f"[{len(runs)}/{total} {time.monotonic() - started:5.0f}s] r{repeat + 1} {name:8} "
                              f"x{concurrency:<2} {target.name:17} {run.per_second:7.0f} inst/s "
                              f"{run.mb_per_second:6.0f} MB/s p50 {run.p50_ms:7.2f} ms p99 {run.p99_ms:7.2f} ms",
                              flush=True)
    finally:
        for target in targets:
            target.stop()
    return runs


def orthanc_end_to_end(options: end_to_end.Options, work: Path) -> dict[str, Any]:
    """Orthanc under the saturated end-to-end load (same dataset, associations and time): its C-STORE Success
    already means stored on disk and indexed, so its ingest rate is what the gateway's stored-and-indexed rate
    compares with."""
    files = work / f"{options.dataset}.e2e.files"
    files.write_text("\n".join(map(str, dataset(options.dataset, FILES_ON_DISK.get(options.dataset, 200),
                                                 work / "data"))))
    [orthanc] = make_targets(["orthanc"], work / "targets-e2e", None)
    orthanc.start()
    try:
        assert orthanc.process is not None
        cpu_before, _ = cpu_and_rss(orthanc.process.pid)
        result = send(orthanc, files, 0, options.concurrency, work, duration=options.seconds)
        cpu_after, rss = cpu_and_rss(orthanc.process.pid)
    finally:
        orthanc.stop()
        orthanc.clear()
    gigabytes = result["bytes"] / 1e9
    return {"instances_per_s": result["instances"] / result["elapsed"],
            "mb_per_s": result["bytes"] / 1e6 / result["elapsed"],
            "cpu_s_per_gb": (cpu_after - cpu_before) / gigabytes, "peak_rss_mb": rss,
            "dataset": options.dataset, "concurrency": options.concurrency, "seconds": result["elapsed"]}


def end_to_end_ratios(saturated: dict[str, Any], orthanc: dict[str, Any]) -> list[dict[str, Any]]:
    """The gateway's stored-and-indexed rate against Orthanc's ingest, with the CPU per GB of each: the gateway's
    own and with the services it needs (bus, S3, database) on the same machine."""
    cpu = saturated["cpu_seconds_per_gb"]
    return [{"backend": saturated["options"]["backends"], "dataset": orthanc["dataset"],
             "concurrency": orthanc["concurrency"],
             "ratio": saturated["stored_per_s"] / orthanc["instances_per_s"],
             "gateway_stored_per_s": saturated["stored_per_s"], "orthanc_per_s": orthanc["instances_per_s"],
             "gateway_cpu_s_per_gb": cpu.get("gateway", 0.0),
             "gateway_and_services_cpu_s_per_gb": sum(cpu.values()),
             "orthanc_cpu_s_per_gb": orthanc["cpu_s_per_gb"]}]


def end_to_end_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["", "End to end against Orthanc, saturated (Orthanc's Success is stored and indexed):", "",
             "| backend | dataset | assoc | gateway stored/s | Orthanc/s | ratio | CPU s/GB gateway | with services | "
             "Orthanc |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['backend']} | {r['dataset']} | {r['concurrency']} | {r['gateway_stored_per_s']:.1f} | "
              f"{r['orthanc_per_s']:.1f} | {r['ratio']:.2f} | {r['gateway_cpu_s_per_gb']:.1f} | "
              f"{r['gateway_and_services_cpu_s_per_gb']:.1f} | {r['orthanc_cpu_s_per_gb']:.1f} |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS))
    parser.add_argument("--datasets", help="comma-separated subset of the profile's datasets")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dicom-gateway-bench")
    parser.add_argument("--services-state", type=Path, default=services.DEFAULT_STATE,
                        help="state dir for scripts/services (ours, not the tests')")
    parser.add_argument("--no-end-to-end", action="store_true")
    parser.add_argument("--no-throughput", action="store_true", help="only the end-to-end phases")
    parser.add_argument("--end-to-end-matrix", action="store_true",
                        help="instead of the paced and profiled phases: saturated, Orthanc side by side, for each "
                             "backend (real, embedded), dataset (ct, tiny) and 4 and 16 associations")
    parser.add_argument("--baseline", type=Path, help="another checkout whose gateway runs beside this one")
    args = parser.parse_args()
    profile = PROFILES[args.profile]
    names = args.targets.split(",")
    if args.baseline:
        names += [f"{name}@baseline" for name in names if name.startswith("gateway")]
    datasets = args.datasets.split(",") if args.datasets else list(profile.datasets)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out / f"{stamp}-{args.profile}"
    out.mkdir(parents=True, exist_ok=True)
    notes = []
    kafka = ["kafka"] if any(name.startswith("gateway-kafka") for name in names) else []
    with ExitStack() as stack:
        try:
            environment = stack.enter_context(services.running(kafka, args.services_state))
        except services.PortTaken as exc:
            names = [name for name in names if not name.startswith("gateway-kafka")]
            environment = {}
            notes.append(f"gateway-kafka targets skipped: {exc}.")
            print(notes[-1], file=sys.stderr)
        runs = [] if args.no_throughput else throughput(profile, names, datasets, args.work, environment,
                                                        args.baseline)
    rows = summarise(runs)
    ratio_rows = ratios(rows)
    header = (f"# dicom-gateway benchmark, profile {args.profile}, {stamp}\n\nMachine: {machine()}. "
              f"Sender: benchmarks.scu (asyncio, one process), fresh UIDs per instance. {' '.join(notes)}")
    report = markdown(rows, ratio_rows, header)
    figures: dict[str, Any] = {}
    e2e_ratios: list[dict[str, Any]] = []

    def save() -> None:
        """After each phase, so that a phase that fails keeps what the earlier ones measured."""
        (out / "results.md").write_text(report)
        (out / "results.json").write_text(json.dumps({
            "profile": args.profile, "machine": machine(), "runs": [asdict(r) for r in runs], "summary": rows,
            "ratios": ratio_rows, "end_to_end": figures, "end_to_end_ratios": e2e_ratios}, indent=2))

    save()
    if runs:
        plot(rows, out)
    if args.end_to_end_matrix:
        options = end_to_end.Options(seconds=profile.end_to_end_seconds / 4, rate=0)
        for backend, name, concurrency in itertools.product(("real", "embedded"), ("ct", "tiny"), (4, 16)):
            cell = replace(options, backends=backend, dataset=name, concurrency=concurrency)
            phase = f"saturated-{backend}-{name}-{concurrency}"
            try:
                figures[phase] = end_to_end.measure(cell, args.work / "end-to-end", args.services_state, out / phase)
            except services.PortTaken as exc:
                print(f"{phase} skipped: {exc}", file=sys.stderr)
                continue
            try:
                orthanc = orthanc_end_to_end(cell, args.work / "orthanc-end-to-end")
            except RuntimeError as exc:  # e.g. Orthanc answering Out of Resources: the other cells still count
                print(f"{phase}: Orthanc failed under the same load ({exc})", file=sys.stderr)
                figures[phase]["orthanc_failed"] = str(exc)
                save()
                continue
            e2e_ratios += end_to_end_ratios(figures[phase], orthanc)
            report = report.split("\nEnd to end against Orthanc")[0] + end_to_end_markdown(e2e_ratios)
            save()
    elif profile.end_to_end_seconds and not args.no_end_to_end:
        figures = {"paced": end_to_end.Options(seconds=profile.end_to_end_seconds),
                   "saturated": end_to_end.Options(seconds=profile.end_to_end_seconds / 4, rate=0, profiler="py-spy")}
        for phase, options in figures.items():
            try:
                figures[phase] = end_to_end.measure(options, args.work / "end-to-end", args.services_state,
                                                    out / phase)
            except services.PortTaken as exc:
                print(f"end to end on real services skipped ({exc}); measuring the embedded deployment",
                      file=sys.stderr)
                figures[phase] = end_to_end.measure(replace(options, backends="embedded"),
                                                    args.work / "end-to-end", args.services_state, out / phase)
                figures[phase]["note"] = f"real services skipped: {exc}"
            report += "\n" + end_to_end.markdown(figures[phase])
            save()
        saturated = figures["saturated"]
        orthanc = orthanc_end_to_end(end_to_end.Options(seconds=saturated["options"]["seconds"], rate=0),
                                     args.work / "orthanc-end-to-end")
        e2e_ratios = end_to_end_ratios(saturated, orthanc)
        report += end_to_end_markdown(e2e_ratios)
        save()
    print(report)
    print(f"results in {out}")


if __name__ == "__main__":
    main()
