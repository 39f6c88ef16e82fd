"""The HTTP API as a caller on the hospital network meets it: nothing that shows patient data or changes state
answers without a valid token with the right role; static tokens, the generated embedded token, and JWTs that a
real OpenID Connect provider (oidc-provider, client credentials) issued; HTTPS with client certificates."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import ssl
import stat
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway import logs
from gateway.cli import _serve
from gateway.settings import Settings
from tests.component.test_receiver_tls import pki  # noqa: F401
from tests.helpers import free_port
from tests.oidc_provider import (
    DEFAULT_RESOURCE,
    OTHER_RESOURCE,
    SHORT_TTL,
    OidcProvider,
    oidc_provider_fixture,  # noqa: F401
)

READER, OPERATOR, ADMIN = ("reader-token-" + "r" * 20, "operator-token-" + "o" * 20, "admin-token-" + "a" * 20)


@asynccontextmanager
async def api(tmp_path: Path, scheme: str = "http", ssl_context: ssl.SSLContext | None = None,
              **http: Any) -> AsyncIterator[str]:
    """The api role in-process on a free port; yields its base URL once ready."""
    settings = Settings(data_dir=tmp_path / "data", http={"host": "127.0.0.1", "port": free_port(), **http},
                        dicom={"host": "127.0.0.1", "port": free_port()}, runtime={"drain_timeout_seconds": 2})
    server = asyncio.create_task(_serve(settings, ["api"], None, None))
    base = f"{scheme}://127.0.0.1:{settings.http.port}"
    try:
        async with asyncio.timeout(30), aiohttp.ClientSession() as session:
            while True:
                if server.done():
                    server.result()
                try:
                    async with session.get(f"{base}/readyz", ssl=ssl_context or False) as response:
                        if response.status == 200:
                            break
                except (OSError, aiohttp.ClientError):
                    pass
                await asyncio.sleep(0.05)
        yield base
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)


async def call(base: str, path: str, token: str | None = None, method: str = "GET",
               **options: Any) -> tuple[int, dict[str, Any] | list[Any], aiohttp.typedefs.LooseHeaders]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as session, session.request(method, f"{base}{path}", headers=headers,
                                                                    **options) as response:
        body = await response.json(content_type=None) if response.content_type == "application/json" else {}
        return response.status, body, response.headers


def tokens_file(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "api-tokens"
    path.write_text("\n".join(lines) + "\n")
    return path


async def auth_failures(base: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as response:
        text = await response.text()
    return {sample.labels["reason"]: sample.value for family in text_string_to_metric_families(text)
            if family.name == "dicomgw_http_auth_failures" for sample in family.samples
            if sample.name.endswith("_total")}


async def test_the_embedded_default_generates_an_admin_token_and_opens_nothing_without_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with api(tmp_path) as base:
        token_file = tmp_path / "data" / "api-token"
        token = token_file.read_text().strip()
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and len(token) >= 32
        for path in ("/api/studies", "/api/dlq", "/api/settings", "/api/studies/1.2.3", "/api/patients/P1",
                     "/api/audit?patient_id=P1"):
            status, body, headers = await call(base, path)
            assert status == 401 and body["error"] == "unauthorized", path
            assert headers["WWW-Authenticate"] == 'Bearer realm="dicom-gateway"'
        status, body, headers = await call(base, "/api/studies", "x" * 43)
        assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
        assert (await call(base, "/api/studies", token))[0] == 200
        status, me, _ = await call(base, "/api/me", token)
        assert status == 200 and me == {"subject": "api-token", "role": "admin", "source": "token"}
        for open_path in ("/healthz", "/readyz", "/metrics"):
            async with aiohttp.ClientSession() as session, session.get(f"{base}{open_path}") as response:
                assert response.status == 200, open_path
        assert (await auth_failures(base)) == {"missing": 6.0, "unknown_token": 1.0}  # one per path above
    assert any(str(token_file.resolve()) in record.getMessage() + str(getattr(record, "path", ""))
               for record in caplog.records)
    assert token not in caplog.text
    async with api(tmp_path) as base:
        assert token_file.read_text().strip() == token, "a restart keeps the generated token"
        assert (await call(base, "/api/studies", token))[0] == 200


async def test_roles_from_the_tokens_file_and_its_rotation_without_a_restart(tmp_path: Path) -> None:
    path = tokens_file(tmp_path, "# district tokens", f"{READER} reader dashboards",
                       f"{OPERATOR} operator on-call", f"{ADMIN} admin")
    async with api(tmp_path, auth={"tokens_file": str(path)}) as base:
        assert not (tmp_path / "data" / "api-token").exists(), "no generated token beside a tokens file"
        assert (await call(base, "/api/studies", READER))[0] == 200
        status, me, _ = await call(base, "/api/me", READER)
        assert me == {"subject": "dashboards", "role": "reader", "source": "token"}
        status, body, headers = await call(base, "/api/dlq/0123/redrive", READER, "POST")
        assert status == 403 and body["error"] == "forbidden" and "operator" in body["reason"]
        assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]
        status, body, _ = await call(base, "/api/dlq/0123/redrive", OPERATOR, "POST")
        assert status == 404, "the operator may re-drive; there is no such entry"
        assert (await call(base, "/api/settings", OPERATOR))[0] == 403
        assert (await call(base, "/api/audit?patient_id=P1", READER))[0] == 403, "who did what: operators only"
        status, entries, _ = await call(base, "/api/audit?patient_id=P1&from=2026-01-01", OPERATOR)
        assert status == 200 and entries == []
        for bad in ("from=yesterday", "to=2026-13-01", "limit=-1", "limit=many"):
            assert (await call(base, f"/api/audit?{bad}", OPERATOR))[0] == 400, bad
        status, settings, _ = await call(base, "/api/settings", ADMIN)
        assert status == 200 and settings["http"]["auth"]["tokens_file"] == str(path)

        rotated = "rotated-token-" + "n" * 20
        time.sleep(0.01)
        tokens_file(tmp_path, f"{rotated} reader dashboards", f"{ADMIN} admin")
        assert (await call(base, "/api/studies", rotated))[0] == 200
        assert (await call(base, "/api/studies", READER))[0] == 401, "a token removed from the file is revoked"

        path.write_text("this line is not a token and a role\n")
        assert (await call(base, "/api/studies", rotated))[0] == 200, "a broken file keeps the tokens before"


async def test_a_broken_tokens_file_stops_the_start_with_its_line(tmp_path: Path) -> None:
    path = tokens_file(tmp_path, f"{READER} superuser")
    with pytest.raises(Exception, match="line 1"):
        async with api(tmp_path, auth={"tokens_file": str(path)}):
            pass


async def test_a_failing_client_is_logged_a_few_times_and_counted_every_time(tmp_path: Path) -> None:
    """Through the production log handler (JSON, per-peer throttle): counted always, logged a few times."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.PeerThrottle(lines=5))
    logging.getLogger().addHandler(handler)
    try:
        async with api(tmp_path) as base:
            for attempt in range(40):
                await call(base, "/api/studies?patient_id=010101-123N", f"guess-{attempt:04d}-" + "g" * 20)
            failures = await auth_failures(base)
    finally:
        logging.getLogger().removeHandler(handler)
    refusals = [json.loads(line) for line in stream.getvalue().splitlines() if "HTTP request refused" in line]
    assert failures == {"unknown_token": 40.0}
    assert len(refusals) == 5 and all(r["reason"] == "unknown_token" and r["path"] == "/api/studies"
                                      for r in refusals)
    assert "010101-123N" not in stream.getvalue() and "guess-" not in stream.getvalue(), "no query, no token"


