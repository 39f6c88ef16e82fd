"""The PostgreSQL index (production): an asyncpg pool, one READ COMMITTED transaction per ``record_instances``.

Writers of one SOP Instance UID, in any process, are serialised by a transaction-scoped advisory lock on
the UID, taken before the current row is read: a second writer then reads what the first committed, so a
correction never races the insert it corrects and nothing needs retrying. The partial unique index on
current rows is what guarantees one current row even so. ``migrate`` holds an advisory lock too, so
replicas that start together apply each migration once.
"""

from __future__ import annotations

import functools
import time
import typing
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import fields, replace
from datetime import UTC, datetime
from typing import Any, ParamSpec, Self, TypeVar

import asyncpg
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
from gateway.index.forwarding import ForwardQueries, Steps
from gateway.index.migrations import load

_FIELDS = tuple(field.name for field in fields(InstanceRow))

# Advisory lock classes: the first key of the two-key form, so the gateway's locks stay apart from others'.
_MIGRATION_LOCK = 0x64676D01
_INSTANCE_LOCK = 0x64676D02
_REQUEST_LOCK = 0x64676D03
_LOCK_MIGRATIONS = "SELECT pg_advisory_xact_lock($1, 0)"
_LOCK_INSTANCES = "SELECT count(pg_advisory_xact_lock($1, hashtext(uid))) FROM unnest($2::text[]) AS uid"
"""In the order of the array (a function scan keeps it)."""
_LOCK_REQUEST = "SELECT pg_advisory_xact_lock($1, hashtext($2))"

_VARIANT_FIELDS = tuple(field.name for field in fields(InstanceVariant))
_INSERT_VARIANT = (f"INSERT INTO instance_variants ({', '.join(_VARIANT_FIELDS)}) "
                   f"VALUES ({', '.join(f'${n}' for n in range(1, len(_VARIANT_FIELDS) + 1))}) "
                   "ON CONFLICT DO NOTHING RETURNING 1")
_STUDY_VARIANTS = (f"SELECT {', '.join(_VARIANT_FIELDS)} FROM instance_variants WHERE study_instance_uid = $1 "
                   "ORDER BY received_at, sop_instance_uid")

_SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
_APPLIED = "SELECT version FROM schema_migrations"
_RECORD_MIGRATION = "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)"

_SELECT = f"SELECT {', '.join(_FIELDS)} FROM instances"
_CURRENT = f"{_SELECT} WHERE sop_instance_uid = $1 AND is_current"
_CURRENTS = f"{_SELECT} WHERE sop_instance_uid = ANY($1::text[]) AND is_current"
_VERSIONS = f"{_SELECT} WHERE sop_instance_uid = $1 ORDER BY version"
_STUDY = f"""{_SELECT} WHERE study_instance_uid = $1
AND (status = 'stored' OR ($2 AND status = 'quarantined') OR ($3 AND status = 'replaced')
     OR ($4 AND status = 'rejected'))
ORDER BY series_number NULLS LAST, series_instance_uid, instance_number NULLS LAST, sop_instance_uid, version"""
_FIND_STUDIES = """SELECT study_instance_uid,
(SELECT p.patient_id FROM studies s JOIN patients p ON p.id = s.patient_ref
 WHERE s.study_instance_uid = instances.study_instance_uid),
(SELECT p.issuer_of_patient_id FROM studies s JOIN patients p ON p.id = s.patient_ref
 WHERE s.study_instance_uid = instances.study_instance_uid), max(accession_number),
max(study_date), max(study_time), max(study_description), count(*),
to_char(max(received_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"') FROM instances
WHERE is_current AND ($1 = '' OR study_instance_uid IN (
    SELECT s.study_instance_uid FROM studies s JOIN patients p ON p.id = s.patient_ref WHERE p.patient_id = $1))
  AND ($2 = '' OR accession_number = $2)
GROUP BY study_instance_uid ORDER BY max(received_at) DESC, study_instance_uid LIMIT $3"""

_MARK_REPLACED = "UPDATE instances SET status = 'replaced' WHERE sop_instance_uid = $1 AND is_current"
_INSERT = (f"INSERT INTO instances ({', '.join(_FIELDS)}) "
           f"VALUES ({', '.join(f'${n}' for n in range(1, len(_FIELDS) + 1))})")
