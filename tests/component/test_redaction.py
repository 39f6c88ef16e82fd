"""No attribute value of a refused, quarantined or dead-lettered instance reaches the gateway's logs, its dead
letters (what /api/dlq lists), its metrics, its Error Comments or its validation findings: malformed data sets
full of recognisable patient data go through the real receiver and store pool (embedded bus, SQLite index), and
everything the gateway wrote is searched for that data.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import struct
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from prometheus_client import Counter, generate_latest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, _config

from gateway import dead_letter, logs
from gateway.app import open_index, store_pool
from gateway.bus import Record
from gateway.bus.embedded import EmbeddedBus
from gateway.core.audit import NoAudit
from gateway.dicom.dataset import part10_header
from gateway.index import InstanceStatus
from gateway.ingest.receiver import Receiver
from gateway.metrics import Metrics
from gateway.settings import (
    AllowedAE,
    DicomSettings,
    EmbeddedBusSettings,
    RuntimeSettings,
    Settings,
    StoreSettings,
    ValidationSettings,
)
from tests.helpers import explicit_element as element
from tests.helpers import free_port

VALID_HETU, BAD_HETU = b"010190-123M", b"010190-123X"
"""A personal identity code, and the same with a wrong check character."""
LEAK = re.compile(b"canary|" + b"CANARY".hex().encode() + b"|010190.{0,6}123", re.IGNORECASE)
"""The patient data of every data set below: as text, as hex (parsers quote bytes so) and the identity code."""
CALLING_AE, KNOWN_CODE = "LEAKTEST", b"AB1CD"
_NOISY = ("aiokafka", "kafka", "pynetdicom", "aiohttp.access", "pydicom")
"""The loggers ``logs.configure`` sets levels on."""


def sequence(tag: int, item: bytes) -> bytes:
    """A sequence of undefined length with one undefined-length item."""
    return (element(tag, b"SQ", b"", 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + item
            + struct.pack("<HHIHHI", 0xFFFE, 0xE00D, 0, 0xFFFE, 0xE0DD, 0))


@dataclass(frozen=True)
class Sample:
    name: str
    expect: str
    """``refused`` (a C-STORE failure status), ``stored`` (without findings), or the code of a finding it is
    stored (or quarantined) with."""
    study_instance_uid: str
    sop_instance_uid: str
    data_set: bytes


def header(study: str, sop_instance: str) -> dict[int, bytes]:
    """A CT header that passes the fi-kanta profile, every free-text attribute of it patient data, by tag."""
    code = element(0x00080100, b"SH", KNOWN_CODE) + element(0x00080102, b"SH", b"99KANTA")
    return {tag: element(tag, vr, value) for tag, vr, value in (
        (0x00080005, b"CS", b"ISO_IR 100"),
        (0x00080016, b"UI", CTImageStorage.encode()),
        (0x00080018, b"UI", sop_instance.encode()),
        (0x00080020, b"DA", b"20240102"),
        (0x00080030, b"TM", b"101010"),
        (0x00080050, b"SH", b"CANARYACC"),
        (0x00080060, b"CS", b"CT"),
        (0x00080080, b"LO", b"CANARY HOSPITAL"),
        (0x00080090, b"PN", b"CANARY^REFERRER"),
        (0x00081030, b"LO", b"CANARYDESC"),
        (0x00100010, b"PN", b"LEAKY^CANARY"),
        (0x00100020, b"LO", VALID_HETU),
        (0x00100021, b"LO", b"1.2.246.21"),
        (0x00100030, b"DA", b"19900101"),
        (0x00100040, b"CS", b"F"),
        (0x00104000, b"LT", b"CANARY comments"),
        (0x0020000D, b"UI", study.encode()),
        (0x0020000E, b"UI", f"{study}.1".encode()),
        (0x00200010, b"SH", b"CANARYSID"),
        (0x00200011, b"IS", b"1"),
        (0x00200013, b"IS", b"1"),
        (0x00204000, b"LT", b"CANARY image comments "),
        (0x00321060, b"LO", b"CANARY procedure"),
    )} | {0x00321064: sequence(0x00321064, code)}


def samples() -> list[Sample]:
    found: list[Sample] = []

    def add(name: str, expect: str, *changed: bytes, cut: int | None = None) -> None:
        number = len(found) + 1
        study, sop_instance = f"1.2.826.0.1.3680043.9.7433.98.{number}", f"1.2.826.0.1.3680043.9.7433.99.{number}"
        elements = header(study, sop_instance)
        elements.update({int.from_bytes(raw[:2], "little") << 16 | int.from_bytes(raw[2:4], "little"): raw
                         for raw in changed})
        data = b"".join(raw for _, raw in sorted(elements.items()))
        found.append(Sample(name, expect, study, sop_instance, data[:cut]))

    add("well-formed", "stored")  # so that each finding below is its sample's own
    add("wrong-hetu-checksum", "FI-HETU-CHECKSUM", element(0x00100020, b"LO", BAD_HETU))
    add("patient-id-not-a-hetu", "FI-HETU-FORMAT", element(0x00100020, b"LO", b"CANARY-4242"))
    # Image Comments claims 6 bytes more than it has: the reader lands inside the next element's value
    add("length-over-next-elements", "DICOM-HEADER-UNREADABLE", element(0x00204000, b"LT", b"CANARY image comments ", 22 + 6))
    # Study Description swallows the patient module and the UIDs the receiver needs
    add("length-over-the-uids", "refused", element(0x00081030, b"LO", b"CANARYDESC", 0x200))
    add("truncated", "DICOM-HEADER-UNREADABLE", cut=-20)
    add("bad-vr-values", "DICOM-VR-DA", element(0x00100030, b"DA", b"CANARY01"), element(0x00200011, b"IS", b"CANARY"))
    # pydicom's error for a binary value of the wrong length quotes its bytes
    add("binary-value-of-wrong-length", "DICOM-HEADER-UNREADABLE", element(0x00189087, b"FD", b"CANARY"))
    add("invalid-utf8-odd-length", "FI-HETU-FORMAT", element(0x00080005, b"CS", b"ISO_IR 192"),
        element(0x00100010, b"PN", b"LEAKY^CANARY\xc3", 13), element(0x00100020, b"LO", b"010190\xff123M", 11))
    add("unknown-character-set", "DICOM-CHARSET-UNKNOWN", element(0x00080005, b"CS", b"CANARY"))
    add("unknown-issuer", "FI-ISSUER-UNKNOWN", element(0x00100021, b"LO", b"CANARY-ISSUER"))
    add("unknown-study-code", "FI-STUDY-CODE-UNKNOWN", sequence(
        0x00321064, element(0x00080100, b"SH", b"CANARYCODE") + element(0x00080102, b"SH", b"99KANTA")))
    # 60,000 bytes where a component group may have 64 characters
    add("oversized-value", "DICOM-VR-PN", element(0x00100010, b"PN", b"LEAKY^CANARY" * 5000))
    # a length beyond the end of the data set: what parses up to there is validated
    add("length-past-the-end", "FI-STUDY-CODE-MISSING", element(0x00321060, b"UT", b"CANARY procedure", 0x7FFFFFF0))
    return found


def send(port: int, directory: Path, batch: list[Sample]) -> dict[str, tuple[int, str]]:
    """Each sample's bytes exactly as built (pynetdicom streams a file's data set unparsed): (status, comment)."""
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    association = ae.associate("127.0.0.1", port, ae_title="DICOMGW")
    assert association.is_established
    answers = {}
    try:
        for sample in batch:
            path = directory / f"{sample.name}.dcm"
            path.write_bytes(part10_header(CTImageStorage, sample.sop_instance_uid, ExplicitVRLittleEndian,
                                           "1.2.826.0.1.3680043.9.7433.1", "LEAKTEST") + sample.data_set)
            status = association.send_c_store(path)
            answers[sample.name] = (int(status.Status), str(status.get("ErrorComment", "")))
    finally:
        association.release()
    return answers


@pytest.fixture
def gateway_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Everything the gateway logs, at DEBUG, through the handler ``logs.configure`` sets a process up with (JSON),
    into a buffer; the other handlers (pytest's) are kept, and the levels it set are restored afterwards."""
    root = logging.getLogger()
    handlers, level, levels = root.handlers[:], root.level, {name: logging.getLogger(name).level for name in _NOISY}
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # configure replaces it
    logs.configure("DEBUG")
    [handler] = root.handlers
    assert isinstance(handler, logging.StreamHandler) and isinstance(handler.formatter, logs.JsonFormatter)
    buffer = io.StringIO()
    handler.setStream(buffer)
    root.handlers[:] = [*handlers, handler]
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        for name, noisy in levels.items():
            logging.getLogger(name).setLevel(noisy)


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[Settings, EmbeddedBus, Metrics]]:
    """Receiver and store pool with the fi-kanta profile (and a study code list) for a known calling AE."""
    site = tmp_path / "site.yaml"
    site.write_text(f"name: fi-kanta\nextends: fi-kanta\nparameters:\n  procedure_codes: [{KNOWN_CODE.decode()}]\n")
    caller = AllowedAE(ae_title=CALLING_AE, organization="Test Hospital", organization_oid="1.2.246.10.1234567")
    settings = Settings(
        data_dir=tmp_path / "data", dicom=DicomSettings(host="127.0.0.1", port=free_port(), allowed_aes=(caller,)),
        embedded_bus=EmbeddedBusSettings(poll_interval_seconds=0.01),
        validation=ValidationSettings(default_profile="fi-kanta", profile_files=(site,)),
        store=StoreSettings(retry_max_seconds=1), runtime=RuntimeSettings(drain_timeout_seconds=5))
    metrics = Metrics()
    bus = EmbeddedBus(settings.data_dir / "bus", settings.embedded_bus, metrics)
    async with Receiver(settings.dicom, settings.topics, bus, metrics, 5), store_pool(settings, bus, metrics, NoAudit()):
        yield settings, bus, metrics


