"""What a query asks (PS3.4 C.2-C.6): the level, the matching conditions and the keys to return, read from a
C-FIND or C-MOVE/C-GET identifier or from QIDO-RS parameters and checked against the information model before
the index sees it (``gateway.index.search`` turns a ``Query`` into SQL, ``gateway.retrieve`` answers it).

The keys are those the index keeps (``KEYS``); any other key asked for is answered zero-length, and when it
carried a value to match, the matches come with 0xFF01 (optional keys not supported). Matching as PS3.4
C.2.2.2: single value, universal (empty), wildcard (``*``, ``?``) for text VRs, ranges for DA/TM/DT, lists of
UIDs (and of other values, as multiple-value matching). Person names match case-insensitively unless configured
otherwise (dcm4chee does the same for an all upper-case value; most SCUs send upper case). A Study Date range
and a Study Time range are matched each on its own, not as one date-time interval.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from pydicom.datadict import dictionary_keyword, dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

FIND_PATIENT_ROOT = "1.2.840.10008.5.1.4.1.2.1.1"
MOVE_PATIENT_ROOT = "1.2.840.10008.5.1.4.1.2.1.2"
GET_PATIENT_ROOT = "1.2.840.10008.5.1.4.1.2.1.3"
FIND_STUDY_ROOT = "1.2.840.10008.5.1.4.1.2.2.1"
MOVE_STUDY_ROOT = "1.2.840.10008.5.1.4.1.2.2.2"
GET_STUDY_ROOT = "1.2.840.10008.5.1.4.1.2.2.3"


class Level(StrEnum):
    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


class Model(StrEnum):
    PATIENT_ROOT = "patient"
    STUDY_ROOT = "study"


LEVELS = {Model.PATIENT_ROOT: (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE),
          Model.STUDY_ROOT: (Level.STUDY, Level.SERIES, Level.IMAGE)}
MODELS = {FIND_PATIENT_ROOT: Model.PATIENT_ROOT, MOVE_PATIENT_ROOT: Model.PATIENT_ROOT,
          GET_PATIENT_ROOT: Model.PATIENT_ROOT, FIND_STUDY_ROOT: Model.STUDY_ROOT, MOVE_STUDY_ROOT: Model.STUDY_ROOT,
          GET_STUDY_ROOT: Model.STUDY_ROOT}
UNIQUE = {Level.PATIENT: "PatientID", Level.STUDY: "StudyInstanceUID", Level.SERIES: "SeriesInstanceUID",
          Level.IMAGE: "SOPInstanceUID"}


@dataclass(frozen=True, slots=True)
class Key:
    keyword: str
    level: Level
    """Where it belongs in the Patient Root model; in the Study Root model patient keys are study keys."""
    matching: bool = True
    """False for keys that are only returned (counts, ModalitiesInStudy is matched, counts are not)."""


KEYS: dict[str, Key] = {key.keyword: key for key in (
    Key("PatientID", Level.PATIENT), Key("IssuerOfPatientID", Level.PATIENT), Key("PatientName", Level.PATIENT),
    Key("PatientBirthDate", Level.PATIENT), Key("PatientSex", Level.PATIENT),
    Key("NumberOfPatientRelatedStudies", Level.PATIENT, False),
    Key("NumberOfPatientRelatedSeries", Level.PATIENT, False),
    Key("NumberOfPatientRelatedInstances", Level.PATIENT, False),
    Key("StudyInstanceUID", Level.STUDY), Key("StudyDate", Level.STUDY), Key("StudyTime", Level.STUDY),
    Key("AccessionNumber", Level.STUDY), Key("StudyID", Level.STUDY), Key("StudyDescription", Level.STUDY),
    Key("ReferringPhysicianName", Level.STUDY), Key("ModalitiesInStudy", Level.STUDY),
    Key("NumberOfStudyRelatedSeries", Level.STUDY, False), Key("NumberOfStudyRelatedInstances", Level.STUDY, False),
    Key("SeriesInstanceUID", Level.SERIES), Key("Modality", Level.SERIES), Key("SeriesNumber", Level.SERIES),
    Key("NumberOfSeriesRelatedInstances", Level.SERIES, False),
    Key("SOPInstanceUID", Level.IMAGE), Key("SOPClassUID", Level.IMAGE), Key("InstanceNumber", Level.IMAGE),
    Key("AvailableTransferSyntaxUID", Level.IMAGE, False),
)}
IGNORED = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "InstanceAvailability",
                     "TimezoneOffsetFromUTC", "RetrieveURL", "RetrieveURI"})
"""Keys any level may carry that are answered, not matched."""
_WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_RANGE_VRS = frozenset({"DA", "TM", "DT"})
_INTEGER_VRS = frozenset({"IS", "US", "UL", "SS", "SL"})


class InvalidQuery(ValueError):
    """The identifier does not fit the information model (0xA900 for C-FIND/C-MOVE/C-GET, 400 for QIDO-RS)."""


class Match(StrEnum):
    SINGLE = "single"
    WILDCARD = "wildcard"
    RANGE = "range"
    LIST = "list"


@dataclass(frozen=True, slots=True)
class Condition:
    keyword: str
    match: Match
    values: tuple[str, ...]
    """SINGLE and WILDCARD: one value (the pattern with ``*`` and ``?``); RANGE: low and high, either may be ''
    (open); LIST: the values, any of which matches."""
    fold: bool = False
    """Compare upper-cased (person names, when configured)."""
    integer: bool = False


@dataclass(frozen=True, slots=True)
class Query:
    model: Model
    level: Level
    conditions: tuple[Condition, ...] = ()
    returns: tuple[str, ...] = ()
    """Supported keys to answer with, in the order asked."""
    unsupported: tuple[str, ...] = ()
    """Keys asked for that the index does not keep: answered zero-length."""
    unsupported_matching: bool = False
    """One of ``unsupported`` carried a value to match: matches are then answered 0xFF01."""
    retrieve_ae_title: bool = False
    instance_availability: bool = False

    def condition(self, keyword: str) -> Condition | None:
        return next((condition for condition in self.conditions if condition.keyword == keyword), None)

    def patient(self) -> tuple[str, str] | None:
        """(Patient ID, issuer) when the query names one patient (single-value matching): whose data it reads,
        for the audit trail."""
        patient = self.condition("PatientID")
        if patient is None or patient.match is not Match.SINGLE or not patient.values[0]:
            return None
        issuer = self.condition("IssuerOfPatientID")
        return patient.values[0], issuer.values[0] if issuer is not None and issuer.match is Match.SINGLE else ""


def level_of(key: Key, model: Model) -> Level:
    return Level.STUDY if model is Model.STUDY_ROOT and key.level is Level.PATIENT else key.level


def condition(keyword: str, value: str, fold_names: bool) -> Condition | None:
    """The condition a key's value asks for; None for a universal match (empty, or only ``*``)."""
    vr = dictionary_VR(keyword)
    value = value.strip(" \x00") if vr != "PN" else value.strip(" \x00").rstrip("^=")
    if not value or (vr in _WILDCARD_VRS and set(value) == {"*"}):
        return None
    fold = vr == "PN" and fold_names
    integer = vr in _INTEGER_VRS
    if "\\" in value:
        values = tuple(part.strip() for part in value.split("\\") if part.strip())
        if integer and not all(re.fullmatch(r"[+-]?\d+", part) for part in values):
            raise InvalidQuery(f"{keyword} is not a list of integers")
        return Condition(keyword, Match.LIST, values, fold, integer)
    if vr in _RANGE_VRS and "-" in value:
        low, _, high = value.partition("-")
        if vr == "TM":
            high = _time_upper(high)
        return Condition(keyword, Match.RANGE, (low.strip(), high.strip()))
    if vr in _WILDCARD_VRS and ("*" in value or "?" in value):
        return Condition(keyword, Match.WILDCARD, (value,), fold)
    if integer and not re.fullmatch(r"[+-]?\d+", value):
        raise InvalidQuery(f"{keyword} is not an integer")
    return Condition(keyword, Match.SINGLE, (value,), fold, integer)


