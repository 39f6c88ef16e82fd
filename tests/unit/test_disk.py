"""The free-space guard, readiness on a full disk, and which errors mean the disk is full (no mount needed: free
space is faked here; tests/integration/test_disk_full.py fills a real one)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import sqlite3
from pathlib import Path
from types import TracebackType

import pytest

from gateway import disk
from gateway.core.errors import Unavailable
from gateway.disk import MIB, DiskSpace, exhausted
from gateway.http import Health
from gateway.metrics import Metrics
from gateway.runtime import run_roles
from gateway.settings import DatabaseSettings, HttpSettings, KafkaSettings, RuntimeSettings, S3Settings, Settings


@pytest.fixture
def free(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Free bytes every watched directory reports; change ``free[0]`` to fill or empty the disk."""
    space = [1024 * MIB]
    monkeypatch.setattr(disk, "free_bytes", lambda _: space[0])
    monkeypatch.setattr(disk, "CHECK_SECONDS", 0.02)
    return space


def test_the_guard_logs_once_each_way_and_tells_listeners(free: list[int], tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    space = DiskSpace([tmp_path], 64 * MIB)
    changes: list[str | None] = []
    space.subscribe(lambda: changes.append(space.shortage))
    caplog.set_level(logging.INFO, logger="gateway.disk")
    space.check()
    free[0] = 3 * MIB
    space.check()
    space.check()
    assert space.shortage == f"disk full: 3 MiB free under {tmp_path}"
    free[0] = 65 * MIB
    space.check()
    space.check()
    assert space.shortage is None
    assert changes == [f"disk full: 3 MiB free under {tmp_path}", None]
    assert [(record.levelname, record.getMessage()) for record in caplog.records] == [
        ("WARNING", "disk full: unready, and C-STORE is refused until there is room"),
        ("INFO", "disk space recovered: ready, and C-STORE is accepted again")]
    assert caplog.records[0].__dict__["free_bytes"] == 3 * MIB


async def test_the_shortage_follows_the_disk_while_watched(free: list[int], tmp_path: Path) -> None:
    free[0] = 0
    space = DiskSpace([tmp_path], 1)
    assert space.shortage is None
    async with space.watching():
        assert space.shortage == f"disk full: 0 MiB free under {tmp_path}"
        free[0] = 1
        async with asyncio.timeout(2):
            while space.shortage is not None:
                await asyncio.sleep(0.01)


def test_readiness_follows_the_disk_and_keeps_the_shutdown_body(free: list[int], tmp_path: Path) -> None:
    metrics = Metrics()
    space = DiskSpace([tmp_path], 64 * MIB)
    health = Health(metrics, space)
    health.set_ready(True)
    assert health.ready and metrics.up._value.get() == 1
    free[0] = 0
    space.check()
    assert not health.ready and metrics.up._value.get() == 0
    assert health.unready() == {"status": "not ready", "reason": f"disk full: 0 MiB free under {tmp_path}"}
    free[0] = 100 * MIB
    space.check()
    assert health.ready and metrics.up._value.get() == 1
    health.set_ready(False)
    assert health.unready() == {"status": "not ready"}


def test_only_local_stores_are_watched(tmp_path: Path) -> None:
    local = DiskSpace.for_settings(Settings(data_dir=tmp_path))
    assert local is not None and local._directories == (tmp_path, tmp_path / "bus", tmp_path / "objects")
    remote = Settings(data_dir=tmp_path, kafka=KafkaSettings(bootstrap_servers="kafka:9092"),
                      s3=S3Settings(endpoint="http://s3:9000"),
                      database=DatabaseSettings(url="postgresql://gateway@db/gateway"))
    assert DiskSpace.for_settings(remote) is None
    assert DiskSpace.for_settings(Settings(data_dir=tmp_path, runtime=RuntimeSettings(min_free_bytes=0))) is None


def test_disk_full_errors_are_recognised(tmp_path: Path) -> None:
    assert exhausted(OSError(errno.ENOSPC, "No space left on device"), tmp_path)
    assert not exhausted(OSError(errno.EACCES, "Permission denied"), tmp_path)
    with contextlib.closing(sqlite3.connect(tmp_path / "tiny.sqlite3")) as connection:
        connection.execute("PRAGMA max_page_count=2")  # SQLITE_FULL without filling a disk
        with pytest.raises(sqlite3.OperationalError) as full:
            connection.execute("CREATE TABLE t AS SELECT zeroblob(100000) AS b")
        with pytest.raises(sqlite3.OperationalError) as other:
            connection.execute("SELECT * FROM missing")
    assert exhausted(full.value, tmp_path)
    assert not exhausted(other.value, tmp_path)


class NeedsRoom:
    """A role whose database cannot be opened while the disk is full (as SQLite's WAL needs room for -shm)."""

    name = "needs-room"

    def __init__(self, free: list[int]) -> None:
        self._free = free
        self.attempts = 0

    async def __aenter__(self) -> NeedsRoom:
        self.attempts += 1
        if self._free[0] == 0:
            raise Unavailable("disk I/O error")
        return self

    async def wait(self) -> None:
        await asyncio.Event().wait()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        pass


async def test_a_role_that_cannot_start_on_a_full_disk_starts_once_there_is_room(free: list[int],
                                                                                 tmp_path: Path) -> None:
    free[0] = 0
    role, ready, stop = NeedsRoom(free), asyncio.Event(), asyncio.Event()
    settings = Settings(data_dir=tmp_path, http=HttpSettings(host="127.0.0.1", port=0))
    running = asyncio.create_task(run_roles(settings, [role], Metrics(), stop, on_ready=lambda _: ready.set(),
                                            space=DiskSpace.for_settings(settings)))
    await asyncio.sleep(0.2)
    assert not running.done() and not ready.is_set() and role.attempts == 1
    free[0] = 1024 * MIB
    async with asyncio.timeout(5):
        await ready.wait()
    assert role.attempts == 2
    stop.set()
    await running


async def test_stopping_while_waiting_for_room_exits_cleanly(free: list[int], tmp_path: Path) -> None:
    free[0] = 0
    stop = asyncio.Event()
    settings = Settings(data_dir=tmp_path, http=HttpSettings(host="127.0.0.1", port=0))
    asyncio.get_running_loop().call_later(0.2, stop.set)
    async with asyncio.timeout(5):
        await run_roles(settings, [NeedsRoom(free)], Metrics(), stop, space=DiskSpace.for_settings(settings))
