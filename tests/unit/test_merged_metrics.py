"""/metrics of a pod with several receiver processes: the others' metrics are fetched without blocking the event
loop that serves DICOM, and one process that does not answer costs the scrape its timeout, not the loop."""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, generate_latest

from gateway.processes import MergedMetrics, ReceiverProcesses


async def test_a_silent_process_does_not_stall_the_loop_and_the_others_are_summed() -> None:
    child = CollectorRegistry()
    Counter("dicomgw_instances_received", "received", registry=child).inc(5)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(child))

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    answering = runner.addresses[0][1]
    silent = socket.socket()  # accepts connections (backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)

    own = CollectorRegistry()
    Counter("dicomgw_instances_received", "received", registry=own).inc(2)
    processes = ReceiverProcesses(2, None, 1.0)
    processes.http_ports = [answering, silent.getsockname()[1]]
    merged = MergedMetrics(own, processes)
    try:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        started = asyncio.get_running_loop().time()
        await merged.refresh()
        elapsed = asyncio.get_running_loop().time() - started
        ticking.cancel()
        exposition = CollectorRegistry(auto_describe=False)
        exposition.register(merged)
        text = generate_latest(exposition).decode()
    finally:
        silent.close()
        await runner.cleanup()
    assert elapsed >= 1.5, "the silent process was waited for until the scrape timeout"
    assert ticks >= elapsed / 0.05 * 0.5, f"the event loop ticked {ticks} times in {elapsed:.1f} s"
    assert "dicomgw_instances_received_total 7.0" in text

