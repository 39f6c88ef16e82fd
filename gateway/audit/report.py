"""The report a patient's information request needs (law 703/2023 section 11: who processed their data, to whom it
was disclosed, when and how), from the local audit log's entries: ``dicom-gateway audit export``."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.index.audit_log import AuditEntry

FORMATS = ("text", "json", "csv")
_COLUMNS = ("at", "event", "action", "outcome", "interface", "actor", "actor_host", "recipient", "disclosure",
            "studies", "instances", "outcome_text")


def report(entries: list[AuditEntry], patient_id: str, since: float, until: float, style: str) -> str:
    if style == "json":
        return orjson.dumps({"patient_id": patient_id, "from": _iso(since), "to": _iso(until),
                             "generated_at": datetime.now(UTC).isoformat(), "entries": [_row(e) for e in entries],
                             "disclosures": sum(e.disclosure for e in entries)},
                            option=orjson.OPT_INDENT_2).decode()
    if style == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, _COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for entry in entries:
            writer.writerow({**_row(entry), "studies": " ".join(entry.studies)})
        return out.getvalue()
    lines = [f"Processing of the data of patient {patient_id}, {_iso(since)} to {_iso(until)}",
             f"{len(entries)} entries, {sum(e.disclosure for e in entries)} disclosures", ""]
    for entry in entries:
        whom = f" to {entry.recipient}" if entry.recipient else ""
        outcome = "" if entry.outcome == "0" else f" [failed: {entry.outcome_text or entry.outcome}]"
        lines.append(f"{_iso(entry.at)}  {entry.event} ({entry.interface}) by {entry.actor or '-'}"
                     f"{' at ' + entry.actor_host if entry.actor_host else ''}{whom}"
                     f"{'  DISCLOSURE' if entry.disclosure else ''}{outcome}")
        if entry.studies:
            lines.append(f"    studies: {', '.join(entry.studies)}"
                         + (f" ({entry.instances} instances)" if entry.instances else ""))
    return "\n".join(lines) + "\n"


def _row(entry: AuditEntry) -> dict[str, Any]:
    row = entry.as_json()
    row["at"] = _iso(entry.at)
    return row


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
