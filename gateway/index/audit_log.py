"""The local audit log (migration 0011), once for both dialects: every audit record, searchable by patient and time.

The audit role writes each record it consumes here (a record consumed again is kept once, by its id); operators
read it through ``GET /api/audit`` and ``dicom-gateway audit export``, which answer a patient's request to know
who processed their data and to whom it was disclosed. Entries older than the retention are purged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.core.audit import AuditRecord
from gateway.index.patients import Plan

_INSERT = """INSERT INTO audit_log (record_id, at, event_code, event, action, outcome, outcome_text, interface,
    patient_id, issuer_of_patient_id, studies, instances, actor, actor_host, recipient, disclosure)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) ON CONFLICT (record_id) DO NOTHING"""
_COLUMNS = """record_id, at, event_code, event, action, outcome, outcome_text, interface, patient_id,
    issuer_of_patient_id, studies, instances, actor, actor_host, recipient, disclosure"""
_BY_PATIENT = f"""SELECT {_COLUMNS} FROM audit_log WHERE patient_id = $1 AND at >= $2 AND at < $3
ORDER BY at, record_id LIMIT $4"""
_ALL = f"SELECT {_COLUMNS} FROM audit_log WHERE at >= $1 AND at < $2 ORDER BY at DESC, record_id LIMIT $3"
_PURGE = "DELETE FROM audit_log WHERE at < $1"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    record_id: str
    at: float
    event_code: str
    event: str
    action: str
    outcome: str
    outcome_text: str
    interface: str
    patient_id: str
    issuer_of_patient_id: str
    studies: tuple[str, ...]
    instances: int
    actor: str
    """Who asked: the requesting participants' user IDs (AE titles, users)."""
    actor_host: str
    recipient: str
    disclosure: bool

    def as_json(self) -> dict[str, Any]:
        return {"record_id": self.record_id, "at": self.at, "event": self.event, "event_code": self.event_code,
                "action": self.action, "outcome": self.outcome, "outcome_text": self.outcome_text,
                "interface": self.interface, "patient_id": self.patient_id,
                "issuer_of_patient_id": self.issuer_of_patient_id, "studies": list(self.studies),
                "instances": self.instances, "actor": self.actor, "actor_host": self.actor_host,
                "recipient": self.recipient, "disclosure": self.disclosure}


def entry_of(record: AuditRecord) -> tuple[Any, ...]:
    """The row of a record. Text comes from peers: a NUL, which PostgreSQL cannot hold (an identifier sent with
    one is what the audit log must record most of all), is kept as U+FFFD."""
    requestors = [p for p in record.participants if p.requestor] or list(record.participants[:1])
    patient = record.patient
    return tuple(value.replace("\x00", "\ufffd") if isinstance(value, str) else value for value in (
        record.id, record.at.timestamp(), record.event.code, record.event.meaning,
        record.action.value if record.action else "", record.outcome.value, record.outcome_text,
        record.interface.value, patient.id if patient else "", patient.issuer if patient else "",
        orjson.dumps([s.uid for s in record.studies]).decode(),
        sum(n for study in record.studies for _, n in study.sop_classes),
        ", ".join(p.user_id for p in requestors), ", ".join(p.host for p in requestors if p.host),
        record.recipient, record.disclosure))


def _entry(row: tuple[Any, ...]) -> AuditEntry:
    (record_id, at, code, event, action, outcome, text, interface, patient, issuer, studies, instances, actor,
     host, recipient, disclosure) = row
    return AuditEntry(record_id, float(at), code, event, action, outcome, text, interface, patient, issuer,
                      tuple(orjson.loads(studies)), int(instances), actor, host, recipient, bool(disclosure))


def _log(records: Sequence[AuditRecord]) -> Plan[int]:
    for record in records:
        yield _INSERT, entry_of(record)
    return len(records)


class AuditLogQueries:
    """The ``AuditLog`` port for an adapter that runs plans (``_run_plan``) and reads (``_select_rows``)."""

    async def _run_plan(self, plan: Plan[Any], commit: bool) -> Any:
        raise NotImplementedError

    async def _select_rows(self, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def log_audit(self, records: Sequence[AuditRecord]) -> None:
        """Keep the records, in one transaction; those kept before stay as they are."""
        if records:
            await self._run_plan(_log(records), commit=True)

    async def audit_entries(self, patient_id: str, since: float, until: float, limit: int) -> list[AuditEntry]:
        """A patient's entries in time order, or everyone's newest first (``patient_id`` empty)."""
        if patient_id:
            rows = await self._select_rows(_BY_PATIENT, (patient_id, since, until, limit))
        else:
            rows = await self._select_rows(_ALL, (since, until, limit))
        return [_entry(row) for row in rows]

    async def purge_audit(self, before: float) -> None:
        """Drop the entries older than the retention."""
        await self._run_plan(_purge(before), commit=True)


def _purge(before: float) -> Plan[None]:
    yield _PURGE, (before,)
