"""``validate`` on files written with pydicom and on pydicom's own test files: exit status and output."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from gateway.cli import main as gateway_main
from workers.validation.cli import add_parser, main

Put = Callable[[Dataset, str, Any], None]
ROOT = Path(__file__).resolve().parents[3]
CONTEXT = ["--calling-ae", "CT01", "--organization", "Turun kaupunki", "--organization-oid", "1.2.246.10.2048198"]
KANTA = ["--profile", "fi-kanta", *CONTEXT]
SOURCE_RULES = ["FI-TEMP-ID-ORG", "FI-SOURCE-UNKNOWN"]
"""The fi-kanta rules that judge the sender, in profile order."""
TEST_HETU = "131052-901X"
"""A valid code with individual number 901: a test identity under 1.2.246.21."""
FINDING_KEYS = {"code", "severity", "tag", "keyword", "message"}


@pytest.fixture(autouse=True)
def gateway_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The command reads the gateway settings: none may leak in from the developer's shell or secrets."""
    for name in [name for name in os.environ if name.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("GATEWAY_SECRETS_DIR", str(tmp_path / "no-secrets"))


def bundled(name: str) -> str:
    path = get_testdata_file(name)
    assert isinstance(path, str), name
    return path


def save(ds: Dataset, path: Path) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def site(tmp_path: Path) -> list[str]:
    path = tmp_path / "site.yaml"
    path.write_text("name: fi-kanta\nextends: fi-kanta\nparameters: {procedure_codes: [GD1AA]}\n", encoding="utf-8")
    return ["--profile-file", str(path)]


def json_array(text: str) -> list[dict[str, Any]]:
    """The --json output is one JSON document: an array with an object per file."""
    document = json.loads(text)
    assert isinstance(document, list)
    return document


def test_conforming_file_exits_0(header: Dataset, tmp_path: Path, site: list[str], capsys: Any) -> None:
    path = save(header, tmp_path / "ok.dcm")
    assert main([str(path), *KANTA, *site]) == 0
    assert capsys.readouterr().out == f"{path}: OK\n"


def test_error_findings_exit_1_with_a_table(header: Dataset, tmp_path: Path, site: list[str], capsys: Any) -> None:
    header.PatientID = "131052-308U"
    path = save(header, tmp_path / "bad.dcm")
    assert main([str(path), *KANTA, *site]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: 1 error(s), 0 warning(s)\n")
    assert "error    FI-HETU-CHECKSUM" in out and "(0010,0020) PatientID" in out
    assert "131052" not in out


def test_json_array_per_file(header: Dataset, tmp_path: Path, site: list[str], put: Put, capsys: Any) -> None:
    good = save(header, tmp_path / "good.dcm")
    put(header, "PatientName", "a=b=c=d")
    del header.IssuerOfPatientID, header.IssuerOfPatientIDQualifiersSequence
    bad = save(header, tmp_path / "bad.dcm")
    assert main([str(good), str(bad), *KANTA, *site, "--json"]) == 1
    first, second = json_array(capsys.readouterr().out)
    assert first == {"file": str(good), "profile": "fi-kanta", "has_errors": False, "findings": [], "changes": [],
                     "skipped": []}  # fmt: skip
    assert second["file"] == str(bad) and second["has_errors"] is True
    assert all(set(finding) == FINDING_KEYS for finding in second["findings"])
    assert [(f["code"], f["severity"], f["tag"], f["keyword"]) for f in second["findings"]] == [
        ("DICOM-VR-PN", "warning", "00100010", "PatientName"),
        ("FI-ISSUER-MISSING", "error", "00100021", "IssuerOfPatientID"),
    ]
    assert all(isinstance(f["message"], str) and f["message"] for f in second["findings"])


def test_json_is_one_array_even_for_one_file(capsys: Any) -> None:
    assert main([bundled("CT_small.dcm"), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.lstrip().startswith("[") and out.rstrip().endswith("]")
    assert [result["file"] for result in json_array(out)] == [bundled("CT_small.dcm")]


def test_unreadable_files_exit_2(tmp_path: Path, capsys: Any) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not DICOM")
    absent = tmp_path / "absent.dcm"
    assert main([str(text), bundled("CT_small.dcm"), str(absent), "--json"]) == 2
    out, err = capsys.readouterr()
    results = json_array(out)
    assert [result["file"] for result in results] == [str(text), bundled("CT_small.dcm"), str(absent)]
    assert [("error" in result, result["findings"]) for result in results] == [(True, []), (False, []), (True, [])]
    assert f"{text}: cannot read" in err and f"{absent}: cannot read: No such file" in err


def test_unreadable_file_exits_2_over_error_findings(tmp_path: Path, capsys: Any) -> None:
    assert main([bundled("rtdose.dcm"), str(tmp_path / "absent.dcm")]) == 2
    out, err = capsys.readouterr()
    assert "DICOM-VR-UI" in out and "absent.dcm: cannot read" in err


def test_rules_needing_the_source_are_skipped_without_context(
    header: Dataset, tmp_path: Path, site: list[str], capsys: Any
) -> None:
    header.IssuerOfPatientID = "1.2.246.10.1234567.22.2024"  # another organisation's temporary-ID namespace
    header.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID = "1.2.246.10.1234567.22.2024"
    header.PatientID = TEST_HETU
    path = save(header, tmp_path / "offline.dcm")
    assert main([str(path), "--profile", "fi-kanta", *site]) == 0
    assert capsys.readouterr().out == f"{path}: OK\n  skipped: {', '.join(SOURCE_RULES)}\n"
    assert main([str(path), "--profile", "fi-kanta", *site, "--json"]) == 0
    [result] = json_array(capsys.readouterr().out)
    assert (result["findings"], result["skipped"], result["has_errors"]) == ([], SOURCE_RULES, False)


def test_rules_needing_the_source_run_with_context(
    header: Dataset, tmp_path: Path, site: list[str], capsys: Any
) -> None:
    header.IssuerOfPatientID = "1.2.246.10.1234567.22.2024"
    header.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID = "1.2.246.10.1234567.22.2024"
    header.PatientID = TEST_HETU
    path = save(header, tmp_path / "foreign.dcm")
    assert main([str(path), *KANTA, *site, "--json"]) == 1
    [result] = json_array(capsys.readouterr().out)
    assert [(f["code"], f["keyword"]) for f in result["findings"]] == [("FI-TEMP-ID-ORG", "IssuerOfPatientID")]
    assert result["skipped"] == []


def test_a_calling_ae_without_organisation_fails_as_in_the_gateway(
    header: Dataset, tmp_path: Path, site: list[str], capsys: Any
) -> None:
    path = save(header, tmp_path / "ok.dcm")
    assert main([str(path), "--profile", "fi-kanta", "--calling-ae", "CT01", *site]) == 1
    out = capsys.readouterr().out
    assert "error    FI-SOURCE-UNKNOWN" in out and "(0008,0080) InstitutionName" in out
    assert "skipped" not in out


def test_basic_profile_skips_nothing(header: Dataset, tmp_path: Path, capsys: Any) -> None:
    path = save(header, tmp_path / "ok.dcm")
    assert main([str(path), "--json"]) == 0
    [result] = json_array(capsys.readouterr().out)
    assert (result["profile"], result["skipped"]) == ("dicom-basic", [])


@pytest.fixture
def test_identity(header: Dataset, tmp_path: Path) -> str:
    header.PatientID = TEST_HETU
    return str(save(header, tmp_path / "test-identity.dcm"))


def test_test_identity_fails_in_production(test_identity: str, site: list[str], capsys: Any) -> None:
    assert main([test_identity, *KANTA, *site, "--json"]) == 1
    [result] = json_array(capsys.readouterr().out)
    assert [f["code"] for f in result["findings"]] == ["FI-HETU-TEST-ID"]
    assert TEST_HETU not in json.dumps(result)


def test_test_environment_flag_accepts_test_identities(test_identity: str, site: list[str], capsys: Any) -> None:
    assert main([test_identity, *KANTA, *site, "--test-environment"]) == 0
    assert capsys.readouterr().out == f"{test_identity}: OK\n"


@pytest.mark.parametrize(("value", "status"), [("true", 0), ("1", 0), ("false", 1)])
def test_test_environment_from_the_gateway_settings(
    test_identity: str, site: list[str], value: str, status: int, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("GATEWAY_VALIDATION__TEST_ENVIRONMENT", value)
    assert main([test_identity, *KANTA, *site]) == status


def test_profile_and_files_default_to_the_gateway_settings(
    test_identity: str, site: list[str], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("GATEWAY_VALIDATION__DEFAULT_PROFILE", "fi-kanta")
    monkeypatch.setenv("GATEWAY_VALIDATION__PROFILE_FILES", json.dumps([site[1]]))
    monkeypatch.setenv("GATEWAY_VALIDATION__TEST_ENVIRONMENT", "true")
    assert main([test_identity, *CONTEXT, "--json"]) == 0
    [result] = json_array(capsys.readouterr().out)
    assert (result["profile"], result["findings"]) == ("fi-kanta", [])


def test_settings_from_a_config_file(test_identity: str, site: list[str], tmp_path: Path, capsys: Any) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"validation:\n  default_profile: fi-kanta\n  profile_files: ['{site[1]}']\n")
    assert main([test_identity, *CONTEXT, "--config", str(config), "--json"]) == 1
    [result] = json_array(capsys.readouterr().out)
    assert [f["code"] for f in result["findings"]] == ["FI-HETU-TEST-ID"]


def test_bad_settings_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setenv("GATEWAY_VALIDATION__TEST_ENVIRONMENT", "perhaps")
    assert main([bundled("CT_small.dcm")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "GATEWAY_VALIDATION__TEST_ENVIRONMENT" in err


def test_unusable_profile_exits_2(tmp_path: Path, capsys: Any) -> None:
    assert main([bundled("CT_small.dcm"), "--profile", "fi-kanta"]) == 2
    assert "FI-STUDY-CODE-UNKNOWN needs parameter procedure_codes" in capsys.readouterr().err


def test_usage_error_exits_2() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--json"])
    assert exited.value.code == 2


@pytest.mark.parametrize(
    ("files", "status"),
    [
        (["CT_small.dcm", "MR_small.dcm", "rtplan.dcm"], 0),
        (["CT_small.dcm", "rtdose.dcm"], 1),
        (["CT_small.dcm", "rtdose.dcm", "no_meta.dcm"], 2),
    ],
)
def test_pydicom_test_files(files: list[str], status: int, capsys: Any) -> None:
    assert main([bundled(name) for name in files]) == status


def test_pydicom_test_file_findings(capsys: Any) -> None:
    assert main([bundled("rtdose.dcm"), "--json"]) == 1
    [result] = json_array(capsys.readouterr().out)
    assert [(f["code"], f["keyword"]) for f in result["findings"]] == [("DICOM-VR-UI", "ReferencedSOPInstanceUID")]


def test_registers_on_the_main_command(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="dicom-gateway")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["validate", bundled("CT_small.dcm"), "--profile", "dicom-basic"])
    assert args.func(args) == 0


@pytest.mark.parametrize(("extra", "status"), [([], 1), (["--test-environment"], 0)])
def test_through_the_dicom_gateway_command(
    test_identity: str, site: list[str], extra: list[str], status: int, capsys: Any
) -> None:
    assert gateway_main(["validate", test_identity, *KANTA, *site, "--json", *extra]) == status
    [result] = json_array(capsys.readouterr().out)
    assert result["has_errors"] is bool(status)


def test_runs_as_a_module(header: Dataset, tmp_path: Path) -> None:
    path = save(header, tmp_path / "ok.dcm")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    done = subprocess.run(
        [sys.executable, "-m", "workers.validation", str(path), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        env={**env, "GATEWAY_VALIDATION__TEST_ENVIRONMENT": "true", "GATEWAY_SECRETS_DIR": str(tmp_path / "none")},
    )
    assert (done.returncode, json_array(done.stdout)[0]["has_errors"]) == (0, False)


def test_the_shipped_example_site_profile_loads_and_judges_study_codes(header: Dataset, tmp_path: Path,
                                                                      capsys: Any) -> None:
    """docs/examples/fi-kanta: what a new site copies to run fi-kanta (which needs a code list of its own)."""
    example = ["--profile-file", str(ROOT / "docs" / "examples" / "fi-kanta" / "profile.yaml")]
    assert main([str(save(header, tmp_path / "ok.dcm")), *KANTA, *example]) == 0
    header.RequestedProcedureCodeSequence[0].CodeValue = "ZZ9ZZ"
    assert main([str(save(header, tmp_path / "unknown.dcm")), *KANTA, *example]) == 1
    assert "FI-STUDY-CODE-UNKNOWN" in capsys.readouterr().out
