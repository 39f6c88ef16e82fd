"""The audit trail with the gateway as a real process and a real rsyslog over TLS as the audit record repository.

A 30 s repository outage under a steady C-STORE load (Kafka and PostgreSQL): every record the gateway put on the
audit topic reaches rsyslog, in the topic's order, none lost, a record twice only where the outage began; no
C-STORE is refused meanwhile. And a SIGKILL while studies are being stored (embedded bus): once the gateway is
started again, every instance a modality got Success for is in a DICOM Instances Transferred record of the local
audit log, and the repository still has every record in order.

What rsyslog received is matched with the topic byte for byte: each record on the topic, rendered as the audit role
renders it (``render`` and ``syslog_message``, the source configured here), is the message it must have received.
Receipts (DICOM Instances Transferred of C-STORE) are the exception: the audit role merges those of one study and
sender that it gathers together, so they are matched by what they say (sender, patient, study, action, outcome)
and their instances counted.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from lxml import etree

from benchmarks.datasets import KINDS, generate
from benchmarks.datasets import test_patient_id as patient_id_of  # not named test_*: pytest would collect it
from gateway.audit.message import AuditSource, render
from gateway.audit.syslog import syslog_message
from gateway.bus import Consumer
from gateway.bus.embedded import EmbeddedBus
from gateway.bus.kafka import KafkaBus
from gateway.core.audit import AuditRecord, Event, Interface, Outcome, decode, receipt
from gateway.metrics import Metrics
from gateway.settings import EmbeddedBusSettings, KafkaSettings, TopicSettings
from tests.conftest import dcmtk, fresh_database, start_services
from tests.helpers import run
from tests.process import GatewayProcess
from tests.rsyslog import Rsyslog, make_pki

ROLES = ("receiver", "store", "api", "audit")
SOURCE = AuditSource("AUDIT-PROCESS-GW", "1.2.246.10.99")
APP_NAME = "dicom-gateway"


# --- helpers ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Study:
    patient_id: str
    uid: str
    paths: list[Path]


@dataclass(frozen=True, slots=True)
class Sent:
    study: Study
    acknowledged: int
    """C-STOREs answered Success."""
    seconds: float
    at: float
    """Wall time storescu started."""


def studies(directory: Path, count: int, instances: int) -> list[Study]:
    """``count`` studies of ``instances`` tiny instances, each study its own patient (a Finnish test identity
    code, unique below 100 studies)."""
    assert count < 100
    paths = generate(KINDS["tiny"], count * instances, directory, studies=count)
    found = []
    for n in range(count):
        mine = paths[n::count]
        header = pydicom.dcmread(mine[0], stop_before_pixels=True)
        assert header.PatientID == patient_id_of(n)
        found.append(Study(str(header.PatientID), str(header.StudyInstanceUID), mine))
    return found


async def storescu(port: int, study: Study) -> Sent:
    """One association of dcmtk's storescu sending the study; how many C-STOREs were answered Success."""
    at, started = time.time(), time.monotonic()
    _, out = await run(dcmtk("storescu"), "-v", "-aet", "MODALITY1", "-aec", "DICOMGW", "127.0.0.1", str(port),
                       *map(str, study.paths))
    return Sent(study, out.count("Received Store Response (Success)"), time.monotonic() - started, at)


def audit_environment(repository: Rsyslog) -> dict[str, str]:
    return {"GATEWAY_AUDIT__REPOSITORY_URL": f"tls://127.0.0.1:{repository.tls_port}",
            "GATEWAY_AUDIT__CA_FILE": str(repository.ca_file), "GATEWAY_AUDIT__SOURCE_ID": SOURCE.id,
            "GATEWAY_AUDIT__ENTERPRISE_SITE_ID": SOURCE.site, "GATEWAY_AUDIT__RETRY_MAX_SECONDS": "2"}


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[Rsyslog]:
    (tmp_path / "rsyslog").mkdir()
    syslog = Rsyslog(tmp_path / "rsyslog", make_pki(tmp_path / "pki"))
    syslog.start()
    try:
        yield syslog
    finally:
        syslog.stop()


