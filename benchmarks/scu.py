"""The benchmarks' sender: an asyncio C-STORE SCU that times every request where a modality would.

    python -m benchmarks.scu --port P --aec DICOMGW --concurrency 4 --files LIST --out RESULT.json
        [--rate N --duration S --unique --commit-every N --calling-ae AE] [--raw]

Why its own: storescu cannot time single C-STOREs without one process per file, and pynetdicom's threaded
SCU costs more CPU per instance than the fastest receivers, so it would measure itself. This one frames
PDUs (PS3.8) and codes command sets with ``struct``: its cost per instance is small and the same for every
target. Latency is from the first byte of the C-STORE-RQ written to the C-STORE-RSP read.

The files are read into memory before the clock starts. Associations take the next file from one shared
queue (a faster association sends more). ``--rate`` paces the sum of all associations (open loop, for
end-to-end runs); ``--count`` or ``--duration`` cycle through the files; ``--unique`` gives every
instance sent a fresh SOP Instance UID, and every ``--study-size`` instances fresh study and series UIDs
(each original study its own), rewritten in place at the same length, so no receiver sees a duplicate. ``--commit-every N``
asks for storage commitment (N-ACTION) of each N instances an association has sent. ``--raw`` sends the
same bytes over plain TCP with a one-byte acknowledgement per instance: the loopback ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import secrets
import struct
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import uvloop
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.dsutils import encode
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import PresentationContext

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
OWN_MAX_PDU = 262_144
FRAGMENT_CAP = 262_144
"""Largest PDU we send when the acceptor sets no limit (0)."""
RELEASE_RQ = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
EXPLICIT_UI = {name: struct.pack("<HH", group, element) + b"UI" for name, (group, element) in {
    "sop": (0x0008, 0x0018), "study": (0x0020, 0x000D), "series": (0x0020, 0x000E)}.items()}
_ELEMENT = struct.Struct("<HHI")
_PDU = struct.Struct(">BxI")
_PDV = struct.Struct(">IBB")


@dataclass(frozen=True, slots=True)
class Instance:
    sop_class: str
    transfer_syntax: str
    data: bytes
    """The data set as in the file (after the Part 10 file meta)."""
    uid_offsets: dict[str, tuple[int, int]]
    """Value offset and length of the SOP Instance, Study and Series UIDs in ``data`` (explicit VR LE)."""


def read_part10(path: Path) -> Instance:
    """The data set and the few file meta values a sender needs, without a DICOM library."""
    raw = path.read_bytes()
    if raw[128:132] != b"DICM":
        raise ValueError(f"{path}: not a DICOM Part 10 file")
    offset, meta = 132, {}
    while offset + 8 <= len(raw):
        group, element = struct.unpack_from("<HH", raw, offset)
        if group != 0x0002:
            break
        if raw[offset + 4:offset + 6] in (b"OB", b"OW", b"UN", b"UT", b"SQ", b"UC", b"UR"):
            length, start = struct.unpack_from("<I", raw, offset + 8)[0], offset + 12
        else:
            length, start = struct.unpack_from("<H", raw, offset + 6)[0], offset + 8
        meta[element] = raw[start:start + length]
        offset = start + length
    data = raw[offset:]
    offsets = {}
    for name, tag in EXPLICIT_UI.items():
        at = data.find(tag, 0, 65536)
        if at >= 0:
            offsets[name] = (at + 8, struct.unpack_from("<H", data, at + 6)[0])
    text = {key: value.rstrip(b"\x00 ").decode() for key, value in meta.items() if key in (0x02, 0x10)}
    return Instance(text[0x02], text[0x10], data, offsets)


def fresh_uid(length: int) -> str:
    """A random 2.25 UID of exactly ``length`` characters, to overwrite one in place."""
    digits = length - 5
    return f"2.25.{10 ** (digits - 1) + secrets.randbelow(9 * 10 ** (digits - 1))}"


def _element(element: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00"
    return _ELEMENT.pack(0x0000, element, len(value)) + value


def response_status(command: bytes) -> int:
    """Status (0000,0900) of a response command set."""
    offset = 0
    while offset + _ELEMENT.size <= len(command):
        _, element, length = _ELEMENT.unpack_from(command, offset)
        offset += _ELEMENT.size
        if element == 0x0900 and length == 2:
            return int(struct.unpack_from("<H", command, offset)[0])
        offset += length
    raise AssociationFailed("a response without a Status")


def command_set(*elements: tuple[int, bytes]) -> bytes:
    body = b"".join(_element(tag, value) for tag, value in elements)
    return _element(0x0000, struct.pack("<I", len(body))) + body


def c_store_rq(message_id: int, sop_class: str, sop_instance: str) -> bytes:
    us = struct.Struct("<H").pack
    return command_set((0x0002, sop_class.encode()), (0x0100, us(0x0001)), (0x0110, us(message_id)),
                       (0x0700, us(0)), (0x0800, us(0x0000)), (0x1000, sop_instance.encode()))


def n_action_rq(message_id: int) -> bytes:
    us = struct.Struct("<H").pack
    return command_set((0x0003, STORAGE_COMMITMENT_PUSH_MODEL.encode()), (0x0100, us(0x0130)),
                       (0x0110, us(message_id)), (0x0800, us(0x0000)),
                       (0x1001, STORAGE_COMMITMENT_INSTANCE.encode()), (0x1008, us(1)))


def action_information(transaction_uid: str, references: list[tuple[str, str]]) -> bytes:
    dataset = Dataset()
    dataset.TransactionUID = transaction_uid
    items = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
        items.append(item)
    dataset.ReferencedSOPSequence = items
    encoded = encode(dataset, True, True)
    assert encoded is not None
    return encoded


class AssociationFailed(Exception):
    """The acceptor rejected or aborted the association, or broke the protocol."""


class Association:
    """One association as the requestor: the few PDUs a storage SCU needs."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._contexts: dict[tuple[str, str], int] = {}
        self._fragment = FRAGMENT_CAP - 6
        self._message_id = 0

    @classmethod
    async def open(cls, host: str, port: int, calling_ae: str, called_ae: str,
                   contexts: list[tuple[str, str]]) -> Association:
        reader, writer = await asyncio.open_connection(host, port)
        association = cls(reader, writer)
        await association._associate(calling_ae, called_ae, contexts)
        return association

    async def _associate(self, calling_ae: str, called_ae: str, wanted: list[tuple[str, str]]) -> None:
        primitive = A_ASSOCIATE()
        primitive.application_context_name = APPLICATION_CONTEXT
        primitive.calling_ae_title, primitive.called_ae_title = calling_ae, called_ae
        proposed = []
        for n, (abstract, transfer) in enumerate(wanted):
            context = PresentationContext()
            context.context_id = 2 * n + 1
            context.abstract_syntax, context.transfer_syntax = abstract, [transfer]
            proposed.append(context)
        primitive.presentation_context_definition_list = proposed
        maximum = MaximumLengthNotification()
        maximum.maximum_length_received = OWN_MAX_PDU
        primitive.user_information = [maximum]
        request = A_ASSOCIATE_RQ()
        request.from_primitive(primitive)
        self._writer.write(bytes(request.encode()))
        pdu_type, body = await self._read_pdu()
        if pdu_type != 0x02:
            raise AssociationFailed(f"association {'rejected' if pdu_type == 0x03 else 'aborted'}")
        accept = A_ASSOCIATE_AC()
        accept.decode(_PDU.pack(pdu_type, len(body)) + body)
        answer = accept.to_primitive()
        for item in answer.user_information:
            if isinstance(item, MaximumLengthNotification) and item.maximum_length_received:
                self._fragment = min(item.maximum_length_received, FRAGMENT_CAP) - 6
        by_id = {context.context_id: (abstract, transfer) for context, (abstract, transfer)
                 in zip(proposed, wanted, strict=True)}
        for result in answer.presentation_context_definition_results_list:
            if result.result == 0 and result.context_id in by_id:
                self._contexts[by_id[result.context_id]] = result.context_id

    async def _read_pdu(self) -> tuple[int, bytes]:
        header = await self._reader.readexactly(6)
        pdu_type, length = _PDU.unpack(header)
        return pdu_type, await self._reader.readexactly(length)

    async def _send_message(self, context_id: int, command: bytes, data: memoryview | bytes) -> None:
        """Command in one PDU, then the data set in PDUs of the acceptor's maximum length."""
        write = self._writer.write
        write(_PDU.pack(0x04, len(command) + 6) + _PDV.pack(len(command) + 2, context_id, 0x03) + command)
        total, step = len(data), self._fragment
        for start in range(0, total, step):
            piece = data[start:start + step]
            last = 0x02 if start + step >= total else 0x00
            write(_PDU.pack(0x04, len(piece) + 6) + _PDV.pack(len(piece) + 2, context_id, last) + piece)
            await self._writer.drain()
        await self._writer.drain()

    async def _response_status(self) -> int:
        command = bytearray()
        while True:
            pdu_type, body = await self._read_pdu()
            if pdu_type != 0x04:
                raise AssociationFailed(f"PDU type 0x{pdu_type:02X} instead of a response")
            offset = 0
            while offset < len(body):
                length, _, control = _PDV.unpack_from(body, offset)
                command += body[offset + 6:offset + 4 + length]
                offset += 4 + length
                if control & 0x03 == 0x03:
                    return response_status(bytes(command))
                if not control & 0x01:
                    raise AssociationFailed("a data set in a response")

    def accepts(self, abstract: str, transfer: str) -> bool:
        return (abstract, transfer) in self._contexts

    async def c_store(self, sop_class: str, transfer: str, sop_instance: str, data: memoryview | bytes) -> int:
        self._message_id = (self._message_id + 1) & 0xFFFF
        context_id = self._contexts[(sop_class, transfer)]
        await self._send_message(context_id, c_store_rq(self._message_id, sop_class, sop_instance), data)
        return await self._response_status()

    async def n_action(self, transaction_uid: str, references: list[tuple[str, str]]) -> int:
        self._message_id = (self._message_id + 1) & 0xFFFF
        context_id = self._contexts[(STORAGE_COMMITMENT_PUSH_MODEL, IMPLICIT_VR_LITTLE_ENDIAN)]
        await self._send_message(context_id, n_action_rq(self._message_id),
                                 action_information(transaction_uid, references))
        return await self._response_status()

    async def release(self) -> None:
        self._writer.write(RELEASE_RQ)
        try:
            await self._read_pdu()
        finally:
            self._writer.close()


