from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from gateway.settings import Settings, SettingsError, load_settings


def test_defaults_select_the_embedded_setup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GATEWAY_SECRETS_DIR", str(tmp_path / "none"))
    settings = load_settings()
    assert settings.dicom.port == 11112 and settings.dicom.ae_title == "DICOMGW"
    assert settings.http.port == 8080
    assert settings.embedded_bus_enabled
    assert settings.s3.endpoint is None and settings.database.url is None


def test_environment_overrides_yaml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "dicom:\n  port: 104\n  ae_title: FROMFILE\n  allowed_aes:\n"
        "    - ae_title: CT1\n      networks: ['10.1.0.0/16']\n      organization_oid: 1.2.246.10.1234567.10\n"
    )
    monkeypatch.setenv("GATEWAY_DICOM__AE_TITLE", "FROMENV")
    settings = load_settings(config)
    assert settings.dicom.port == 104
    assert settings.dicom.ae_title == "FROMENV"
    [allowed] = settings.dicom.allowed_aes
    assert allowed.ae_title == "CT1" and str(allowed.networks[0]) == "10.1.0.0/16"


def test_secrets_come_from_files_named_like_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "GATEWAY_S3__SECRET_KEY").write_text("s3cret\n")
    (tmp_path / "GATEWAY_DATABASE__URL").write_text("postgresql://u:p@db/gw")
    monkeypatch.setenv("GATEWAY_SECRETS_DIR", str(tmp_path))
    settings = load_settings()
    assert settings.s3.secret_key is not None and settings.s3.secret_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    assert settings.database.url is not None
    assert settings.database.url.get_secret_value() == "postgresql://u:p@db/gw"


def test_secret_files_of_lists_and_objects_are_json(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """As a Kubernetes Secret mounts them: the user identity's users and token keys are JSON, a password that
    looks like JSON is still text."""
    (tmp_path / "GATEWAY_DICOM__USER_IDENTITY__USERS").write_text('{"ctscanner": "s3cret"}\n')
    (tmp_path / "GATEWAY_DICOM__USER_IDENTITY__TOKEN_KEYS").write_text('["key-1", "key-2"]')
    (tmp_path / "GATEWAY_S3__SECRET_KEY").write_text("[not-json")
    monkeypatch.setenv("GATEWAY_SECRETS_DIR", str(tmp_path))
    identity = load_settings().dicom.user_identity
    assert {name: value.get_secret_value() for name, value in identity.users.items()} == {"ctscanner": "s3cret"}
    assert [key.get_secret_value() for key in identity.token_keys] == ["key-1", "key-2"]
    secret_key = load_settings().s3.secret_key
    assert secret_key is not None and secret_key.get_secret_value() == "[not-json"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("GATEWAY_DICOM__PORT", "seventy", "GATEWAY_DICOM__PORT: Input should be a valid integer"),
        ("GATEWAY_DICOM__PORT", "70000", "GATEWAY_DICOM__PORT: Input should be less than or equal to 65535"),
        ("GATEWAY_LOG__LEVEL", "LOUD", "GATEWAY_LOG__LEVEL: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
        ("GATEWAY_DICOM__NO_SUCH", "1", "GATEWAY_DICOM__NO_SUCH: not a setting"),
        ("GATEWAY_DICOM__EXTRA_STORAGE_SOP_CLASSES", '["1.2.x"]', "extra_storage_sop_classes: not UIDs: 1.2.x"),
        ("GATEWAY_DICOM__TRANSFER_SYNTAX_PREFERENCE", '["1.2..3"]', "transfer_syntax_preference: not UIDs: 1.2..3"),
        ("GATEWAY_DICOM__ALLOWED_AES", '[{"ae_title": "CT", "transfer_syntax_preference": ["1.02"]}]',
         "allowed_aes CT transfer_syntax_preference: not UIDs: 1.02"),
        ("GATEWAY_DICOM__USER_IDENTITY__USERS", '["not", "an object"]',
         "GATEWAY_DICOM__USER_IDENTITY__USERS: Input should be a valid dictionary"),
        ("GATEWAY_HL7__PORT", "2575", "the HL7 port needs allowed_senders"),
        ("GATEWAY_HL7__DEFAULT_CHARSET", "EBCDIC", "GATEWAY_HL7__DEFAULT_CHARSET: not one of ASCII, 8859/1"),
        ("GATEWAY_HL7__MAX_MESSAGE_BYTES", "2000000",
         "GATEWAY_HL7__MAX_MESSAGE_BYTES: Input should be less than or equal to 1044480"),
        ("GATEWAY_HL7__ALLOWED_SENDERS", '[{"facility": "HOSP"}]', "GATEWAY_HL7__ALLOWED_SENDERS"),
    ],
)
def test_invalid_setting_names_itself(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert expected in str(error.value)


def test_cli_reports_bad_configuration_without_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run"],
        env={"GATEWAY_KAFKA__REPLICATION_FACTOR": "1", "GATEWAY_KAFKA__MIN_INSYNC_REPLICAS": "3",
             "GATEWAY_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "GATEWAY_KAFKA" in result.stderr and "min_insync_replicas cannot exceed" in result.stderr
    assert "Traceback" not in result.stderr


def _variables(model: type[BaseModel], prefix: str) -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names += _variables(annotation, f"{prefix}{name.upper()}__")
        else:
            names.append(f"{prefix}{name.upper()}")
    return names


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [name for name in _variables(Settings, "GATEWAY_") if f"`{name}`" not in readme]
    assert not missing, f"settings missing from the README's table: {missing}"
