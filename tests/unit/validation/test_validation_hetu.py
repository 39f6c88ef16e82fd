"""The personal identity code against the vectors of shared/ref/finland.md and generated codes."""

from __future__ import annotations

import string
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import hetu
from gateway.hetu import HetuFault

CHECK_TABLE = "0123456789ABCDEFHJKLMNPRSTUVWXY"
CENTURIES = {"+": 1800, **dict.fromkeys("-YXWVU", 1900), **dict.fromkeys("ABCDEF", 2000)}
DVV_TEST_PERSONS = [
    "010594Y9032", "020594X903P", "030594W903B", "040594V9030", "050594U903M", "010516B903X",
    "020516C903K", "030516D9037", "010501E9032", "020503F9037", "020504A902E", "020504B904H",
]  # fmt: skip


@pytest.mark.parametrize("code", ["131052-308T", "100190-999P", "100190Y999P", "010190-999W", *DVV_TEST_PERSONS])
def test_documented_valid_codes(code: str) -> None:
    assert hetu.fault(code) is None


def test_worked_example() -> None:
    parsed = hetu.parse("131052-308T")
    assert (parsed.birth_date, parsed.century_sign, parsed.individual_number) == (date(1952, 10, 13), "-", 308)
    assert not parsed.is_temporary


@pytest.mark.parametrize("code", ["010190-999Y", "010190-999X"])
def test_fi_base_examples_have_wrong_check_character(code: str) -> None:
    assert hetu.fault(code) is HetuFault.CHECK_CHARACTER


def test_century_sign_distinguishes_persons() -> None:
    old, new = hetu.parse("100190-999P"), hetu.parse("100190Y999P")
    assert old.birth_date == new.birth_date and old.code != new.code
    assert (old.century_sign, new.century_sign) == ("-", "Y")


def test_dvv_test_persons_are_temporary() -> None:
    assert all(hetu.parse(code).is_temporary for code in DVV_TEST_PERSONS)


@pytest.mark.parametrize(
    ("code", "fault"),
    [
        ("290201A9032", HetuFault.DATE),
        ("310490-123A", HetuFault.DATE),
        ("010190-001P", HetuFault.INDIVIDUAL_NUMBER),
        ("010190-000N", HetuFault.INDIVIDUAL_NUMBER),
        ("131052-308t", HetuFault.FORMAT),
        ("131052308T", HetuFault.FORMAT),
        ("131052G308T", HetuFault.FORMAT),
        ("131052-308TT", HetuFault.FORMAT),
        (" 131052-308T", HetuFault.FORMAT),
        ("010190-999G", HetuFault.FORMAT),
    ],
)
def test_documented_invalid_codes(code: str, fault: HetuFault) -> None:
    assert hetu.fault(code) is fault
    with pytest.raises(hetu.InvalidHetu) as raised:
        hetu.parse(code)
    assert raised.value.fault is fault


def test_leap_day_exists_in_2000() -> None:
    assert hetu.parse("290200A903E").birth_date == date(2000, 2, 29)


@st.composite
def valid_codes(draw: st.DrawFn) -> str:
    sign = draw(st.sampled_from(sorted(CENTURIES)))
    born = draw(st.dates(date(CENTURIES[sign], 1, 1), date(CENTURIES[sign] + 99, 12, 31)))
    individual = f"{draw(st.integers(2, 999)):03d}"
    digits = born.strftime("%d%m%y") + individual
    return f"{digits[:6]}{sign}{individual}{CHECK_TABLE[int(digits) % 31]}"


@given(valid_codes())
def test_generated_codes_parse(code: str) -> None:
    parsed = hetu.parse(code)
    assert parsed.code == code
    assert parsed.birth_date.year // 100 * 100 == CENTURIES[code[6]]
    assert parsed.is_temporary == (int(code[7:10]) >= 900)


@given(valid_codes())
def test_every_single_character_corruption_fails(code: str) -> None:
    """Positions 0-5 and 7-10; the century sign is covered below, since another sign is another person."""
    for position in (*range(6), *range(7, 11)):
        for replacement in string.digits + string.ascii_uppercase + "+- a":
            if replacement != code[position]:
                corrupted = code[:position] + replacement + code[position + 1 :]
                assert hetu.fault(corrupted) is not None, corrupted


@given(valid_codes(), st.sampled_from(sorted(CENTURIES)))
def test_century_sign_is_not_in_the_check_character(code: str, sign: str) -> None:
    """Another sign is either a different valid code (never normalised away) or a date that does not exist."""
    changed = code[:6] + sign + code[7:]
    assert hetu.fault(changed) in (None, HetuFault.DATE)
    assert hetu.fault(code[:6] + "*" + code[7:]) is HetuFault.FORMAT
