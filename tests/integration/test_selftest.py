"""``dicom-gateway selftest``: the national deployment test run as an organisation runs it, as a separate
process against a gateway process (its own, with the bundled XDS simulator, or one already running)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from gateway.hetu import parse
from tests.helpers import free_port
from tests.process import GatewayProcess

ALL_CASES = ("echo", "store", "commitment", "registration", "ian", "forward", "find", "retrieve",
             "registry-search", "registry-retrieve", "adt-update", "adt-merge", "rejection")


def selftest(*argv: str, env: dict[str, str] | None = None, timeout: float = 300) -> tuple[int, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")} | (env or {})
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "selftest", *argv], env=environment,
                          capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


def report(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((out / "selftest-report.json").read_bytes())
    return data


def test_the_simulator_run_passes_every_case_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "report"
    code, output = selftest("--simulator", "--out", str(out), "--timeout", "90", "--work", str(tmp_path / "work"))
    data = report(out)
    verdicts = {case["id"]: (case["verdict"], case["reason"]) for case in data["cases"]}
    assert verdicts == dict.fromkeys(ALL_CASES, ("passed", "")), output
    assert code == 0 and data["result"] == "passed"
    assert parse(data["target"]["patient_id"]).is_temporary
    steps = {case["id"]: case["steps"] for case in data["cases"]}
    exchanged = [m["summary"] for step in steps["commitment"] for m in step["messages"]]
    assert "N-ACTION-RQ Request Storage Commitment" in exchanged
    assert "N-EVENT-REPORT-RQ event type 1" in exchanged
    assert any(m["protocol"] == "XDS" and m["summary"].startswith("ITI-18")
               for step in steps["registry-search"] for m in step["messages"])
    assert any(m["summary"] == "ACK AA" for step in steps["adt-update"] for m in step["messages"])
    assert all(step["seconds"] >= 0 and step["started_at"].endswith("Z") for s in steps.values() for step in s)
    page = (out / "selftest-report.html").read_text()
    assert "Storage commitment (N-ACTION, N-EVENT-REPORT)" in page and "<script" not in page


def test_a_production_configuration_is_refused(tmp_path: Path) -> None:
    code, output = selftest("--out", str(tmp_path / "report"), env={"GATEWAY_DATA_DIR": str(tmp_path / "data")})
    assert code == 2, output
    assert "GATEWAY_VALIDATION__TEST_ENVIRONMENT is false" in output
    assert not (tmp_path / "report").exists()


def test_against_a_running_gateway_each_missing_capability_is_named(tmp_path: Path) -> None:
    """A site gateway validating with fi-kanta (the shipped example profile) that stores test identities but knows
    nothing of the self-test's AE: echo and store pass with the site's study code, the commitment cannot be
    reported to it (named with its setting), so the deployment test fails; without a study code the store case
    fails with the validation finding."""
    profile = Path(__file__).resolve().parents[2] / "docs" / "examples" / "fi-kanta" / "profile.yaml"
    site = {"GATEWAY_VALIDATION__TEST_ENVIRONMENT": "true", "GATEWAY_VALIDATION__DEFAULT_PROFILE": "fi-kanta",
            "GATEWAY_VALIDATION__PROFILE_FILES": orjson.dumps([str(profile)]).decode(),
            "GATEWAY_DICOM__ALLOWED_AES": '[{"ae_title":"SELFTEST","organization":"Self-test",'
                                          '"organization_oid":"1.2.246.10.99999999","permissions":["store"]}]'}
    gateway = GatewayProcess(tmp_path / "data", GATEWAY_INTERNAL__PORT=str(free_port()), GATEWAY_LOG__LEVEL="WARNING",
                             **site)
    target = {**site, "GATEWAY_DATA_DIR": str(gateway.data_dir), "GATEWAY_DICOM__PORT": str(gateway.dicom_port),
              "GATEWAY_HTTP__PORT": str(gateway.http_port)}
    try:
        gateway.wait_ready()
        out, uncoded = tmp_path / "report", tmp_path / "uncoded"
        code, output = selftest("--out", str(out), "--timeout", "30", "--procedure-code", "NA1AA^99TEST", env=target)
        uncoded_code, uncoded_output = selftest("--out", str(uncoded), "--timeout", "30", env=target)
    finally:
        gateway.stop()
    data = report(out)
    cases = {case["id"]: case for case in data["cases"]}
    assert code == 1 and data["result"] == "failed", output
    assert cases["echo"]["verdict"] == cases["store"]["verdict"] == "passed", output
    assert cases["commitment"]["verdict"] == "not run"
    assert "GATEWAY_DICOM__REMOTE_AES" in cases["commitment"]["reason"]
    assert "GATEWAY_XDS__REPOSITORY_URL" in cases["registration"]["reason"]
    assert "may not query and retrieve" in cases["find"]["reason"]
    assert cases["rejection"]["verdict"] == "passed", cases["rejection"]
    store = next(case for case in report(uncoded)["cases"] if case["id"] == "store")
    assert uncoded_code == 1 and store["verdict"] == "failed", uncoded_output
    assert "quarantined by validation: FI-STUDY-CODE-MISSING" in store["reason"]


def test_a_gateway_that_refuses_the_selftest_fails_at_once_naming_the_allow_list(tmp_path: Path) -> None:
    allowed = '[{"ae_title":"MODALITY1"}]'
    gateway = GatewayProcess(tmp_path / "data", GATEWAY_VALIDATION__TEST_ENVIRONMENT="true",
                             GATEWAY_DICOM__ALLOWED_AES=allowed, GATEWAY_LOG__LEVEL="WARNING")
    try:
        gateway.wait_ready()
        out = tmp_path / "report"
        code, output = selftest("--out", str(out), "--timeout", "10", env={
            "GATEWAY_DATA_DIR": str(gateway.data_dir), "GATEWAY_DICOM__PORT": str(gateway.dicom_port),
            "GATEWAY_HTTP__PORT": str(gateway.http_port), "GATEWAY_VALIDATION__TEST_ENVIRONMENT": "true",
            "GATEWAY_DICOM__ALLOWED_AES": allowed})
    finally:
        gateway.stop()
    cases = {case["id"]: case for case in report(out)["cases"]}
    assert code == 1, output
    assert cases["echo"]["verdict"] == "failed" and "GATEWAY_DICOM__ALLOWED_AES" in cases["echo"]["reason"]
    assert {cases[case]["verdict"] for case in ALL_CASES[1:]} == {"not run"}
    assert "failed" in (out / "selftest-report.html").read_text()


def test_a_certificate_it_cannot_read_is_named_in_one_line(tmp_path: Path) -> None:
    code, output = selftest("--out", str(tmp_path / "report"), env={
        "GATEWAY_DATA_DIR": str(tmp_path / "data"), "GATEWAY_VALIDATION__TEST_ENVIRONMENT": "true",
        "GATEWAY_DICOM__TLS__CERT_FILE": str(tmp_path / "missing.pem"),
        "GATEWAY_DICOM__TLS__KEY_FILE": str(tmp_path / "missing.key")})
    assert code == 2, output
    assert "GATEWAY_DICOM__TLS__CERT_FILE, __KEY_FILE, __CA_FILE: cannot be loaded (No such file or directory)" \
        in output
    assert "Traceback" not in output
