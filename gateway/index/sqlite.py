"""The SQLite index (one machine): stdlib sqlite3 on one dedicated thread per adapter, WAL, ``synchronous=FULL``.

One connection used only from its own thread, so calls from many tasks are serialised without blocking the
event loop. Every write runs in ``BEGIN IMMEDIATE``, which takes the database's write lock before the
current row is read: writers in this and other processes sharing the file are serialised (they wait up to
the busy timeout), so ``record_instance`` and ``migrate`` never race. Timestamps are stored as fixed-width
ISO 8601 UTC text and come back timezone-aware.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self, TypeVar

import orjson

from gateway.core.iocm import DEFAULT_RESEND, Resend, Title
from gateway.index import (
    Commitment,
    CommitmentItem,
    CommitmentPart,
    CorrectionPolicy,
    Delivery,
    DeliveryState,
    IndexFailure,
    IndexRejected,
    IndexUnavailable,
    InstanceRow,
    InstanceStatus,
    InstanceVariant,
    Outcome,
    RecordResult,
    Registration,
    StudyActivity,
    StudySummary,
    audit_log,
    patients,
    rejections,
    resolve,
    search,
    workflow,
)
from gateway.index.forwarding import ForwardQueries, Steps, sqlite
from gateway.index.migrations import load
from gateway.sqlite import use_wal, write_transaction

_FIELDS = tuple(field.name for field in fields(InstanceRow))
_T = TypeVar("_T")
_IN_BATCH = 500
"""UIDs per IN list: well under SQLite's limit on host parameters."""
_BUSY_TIMEOUT_SECONDS = 60.0

_TOUCH_STUDY = workflow.sqlite(workflow.TOUCH_STUDY)
_REJECTION = sqlite(rejections.REJECTION)


def _json(value: dict[str, Any] | list[Any]) -> str:
    return orjson.dumps(value).decode()


_SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TEXT NOT NULL
) STRICT"""
_APPLIED = "SELECT version FROM schema_migrations"
_RECORD_MIGRATION = "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)"

_SELECT = f"SELECT {', '.join(_FIELDS)} FROM instances"
_CURRENT = f"{_SELECT} WHERE sop_instance_uid = ?1 AND is_current"
_VERSIONS = f"{_SELECT} WHERE sop_instance_uid = ?1 ORDER BY version"
_STUDY = f"""{_SELECT} WHERE study_instance_uid = ?1
AND (status = 'stored' OR (?2 AND status = 'quarantined') OR (?3 AND status = 'replaced')
     OR (?4 AND status = 'rejected'))
ORDER BY series_number NULLS LAST, series_instance_uid, instance_number NULLS LAST, sop_instance_uid, version"""
_FIND_STUDIES = """SELECT study_instance_uid,
(SELECT p.patient_id FROM studies s JOIN patients p ON p.id = s.patient_ref
 WHERE s.study_instance_uid = instances.study_instance_uid),
(SELECT p.issuer_of_patient_id FROM studies s JOIN patients p ON p.id = s.patient_ref
 WHERE s.study_instance_uid = instances.study_instance_uid), max(accession_number),
max(study_date), max(study_time), max(study_description), count(*), max(received_at) FROM instances
WHERE is_current AND (?1 = '' OR study_instance_uid IN (
    SELECT s.study_instance_uid FROM studies s JOIN patients p ON p.id = s.patient_ref WHERE p.patient_id = ?1))
  AND (?2 = '' OR accession_number = ?2)
