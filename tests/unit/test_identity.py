"""User identities that are malformed or hostile are refused with a reason that never quotes the credential."""

from __future__ import annotations

import pytest

from gateway.dicom.identity import JWT, KERBEROS, USERNAME_AND_PASSCODE, Authenticator, UserIdentity

CHECKING = Authenticator(users={"ctscanner": "s3cret"}, token_keys=["hmac-key-of-the-district-0123456789"])


@pytest.mark.parametrize(("identity", "reason"), [
    (UserIdentity(USERNAME_AND_PASSCODE, b"\xff\xfe\x00", b"s3cret", True), "the username is not UTF-8"),
    (UserIdentity(USERNAME_AND_PASSCODE, b"ctscanner", b"s3cret-guess", True), "wrong passcode"),
    (UserIdentity(JWT, b"not.a.token", b"", True), "token refused: DecodeError"),
    (UserIdentity(JWT, b"\x00" * 5000, b"", False), "token refused: DecodeError"),
    (UserIdentity(9, b"ctscanner", b"s3cret", False), "user identity type 9 is not defined"),
])
def test_a_hostile_identity_is_refused_without_quoting_it(identity: UserIdentity, reason: str) -> None:
    verdict = CHECKING.judge(identity)
    assert verdict.refusal == reason and verdict.response is None
    assert b"s3cret" not in verdict.refusal.encode() and "ctscanner" not in verdict.refusal


def test_unsupported_kinds_count_as_none_unless_an_identity_is_required() -> None:
    kerberos = UserIdentity(KERBEROS, b"ticket", b"", True)
    assert CHECKING.judge(kerberos).refusal == ""
    assert Authenticator(required=True).judge(kerberos).refusal.startswith("a user identity is required")