@dataclass
class Results:
    latency_ms: list[float] = field(default_factory=list)
    bytes_sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    stored: list[tuple[str, str, float]] = field(default_factory=list)
    """(SOP Instance UID, Study Instance UID, wall time of the C-STORE Success) with ``--record``."""
    commitments: list[tuple[str, float, int, int]] = field(default_factory=list)
    """(Transaction UID, wall time of the N-ACTION response, its status, number of references)."""
    references: dict[str, list[str]] = field(default_factory=dict)
    """Transaction UID -> the SOP Instance UIDs it asked about, with ``--record``."""


@dataclass
class Load:
    """What the associations share: the work queue, the pacing clock and the results."""

    instances: list[Instance]
    count: int
    rate: float
    duration: float
    unique: bool
    study_size: int
    started: float = 0.0
    sent: int = 0
    results: Results = field(default_factory=Results)
    _study: dict[tuple[str, str], str] = field(default_factory=dict)
    """(name, UID in the file) -> the UID it becomes in the current block: a file's study stays one study
    (one patient) and its series stays in it."""

    def work(self) -> Iterator[tuple[int, Instance, memoryview, str, str]]:
        """The next instance to send (its number, data, SOP Instance and Study UIDs) until the load is done."""
        while True:
            n = self.sent
            if self.duration:
                if time.perf_counter() - self.started >= self.duration:
                    return
            elif n >= self.count:
                return
            self.sent += 1
            instance = self.instances[n % len(self.instances)]
            yield (n, instance, *self._prepare(instance, n))

    def due(self, n: int) -> float:
        return self.started + n / self.rate if self.rate else 0.0

    def _prepare(self, instance: Instance, n: int) -> tuple[memoryview, str, str]:
        if not self.unique:
            return memoryview(instance.data), _value(instance, "sop"), _value(instance, "study")
        if n % self.study_size == 0:
            self._study = {}
        uids = {"sop": fresh_uid(len(_value(instance, "sop")))}
        for name in ("study", "series"):
            original = _value(instance, name)
            uids[name] = self._study.setdefault((name, original), fresh_uid(len(original)))
        data = bytearray(instance.data)
        for name, uid in uids.items():
            start, length = instance.uid_offsets[name]
            data[start:start + length] = uid.encode().ljust(length, b"\x00")
        return memoryview(data), uids["sop"], uids["study"]


