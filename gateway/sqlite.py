"""What both SQLite adapters (the embedded bus, the index) need from a connection."""

from __future__ import annotations

import sqlite3
import time

_RETRY_SECONDS = 0.05


def use_wal(connection: sqlite3.Connection, timeout: float) -> None:
    """Switch to write-ahead logging. On a new database that other processes or roles open at the same moment,
    SQLite answers the switch SQLITE_BUSY at once, without its busy handler (it would deadlock otherwise), so
    the switch is tried again until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(_RETRY_SECONDS)
