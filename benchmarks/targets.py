"""The receivers compared, each started in its best configuration on 127.0.0.1.

Best configuration: DCMTK-based peers get TCP_NODELAY=1 and their largest PDU (128 KiB), storescp a process
per association (``--fork``, else it serves one association at a time), Orthanc 16 DICOM
threads and no storage compression, pynetdicom no PDU limit; the gateway keeps its defaults (256 KiB PDUs).
``tcp-loopback`` is no DICOM receiver at all but the ceiling: ``benchmarks.peers.tcp_sink``. A gateway target
named ``NAME@baseline`` runs the gateway of another checkout (``baseline``), so that one run measures a change
against the code before it on the same machine at the same time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

STORESCP = "/usr/bin/storescp"
ECHOSCU = "/usr/bin/echoscu"
ORTHANC = "/usr/sbin/Orthanc"
DCMTK_ENV = {"TCP_NODELAY": "1"}
"""DCMTK-based peers fall to ~20 instances/s without it (Nagle against delayed ACKs)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Target:
    name: str
    ae_title: str
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    workdir: Path = Path()
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    """The checkout whose code runs (``python -m`` imports from the working directory first)."""

    def start(self) -> None:
        log = (self.workdir / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd,
                                        env={**os.environ, **self.env}, start_new_session=True)
        deadline = time.monotonic() + 60
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start; see {self.workdir / (self.name + '.log')}")
            time.sleep(0.2)

    @property
    def raw(self) -> bool:
        return self.name == "tcp-loopback"

    def _answers(self) -> bool:
        if self.raw:
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", self.port)) == 0
        return subprocess.run([ECHOSCU, "-to", "2", "-aec", self.ae_title, "127.0.0.1", str(self.port)],
                              capture_output=True, env={**os.environ, **DCMTK_ENV}).returncode == 0

    def stop(self) -> None:
        if self.process is None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def clear(self) -> None:
        """Delete what the target stored, so that disks do not fill across repetitions."""
        for child in (self.workdir / "store").glob("*"):
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def make_targets(names: list[str], root: Path, kafka_bootstrap: str | None,
                 baseline: Path | None = None) -> list[Target]:
    targets = []
    for full_name in names:
        name, _, variant = full_name.partition("@")
        if variant and (variant != "baseline" or baseline is None or not name.startswith("gateway")):
            raise ValueError(f"unknown target {full_name} (NAME@baseline needs a gateway target and --baseline)")
        workdir = root / full_name
        store = workdir / "store"
        store.mkdir(parents=True, exist_ok=True)
        port = free_port()
        if name.startswith("gateway"):
            env = {"GATEWAY_DATA_DIR": str(store), "GATEWAY_DICOM__PORT": str(port),
                   "GATEWAY_DICOM__HOST": "127.0.0.1", "GATEWAY_HTTP__PORT": str(free_port()),
                   "GATEWAY_LOG__LEVEL": "WARNING", "GATEWAY_EMBEDDED_BUS__RETENTION_HOURS": "0.01"}
            if name.startswith("gateway-kafka"):
                if not kafka_bootstrap:
                    raise RuntimeError("gateway-kafka needs Kafka: scripts/services up kafka")
                env |= {"GATEWAY_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap, "GATEWAY_KAFKA__PARTITIONS": "12",
                        "GATEWAY_TOPICS__INSTANCES": f"bench.instances.{os.getpid()}.{int(time.time())}"}
            processes = "2" if name.endswith("-2p") else "1"
            target = Target(full_name, "DICOMGW", port, workdir=workdir, env=env, cwd=baseline if variant else None,
                            argv=[sys.executable, "-m", "gateway.cli", "run", "--role", "receiver",
                                  "--workers", processes])
        elif name == "orthanc":
            config = {"Name": "bench", "StorageDirectory": str(store / "storage"),
                      "IndexDirectory": str(store / "index"), "HttpPort": free_port(), "DicomPort": port,
                      "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
                      "DicomThreadsCount": 16, "StorageCompression": False, "MaximumPduLength": 131072,
                      "Plugins": []}
            (workdir / "orthanc.json").write_text(json.dumps(config))
            target = Target(name, "ORTHANC", port, workdir=workdir, env=DCMTK_ENV,
                            argv=[ORTHANC, str(workdir / "orthanc.json")])
        elif name == "pynetdicom":
            target = Target(name, "PYNETDICOM", port, workdir=workdir,
                            argv=[sys.executable, "-m", "benchmarks.peers.pynetdicom_scp", str(port), str(store)])
        elif name == "storescp-disk":
            target = Target(name, "STORESCP", port, workdir=workdir, env=DCMTK_ENV,
                            argv=[STORESCP, "+xa", "--fork", "--max-pdu", "131072", "--bit-preserving", "-od",
                                  str(store), str(port)])
        elif name == "storescp-ignore":
            target = Target(name, "STORESCP", port, workdir=workdir, env=DCMTK_ENV,
                            argv=[STORESCP, "+xa", "--fork", "--max-pdu", "131072", "--ignore", str(port)])
        elif name == "tcp-loopback":
            target = Target(name, "", port, workdir=workdir,
                            argv=[sys.executable, "-m", "benchmarks.peers.tcp_sink", str(port)])
        else:
            raise ValueError(f"unknown target {name}")
        targets.append(target)
    return targets
