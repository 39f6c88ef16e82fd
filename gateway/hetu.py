"""Finnish personal identity code (henkilötunnus, hetu): structure, century signs and mod-31 check character.

Follows DVV's rules as summarised in shared/ref/finland.md §1, including the century signs added on 1.1.2023.
The century sign distinguishes persons (``100190-999P`` and ``100190Y999P`` are two people), so it is kept
as given and never normalised.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import date

HETU_OID = "1.2.246.21"
"""Issuer (assigning authority) OID of the national personal identity code."""

CHECK_CHARACTERS = "0123456789ABCDEFHJKLMNPRSTUVWXY"
"""Index = (DDMMYYZZZ mod 31); G, I, O, Q and Z are never used."""

CENTURY_SIGNS: dict[str, int] = {
    "+": 1800,
    **dict.fromkeys("-YXWVU", 1900),
    **dict.fromkeys("ABCDEF", 2000),
}

TEMPORARY_RANGE = range(900, 1000)
"""Individual numbers organisations use for temporary and test identities; never a confirmed person."""

_PATTERN = re.compile(r"([0-9]{2})([0-9]{2})([0-9]{2})([-+A-FU-Y])([0-9]{3})([0-9A-FHJ-NPR-Y])")
r"""ASCII digits only: ``\d`` would take other scripts' digits, and so a second code for the same person."""


class HetuFault(enum.Enum):
    """Why a code is not a valid hetu, in the order the checks run (only the first fault is reported)."""

    FORMAT = "format"
    DATE = "date"
    INDIVIDUAL_NUMBER = "individual number"
    CHECK_CHARACTER = "check character"


class InvalidHetu(ValueError):
    def __init__(self, fault: HetuFault) -> None:
        super().__init__(f"not a valid personal identity code: wrong {fault.value}")
        self.fault = fault


@dataclass(frozen=True)
class Hetu:
    code: str
    birth_date: date
    century_sign: str
    individual_number: int

    @property
    def is_temporary(self) -> bool:
        """True for the 900 series: a temporary or test identity, not a person in the population register."""
        return self.individual_number in TEMPORARY_RANGE


def check_character(birth_digits: str, individual_number: str) -> str:
    """The check character for DDMMYY and ZZZ; the century sign does not take part."""
    return CHECK_CHARACTERS[int(birth_digits + individual_number) % 31]


def parse(code: str) -> Hetu:
    """Parse an upper-case 11-character code, raising InvalidHetu with the first fault found."""
    match = _PATTERN.fullmatch(code)
    if match is None:
        raise InvalidHetu(HetuFault.FORMAT)
    day, month, year, sign, individual, check = match.groups()
    try:
        birth_date = date(CENTURY_SIGNS[sign] + int(year), int(month), int(day))
    except ValueError:
        raise InvalidHetu(HetuFault.DATE) from None
    if int(individual) < 2:
        raise InvalidHetu(HetuFault.INDIVIDUAL_NUMBER)
    if check_character(day + month + year, individual) != check:
        raise InvalidHetu(HetuFault.CHECK_CHARACTER)
    return Hetu(code, birth_date, sign, int(individual))


def fault(code: str) -> HetuFault | None:
    """The first fault of `code`, or None when it is a valid hetu."""
    try:
        parse(code)
    except InvalidHetu as exc:
        return exc.fault
    return None