def _time_upper(high: str) -> str:
    """The end of a time range includes the whole of its last unit (``1800`` up to 18:00:59.999999)."""
    high = high.strip()
    if not high:
        return high
    digits, _, fraction = high.partition(".")
    return f"{digits}{'9' * (6 - len(digits))}.{fraction.ljust(6, '9')}" if len(digits) < 6 or not fraction \
        else high


def parse_identifier(identifier: Dataset, model: Model, fold_names: bool, retrieve: bool = False) -> Query:
    """A C-FIND (or, with ``retrieve``, a C-MOVE/C-GET) identifier as a query; InvalidQuery names what is wrong.

    Hierarchical rules (PS3.4 C.4.1.2.2): the level must exist in the model, no key may belong below it, and
    the unique key of every level above it must hold one value. A retrieve identifier carries only unique keys
    (PS3.4 C.4.2.2.1), the one of its level possibly a list."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level_value = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
        try:
            level = Level(level_value)
        except ValueError:
            raise InvalidQuery("Query/Retrieve Level missing or not a level") from None
        levels = LEVELS[model]
        if level not in levels:
            raise InvalidQuery(f"no {level} level in this information model")
        depth = levels.index(level)
        values: dict[str, str] = {}
        unknown: dict[str, bool] = {}
        for element in identifier:
            if element.tag.group in (0x0000, 0x0002) or element.tag.is_private:
                continue
            keyword = element.keyword
            if keyword in IGNORED:
                continue
            key = KEYS.get(keyword)
            if key is None:
                unknown[keyword or f"{element.tag:08X}"] = element.VR != "SQ" and not _empty(element.value)
                continue
            if levels.index(level_of(key, model)) > depth:
                raise InvalidQuery(f"{keyword} belongs below the {level} level")
            values[keyword] = _text(element.value)
    conditions = []
    for keyword, value in values.items():
        found = condition(keyword, value, fold_names)
        if found is not None and KEYS[keyword].matching:
            conditions.append(found)
    for above in levels[:depth]:
        unique = next((c for c in conditions if c.keyword == UNIQUE[above]), None)
        if unique is None or unique.match is not Match.SINGLE:
            raise InvalidQuery(f"{UNIQUE[above]} must hold one value for a {level} query")
    if retrieve:
        unique = next((c for c in conditions if c.keyword == UNIQUE[level]), None)
        if unique is None or unique.match not in (Match.SINGLE, Match.LIST):
            raise InvalidQuery(f"a {level} retrieve needs {UNIQUE[level]}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        asked = [element.keyword for element in identifier if element.keyword]
    return Query(model, level, tuple(conditions), tuple(keyword for keyword in values),
                 tuple(unknown), any(unknown.values()), "RetrieveAETitle" in asked,
                 "InstanceAvailability" in asked)


def _empty(value: object) -> bool:
    return value is None or value == "" or value == b"" or (isinstance(value, (list, MultiValue)) and not value)


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, MultiValue)):
        return "\\".join(_text(item) for item in value)
    return str(value)


def keyword_of(name: str) -> str:
    """A QIDO-RS attribute given by keyword or as a tag (``00100020``); '' when it is neither."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        try:
            return dictionary_keyword(Tag(int(name, 16))) or ""
        except KeyError:
            return ""
    return name if tag_for_keyword(name) is not None else ""


