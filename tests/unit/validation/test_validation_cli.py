"""``validate`` on files written with pydicom and on pydicom's own test files: exit status and output."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from workers.validation.cli import add_parser, main

Put = Callable[[Dataset, str, Any], None]
ROOT = Path(__file__).resolve().parents[3]
KANTA = ["--profile", "fi-kanta", "--calling-ae", "CT01", "--organization", "Turun kaupunki",
         "--organization-oid", "1.2.246.10.2048198"]  # fmt: skip


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


def json_lines(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines()]


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


def test_json_lines_per_file(header: Dataset, tmp_path: Path, site: list[str], put: Put, capsys: Any) -> None:
    good = save(header, tmp_path / "good.dcm")
    put(header, "PatientName", "a=b=c=d")
    del header.IssuerOfPatientID, header.IssuerOfPatientIDQualifiersSequence
    bad = save(header, tmp_path / "bad.dcm")
    assert main([str(good), str(bad), *KANTA, *site, "--json"]) == 1
    first, second = json_lines(capsys.readouterr().out)
    assert first == {"file": str(good), "profile": "fi-kanta", "has_errors": False, "findings": [], "changes": []}
    assert second["has_errors"] is True
    assert [(f["code"], f["severity"], f["tag"]) for f in second["findings"]] == [
        ("DICOM-VR-PN", "warning", "00100010"),
        ("FI-ISSUER-MISSING", "error", "00100021"),
    ]


def test_unreadable_files_exit_2(tmp_path: Path, capsys: Any) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not DICOM")
    assert main([str(text), str(tmp_path / "absent.dcm"), "--json"]) == 2
    assert [line["file"] for line in json_lines(capsys.readouterr().out)] == [str(text), str(tmp_path / "absent.dcm")]


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
    [result] = json_lines(capsys.readouterr().out)
    assert [(f["code"], f["keyword"]) for f in result["findings"]] == [("DICOM-VR-UI", "ReferencedSOPInstanceUID")]


def test_registers_on_the_main_command(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="dicom-gateway")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["validate", bundled("CT_small.dcm"), "--profile", "dicom-basic"])
    assert args.func(args) == 0


def test_runs_as_a_module(header: Dataset, tmp_path: Path) -> None:
    path = save(header, tmp_path / "ok.dcm")
    done = subprocess.run(
        [sys.executable, "-m", "workers.validation", str(path), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert (done.returncode, json_lines(done.stdout)[0]["has_errors"]) == (0, False)
