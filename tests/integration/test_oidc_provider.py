"""The OIDC provider fixture issues what the gateway's bearer-token checks rely on: signed JWTs whose issuer,
audience, roles and expiry a verifier that knows only the issuer's JWKS can trust."""

from __future__ import annotations

import json
import time
import urllib.error
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.oidc_provider import (
    DEFAULT_RESOURCE,
    OTHER_RESOURCE,
    SHORT_TTL,
    OidcClient,
    OidcProvider,
    oidc_provider_fixture,  # noqa: F401  (registers the oidc_provider fixture)
)


def verify(provider: OidcProvider, token: str, audience: str = DEFAULT_RESOURCE, algorithm: str = "RS256") -> dict[str, Any]:
    """What a resource server does: the key from the JWKS by kid, then signature, issuer, audience and expiry."""
    key = jwt.PyJWKClient(provider.jwks_uri).get_signing_key_from_jwt(token)
    claims: dict[str, Any] = jwt.decode(token, key, algorithms=[algorithm], audience=audience, issuer=provider.issuer,
                              options={"require": ["exp", "iat", "iss", "aud"]})
    return claims


def test_a_reader_token_is_a_signed_jwt_for_the_gateway(oidc_provider: OidcProvider) -> None:
    assert oidc_provider.issuer.startswith("http://127.0.0.1:")
    assert oidc_provider.configuration["issuer"] == oidc_provider.issuer
    assert "client_credentials" in oidc_provider.configuration["grant_types_supported"]
    token = oidc_provider.token("gateway-reader")
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
    claims = verify(oidc_provider, token)
    assert claims["iss"] == oidc_provider.issuer
    assert claims["aud"] == DEFAULT_RESOURCE
    assert claims["roles"] == ["reader"]
    assert claims["client_id"] == claims["sub"] == "gateway-reader"
    assert claims["exp"] - claims["iat"] == 300


@pytest.mark.parametrize(("client_id", "roles"), [
    ("gateway-operator", ["operator"]), ("gateway-admin", ["admin"]), ("no-roles", []),
])
def test_each_client_carries_its_roles(oidc_provider: OidcProvider, client_id: str, roles: list[str]) -> None:
    assert verify(oidc_provider, oidc_provider.token(client_id))["roles"] == roles


def test_tokens_for_another_service_have_its_audience(oidc_provider: OidcProvider) -> None:
    token = oidc_provider.token("other-service")
    with pytest.raises(jwt.InvalidAudienceError):
        verify(oidc_provider, token)
    claims = verify(oidc_provider, token, audience=OTHER_RESOURCE)
    assert claims["aud"] == OTHER_RESOURCE and claims["roles"] == ["reader", "operator", "admin"]
    # A gateway client asking for another resource gets that audience too.
    assert verify(oidc_provider, oidc_provider.token("gateway-admin", resource=OTHER_RESOURCE),
                  audience=OTHER_RESOURCE)["roles"] == ["admin"]


def test_a_tampered_token_fails_verification(oidc_provider: OidcProvider) -> None:
    header, _, signature = oidc_provider.token("gateway-reader").split(".")
    admin_payload = oidc_provider.token("gateway-admin").split(".")[1]
    with pytest.raises(jwt.InvalidSignatureError):
        verify(oidc_provider, f"{header}.{admin_payload}.{signature}")


def test_a_wrong_secret_gets_no_token(oidc_provider: OidcProvider) -> None:
    with pytest.raises(urllib.error.HTTPError) as caught:
        oidc_provider.token_response("gateway-admin", secret="not-the-secret")
    assert caught.value.code == 401
    assert json.loads(caught.value.read())["error"] == "invalid_client"
    caught.value.close()


def test_short_lived_tokens_expire(oidc_provider: OidcProvider) -> None:
    answer = oidc_provider.token_response("gateway-reader-short-lived")
    assert answer["expires_in"] == SHORT_TTL
    claims = verify(oidc_provider, answer["access_token"])
    assert claims["exp"] - claims["iat"] == SHORT_TTL
    time.sleep(max(0.0, claims["exp"] + 1 - time.time()))
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(oidc_provider, answer["access_token"])


def test_a_provider_of_its_own_signs_with_ec_keys(tmp_path: Path, oidc_provider: OidcProvider) -> None:
    client = OidcClient("scoped", ("operator",), scope="dicom.read dicom.write", resource="https://gateway.test/")
    with OidcProvider(tmp_path, [client], signing_alg="ES256", token_ttl=60) as provider:
        answer = provider.token_response("scoped", scope="dicom.read")
        claims = verify(provider, answer["access_token"], audience="https://gateway.test/", algorithm="ES256")
        assert claims["scope"] == answer["scope"] == "dicom.read"
        assert claims["roles"] == ["operator"] and claims["exp"] - claims["iat"] == 60
        assert {key.key_type for key in jwt.PyJWKClient(provider.jwks_uri).get_jwk_set().keys} == {"RSA", "EC"}
        # Keys are made fresh per run: the session provider's tokens do not verify against this one's.
        with pytest.raises(jwt.PyJWKClientError):
            verify(provider, oidc_provider.token("gateway-reader"))
    assert provider.process.returncode is not None
