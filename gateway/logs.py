"""Structured JSON logs in UTC, with context bound per association or record through contextvars.

Patient names and IDs never go into a log line: callers bind UIDs, AE titles and offsets only, and a
traceback is logged without its exceptions' messages, which libraries write with the values they refused.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import traceback
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import orjson

_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("log_context", default=MappingProxyType({}))
"""Never mutated: binding sets a new mapping, so tasks that copied the context keep theirs."""

_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Add fields to every log line written inside the block (and tasks it starts)."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: Any) -> None:
    """Add fields for the rest of the current task (e.g. an association's handler)."""
    _context.set({**_context.get(), **fields})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        entry.update(_context.get())
        entry.update((k, v) for k, v in vars(record).items() if k not in _RESERVED)
        if record.exc_info and record.exc_info[1] is not None:
            entry["exc"] = traceback_without_messages(record.exc_info[1])
        return orjson.dumps(entry, default=str).decode()


def traceback_without_messages(exc: BaseException) -> str:
    """The frames and exception types of a traceback (causes first, as Python prints them) without their
    messages: a driver's or library's exception text may quote the values it choked on, i.e. patient data."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.insert(0, exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    parts = []
    for link in chain:
        frames = "".join(traceback.format_list(traceback.extract_tb(link.__traceback__)))
        parts.append(f"Traceback (most recent call last):\n{frames}{type(link).__module__}.{type(link).__qualname__}"
                     " (message withheld)\n")
    return "\n".join(parts)


def configure(level: str, json_format: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
        formatter.converter = lambda *_: datetime.now(UTC).timetuple()
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiokafka", "kafka", "pynetdicom", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # pydicom's warnings quote element values, which may be patient data: never log them
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
