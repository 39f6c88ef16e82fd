"""Roles of one process (and processes sharing a data directory) open a new SQLite database at the same moment:
the switch to WAL must not fail with "database is locked" (it did, once in a few dozen starts)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.bus.embedded import _connect as bus_connection
from gateway.index.sqlite import _connect as index_connection


@pytest.mark.parametrize("connect", [index_connection, bus_connection], ids=["index", "embedded-bus"])
def test_connections_opened_together_on_a_new_database_all_get_wal(
    tmp_path: Path, connect: Callable[[Path], sqlite3.Connection]
) -> None:
    failures: list[str] = []
    modes: list[str] = []

    def open_one(path: Path) -> None:
        try:
            connection = connect(path)
            modes.append(connection.execute("PRAGMA journal_mode").fetchone()[0])
            connection.close()
        except sqlite3.Error as exc:
            failures.append(str(exc))

    for attempt in range(150):
        path = tmp_path / f"{attempt}.sqlite3"
        threads = [threading.Thread(target=open_one, args=(path,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []
    assert modes == ["wal"] * 600