def _value(instance: Instance, name: str) -> str:
    start, length = instance.uid_offsets[name]
    return instance.data[start:start + length].rstrip(b"\x00 ").decode()


async def dicom_association(load: Load, args: argparse.Namespace) -> None:
    contexts = sorted({(i.sop_class, i.transfer_syntax) for i in load.instances})
    if args.commit_every:
        contexts.append((STORAGE_COMMITMENT_PUSH_MODEL, IMPLICIT_VR_LITTLE_ENDIAN))
    association = await Association.open(args.host, args.port, args.calling_ae, args.aec, contexts)
    results, pending = load.results, []
    for n, instance, data, sop, study in load.work():
        await _pace(load, n)
        started = time.perf_counter()
        status = await association.c_store(instance.sop_class, instance.transfer_syntax, sop, data)
        results.latency_ms.append((time.perf_counter() - started) * 1000)
        results.statuses[status] += 1
        results.bytes_sent += len(data)
        if args.record and status == 0x0000:
            results.stored.append((sop, study, time.time()))
        if args.commit_every:
            pending.append((instance.sop_class, sop))
            if len(pending) == args.commit_every:
                await _commit(association, pending, results, args.record)
                pending = []
    if args.commit_every and pending:
        await _commit(association, pending, results, args.record)
    await association.release()


