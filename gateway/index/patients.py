"""Patient identity (migration 0009): ADT changes applied to the patients, studies and history tables, once for
both dialects, and the ``Patients`` port built on them.

A change is a plan: a generator that yields ``$n`` statements and receives their rows, so that its decisions
(is the prior patient merged already? does the new identifier exist?) are made inside the one transaction
that writes them, which each adapter drives (SQLite in its thread, PostgreSQL on one connection). The same plan
run and rolled back is the listener's check before it acknowledges. A patient's row is locked before it is read
(the ``INSERT`` that creates it, else ``SELECT ... FOR UPDATE`` in PostgreSQL; SQLite has one writer at a time),
and the store stage's upsert of the same row waits for it, so an instance stored during a merge lands under the
surviving patient.

Merged identifiers stay as rows with ``merged_into`` set (one hop: a merge re-points the rows merged into the
prior patient), so an instance that still carries a merged identifier is filed under the surviving patient.
"""

from __future__ import annotations

import typing
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from gateway.core.errors import Permanent
from gateway.core.study import Patient
from gateway.hl7.adt import CHANGE_ID, MERGE, PatientChange, PatientKey
from gateway.index import workflow

T = TypeVar("T")
Step = tuple[str, tuple[Any, ...]]
Plan = Generator[Step, list[tuple[Any, ...]], T]

_COLUMNS = ("id, patient_id, issuer_of_patient_id, patient_name, patient_birth_date, patient_sex, "
            "specific_character_set, merged_into")
_CLAIM_MESSAGE = """INSERT INTO hl7_messages (message_key, trigger_event, received_at, applied_at)
VALUES ($1, $2, $3, $4) ON CONFLICT (message_key) DO NOTHING RETURNING message_key"""
_INSERT = f"""INSERT INTO patients (patient_id, issuer_of_patient_id) VALUES ($1, $2)
ON CONFLICT (patient_id, issuer_of_patient_id) DO NOTHING RETURNING {_COLUMNS}"""
_SELECT = f"SELECT {_COLUMNS} FROM patients WHERE patient_id = $1 AND issuer_of_patient_id = $2 FOR UPDATE"
_UPDATE = """UPDATE patients SET patient_name = $2, patient_name_folded = $3, patient_birth_date = $4,
    patient_sex = $5, specific_character_set = $6, hl7_updated_at = coalesce($7, hl7_updated_at) WHERE id = $1"""
_STUDIES = "SELECT study_instance_uid FROM studies WHERE patient_ref = $1 ORDER BY study_instance_uid"
_MOVE_STUDIES = "UPDATE studies SET patient_ref = $1 WHERE patient_ref = $2 RETURNING study_instance_uid"
_MERGE = "UPDATE patients SET merged_into = $1 WHERE id = $2 OR merged_into = $2"
_STUDIES_CHANGED = "SELECT studies FROM patient_changes WHERE message_key = $1"
_HISTORY = """INSERT INTO patient_changes (patient_ref, message_key, trigger_event, action, other_patient_ref,
    before_change, after_change, studies, sender, applied_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"""

_READ = f"""SELECT {_COLUMNS}, (SELECT m.patient_id FROM patients m WHERE m.id = p.merged_into),
    (SELECT m.issuer_of_patient_id FROM patients m WHERE m.id = p.merged_into)
FROM patients p WHERE patient_id = $1 AND ($2 = '' OR issuer_of_patient_id = $2) ORDER BY id LIMIT 20"""
_READ_STUDIES = """SELECT s.study_instance_uid, s.study_date, s.study_description, s.accession_number,
    (SELECT count(*) FROM instances i WHERE i.study_instance_uid = s.study_instance_uid AND i.is_current
     AND i.status = 'stored')
FROM studies s WHERE s.patient_ref = $1 ORDER BY s.study_date, s.study_instance_uid"""
_READ_HISTORY = """SELECT c.message_key, c.trigger_event, c.action, o.patient_id, o.issuer_of_patient_id,
    c.before_change, c.after_change, c.studies, c.sender, c.applied_at, p.patient_id, p.issuer_of_patient_id
FROM patient_changes c JOIN patients p ON p.id = c.patient_ref LEFT JOIN patients o ON o.id = c.other_patient_ref
WHERE c.patient_ref = $1 OR c.other_patient_ref = $1
   OR c.patient_ref IN (SELECT id FROM patients WHERE merged_into = $1)
ORDER BY c.applied_at, c.id"""
CURRENT_PATIENT = ("p.patient_id", "p.issuer_of_patient_id", "p.patient_name", "p.patient_birth_date",
                   "p.patient_sex", "p.specific_character_set")
