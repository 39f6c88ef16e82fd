"""Run ``dicom-gateway run`` as a real process for tests that signal or kill it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.helpers import free_port


class GatewayProcess:
    def __init__(self, data_dir: Path, role: str | tuple[str, ...] = "all", **environment: str) -> None:
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.data_dir = data_dir
        name = "gateway" if role == "all" else "-".join((role,) if isinstance(role, str) else role)
        self.log = data_dir.parent / f"{data_dir.name}-{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env |= {
            "GATEWAY_DATA_DIR": str(data_dir),
            "GATEWAY_DICOM__PORT": str(self.dicom_port),
            "GATEWAY_DICOM__HOST": "127.0.0.1",
            "GATEWAY_HTTP__PORT": str(self.http_port),
            "GATEWAY_HTTP__HOST": "127.0.0.1",
            "GATEWAY_SECRETS_DIR": str(data_dir / "no-secrets"),
            **environment,
        }
        data_dir.mkdir(parents=True, exist_ok=True)
        self._out = self.log.open("ab")
        roles = [] if role == "all" else [
            argument for name in ((role,) if isinstance(role, str) else role) for argument in ("--role", name)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", *roles], env=env, stdout=self._out, stderr=subprocess.STDOUT
        )

    def http(self, path: str) -> tuple[int, str]:
        """GET with the generated admin token once there is one (the probes need none)."""
        token = self.data_dir / "api-token"
        headers = {"Authorization": f"Bearer {token.read_text().strip()}"} if token.exists() else {}
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited with {self.process.returncode}:\n{self.output()}")
            try:
                if self.http("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"gateway not ready in {timeout}s:\n{self.output()}")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self._out.close()

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self._out.closed:
            self._out.close()
        return self.process.returncode

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text(errors="replace")[-6000:]
