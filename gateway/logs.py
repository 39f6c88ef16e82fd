"""Structured JSON logs in UTC, with context bound per association or record through contextvars.

Patient names and IDs never go into a log line: callers bind UIDs, AE titles and offsets only, and pass
exceptions through ``gateway.core.errors.describe`` (an exception given as a field is described so too). A
traceback is logged without its exceptions' messages, and a Python warning without its text: libraries write
both with the values they refused.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import traceback
import warnings
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, TextIO

import orjson

from gateway.core.errors import describe

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
        return orjson.dumps(entry, default=_field).decode()


def _field(value: object) -> str:
    return describe(value) if isinstance(value, BaseException) else str(value)


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


class PeerThrottle(logging.Filter):
    """At most ``lines`` warnings per peer address and window: a host that floods a port with bad connections
    (rejected, malformed, silent) cannot flood the log. The first line let through after lines were withheld
    says how many (``withheld``); errors always pass, and the metrics count every event regardless."""

    def __init__(self, lines: int = 20, window_seconds: float = 60.0) -> None:
        super().__init__()
        self._lines = lines
        self._window = window_seconds
        self._peers: dict[str, list[float]] = {}
        """Address -> [window start, lines let through, lines withheld]."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        peer = str(getattr(record, "peer", "") or _context.get().get("peer") or "")
        if not peer:
            return True
        address = peer.rsplit(":", 1)[0]  # "host:port", as every caller writes it
        if len(self._peers) > 10_000:
            self._peers.clear()
        state = self._peers.setdefault(address, [record.created, 0, 0])
        if record.created - state[0] > self._window:
            state[0], state[1] = record.created, 0
        if state[1] >= self._lines:
            state[2] += 1
            return False
        state[1] += 1
        if state[2]:
            record.withheld = int(state[2])
            state[2] = 0
        return True


def configure(level: str, json_format: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
        formatter.converter = lambda *_: datetime.now(UTC).timetuple()
        handler.setFormatter(formatter)
    handler.addFilter(PeerThrottle())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiokafka", "kafka", "pynetdicom", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # pydicom's warnings quote element values, which may be patient data: never log them
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    warnings.showwarning = _warning_without_text


def _warning_without_text(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                          file: TextIO | None = None, line: str | None = None) -> None:
    """A warning that escaped its ``catch_warnings`` becomes a log line naming its category and origin only:
    pydicom's warnings quote the values they warn about (an invalid date, a name that does not decode)."""
    logging.getLogger("py.warnings").warning("warning (text withheld)", extra={
        "category": category.__name__, "origin": f"{Path(filename).name}:{lineno}"})
