"""Query/retrieve over the index (migration 0008): a ``Query`` as one SQL statement for both dialects, and the
``Catalogue`` port built on it.

The levels read their own tables (patients, studies, series, instances), joined upwards, so a study-level query
reads one row per study and the patient's attributes are the patient row's (the current ones). Only current
instances with status ``stored`` are visible: a study, series or patient shows only while it has one. Counts and
Modalities in Study are computed per row returned, and only when asked for. Pages follow the level's unique key
(keyset), so a long C-FIND reads page after page without an OFFSET that grows. Statements are written for
PostgreSQL with ``$n`` placeholders; the SQLite adapter rewrites them, and wildcards become GLOB there (SQLite's
LIKE ignores case) and LIKE with an escape character in PostgreSQL, so ``%`` and ``_`` in a value stay literal.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from gateway.core.query import KEYS, LEVELS, Condition, Level, Match, Model, Query
from gateway.index import InstanceRow, Stored
from gateway.index.patients import CURRENT_PATIENT, to_write

UPSERT_PATIENT = """INSERT INTO patients AS p (patient_id, issuer_of_patient_id, patient_name, patient_name_folded,
                                   patient_birth_date, patient_sex)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (patient_id, issuer_of_patient_id) DO UPDATE SET
    patient_name = CASE WHEN $7 AND p.hl7_updated_at IS NULL THEN excluded.patient_name ELSE p.patient_name END,
    patient_name_folded = CASE WHEN $7 AND p.hl7_updated_at IS NULL THEN excluded.patient_name_folded
                               ELSE p.patient_name_folded END,
    patient_birth_date = CASE WHEN $7 AND p.hl7_updated_at IS NULL THEN excluded.patient_birth_date
                              ELSE p.patient_birth_date END,
    patient_sex = CASE WHEN $7 AND p.hl7_updated_at IS NULL THEN excluded.patient_sex ELSE p.patient_sex END
RETURNING coalesce(merged_into, id)"""
"""The newest stored instance's patient attributes win (a quarantined one's do not) until an ADT message sets
them (``gateway.index.patients``); returns the patient the study is filed under: the surviving one when the
instance's identifier was merged. ``UPSERT_STUDY`` keeps the study's patient when the instance names the same
Patient ID without an issuer (a less specific spelling of the same identifier, as a rejection note may carry)."""
UPSERT_STUDY = """INSERT INTO studies AS s (study_instance_uid, patient_ref, accession_number, study_date, study_time,
                          study_description, updated_at, study_id, referring_physician_name)
VALUES ($1, $2, $3, $4, $5, $6, $7, $9, $10)
ON CONFLICT (study_instance_uid) DO UPDATE SET
    patient_ref = CASE WHEN EXISTS (SELECT 1 FROM patients n JOIN patients o ON o.patient_id = n.patient_id
                                    WHERE n.id = excluded.patient_ref AND o.id = s.patient_ref
                                      AND n.issuer_of_patient_id = '')
                  THEN s.patient_ref ELSE excluded.patient_ref END,
    accession_number = excluded.accession_number,
    study_date = excluded.study_date, study_time = excluded.study_time,
    study_description = excluded.study_description, updated_at = excluded.updated_at,
    study_id = excluded.study_id, referring_physician_name = excluded.referring_physician_name