"""A ``Patient`` from the patients row ``p``; with the instance's ``patient_attributes`` before them, what
``to_write`` takes."""
_OF_STUDIES = f"""SELECT s.study_instance_uid, {', '.join(CURRENT_PATIENT)}
FROM studies s JOIN patients p ON p.id = s.patient_ref WHERE s.study_instance_uid = ANY($1)"""
_OF_INSTANCES = f"""SELECT i.sop_instance_uid, i.patient_attributes, {', '.join(CURRENT_PATIENT)}
FROM instances i JOIN studies s ON s.study_instance_uid = i.study_instance_uid JOIN patients p ON p.id = s.patient_ref
WHERE i.is_current AND i.sop_instance_uid = ANY($1)"""


def to_write(had: Any, *current: Any) -> Patient | None:
    """The current patient (``CURRENT_PATIENT`` values) when it differs from the attributes an instance was
    stored with (its ``patient_attributes``, JSON text or decoded): what is written over it on the way out."""
    patient = Patient(*current)
    return patient if patient.differs_from(_json(had)) else None


class PatientRefused(Permanent):
    """The change contradicts what the index holds; ``code`` and ``location`` are what the ERR segment says."""

    def __init__(self, code: int, location: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.location = location


@dataclass(frozen=True, slots=True)
class Applied:
    action: str
    """``updated``, ``created``, ``merged``, ``identifier-changed``, or ``duplicate`` (the message was applied
    before)."""
    studies: tuple[str, ...] = ()
    """The studies whose patient changed or moved."""


@dataclass(frozen=True, slots=True)
class _Row:
    ref: int
    patient: Patient
    merged_into: int | None


def _row(record: Sequence[Any]) -> _Row:
    ref, patient_id, issuer, name, birth, sex, charset, merged_into = record[:8]
    return _Row(ref, Patient(patient_id, issuer, name, birth, sex, charset), merged_into)


def _ensure(key: PatientKey) -> Plan[tuple[_Row, bool]]:
    """The patient's row, locked, and whether this created it."""
    rows = yield _INSERT, (key.patient_id, key.issuer)
    if rows:
        return _row(rows[0]), True
    rows = yield _SELECT, (key.patient_id, key.issuer)
    return _row(rows[0]), False


def _set(row: _Row, base: Patient, change: PatientChange, now: float) -> Plan[Patient]:
    """``base`` with the message's attributes over it, written to ``row``; marked as set by ADT (instances no
    longer change it) only when the message gave attributes."""
    attributes = change.attributes
    name = attributes.get("PatientName", base.name)
    charset = change.charset if name != base.name and not name.isascii() else base.charset
    updated = Patient(row.patient.patient_id, row.patient.issuer, name,
                      attributes.get("PatientBirthDate", base.birth_date), attributes.get("PatientSex", base.sex),
                      charset)
    yield _UPDATE, (row.ref, updated.name, updated.name.upper(), updated.birth_date, updated.sex, updated.charset,
                    now if attributes else None)
    return updated


def _history(row: _Row, change: PatientChange, action: str, other: int | None, before: Patient, after: Patient,
             studies: Sequence[str], now: float) -> Step:
    return _HISTORY, (row.ref, change.message_key, change.trigger, action, other,
                      orjson.dumps(before.attributes()).decode(), orjson.dumps(after.attributes()).decode(),
                      orjson.dumps(list(studies)).decode(), change.sender, now)


def _refuse_merged(row: _Row, location: str) -> None:
    if row.merged_into is not None:
        raise PatientRefused(204, location, "patient identifier was merged into another patient")


def apply(change: PatientChange, received_at: float, now: float, touch: bool = False) -> Plan[Applied]:
    """The whole change, in one transaction; raises PatientRefused for what the index contradicts. ``touch``:
    the studies it changes become stable again (re-registration), in the same transaction. A message applied
    before is a duplicate, with the studies it changed then."""
    claimed = yield _CLAIM_MESSAGE, (change.message_key, change.trigger, received_at, now)
    if not claimed:
        rows = yield _STUDIES_CHANGED, (change.message_key,)
        return Applied("duplicate", tuple(sorted({study for (listed,) in rows for study in _json(listed)})))
    target, created = yield from _ensure(change.patient)
    if change.trigger == CHANGE_ID and not created:
        raise PatientRefused(205, "PID^1^3^1^1", "the new patient identifier exists already")
    _refuse_merged(target, "PID^1^3^1^1")
    if change.prior is None:
        updated = yield from _set(target, target.patient, change, now)
        action, moved = ("created" if created else "updated"), []
    else:
        prior, _ = yield from _ensure(change.prior)
        if change.trigger == MERGE and prior.merged_into == target.ref:
            return Applied("duplicate")
        _refuse_merged(prior, "MRG^1^1^1^1")
        # a new identifier (A47, or a merge into a patient not seen before) takes over the prior's attributes
        updated = yield from _set(target, prior.patient if created else target.patient, change, now)
        rows = yield _MOVE_STUDIES, (target.ref, prior.ref)
        moved = sorted(study for (study,) in rows)
        yield _MERGE, (target.ref, prior.ref)
        action = "identifier-changed" if change.trigger == CHANGE_ID else "merged"
    rows = yield _STUDIES, (target.ref,)
    studies = tuple(study for (study,) in rows)
    if change.prior is None:
        yield _history(target, change, action, None, target.patient, updated, studies, now)
    else:
        yield _history(target, change, action, prior.ref, target.patient, updated, moved, now)
        yield _history(prior, change, f"{action}-into", target.ref, prior.patient, prior.patient, moved, now)
    if touch:
        for study in studies:
            yield workflow.TOUCH_STUDY, (study, now)
    return Applied(action, studies)


class Rollback(Exception):
    """Ends a plan's transaction without committing it, carrying the plan's result (a check)."""

    def __init__(self, value: Any) -> None:
        super().__init__("rolled back")
        self.value = value


def drive(plan: Plan[T], execute: Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]) -> T:
    try:
        step = next(plan)
        while True:
            step = plan.send(execute(*step))
    except StopIteration as stop:
        return typing.cast(T, stop.value)


