"""The assembler hands out whole instances only, and never lets a commit pass an unfinished one."""

from __future__ import annotations

from dataclasses import asdict

from gateway.bus import Record
from gateway.core import envelope
from gateway.core.envelope import InstanceEnvelope, InstanceHeader
from workers.consume import InstanceAssembler

HEADER = InstanceHeader(
    instance_id="i1", correlation_id="a-1", sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid="1.2.3.1",
    study_instance_uid="1.2.3", series_instance_uid="1.2.3.4", patient_id="", issuer_of_patient_id="",
    accession_number="", modality="CT", study_date="", study_time="", transfer_syntax_uid="1.2.840.10008.1.2.1",
    calling_ae="CT1", called_ae="DICOMGW", peer="127.0.0.1:1", organization="", organization_oid="",
    received_at="2026-01-01T00:00:00+00:00",
)


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    async def begin(self, header: InstanceHeader) -> None:
        self.events.append(("begin", header.instance_id))

    async def data(self, instance_id: str, data: bytes) -> None:
        self.events.append(("data", instance_id, data.decode()))

    async def end(self, instance: InstanceEnvelope, data: bytes, records: list[Record]) -> None:
        self.events.append(("end", instance.instance_id, data.decode(), str(len(records))))

    async def discard(self, instance_id: str, reason: str) -> None:
        self.events.append(("discard", instance_id))

    async def broken(self, instance_id: str, reason: str, records: list[Record]) -> None:
        self.events.append(("broken", instance_id, reason, ",".join(str(r.offset) for r in records)))


def header_for(instance_id: str) -> InstanceHeader:
    return InstanceHeader(**{**asdict(HEADER), "instance_id": instance_id})


def chunk(offset: int, instance_id: str, sequence: int, data: str, ts: int = 1000) -> Record:
    headers = [(envelope.KIND, envelope.CHUNK), (envelope.INSTANCE, instance_id.encode()),
               (envelope.SEQUENCE, str(sequence).encode())]
    if sequence == 0:
        headers.append((envelope.BEGIN, header_for(instance_id).to_json()))
    return Record("t", 0, offset, b"1.2.3", data.encode(), tuple(headers), ts)


def end(offset: int, instance_id: str, sequence: int, data: str, ts: int = 1000) -> Record:
    whole = InstanceEnvelope(**asdict(header_for(instance_id)), size=1, sha256="", chunks=sequence + 1)
    headers = ((envelope.KIND, envelope.END), (envelope.INSTANCE, instance_id.encode()),
               (envelope.SEQUENCE, str(sequence).encode()), (envelope.ENVELOPE, whole.to_json()))
    return Record("t", 0, offset, b"1.2.3", data.encode(), headers, ts)


def abort(offset: int, instance_id: str, sequence: int) -> Record:
    headers = ((envelope.KIND, envelope.ABORT), (envelope.INSTANCE, instance_id.encode()),
               (envelope.SEQUENCE, str(sequence).encode()))
    return Record("t", 0, offset, b"1.2.3", b"gone", headers, 1000)


async def feed(records: list[Record], orphan_timeout_ms: int = 60_000) -> tuple[Sink, list[int]]:
    sink, done = Sink(), []
    assembler = InstanceAssembler(sink, lambda record: done.append(record.offset), orphan_timeout_ms)
    for record in records:
        await assembler.feed(record)
    return sink, sorted(done)


async def test_interleaved_instances_come_out_whole_and_in_order() -> None:
    sink, done = await feed([chunk(0, "a", 0, "a0"), chunk(1, "b", 0, "b0"), end(2, "a", 1, "a1"),
                             chunk(3, "b", 1, "b1"), end(4, "b", 2, "b2")])
    assert [e for e in sink.events if e[1] == "a"] == [("begin", "a"), ("data", "a", "a0"), ("end", "a", "a1", "2")]
    assert [e for e in sink.events if e[1] == "b"][-1] == ("end", "b", "b2", "3")
    assert done == [0, 1, 2, 3, 4]


async def test_unfinished_instance_holds_back_its_records() -> None:
    sink, done = await feed([chunk(0, "a", 0, "a0"), end(1, "b", 0, "b0"), chunk(2, "a", 1, "a1")])
    assert done == [1]  # a commit stops before offset 0: a restart sees instance a from its first chunk
    assert ("end", "b", "b0", "1") in sink.events


async def test_aborted_instance_is_discarded() -> None:
    sink, done = await feed([chunk(0, "a", 0, "a0"), abort(1, "a", 1)])
    assert sink.events[-1] == ("discard", "a") and done == [0, 1]


async def test_run_missing_its_start_goes_to_the_dead_letters_whole() -> None:
    sink, done = await feed([chunk(5, "a", 3, "a3"), end(6, "a", 4, "a4")])
    assert not [e for e in sink.events if e[0] in ("begin", "end")] and done == [5, 6]
    assert sink.events[-1] == ("broken", "a", "its first records are missing from the bus", "5,6")


async def test_unreadable_envelope_is_a_broken_run_not_a_crash() -> None:
    bad = Record("t", 0, 1, b"1.2.3", b"a1", ((envelope.KIND, envelope.END), (envelope.INSTANCE, b"a"),
                                              (envelope.SEQUENCE, b"1"), (envelope.ENVELOPE, b"{not json")), 1000)
    sink, done = await feed([chunk(0, "a", 0, "a0"), bad])
    assert sink.events[-1][:2] == ("broken", "a") and done == [0, 1]


async def test_orphan_is_discarded_when_later_records_show_it_stalled() -> None:
    sink, done = await feed([chunk(0, "a", 0, "a0", ts=1000), end(1, "b", 0, "b0", ts=1000 + 61_000)])
    assert ("discard", "a") in sink.events and done == [0, 1]


async def test_redelivered_run_starts_over() -> None:
    sink, done = await feed([chunk(0, "a", 0, "a0"), chunk(0, "a", 0, "a0"), end(1, "a", 1, "a1")])
    assert sink.events == [("begin", "a"), ("data", "a", "a0"), ("discard", "a"), ("begin", "a"),
                           ("data", "a", "a0"), ("end", "a", "a1", "2")]
