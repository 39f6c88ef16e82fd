"""Real DICOM peers run by the tests: Orthanc from Debian's package, with its own throwaway configuration."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.helpers import free_port

ORTHANC = Path("/usr/sbin/Orthanc")


class Orthanc:
    def __init__(self, directory: Path, modalities: dict[str, tuple[str, str, int]]) -> None:
        if not ORTHANC.exists():
            raise AssertionError("Orthanc is not installed (apt-get install orthanc)")
        self.http_port, self.dicom_port = free_port(), free_port()
        self.directory = directory
        config = {
            "Name": "test-pacs",
            "StorageDirectory": str(directory / "storage"),
            "IndexDirectory": str(directory / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": {name: list(entry) for name, entry in modalities.items()},
            "Plugins": [],
        }
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "orthanc.json").write_text(json.dumps(config))
        self.start()

    def start(self) -> None:
        """Start (or start again, on the same ports and storage) and wait until its REST API answers."""
        directory = self.directory
        self._log = (directory / "orthanc.log").open("ab")
        self.process = subprocess.Popen([str(ORTHANC), str(directory / "orthanc.json")],
                                        stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.get("/system")
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("Orthanc did not start:\n"
                                         + (directory / "orthanc.log").read_text(errors="replace")[-3000:]) from None
                time.sleep(0.2)

    def request(self, method: str, path: str, body: bytes | None = None) -> Any:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method)
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read() or b"null")

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: bytes | dict[str, Any]) -> Any:
        return self.request("POST", path, body if isinstance(body, bytes) else json.dumps(body).encode())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
