"""The index contract, run against SQLite and a real PostgreSQL alike.

Each test gets a store of its own (a fresh SQLite file, or a fresh PostgreSQL database dropped afterwards),
so tests that open a second adapter on it, or start child processes on it, see only what they wrote.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import orjson
import pytest

from gateway.index import CorrectionPolicy, Index, InstanceRow, InstanceStatus, Outcome, RecordResult
from gateway.index.migrations import load
from gateway.index.postgres import PostgresIndex
from gateway.index.sqlite import SqliteIndex
from tests.conftest import ROOT, start_services

RECEIVED_AT = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


@dataclass(frozen=True)
class Store:
    """Where one test's index lives: a PostgreSQL URL or a SQLite file, opened as often as a test needs."""

    kind: str
    location: str

    async def open(self) -> Index:
        if self.kind == "postgres":
            return await PostgresIndex.connect(self.location)
        return await SqliteIndex.open(Path(self.location))

    async def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Look behind the port: the patient, study and series tables, and the current-row flag."""
        if self.kind == "postgres":
            connection = await asyncpg.connect(self.location)
            try:
                return [tuple(record) for record in await connection.fetch(sql)]
            finally:
                await connection.close()
        connection = sqlite3.connect(self.location)
        try:
            return connection.execute(sql).fetchall()
        finally:
            connection.close()


def with_database(url: str, database: str) -> str:
    return urlsplit(url)._replace(path=f"/{database}").geturl()


async def administer(url: str, sql: str) -> None:
    connection = await asyncpg.connect(with_database(url, "postgres"))
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    return start_services("postgres")["GATEWAY_DATABASE__URL"]


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        yield Store("sqlite", str(tmp_path / "index.sqlite3"))
        return
    url: str = request.getfixturevalue("postgres_url")
    database = f"test_{uuid.uuid4().hex}"
    await administer(url, f'CREATE DATABASE "{database}"')
    yield Store("postgres", with_database(url, database))
    await administer(url, f'DROP DATABASE "{database}" WITH (FORCE)')


@pytest.fixture
async def index(store: Store) -> AsyncIterator[Index]:
    async with await store.open() as index:
        await index.migrate()
        yield index


def new_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def make_row(**changes: Any) -> InstanceRow:
    digest = hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    row = InstanceRow(
        sop_instance_uid=new_uid(), sop_class_uid="1.2.840.10008.5.1.4.1.1.2", study_instance_uid=new_uid(),
        series_instance_uid=new_uid(), patient_id="PID-0001", issuer_of_patient_id="1.2.246.10.1234567.10.101",
        accession_number="ACC-1", modality="CT", study_date="20240506", study_time="070809",
        study_description="CT head", series_number=1, instance_number=1, transfer_syntax_uid="1.2.840.10008.1.2.1",
        storage_key=f"instances/{digest}", size=524_288, sha256=digest, received_sha256=digest, source_ae="CT01",
        source_organization_oid="1.2.246.10.1234567", status=InstanceStatus.STORED, findings=(),
        instance_id=str(uuid.uuid4()), received_at=RECEIVED_AT, stored_at=RECEIVED_AT + timedelta(seconds=2),
    )
    return replace(row, **changes)


def corrected(row: InstanceRow, **changes: Any) -> InstanceRow:
    """The same SOP Instance sent again with different content, as a fresh receive."""
    digest = hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    return replace(row, sha256=digest, received_sha256=digest, storage_key=f"instances/{digest}",
                   instance_id=str(uuid.uuid4()), **changes)


async def current_rows(store: Store, sop_instance_uid: str) -> int:
    [(count,)] = await store.query(f"SELECT count(*) FROM instances WHERE sop_instance_uid = '{sop_instance_uid}' "
                                   "AND is_current")
    return int(count)


async def test_inserted_instance_reads_back_equal(index: Index) -> None:
    finding = {"code": "DICOM-BASIC-004", "severity": "warning", "keyword": "StudyDate", "tag": "00080020",
               "message": "Study Date is empty"}
    row = make_row(findings=(finding,), series_number=None, size=8_589_934_592)

    result = await index.record_instance(row, CorrectionPolicy.REPLACE)

    assert result == RecordResult(Outcome.INSERTED, row, None)
    assert await index.current_instance(row.sop_instance_uid) == row
    assert await index.instance_versions(row.sop_instance_uid) == [row]
    assert await index.study_instances(row.study_instance_uid) == [row]
    assert await index.current_instance(new_uid()) is None
    assert await index.instance_versions(new_uid()) == []


@pytest.mark.parametrize("policy", list(CorrectionPolicy))
async def test_redelivery_is_a_duplicate_and_writes_nothing(index: Index, policy: CorrectionPolicy) -> None:
    first = make_row()
    await index.record_instance(first, policy)
    again = replace(first, instance_id=str(uuid.uuid4()), storage_key="instances/elsewhere",
                    stored_at=first.stored_at + timedelta(minutes=5))

    result = await index.record_instance(again, policy)

    assert result == RecordResult(Outcome.DUPLICATE, first, None)
    assert await index.instance_versions(first.sop_instance_uid) == [first]


@pytest.mark.parametrize("policy", list(CorrectionPolicy))
async def test_the_same_attributes_in_another_transfer_syntax_are_a_variant(
    index: Index, policy: CorrectionPolicy
) -> None:
    first = make_row(attributes_sha256="a" * 64, study_id="S42", referring_physician_name="Lääkäri^Liisa",
                     issuer_of_accession_number="1.2.246.10.1234567.99")
    await index.record_instance(first, policy)
    implicit = corrected(first, transfer_syntax_uid="1.2.840.10008.1.2")

    result = await index.record_instance(implicit, policy)
    again = await index.record_instance(replace(implicit, instance_id=str(uuid.uuid4()),
                                                storage_key="instances/elsewhere"), policy)
    changed = await index.record_instance(corrected(first, transfer_syntax_uid="1.2.840.10008.1.2",
                                                    attributes_sha256="b" * 64), policy)

    assert result == RecordResult(Outcome.VARIANT, first, None) and result.kept and not result.written
    assert again.outcome is Outcome.DUPLICATE and not again.kept
    assert changed.outcome is not Outcome.VARIANT
    [variant] = await index.study_variants(first.study_instance_uid)
    assert variant == replace(implicit, version=1).variant()
    current = await index.current_instance(first.sop_instance_uid)
    assert current is not None and current.study_instance().study_id == "S42"
    assert current.study_instance().referring_physician_name == "Lääkäri^Liisa"
    assert current.study_instance().issuer_of_accession_number == "1.2.246.10.1234567.99"


async def test_variants_in_one_batch_are_decided_in_order(index: Index) -> None:
    first = make_row(attributes_sha256="c" * 64)
    implicit = corrected(first, transfer_syntax_uid="1.2.840.10008.1.2")
    results = await index.record_instances([first, implicit, replace(implicit, instance_id=str(uuid.uuid4()))],
                                           CorrectionPolicy.REPLACE)
    assert [r.outcome for r in results] == [Outcome.INSERTED, Outcome.VARIANT, Outcome.DUPLICATE]
    assert len(await index.study_variants(first.study_instance_uid)) == 1


async def test_current_instances_of_many_uids_in_one_look_up(index: Index) -> None:
    stored = [make_row() for _ in range(3)]
    quarantined = make_row(status=InstanceStatus.QUARANTINED)
    for row in [*stored, quarantined]:
        await index.record_instance(row, CorrectionPolicy.REPLACE)
    correction = (await index.record_instance(corrected(stored[0], accession_number="ACC-2"),
                                              CorrectionPolicy.REPLACE)).current
    unknown = [new_uid() for _ in range(600)]  # more than one batch of SQL parameters

    found = await index.current_instances([*unknown, *(row.sop_instance_uid for row in [*stored, quarantined])])

    assert found == {correction.sop_instance_uid: correction, stored[1].sop_instance_uid: stored[1],
                     stored[2].sop_instance_uid: stored[2], quarantined.sop_instance_uid: quarantined}
    assert await index.current_instances([]) == {}


async def test_replace_makes_the_correction_current(index: Index) -> None:
    first = make_row()
    await index.record_instance(first, CorrectionPolicy.REPLACE)
    second = corrected(first, accession_number="ACC-2")

    result = await index.record_instance(second, CorrectionPolicy.REPLACE)

    replaced = replace(first, status=InstanceStatus.REPLACED)
    assert result == RecordResult(Outcome.REPLACED, replace(second, version=2), replaced)
    assert await index.current_instance(first.sop_instance_uid) == result.current
    assert await index.study_instances(first.study_instance_uid) == [result.current]


async def test_prior_versions_stay_retrievable_with_their_storage_keys(store: Store, index: Index) -> None:
    rows = [make_row()]
    rows += [corrected(rows[0]) for _ in range(2)]
    for row in rows:
        await index.record_instance(row, CorrectionPolicy.REPLACE)

    versions = await index.instance_versions(rows[0].sop_instance_uid)

    assert [(v.version, v.status, v.storage_key) for v in versions] == [
        (1, InstanceStatus.REPLACED, rows[0].storage_key),
        (2, InstanceStatus.REPLACED, rows[1].storage_key),
        (3, InstanceStatus.STORED, rows[2].storage_key),
    ]
    assert versions[0] == replace(rows[0], status=InstanceStatus.REPLACED)
    assert await current_rows(store, rows[0].sop_instance_uid) == 1


@pytest.mark.parametrize(("policy", "outcome"), [(CorrectionPolicy.REJECT, Outcome.REJECTED),
                                                 (CorrectionPolicy.KEEP_FIRST, Outcome.KEPT_FIRST)])
async def test_refused_correction_writes_nothing(index: Index, policy: CorrectionPolicy, outcome: Outcome) -> None:
    first = make_row()
    await index.record_instance(first, policy)

    result = await index.record_instance(corrected(first, accession_number="ACC-2"), policy)

    assert result == RecordResult(outcome, first, first)
    assert await index.instance_versions(first.sop_instance_uid) == [first]


async def test_a_new_row_cannot_be_recorded_as_replaced(index: Index) -> None:
    row = make_row(status=InstanceStatus.REPLACED)
    with pytest.raises(ValueError, match="replaced"):
        await index.record_instance(row, CorrectionPolicy.REPLACE)
    assert await index.instance_versions(row.sop_instance_uid) == []


async def test_quarantined_rows_are_left_out_of_study_instances_by_default(index: Index) -> None:
    stored = make_row(instance_number=1)
    quarantined = make_row(study_instance_uid=stored.study_instance_uid, series_instance_uid=stored.series_instance_uid,
                           instance_number=2, status=InstanceStatus.QUARANTINED)
    for row in (quarantined, stored):
        await index.record_instance(row, CorrectionPolicy.REPLACE)

    assert await index.study_instances(stored.study_instance_uid) == [stored]
    assert await index.study_instances(stored.study_instance_uid, include_quarantined=True) == [stored, quarantined]
    assert await index.current_instance(quarantined.sop_instance_uid) == quarantined


async def test_patient_study_and_series_follow_the_stored_instances(store: Store, index: Index) -> None:
    first = make_row(series_number=1, instance_number=1)
    study = first.study_instance_uid
    rows = [first, make_row(study_instance_uid=study, series_instance_uid=first.series_instance_uid, instance_number=2),
            make_row(study_instance_uid=study, modality="SR", series_number=2, instance_number=1)]
    for row in rows:
        await index.record_instance(row, CorrectionPolicy.REPLACE)
    studies = ("SELECT p.patient_id, p.issuer_of_patient_id, s.study_instance_uid, s.accession_number, s.study_date, "
               "s.study_time, s.study_description FROM studies s JOIN patients p ON p.id = s.patient_ref")
    series = ("SELECT series_instance_uid, study_instance_uid, modality, series_number FROM series "
              "ORDER BY series_number")

    assert await store.query(studies) == [(first.patient_id, first.issuer_of_patient_id, study, "ACC-1", "20240506",
                                           "070809", "CT head")]
    assert await store.query(series) == [(first.series_instance_uid, study, "CT", 1),
                                         (rows[2].series_instance_uid, study, "SR", 2)]
    assert await store.query("SELECT count(*) FROM patients") == [(1,)]
    assert await index.study_instances(study) == [rows[0], rows[1], rows[2]]

    await index.record_instance(corrected(first, accession_number="ACC-2", study_description="CT head, corrected"),
                                CorrectionPolicy.REPLACE)
    await index.record_instance(make_row(study_instance_uid=study, series_instance_uid=first.series_instance_uid,
                                         patient_id="PID-WRONG", accession_number="ACC-BAD", modality="XX",
                                         status=InstanceStatus.QUARANTINED), CorrectionPolicy.REPLACE)

    assert await store.query(studies) == [(first.patient_id, first.issuer_of_patient_id, study, "ACC-2", "20240506",
                                           "070809", "CT head, corrected")]
    assert (await store.query(series))[0] == (first.series_instance_uid, study, "CT", 1)


async def test_concurrent_records_of_one_new_instance_leave_one_current_row(store: Store, index: Index) -> None:
    row = make_row()
    receives = [replace(row, instance_id=str(uuid.uuid4())) for _ in range(24)]
    async with await store.open() as other:
        results = await asyncio.gather(*(adapter.record_instance(receive, CorrectionPolicy.REPLACE)
                                         for adapter, receive in zip([index, other] * 12, receives, strict=True)))

    assert Counter(result.outcome for result in results) == {Outcome.INSERTED: 1, Outcome.DUPLICATE: 23}
    [inserted] = [result.current for result in results if result.outcome is Outcome.INSERTED]
    assert all(result.current == inserted for result in results)
    assert await index.instance_versions(row.sop_instance_uid) == [inserted]
    assert await current_rows(store, row.sop_instance_uid) == 1


async def test_concurrent_corrections_keep_one_current_row_and_every_version(store: Store, index: Index) -> None:
    first = make_row()
    receives = [first] + [corrected(first) for _ in range(23)]
    async with await store.open() as other:
        results = await asyncio.gather(*(adapter.record_instance(receive, CorrectionPolicy.REPLACE)
                                         for adapter, receive in zip([index, other] * 12, receives, strict=True)))

    assert Counter(result.outcome for result in results) == {Outcome.INSERTED: 1, Outcome.REPLACED: 23}
    versions = await index.instance_versions(first.sop_instance_uid)
    assert [v.version for v in versions] == list(range(1, 25))
    assert {v.received_sha256 for v in versions} == {r.received_sha256 for r in receives}
    assert [v.status for v in versions] == [InstanceStatus.REPLACED] * 23 + [InstanceStatus.STORED]
    assert all(r.previous is not None and r.previous.version == r.current.version - 1
               for r in results if r.outcome is Outcome.REPLACED)
    assert await index.current_instance(first.sop_instance_uid) == versions[-1]
    assert await current_rows(store, first.sop_instance_uid) == 1


async def test_a_batch_is_decided_row_by_row_in_order(store: Store, index: Index) -> None:
    known = make_row()
    await index.record_instance(known, CorrectionPolicy.REPLACE)
    study = make_row().study_instance_uid
    new = [make_row(study_instance_uid=study, instance_number=n) for n in range(1, 4)]
    redelivered = replace(known, instance_id=str(uuid.uuid4()), storage_key="instances/elsewhere")
    correction = corrected(new[0], accession_number="ACC-2")  # corrects a row earlier in the same batch
    again = replace(new[1], instance_id=str(uuid.uuid4()), storage_key="instances/again")

    results = await index.record_instances([*new, redelivered, correction, again], CorrectionPolicy.REPLACE)

    assert [result.outcome for result in results] == [Outcome.INSERTED] * 3 + [
        Outcome.DUPLICATE, Outcome.REPLACED, Outcome.DUPLICATE]
    assert results[3].current == known
    assert results[4] == RecordResult(Outcome.REPLACED, replace(correction, version=2),
                                      replace(new[0], status=InstanceStatus.REPLACED))
    assert results[5].current == new[1]
    assert sorted(await index.study_instances(study), key=lambda row: row.instance_number or 0) == [
        results[4].current, new[1], new[2]]
    assert await current_rows(store, new[0].sop_instance_uid) == 1
    assert await index.record_instances([], CorrectionPolicy.REPLACE) == []


async def test_a_batch_of_new_instances_fills_patient_study_and_series_once(store: Store, index: Index) -> None:
    study = make_row().study_instance_uid
    series = [new_uid(), new_uid()]
    rows = [make_row(study_instance_uid=study, series_instance_uid=series[n % 2], series_number=n % 2 + 1,
                     instance_number=n) for n in range(10)]
    other_patient = make_row(patient_id="PID-0002")

    results = await index.record_instances([*rows, other_patient], CorrectionPolicy.REPLACE)

    assert [result.outcome for result in results] == [Outcome.INSERTED] * 11
    assert await store.query("SELECT count(*) FROM patients") == [(2,)]
    assert await store.query(f"SELECT count(*) FROM series WHERE study_instance_uid = '{study}'") == [(2,)]
    assert len(await index.study_instances(study)) == 10
    assert (await index.study_activity(study)) is not None


async def test_a_refused_row_refuses_its_whole_batch(index: Index) -> None:
    good = make_row()
    bad = make_row(status=InstanceStatus.REPLACED)
    with pytest.raises(ValueError, match="replaced"):
        await index.record_instances([good, bad], CorrectionPolicy.REPLACE)
    assert await index.current_instance(good.sop_instance_uid) is None


async def test_concurrent_batches_sharing_uids_neither_deadlock_nor_duplicate(store: Store, index: Index) -> None:
    rows = [make_row() for _ in range(20)]
    batches = [[replace(row, instance_id=str(uuid.uuid4())) for row in (rows if n % 2 else rows[::-1])]
               for n in range(8)]
    async with await store.open() as other:
        results = await asyncio.wait_for(asyncio.gather(*(
            adapter.record_instances(batch, CorrectionPolicy.REPLACE)
            for adapter, batch in zip([index, other] * 4, batches, strict=True))), timeout=60)

    outcomes = Counter(result.outcome for batch in results for result in batch)
    assert outcomes == {Outcome.INSERTED: 20, Outcome.DUPLICATE: 140}
    for row in rows:
        assert await current_rows(store, row.sop_instance_uid) == 1


async def test_migrate_again_is_a_no_op(store: Store, index: Index) -> None:
    row = make_row()
    await index.record_instance(row, CorrectionPolicy.REPLACE)
    async with await store.open() as other:
        await asyncio.gather(index.migrate(), other.migrate())
    await index.migrate()

    expected = [migration.version for migration in load(store.kind)]
    assert expected == list(range(1, len(expected) + 1))
    assert await store.query("SELECT version FROM schema_migrations ORDER BY version") == [(v,) for v in expected]
    assert await index.instance_versions(row.sop_instance_uid) == [row]


async def test_timestamps_come_back_utc_aware(index: Index) -> None:
    helsinki = timezone(timedelta(hours=3))
    row = make_row(received_at=datetime(2024, 6, 1, 12, 0, 0, 1, tzinfo=helsinki),
                   stored_at=datetime(2024, 6, 1, 12, 0, 5, tzinfo=helsinki))
    await index.record_instance(row, CorrectionPolicy.REPLACE)

    [stored] = await index.instance_versions(row.sop_instance_uid)

    assert stored.received_at == datetime(2024, 6, 1, 9, 0, 0, 1, tzinfo=UTC)
    assert stored.stored_at == datetime(2024, 6, 1, 9, 0, 5, tzinfo=UTC)
    assert stored.received_at.utcoffset() == stored.stored_at.utcoffset() == timedelta(0)
    with pytest.raises(ValueError, match="timezone-aware"):
        make_row(received_at=datetime(2024, 6, 1, 12, 0))


CHILD = ("import asyncio, sys; from tests.integration.test_index_contract import child; "
         "asyncio.run(child(*sys.argv[1:]))")


async def child(kind: str, location: str, uid_prefix: str) -> None:
    """One of the processes of the test below: migrate a fresh store and record the same instances as its twin."""
    async with await Store(kind, location).open() as index:
        print("ready", flush=True)
        sys.stdin.readline()
        await index.migrate()
        outcomes = {}
        for n in range(20):
            digest = hashlib.sha256(f"{uid_prefix}.{n}".encode()).hexdigest()
            row = make_row(sop_instance_uid=f"{uid_prefix}.{n}", study_instance_uid=f"{uid_prefix}.0",
                           series_instance_uid=f"{uid_prefix}.0", sha256=digest, received_sha256=digest)
            outcomes[row.sop_instance_uid] = (await index.record_instance(row, CorrectionPolicy.REJECT)).outcome
    print(orjson.dumps(outcomes).decode(), flush=True)


async def test_processes_migrate_and_record_concurrently(store: Store) -> None:
    uid_prefix = new_uid()
    processes = [await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD, store.kind, store.location,
                                                      uid_prefix, cwd=ROOT, stdin=asyncio.subprocess.PIPE,
                                                      stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                 for _ in range(2)]
    try:
        async with asyncio.timeout(120):
            for process in processes:
                assert process.stdout is not None
                line = await process.stdout.readline()
                if line != b"ready\n":
                    assert process.stderr is not None
                    raise AssertionError(f"child not ready: {line!r}\n{(await process.stderr.read()).decode()}")
            outputs = await asyncio.gather(*(process.communicate(b"go\n") for process in processes))
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()

    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr.decode()
    outcomes = [orjson.loads(stdout) for stdout, _ in outputs]
    for uid in outcomes[0]:
        assert sorted(o[uid] for o in outcomes) == [Outcome.DUPLICATE, Outcome.INSERTED]
    assert await store.query("SELECT count(*) FROM instances WHERE is_current") == [(20,)]
    assert await store.query("SELECT version FROM schema_migrations") == [(m.version,) for m in load(store.kind)]


async def test_studies_are_found_by_patient_or_accession(index: Index) -> None:
    patient, accession = f"P-{uuid.uuid4().hex[:8]}", f"A-{uuid.uuid4().hex[:8]}"
    first = make_row(patient_id=patient, accession_number=accession)
    await index.record_instance(first, CorrectionPolicy.REPLACE)
    await index.record_instance(make_row(study_instance_uid=first.study_instance_uid, patient_id=patient,
                                         accession_number=accession), CorrectionPolicy.REPLACE)
    earlier = datetime(2020, 1, 1, tzinfo=UTC)  # a later study date, received before the others
    await index.record_instance(make_row(patient_id=patient, study_date="20300101", received_at=earlier),
                                CorrectionPolicy.REPLACE)
    by_patient = await index.find_studies(patient_id=patient)
    assert [s.instances for s in by_patient] == [2, 1], "the most recently received first, instances counted"
    assert by_patient[1].last_received_at == "2020-01-01T00:00:00.000000+00:00"
    assert datetime.fromisoformat(by_patient[0].last_received_at) == RECEIVED_AT
    [by_accession] = await index.find_studies(accession_number=accession)
    assert by_accession.study_instance_uid == first.study_instance_uid and by_accession.patient_id == patient
    assert await index.find_studies(patient_id="nobody") == []


async def test_study_rows_include_prior_versions_on_request(index: Index) -> None:
    row = make_row()
    await index.record_instance(row, CorrectionPolicy.REPLACE)
    await index.record_instance(corrected(row), CorrectionPolicy.REPLACE)
    current = await index.study_instances(row.study_instance_uid)
    everything = await index.study_instances(row.study_instance_uid, include_replaced=True)
    assert [r.version for r in current] == [2]
    assert [(r.version, r.status) for r in everything] == [(1, InstanceStatus.REPLACED), (2, InstanceStatus.STORED)]