async def test_metrics_need_a_token_when_they_are_not_public(tmp_path: Path) -> None:
    path = tokens_file(tmp_path, f"{READER} reader prometheus")
    async with api(tmp_path, auth={"tokens_file": str(path), "public_metrics": False}) as base:
        assert (await call(base, "/metrics"))[0] == 401
        async with aiohttp.ClientSession() as session, session.get(
                f"{base}/metrics", headers={"Authorization": f"Bearer {READER}"}) as response:
            assert response.status == 200 and "dicomgw_http_auth_failures_total" in await response.text()
        assert (await call(base, "/healthz"))[0] == 200


def oidc(provider: OidcProvider, **extra: Any) -> dict[str, Any]:
    return {"oidc": {"issuer": provider.issuer, "audience": DEFAULT_RESOURCE, **extra}}


async def test_openid_connect_tokens_from_a_real_provider(tmp_path: Path, oidc_provider: OidcProvider) -> None:
    async with api(tmp_path, auth=oidc(oidc_provider, clock_skew_seconds=0)) as base:
        assert not (tmp_path / "data" / "api-token").exists()
        reader = oidc_provider.token("gateway-reader")
        assert (await call(base, "/api/studies", reader))[0] == 200
        assert (await call(base, "/api/me", reader))[1] == {"subject": "gateway-reader", "role": "reader",
                                                          "source": "oidc"}
        assert (await call(base, "/api/dlq/0123/redrive", reader, "POST"))[0] == 403
        assert (await call(base, "/api/dlq/0123/redrive", oidc_provider.token("gateway-operator"), "POST"))[0] == 404
        assert (await call(base, "/api/settings", oidc_provider.token("gateway-admin")))[0] == 200

        status, body, _ = await call(base, "/api/studies", oidc_provider.token("no-roles"))
        assert status == 403 and "roles" in body["reason"]
        status, body, _ = await call(base, "/api/studies", oidc_provider.token("other-service"))
        assert status == 401 and "aud" in body["reason"], "a token for another service"
        other = oidc_provider.token("gateway-admin", resource=OTHER_RESOURCE)
        assert (await call(base, "/api/studies", other))[0] == 401

        header, claims, signature = reader.split(".")
        forged_claims = json.loads(base64.urlsafe_b64decode(claims + "=="))
        forged_claims["roles"] = ["admin"]
        forged = ".".join([header, _b64(json.dumps(forged_claims).encode()), signature])
        assert (await call(base, "/api/settings", forged))[0] == 401, "claims changed after signing"
        unsigned = ".".join([_b64(b'{"alg":"none","typ":"JWT"}'), claims, ""])
        assert (await call(base, "/api/studies", unsigned))[0] == 401, "alg none"

        short = oidc_provider.token("gateway-reader-short-lived")
        assert (await call(base, "/api/studies", short))[0] == 200
        await asyncio.sleep(SHORT_TTL + 1.5)
        status, body, _ = await call(base, "/api/studies", short)
        assert status == 401 and "expired" in body["reason"]
        failures = await auth_failures(base)
    assert failures["expired"] == 1 and failures["wrong_audience"] == 2 and failures["no_role"] == 1
    assert failures["forbidden"] == 1 and failures["invalid_token"] >= 1


