"""Load benchmark: the gateway against Orthanc, pynetdicom and dcmtk on this machine, in one run.

    python -m benchmarks.run --profile smoke|quick|full [--targets a,b] [--out DIR]

Senders are dcmtk ``storescu`` processes, one per association, all started together; a run's time is from
the first start to the last exit. Runs of different targets are interleaved and repeated; the report gives
the median with min and max, and ratios of the gateway to each peer, as a markdown table, JSON and PNG plots.
Absolute numbers on a shared machine are noise: read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.datasets import KINDS, generate
from benchmarks.targets import DCMTK_ENV, Target, make_targets

STORESCU = "/usr/bin/storescu"
ROOT = Path(__file__).resolve().parent.parent

PROFILES = {
    "smoke": {"kinds": {"ct": 8, "tiny": 16}, "concurrency": [1, 2], "repeats": 1},
    "quick": {"kinds": {"ct": 400, "tiny": 800}, "concurrency": [1, 4], "repeats": 3},
    "full": {"kinds": {"ct": 2000, "tiny": 4000, "mammo": 40}, "concurrency": [1, 4, 16], "repeats": 5},
}
DEFAULT_TARGETS = ["gateway-embedded", "gateway-kafka", "gateway-kafka-2p", "orthanc", "pynetdicom", "storescp-disk",
                   "storescp-ignore"]
"""gateway-*: the receiver role alone (ingest into the bus); -2p: two receiver processes on one port."""


@dataclass
class Run:
    target: str
    kind: str
    concurrency: int
    instances: int
    megabytes: float
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float

    @property
    def per_second(self) -> float:
        return self.instances / self.seconds

    @property
    def mb_per_second(self) -> float:
        return self.megabytes / self.seconds


def _tree(pid: int) -> list[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            pids += _tree(int(child))
    return pids


def cpu_and_rss(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) and summed peak RSS in MiB of a process and all its descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = rss = 0.0
    for member in _tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += sum(int(value) for value in fields[11:13]) / ticks
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    rss += int(line.split()[1]) / 1024
        except FileNotFoundError:
            continue
    return cpu, rss


def send(target: Target, files: list[Path], concurrency: int) -> float:
    shares = [files[i::concurrency] for i in range(concurrency)]
    started = time.perf_counter()
    senders = [
        subprocess.Popen([STORESCU, "-aec", target.ae_title, "127.0.0.1", str(target.port), *map(str, share)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **DCMTK_ENV})
        for share in shares
    ]
    failures = []
    for sender in senders:
        _, err = sender.communicate(timeout=3600)
        if sender.returncode != 0:
            failures.append(err.decode(errors="replace")[-500:])
    elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{target.name}: storescu failed: {failures[0]}")
    return elapsed


def measure(target: Target, kind: str, files: list[Path], concurrency: int) -> Run:
    assert target.process is not None
    cpu_before, _ = cpu_and_rss(target.process.pid)
    seconds = send(target, files, concurrency)
    cpu_after, rss = cpu_and_rss(target.process.pid)
    megabytes = sum(path.stat().st_size for path in files) / 1e6
    if not target.name.startswith("gateway"):
        target.clear()
    return Run(target.name, kind, concurrency, len(files), megabytes, seconds, cpu_after - cpu_before, rss)


def summarise(runs: list[Run]) -> list[dict[str, object]]:
    groups: dict[tuple[str, str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.kind, run.target, run.concurrency), []).append(run)
    rows = []
    for (kind, target, concurrency), group in sorted(groups.items()):
        rates = [r.per_second for r in group]
        rows.append({
            "kind": kind, "target": target, "concurrency": concurrency, "repeats": len(group),
            "instances_per_s": statistics.median(rates), "min": min(rates), "max": max(rates),
            "mb_per_s": statistics.median(r.mb_per_second for r in group),
            "cpu_s_per_gb": statistics.median(r.cpu_seconds / (r.megabytes / 1000) for r in group),
            "peak_rss_mb": max(r.peak_rss_mb for r in group),
        })
    return rows


def ratios(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    by_key = {(r["kind"], r["target"], r["concurrency"]): r for r in rows}
    result = []
    for (kind, target, concurrency), row in by_key.items():
        if not str(target).startswith("gateway"):
            continue
        for peer in ("orthanc", "pynetdicom", "storescp-disk", "storescp-ignore"):
            other = by_key.get((kind, peer, concurrency))
            if other:
                result.append({"kind": kind, "gateway": target, "peer": peer, "concurrency": concurrency,
                               "ratio": float(row["instances_per_s"]) / float(other["instances_per_s"])})  # type: ignore[arg-type]
    return result


def markdown(rows: list[dict[str, object]], ratio_rows: list[dict[str, object]], header: str) -> str:
    lines = [header, "", "| kind | target | assoc | instances/s (median) | min–max | MB/s | CPU s/GB | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['target']} | {r['concurrency']} | {r['instances_per_s']:.0f} | "
                     f"{r['min']:.0f}–{r['max']:.0f} | {r['mb_per_s']:.0f} | {r['cpu_s_per_gb']:.1f} | "
                     f"{r['peak_rss_mb']:.0f} |")
    lines += ["", "| kind | gateway | peer | assoc | gateway / peer |", "|---|---|---|---|---|"]
    for r in sorted(ratio_rows, key=lambda r: (str(r["kind"]), str(r["gateway"]), str(r["peer"]), int(r["concurrency"]))):  # type: ignore[call-overload]
        lines.append(f"| {r['kind']} | {r['gateway']} | {r['peer']} | {r['concurrency']} | {r['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, object]], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots (pip install matplotlib)", file=sys.stderr)
        return
    for kind in sorted({str(r["kind"]) for r in rows}):
        figure, axis = plt.subplots(figsize=(7, 4))
        for target in sorted({str(r["target"]) for r in rows if r["kind"] == kind}):
            points = sorted((int(r["concurrency"]), float(r["instances_per_s"]))  # type: ignore[arg-type]
                            for r in rows if r["kind"] == kind and r["target"] == target)
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=target)
        axis.set_xlabel("concurrent associations")
        axis.set_ylabel("instances/s")
        axis.set_xscale("log", base=2)
        axis.set_title(f"{kind}: throughput vs concurrency")
        axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(out / f"throughput-{kind}.png", dpi=100)
        plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dicom-gateway-bench"))
    args = parser.parse_args()
    profile = PROFILES[args.profile]
    names = args.targets.split(",")
    kafka = None
    if any(name.startswith("gateway-kafka") for name in names):
        services = [sys.executable, str(ROOT / "scripts" / "services")]
        subprocess.run([*services, "up", "kafka"], check=True)
        exports = subprocess.run([*services, "env", "kafka"], capture_output=True, text=True, check=True).stdout
        kafka = exports.strip().split("=", 1)[1]
    datasets = {kind: generate(KINDS[kind], count, args.work / "data" / kind)
                for kind, count in profile["kinds"].items()}  # type: ignore[attr-defined]
    targets = make_targets(names, args.work / "targets", kafka)
    runs: list[Run] = []
    try:
        for target in targets:
            target.start()
            print(f"started {target.name} on {target.port}", flush=True)
        for repeat in range(profile["repeats"]):  # type: ignore[call-overload]
            for kind, files in datasets.items():
                for concurrency in profile["concurrency"]:  # type: ignore[attr-defined]
                    for target in targets:
                        run = measure(target, kind, files, concurrency)
                        runs.append(run)
                        print(f"[{repeat + 1}/{profile['repeats']}] {kind:5} x{concurrency:<2} {target.name:17} "
                              f"{run.per_second:8.0f} inst/s {run.mb_per_second:7.0f} MB/s", flush=True)
    finally:
        for target in targets:
            target.stop()
    rows = summarise(runs)
    ratio_rows = ratios(rows)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out / f"{stamp}-{args.profile}"
    out.mkdir(parents=True, exist_ok=True)
    header = f"# dicom-gateway benchmark, profile {args.profile}, {stamp} ({os.cpu_count()} cores)"
    (out / "results.md").write_text(markdown(rows, ratio_rows, header))
    (out / "results.json").write_text(json.dumps({"profile": args.profile, "runs": [asdict(r) for r in runs],
                                                  "summary": rows, "ratios": ratio_rows}, indent=2))
    plot(rows, out)
    print((out / "results.md").read_text())
    print(f"results in {out}")


if __name__ == "__main__":
    main()
