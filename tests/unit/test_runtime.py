from __future__ import annotations

import asyncio
from types import TracebackType

import pytest

from gateway.metrics import Metrics
from gateway.runtime import RoleCrashed, run_roles
from gateway.settings import HttpSettings, Settings


class FlakyRole:
    """A role that dies after a moment, and records that the runtime drained it."""

    name = "flaky"

    def __init__(self, events: list[str]) -> None:
        self.events = events

    async def __aenter__(self) -> FlakyRole:
        self.events.append(f"started {self.name}")
        return self

    async def wait(self) -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("consumer lost its broker")

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.events.append(f"drained {self.name}")


class SteadyRole(FlakyRole):
    name = "steady"

    async def wait(self) -> None:
        await asyncio.Event().wait()


async def test_a_crashed_role_stops_the_process_after_draining_the_others() -> None:
    events: list[str] = []
    settings = Settings(http=HttpSettings(host="127.0.0.1", port=0))
    with pytest.raises(RoleCrashed, match="flaky"):
        await run_roles(settings, [SteadyRole(events), FlakyRole(events)], Metrics())
    assert events == ["started steady", "started flaky", "drained flaky", "drained steady"]


async def test_stop_event_drains_roles_in_reverse_order() -> None:
    events: list[str] = []
    stop = asyncio.Event()
    first, second = SteadyRole(events), SteadyRole(events)
    first.name, second.name = "first", "second"
    settings = Settings(http=HttpSettings(host="127.0.0.1", port=0))
    loop = asyncio.get_running_loop()
    loop.call_later(0.1, stop.set)
    await run_roles(settings, [first, second], Metrics(), stop)
    assert events == ["started first", "started second", "drained second", "drained first"]