async def test_tokens_wait_with_503_while_the_provider_is_unreachable(tmp_path: Path,
                                                                      oidc_provider: OidcProvider) -> None:
    token = oidc_provider.token("gateway-reader")
    path = tokens_file(tmp_path, f"{READER} reader")
    unreachable = {"issuer": oidc_provider.issuer, "jwks_url": f"http://127.0.0.1:{free_port()}/jwks"}
    async with api(tmp_path, auth={"tokens_file": str(path), **oidc(oidc_provider, **unreachable)}) as base:
        status, body, _ = await call(base, "/api/studies", token)
        assert status == 503 and body["error"] == "unavailable"
        assert (await call(base, "/api/studies", READER))[0] == 200, "static tokens still work"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_https_with_a_required_client_certificate(tmp_path: Path, pki: Path) -> None:  # noqa: F811
    path = tokens_file(tmp_path, f"{READER} reader")
    trusted = ssl.create_default_context(cafile=pki / "ca.pem")
    trusted.load_cert_chain(pki / "client.pem", pki / "client.key")
    tls = {"cert_file": str(pki / "server.pem"), "key_file": str(pki / "server.key"),
           "ca_file": str(pki / "ca.pem"), "require_client_cert": True}
    async with api(tmp_path, "https", trusted, auth={"tokens_file": str(path)}, tls=tls) as base:
        status, _, _ = await call(base, "/api/studies", READER, ssl=trusted)
        assert status == 200
        no_client_cert = ssl.create_default_context(cafile=pki / "ca.pem")
        with pytest.raises(aiohttp.ClientError):
            await call(base, "/api/studies", READER, ssl=no_client_cert)
        stranger = ssl.create_default_context(cafile=pki / "ca.pem")
        stranger.load_cert_chain(pki / "stranger.pem", pki / "stranger.key")
        with pytest.raises(aiohttp.ClientError):
            await call(base, "/api/studies", READER, ssl=stranger)
        with pytest.raises(aiohttp.ClientError):
            await call(base.replace("https://", "http://"), "/api/studies", READER)


async def test_malformed_authorization_headers_are_refused_as_such(tmp_path: Path,
                                                                   oidc_provider: OidcProvider) -> None:
    path = tokens_file(tmp_path, f"{READER} reader")
    async with api(tmp_path, auth={"tokens_file": str(path), **oidc(oidc_provider)}) as base:
        expected: dict[str, float] = {}
        async with aiohttp.ClientSession() as session:
            for header, reason in (("Basic cmVhZGVyOnNlY3JldA==", "malformed"), ("Bearer", "malformed"),
                                   ("Bearer    ", "malformed"), ("Bearer a.b.c", "malformed"),
                                   ("Bearer " + "é" * 30, "unknown_token"), (READER, "malformed")):
                async with session.get(f"{base}/api/studies", headers={"Authorization": header}) as response:
                    body = await response.json()
                    assert response.status == 401 and body["error"] == "unauthorized", header
                expected[reason] = expected.get(reason, 0.0) + 1
                assert await auth_failures(base) == expected, header
            async with session.get(f"{base}/api/studies", headers={"Authorization": f"bearer {READER}"}) as response:
                assert response.status == 200, "the scheme is case-insensitive (RFC 7235)"


@pytest.mark.parametrize("document", [b"<html>not json</html>", b"[]", b'{"keys": "none"}',
                                      b'{"keys": [1, {"kty": "RSA"}, {"kty": "EC", "crv": "P-999"}]}'],
                         ids=["html", "list", "keys-not-a-list", "unusable-keys"])
async def test_a_provider_publishing_garbage_keys_gets_503_not_a_crash(
    tmp_path: Path, oidc_provider: OidcProvider, document: bytes
) -> None:
    """The JWKS is input too: whatever it holds, tokens wait with 503 and static tokens keep working."""
    async def jwks(_: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    app = web.Application()
    app.router.add_get("/jwks", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    path = tokens_file(tmp_path, f"{READER} reader")
    try:
        settings = oidc(oidc_provider, jwks_url=f"http://127.0.0.1:{port}/jwks")
        async with api(tmp_path, auth={"tokens_file": str(path), **settings}) as base:
            status, body, _ = await call(base, "/api/studies", oidc_provider.token("gateway-reader"))
            assert status == 503 and body["error"] == "unavailable"
            assert (await call(base, "/api/studies", READER))[0] == 200
    finally:
        await runner.cleanup()
