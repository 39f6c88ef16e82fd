"""Test helpers: read instances back from the bus, find the data set bytes of a Part 10 file, free ports."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import PresentationContext

from gateway.bus import Bus
from gateway.core import envelope
from gateway.core.envelope import InstanceEnvelope, InstanceHeader


def api_headers(data_dir: Path) -> dict[str, str]:
    """The bearer header of the admin token the gateway generates into its data directory at first start."""
    return {"Authorization": f"Bearer {(data_dir / 'api-token').read_text().strip()}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dataset_bytes(path: Path) -> bytes:
    """The data set of a Part 10 file as a sender puts it on the wire: everything after the file meta."""
    data = path.read_bytes()
    position = 132 if data[128:132] == b"DICM" else 0
    while position + 8 <= len(data):
        group, _ = struct.unpack_from("<HH", data, position)
        if group != 0x0002:
            break
        if data[position + 4 : position + 6] in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            position += 12 + struct.unpack_from("<I", data, position + 8)[0]
        else:
            position += 8 + struct.unpack_from("<H", data, position + 6)[0]
    return data[position:]


@dataclass
class BusContents:
    complete: dict[str, tuple[InstanceEnvelope, bytes]] = field(default_factory=dict)
    """SOP Instance UID -> (envelope, data set bytes) of instances whose end record arrived (the last one)."""
    received: list[tuple[InstanceEnvelope, bytes]] = field(default_factory=list)
    """Every complete instance in bus order, including several with one SOP Instance UID."""
    partial: set[str] = field(default_factory=set)
    """Instance ids with chunks but no end record."""
    aborted: set[str] = field(default_factory=set)


async def read_instances(bus: Bus, topic: str, group: str, idle: float = 1.0) -> BusContents:
    """Reassemble every instance on the topic the way a consumer must: act only on the end record."""
    contents = BusContents()
    chunks: dict[str, list[bytes]] = {}
    async with bus.consumer(group, [topic]) as consumer:
        while True:
            records = await consumer.fetch(timeout=idle)
            if not records:
                break
            for record in records:
                instance = (record.header(envelope.INSTANCE) or b"").decode()
                kind = record.header(envelope.KIND)
                if kind == envelope.ABORT:
                    chunks.pop(instance, None)
                    contents.aborted.add(instance)
                    continue
                if kind == envelope.CHUNK and record.header(envelope.SEQUENCE) == b"0":
                    begin = InstanceHeader.from_json(record.header(envelope.BEGIN) or b"")
                    assert begin.instance_id == instance, "the first chunk must name its instance's header"
                chunks.setdefault(instance, []).append(record.value)
                if kind == envelope.END:
                    meta = InstanceEnvelope.from_json(record.header(envelope.ENVELOPE) or b"")
                    pieces = chunks.pop(instance)
                    data = b"".join(pieces)
                    assert len(pieces) == meta.chunks
                    assert len(data) == meta.size and hashlib.sha256(data).hexdigest() == meta.sha256
                    contents.complete[meta.sop_instance_uid] = (meta, data)
                    contents.received.append((meta, data))
    contents.partial = set(chunks)
    return contents


async def run(*argv: str, timeout: float = 120, env: dict[str, str] | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    async with asyncio.timeout(timeout):
        out, _ = await process.communicate()
    return process.returncode or 0, out.decode(errors="replace")



def associate_rq_pdu(calling: str, called: str, contexts: list[PresentationContext]) -> bytes:
    """An encoded A-ASSOCIATE-RQ offering ``contexts`` (with their context IDs), maximum PDU 16 KiB."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    primitive.presentation_context_definition_list = contexts
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    primitive.user_information = [max_length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def tools_dir() -> Path:
    """Where the tests' fetched tools (HAPI jars, the OIDC provider's modules) are cached between runs."""
    return Path(os.environ.get("GATEWAY_TOOLS_DIR", Path.home() / ".cache" / "dicom-gateway"))


def build_into(target: Path, build: Callable[[Path], None], complete: Callable[[Path], bool]) -> None:
    """``build`` fills a staging directory beside ``target``, renamed into place only when it returns: an
    interrupted fetch or install is never taken for a good one, and when two test runs build the same target at
    once the first one's (``complete``) is used."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.staging-", dir=target.parent))
    try:
        build(staging)
        try:
            staging.rename(target)
        except OSError:
            if not complete(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_LONG_VRS = frozenset((b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR"))


def explicit_element(tag: int, vr: bytes, value: bytes, length: int | None = None) -> bytes:
    """One explicit VR little endian element, padded to even length unless ``length`` says otherwise."""
    if length is None and len(value) % 2:
        value += b"\0" if vr == b"UI" else b" "
    size = len(value) if length is None else length
    group, number = tag >> 16, tag & 0xFFFF
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHI", group, number, vr, 0, size) + value
    return struct.pack("<HH2sH", group, number, vr, size) + value
