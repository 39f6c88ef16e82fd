"""The self-test's synthetic identities and its report, without a gateway."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest

from gateway.hetu import parse
from gateway.selftest.report import Case, Report, StepFailed, Verdict
from gateway.selftest.study import SyntheticStudy, temporary_identity


def test_every_identity_is_a_valid_test_code() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        code = parse(temporary_identity(rng))
        assert code.is_temporary and 1950 <= code.birth_date.year < 1991


def test_the_study_carries_its_patient_and_fresh_uids() -> None:
    first, second = SyntheticStudy.create(random.Random(1)), SyntheticStudy.create(random.Random(1))
    assert first.study_instance_uid != second.study_instance_uid
    assert {str(ds.PatientID) for ds in first.instances} == {first.patient_id}
    assert str(first.instances[0].PatientBirthDate)[2:] == first.patient_id[4:6] + first.patient_id[2:4] + \
        first.patient_id[0:2]
    assert len(first.series) == 2 and len(first.references) == 4


def test_a_failed_step_ends_its_case_and_the_report_says_why(tmp_path: Path) -> None:
    report = Report(target={"dicom": "<script>alert(1)</script>"})
    case = Case("store", "Storage", "archiving")
    report.cases.append(case)
    with pytest.raises(StepFailed), case.step("C-STORE") as step:
        step.sent("DICOM", "C-STORE-RQ", sop_instance_uid="1.2.3")
        raise ValueError("peer closed")
    case.verdict, case.reason = Verdict.FAILED, case.steps[0].detail
    json_path, html_path = report.write(tmp_path)
    data = orjson.loads(json_path.read_bytes())
    assert data["result"] == "failed" and data["cases"][0]["steps"][0]["detail"] == "ValueError: peer closed"
    page = html_path.read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_a_report_without_the_required_archiving_cases_does_not_pass() -> None:
    report = Report(target={})
    report.cases.append(Case("echo", "Verification", "archiving"))
    commitment = Case("commitment", "Storage commitment", "archiving")
    commitment.not_run("not configured")
    report.cases.append(commitment)
    assert not report.passed
    commitment.verdict = Verdict.PASSED
    assert report.passed
