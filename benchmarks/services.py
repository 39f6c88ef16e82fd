"""Kafka, SeaweedFS and PostgreSQL for the benchmarks, through ``scripts/services`` with a state dir of our own.

The script chooses ports of its own when the default ones are held by another set (another engineer's tests,
say), so ours run beside theirs with a state dir of our own (``--services-state``). With
``GATEWAY_SERVICES_PORT_OFFSET`` set the ports are fixed: then we check before starting anything that no port we
need is held by a service outside our state dir, and stop with a message naming it rather than sharing or
killing it. Services we started are
stopped at the end and their data removed: a quick run leaves gigabytes of Kafka segments and S3 volumes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = [sys.executable, str(ROOT / "scripts" / "services")]
DEFAULT_STATE = Path("/tmp/bench-services")
GIVEN_OFFSET = os.environ.get("GATEWAY_SERVICES_PORT_OFFSET")
PORTS = {name: tuple(port + int(GIVEN_OFFSET or 0) for port in ports) for name, ports in
         {"kafka": (19092, 19093), "s3": (18333, 19333, 18080, 18888), "postgres": (15432,)}.items()}
DIRECTORIES = {"kafka": "kafka", "s3": "seaweedfs", "postgres": "postgres"}
"""Each service's data under the state dir (scripts/services)."""


class PortTaken(RuntimeError):
    """A port of a service we need answers, but not from a service in our state dir."""


def _open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _status(state: Path) -> dict[str, bool]:
    out = subprocess.run([*SCRIPT, "--state", str(state), "status"], capture_output=True, text=True,
                         check=True).stdout
    return {name: status == "up" for name, status in (line.split("\t") for line in out.splitlines())}


@contextmanager
def running(names: list[str], state: Path = DEFAULT_STATE, keep: bool = False) -> Iterator[dict[str, str]]:
    """The gateway's environment for these services, started under ``state`` unless already up there."""
    up = _status(state)
    taken = [f"{name} port {port}" for name in names if GIVEN_OFFSET is not None and not up.get(name)
             for port in PORTS[name] if _open(port)]
    if taken:
        raise PortTaken(f"{', '.join(taken)} in use by a service outside {state}; stop it or run later")
    started = [name for name in names if not up.get(name)]
    try:
        if started:
            subprocess.run([*SCRIPT, "--state", str(state), "up", *started], check=True)
        exports = subprocess.run([*SCRIPT, "--state", str(state), "env", *names], capture_output=True, text=True,
                                 check=True).stdout
        yield dict(line.removeprefix("export ").split("=", 1) for line in exports.splitlines())
    finally:
        if started and not keep:
            subprocess.run([*SCRIPT, "--state", str(state), "down", *started], check=False)
            for name in started:  # what a run wrote (GBs of Kafka segments and S3 volumes per run) goes with it
                shutil.rmtree(state / DIRECTORIES[name], ignore_errors=True)


def pids(state: Path) -> dict[str, list[int]]:
    """Process ids of each service in our state dir, for CPU accounting: the pid files, and PostgreSQL's
    postmaster (its backends are its children)."""
    found: dict[str, list[int]] = {}
    for name, pidfile in (("kafka", state / "kafka" / "pid"), ("s3", state / "seaweedfs" / "pid"),
                          ("postgres", state / "postgres" / "data" / "postmaster.pid")):
        try:
            found[name] = [int(pidfile.read_text().split()[0])]
        except (FileNotFoundError, ValueError, IndexError):
            continue
    return found
