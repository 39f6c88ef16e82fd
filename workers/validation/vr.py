"""Value checks for the Value Representations the rules inspect (PS3.5 section 6.2).

Each function takes one value (one of a multi-valued element's values) and returns what is wrong with it
in words that fit after the attribute's name, or None when it conforms. They never echo the value: it may
be a patient's birth date or name.
"""

from __future__ import annotations

import calendar
import re

_DA = re.compile(r"(\d{4})(\d{2})(\d{2})")
_TM = re.compile(r"(\d{2})(?:(\d{2})(?:(\d{2})(?:\.\d{1,6})?)?)?")
_DT = re.compile(
    r"(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.\d{1,6})?)?)?)?)?)?(?:([+-])(\d{2})(\d{2}))?"
)
_CS = re.compile(r"[A-Z0-9 _]*")
_AS = re.compile(r"\d{3}[DWMY]")
_UID_CHARACTERS = re.compile(r"[0-9.]*")


def _date_problem(year: int, month: int, day: int) -> str | None:
    if not 1 <= month <= 12:
        return "has a month outside 01-12"
    if year == 0 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return "is not a calendar date"
    return None


def _time_problem(hour: str | None, minute: str | None, second: str | None) -> str | None:
    if hour is not None and int(hour) > 23:
        return "has an hour outside 00-23"
    if minute is not None and int(minute) > 59:
        return "has minutes outside 00-59"
    if second is not None and int(second) > 60:
        return "has seconds outside 00-60"
    return None


def da(value: str) -> str | None:
    match = _DA.fullmatch(value)
    if match is None:
        return "is not a date in the form YYYYMMDD"
    return _date_problem(*(int(part) for part in match.groups()))


def tm(value: str) -> str | None:
    match = _TM.fullmatch(value.rstrip(" "))
    if match is None:
        return "is not a time in the form HHMMSS.FFFFFF"
    return _time_problem(*match.groups())


def dt(value: str) -> str | None:
    match = _DT.fullmatch(value.rstrip(" "))
    if match is None:
        return "is not a date-time in the form YYYYMMDDHHMMSS.FFFFFF&ZZXX"
    year, month, day, hour, minute, second, sign, offset_hours, offset_minutes = match.groups()
    if month is not None:
        problem = _date_problem(int(year), int(month), int(day or 1))
        if problem is not None:
            return problem
    problem = _time_problem(hour, minute, second)
    if problem is not None:
        return problem
    if sign is not None:
        offset = int(offset_hours) * 60 + int(offset_minutes)
        if int(offset_minutes) > 59 or not -12 * 60 <= (offset if sign == "+" else -offset) <= 14 * 60:
            return "has a UTC offset outside -1200 to +1400"
    return None


def pn(groups: tuple[str, ...]) -> str | None:
    """`groups` are the decoded alphabetic, ideographic and phonetic component groups."""
    if len(groups) > 3:
        return "has more than three component groups"
    for group in groups:
        if group.count("^") > 4:
            return "has more than five components in a component group"
        if len(group) > 64:
            return "has a component group longer than 64 characters"
    return None


def cs(value: str) -> str | None:
    if len(value) > 16:
        return "is longer than 16 characters"
    if _CS.fullmatch(value) is None:
        return "has characters other than upper-case letters, digits, space and underscore"
    return None


def as_(value: str) -> str | None:
    if _AS.fullmatch(value) is None:
        return "is not an age in the form nnnD, nnnW, nnnM or nnnY"
    return None


def ui(value: str) -> str | None:
    """UID syntax of PS3.5 section 9.1: an ISO OID of digits and dots, at most 64 characters."""
    if not value:
        return "is empty"
    if len(value) > 64:
        return "is longer than 64 characters"
    if _UID_CHARACTERS.fullmatch(value) is None:
        return "has characters other than digits and dots"
    components = value.split(".")
    if "" in components:
        return "has an empty component (a leading, trailing or doubled dot)"
    if any(len(c) > 1 and c.startswith("0") for c in components):
        return "has a component with a leading zero"
    if components[0] not in ("0", "1", "2"):
        return "does not start with an ISO OID root arc (0, 1 or 2)"
    return None