def parse_qido(level: Level, params: Mapping[str, str] | Iterable[tuple[str, str]], fold_names: bool,
               fixed: Mapping[str, str]) -> tuple[Query, tuple[str, ...]]:
    """QIDO-RS parameters (PS3.18 8.3.4) as a query, and the keys ``includefield`` adds (``all``: every key
    kept). ``fixed`` are the UIDs of the path (``/studies/{study}/series``). Attributes the index does not keep
    are not matched (``unsupported``, which the response's Warning names); names that are no attribute and
    values that cannot match raise InvalidQuery (400)."""
    items = params.items() if isinstance(params, Mapping) else params
    conditions: dict[str, Condition] = {}
    include: list[str] = []
    unsupported: list[str] = []
    for name, value in items:
        if name in ("limit", "offset", "fuzzymatching"):
            continue
        if name == "includefield":
            for part in value.split(","):
                part = part.strip()
                if part == "all":
                    include.extend(KEYS)
                    continue
                keyword = keyword_of(part)
                if not keyword:
                    raise InvalidQuery(f"includefield {part!r} is not an attribute")
                include.append(keyword)
            continue
        keyword = keyword_of(name)
        if not keyword:
            raise InvalidQuery(f"{name!r} is not an attribute")
        key = KEYS.get(keyword)
        if key is None or not key.matching:
            unsupported.append(keyword)
            continue
        if dictionary_VR(keyword) == "UI":
            value = value.replace(",", "\\")  # PS3.18 8.3.4.1: a UID list may be comma-separated
        found = condition(keyword, value, fold_names)
        if found is not None:
            conditions[keyword] = found
    for keyword, value in fixed.items():
        conditions[keyword] = Condition(keyword, Match.SINGLE, (value,))
    return (Query(Model.STUDY_ROOT, level, tuple(conditions.values()), (), tuple(dict.fromkeys(unsupported)),
                  bool(unsupported)), tuple(dict.fromkeys(include)))