_UPSERT_PATIENT = search.UPSERT_PATIENT
_UPSERT_STUDY = search.UPSERT_STUDY
_UPSERT_SERIES = """
INSERT INTO series AS s (series_instance_uid, study_instance_uid, modality, series_number)
VALUES ($1, $2, $3, $4)
ON CONFLICT (series_instance_uid) DO UPDATE SET
    study_instance_uid = EXCLUDED.study_instance_uid, modality = EXCLUDED.modality,
    series_number = EXCLUDED.series_number
WHERE $5 AND (s.study_instance_uid, s.modality, s.series_number)
    IS DISTINCT FROM (EXCLUDED.study_instance_uid, EXCLUDED.modality, EXCLUDED.series_number)"""


async def _init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec("jsonb", schema="pg_catalog", encoder=lambda value: orjson.dumps(value).decode(),
                                    decoder=orjson.loads, format="text")


_OUTAGE_CLASSES = ("08", "40", "53", "57", "58", "XX")
"""SQLSTATE classes of a server that cannot serve now: connection, rollback (serialisation, deadlock),
insufficient resources, operator intervention (shutdown), system and internal errors. Every other class is
about the statement or its values (data exception 22, integrity 23, syntax or access 42)."""

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _translate(exc: Exception) -> IndexFailure:
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        what = f"PostgreSQL {type(exc).__name__} (SQLSTATE {state})"
        return IndexUnavailable(what) if state[:2] in _OUTAGE_CLASSES else IndexRejected(what)
    if isinstance(exc, ValueError):  # asyncpg's DataError: a query argument it cannot encode
        return IndexRejected(f"PostgreSQL client refused a value ({type(exc).__name__})")
    return IndexUnavailable(f"PostgreSQL unreachable ({type(exc).__name__})")


def _translated(method: Callable[_P, Coroutine[Any, Any, _R]]) -> Callable[_P, Coroutine[Any, Any, _R]]:
    """Driver errors become port errors that say whether a retry can help, so a poison row dead-letters
    instead of being retried forever."""

    @functools.wraps(method)
    async def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await method(*args, **kwargs)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise _translate(exc) from exc

    return call


def _row(record: asyncpg.Record) -> InstanceRow:
    values: dict[str, Any] = dict(record)
    values["status"] = InstanceStatus(values["status"])
    values["findings"] = tuple(values["findings"])
    return InstanceRow(**values)


