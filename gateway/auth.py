"""Who may call the HTTP API, and as what.

A request carries ``Authorization: Bearer <token>``: a static token from the tokens file (or the one generated
for the embedded default), or a JWT from the district's OpenID Connect provider, verified against the keys it
publishes (signature, issuer, audience, expiry and not-before with clock skew). Each route names the least role
it needs (``requires``); a route that names none needs admin, so a route added without thought is closed, not
open. 401 and 403 answer as JSON with RFC 6750's ``WWW-Authenticate``; failures are counted by reason and
logged without the token (the log's per-peer throttle, ``gateway.logs.PeerThrottle``, keeps a client that
hammers with bad tokens from flooding it).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import logging
import os
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from gateway.core import audit
from gateway.core.audit import AuditTrail
from gateway.metrics import Metrics
from gateway.settings import API_ROLES, HttpAuthSettings, OidcSettings, SettingsError

log = logging.getLogger(__name__)

_MIN_TOKEN_LENGTH = 16
_KEYS_REFETCH_SECONDS = 30.0
"""An unknown key id fetches the provider's keys again, but not more often than this (a forged kid is cheap)."""


class Role(enum.IntEnum):
    """Ordered: each role may do what the ones below it may."""

    READER = 1
    OPERATOR = 2
    ADMIN = 3

    @classmethod
    def named(cls, name: str) -> Role:
        return cls[name.upper()]


assert [role.name.lower() for role in Role] == list(API_ROLES)


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    """The token's name in the tokens file, or the JWT's ``sub`` (a client id for client credentials)."""
    role: Role
    source: str
    """``token`` or ``oidc``."""


PRINCIPAL = web.RequestKey("principal", Principal)
"""Who made the request, for handlers that act on it (and the audit trail)."""


class AuthError(Exception):
    """A refused request: ``reason`` is a fixed word for metrics; the message is safe to show the caller."""

    def __init__(self, reason: str, description: str, status: int = 401) -> None:
        super().__init__(description)
        self.reason = reason
        self.status = status


class KeysUnavailable(Exception):
    """The provider's keys could not be fetched: the caller is not at fault, so this is 503, not 401."""


Handler = TypeVar("Handler", bound=Callable[..., Awaitable[web.StreamResponse]])


def requires(role: Role) -> Callable[[Handler], Handler]:
    def mark(handler: Handler) -> Handler:
        handler.required_role = role  # type: ignore[attr-defined]
        return handler

    return mark


def public(handler: Handler) -> Handler:
    """Open without a token: only for what shows no patient data and changes nothing (probes)."""
    handler.public = True  # type: ignore[attr-defined]
    return handler


def secret_file(path: Path) -> str:
    """The secret in ``path``, generated there (mode 0600, atomically, so that processes sharing the data
    directory agree) when it does not exist yet."""
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_urlsafe(32) + "\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(staged, path)
            log.info("secret generated", extra={"path": str(path)})
        except FileExistsError:
            pass  # another process won the race: use its secret
    finally:
        staged.unlink(missing_ok=True)
    return _read_secret(path)


def _read_secret(path: Path) -> str:
    value = path.read_text().strip()
    if len(value) < _MIN_TOKEN_LENGTH:
        raise SettingsError(f"{path}: shorter than {_MIN_TOKEN_LENGTH} characters")
    if path.stat().st_mode & 0o077:
        log.warning("secret file readable by others than its owner", extra={"path": str(path)})
    return value


