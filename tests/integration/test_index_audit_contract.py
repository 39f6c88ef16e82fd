"""The local audit log (``AuditLog``), against SQLite and PostgreSQL alike: a record is kept once however often it is
delivered, a patient's entries come back in time order within the period asked, a disclosure says to whom, and
the retention purge drops only what is older."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from gateway.core import audit
from gateway.core.audit import AuditRecord
from gateway.index import Index
from tests.integration.test_index_contract import index, new_uid, postgres_url, store

__all__ = ["index", "postgres_url", "store"]


def transferred(patient: str, at: datetime, recipient: str = "", instances: int = 3) -> AuditRecord:
    return AuditRecord(
        audit.Event.INSTANCES_TRANSFERRED, audit.Outcome.SUCCESS,
        (audit.peer("VIEWER", "10.1.2.3", audit.Role.DESTINATION), audit.this_gateway("DICOMGW", audit.Role.SOURCE)),
        audit.Interface.C_MOVE, audit.Action.READ, patient=audit.Patient(patient, "1.2.246.21"),
        studies=(audit.Study(new_uid(), (("1.2.840.10008.5.1.4.1.1.2", instances),)),), recipient=recipient, at=at)


async def test_a_record_is_kept_once_and_found_by_its_patient_in_time_order(index: Index) -> None:
    patient, other = f"P{new_uid()[-8:]}", f"P{new_uid()[-8:]}"
    now = datetime.now(UTC)
    later = transferred(patient, now, recipient="VIEWER")
    earlier = transferred(patient, now - timedelta(hours=1))
    await index.log_audit([later, earlier, transferred(other, now)])
    await index.log_audit([later])  # delivered again after a crash: still one entry

    entries = await index.audit_entries(patient, 0, time.time() + 10, 100)

    assert [e.record_id for e in entries] == [earlier.id, later.id]
    shown = entries[1]
    assert (shown.event, shown.event_code, shown.action, shown.interface) == (
        "DICOM Instances Transferred", "110104", "R", "DICOM C-MOVE")
    assert (shown.actor, shown.actor_host, shown.recipient, shown.disclosure) == ("VIEWER", "10.1.2.3", "VIEWER", True)
    assert shown.studies == (later.studies[0].uid,) and shown.instances == 3
    assert entries[0].disclosure is False and shown.issuer_of_patient_id == "1.2.246.21"


async def test_the_period_bounds_the_entries_and_everyone_s_come_newest_first(index: Index) -> None:
    patient = f"P{new_uid()[-8:]}"
    base = datetime(2026, 3, 1, tzinfo=UTC)
    records = [transferred(patient, base + timedelta(days=day)) for day in range(4)]
    await index.log_audit(records)

    within = await index.audit_entries(patient, (base + timedelta(days=1)).timestamp(),
                                       (base + timedelta(days=3)).timestamp(), 100)
    everyone = await index.audit_entries("", base.timestamp(), (base + timedelta(days=4)).timestamp(), 2)

    assert [e.record_id for e in within] == [records[1].id, records[2].id]
    assert [e.record_id for e in everyone] == [records[3].id, records[2].id]


async def test_records_without_a_patient_are_kept_and_the_purge_drops_only_older_ones(index: Index) -> None:
    old = datetime(2001, 1, 1, tzinfo=UTC)
    alert = AuditRecord(audit.Event.SECURITY_ALERT, audit.Outcome.MINOR_FAILURE,
                        (audit.peer("STRANGER", "10.9.9.9", audit.Role.SOURCE),), audit.Interface.DICOM,
                        audit.Action.EXECUTE, (audit.EventType.ASSOCIATION_REFUSED,),
                        outcome_text="association rejected: calling AE not allowed", at=old)
    patient = f"P{new_uid()[-8:]}"
    kept = transferred(patient, datetime.now(UTC))
    aged = transferred(patient, old)
    await index.log_audit([alert, kept, aged])

    before = await index.audit_entries("", old.timestamp(), old.timestamp() + 1, 100)
    await index.purge_audit(datetime(2002, 1, 1, tzinfo=UTC).timestamp())

    assert {e.record_id for e in before} >= {alert.id, aged.id}
    assert next(e for e in before if e.record_id == alert.id).outcome_text.startswith("association rejected")
    assert await index.audit_entries("", old.timestamp(), old.timestamp() + 1, 100) == []
    assert [e.record_id for e in await index.audit_entries(patient, 0, time.time() + 10, 100)] == [kept.id]


async def test_a_nul_sent_in_an_identifier_is_logged_not_refused(index: Index) -> None:
    """PostgreSQL cannot hold a NUL in text; the audit log must still record who sent such an identifier."""
    record = transferred("P\x00NUL", datetime.now(UTC))
    await index.log_audit([record])
    [entry] = await index.audit_entries("P\ufffdNUL", 0, time.time() + 10, 10)
    assert entry.record_id == record.id
