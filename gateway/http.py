"""Operator HTTP endpoints on their own port: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.metrics import Metrics
from gateway.settings import HttpSettings


class Health:
    """What the probes report: live while the process runs; ready only between start-up and SIGTERM."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.ready = False

    def set_ready(self, ready: bool) -> None:
        self.ready = ready
        self._metrics.up.set(1 if ready else 0)


def make_app(health: Health, metrics: Metrics, routes: Sequence[web.RouteDef] = ()) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if health.ready:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready"}, status=503)

    async def metrics_endpoint(_: web.Request) -> web.Response:
        if metrics.refresh is not None:
            await metrics.refresh()
        response = web.Response(body=generate_latest(metrics.exposition))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.add_routes(routes)
    return app


@asynccontextmanager
async def serve_http(
    settings: HttpSettings, health: Health, metrics: Metrics, routes: Sequence[web.RouteDef] = ()
) -> AsyncIterator[int]:
    """Serve until the block ends (with the roles' own routes, e.g. the API); yields the bound port."""
    runner = web.AppRunner(make_app(health, metrics, routes), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
    await site.start()
    try:
        sockets = runner.addresses
        yield sockets[0][1] if sockets else settings.port
    finally:
        await runner.cleanup()
