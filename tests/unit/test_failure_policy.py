"""The failure policy: outages are retried without end, a message's own errors dead-letter, errors nobody
classified get a few tries first; and reasons never quote what an exception's message might hold."""

from __future__ import annotations

from gateway.bus import BusUnavailable, RecordTooLarge
from gateway.core.errors import Permanent, Unavailable
from gateway.index import IndexRejected, IndexUnavailable
from gateway.objects import ObjectStoreUnavailable
from workers.failure import UNKNOWN_ATTEMPTS, Attempts, Verdict, reason


def test_an_outage_is_retried_however_often_it_happens() -> None:
    attempts = Attempts()
    for error in [Unavailable("s3"), BusUnavailable("down"), IndexUnavailable("restart"),
                  ObjectStoreUnavailable("503"), ConnectionRefusedError(), TimeoutError()] * 5:
        assert attempts.verdict("record", error) is Verdict.RETRY


def test_a_permanent_error_dead_letters_at_once() -> None:
    for error in [Permanent("bad"), IndexRejected("SQLSTATE 22021"), RecordTooLarge("2 MiB")]:
        assert Attempts().verdict("record", error) is Verdict.DEAD_LETTER


def test_an_unclassified_error_gets_a_few_tries_per_message_then_dead_letters() -> None:
    attempts = Attempts()
    verdicts = [attempts.verdict("a", ValueError("x")) for _ in range(UNKNOWN_ATTEMPTS)]
    assert verdicts == [Verdict.RETRY] * (UNKNOWN_ATTEMPTS - 1) + [Verdict.DEAD_LETTER]
    assert attempts.verdict("b", ValueError("x")) is Verdict.RETRY, "counted per message"
    attempts.succeeded("b")
    assert [attempts.verdict("b", ValueError("x")) for _ in range(UNKNOWN_ATTEMPTS - 1)] == (
        [Verdict.RETRY] * (UNKNOWN_ATTEMPTS - 1))


def test_a_reason_keeps_our_own_messages_and_withholds_a_librarys() -> None:
    assert reason(Permanent("the index refused the instance: SQLSTATE 22021")) == (
        "the index refused the instance: SQLSTATE 22021")
    assert reason(IndexUnavailable("PostgreSQL unreachable")) == "IndexUnavailable: PostgreSQL unreachable"
    try:
        int("131052-308T")
    except ValueError as error:
        why = reason(error)
    assert why.startswith("unexpected ValueError at test_failure_policy.py:") and "131052" not in why