def _total(counter: Counter) -> float:
    return sum(sample.value for metric in counter.collect() for sample in metric.samples
               if sample.name.endswith("_total"))


def _leaks(written: dict[str, bytes]) -> list[str]:
    return [f"{where}: ...{text[max(0, found.start() - 200):found.end() + 50]!r}..."
            for where, text in written.items() for found in LEAK.finditer(text)]


@pytest.mark.filterwarnings("default")  # as in production: a warning that escapes is shown (logged), not raised
async def test_malformed_data_sets_leave_no_patient_data_behind(
    gateway: tuple[Settings, EmbeddedBus, Metrics], gateway_logs: io.StringIO, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, bus, metrics = gateway
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    batch = samples()
    answers = await asyncio.to_thread(send, settings.dicom.port, tmp_path, batch)
    accepted = sum(1 for status, _ in answers.values() if status == 0)
    async with asyncio.timeout(60):
        while _total(metrics.instances_stored) + _total(metrics.dead_letters) < accepted:
            await asyncio.sleep(0.1)
    entries = await dead_letter.entries(bus, settings.topics)  # what /api/dlq lists
    async with await open_index(settings) as index:
        rows = {sample.name: await index.current_instance(sample.sop_instance_uid) for sample in batch}

    for sample in batch:  # each was turned away for what is wrong with it, so nothing below passes vacuously
        status, comment = answers[sample.name]
        row = rows[sample.name]
        if sample.expect == "refused":
            assert status != 0 and comment, sample.name
        elif sample.expect == "stored":
            assert status == 0 and row is not None and row.status is InstanceStatus.STORED and not row.findings, (
                sample.name, row)
        else:
            assert status == 0 and row is not None, sample.name
            assert sample.expect in {finding["code"] for finding in row.findings}, (sample.name, row.findings)
    gateway_log = gateway_logs.getvalue()
    assert "C-STORE refused" in gateway_log and "does not convert: quarantined" in gateway_log
    assert "instance stored" in gateway_log

    written = {
        "logs": gateway_log.encode(),
        "dead letters": orjson.dumps([entry.summary() for entry in entries]),
        "dead-letter topic": b"\n".join(record.value for record in await _topic(bus, settings.topics.dead_letter)),
        "metrics": generate_latest(metrics.registry),
        "error comments": orjson.dumps(answers),
        "findings": orjson.dumps({name: row.findings for name, row in rows.items() if row is not None}),
    }
    leaks = _leaks(written)
    assert not leaks, "\n".join(leaks)


async def _topic(bus: EmbeddedBus, topic: str) -> list[Record]:
    """Every record of a topic, read by a throwaway group."""
    found: list[Record] = []
    async with bus.consumer(f"redaction-test-{topic}", [topic]) as consumer:
        while records := await consumer.fetch(timeout=1.0):
            found.extend(records)
    return found
