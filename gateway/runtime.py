"""Runs the chosen roles in one process, each an async context manager on one exit stack.

Start-up enters the HTTP server, then every role; the process is ready once all are in. The first SIGTERM
or SIGINT turns readiness to 503 and closes every role's intake at once (``stop_accepting``: the DICOM ports, so
that nothing new arrives while the others drain), then unwinds the stack in reverse: roles drain in-flight
work (bounded by ``runtime.drain_timeout_seconds``), consumers commit, producers flush, HTTP closes last.
A second signal exits at once. If any role dies, the others are drained and the process exits non-zero,
so the orchestrator restarts it rather than leaving a half-working pod. A full disk is not a death: the process
stays up, unready with the reason, until there is room (``gateway.disk``); a role that cannot even start then
starts once there is room. Nor is a service that is down at start-up: the role waits for it, the process unready.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import typing
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any, Protocol

from gateway.core.audit import TRAIL_ROLE, AuditTrail
from gateway.core.errors import describe, retriable
from gateway.disk import DiskSpace
from gateway.http import Endpoints, Health, serve_http
from gateway.metrics import Metrics
from gateway.settings import Settings

log = logging.getLogger(__name__)

FORCED_EXIT_CODE = 130


class Role(AbstractAsyncContextManager["Role"], Protocol):
    """A role is running between ``__aenter__`` and ``__aexit__``; ``__aexit__`` drains it."""

    name: str

    async def wait(self) -> None:
        """Return or raise only if the role stopped by itself, which the runtime treats as a crash."""
        ...


class RoleCrashed(Exception):
    pass


async def run_roles(
    settings: Settings,
    roles: Sequence[Role],
    metrics: Metrics,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[int], None] | None = None,
    endpoints: Endpoints | None = None,
    space: DiskSpace | None = None,
) -> None:
    """Run until stopped; ``on_ready`` gets the HTTP port once every role is in (a parent process waits on it).
    ``endpoints`` (shared with the roles) learns where the listeners are before the roles start; ``space``
    (shared with the receiver) is watched while the process runs."""
    stop = stop or asyncio.Event()
    health = Health(metrics, space)
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second signal, exiting without draining", extra={"signal": signum})
            os._exit(FORCED_EXIT_CODE)
        log.info("shutting down", extra={"signal": signal.Signals(signum).name})
        health.set_ready(False)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        async with AsyncExitStack() as stack:
            if space is not None:
                await stack.enter_async_context(space.watching())
            routes = [route for role in roles for route in getattr(role, "routes", ())]
            internal_routes = [route for role in roles for route in getattr(role, "internal_routes", ())]
            trail = next((role for role in roles if role.name == TRAIL_ROLE), None)
            port = await stack.enter_async_context(serve_http(
                settings, health, metrics, routes, internal_routes, endpoints,
                typing.cast(AuditTrail, trail) if trail is not None else None))
            for role in roles:
                if not await _enter(stack, role, space, stop):
                    log.info("stopped during start-up")
                    return
            health.set_ready(True)
            log.info("ready", extra={"roles": [role.name for role in roles], "http_port": port})
            if on_ready is not None:
                on_ready(port)
            try:
                await _until_stop_or_crash(stop, roles)
            finally:
                health.set_ready(False)  # before the drain: a crashed pod must leave the Service at once
                for role in roles:
                    stop_accepting = getattr(role, "stop_accepting", None)
                    if stop_accepting is not None:
                        stop_accepting()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info("stopped")


START_RETRY_MAX_SECONDS = 30.0


async def _enter(stack: AsyncExitStack, role: Role, space: DiskSpace | None, stop: asyncio.Event) -> bool:
    """Enter a role; one that fails to start on a full disk (SQLite cannot even open a WAL database without room
    for its -shm file) is started again once there is room, and one whose service (the database, the object
    store, the bus) is unreachable is started again after a back-off, the process unready meanwhile, as the stages
    wait for their services once running. False: stopped while waiting."""
    delay = 1.0
    while True:
        try:
            await stack.enter_async_context(role)
            return True
        except Exception as exc:
            if space is not None and space.shortage is not None and retriable(exc) is True:
                log.warning("role waits for disk space to start", extra={"role": role.name, "error": describe(exc)})
                if not await space.room(stop):
                    return False
                continue
            if getattr(exc, "retriable", None) is not True:  # only a port's "my service is down", not a busy port
                raise
            log.warning("role waits for a service to start", extra={
                "role": role.name, "error": describe(exc), "retry_in": delay})
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return False
            except TimeoutError:
                delay = min(delay * 2, START_RETRY_MAX_SECONDS)


async def _until_stop_or_crash(stop: asyncio.Event, roles: Sequence[Role]) -> None:
    stopping: asyncio.Task[Any] = asyncio.create_task(stop.wait(), name="stop-signal")
    watchers: dict[asyncio.Task[Any], Role] = {
        asyncio.create_task(role.wait(), name=f"role-{role.name}"): role for role in roles}
    try:
        done, _ = await asyncio.wait([stopping, *watchers], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in [stopping, *watchers]:
            task.cancel()
    for task in done:
        if task is stopping:
            continue
        role = watchers[task]
        error = task.exception() if not task.cancelled() else None
        log.error("role stopped unexpectedly", extra={"role": role.name, "error": repr(error)})
        raise RoleCrashed(f"role {role.name} stopped: {error!r}") from error