async def _commit(association: Association, references: list[tuple[str, str]], results: Results,
                  record: bool) -> None:
    transaction_uid = generate_uid()
    status = await association.n_action(transaction_uid, references)
    results.commitments.append((transaction_uid, time.time(), status, len(references)))
    if record:
        results.references[transaction_uid] = [sop for _, sop in references]


async def _pace(load: Load, n: int) -> None:
    delay = load.due(n) - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


async def raw_connection(load: Load, args: argparse.Namespace) -> None:
    """The same bytes and the same one-at-a-time exchange as a C-STORE, without DICOM: the ceiling."""
    reader, writer = await asyncio.open_connection(args.host, args.port)
    results = load.results
    for n, _, data, _, _ in load.work():
        await _pace(load, n)
        started = time.perf_counter()
        writer.write(struct.pack(">Q", len(data)))
        writer.write(data)
        await writer.drain()
        await reader.readexactly(1)
        results.latency_ms.append((time.perf_counter() - started) * 1000)
        results.statuses[0] += 1
        results.bytes_sent += len(data)
    writer.close()


async def drive(args: argparse.Namespace) -> dict[str, object]:
    paths = [Path(line) for line in Path(args.files).read_text().split()]
    load = Load([read_part10(path) for path in paths], args.count or len(paths), args.rate, args.duration,
                args.unique, args.study_size)
    connection = raw_connection if args.raw else dicom_association
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    load.started, wall = time.perf_counter(), time.time()
    outcomes = await asyncio.gather(*(connection(load, args) for _ in range(args.concurrency)),
                                    return_exceptions=True)
    elapsed = time.perf_counter() - load.started
    after = resource.getrusage(resource.RUSAGE_SELF)
    errors = [f"{type(outcome).__name__}: {outcome}" for outcome in outcomes if isinstance(outcome, BaseException)]
    results = load.results
    return {"started_wall": wall, "elapsed": elapsed, "instances": len(results.latency_ms),
            "bytes": results.bytes_sent, "statuses": {f"0x{k:04X}": v for k, v in results.statuses.items()},
            "errors": errors, "latency_ms": results.latency_ms,
            "cpu_seconds": after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime,
            "stored": results.stored, "commitments": results.commitments,
            "commitment_references": results.references}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--aec", default="ANY-SCP", help="called AE title")
    parser.add_argument("--calling-ae", default="BENCHSCU")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--files", required=True, help="a file listing the DICOM files, one per line")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=0, help="instances to send, cycling through the files; "
                        "0: each file once")
    parser.add_argument("--rate", type=float, default=0.0, help="instances/s over all associations; 0: flat out")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds to keep sending; 0: each file once")
    parser.add_argument("--unique", action="store_true", help="fresh UIDs for every instance sent")
    parser.add_argument("--study-size", type=int, default=100)
    parser.add_argument("--record", action="store_true",
                        help="keep the UIDs and Success times of every instance, and each commitment's references")
    parser.add_argument("--commit-every", type=int, default=0)
    parser.add_argument("--raw", action="store_true", help="plain TCP to benchmarks.peers.tcp_sink")
    args = parser.parse_args()
    result = uvloop.run(drive(args))
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
