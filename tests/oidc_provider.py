"""A real OpenID Connect provider for the tests: panva's certified oidc-provider, run by the machine's Node.js.

The gateway's HTTP API checks JWT bearer tokens; tokens the tests signed themselves would only prove that the
gateway agrees with the tests. This provider issues them the way production's does: OAuth 2.0 client
credentials at its token endpoint, RS256 (or ES256) signatures with keys published at its JWKS endpoint,
``aud`` from RFC 8707 resource indicators, and each client's roles in a ``roles`` claim.

    def test_something(oidc_provider: OidcProvider) -> None:
        token = oidc_provider.token("gateway-reader")            # aud = urn:dicom-gateway, roles = ["reader"]
        oidc_provider.issuer, oidc_provider.jwks_uri              # what the gateway is configured to trust

The npm packages (tests/oidc/package-lock.json) are installed once with ``npm ci`` into
$GATEWAY_TOOLS_DIR/oidc-provider-<lock hash> (default ~/.cache/dicom-gateway), beside the Kafka jars that
scripts/services keeps there, and never into the repo. A missing node or npm, a failed install or a provider
that does not start fails the test loudly; nothing is skipped.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import select
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from tests.helpers import build_into, tools_dir

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
DEFAULT_RESOURCE = "urn:dicom-gateway"
"""The audience of a token requested without a resource indicator: what the gateway should expect."""
OTHER_RESOURCE = "urn:other-service"
SHORT_TTL = 2
"""Seconds the short-lived client's tokens live, for tests of expiry."""
MINIMUM_NODE = 18
"""oidc-provider 8 supports Node.js 18 LTS and later."""
INSTALL_TIMEOUT = 600.0
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class OidcProviderError(RuntimeError):
    """The provider could not be installed or started; the message carries npm's or node's own output."""


@dataclass(frozen=True)
class OidcClient:
    """A client-credentials client; ``resource`` is its default audience, ``ttl`` overrides the token lifetime."""

    client_id: str
    roles: tuple[str, ...] = ()
    resource: str | None = None
    scope: str | None = None
    ttl: int | None = None
    secret: str | None = None

    @property
    def client_secret(self) -> str:
        return self.secret or f"{self.client_id}-secret"

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"client_id": self.client_id, "client_secret": self.client_secret,
                                 "roles": list(self.roles)}
        for key in ("resource", "scope", "ttl"):
            if getattr(self, key) is not None:
                entry[key] = getattr(self, key)
        return entry


DEFAULT_CLIENTS: tuple[OidcClient, ...] = (
    OidcClient("gateway-reader", ("reader",)),
    OidcClient("gateway-operator", ("operator",)),
    OidcClient("gateway-admin", ("admin",)),
    OidcClient("no-roles", ()),
    # Every role, but its tokens are meant for another service: only the audience check can refuse them.
    OidcClient("other-service", ("reader", "operator", "admin"), resource=OTHER_RESOURCE),
    OidcClient("gateway-reader-short-lived", ("reader",), ttl=SHORT_TTL),
)


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise OidcProviderError(f"{tool} is not on PATH: the OIDC provider needs Node.js {MINIMUM_NODE}+ with npm "
                                "(apt-get install nodejs npm)")
    return path


def check_node() -> str:
    """The node binary, refused when older than oidc-provider supports (its errors would be obscure)."""
    node = _require("node")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    match = re.match(r"v(\d+)\.", version)
    if not match or int(match.group(1)) < MINIMUM_NODE:
        raise OidcProviderError(f"{node} is Node.js {version or '?'}; the OIDC provider needs {MINIMUM_NODE} or later")
    return node