class PostgresIndex(ForwardQueries, search.SearchQueries, patients.PatientQueries, rejections.RejectionQueries,
                  audit_log.AuditLogQueries):
    _claim_lock = " FOR UPDATE SKIP LOCKED"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    @_translated
    async def connect(cls, url: str, *, min_size: int = 1, max_size: int = 10) -> PostgresIndex:
        """Open a pool on ``url`` (``postgresql://user:password@host:port/db``); ``migrate`` is separate."""
        pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, init=_init_connection)
        return cls(pool)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._pool.close()

    @_translated
    async def migrate(self) -> None:
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute(_LOCK_MIGRATIONS, _MIGRATION_LOCK)
            await connection.execute(_SCHEMA_MIGRATIONS)
            applied = {record["version"] for record in await connection.fetch(_APPLIED)}
            for migration in load("postgres"):
                if migration.version not in applied:
                    await connection.execute(migration.sql)
                    await connection.execute(_RECORD_MIGRATION, migration.version, migration.name)

    async def record_instance(self, row: InstanceRow, policy: CorrectionPolicy,
                              resend: Mapping[Title, Resend] = DEFAULT_RESEND) -> RecordResult:
        [result] = await self.record_instances([row], policy, resend)
        return result

    @_translated
    async def record_instances(self, rows: Sequence[InstanceRow], policy: CorrectionPolicy,
                               resend: Mapping[Title, Resend] = DEFAULT_RESEND) -> list[RecordResult]:
        uids = sorted({row.sop_instance_uid for row in rows})
        async with self._pool.acquire() as connection, connection.transaction(isolation="read_committed"):
            # READ COMMITTED: each statement after the locks sees what their previous holders committed. The
            # locks are taken in UID order, so two workers whose batches share UIDs cannot deadlock.
            await connection.execute(_LOCK_INSTANCES, _INSTANCE_LOCK, uids)
            current = {record["sop_instance_uid"]: _row(record) for record in await connection.fetch(_CURRENTS, uids)}
            found = {record[0]: rejections.rejection(tuple(record))
                     for record in await connection.fetch(rejections.REJECTIONS, uids)}
            results, rejected = [], []
            for row in rows:
                uid = row.sop_instance_uid
                result = resolve(current.get(uid), row, policy, found.get(uid), resend)
                steps, standing = rejections.after_record(row, result)
                rejected += steps
                found.pop(uid, None)
                if standing is not None:
                    found[uid] = standing
                if result.outcome is Outcome.RESTORED:
                    current[uid] = result.current
                if result.written:
                    current[row.sop_instance_uid] = result.current
                elif result.outcome is Outcome.VARIANT:
                    variant = replace(row, version=result.current.version).variant()
                    if await connection.fetchval(_INSERT_VARIANT, *(getattr(variant, n) for n in _VARIANT_FIELDS)) is None:
                        result = RecordResult(Outcome.DUPLICATE, result.current, None)  # this variant is known
                results.append(result)
            written = [result for result in results if result.written]
            if any(result.previous is not None for result in written) or len(written) > len(
                    {result.current.sop_instance_uid for result in written}):
                for result in written:  # corrections: each UID's rows in their order
                    if result.previous is not None:
                        await connection.execute(_MARK_REPLACED, result.current.sop_instance_uid)
                        if result.previous.study_instance_uid != result.current.study_instance_uid:  # moved
                            await connection.execute(workflow.TOUCH_STUDY, result.previous.study_instance_uid,
                                                     time.time())
                    await self._write(connection, result.current)
            elif written:
                await self._write_new([result.current for result in written], connection)
            for statement, params in rejected:
                await connection.execute(statement, *params)
        return results

    @staticmethod
    async def _write_new(rows: list[InstanceRow], connection: asyncpg.Connection) -> None:
        """New instances, each statement once for all of them (asyncpg pipelines ``executemany``)."""
        patients: dict[tuple[str, str], int] = {}
        for row in rows:
            key = (row.patient_id, row.issuer_of_patient_id)
            if key not in patients:
                patients[key] = await connection.fetchval(_UPSERT_PATIENT, *search.patient_params(row))
        now = datetime.now(UTC)
        await connection.executemany(_UPSERT_STUDY, [
            search.study_params(row, patients[(row.patient_id, row.issuer_of_patient_id)], now) for row in rows])
        await connection.executemany(_UPSERT_SERIES, [
            (row.series_instance_uid, row.study_instance_uid, row.modality, row.series_number,
             row.status is InstanceStatus.STORED) for row in rows])
        await connection.executemany(_INSERT, [tuple(getattr(row, name) for name in _FIELDS) for row in rows])
        touched = time.time()
        await connection.executemany(workflow.TOUCH_STUDY, [
            (study, touched) for study in dict.fromkeys(row.study_instance_uid for row in rows)])

    @staticmethod
    async def _write(connection: asyncpg.Connection, row: InstanceRow) -> None:
        trusted = row.status is InstanceStatus.STORED
        patient_ref = await connection.fetchval(_UPSERT_PATIENT, *search.patient_params(row))
        await connection.execute(_UPSERT_STUDY, *search.study_params(row, patient_ref, datetime.now(UTC)))
        await connection.execute(_UPSERT_SERIES, row.series_instance_uid, row.study_instance_uid, row.modality,
                                 row.series_number, trusted)
        await connection.execute(_INSERT, *(getattr(row, name) for name in _FIELDS))
        await connection.execute(workflow.TOUCH_STUDY, row.study_instance_uid, time.time())

    @_translated
    async def current_instance(self, sop_instance_uid: str) -> InstanceRow | None:
        record = await self._pool.fetchrow(_CURRENT, sop_instance_uid)
        return None if record is None else _row(record)

    @_translated
    async def current_instances(self, sop_instance_uids: Sequence[str]) -> dict[str, InstanceRow]:
        rows = [_row(record) for record in await self._pool.fetch(_CURRENTS, list(sop_instance_uids))]
        return {row.sop_instance_uid: row for row in rows}

    @_translated
    async def study_variants(self, study_instance_uid: str) -> list[InstanceVariant]:
        return [InstanceVariant(**dict(record)) for record in await self._pool.fetch(_STUDY_VARIANTS, study_instance_uid)]

    @_translated
    async def instance_versions(self, sop_instance_uid: str) -> list[InstanceRow]:
        return [_row(record) for record in await self._pool.fetch(_VERSIONS, sop_instance_uid)]

    @_translated
    async def study_instances(self, study_instance_uid: str, include_quarantined: bool = False,
                              include_replaced: bool = False, include_rejected: bool = False) -> list[InstanceRow]:
        records = await self._pool.fetch(_STUDY, study_instance_uid, include_quarantined, include_replaced,
                                         include_rejected)
        return [_row(record) for record in records]

    @_translated
    async def find_studies(self, patient_id: str = "", accession_number: str = "", limit: int = 100) -> list[StudySummary]:
        records = await self._pool.fetch(_FIND_STUDIES, patient_id, accession_number, limit)
        return [StudySummary(*record) for record in records]

    @_translated
    async def study_activity(self, study_instance_uid: str) -> StudyActivity | None:
        row = await self._pool.fetchrow(workflow.STUDY_ACTIVITY, study_instance_uid)
        return None if row is None else workflow.study_activity(tuple(row))

    @_translated
    async def due_stable_studies(self, quiet_since: float, limit: int = 100) -> list[StudyActivity]:
        rows = await self._pool.fetch(workflow.DUE_STABLE, quiet_since, limit)
        return [workflow.study_activity(tuple(row)) for row in rows]

    @_translated
    async def mark_stable(self, activity: StudyActivity, at: float) -> bool:
        status = await self._pool.execute(workflow.MARK_STABLE, activity.study_instance_uid,
                                          activity.last_instance_at, at)
        return str(status) == "UPDATE 1"

    @_translated
    async def hasten_stability(self, study_instance_uid: str) -> None:
        await self._pool.execute(workflow.HASTEN_STABILITY, study_instance_uid)

    @_translated
    async def add_commitment(self, commitment: Commitment) -> bool:
        async with self._pool.acquire() as connection, connection.transaction():
            inserted = await connection.fetchval(
                workflow.INSERT_COMMITMENT, commitment.transaction_uid, commitment.requester_ae,
                commitment.requested_at, commitment.deadline, commitment.source)
            if inserted is None:
                return False
            await connection.executemany(workflow.INSERT_ITEM, [
                (commitment.transaction_uid, position, item.sop_class_uid, item.sop_instance_uid)
                for position, item in enumerate(commitment.items)])
            return True

    @_translated
    async def add_commitment_part(self, part: CommitmentPart) -> tuple[CommitmentItem, ...] | None:
        uid, requested_at = part.transaction_uid, part.requested_at
        async with self._pool.acquire() as connection, connection.transaction():
            # two members keeping parts of one request at once (a rebalance) would each miss the other's part
            await connection.execute(_LOCK_REQUEST, _REQUEST_LOCK, uid)
            if await connection.fetchval(workflow.KNOWN_REQUEST, uid, requested_at) is not None:
                return tuple(CommitmentItem(cls, inst) for cls, inst, _ in await connection.fetch(workflow.ITEMS, uid))
            await connection.execute(workflow.INSERT_PART, uid, requested_at, part.part, part.parts,
                                     workflow.part_items(part))
            if await connection.fetchval(workflow.COUNT_PARTS, uid, requested_at) < part.parts:
                return None
            return workflow.request_items([row[0] for row in await connection.fetch(workflow.PARTS, uid, requested_at)])

    @_translated
    async def drop_commitment_parts(self, transaction_uid: str, requested_at: float) -> None:
        await self._pool.execute(workflow.DROP_PARTS, transaction_uid, requested_at)

    @_translated
    async def expire_commitment_parts(self, requested_before: float) -> list[str]:
        return sorted({row[0] for row in await self._pool.fetch(workflow.EXPIRE_PARTS, requested_before)})

    async def _commitment(self, connection: asyncpg.Connection, row: asyncpg.Record) -> Commitment:
        items = [tuple(item) for item in await connection.fetch(workflow.ITEMS, row[0])]
        return workflow.commitment(tuple(row), items, _identity)

    @_translated
    async def commitment(self, transaction_uid: str) -> Commitment | None:
        async with self._pool.acquire() as connection:
            row = await connection.fetchrow(workflow.COMMITMENT, transaction_uid)
            return None if row is None else await self._commitment(connection, row)

    @_translated
    async def expired_commitments(self, now: float, limit: int = 100) -> list[Commitment]:
        async with self._pool.acquire() as connection:
            return [await self._commitment(connection, row)
                    for row in await connection.fetch(workflow.EXPIRED_COMMITMENTS, now, limit)]

    @_translated
    async def study_commitments(self, study_instance_uid: str, limit: int = 20) -> list[Commitment]:
        async with self._pool.acquire() as connection:
            return [await self._commitment(connection, row)
                    for row in await connection.fetch(workflow.STUDY_COMMITMENTS, study_instance_uid, limit)]

    @_translated
    async def overdue_commitments(self, now: float, report_kind: str, limit: int = 100) -> list[Commitment]:
        async with self._pool.acquire() as connection:
            return [await self._commitment(connection, row)
                    for row in await connection.fetch(workflow.OVERDUE_COMMITMENTS, now, report_kind, limit)]

    @_translated
    async def waiting_commitments(self, report_kind: str) -> list[float]:
        return [row[0] for row in await self._pool.fetch(workflow.WAITING_COMMITMENTS, report_kind)]

    @_translated
    async def commitments_waiting_for(self, sop_instance_uids: list[str]) -> list[str]:
        found: set[str] = set()
        for start in range(0, len(sop_instance_uids), 500):
            batch = sop_instance_uids[start : start + 500]
            found.update(row[0] for row in await self._pool.fetch(workflow.waiting_for(len(batch)), *batch))
        return sorted(found)

    @_translated
    async def decide_commitment(self, transaction_uid: str, items: tuple[CommitmentItem, ...],
                                report: Delivery, at: float) -> bool:
        async with self._pool.acquire() as connection, connection.transaction():
            if str(await connection.execute(workflow.DECIDE, transaction_uid, at)) != "UPDATE 1":
                return False
            await connection.executemany(workflow.SET_ITEM, [
                (transaction_uid, position, item.failure_reason) for position, item in enumerate(items)])
            await connection.execute(workflow.REPLACE_DELIVERY, *workflow.delivery_params(report, _identity))
            return True

    @_translated
    async def put_delivery(self, delivery: Delivery, replace: bool) -> None:
        statement = workflow.REPLACE_DELIVERY if replace else workflow.INSERT_DELIVERY
        await self._pool.execute(statement, *workflow.delivery_params(delivery, _identity))

    @_translated
    async def claim_deliveries(self, now: float, lease_seconds: float, limit: int,
                               kinds: tuple[str, ...]) -> list[Delivery]:
        rows = await self._pool.fetch(workflow.claim(len(kinds), " FOR UPDATE SKIP LOCKED"),
                                      now, now + lease_seconds, limit, *kinds)
        return [workflow.delivery(tuple(row), _identity) for row in rows]

    @_translated
    async def finish_attempt(self, delivery_id: str, state: DeliveryState, error: str, next_attempt_at: float,
                             at: float) -> None:
        await self._pool.execute(workflow.FINISH_ATTEMPT, delivery_id, state.value, error, next_attempt_at, at)

    @_translated
    async def deliveries(self, subject: str) -> list[Delivery]:
        return [workflow.delivery(tuple(row), _identity)
                for row in await self._pool.fetch(workflow.DELIVERIES, subject)]

    @_translated
    async def record_registration(self, registration: Registration) -> None:
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute(workflow.RETIRE_REGISTRATION, registration.study_instance_uid)
            await connection.execute(workflow.INSERT_REGISTRATION, *workflow.registration_params(registration))

    @_translated
    async def retire_registration(self, study_instance_uid: str) -> None:
        await self._pool.execute(workflow.RETIRE_REGISTRATION, study_instance_uid)

    @_translated
    async def registrations(self, study_instance_uid: str) -> list[Registration]:
        return [workflow.registration(tuple(row))
                for row in await self._pool.fetch(workflow.REGISTRATIONS, study_instance_uid)]

    @_translated
    async def _forward_write(self, steps: Steps) -> list[int]:
        counts = []
        async with self._pool.acquire() as connection, connection.transaction():
            for statement, params in steps:
                if len(params) == 1:
                    status = str(await connection.execute(statement, *params[0]))
                    counts.append(int(status.rsplit(" ", 1)[-1]) if status[-1:].isdigit() else -1)
                else:
                    if params:
                        await connection.executemany(statement, params)
                    counts.append(-1)
        return counts

    @_translated
    async def _run_plan(self, plan: patients.Plan[_R], commit: bool) -> _R:
        try:
            async with self._pool.acquire() as connection, connection.transaction():
                result = await patients.drive_async(plan, lambda statement, params: connection.fetch(statement, *params))
                if not commit:
                    raise patients.Rollback(result)
                return result
        except patients.Rollback as rollback:
            return typing.cast(_R, rollback.value)

    @_translated
    async def _select_rows(self, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in await self._pool.fetch(statement, *params)]

    @_translated
    async def _forward_returning(self, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        async with self._pool.acquire() as connection, connection.transaction():
            return [tuple(row) for row in await connection.fetch(statement, *params)]


def _identity(value: Any) -> Any:
    return value