def message_of(record: AuditRecord) -> bytes:
    """The RFC 5424 message the audit role sends for ``record``."""
    return syslog_message(render(record, SOURCE), at=record.at, hostname=record.node, app_name=APP_NAME,
                          procid=record.process, failure=record.outcome is not Outcome.SUCCESS)


def counted(raw: bytes) -> tuple[tuple[str, ...], int] | None:
    """A receipt message as what it says (host, process, patient, study, action, outcome) and its instances;
    None for any other message."""
    header, _, xml = raw.partition(b"IHE+RFC-3881 - ")
    root = etree.fromstring(xml.removeprefix(b"\xef\xbb\xbf"))
    event = root.find("EventIdentification")
    assert event is not None
    code = event.find("EventID")
    assert code is not None
    disclosed = any(o.get("ParticipantObjectDataLifeCycle") for o in root.iter("ParticipantObjectIdentification"))
    if code.get("csd-code") != Event.INSTANCES_TRANSFERRED.code or disclosed:  # not a receipt (``receipt``)
        return None
    objects = {o.get("ParticipantObjectTypeCodeRole"): o.get("ParticipantObjectID", "")
               for o in root.iter("ParticipantObjectIdentification")}
    host, procid = header.split(b" ")[2].decode(), header.split(b" ")[4].decode()
    return ((host, procid, objects.get("1", ""), objects.get("3", ""), event.get("EventActionCode", ""),
             event.get("EventOutcomeIndicator", "")),
            sum(int(c.get("NumberOfInstances", "0")) for c in root.iter("SOPClass")))


class AuditTopic:
    """The audit topic as a consumer group of the test's own reads it: every record, in the order written."""

    def __init__(self, consumer: Consumer) -> None:
        self._consumer = consumer
        self.records: list[AuditRecord] = []

    async def catch_up(self) -> bool:
        """Read what is new; whether the end of the topic was reached."""
        while batch := await self._consumer.fetch(timeout=0.3):
            for record in batch:
                self.records.append(decode(record.value))
                self._consumer.done(record)  # else it counts as lag
        lag = await self._consumer.lag()
        return bool(lag) and not any(lag.values())

    def stored(self) -> dict[str, int]:
        """Instances in successful DICOM Instances Transferred records of C-STORE, by patient."""
        counted: dict[str, int] = defaultdict(int)
        for record in self.records:
            if record.event == Event.INSTANCES_TRANSFERRED and record.interface is Interface.C_STORE \
                    and record.outcome is Outcome.SUCCESS and record.patient is not None:
                counted[record.patient.id] += sum(n for study in record.studies for _, n in study.sop_classes)
        return counted


@dataclass(frozen=True, slots=True)
class Arrival:
    records: list[AuditRecord]
    """The topic, in order."""
    duplicates: list[AuditRecord]
    """The records received again (receipts aside), in the order they were."""
    rewinds: int
    """How often the repository's stream went back to a record it had had: each a batch sent again."""


def receipts_short(records: list[AuditRecord], received: list[bytes]) -> dict[tuple[str, ...], int]:
    """Per receipt (what it says), how many of the topic's instances the repository has not had."""
    owed: dict[tuple[str, ...], int] = defaultdict(int)
    for record in records:
        if receipt(record) is not None:
            said = counted(message_of(record))
            assert said is not None
            owed[said[0]] += said[1]
    for raw in received:
        said = counted(raw)
        if said is not None:
            owed[said[0]] -= said[1]
    return {key: n for key, n in owed.items() if n > 0}


