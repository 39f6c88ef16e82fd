"""Audit records on their topic: what a role writes is what the audit role reads, whatever the values hold, and a
record that is not one is refused as undecodable (dead-lettered), not retried."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core import audit
from gateway.core.audit import AuditRecord, UndecodableAudit, decode, encode, instant
from gateway.core.events import UndecodableEvent

TEXT = st.text(max_size=40)
CODES = [audit.Event.QUERY, audit.Event.EXPORT, audit.EventType.ITI_41, audit.Role.SOURCE]


@st.composite
def records(draw: st.DrawFn) -> AuditRecord:
    return AuditRecord(
        draw(st.sampled_from(CODES)), draw(st.sampled_from(list(audit.Outcome))),
        tuple(audit.Participant(draw(TEXT), draw(st.booleans()), draw(st.none() | st.sampled_from(CODES)),
                                draw(TEXT), draw(TEXT), draw(TEXT)) for _ in range(draw(st.integers(1, 3)))),
        draw(st.sampled_from(list(audit.Interface))), draw(st.none() | st.sampled_from(list(audit.Action))),
        tuple(draw(st.lists(st.sampled_from(CODES), max_size=2))),
        draw(st.none() | st.builds(audit.Patient, TEXT, TEXT, TEXT)),
        tuple(audit.Study(draw(TEXT), tuple(draw(st.lists(st.tuples(TEXT, st.integers(0, 10_000)), max_size=3))),
                          draw(TEXT)) for _ in range(draw(st.integers(0, 2)))),
        draw(st.none() | st.builds(audit.Query, st.binary(max_size=64), TEXT, TEXT, TEXT, TEXT)),
        draw(TEXT), tuple(draw(st.lists(st.builds(audit.Detail, TEXT, st.binary(max_size=64)), max_size=2))),
        draw(TEXT), draw(TEXT),
        draw(st.datetimes(timezones=st.just(UTC))), draw(TEXT), draw(TEXT), draw(TEXT))


@settings(max_examples=200, derandomize=True, database=None)
@given(records())
def test_a_record_reads_back_as_written(record: AuditRecord) -> None:
    assert decode(encode(record)) == record


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b'{"event": {"code": "1"}}',
                                  b'{"event": {"code": "1", "scheme": "DCM", "meaning": "x"}, "outcome": "99", '
                                  b'"participants": [], "interface": "DICOM C-STORE", "at": "2026-01-01T00:00:00Z", '
                                  b'"id": "x"}'])
def test_what_is_not_a_record_is_undecodable_and_so_dead_lettered(data: bytes) -> None:
    with pytest.raises(UndecodableAudit) as raised:
        decode(data)
    assert isinstance(raised.value, UndecodableEvent)


def test_a_disclosure_is_data_about_a_patient_that_went_to_someone() -> None:
    base = AuditRecord(audit.Event.INSTANCES_TRANSFERRED, audit.Outcome.SUCCESS,
                       (audit.peer("VIEWER", "10.0.0.1", audit.Role.DESTINATION),), audit.Interface.C_MOVE)
    assert not base.disclosure
    assert not replace(base, recipient="VIEWER").disclosure
    assert replace(base, recipient="VIEWER", patient=audit.Patient("010101-123N")).disclosure


def test_the_log_s_period_takes_dates_times_and_offsets() -> None:
    assert instant("", 5.0) == 5.0 and instant(None, 7.0) == 7.0
    assert instant("2026-01-01", 0) == datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    helsinki = timezone(timedelta(hours=2))
    assert instant("2026-01-01T12:00:00+02:00", 0) == datetime(2026, 1, 1, 12, tzinfo=helsinki).timestamp()
    with pytest.raises(ValueError, match="not an ISO 8601"):
        instant("yesterday", 0)



def test_receipts_of_one_study_and_sender_are_merged_and_nothing_else_is() -> None:
    modality = (audit.peer("MODALITY1", "10.0.0.5", audit.Role.SOURCE),
                audit.Participant("DICOMGW", False, audit.Role.DESTINATION))
    patient = audit.Patient("010101-123N", "1.2.246.21")

    def receipt(study: str, classes: tuple[tuple[str, int], ...], sender: tuple[audit.Participant, ...] = modality,
                action: audit.Action = audit.Action.CREATE) -> AuditRecord:
        return AuditRecord(audit.Event.INSTANCES_TRANSFERRED, audit.Outcome.SUCCESS, sender, audit.Interface.C_STORE,
                           action, patient=patient, studies=(audit.Study(study, classes),))

    ct, mr = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"
    first = receipt("1.2.3", ((ct, 2),))
    query = AuditRecord(audit.Event.QUERY, audit.Outcome.SUCCESS, modality, audit.Interface.C_FIND)
    other_study = receipt("1.2.4", ((ct, 1),))
    other_sender = receipt("1.2.3", ((ct, 1),), (audit.peer("PACS", "10.0.0.6", audit.Role.SOURCE),))
    updated = receipt("1.2.3", ((ct, 1),), action=audit.Action.UPDATE)
    disclosed = replace(receipt("1.2.3", ((ct, 5),)), recipient="VIEWER", interface=audit.Interface.C_GET)

    out = audit.merged([first, query, receipt("1.2.3", ((ct, 3), (mr, 1))), other_study, other_sender,
                        receipt("1.2.3", ((mr, 2),)), updated, disclosed])

    assert [record.id for record in out] == [first.id, query.id, other_study.id, other_sender.id, updated.id,
                                             disclosed.id]
    assert out[0].studies[0].sop_classes == ((ct, 5), (mr, 3)) and out[0].at == first.at
    assert out[2:] == [other_study, other_sender, updated, disclosed]
