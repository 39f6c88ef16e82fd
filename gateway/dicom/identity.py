"""User Identity Negotiation (PS3.7 D.3.3.7): who the requestor says it is, checked at association time.

The requestor may send a username, a username and passcode, or a JSON Web Token (types 1, 2, 5; Kerberos and
SAML, types 3 and 4, are not supported and count as no identity). What is checked is configured
(``dicom.user_identity``): passcodes compared in constant time, tokens verified with PyJWT (signature, expiry,
audience and issuer when configured). A requestor that asks for a positive response gets one once its identity
is accepted: zero length for types 1 and 2, and for a JWT the token it sent (PS3.7 D.3.3.7.2 wants a JWT back).
An identity that fails the check rejects the association (PS3.7 D.3.3.7: rejected-permanent, source
"service-provider (ACSE)", no reason given) and the reason is logged, never the credential.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

USERNAME = 1
USERNAME_AND_PASSCODE = 2
KERBEROS = 3
SAML = 4
JWT = 5

TOKEN_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "PS256")


@dataclass(frozen=True, slots=True)
class UserIdentity:
    """The User Identity sub-item of an A-ASSOCIATE-RQ."""

    kind: int
    primary: bytes
    secondary: bytes
    positive_response_requested: bool


@dataclass(frozen=True, slots=True)
class Verdict:
    """``user`` is who was accepted ("" for nobody in particular); ``refusal`` says why not, when refused."""

    user: str = ""
    refusal: str = ""
    response: bytes | None = None
    """The Server-response to send (None: send no User Identity item)."""


class Authenticator:
    """Checks identities against the configured users and token keys."""

    def __init__(self, *, required: bool = False, users: Mapping[str, str] | None = None,
                 token_keys: Sequence[str] = (), token_audience: str | None = None,
                 token_issuer: str | None = None) -> None:
        self._required = required
        self._users = dict(users or {})
        self._token_keys = tuple(token_keys)
        self._audience = token_audience
        self._issuer = token_issuer

    @property
    def checks(self) -> bool:
        """Whether identities are checked at all; otherwise any identity is taken at its word."""
        return bool(self._users or self._token_keys)

    def judge(self, identity: UserIdentity | None) -> Verdict:
        if identity is None or identity.kind in (KERBEROS, SAML):
            if self._required:
                return Verdict(refusal="a user identity is required and none usable was sent")
            return Verdict()
        user, refusal = self._check(identity)
        if refusal:
            return Verdict(refusal=refusal)
        response = None
        if identity.positive_response_requested:
            response = identity.primary if identity.kind == JWT else b""
        return Verdict(user=user, response=response)

    def _check(self, identity: UserIdentity) -> tuple[str, str]:
        if identity.kind == JWT:
            return self._token(identity.primary)
        try:
            name = identity.primary.decode("utf-8")
        except UnicodeDecodeError:
            return "", "the username is not UTF-8"
        if identity.kind not in (USERNAME, USERNAME_AND_PASSCODE):
            return "", f"user identity type {identity.kind} is not defined"
        if not self.checks:
            return name, ""
        expected = self._users.get(name)
        if expected is None:
            return "", "unknown username"
        given = identity.secondary if identity.kind == USERNAME_AND_PASSCODE else b""
        if not hmac.compare_digest(given, expected.encode("utf-8")):
            return "", "wrong passcode" if given else "a passcode is required for this username"
        return name, ""

    def _token(self, token: bytes) -> tuple[str, str]:
        import jwt  # only where tokens are checked: PyJWT and cryptography cost each receiver process 25 MB

        if not self.checks:
            return "", ""
        if not self._token_keys:
            return "", "JSON Web Tokens are not accepted (no key configured)"
        failure = "no key verifies the token"
        for key in self._token_keys:
            try:
                claims = jwt.decode(token, key, algorithms=list(TOKEN_ALGORITHMS), audience=self._audience,
                                    issuer=self._issuer, options={"require": ["exp"]})
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                failure = f"token refused: {type(exc).__name__}"
                if not isinstance(exc, jwt.InvalidKeyError | jwt.InvalidAlgorithmError):
                    return "", failure
                continue
            return str(claims.get("sub", "")), ""
        return "", failure