async def delivered(topic: AuditTopic, repository: Rsyslog, timeout: float) -> Arrival:
    """Wait until the repository has received every record on the topic (every receipt's instances), and the
    topic and the repository stayed quiet for a second; then how they arrived."""
    deadline = time.monotonic() + timeout
    while True:
        at_end = await topic.catch_up()
        messages = [message.raw for message in repository.received()]
        received = set(messages)
        missing = [record for record in topic.records
                   if receipt(record) is None and message_of(record) not in received]
        short = receipts_short(topic.records, messages)
        if at_end and not missing and not short:
            await asyncio.sleep(1.0)
            before = len(topic.records)
            if await topic.catch_up() and len(topic.records) == before:
                break
        elif time.monotonic() > deadline:
            raise AssertionError(f"within {timeout} s rsyslog has not received {len(missing)} of the"
                                 f" {len(topic.records)} records on the topic (at its end: {at_end}); the first"
                                 f" missing: {missing[:1]}; instances of receipts short: {short}")
        await asyncio.sleep(0.3)
    return arrival(topic.records, [message.raw for message in repository.received()])


def arrival(records: list[AuditRecord], received: list[bytes]) -> Arrival:
    """Check that the repository got the topic's records in its order with none lost (a batch sent again after a
    failure repeats records already had, from where the last commit was); what was received twice. Receipts are
    checked by their counts (``receipts_short``), the rest byte for byte and in order."""
    assert not receipts_short(records, received)
    said = {key for raw in received if (count := counted(raw)) is not None for key in [count[0]]}
    on_topic = {count[0] for record in records if receipt(record) is not None
                for count in [counted(message_of(record))] if count is not None}
    assert said <= on_topic, f"rsyslog received receipts that are not on the topic: {sorted(said - on_topic)[:2]}"
    others = [record for record in records if receipt(record) is None]
    received = [raw for raw in received if counted(raw) is None]
    position = {message_of(record): n for n, record in enumerate(others)}
    assert len(position) == len(others), "two records on the topic make the same message: cannot match them"
    strangers = [raw[:200] for raw in received if raw not in position]
    assert not strangers, f"rsyslog received messages that are not on the topic: {strangers[:2]}"
    duplicates: list[AuditRecord] = []
    highest, rewinds, previous = -1, 0, -1
    for raw in received:
        n = position[raw]
        assert n <= highest + 1, f"record {highest + 1} of the topic was skipped: record {n} came after {highest}"
        if n <= highest:
            duplicates.append(others[n])
        rewinds += n <= previous
        highest, previous = max(highest, n), n
    assert highest == len(others) - 1, f"only {highest + 1} of {len(others)} records arrived"
    return Arrival(records, duplicates, rewinds)


async def api(gateway: GatewayProcess, path: str) -> Any:
    status, body = await asyncio.to_thread(gateway.http, path)
    assert status == 200, (path, status, body[:500])
    return json.loads(body)


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


# --- a repository outage under load --------------------------------------------------------------------------------

LOAD_BEFORE, OUTAGE, LOAD_AFTER = 5.0, 30.0, 5.0
PACE = 0.5
"""Seconds from one study's storescu to the next (a new association each time)."""


@pytest.fixture
def kafka_postgres() -> dict[str, str]:
    return start_services("kafka", "postgres")


async def outage(repository: Rsyslog) -> tuple[datetime, datetime, datetime]:
    """Stop rsyslog (SIGTERM) for ``OUTAGE`` seconds in the middle of the load; when it was told to stop, when it
    had stopped and when it listened again."""
    await asyncio.sleep(LOAD_BEFORE)
    stopping = datetime.now(UTC)
    await asyncio.to_thread(repository.stop)
    stopped = datetime.now(UTC)
    await asyncio.sleep(OUTAGE)
    await asyncio.to_thread(repository.start)  # the same ports
    started = datetime.now(UTC)
    await asyncio.sleep(LOAD_AFTER)
    return stopping, stopped, started


async def steady_load(port: int, pending: list[Study], until: asyncio.Task[Any]) -> list[Sent]:
    """A study every ``PACE`` seconds (or as fast as they go, if slower) until ``until`` is done."""
    sent: list[Sent] = []
    for study in pending:
        if until.done():
            return sent
        started = time.monotonic()
        sent.append(await storescu(port, study))
        await asyncio.sleep(max(0.0, started + PACE - time.monotonic()))
    raise AssertionError(f"{len(pending)} studies were not enough to load the whole outage")


def _median_seconds(sent: list[Sent], since: float, before: float) -> str:
    times = sorted(s.seconds for s in sent if since <= s.at < before)
    return f"{times[len(times) // 2]:.2f} s ({len(times)})" if times else "-"


