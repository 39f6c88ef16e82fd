"""Extra receiver processes sharing the DICOM port with SO_REUSEPORT, so one pod can use all its cores.

Python runs one core per process; the kernel spreads new associations over every process listening on the
port. The first process serves HTTP and supervises the others as one role: they start before it is ready,
stop (draining) when it stops, and if one dies the whole pod exits so that the orchestrator restarts it.
Their metrics are merged into the first process's ``/metrics`` (MergedMetrics), fetched asynchronously before
each exposition so that a scrape never blocks the event loop that serves DICOM.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import aiohttp
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger(__name__)

_READY_TIMEOUT = 60.0
_SCRAPE_TIMEOUT = 2.0


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG: a receiver process must not outlive the first one (kill -9, forced exit)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


class ReceiverProcesses:
    name = "receiver-processes"

    def __init__(self, count: int, config: Path | None, drain_timeout: float, https: bool = False) -> None:
        self._count = count
        self.scheme = "https" if https else "http"
        """Each process serves its metrics (public, on loopback) with the API port's TLS settings."""
        self._config = config
        self._drain_timeout = drain_timeout
        self._children: list[asyncio.subprocess.Process] = []
        self.http_ports: list[int] = []

    async def __aenter__(self) -> ReceiverProcesses:
        argv = [sys.executable, "-m", "gateway.cli", "run", "--role", "receiver", "--workers", "1"]
        if self._config is not None:
            argv += ["--config", str(self._config)]
        env = {**os.environ, "GATEWAY_HTTP__PORT": "0", "GATEWAY_HTTP__HOST": "127.0.0.1",
               "GATEWAY_HTTP__AUTH__PUBLIC_METRICS": "true", "GATEWAY_HTTP__TLS__REQUIRE_CLIENT_CERT": "false",
               "GATEWAY_INTERNAL__PORT": "0",
               "GATEWAY_DICOM__REUSE_PORT": "true"}
        try:
            for _ in range(self._count):
                read_end, write_end = os.pipe()
                try:
                    child = await asyncio.create_subprocess_exec(
                        *argv, "--ready-fd", str(write_end), env=env, pass_fds=(write_end,),
                        preexec_fn=_die_with_parent,
                    )
                finally:
                    os.close(write_end)
                self._children.append(child)
                try:
                    async with asyncio.timeout(_READY_TIMEOUT):
                        line = await asyncio.to_thread(os.read, read_end, 64)
                finally:
                    os.close(read_end)
                if not line:
                    raise RuntimeError(f"receiver process exited with {await child.wait()} before it was ready")
                self.http_ports.append(int(line))
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        log.info("receiver processes ready", extra={"processes": self._count})
        return self

    async def wait(self) -> None:
        done, _ = await asyncio.wait([asyncio.create_task(child.wait()) for child in self._children],
                                     return_when=asyncio.FIRST_COMPLETED)
        raise RuntimeError(f"a receiver process exited with {done.pop().result()}")

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for child in self._children:
            if child.returncode is None:
                child.send_signal(signal.SIGTERM)
        for child in self._children:
            try:
                async with asyncio.timeout(self._drain_timeout + 5):
                    await child.wait()
            except TimeoutError:
                child.kill()
                await child.wait()


class MergedMetrics(Collector):
    """This process's metrics plus the receiver processes', summed per name and labels, as one exposition.
    ``refresh`` fetches the others' (concurrently, bounded in time); ``collect`` only merges what it fetched."""

    def __init__(self, own: CollectorRegistry, processes: ReceiverProcesses) -> None:
        self._own = own
        self._processes = processes
        self._scraped: list[str] = []

    async def refresh(self) -> None:
        timeout = aiohttp.ClientTimeout(total=_SCRAPE_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            texts = await asyncio.gather(*(self._scrape(session, f"{self._processes.scheme}://127.0.0.1:{port}")
                                           for port in self._processes.http_ports))
        self._scraped = [text for text in texts if text is not None]

    @staticmethod
    async def _scrape(session: aiohttp.ClientSession, base: str) -> str | None:
        try:  # our own child on loopback: its certificate names the service, not 127.0.0.1
            async with session.get(f"{base}/metrics", ssl=False) as response:
                response.raise_for_status()
                return await response.text()
        except (aiohttp.ClientError, TimeoutError):
            log.warning("metrics of a receiver process unavailable", extra={"url": base})
            return None

    def collect(self) -> Iterable[Metric]:
        families: dict[str, tuple[Metric, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}

        def add(collected: Iterable[Metric]) -> None:
            for family in collected:
                metric, totals = families.setdefault(
                    family.name, (Metric(family.name, family.documentation, family.type), {})
                )
                for sample in family.samples:
                    if not sample.name.endswith("_created"):
                        key = (sample.name, tuple(sorted(sample.labels.items())))
                        totals[key] = totals.get(key, 0.0) + sample.value

        add(self._own.collect())
        for text in self._scraped:
            add(text_string_to_metric_families(text))
        for metric, totals in families.values():
            for (name, labels), value in totals.items():
                metric.add_sample(name, dict(labels), value)
            yield metric