class StaticTokens:
    """Tokens from the tokens file, plus the generated one; the file is read again when it changes, so a
    token is added or revoked without a restart. Tokens are kept only as SHA-256 digests."""

    def __init__(self, path: Path | None, generated: str | None = None) -> None:
        self._path = path
        self._fixed: dict[bytes, Principal] = {}
        if generated is not None:
            self._fixed[_digest(generated)] = Principal("api-token", Role.ADMIN, "token")
        self._loaded: dict[bytes, Principal] = {}
        self._stamp: tuple[int, int, int] | None = None
        if path is not None:
            self._loaded = self._read(path)
            self._stamp = _stamp(path)

    def lookup(self, token: str) -> Principal | None:
        self._reload()
        digest = _digest(token)
        return self._fixed.get(digest) or self._loaded.get(digest)

    def _reload(self) -> None:
        if self._path is None:
            return
        try:
            stamp = _stamp(self._path)
            if stamp == self._stamp:
                return
            self._loaded = self._read(self._path)
            self._stamp = stamp
            log.info("API tokens file read again", extra={"path": str(self._path), "tokens": len(self._loaded)})
        except (OSError, SettingsError) as exc:
            log.error("API tokens file unreadable: keeping the tokens read before",
                      extra={"path": str(self._path), "error": str(exc)})

    @staticmethod
    def _read(path: Path) -> dict[bytes, Principal]:
        tokens: dict[bytes, Principal] = {}
        for number, line in enumerate(path.read_text().splitlines(), 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) not in (2, 3) or fields[1] not in API_ROLES:
                raise SettingsError(f"{path} line {number}: expected 'token role [name]' with a role of "
                                    f"{', '.join(API_ROLES)}")
            if len(fields[0]) < _MIN_TOKEN_LENGTH:
                raise SettingsError(f"{path} line {number}: a token needs at least {_MIN_TOKEN_LENGTH} characters")
            name = fields[2] if len(fields) == 3 else f"token-line-{number}"
            tokens[_digest(fields[0])] = Principal(name, Role.named(fields[1]), "token")
        return tokens


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _stamp(path: Path) -> tuple[int, int, int]:
    status = path.stat()
    return status.st_ino, status.st_mtime_ns, status.st_size


