from __future__ import annotations

from gateway.bus import OffsetTracker, Record


def record(offset: int, partition: int = 0) -> Record:
    return Record("t", partition, offset, b"k", b"v", (), 0)


def test_commit_stops_at_the_first_unfinished_record() -> None:
    tracker = OffsetTracker()
    for offset in (10, 11, 12, 15):  # offsets may skip (Kafka control records)
        tracker.fetched(record(offset))
    tracker.done(record(11))
    assert tracker.take_committable() == {}
    tracker.done(record(10))
    tracker.done(record(15))
    assert tracker.take_committable() == {("t", 0): 12}
    assert tracker.take_committable() == {}
    tracker.done(record(12))
    assert tracker.take_committable() == {("t", 0): 16}


def test_forgotten_partitions_commit_nothing() -> None:
    tracker = OffsetTracker()
    tracker.fetched(record(0, partition=1))
    tracker.fetched(record(0, partition=2))
    tracker.forget({("t", 1)})
    tracker.done(record(0, partition=1))
    tracker.done(record(0, partition=2))
    assert tracker.take_committable() == {("t", 2): 1}
