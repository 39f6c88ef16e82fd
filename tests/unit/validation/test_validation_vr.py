"""Value checks against PS3.5 6.2 examples, one table per Value Representation."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from workers.validation import vr

VALID = {
    vr.da: ["20240229", "19000101", "99991231"],
    vr.tm: ["10", "1015", "101530", "101530.1", "235960.123456", "0700 "],
    vr.dt: ["2024", "202402", "20240229", "2024022913", "20240229131415.123456", "20240115-0500", "2024+1400"],
    vr.cs: ["CT", "ORIGINAL", "ISO_IR 100", "A" * 16, ""],
    vr.as_: ["071Y", "003M", "010W", "001D"],
    vr.ui: ["1.2.840.10008.1.2", "2.25.329800735698586629295641978511506172918", "0.0"],
}
INVALID = {
    vr.da: ["20230229", "2024-01-15", "202401", "20241301", "00000101", ""],
    vr.tm: ["24", "1060", "101561", "10:15", "1015.5", "101530.1234567"],
    vr.dt: ["20240230", "2024011525", "20240115+1401", "20240115-1201", "20240115+0160", "2024-01-15T10:00"],
    vr.cs: ["ct", "A" * 17, "DERIVED-1", "Ä"],
    vr.as_: ["71Y", "071", "071y", "0071Y"],
    vr.ui: ["", "1.2.03", "1..2", "1.2.", ".1.2", "1.2.a", "3.1", "1." + "1" * 63],
}
CASES = [(check, VALID[check], INVALID[check]) for check in VALID]


@pytest.mark.parametrize(("check", "valid", "invalid"), CASES, ids=[case[0].__name__ for case in CASES])
def test_values(check: Callable[[str], str | None], valid: list[str], invalid: list[str]) -> None:
    assert {value: check(value) for value in valid} == dict.fromkeys(valid)
    assert [value for value in invalid if check(value) is None] == []


@pytest.mark.parametrize(
    ("groups", "valid"),
    [
        (("Meikäläinen^Matti^Juhani^Dr^Jr",), True),
        (("Meikäläinen^Matti", "山田^太郎", "やまだ^たろう"), True),
        (("A^B^C^D^E^F",), False),
        (("a", "b", "c", "d"), False),
        (("X" * 65,), False),
    ],
)
def test_person_names(groups: tuple[str, ...], valid: bool) -> None:
    assert (vr.pn(groups) is None) is valid


def test_messages_do_not_echo_values() -> None:
    problem = vr.da("19521313")
    assert problem is not None and "1952" not in problem
