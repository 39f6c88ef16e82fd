"""Profiles load, layer, override severities and coercion per AE, and fail at start-up when unusable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.settings import ValidationSettings, load_settings
from workers.validation import (
    RULES,
    CoercionConfig,
    ProfileError,
    ProfileRegistry,
    ProfileSelector,
    Severity,
)
from workers.validation.kanta import KANTA_RULES
from workers.validation.rules import DICOM_RULES

SITE_KANTA = """
name: fi-kanta
extends: fi-kanta
parameters:
  procedure_codes: codes/radiology.txt
coercion:
  by_calling_ae:
    OLD_CT: {issuer_of_patient_id: if_missing, institution_name: true}
"""
CODE_FILE = """# national radiology codes (excerpt)
GD1AA Thorax PA
NA1AA;Kallo
GD1AA02, local variant

"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def site_kanta(tmp_path: Path) -> Path:
    write(tmp_path, "codes/radiology.txt", CODE_FILE)
    return write(tmp_path, "site.yaml", SITE_KANTA)


def test_bundled_dicom_basic_has_every_dicom_rule_at_its_default_severity() -> None:
    profile = ProfileRegistry.load().get("dicom-basic")
    assert profile.rules == {r.code: r.severity for r in DICOM_RULES}
    assert profile.coercion == CoercionConfig(strip_id_padding=True)


def test_bundled_fi_kanta_needs_the_site_code_list() -> None:
    with pytest.raises(ProfileError, match="FI-STUDY-CODE-UNKNOWN needs parameter procedure_codes"):
        ProfileRegistry.load().get("fi-kanta")


def test_site_file_extends_bundled_fi_kanta(site_kanta: Path) -> None:
    profile = ProfileRegistry.load([site_kanta]).get("fi-kanta")
    assert set(profile.rules) == {r.code for r in (*DICOM_RULES, *KANTA_RULES)} == set(RULES)
    assert profile.parameters.procedure_codes == frozenset({"GD1AA", "NA1AA"})
    assert not profile.parameters.test_environment
    assert profile.coercion_for("OLD_CT ") == CoercionConfig(
        issuer_of_patient_id="if_missing", institution_name=True, strip_id_padding=True
    )
    assert profile.coercion_for("CT01") == CoercionConfig(strip_id_padding=True)


def test_severity_override_and_disabling(tmp_path: Path) -> None:
    path = write(tmp_path, "strict.yaml", """
name: strict
extends: dicom-basic
rules:
  DICOM-TYPE2-MISSING: {severity: error}
  DICOM-VR-PN: {enabled: false}
  FI-HETU-CHECKSUM: {severity: warning}
""")
    profile = ProfileRegistry.load([path]).get("strict")
    assert profile.rules["DICOM-TYPE2-MISSING"] is Severity.ERROR
    assert profile.rules["FI-HETU-CHECKSUM"] is Severity.WARNING
    assert "DICOM-VR-PN" not in profile.rules
    assert profile.rules["DICOM-VR-DA"] is Severity.WARNING


def test_inline_code_list_and_test_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "test.yaml", """
name: fi-kanta-test
extends: fi-kanta
parameters: {test_environment: true, procedure_codes: [GD1AA01, NA1AA]}
""")
    parameters = ProfileRegistry.load([path]).get("fi-kanta-test").parameters
    assert parameters.test_environment and parameters.procedure_codes == frozenset({"GD1AA", "NA1AA"})


def test_same_name_without_extends_replaces(tmp_path: Path) -> None:
    path = write(tmp_path, "basic.yaml", "name: dicom-basic\nrules: {DICOM-UID-SYNTAX: }\n")
    assert list(ProfileRegistry.load([path]).get("dicom-basic").rules) == ["DICOM-UID-SYNTAX"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nrules: {DICOM-NO-SUCH-RULE: }\n", "unknown rule codes DICOM-NO-SUCH-RULE"),
        ("name: x\ncolour: blue\n", "colour: Extra inputs are not permitted"),
        ("name: x\nrules: {DICOM-VR-DA: {severity: fatal}}\n", "rules.DICOM-VR-DA.severity"),
        ("name: x\ncoercion: {issuer_of_patient_id: sometimes}\n", "coercion.issuer_of_patient_id"),
        ("name: [unclosed\n", "not YAML"),
        ("- just a list\n", "document"),
    ],
)
def test_bad_documents_name_the_file_and_setting(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ProfileError, match=f"profile file {re.escape(str(path))}.*{message}"):
        ProfileRegistry.load([path])


@pytest.mark.parametrize(
    ("files", "name", "message"),
    [
        ({"a.yaml": "name: a\nextends: nowhere\n"}, "a", "extends 'nowhere', which is not defined"),
        ({"a.yaml": "name: a\nextends: a\n"}, "a", "extends 'a', which is not defined"),
        ({"a.yaml": "name: a\nextends: b\n", "b.yaml": "name: b\nextends: a\n"}, "a", "extends itself"),
        ({"a.yaml": "name: a\nparameters: {procedure_codes: missing.txt}\n"}, "a", "missing.txt: No such file"),
        ({"a.yaml": "name: a\nparameters: {procedure_codes: [GD1A]}\n"}, "a", "shorter than 5 characters"),
        ({}, "nameless", "no profile named 'nameless'; known: dicom-basic, fi-kanta"),
    ],
)
def test_unusable_profiles(tmp_path: Path, files: dict[str, str], name: str, message: str) -> None:
    registry = ProfileRegistry.load([write(tmp_path, file, text) for file, text in files.items()])
    with pytest.raises(ProfileError, match=message):
        registry.get(name)


def test_missing_profile_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="No such file"):
        ProfileRegistry.load([tmp_path / "absent.yaml"])


def test_selection_per_calling_ae(site_kanta: Path) -> None:
    selector = ProfileSelector.from_settings(
        ValidationSettings(profiles_by_calling_ae={"CT01": "fi-kanta"}, profile_files=(site_kanta,))
    )
    assert selector.for_calling_ae("CT01").name == "fi-kanta"
    assert selector.for_calling_ae("CT01  ").name == "fi-kanta"
    assert selector.for_calling_ae("US02").name == "dicom-basic"


def test_selection_fails_at_start_up_for_an_unusable_profile() -> None:
    with pytest.raises(ProfileError, match="fi-kanta"):
        ProfileSelector.from_settings(ValidationSettings(profiles_by_calling_ae={"CT01": "fi-kanta"}))


def test_selection_in_the_test_environment(site_kanta: Path) -> None:
    settings = ValidationSettings(profiles_by_calling_ae={"CT01": "fi-kanta"}, profile_files=(site_kanta,))
    production = ProfileSelector.from_settings(settings)
    test = ProfileSelector.from_settings(settings.model_copy(update={"test_environment": True}))
    for ae in ("CT01", "US02"):
        assert not production.for_calling_ae(ae).parameters.test_environment
        assert test.for_calling_ae(ae).parameters.test_environment
        assert test.for_calling_ae(ae).rules == production.for_calling_ae(ae).rules
    assert test.for_calling_ae("CT01").parameters.procedure_codes == frozenset({"GD1AA", "NA1AA"})


def test_test_environment_from_the_environment(site_kanta: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_VALIDATION__TEST_ENVIRONMENT", "true")
    monkeypatch.setenv("GATEWAY_SECRETS_DIR", str(site_kanta.parent / "no-secrets"))
    settings = load_settings().validation
    assert settings.test_environment
    assert ProfileSelector.from_settings(settings).for_calling_ae("CT01").parameters.test_environment