class OidcVerifier:
    """JWT access tokens of one OpenID Connect provider. Its keys come from the JWKS it publishes (found by
    discovery unless configured), are used for ``keys_max_age_seconds``, and are fetched again sooner when a
    token names a key id not among them (the provider rotated its keys)."""

    def __init__(self, settings: OidcSettings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._keys: dict[str, tuple[Any, str | None]] = {}
        self._fetched_at = -float("inf")
        self._retry_at = -float("inf")
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def verify(self, token: str) -> Principal:
        import jwt  # only where tokens are checked: PyJWT and cryptography cost each receiver process 25 MB

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed", "the bearer token is neither a known API token nor a JWT") from None
        algorithm = header.get("alg")
        if algorithm not in self._settings.algorithms:
            raise AuthError("invalid_token", f"the token's algorithm {str(algorithm)[:16]!r} is not accepted")
        key, key_algorithm = await self._key(str(header.get("kid", "")))
        if key_algorithm not in (algorithm, None):
            raise AuthError("invalid_token", "the token's algorithm is not its key's")
        settings = self._settings
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=[algorithm], audience=settings.audience, issuer=settings.issuer,
                leeway=settings.clock_skew_seconds, options={"require": ["exp", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise AuthError("expired", "the token has expired") from None
        except jwt.InvalidAudienceError:
            raise AuthError("wrong_audience", "the token is not for this API (aud)") from None
        except jwt.InvalidIssuerError:
            raise AuthError("wrong_issuer", "the token is from another issuer (iss)") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("invalid_token", "the token is not valid yet (nbf/iat)") from None
        except jwt.PyJWTError as exc:
            raise AuthError("invalid_token", f"the token was refused ({type(exc).__name__})") from None
        subject = str(claims.get("sub") or claims.get("client_id") or claims.get("azp") or "")[:128]
        role = self._role(claims)
        if role is None:
            raise AuthError("no_role", f"the token carries no role for this API in '{settings.roles_claim}'", 403)
        return Principal(subject, role, "oidc")

    def _role(self, claims: Mapping[str, Any]) -> Role | None:
        value: Any = claims
        for step in self._settings.roles_claim.split("."):
            value = value.get(step) if isinstance(value, Mapping) else None
        names = value.split() if isinstance(value, str) else value if isinstance(value, list) else []
        roles = [Role.named(self._settings.role_map.get(name, name)) for name in names
                 if isinstance(name, str) and self._settings.role_map.get(name, name) in API_ROLES]
        return max(roles, default=None)

    async def _key(self, key_id: str) -> tuple[Any, str | None]:
        """The key (and the algorithm its JWK pins, if any) that must have signed the token."""
        keys = await self._current_keys(refresh=False)
        if key_id not in keys and not (not key_id and len(keys) == 1):
            keys = await self._current_keys(refresh=True)
        if not key_id and len(keys) == 1:
            return next(iter(keys.values()))
        if key_id not in keys:
            raise AuthError("invalid_token", "no key of the provider has the token's key id")
        return keys[key_id]

    async def _current_keys(self, refresh: bool) -> dict[str, tuple[Any, str | None]]:
        """The keys, fetched again when old (or, on ``refresh``, when not fetched in the last 30 s); after a
        failed fetch the keys held are used, and nothing is fetched, for 30 s, so that an unreachable provider
        does not hold every request up for a timeout."""
        if not self._stale(refresh):
            return self._keys
        async with self._lock:
            now = time.monotonic()
            if self._stale(refresh) and now >= self._retry_at:
                try:
                    self._keys = await self._fetch_keys()
                    self._fetched_at = now
                except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                    self._retry_at = now + _KEYS_REFETCH_SECONDS
                    log.warning("OpenID Connect keys unavailable",
                                extra={"issuer": self._settings.issuer, "error": type(exc).__name__})
            if not self._keys:
                raise KeysUnavailable("the provider's keys could not be fetched")
            return self._keys

    def _stale(self, refresh: bool) -> bool:
        age = time.monotonic() - self._fetched_at
        return age >= self._settings.keys_max_age_seconds or (refresh and age > _KEYS_REFETCH_SECONDS)

    async def _fetch_keys(self) -> dict[str, tuple[Any, str | None]]:
        import jwt

        session = self._client()
        jwks_url = self._settings.jwks_url
        if not jwks_url:
            issuer = self._settings.issuer
            async with session.get(f"{issuer.rstrip('/')}/.well-known/openid-configuration") as response:
                response.raise_for_status()
                discovery = _json_object(await response.json(content_type=None))
            if discovery.get("issuer") != issuer:
                raise ValueError("the discovery document names another issuer")
            jwks_url = str(discovery["jwks_uri"])
        async with session.get(jwks_url) as response:
            response.raise_for_status()
            document = _json_object(await response.json(content_type=None))
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise ValueError("the JWKS has no list of keys")
        keys: dict[str, tuple[Any, str | None]] = {}
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                keys[str(entry.get("kid", ""))] = (jwt.PyJWK(entry), entry.get("alg"))
            except (jwt.PyJWTError, ValueError, TypeError, KeyError):
                continue  # a key this build cannot use (unknown type or algorithm, malformed): others may serve
        log.info("OpenID Connect keys fetched", extra={"issuer": self._settings.issuer, "keys": len(keys)})
        return keys

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            context = ssl.create_default_context(cafile=self._settings.ca_file)
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5),
                                                  connector=aiohttp.TCPConnector(ssl=context))
        return self._session


def _json_object(value: Any) -> dict[str, Any]:
    """A provider's document must be a JSON object; anything else is as if it could not be fetched."""
    if not isinstance(value, dict):
        raise ValueError("the provider's document is not a JSON object")
    return value


class Authenticator:
    def __init__(self, tokens: StaticTokens, oidc: OidcVerifier | None) -> None:
        self._tokens = tokens
        self._oidc = oidc

    @classmethod
    def from_settings(cls, settings: HttpAuthSettings, data_dir: Path) -> Authenticator:
        """With nothing configured, the embedded default: an admin token generated into the data directory."""
        generated = None
        if settings.tokens_file is None and not settings.oidc.enabled:
            path = data_dir / "api-token"
            generated = secret_file(path)
            log.info("API token for the embedded default", extra={"path": str(path.resolve())})
        return cls(StaticTokens(settings.tokens_file, generated),
                   OidcVerifier(settings.oidc) if settings.oidc.enabled else None)

    async def close(self) -> None:
        if self._oidc is not None:
            await self._oidc.close()

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthError("missing", "this route needs a bearer token (Authorization: Bearer ...)")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError("malformed", "the Authorization header is not 'Bearer <token>'")
        principal = self._tokens.lookup(token)
        if principal is not None:
            return principal
        if self._oidc is None or token.count(".") != 2:
            raise AuthError("unknown_token", "the bearer token is not valid")
        return await self._oidc.verify(token)


def middleware(authenticator: Authenticator, metrics: Metrics, trail: AuditTrail) -> Any:
    """Every request authenticated before its handler; refusals and each user's first login in an hour audited."""
    logins = _Logins(trail)

    @web.middleware
    async def authenticate(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        route_handler = request.match_info.handler
        if request.match_info.http_exception is not None or getattr(route_handler, "public", False):
            return await handler(request)
        needed: Role = getattr(route_handler, "required_role", Role.ADMIN)
        try:
            principal = await authenticator.authenticate(request.headers.get("Authorization"))
            if principal.role < needed:
                raise AuthError("forbidden", f"this route needs the {needed.name.lower()} role; the token has "
                                             f"{principal.role.name.lower()}", 403)
        except AuthError as refused:
            metrics.http_auth_failures.labels(refused.reason).inc()
            log.warning("HTTP request refused", extra={"peer": _peer(request), "method": request.method,
                                                       "path": request.path, "reason": refused.reason})
            logins.refused(request, refused)
            return _refusal(refused, bool(request.headers.get("Authorization")))
        except KeysUnavailable:
            metrics.http_auth_failures.labels("keys_unavailable").inc()
            return web.json_response({"error": "unavailable",
                                      "reason": "the identity provider's keys could not be fetched"}, status=503)
        request[PRINCIPAL] = principal
        logins.accepted(request, principal)
        return await handler(request)

    return authenticate


class _Logins:
    """User Authentication records (PS3.15 A.5.3.16): every refusal, and a principal's first accepted request
    from an address each hour (a bearer token has no login of its own; a record per request would bury the rest)."""

    _REMEMBER_SECONDS = 3600.0
    _MAX_REMEMBERED = 10_000

    def __init__(self, trail: AuditTrail) -> None:
        self._trail = trail
        self._seen: dict[tuple[str, str], float] = {}

    def accepted(self, request: web.Request, principal: Principal) -> None:
        host = request.remote or ""
        now = time.monotonic()
        key = (principal.subject, host)
        if now - self._seen.get(key, -self._REMEMBER_SECONDS) < self._REMEMBER_SECONDS:
            return
        if len(self._seen) >= self._MAX_REMEMBERED:
            self._seen.clear()
        self._seen[key] = now
        self._trail.note(self._record(audit.Outcome.SUCCESS, principal.subject, host,
                                      f"{principal.source}, role {principal.role.name.lower()}"))

    def refused(self, request: web.Request, refused: AuthError) -> None:
        if refused.status == 403:
            self._trail.note(audit.AuditRecord(
                audit.Event.SECURITY_ALERT, audit.Outcome.MINOR_FAILURE,
                (audit.peer("-", request.remote or "", None),), audit.Interface.API, audit.Action.EXECUTE,
                outcome_text=f"{request.method} {request.path} refused: {refused.reason}"))
            return
        self._trail.note(self._record(audit.Outcome.MINOR_FAILURE, "-", request.remote or "",
                                      f"{request.method} {request.path} refused: {refused.reason}"))

    @staticmethod
    def _record(outcome: audit.Outcome, user: str, host: str, text: str) -> audit.AuditRecord:
        return audit.AuditRecord(audit.Event.USER_AUTHENTICATION, outcome, (audit.peer(user, host, None),),
                                 audit.Interface.API, audit.Action.EXECUTE, (audit.EventType.LOGIN,),
                                 outcome_text=text)


def _peer(request: web.Request) -> str:
    """``host:port`` like every peer field, so that the log's per-peer throttle can group by host."""
    peername = request.transport.get_extra_info("peername") if request.transport is not None else None
    return f"{peername[0]}:{peername[1]}" if peername else ""


def _refusal(refused: AuthError, presented: bool) -> web.Response:
    """RFC 6750 section 3: an error code only when a token was presented."""
    challenge = 'Bearer realm="dicom-gateway"'
    if refused.status == 403:
        challenge += ', error="insufficient_scope"'
    elif presented:
        challenge += f', error="invalid_token", error_description="{refused}"'
    error = "forbidden" if refused.status == 403 else "unauthorized"
    return web.json_response({"error": error, "reason": str(refused)}, status=refused.status,
                             headers={"WWW-Authenticate": challenge})


def internal_middleware(secret: str, metrics: Metrics) -> Any:
    """The internal port's one rule: the shared secret, compared in constant time."""
    expected = f"Bearer {secret}".encode()

    @web.middleware
    async def authenticate(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        presented = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(presented, expected):
            metrics.http_auth_failures.labels("internal_secret").inc()
            log.warning("internal request refused", extra={"peer": _peer(request), "path": request.path})
            return web.json_response({"error": "unauthorized", "reason": "the internal secret is missing or wrong"},
                                     status=401, headers={"WWW-Authenticate": 'Bearer realm="dicom-gateway-internal"'})
        return await handler(request)

    return authenticate
