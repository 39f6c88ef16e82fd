"""Log lines are JSON in UTC, and a logged exception keeps its frames and types but never its message, which a
library may have written with the value it refused (a patient's identity code, say)."""

from __future__ import annotations

import logging
import sys

import orjson

from gateway.logs import JsonFormatter, bound


def test_a_logged_exception_names_where_and_what_but_not_the_value() -> None:
    record = logging.LogRecord("gateway.test", logging.ERROR, __file__, 1, "store failed", (), None)
    patient_id = "".join(["131052", "-308T"])  # built, so that no source line of the traceback holds it
    try:
        try:
            int(patient_id)
        except ValueError as error:
            raise KeyError(f"patient {patient_id} not found") from error
    except KeyError:
        record.exc_info = sys.exc_info()
    with bound(instance_id="abc"):
        line = JsonFormatter().format(record)
    entry = orjson.loads(line)
    assert "131052-308T" not in line
    assert entry["instance_id"] == "abc" and entry["ts"].endswith("+00:00")
    assert "builtins.ValueError (message withheld)" in entry["exc"]
    assert "builtins.KeyError (message withheld)" in entry["exc"]
    assert "test_logs.py" in entry["exc"], "the frames stay: they say where it happened"
