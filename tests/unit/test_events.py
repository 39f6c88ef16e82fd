"""The events topic's codec: every type round-trips; what an older or newer gateway wrote is handled."""

from __future__ import annotations

import orjson
import pytest

from gateway.core import events
from gateway.core.events import (
    CommitmentReported,
    CommitmentRequested,
    InstanceStored,
    StudyRegistered,
    StudyStable,
)

EXAMPLES = [
    InstanceStored(outcome="inserted", sop_instance_uid="1.2.3.4", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                   study_instance_uid="1.2.3", series_instance_uid="1.2.3.1", status="stored", version=1,
                   instance_id="ab", storage_key="studies/k.dcm", size=10, sha256="0" * 64, source_ae="CT1",
                   stored_at="2026-11-30T08:00:00+00:00", source={"topic": "t", "partition": 0, "offsets": [1, 2]}),
    CommitmentRequested(transaction_uid="1.2.9", requester_ae="CT1", called_ae="DICOMGW", peer="10.0.0.1:104",
                        references=(("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4"),), requested_at="2026-11-30T08:00:00"),
    StudyStable(study_instance_uid="1.2.3", generation=2, stable_at=1764489600.5),
    StudyRegistered(study_instance_uid="1.2.3", generation=2, document_unique_id="1.2.5", entry_uuid="urn:uuid:x"),
    CommitmentReported(transaction_uid="1.2.10", reporter_ae="KANTA", event_type=2,
                       committed=(("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4"),),
                       failed=(("1.2.840.10008.5.1.4.1.1.2", "1.2.3.5", 0x0112),), reported_at="2026-11-30T08:00:00",
                       retrieve_ae_title="KANTA"),
]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.TYPE)
def test_every_event_round_trips_with_its_type_and_version(event: events.Event) -> None:
    encoded = orjson.loads(events.encode(event))
    assert encoded["type"] == event.TYPE and encoded["v"] == 1
    assert events.decode(events.encode(event)) == event


def test_records_written_before_versioning_are_version_1_and_extra_fields_are_ignored() -> None:
    record = {"type": "study.stable", "study_instance_uid": "1.2.3", "generation": 1, "stable_at": 5,
              "added_by_a_newer_minor": "x"}
    assert events.decode(orjson.dumps(record)) == StudyStable(study_instance_uid="1.2.3", generation=1, stable_at=5.0)


def test_the_record_key_keeps_an_entitys_events_on_one_partition() -> None:
    assert EXAMPLES[0].key == b"1.2.3" and EXAMPLES[1].key == b"1.2.9"


@pytest.mark.parametrize(("record", "reason"), [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"type": "patient.teleported", "v": 1}', "unknown event type 'patient.teleported'"),
    (b'{"type": "study.stable", "v": 2, "study_instance_uid": "1", "generation": 1, "stable_at": 1}',
     "study.stable version 2 is not one this gateway knows"),
    (b'{"type": "study.stable", "v": 1, "generation": 1, "stable_at": 1}', "study.stable without study_instance_uid"),
    (b'{"type": "study.stable", "study_instance_uid": 7, "generation": 1, "stable_at": 1}',
     "field study_instance_uid is not a str"),
    (b'{"type": "commitment.requested", "transaction_uid": "1", "requester_ae": "A", "called_ae": "B", "peer": "p",'
     b' "references": [["only-one"]], "requested_at": "t"}', "field references is not a"),
    (b'{"type": "commitment.reported", "transaction_uid": "1", "reporter_ae": "A", "event_type": 2, "committed": [],'
     b' "failed": [["1.2", "1.3", "0x0112"]], "reported_at": "t"}', "field failed is not a"),
], ids=["not-json", "not-object", "unknown-type", "newer-version", "missing-field", "wrong-type", "bad-references",
        "bad-failure-reason"])
def test_what_cannot_be_acted_on_is_refused_as_permanent_with_its_reason(record: bytes, reason: str) -> None:
    with pytest.raises(events.UndecodableEvent, match=reason) as refused:
        events.decode(record)
    assert refused.value.retriable is False
