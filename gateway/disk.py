"""Free space under the directories the process writes to (the embedded bus, object files, the SQLite index).

A full disk is an outage, not a crash: below ``runtime.min_free_bytes`` the process reports unready with the
reason, the receiver refuses C-STORE with 0xA700 "disk full" before anything reaches the bus, and both come back
by themselves once there is room. The space is checked once a second, not per request, and the change is logged
once each way. ``exhausted`` tells the adapters which of their errors mean the disk ran out, so they can say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from gateway.settings import Settings

log = logging.getLogger(__name__)

MIB = 1024 * 1024
CHECK_SECONDS = 1.0
_NEARLY_EMPTY = MIB
"""Below this, an SQLite I/O error is taken for the disk being full: SQLite reports a -shm file it cannot
extend as SQLITE_IOERR_SHMSIZE, not SQLITE_FULL."""


def free_bytes(directory: Path) -> int:
    """Free bytes for an unprivileged writer on the file system of ``directory`` or of its nearest existing
    parent (the objects directory appears with the first object)."""
    path = directory
    while not path.exists() and path != path.parent:
        path = path.parent
    status = os.statvfs(path)
    return status.f_bavail * status.f_frsize


def exhausted(exc: BaseException, directory: Path) -> bool:
    """Whether ``exc`` is the file system under ``directory`` running out of room."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # set on what SQLite raised
        if code == sqlite3.SQLITE_FULL:
            return True
        if code == sqlite3.SQLITE_IOERR:
            with contextlib.suppress(OSError):
                return free_bytes(directory) < _NEARLY_EMPTY
    return False


class DiskSpace:
    """Watches the free space of some directories against a minimum; ``shortage`` says why it is short."""

    def __init__(self, directories: Sequence[Path], min_free_bytes: int) -> None:
        self._directories = tuple(directories)
        self._min_free = min_free_bytes
        self._listeners: list[Callable[[], None]] = []
        self.shortage: str | None = None

    @classmethod
    def for_settings(cls, settings: Settings) -> DiskSpace | None:
        """The local stores these settings write to; None when there are none or watching is off."""
        data_dir = settings.data_dir
        directories = [directory for directory, local in (
            (data_dir, settings.database.url is None),  # index.sqlite3
            (data_dir / "bus", settings.embedded_bus_enabled),
            (data_dir / "objects", not settings.s3.endpoint),
        ) if local]
        minimum = settings.runtime.min_free_bytes
        return cls(directories, minimum) if directories and minimum > 0 else None

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever the disk turns full or has room again."""
        self._listeners.append(listener)

    def check(self) -> None:
        self._update(self._measure())

    def _measure(self) -> tuple[Path, int] | None:
        """The first directory short of space, with its free bytes; None when all have room (or cannot be
        measured: an unreadable directory is for the stores' own errors to report)."""
        for directory in self._directories:
            with contextlib.suppress(OSError):
                free = free_bytes(directory)
                if free < self._min_free:
                    return directory, free
        return None

    def _update(self, short: tuple[Path, int] | None) -> None:
        was_short = self.shortage is not None
        if short is None:
            self.shortage = None
        else:
            directory, free = short
            self.shortage = f"disk full: {free // MIB} MiB free under {directory}"
            if not was_short:
                log.warning("disk full: unready, and C-STORE is refused until there is room",
                            extra={"path": str(directory), "free_bytes": free, "min_free_bytes": self._min_free})
        if was_short and short is None:
            log.info("disk space recovered: ready, and C-STORE is accepted again")
        if was_short != (short is not None):
            for listener in self._listeners:
                listener()

    async def room(self, stop: asyncio.Event) -> bool:
        """Wait until there is room (True) or ``stop`` is set (False)."""
        while self.shortage is not None and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), CHECK_SECONDS)
        return not stop.is_set()

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[DiskSpace]:
        """Check now and then every second while the block runs."""
        self.check()
        task = asyncio.create_task(self._watch(), name="disk-space")
        try:
            yield self
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(CHECK_SECONDS)
            self._update(await asyncio.to_thread(self._measure))  # statvfs may block on a network file system