GROUP BY study_instance_uid ORDER BY max(received_at) DESC, study_instance_uid LIMIT ?3"""

_VARIANT_FIELDS = tuple(field.name for field in fields(InstanceVariant))
_INSERT_VARIANT = (f"INSERT INTO instance_variants ({', '.join(_VARIANT_FIELDS)}) "
                   f"VALUES ({', '.join(f'?{n}' for n in range(1, len(_VARIANT_FIELDS) + 1))}) "
                   "ON CONFLICT DO NOTHING")
_STUDY_VARIANTS = (f"SELECT {', '.join(_VARIANT_FIELDS)} FROM instance_variants WHERE study_instance_uid = ?1 "
                   "ORDER BY received_at, sop_instance_uid")
_MARK_REPLACED = "UPDATE instances SET status = 'replaced' WHERE sop_instance_uid = ?1 AND is_current"
_INSERT = (f"INSERT INTO instances ({', '.join(_FIELDS)}) "
           f"VALUES ({', '.join(f'?{n}' for n in range(1, len(_FIELDS) + 1))})")
_UPSERT_PATIENT = sqlite(search.UPSERT_PATIENT)
_UPSERT_STUDY = sqlite(search.UPSERT_STUDY)
_UPSERT_SERIES = """
INSERT INTO series AS s (series_instance_uid, study_instance_uid, modality, series_number)
VALUES (?1, ?2, ?3, ?4)
ON CONFLICT (series_instance_uid) DO UPDATE SET
    study_instance_uid = excluded.study_instance_uid, modality = excluded.modality,
    series_number = excluded.series_number
WHERE ?5 AND (s.study_instance_uid, s.modality, s.series_number)
    IS DISTINCT FROM (excluded.study_instance_uid, excluded.modality, excluded.series_number)"""


def _fold(value: str | None) -> str | None:
    return None if value is None else value.upper()


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_SECONDS, isolation_level=None)
    connection.create_function(search.FOLD, 1, _fold, deterministic=True)  # SQLite's upper() knows ASCII only
    use_wal(connection, _BUSY_TIMEOUT_SECONDS)
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA foreign_keys=ON")
    return connection


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _params(row: InstanceRow) -> list[Any]:
    values: dict[str, Any] = {name: getattr(row, name) for name in _FIELDS}
    values["status"] = row.status.value
    values["findings"] = orjson.dumps(row.findings).decode()
    values["patient_attributes"] = orjson.dumps(row.patient_attributes).decode()
    values["received_at"] = _timestamp(row.received_at)
    values["stored_at"] = _timestamp(row.stored_at)
    return list(values.values())


def _row(record: tuple[Any, ...]) -> InstanceRow:
    values = dict(zip(_FIELDS, record, strict=True))
    values["status"] = InstanceStatus(values["status"])
    values["findings"] = tuple(orjson.loads(values["findings"]))
    values["patient_attributes"] = orjson.loads(values["patient_attributes"])
    values["received_at"] = datetime.fromisoformat(values["received_at"])
    values["stored_at"] = datetime.fromisoformat(values["stored_at"])
    return InstanceRow(**values)


def _statements(script: str) -> Iterator[str]:
    """A migration statement by statement: ``executescript`` would first commit the migration's transaction."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement
            statement = ""
    if statement.strip():
        yield statement


def _translate(exc: sqlite3.Error) -> IndexFailure:
    """Locked, busy, disk or file errors are outages; integrity, data and programming errors are the
    statement's (the message is left out: SQLite quotes values in some)."""
    what = f"SQLite {type(exc).__name__}"
    if isinstance(exc, (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.ProgrammingError,
                        sqlite3.InterfaceError, sqlite3.NotSupportedError)):
        return IndexRejected(what)
    return IndexUnavailable(f"{what}: {exc}" if isinstance(exc, sqlite3.OperationalError) else what)


