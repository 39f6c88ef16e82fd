"""Start-up faults an operator can fix (a port in use, a data directory that cannot be written, a variable that is
not JSON) end the process with exit code 2 and a line or two naming the setting, not a traceback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port


def gateway(tmp_path: Path, *args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "GATEWAY_DATA_DIR": str(tmp_path / "data"),
           "GATEWAY_SECRETS_DIR": str(tmp_path / "no-secrets"), "GATEWAY_LOG__LEVEL": "WARNING",
           "GATEWAY_DICOM__HOST": "127.0.0.1", "GATEWAY_DICOM__PORT": str(free_port()),
           "GATEWAY_HTTP__PORT": str(free_port()), "GATEWAY_INTERNAL__PORT": "0", **variables}
    return subprocess.run([sys.executable, "-m", "gateway.cli", *(args or ("run", "--role", "receiver"))],
                          env=env, capture_output=True, text=True, timeout=60)


def short_error(result: subprocess.CompletedProcess[str]) -> str:
    """The last stderr line, once it is known that there are few and no traceback."""
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and 1 <= len(lines) <= 3, result.stderr
    return lines[-1]


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_dicom_port_in_use_is_named(tmp_path: Path, taken_port: int) -> None:
    result = gateway(tmp_path, GATEWAY_DICOM__PORT=str(taken_port))
    assert short_error(result) == f"dicom-gateway: GATEWAY_DICOM__PORT {taken_port} is in use"


def test_an_http_port_in_use_is_named(tmp_path: Path, taken_port: int) -> None:
    result = gateway(tmp_path, GATEWAY_HTTP__PORT=str(taken_port))
    assert short_error(result) == f"dicom-gateway: GATEWAY_HTTP__PORT {taken_port} is in use"


def test_a_data_dir_that_cannot_be_written_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    result = gateway(tmp_path, GATEWAY_DATA_DIR=str(tmp_path / "file" / "data"))
    assert short_error(result) == (
        f"dicom-gateway: GATEWAY_DATA_DIR {tmp_path / 'file' / 'data'} is not writable (Not a directory)")


def test_malformed_json_is_named(tmp_path: Path) -> None:
    result = gateway(tmp_path, GATEWAY_DICOM__ALLOWED_AES="[{")
    assert short_error(result).startswith("dicom-gateway: GATEWAY_DICOM__ALLOWED_AES: not valid JSON (")


def test_a_misspelt_variable_is_warned_about(tmp_path: Path, taken_port: int) -> None:
    """Logged when running (here before a port in use stops it), and printed by ``settings``."""
    result = gateway(tmp_path, GATEWAY_DICOM_PORT="104", GATEWAY_DICOM__PORT=str(taken_port))
    warning, _ = result.stderr.splitlines()
    assert json.loads(warning)["msg"] == (
        "GATEWAY_DICOM_PORT is not a setting and is ignored (did you mean GATEWAY_DICOM__PORT?)")
    shown = gateway(tmp_path, "settings", GATEWAY_DICOM_PORT="104")
    assert shown.returncode == 0
    assert shown.stderr == ("dicom-gateway: warning: GATEWAY_DICOM_PORT is not a setting and is ignored "
                            "(did you mean GATEWAY_DICOM__PORT?)\n")


def test_a_certificate_that_is_missing_or_does_not_load_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    result = gateway(tmp_path, GATEWAY_DICOM__TLS__CERT_FILE=str(missing), GATEWAY_DICOM__TLS__KEY_FILE=str(missing))
    assert short_error(result) == (
        f"dicom-gateway: GATEWAY_DICOM__TLS__CERT_FILE {missing}: cannot be read (No such file or directory)")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    result = gateway(tmp_path, GATEWAY_HTTP__TLS__CERT_FILE=str(garbage), GATEWAY_HTTP__TLS__KEY_FILE=str(garbage))
    assert short_error(result).startswith(
        "dicom-gateway: GATEWAY_HTTP__TLS__CERT_FILE, __KEY_FILE, __CA_FILE: do not load as a PEM certificate")
    result = gateway(tmp_path, GATEWAY_XDS__CA_FILE=str(missing))
    assert short_error(result) == (
        f"dicom-gateway: GATEWAY_XDS__CA_FILE {missing}: cannot be read (No such file or directory)")
