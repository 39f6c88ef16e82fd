"""What both SQLite adapters (the embedded bus, the index) need from a connection: WAL, and write transactions
whose failure leaves the error that matters."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator

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


@contextlib.contextmanager
def write_transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` (the write lock up front, so two writers never deadlock upgrading) to ``COMMIT``.
    On failure the transaction is rolled back if it is still open: after SQLITE_FULL or an I/O error SQLite may
    have rolled it back already, and a ROLLBACK would raise "cannot rollback - no transaction is active" in place
    of the error that matters; a ROLLBACK that fails is left for the connection's owner to discard."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
        raise