def install() -> Path:
    """The cached install for the current lock file, made with ``npm ci`` the first time.

    The install happens in a staging directory that is renamed into place only when complete, so an
    interrupted install is never mistaken for a good one and two test runs at once do not clash.
    """
    lock = OIDC_DIR / "package-lock.json"
    target = tools_dir() / f"oidc-provider-{hashlib.sha256(lock.read_bytes()).hexdigest()[:16]}"
    if (target / "node_modules" / "oidc-provider" / "package.json").is_file():
        return target
    npm = _require("npm")

    def npm_ci(staging: Path) -> None:
        for name in ("package.json", "package-lock.json"):
            shutil.copy2(OIDC_DIR / name, staging / name)
        try:
            result = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
                cwd=staging, capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
            )
        except subprocess.TimeoutExpired as error:
            raise OidcProviderError(f"npm ci for the OIDC provider took over {INSTALL_TIMEOUT:.0f}s") from error
        if result.returncode != 0:
            raise OidcProviderError(f"npm ci for the OIDC provider failed ({result.returncode}):\n"
                                    f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")

    build_into(target, npm_ci, lambda path: (path / "node_modules" / "oidc-provider" / "package.json").is_file())
    return target


class OidcProvider:
    """One running provider; a context manager that stops it. Its clients are fixed at start."""

    def __init__(self, work_dir: Path, clients: Iterable[OidcClient] = DEFAULT_CLIENTS, *,
                 default_resource: str = DEFAULT_RESOURCE, token_ttl: int = 300, signing_alg: str = "RS256") -> None:
        self.clients = {client.client_id: client for client in clients}
        self.default_resource = default_resource
        self.work_dir = work_dir
        self.log = work_dir / "provider.log"
        node = check_node()
        installed = install()
        work_dir.mkdir(parents=True, exist_ok=True)
        # ESM ignores NODE_PATH: the script finds the cached packages through a node_modules link beside it.
        shutil.copy2(OIDC_DIR / "provider.mjs", work_dir / "provider.mjs")
        link = work_dir / "node_modules"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(installed / "node_modules", target_is_directory=True)
        clients_file = work_dir / "clients.json"
        clients_file.write_text(json.dumps([client.to_json() for client in self.clients.values()]))
        env = {k: v for k, v in os.environ.items() if not k.startswith("OIDC_")} | {
            "OIDC_CLIENTS_FILE": str(clients_file),
            "OIDC_DEFAULT_RESOURCE": default_resource,
            "OIDC_TOKEN_TTL": str(token_ttl),
            "OIDC_SIGNING_ALG": signing_alg,
        }
        self._stderr = self.log.open("ab")
        # Port 0: the provider takes a free port itself and names it in its READY line, so no race over it.
        # stdin stays open until stop(): if this process dies, the pipe closes and the provider exits too.
        self.process = subprocess.Popen(
            [node, str(work_dir / "provider.mjs"), "0"], cwd=work_dir, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
        )
        try:
            self.issuer = self._wait_ready()
            self.configuration: dict[str, Any] = self._open(f"{self.issuer}/.well-known/openid-configuration")
        except BaseException:
            self.stop()
            raise
        self.jwks_uri: str = self.configuration["jwks_uri"]
        self.token_endpoint: str = self.configuration["token_endpoint"]

    def _wait_ready(self) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while (remaining := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.process.stdout], [], [], min(remaining, 0.5))
            if readable:
                line = self.process.stdout.readline().decode(errors="replace").strip()
                if line.startswith("READY "):
                    return line.removeprefix("READY ")
                if not line and self.process.poll() is not None:
                    break
            elif self.process.poll() is not None:
                break
        status = "exited with " + str(self.process.returncode) if self.process.poll() is not None else "is not ready"
        raise OidcProviderError(f"the OIDC provider {status} after start; its log ({self.log}):\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    @staticmethod
    def _open(request: urllib.request.Request | str) -> Any:
        # No proxy: a developer's http_proxy must not carry requests meant for 127.0.0.1.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=10) as response:
            return json.loads(response.read())

    def token_response(self, client_id: str, resource: str | None = None, scope: str | None = None,
                       secret: str | None = None) -> dict[str, Any]:
        """The token endpoint's whole answer (access_token, expires_in, token_type, scope) for a client.

        ``scope`` defaults to the client's configured scope; ``secret`` overrides its secret (to test a wrong
        one). An error answer raises ``urllib.error.HTTPError``, whose body holds the OAuth error.
        """
        client = self.clients[client_id]
        form = {"grant_type": "client_credentials"}
        if resource is not None:
            form["resource"] = resource
        if (scope := scope if scope is not None else client.scope) is not None:
            form["scope"] = scope
        # client_secret_basic; RFC 6749 2.3.1 form-encodes both halves before base64.
        credentials = f"{urllib.parse.quote(client_id, safe='')}:{urllib.parse.quote(secret or client.client_secret, safe='')}"
        request = urllib.request.Request(
            self.token_endpoint, data=urllib.parse.urlencode(form).encode(), method="POST",
            headers={"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode(),
                     "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
        )
        answer: dict[str, Any] = self._open(request)
        return answer

    def token(self, client_id: str, resource: str | None = None, scope: str | None = None) -> str:
        """A fresh JWT access token for one of the provider's clients, through the client-credentials grant."""
        access_token: str = self.token_response(client_id, resource, scope)["access_token"]
        return access_token

    def stop(self) -> None:
        """Close stdin (the provider's cue to exit), then SIGTERM, then SIGKILL: never leave node behind."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except OSError:
                pass
        try:
            self.process.wait(timeout=STOP_TIMEOUT / 2)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT / 2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()

    def __enter__(self) -> OidcProvider:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


@pytest.fixture(scope="session", name="oidc_provider")
def oidc_provider_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    """The session's provider with DEFAULT_CLIENTS; a test that needs it fails if it cannot run.

    Named apart from its fixture name so that a test module can import it without shadowing it:
    ``from tests.oidc_provider import oidc_provider_fixture  # noqa: F401``.
    """
    try:
        provider = OidcProvider(tmp_path_factory.mktemp("oidc-provider"))
    except (OidcProviderError, OSError, urllib.error.URLError) as error:
        failure = str(error)
    else:
        failure = ""
    if failure:  # outside the except block: the message alone, without a chained traceback
        pytest.fail(f"the OIDC provider could not start: {failure}", pytrace=False)
    with provider:
        yield provider