async def test_a_repository_outage_under_load_loses_no_record_and_keeps_their_order(
        tmp_path: Path, repository: Rsyslog, kafka_postgres: dict[str, str]) -> None:
    suffix = uuid.uuid4().hex[:8]
    topic = f"audit-{suffix}"
    environment = {**kafka_postgres, **audit_environment(repository),
                   "GATEWAY_DATABASE__URL": await fresh_database(kafka_postgres["GATEWAY_DATABASE__URL"]),
                   "GATEWAY_TOPICS__INSTANCES": f"instances-{suffix}", "GATEWAY_TOPICS__EVENTS": f"events-{suffix}",
                   "GATEWAY_TOPICS__DEAD_LETTER": f"dead-letter-{suffix}", "GATEWAY_TOPICS__AUDIT": topic,
                   "GATEWAY_KAFKA__SESSION_TIMEOUT_MS": "6000"}
    pending = studies(tmp_path / "studies", 96, 2)
    gateway = GatewayProcess(tmp_path / "data", ROLES, **environment)
    bus = KafkaBus(KafkaSettings(bootstrap_servers=kafka_postgres["GATEWAY_KAFKA__BOOTSTRAP_SERVERS"]),
                   TopicSettings(audit=topic), Metrics())
    try:
        await asyncio.to_thread(gateway.wait_ready, 90)
        async with bus.consumer(f"test-audit-{suffix}", [topic]) as consumer:
            audit_topic = AuditTopic(consumer)
            repository_down = asyncio.create_task(outage(repository))
            sent = await steady_load(gateway.dicom_port, pending, repository_down)
            stopping, stopped, started = await repository_down
            wanted = {s.study.patient_id: s.acknowledged for s in sent}
            deadline = time.monotonic() + 60
            while not (await audit_topic.catch_up() and all(audit_topic.stored().get(patient, 0) >= n
                                                            for patient, n in wanted.items())):
                assert time.monotonic() < deadline, "the store role did not audit every study within 60 s"
            delivery = await delivered(audit_topic, repository, timeout=60)
        logged: set[str] = set()
        deadline = time.monotonic() + 30
        while not {record.id for record in delivery.records if receipt(record) is None} <= logged:
            assert time.monotonic() < deadline, "the audit log did not keep every record within 30 s"
            logged = {entry["record_id"] for entry in await api(gateway, "/api/audit?limit=5000")}
            await asyncio.sleep(0.5)
        _, metrics = await asyncio.to_thread(gateway.http, "/metrics")
    finally:
        gateway.stop()

    # every C-STORE of every study got Success, before, during and after the outage
    assert [s.acknowledged for s in sent] == [len(s.study.paths) for s in sent]
    during = [s for s in sent if stopped.timestamp() <= s.at < started.timestamp()]
    assert len(during) >= OUTAGE / PACE / 3, f"only {len(during)} studies were sent during the outage"
    written_during = [r for r in delivery.records if stopped <= r.at < started]
    assert len(written_during) >= len(during) - 1, "the studies sent during the outage were not audited during it"
    # the audit role noticed the outage (left the group and backed off), and the repository took everything after
    assert metric(metrics, 'dicomgw_stage_retries_total{stage="audit"}') >= 1
    # records sent twice were written before the repository went away: the batch in flight when it did
    assert all(stopping - timedelta(seconds=10) <= record.at <= stopped for record in delivery.duplicates), \
        [(record.at, stopping) for record in delivery.duplicates]
    assert delivery.rewinds <= 1, delivery.rewinds
    print(f"\noutage: {len(sent)} studies ({len(during)} during the 30 s), {len(delivery.records)} records on the"
          f" topic ({len(written_during)} written during the outage); {len(delivery.duplicates)} received twice"
          f" ({delivery.rewinds} batch sent again); storescu median before / during / after:"
          f" {_median_seconds(sent, 0, stopping.timestamp())} / "
          f"{_median_seconds(sent, stopped.timestamp(), started.timestamp())} / "
          f"{_median_seconds(sent, started.timestamp(), time.time())}")