async def drive_async(plan: Plan[T], execute: Callable[[str, tuple[Any, ...]], Awaitable[Sequence[Any]]]) -> T:
    try:
        step = next(plan)
        while True:
            step = plan.send([tuple(row) for row in await execute(*step)])
    except StopIteration as stop:
        return typing.cast(T, stop.value)


class PatientQueries:
    """The ``Patients`` port for an adapter that runs plans (``_run_plan``) and reads (``_select_rows``)."""

    _sqlite = False

    async def _run_plan(self, plan: Plan[T], commit: bool) -> T:
        raise NotImplementedError

    async def _select_rows(self, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def apply_patient_change(self, change: PatientChange, received_at: float, now: float,
                                   touch: bool = False) -> Applied:
        return await self._run_plan(apply(change, received_at, now, touch), commit=True)

    async def check_patient_change(self, change: PatientChange, now: float) -> Applied:
        """What applying would do (raising as it would), with nothing written."""
        return await self._run_plan(apply(change, now, now), commit=False)

    async def patient_record(self, patient_id: str, issuer: str = "") -> list[dict[str, Any]]:
        """The patients with this identifier (one per issuer, or the one ``issuer`` names): current attributes,
        where it was merged to, its studies, and every change applied to it or to patients merged into it."""
        found = []
        for record in await self._select_rows(_READ, (patient_id, issuer)):
            row = _row(record)
            merged = {"patient_id": record[8], "issuer": record[9]} if row.merged_into is not None else None
            studies = [{"study_instance_uid": uid, "study_date": date, "study_description": description,
                        "accession_number": accession, "instances": int(instances)}
                       for uid, date, description, accession, instances
                       in await self._select_rows(_READ_STUDIES, (row.ref,))]
            history = [{"message": key.rsplit("|", 1)[-1], "sender": sender, "trigger": trigger, "action": action,
                        "patient": {"patient_id": pid, "issuer": pissuer},
                        "other_patient": {"patient_id": other_id, "issuer": other_issuer} if other_id else None,
                        "before": _json(before), "after": _json(after), "studies": _json(moved),
                        "applied_at": float(at)}
                       for (key, trigger, action, other_id, other_issuer, before, after, moved, sender, at, pid,
                            pissuer) in await self._select_rows(_READ_HISTORY, (row.ref,))]
            found.append({**row.patient.attributes(), "SpecificCharacterSet": row.patient.charset,
                          "merged_into": merged, "studies": studies, "history": history})
        return found

    async def patients_of_studies(self, study_instance_uids: Sequence[str]) -> dict[str, Patient]:
        """The current patient of each study, by Study Instance UID (studies not in the index are left out)."""
        return {uid: Patient(*values) for uid, *values in await self._any(_OF_STUDIES, study_instance_uids)}

    async def patients_to_write(self, sop_instance_uids: Sequence[str]) -> dict[str, Patient]:
        """For the instances whose study's current patient differs from the one they were stored with: that
        patient, by SOP Instance UID."""
        rows = await self._any(_OF_INSTANCES, sop_instance_uids)
        found = {uid: to_write(had, *current) for uid, had, *current in rows}
        return {uid: patient for uid, patient in found.items() if patient is not None}

    async def _any(self, statement: str, values: Sequence[str]) -> list[tuple[Any, ...]]:
        """``statement`` with ``= ANY($1)`` for a list of values (an IN list in SQLite)."""
        if not values:
            return []
        unique = list(dict.fromkeys(values))
        if self._sqlite:
            listed = ", ".join(f"${n + 1}" for n in range(len(unique)))
            return await self._select_rows(statement.replace("= ANY($1)", f"IN ({listed})"), tuple(unique))
        return await self._select_rows(statement, (unique,))


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value
