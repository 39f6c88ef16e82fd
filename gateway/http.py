"""The HTTP ports: the API port (liveness, readiness and Prometheus metrics, open; the roles' routes behind
``gateway.auth``), and the internal port for calls between roles (behind a shared secret)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import yarl
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import auth
from gateway.auth import Authenticator
from gateway.core.audit import AuditTrail, NoAudit
from gateway.disk import DiskSpace
from gateway.listen import PortUnavailable, server_tls_context
from gateway.metrics import Metrics
from gateway.settings import InternalSettings, Settings


class Health:
    """What the probes report: live while the process runs; ready only between start-up and SIGTERM, and
    then not while the disk is full (``space``), so a full pod leaves the Service and rejoins by itself."""

    def __init__(self, metrics: Metrics, space: DiskSpace | None = None) -> None:
        self._metrics = metrics
        self._space = space
        self._started = False
        if space is not None:
            space.subscribe(self._publish)

    @property
    def ready(self) -> bool:
        return self._started and self.reason is None

    @property
    def reason(self) -> str | None:
        """What keeps the process unready besides starting or stopping (a full disk); None if nothing does."""
        return None if self._space is None else self._space.shortage

    def set_ready(self, ready: bool) -> None:
        self._started = ready
        self._publish()

    def unready(self) -> dict[str, str]:
        """The body of a 503 from ``/readyz``."""
        reason = self.reason
        return {"status": "not ready"} if reason is None else {"status": "not ready", "reason": reason}

    def _publish(self) -> None:
        self._metrics.up.set(1 if self.ready else 0)


@dataclass
class Endpoints:
    """Where this process's listeners ended up, for roles that tell other processes how to reach them."""

    internal_url: str = ""


def make_app(health: Health, metrics: Metrics, authenticator: Authenticator, public_metrics: bool = True,
             routes: Sequence[web.RouteDef] = (), audit: AuditTrail | None = None) -> web.Application:
    @auth.public
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    @auth.public
    async def readyz(_: web.Request) -> web.Response:
        if health.ready:
            return web.json_response({"status": "ready"})
        return web.json_response(health.unready(), status=503)

    async def metrics_endpoint(_: web.Request) -> web.Response:
        if metrics.refresh is not None:
            await metrics.refresh()
        response = web.Response(body=generate_latest(metrics.exposition))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    app = web.Application(middlewares=[auth.middleware(authenticator, metrics, audit or NoAudit())])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", auth.public(metrics_endpoint) if public_metrics
                       else auth.requires(auth.Role.READER)(metrics_endpoint))
    app.add_routes(routes)
    return app


@asynccontextmanager
async def serve_http(
    settings: Settings, health: Health, metrics: Metrics, routes: Sequence[web.RouteDef] = (),
    internal_routes: Sequence[web.RouteDef] = (), endpoints: Endpoints | None = None,
    audit: AuditTrail | None = None,
) -> AsyncIterator[int]:
    """Serve the API port (with the roles' routes) and, when a role has internal routes, the internal port,
    until the block ends; yields the API port as bound and fills in ``endpoints``."""
    http = settings.http
    authenticator = auth.Authenticator.from_settings(http.auth, settings.data_dir)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(authenticator.close)
        app = make_app(health, metrics, authenticator, http.auth.public_metrics, routes, audit)
        port = await stack.enter_async_context(_site(app, http.host, http.port, server_tls_context(http.tls)))
        if internal_routes:
            internal = settings.internal
            internal_app = web.Application(middlewares=[auth.internal_middleware(internal_secret(settings), metrics)])
            internal_app.add_routes(internal_routes)
            internal_port = await stack.enter_async_context(_site(internal_app, internal.host, internal.port, None))
            if endpoints is not None:
                endpoints.internal_url = reachable_url(internal, internal_port)
        yield port


def reachable_url(internal: InternalSettings, bound_port: int) -> str:
    """The advertised URL, with the port as bound when the configured one was 0 (a receiver process)."""
    if not internal.advertised_url:
        return f"http://127.0.0.1:{bound_port}"
    url = yarl.URL(internal.advertised_url.rstrip("/"))
    return str(url.with_port(bound_port)) if internal.port == 0 else str(url)


def internal_secret(settings: Settings) -> str:
    """What a caller of another process's internal port presents."""
    internal = settings.internal
    if internal.secret is not None:
        return internal.secret.get_secret_value()
    return auth.secret_file(settings.data_dir / "internal-secret")


@asynccontextmanager
async def _site(app: web.Application, host: str, port: int, context: ssl.SSLContext | None) -> AsyncIterator[int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port, reuse_address=True, ssl_context=context).start()
        except OSError as exc:
            raise PortUnavailable(host, port, exc) from exc
        sockets = runner.addresses
        yield sockets[0][1] if sockets else port
    finally:
        await runner.cleanup()
