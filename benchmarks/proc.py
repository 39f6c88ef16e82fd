"""CPU time and peak memory of a process tree, read from /proc (Linux)."""

from __future__ import annotations

import os
from pathlib import Path


def tree(pid: int) -> list[int]:
    """The process and all its descendants that are alive now."""
    pids = [pid]
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return pids
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        for child in children:
            pids += tree(int(child))
    return pids


def cpu_and_rss(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system, including children already reaped: storescp --fork) and summed peak RSS in
    MiB of a process and all its descendants alive now."""
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = rss = 0.0
    for member in tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += sum(int(value) for value in fields[11:15]) / ticks  # with children reaped
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    rss += int(line.split()[1]) / 1024
        except (FileNotFoundError, ProcessLookupError):
            continue
    return cpu, rss