WHERE $8 AND (s.patient_ref, s.accession_number, s.study_date, s.study_time, s.study_description, s.study_id,
              s.referring_physician_name)
    IS DISTINCT FROM (excluded.patient_ref, excluded.accession_number, excluded.study_date,
                      excluded.study_time, excluded.study_description, excluded.study_id,
                      excluded.referring_physician_name)"""


def describes_study(row: InstanceRow) -> bool:
    """Whether the instance's patient and study attributes update the index's: a stored one, not quarantined (its
    header is not trusted) nor a key object document (a rejection note only copies them, maybe partly)."""
    return row.status.value == "stored" and row.modality != "KO"


def patient_params(row: InstanceRow) -> tuple[Any, ...]:
    attributes = row.patient_attributes
    name = attributes.get("PatientName", "")
    return (row.patient_id, row.issuer_of_patient_id, name, name.upper(), attributes.get("PatientBirthDate", ""),
            attributes.get("PatientSex", ""), describes_study(row))


def study_params(row: InstanceRow, patient_ref: int, updated_at: str | datetime) -> tuple[Any, ...]:
    return (row.study_instance_uid, patient_ref, row.accession_number, row.study_date, row.study_time,
            row.study_description, updated_at, describes_study(row), row.study_id, row.referring_physician_name)


FOLD = "gateway_fold"
"""The SQLite adapter's upper-casing function: Python's, which knows every script (SQLite's upper() only ASCII)."""
_VISIBLE = "v.is_current AND v.status = 'stored'"
_COLUMNS = {
    "PatientID": "p.patient_id", "IssuerOfPatientID": "p.issuer_of_patient_id", "PatientName": "p.patient_name",
    "PatientBirthDate": "p.patient_birth_date", "PatientSex": "p.patient_sex",
    "StudyInstanceUID": "s.study_instance_uid", "StudyDate": "s.study_date", "StudyTime": "s.study_time",
    "AccessionNumber": "s.accession_number", "StudyID": "s.study_id", "StudyDescription": "s.study_description",
    "ReferringPhysicianName": "s.referring_physician_name",
    "SeriesInstanceUID": "se.series_instance_uid", "Modality": "se.modality", "SeriesNumber": "se.series_number",
    "SOPInstanceUID": "i.sop_instance_uid", "SOPClassUID": "i.sop_class_uid", "InstanceNumber": "i.instance_number",
    "AvailableTransferSyntaxUID": "i.transfer_syntax_uid",
}
_FOLDED = {"PatientName": "p.patient_name_folded"}
_OF_PATIENT = ("FROM studies st JOIN instances v ON v.study_instance_uid = st.study_instance_uid "
               f"WHERE st.patient_ref = p.id AND {_VISIBLE}")
_OF_STUDY = f"FROM instances v WHERE v.study_instance_uid = s.study_instance_uid AND {_VISIBLE}"
_OF_SERIES = f"FROM instances v WHERE v.series_instance_uid = se.series_instance_uid AND {_VISIBLE}"
_COMPUTED = {
    "NumberOfPatientRelatedStudies": f"(SELECT count(DISTINCT v.study_instance_uid) {_OF_PATIENT})",
    "NumberOfPatientRelatedSeries": f"(SELECT count(DISTINCT v.series_instance_uid) {_OF_PATIENT})",
    "NumberOfPatientRelatedInstances": f"(SELECT count(*) {_OF_PATIENT})",
    "NumberOfStudyRelatedSeries": f"(SELECT count(DISTINCT v.series_instance_uid) {_OF_STUDY})",
    "NumberOfStudyRelatedInstances": f"(SELECT count(*) {_OF_STUDY})",
    "NumberOfSeriesRelatedInstances": f"(SELECT count(*) {_OF_SERIES})",
}
_FROM = {
    Level.PATIENT: f"FROM patients p WHERE EXISTS (SELECT 1 {_OF_PATIENT})",
    Level.STUDY: f"FROM studies s JOIN patients p ON p.id = s.patient_ref WHERE EXISTS (SELECT 1 {_OF_STUDY})",
    Level.SERIES: ("FROM series se JOIN studies s ON s.study_instance_uid = se.study_instance_uid "
                   f"JOIN patients p ON p.id = s.patient_ref WHERE EXISTS (SELECT 1 {_OF_SERIES})"),
    Level.IMAGE: ("FROM instances i JOIN series se ON se.series_instance_uid = i.series_instance_uid "
                  "JOIN studies s ON s.study_instance_uid = i.study_instance_uid "
                  "JOIN patients p ON p.id = s.patient_ref WHERE i.is_current AND i.status = 'stored'"),
}
_ORDER = {Level.PATIENT: "p.id", Level.STUDY: "s.study_instance_uid", Level.SERIES: "se.series_instance_uid",
          Level.IMAGE: "i.sop_instance_uid"}
_HIERARCHY = LEVELS[Model.PATIENT_ROOT]
_STORED = ("i.storage_key", "i.size", "i.transfer_syntax_uid", "i.sop_class_uid", "i.series_instance_uid",
           "i.study_instance_uid", "i.patient_attributes", *CURRENT_PATIENT)


class _Statement:
    def __init__(self, sqlite: bool) -> None:
        self.sqlite = sqlite
        self.params: list[Any] = []

    def param(self, value: Any) -> str:
        self.params.append(value)
        return f"${len(self.params)}"

    def match(self, column: str, condition: Condition) -> str:
        values: list[Any] = [value.upper() if condition.fold else value for value in condition.values]
        if condition.integer:
            values = [int(value) for value in values]
        if condition.match is Match.SINGLE:
            return f"{column} = {self.param(values[0])}"
        if condition.match is Match.LIST:
            return f"{column} IN ({', '.join(self.param(value) for value in values)})"
        if condition.match is Match.WILDCARD:
            if self.sqlite:
                return f"{column} GLOB {self.param(values[0].replace('[', '[[]'))}"
            pattern = (values[0].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                       .replace("*", "%").replace("?", "_"))
            return f"{column} LIKE {self.param(pattern)} ESCAPE '\\'"
        low, high = values
        parts = [f"{column} <> ''"]
        if low:
            parts.append(f"{column} >= {self.param(low)}")
        if high:
            parts.append(f"{column} <= {self.param(high)}")
        return " AND ".join(parts)

    def where(self, query: Query) -> str:
        clauses = []
        for condition in query.conditions:
            if condition.keyword == "ModalitiesInStudy":
                clauses.append(f"EXISTS (SELECT 1 {_OF_STUDY} AND {self.match('v.modality', condition)})")
                continue
            column = _FOLDED.get(condition.keyword) if condition.fold else None
            if column is None:
                column = _COLUMNS[condition.keyword]
                if condition.fold:
                    column = f"{FOLD if self.sqlite else 'upper'}({column})"
            clauses.append(self.match(column, condition))
        return "".join(f" AND {clause}" for clause in clauses)


def keys_of(level: Level, returns: Sequence[str]) -> list[str]:
    """The keys a row of ``level`` carries: every stored key of its level and those above, and the computed
    ones asked for (counts, Modalities in Study)."""
    levels = set(_HIERARCHY[: _HIERARCHY.index(level) + 1])
    plain = [keyword for keyword, key in KEYS.items() if keyword in _COLUMNS and key.level in levels
             and (keyword != "AvailableTransferSyntaxUID" or level is Level.IMAGE)]
    computed = [keyword for keyword in returns if (keyword in _COMPUTED and KEYS[keyword].level in levels)
                or (keyword == "ModalitiesInStudy" and level is not Level.PATIENT)]
    return [*plain, *dict.fromkeys(computed)]


def select(query: Query, returns: Sequence[str], *, sqlite: bool, after: Any, limit: int,
           offset: int = 0) -> tuple[str, list[Any], list[str]]:
    """The statement for one page: rows after the unique key ``after`` (None: from the start), at most
    ``limit``, skipping ``offset``; with the keys each column holds."""
    statement = _Statement(sqlite)
    keys = keys_of(query.level, returns)
    columns = [_column(keyword, sqlite) for keyword in keys]
    order = _ORDER[query.level]
    sql = f"SELECT {order}, {', '.join(columns)}"
    if query.level is Level.IMAGE:
        sql += ", " + ", ".join(_STORED)
    sql += f" {_FROM[query.level]}{statement.where(query)}"
    if after is not None:
        sql += f" AND {order} > {statement.param(after)}"
    sql += f" ORDER BY {order} LIMIT {statement.param(limit)}"
    if offset:
        sql += f" OFFSET {statement.param(offset)}"
    return sql, statement.params, keys


def count(query: Query, up_to: int, *, sqlite: bool) -> tuple[str, list[Any]]:
    """How many rows match, counted up to ``up_to`` (enough to tell a query over its limit)."""
    statement = _Statement(sqlite)
    inner = f"SELECT 1 {_FROM[query.level]}{statement.where(query)}"
    return f"SELECT count(*) FROM ({inner} LIMIT {statement.param(up_to)}) c", statement.params


def _column(keyword: str, sqlite: bool) -> str:
    if keyword == "ModalitiesInStudy":
        aggregate = "group_concat(DISTINCT v.modality)" if sqlite else "string_agg(DISTINCT v.modality, ',')"
        return f"(SELECT {aggregate} {_OF_STUDY} AND v.modality <> '')"
    return _COMPUTED.get(keyword) or _COLUMNS[keyword]


def row_values(record: Sequence[Any], keys: Sequence[str], level: Level) -> tuple[Any, dict[str, Any], Stored | None]:
    """A result row as (its unique key for the next page, values by keyword, where its object is)."""
    values: dict[str, Any] = {}
    for keyword, value in zip(keys, record[1 : 1 + len(keys)], strict=True):
        if keyword == "ModalitiesInStudy":
            value = sorted((value or "").split(",")) if value else []
        values[keyword] = value
    stored = None
    if level is Level.IMAGE:
        key, size, syntax, sop_class, series, study, had, *current = record[1 + len(keys):]
        stored = Stored(values["SOPInstanceUID"], sop_class, syntax, key, size, study, series, to_write(had, *current))
    return record[0], values, stored


class SearchQueries:
    """The ``Catalogue`` port for an adapter that provides ``_select_rows`` (``$n`` statements)."""

    _sqlite = False

    async def _select_rows(self, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def search(self, query: Query, returns: Sequence[str] = (), *, after: Any = None, limit: int = 100,
                     offset: int = 0) -> list[tuple[Any, dict[str, Any], Stored | None]]:
        sql, params, keys = select(query, returns, sqlite=self._sqlite, after=after, limit=limit, offset=offset)
        return [row_values(record, keys, query.level) for record in await self._select_rows(sql, tuple(params))]

    async def count_matches(self, query: Query, up_to: int) -> int:
        sql, params = count(query, up_to, sqlite=self._sqlite)
        [(found,)] = await self._select_rows(sql, tuple(params))
        return int(found)
