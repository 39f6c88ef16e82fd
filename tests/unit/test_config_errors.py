"""Every configuration fault is one line naming the variable (or file and key) and what is wrong with it."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import _unavailable
from gateway.listen import PortUnavailable
from gateway.settings import DicomSettings, HttpSettings, Settings, SettingsError, load_settings, unknown_variables


@pytest.fixture(autouse=True)
def _no_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GATEWAY_SECRETS_DIR", str(tmp_path / "no-secrets"))


def _error(monkeypatch: pytest.MonkeyPatch, config: Path | None = None, **variables: str) -> str:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as error:
        load_settings(config)
    return str(error.value)


@pytest.mark.parametrize("variable", ["GATEWAY_DICOM__ALLOWED_AES", "GATEWAY_DICOM__REMOTE_AES",
                                      "GATEWAY_FORWARD__DESTINATIONS", "GATEWAY_DICOM__USER_IDENTITY__USERS"])
def test_malformed_json_names_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    message = _error(monkeypatch, **{variable: "[{"})
    assert message.startswith(f"{variable}: not valid JSON (")
    assert "\n" not in message


def test_malformed_json_in_a_secret_file_names_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "GATEWAY_DICOM__USER_IDENTITY__TOKEN_KEYS").write_text("[{")
    monkeypatch.setenv("GATEWAY_SECRETS_DIR", str(tmp_path))
    message = _error(monkeypatch)
    assert message.startswith(f"secret file {tmp_path / 'GATEWAY_DICOM__USER_IDENTITY__TOKEN_KEYS'}: not valid JSON")


@pytest.mark.parametrize(("network", "expected"), [
    ("10.0.0.300/8", "GATEWAY_DICOM__ALLOWED_AES: [0].networks: '10.0.0.300/8' does not appear to be an IPv4 or "
                     "IPv6 network"),
    ("10.0.0.1/8", "GATEWAY_DICOM__ALLOWED_AES: [0].networks: 10.0.0.1/8 has host bits set"),
])
def test_a_bad_network_says_what_is_wrong(monkeypatch: pytest.MonkeyPatch, network: str, expected: str) -> None:
    message = _error(monkeypatch, GATEWAY_DICOM__ALLOWED_AES=f'[{{"ae_title": "CT", "networks": ["{network}"]}}]')
    assert message == f"invalid configuration:\n  {expected}"


def test_networks_still_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_DICOM__ALLOWED_AES", '[{"ae_title": "CT", "networks": ["10.1.0.0/16", "fd00::/8"]}]')
    [allowed] = load_settings().dicom.allowed_aes
    assert [str(network) for network in allowed.networks] == ["10.1.0.0/16", "fd00::/8"]


def test_an_unknown_key_in_a_section_suggests_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _error(monkeypatch, GATEWAY_DICOM__PROT="104") == (
        "invalid configuration:\n  GATEWAY_DICOM__PROT: not a setting (did you mean GATEWAY_DICOM__PORT?)")


def test_an_unknown_key_inside_json_names_its_place(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _error(monkeypatch, GATEWAY_DICOM__ALLOWED_AES='[{"ae_titel": "CT"}]')
    assert "GATEWAY_DICOM__ALLOWED_AES: [0].ae_titel: not a setting (did you mean ae_title?)" in message
    assert "GATEWAY_DICOM__ALLOWED_AES: [0].ae_title: Field required" in message


def test_invalid_yaml_names_the_file_and_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("dicom: [\n  port: 104\n")
    message = _error(monkeypatch, config)
    assert message.startswith(f"--config {config}: not valid YAML: line 3, column 1: ")
    assert "\n" not in message


def test_yaml_that_is_not_a_mapping(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("- dicom\n")
    assert "must be a mapping of settings" in _error(monkeypatch, config)


def test_yaml_faults_name_the_file_and_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("dicom:\n  prot: 104\n  port: high\nlogs:\n  level: INFO\n")
    lines = _error(monkeypatch, config).splitlines()[1:]
    assert sorted(line.strip() for line in lines) == sorted([
        f"{config}: dicom.prot: not a setting (did you mean port?)",
        f"{config}: dicom.port: Input should be a valid integer, unable to parse string as an integer",
        f"{config}: logs: not a setting (did you mean log?)",
    ])


def test_the_environment_is_named_over_the_file_it_overrides(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("dicom:\n  port: 104\n")
    assert _error(monkeypatch, config, GATEWAY_DICOM__PORT="high").splitlines()[1].startswith(
        "  GATEWAY_DICOM__PORT: Input should be a valid integer")


def test_misspelt_variables_are_found_with_the_one_meant(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GATEWAY_DICOM_PORT", "GATEWAY_DATADIR", "GATEWAY_NOTHING_LIKE_IT", "GATEWAY_KEEP_SERVICES",
                 "GATEWAY_VENV", "GATEWAY_SERVICES_STATE", "GATEWAY_DICOM__PORT"):
        monkeypatch.setenv(name, "1")
    unknown = unknown_variables()
    assert unknown == {"GATEWAY_DICOM_PORT": "GATEWAY_DICOM__PORT", "GATEWAY_DATADIR": "GATEWAY_DATA_DIR",
                       "GATEWAY_NOTHING_LIKE_IT": None}


def _port_error(host: str, port: int, code: int) -> PortUnavailable:
    return PortUnavailable(host, port, OSError(code, errno.errorcode[code]))


def test_ports_that_cannot_be_bound_name_their_setting() -> None:
    settings = Settings(dicom=DicomSettings(host="0.0.0.0", port=11112), http=HttpSettings(port=8080))
    assert _unavailable(settings, _port_error("0.0.0.0", 11112, errno.EADDRINUSE)) == (
        "GATEWAY_DICOM__PORT 11112 is in use")
    assert _unavailable(settings, _port_error("127.0.0.1", 8080, errno.EADDRINUSE)) == (
        "GATEWAY_HTTP__PORT 8080 is in use")
    assert _unavailable(settings, _port_error("0.0.0.0", 2762, errno.EACCES)) == (
        "GATEWAY_DICOM__TLS__PORT 2762 needs privileges to bind (ports below 1024)")
    assert _unavailable(settings, _port_error("127.0.0.1", 8080, errno.EADDRNOTAVAIL)) == (
        "GATEWAY_HTTP__HOST 127.0.0.1 is not an address of this host")
    unresolved = PortUnavailable("nowhere.invalid", 8080, socket.gaierror(-2, "Name or service not known"))
    unresolved.__cause__ = socket.gaierror(-2, "Name or service not known")
    assert _unavailable(settings.model_copy(update={"http": HttpSettings(host="nowhere.invalid")}), unresolved) == (
        "GATEWAY_HTTP__HOST nowhere.invalid cannot be resolved (Name or service not known)")


def test_dead_letter_redrive_without_ids_says_what_it_needs_and_list_names_the_store(tmp_path: Path) -> None:
    env = {"GATEWAY_DATA_DIR": str(tmp_path / "data"), "GATEWAY_SECRETS_DIR": str(tmp_path / "none"),
           "PATH": "/usr/bin:/bin"}
    redrive = subprocess.run([sys.executable, "-m", "gateway.cli", "dead-letter", "redrive"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert redrive.returncode == 2
    assert "needs entry ids (from dead-letter list) or --all" in redrive.stderr
    listed = subprocess.run([sys.executable, "-m", "gateway.cli", "dead-letter", "list"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert f"embedded bus under {tmp_path / 'data' / 'bus'}" in listed.stderr


def test_reject_names_the_embedded_bus_and_index_it_uses(tmp_path: Path) -> None:
    """Run from another directory, a relative data dir would silently be an empty one: the command says which."""
    env = {"GATEWAY_DATA_DIR": "data", "GATEWAY_SECRETS_DIR": str(tmp_path / "none"), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    refused = subprocess.run([sys.executable, "-m", "gateway.cli", "reject", "1.2.3", "--reason", "113001"],
                             env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert f"embedded bus under {tmp_path / 'data' / 'bus'}" in refused.stderr
    assert f"index {tmp_path / 'data' / 'index.sqlite3'}" in refused.stderr


@pytest.mark.parametrize(("value", "expected"), [
    ('{"113002": "ignore"}', "GATEWAY_IOCM__RESEND"),
    ('{"113001": "forget"}', "GATEWAY_IOCM__RESEND"),
    ('{"113001": ', "GATEWAY_IOCM__RESEND: not valid JSON"),
])
def test_a_bad_iocm_resend_policy_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str,
                                                     expected: str) -> None:
    assert expected in _error(monkeypatch, GATEWAY_IOCM__RESEND=value)


def test_an_iocm_resend_policy_keeps_the_defaults_of_the_titles_it_does_not_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_IOCM__RESEND", '{"113001": "restore"}')
    policy = load_settings().iocm.policy()
    assert {title.value: action.value for title, action in policy.items()} == {
        "113001": "restore", "113037": "reject", "113038": "reject", "113039": "restore"}
