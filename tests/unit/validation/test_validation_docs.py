"""docs/validation-rules.md documents every rule code at its default severity."""

from __future__ import annotations

import re
from pathlib import Path

from workers.validation import RULES
from workers.validation.consistency import CODE as CONSISTENCY_CODE
from workers.validation.engine import needs_source

DOC = Path(__file__).resolve().parents[3] / "docs" / "validation-rules.md"


def test_rule_table_matches_the_registry() -> None:
    rows = re.findall(r"^\| `([A-Z0-9-]+)` \| (error|warning) \|", DOC.read_text(encoding="utf-8"), re.MULTILINE)
    documented = dict(rows)
    assert len(documented) == len(rows)
    assert documented == {CONSISTENCY_CODE: "error", **{code: rule.severity.value for code, rule in RULES.items()}}


def test_rules_skipped_offline_are_marked() -> None:
    marked = re.findall(r"^\| `([A-Z0-9-]+)` \|.*Needs the sender", DOC.read_text(encoding="utf-8"), re.MULTILINE)
    assert set(marked) == {code for code, rule in RULES.items() if needs_source(rule)}
