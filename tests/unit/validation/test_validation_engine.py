"""A profile run: coercion for the calling AE first, then the profile's rules at the severities it sets."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydicom.dataset import Dataset

from workers.validation import RULES, Profile, ProfileRegistry, Severity, SourceContext, validate
from workers.validation.engine import needs_source

Put = Callable[[Dataset, str, Any], None]
SOURCE = SourceContext("CT01", "Turun kaupunki", "1.2.246.10.2048198")
SITE = """
name: fi-kanta
extends: fi-kanta
parameters: {procedure_codes: [GD1AA]}
rules:
  DICOM-TYPE2-MISSING: {severity: error}
coercion:
  by_calling_ae:
    OLD_CT: {issuer_of_patient_id: if_missing}
"""


@pytest.fixture
def kanta(tmp_path: Path) -> Profile:
    path = tmp_path / "site.yaml"
    path.write_text(SITE, encoding="utf-8")
    return ProfileRegistry.load([path]).get("fi-kanta")


def test_conforming_header_passes(header: Dataset, kanta: Profile) -> None:
    result = validate(header, kanta, SOURCE)
    assert (result.findings, result.changes, result.has_errors) == ((), (), False)


def test_coercion_runs_before_the_rules_for_its_calling_ae_only(header: Dataset, kanta: Profile) -> None:
    del header.IssuerOfPatientID, header.IssuerOfPatientIDQualifiersSequence
    before = copy.deepcopy(header)
    coerced = validate(header, kanta, SourceContext("OLD_CT", SOURCE.organization, SOURCE.organization_oid))
    assert coerced.findings == () and len(coerced.changes) == 3
    assert header == before
    plain = validate(header, kanta, SOURCE)
    assert [f.code for f in plain.findings] == ["FI-ISSUER-MISSING"] and plain.has_errors


def test_profile_severity_is_the_one_in_effect(header: Dataset, kanta: Profile) -> None:
    del header.StudyID
    [finding] = validate(header, kanta, SOURCE).findings
    assert (finding.code, finding.severity) == ("DICOM-TYPE2-MISSING", Severity.ERROR)


def test_warnings_alone_are_not_errors(header: Dataset) -> None:
    del header.StudyID
    result = validate(header, ProfileRegistry.load().get("dicom-basic"), SOURCE)
    assert [f.severity for f in result.findings] == [Severity.WARNING] and not result.has_errors


def test_result_serialises_without_patient_data(header: Dataset, kanta: Profile, put: Put) -> None:
    header.PatientID = "131052-308U"
    put(header, "PatientBirthDate", "19521313")
    result = validate(header, kanta, SOURCE)
    document = orjson.dumps(result.to_dict()).decode()
    assert {f["code"] for f in orjson.loads(document)["findings"]} == {"FI-HETU-CHECKSUM", "DICOM-VR-DA"}
    assert "131052" not in document and "Meik" not in document and "1952" not in document


def test_rules_judging_the_sender_are_skipped_when_it_is_unknown(header: Dataset, kanta: Profile) -> None:
    result = validate(header, kanta, SourceContext.unknown())
    assert (result.findings, result.skipped) == ((), ("FI-TEMP-ID-ORG", "FI-SOURCE-UNKNOWN"))
    assert result.to_dict()["skipped"] == ["FI-TEMP-ID-ORG", "FI-SOURCE-UNKNOWN"] and not result.has_errors


def test_a_known_source_runs_every_rule(header: Dataset, kanta: Profile) -> None:
    assert validate(header, kanta, SOURCE).skipped == ()
    unconfigured = validate(header, kanta, SourceContext(""))  # the gateway's view of an AE without organisation
    assert [f.code for f in unconfigured.findings] == ["FI-SOURCE-UNKNOWN"] and unconfigured.skipped == ()


def test_only_rules_judging_the_sender_need_it() -> None:
    assert {code for code, rule in RULES.items() if needs_source(rule)} == {"FI-SOURCE-UNKNOWN", "FI-TEMP-ID-ORG"}


def test_basic_profile_skips_nothing(header: Dataset) -> None:
    result = validate(header, ProfileRegistry.load().get("dicom-basic"), SourceContext.unknown())
    assert (result.findings, result.skipped) == ((), ())