# --- kill -9 while storing -----------------------------------------------------------------------------------------

SENDERS = 3
KILL_AFTER = 4.0
"""Seconds of load before the SIGKILL."""


async def test_kill_9_while_storing_leaves_no_acknowledged_instance_unaudited(
        tmp_path: Path, repository: Rsyslog) -> None:
    environment = {**audit_environment(repository), "GATEWAY_EMBEDDED_BUS__POLL_INTERVAL_SECONDS": "0.01"}
    pending = studies(tmp_path / "studies", 40, 30)
    queue = list(reversed(pending))
    data = tmp_path / "data"
    gateway = GatewayProcess(data, ROLES, **environment)
    killed = asyncio.Event()
    sent: list[Sent] = []

    async def sender() -> None:
        while queue and not killed.is_set():
            sent.append(await storescu(gateway.dicom_port, queue.pop()))

    try:
        await asyncio.to_thread(gateway.wait_ready)
        senders = [asyncio.create_task(sender()) for _ in range(SENDERS)]
        await asyncio.sleep(KILL_AFTER)
        assert queue, "every study was sent before the kill: send more"
        killed.set()
        killed_pid = str(gateway.process.pid)
        gateway.kill()
        killed_at = datetime.now(UTC)
        await asyncio.gather(*senders)

        gateway = GatewayProcess(data, ROLES, **environment)
        await asyncio.to_thread(gateway.wait_ready)
        acknowledged = {s.study.patient_id: s.acknowledged for s in sent if s.acknowledged}
        audited: dict[str, list[dict[str, Any]]] = {}
        deadline = time.monotonic() + 60
        for patient, count in acknowledged.items():
            while True:
                entries = [entry for entry in await api(gateway, f"/api/audit?patient_id={patient}")
                           if entry["event_code"] == Event.INSTANCES_TRANSFERRED.code
                           and entry["interface"] == Interface.C_STORE.value and entry["outcome"] == Outcome.SUCCESS.value]
                if sum(entry["instances"] for entry in entries) >= count:
                    audited[patient] = entries
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"patient {patient}: {count} instances acknowledged, the audit log covers"
                                         f" {sum(entry['instances'] for entry in entries)}: {entries}")
                await asyncio.sleep(0.2)
        bus = EmbeddedBus(data / "bus", EmbeddedBusSettings(), Metrics())
        async with bus.consumer("test-audit-reader", [TopicSettings().audit]) as consumer:
            delivery = await delivered(AuditTopic(consumer), repository, timeout=60)
    finally:
        gateway.stop()

    cut = [s for s in sent if s.acknowledged < len(s.study.paths)]
    assert cut, "the kill interrupted no association"
    assert sum(acknowledged.values()) > 0
    for patient, entries in audited.items():
        study = next(s.study for s in sent if s.study.patient_id == patient)
        assert {uid for entry in entries for uid in entry["studies"]} == {study.uid}
        assert {entry["actor"] for entry in entries} == {"MODALITY1"}
    actions: dict[str, int] = defaultdict(int)
    for entries in audited.values():
        for entry in entries:
            actions[entry["action"]] += entry["instances"]
    # a batch processed again after the kill finds its own receives current: created by it, not read again
    assert set(actions) == {"C"}, actions
    # the killed process's audit role may have been sending: what was sent again, the killed process had written
    assert all(record.process == killed_pid and record.at <= killed_at for record in delivery.duplicates)
    activity = [r for r in delivery.records if r.event == Event.APPLICATION_ACTIVITY]
    assert len({r.process for r in activity}) == 2, "both processes' Application Start must be on the topic"
    print(f"\nkill -9: {len(sent)} studies sent by {SENDERS} associations, {len(cut)} cut by the kill"
          f" ({[s.acknowledged for s in cut]} of {len(pending[0].paths)} acknowledged),"
          f" {sum(acknowledged.values())} instances acknowledged; audited instances by action {dict(actions)};"
          f" {len(delivery.records)} records on the topic, {len(delivery.duplicates)} received twice by rsyslog")