class SqliteIndex(ForwardQueries, search.SearchQueries, patients.PatientQueries, rejections.RejectionQueries,
                  audit_log.AuditLogQueries):
    _sqlite = True

    def __init__(self, connection: sqlite3.Connection, thread: ThreadPoolExecutor) -> None:
        self._db = connection
        self._thread = thread

    @classmethod
    async def open(cls, path: Path) -> SqliteIndex:
        """Open (creating if missing) the database file at ``path``; ``migrate`` is separate."""
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-index")
        try:
            connection = await asyncio.get_running_loop().run_in_executor(thread, _connect, path)
        except sqlite3.Error as exc:
            thread.shutdown(wait=False)
            raise _translate(exc) from exc
        except BaseException:
            thread.shutdown(wait=False)
            raise
        return cls(connection, thread)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._run(self._db.close)
        self._thread.shutdown()

    async def _run(self, function: Callable[..., _T], *args: Any) -> _T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)
        except sqlite3.Error as exc:
            raise _translate(exc) from exc

    async def migrate(self) -> None:
        await self._run(self._migrate)

    def _migrate(self) -> None:
        with write_transaction(self._db):
            self._db.execute(_SCHEMA_MIGRATIONS)
            applied = {version for (version,) in self._db.execute(_APPLIED)}
            for migration in load("sqlite"):
                if migration.version not in applied:
                    for statement in _statements(migration.sql):
                        self._db.execute(statement)
                    self._db.execute(_RECORD_MIGRATION,
                                     (migration.version, migration.name, _timestamp(datetime.now(UTC))))

    async def record_instance(self, row: InstanceRow, policy: CorrectionPolicy,
                              resend: Mapping[Title, Resend] = DEFAULT_RESEND) -> RecordResult:
        [result] = await self.record_instances([row], policy, resend)
        return result

    async def record_instances(self, rows: Sequence[InstanceRow], policy: CorrectionPolicy,
                               resend: Mapping[Title, Resend] = DEFAULT_RESEND) -> list[RecordResult]:
        return await self._run(self._record_instances, rows, policy, resend)

    def _record_instances(self, rows: Sequence[InstanceRow], policy: CorrectionPolicy,
                          resend: Mapping[Title, Resend]) -> list[RecordResult]:
        with write_transaction(self._db):
            return [self._record_instance(row, policy, resend) for row in rows]

    def _record_instance(self, row: InstanceRow, policy: CorrectionPolicy,
                         resend: Mapping[Title, Resend]) -> RecordResult:
        uid = row.sop_instance_uid
        found = self._db.execute(_REJECTION, (uid,)).fetchone()
        result = resolve(self._current_instance(uid), row, policy,
                         None if found is None else rejections.rejection(found), resend)
        if result.outcome is Outcome.VARIANT:
            variant = replace(row, version=result.current.version).variant()
            values = {name: getattr(variant, name) for name in _VARIANT_FIELDS}
            values["received_at"] = _timestamp(variant.received_at)
            values["stored_at"] = _timestamp(variant.stored_at)
            if self._db.execute(_INSERT_VARIANT, list(values.values())).rowcount == 0:  # this variant is known already
                return RecordResult(Outcome.DUPLICATE, result.current, None)
        if result.written:
            if result.previous is not None:
                self._db.execute(_MARK_REPLACED, (uid,))
                if result.previous.study_instance_uid != row.study_instance_uid:  # moved: the old study changed
                    self._db.execute(_TOUCH_STUDY, (result.previous.study_instance_uid, time.time()))
            self._write(result.current)
        for statement, params in rejections.after_record(row, result)[0]:
            self._db.execute(sqlite(statement), params)
        return result

    def _write(self, row: InstanceRow) -> None:
        trusted = row.status is InstanceStatus.STORED
        [(patient_ref,)] = self._db.execute(_UPSERT_PATIENT, search.patient_params(row)).fetchall()
        self._db.execute(_UPSERT_STUDY, search.study_params(row, patient_ref, _timestamp(datetime.now(UTC))))
        self._db.execute(_UPSERT_SERIES, (row.series_instance_uid, row.study_instance_uid, row.modality,
                                          row.series_number, trusted))
        self._db.execute(_INSERT, _params(row))
        self._db.execute(_TOUCH_STUDY, (row.study_instance_uid, time.time()))

    async def current_instance(self, sop_instance_uid: str) -> InstanceRow | None:
        return await self._run(self._current_instance, sop_instance_uid)

    async def study_variants(self, study_instance_uid: str) -> list[InstanceVariant]:
        def query() -> list[InstanceVariant]:
            variants = []
            for record in self._db.execute(_STUDY_VARIANTS, (study_instance_uid,)):
                values = dict(zip(_VARIANT_FIELDS, record, strict=True))
                values["received_at"] = datetime.fromisoformat(values["received_at"])
                values["stored_at"] = datetime.fromisoformat(values["stored_at"])
                variants.append(InstanceVariant(**values))
            return variants

        return await self._run(query)

    def _current_instance(self, sop_instance_uid: str) -> InstanceRow | None:
        record = self._db.execute(_CURRENT, (sop_instance_uid,)).fetchone()
        return None if record is None else _row(record)

    async def current_instances(self, sop_instance_uids: Sequence[str]) -> dict[str, InstanceRow]:
        def query() -> dict[str, InstanceRow]:
            found: dict[str, InstanceRow] = {}
            uids = list(sop_instance_uids)
            for start in range(0, len(uids), _IN_BATCH):
                batch = uids[start : start + _IN_BATCH]
                placeholders = ", ".join("?" * len(batch))
                for record in self._db.execute(
                        f"{_SELECT} WHERE sop_instance_uid IN ({placeholders}) AND is_current", batch):
                    row = _row(record)
                    found[row.sop_instance_uid] = row
            return found

        return await self._run(query)

    async def instance_versions(self, sop_instance_uid: str) -> list[InstanceRow]:
        return await self._run(self._fetch, _VERSIONS, (sop_instance_uid,))

    async def study_instances(self, study_instance_uid: str, include_quarantined: bool = False,
                              include_replaced: bool = False, include_rejected: bool = False) -> list[InstanceRow]:
        return await self._run(self._fetch, _STUDY, (study_instance_uid, include_quarantined, include_replaced,
                                                      include_rejected))

    async def find_studies(self, patient_id: str = "", accession_number: str = "", limit: int = 100) -> list[StudySummary]:
        def query() -> list[StudySummary]:
            return [StudySummary(*record) for record in self._db.execute(
                _FIND_STUDIES, (patient_id, accession_number, limit))]

        return await self._run(query)

    def _fetch(self, query: str, params: tuple[Any, ...]) -> list[InstanceRow]:
        return [_row(record) for record in self._db.execute(query, params)]

    async def study_activity(self, study_instance_uid: str) -> StudyActivity | None:
        def query() -> StudyActivity | None:
            row = self._db.execute(workflow.sqlite(workflow.STUDY_ACTIVITY), (study_instance_uid,)).fetchone()
            return None if row is None else workflow.study_activity(row)

        return await self._run(query)

    async def due_stable_studies(self, quiet_since: float, limit: int = 100) -> list[StudyActivity]:
        def query() -> list[StudyActivity]:
            return [workflow.study_activity(row) for row in
                    self._db.execute(workflow.sqlite(workflow.DUE_STABLE), (quiet_since, limit))]

        return await self._run(query)

    async def mark_stable(self, activity: StudyActivity, at: float) -> bool:
        return await self._write_one(workflow.MARK_STABLE, (activity.study_instance_uid,
                                                            activity.last_instance_at, at)) == 1

    async def hasten_stability(self, study_instance_uid: str) -> None:
        await self._write_one(workflow.HASTEN_STABILITY, (study_instance_uid,))

    async def _write_one(self, statement: str, params: tuple[Any, ...]) -> int:
        def write() -> int:
            with write_transaction(self._db):
                return self._db.execute(workflow.sqlite(statement), params).rowcount

        return await self._run(write)

    async def add_commitment(self, commitment: Commitment) -> bool:
        def write() -> bool:
            with write_transaction(self._db):
                inserted = self._db.execute(workflow.sqlite(workflow.INSERT_COMMITMENT), (
                    commitment.transaction_uid, commitment.requester_ae, commitment.requested_at,
                    commitment.deadline, _json(commitment.source))).fetchone()
                if inserted is None:
                    return False
                self._db.executemany(workflow.sqlite(workflow.INSERT_ITEM), [
                    (commitment.transaction_uid, position, item.sop_class_uid, item.sop_instance_uid)
                    for position, item in enumerate(commitment.items)])
                return True

        return await self._run(write)

    async def add_commitment_part(self, part: CommitmentPart) -> tuple[CommitmentItem, ...] | None:
        uid, requested_at = part.transaction_uid, part.requested_at

        def write() -> tuple[CommitmentItem, ...] | None:
            with write_transaction(self._db):
                if self._db.execute(workflow.sqlite(workflow.KNOWN_REQUEST), (uid, requested_at)).fetchone():
                    return tuple(CommitmentItem(cls, inst) for cls, inst, _ in
                                 self._db.execute(workflow.sqlite(workflow.ITEMS), (uid,)))
                self._db.execute(workflow.sqlite(workflow.INSERT_PART), (
                    uid, requested_at, part.part, part.parts, _json(workflow.part_items(part))))
                [(kept,)] = self._db.execute(workflow.sqlite(workflow.COUNT_PARTS), (uid, requested_at)).fetchall()
                if kept < part.parts:
                    return None
                return workflow.request_items([orjson.loads(items) for (items,) in self._db.execute(
                    workflow.sqlite(workflow.PARTS), (uid, requested_at))])

        return await self._run(write)

    async def drop_commitment_parts(self, transaction_uid: str, requested_at: float) -> None:
        await self._write_one(workflow.DROP_PARTS, (transaction_uid, requested_at))

    async def expire_commitment_parts(self, requested_before: float) -> list[str]:
        def write() -> list[str]:
            with write_transaction(self._db):
                rows = self._db.execute(workflow.sqlite(workflow.EXPIRE_PARTS), (requested_before,)).fetchall()
            return sorted({uid for (uid,) in rows})

        return await self._run(write)

    def _commitment(self, row: tuple[Any, ...]) -> Commitment:
        items = self._db.execute(workflow.sqlite(workflow.ITEMS), (row[0],)).fetchall()
        return workflow.commitment(row, items, orjson.loads)

    async def commitment(self, transaction_uid: str) -> Commitment | None:
        def query() -> Commitment | None:
            row = self._db.execute(workflow.sqlite(workflow.COMMITMENT), (transaction_uid,)).fetchone()
            return None if row is None else self._commitment(row)

        return await self._run(query)

    async def expired_commitments(self, now: float, limit: int = 100) -> list[Commitment]:
        def query() -> list[Commitment]:
            rows = self._db.execute(workflow.sqlite(workflow.EXPIRED_COMMITMENTS), (now, limit)).fetchall()
            return [self._commitment(row) for row in rows]

        return await self._run(query)

    async def study_commitments(self, study_instance_uid: str, limit: int = 20) -> list[Commitment]:
        def query() -> list[Commitment]:
            rows = self._db.execute(workflow.sqlite(workflow.STUDY_COMMITMENTS), (study_instance_uid, limit)).fetchall()
            return [self._commitment(row) for row in rows]

        return await self._run(query)

    async def overdue_commitments(self, now: float, report_kind: str, limit: int = 100) -> list[Commitment]:
        def query() -> list[Commitment]:
            rows = self._db.execute(workflow.sqlite(workflow.OVERDUE_COMMITMENTS), (now, report_kind, limit)).fetchall()
            return [self._commitment(row) for row in rows]

        return await self._run(query)

    async def waiting_commitments(self, report_kind: str) -> list[float]:
        def query() -> list[float]:
            return [row[0] for row in self._db.execute(workflow.sqlite(workflow.WAITING_COMMITMENTS), (report_kind,))]

        return await self._run(query)

    async def commitments_waiting_for(self, sop_instance_uids: list[str]) -> list[str]:
        def query() -> list[str]:
            found: set[str] = set()
            for start in range(0, len(sop_instance_uids), 500):
                batch = sop_instance_uids[start : start + 500]
                found.update(uid for (uid,) in self._db.execute(
                    workflow.sqlite(workflow.waiting_for(len(batch))), batch))
            return sorted(found)

        return await self._run(query)

    async def decide_commitment(self, transaction_uid: str, items: tuple[CommitmentItem, ...],
                                report: Delivery, at: float) -> bool:
        def write() -> bool:
            with write_transaction(self._db):
                if self._db.execute(workflow.sqlite(workflow.DECIDE), (transaction_uid, at)).rowcount != 1:
                    return False
                self._db.executemany(workflow.sqlite(workflow.SET_ITEM), [
                    (transaction_uid, position, item.failure_reason) for position, item in enumerate(items)])
                self._db.execute(workflow.sqlite(workflow.REPLACE_DELIVERY), workflow.delivery_params(report, _json))
                return True

        return await self._run(write)

    async def put_delivery(self, delivery: Delivery, replace: bool) -> None:
        statement = workflow.REPLACE_DELIVERY if replace else workflow.INSERT_DELIVERY
        await self._write_one(statement, workflow.delivery_params(delivery, _json))

    async def claim_deliveries(self, now: float, lease_seconds: float, limit: int,
                               kinds: tuple[str, ...]) -> list[Delivery]:
        def write() -> list[Delivery]:
            with write_transaction(self._db):
                rows = self._db.execute(workflow.sqlite(workflow.claim(len(kinds))),
                                        (now, now + lease_seconds, limit, *kinds)).fetchall()
            return [workflow.delivery(row, orjson.loads) for row in rows]

        return await self._run(write)

    async def finish_attempt(self, delivery_id: str, state: DeliveryState, error: str, next_attempt_at: float,
                             at: float) -> None:
        await self._write_one(workflow.FINISH_ATTEMPT, (delivery_id, state.value, error, next_attempt_at, at))

    async def deliveries(self, subject: str) -> list[Delivery]:
        def query() -> list[Delivery]:
            return [workflow.delivery(row, orjson.loads)
                    for row in self._db.execute(workflow.sqlite(workflow.DELIVERIES), (subject,))]

        return await self._run(query)

    async def record_registration(self, registration: Registration) -> None:
        def write() -> None:
            with write_transaction(self._db):
                self._db.execute(workflow.sqlite(workflow.RETIRE_REGISTRATION), (registration.study_instance_uid,))
                self._db.execute(workflow.sqlite(workflow.INSERT_REGISTRATION),
                                 workflow.registration_params(registration))

        await self._run(write)

    async def retire_registration(self, study_instance_uid: str) -> None:
        await self._write_one(workflow.RETIRE_REGISTRATION, (study_instance_uid,))

    async def registrations(self, study_instance_uid: str) -> list[Registration]:
        def query() -> list[Registration]:
            return [workflow.registration(row) for row in
                    self._db.execute(workflow.sqlite(workflow.REGISTRATIONS), (study_instance_uid,))]

        return await self._run(query)

    async def _forward_write(self, steps: Steps) -> list[int]:
        def write() -> list[int]:
            counts = []
            with write_transaction(self._db):
                for statement, params in steps:
                    if len(params) == 1:
                        counts.append(self._db.execute(sqlite(statement), params[0]).rowcount)
                    else:
                        self._db.executemany(sqlite(statement), params)
                        counts.append(-1)
            return counts

        return await self._run(write)

    async def _run_plan(self, plan: patients.Plan[_T], commit: bool) -> _T:
        def execute(statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
            return [tuple(row) for row in self._db.execute(sqlite(statement), params).fetchall()]

        def run() -> _T:
            if not commit:  # a check: a deferred transaction takes the write lock only if the plan writes
                self._db.execute("BEGIN")
                try:
                    return patients.drive(plan, execute)
                finally:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
            with write_transaction(self._db):
                return patients.drive(plan, execute)

        return await self._run(run)

    async def _select_rows(self, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        def query() -> list[tuple[Any, ...]]:
            return [tuple(row) for row in self._db.execute(sqlite(statement), params)]

        return await self._run(query)

    async def _forward_returning(self, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        def write() -> list[tuple[Any, ...]]:
            with write_transaction(self._db):
                return [tuple(row) for row in self._db.execute(sqlite(statement), params).fetchall()]

        return await self._run(write)
