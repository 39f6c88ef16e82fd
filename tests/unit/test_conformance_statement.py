"""The conformance statement says what the receiver does: its generated tables match the code."""

from __future__ import annotations

from pathlib import Path

from gateway.ingest import conformance
from gateway.ingest.cstore import all_transfer_syntaxes, storage_sop_classes

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_statement_is_up_to_date() -> None:
    assert conformance.main(["--check"]) == 0, "run: python -m gateway.ingest.conformance"


def test_every_accepted_class_and_syntax_is_in_the_statement() -> None:
    text = conformance.STATEMENT.read_text(encoding="utf-8")
    missing = [uid for uid in (*storage_sop_classes(), *all_transfer_syntaxes()) if f"`{uid}`" not in text]
    assert not missing


def test_a_stale_table_is_found(tmp_path: Path) -> None:
    stale = tmp_path / "statement.md"
    text = conformance.STATEMENT.read_text(encoding="utf-8")
    stale.write_text(text.replace(f"`{storage_sop_classes()[0]}`", "`1.2.3`"), encoding="utf-8")
    assert conformance.main(["--check", str(stale)]) == 1
    assert conformance.main([str(stale)]) == 0 and stale.read_text(encoding="utf-8") == text


def test_the_readme_links_the_statement() -> None:
    assert "docs/conformance-statement.md" in README.read_text(encoding="utf-8")
