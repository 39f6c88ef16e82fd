"""The redaction layer: ``describe`` keeps the messages of our own errors (written to name no values) and only
the type and origin of anyone else's; the JSON logs describe an exception given as a field, and show a Python
warning without its text, since libraries write both with the values they refused."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator

import orjson
import pytest

from gateway import logs
from gateway.core.errors import CannotUnderstand, DeliveryFailed, Permanent, Unavailable, describe
from gateway.index import IndexRejected

PATIENT_ID = "".join(["131052", "-308T"])
"""Built, so that no source line a traceback quotes holds it."""


def raised(error: Exception) -> Exception:
    try:
        raise error
    except Exception as caught:
        return caught


def test_our_errors_keep_their_messages() -> None:
    assert describe(Permanent("data set of 3 bytes does not match the envelope")) == (
        "data set of 3 bytes does not match the envelope")
    assert describe(CannotUnderstand("Study Instance UID is missing")) == (
        "CannotUnderstand: Study Instance UID is missing")
    assert describe(Unavailable("bus down")) == "Unavailable: bus down"
    assert describe(DeliveryFailed("no C-STORE response")) == "DeliveryFailed: no C-STORE response"
    assert describe(IndexRejected("SQLite IntegrityError")) == "IndexRejected: SQLite IntegrityError"


def test_anyone_elses_error_is_its_type_and_origin_only() -> None:
    described = describe(raised(ValueError(f"invalid literal for int() with base 10: {PATIENT_ID!r}")))
    assert described.startswith("unexpected ValueError at test_describe.py:") and "131052" not in described
    assert describe(KeyError(PATIENT_ID)) == "unexpected KeyError"


def test_an_os_error_keeps_what_went_wrong_but_not_the_file_name() -> None:
    assert describe(FileNotFoundError(2, "No such file or directory", f"/data/{PATIENT_ID}")) == (
        "FileNotFoundError: No such file or directory")


@pytest.fixture
def json_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level, pydicom_level = root.handlers[:], root.level, logging.getLogger("pydicom").level
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    logs.configure("INFO")
    [handler] = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    handler.setStream(buffer)
    root.handlers[:] = [*handlers, handler]  # pytest's own stay, and it removes them itself
    yield buffer
    root.removeHandler(handler)
    root.setLevel(level)
    logging.getLogger("pydicom").setLevel(pydicom_level)


def test_an_exception_logged_as_a_field_is_described(json_log: io.StringIO) -> None:
    logging.getLogger("gateway.test").warning("failed", extra={"error": raised(ValueError(PATIENT_ID))})
    entry = orjson.loads(json_log.getvalue())
    assert entry["error"].startswith("unexpected ValueError at test_describe.py:")


@pytest.mark.filterwarnings("default")
def test_a_warning_is_logged_without_its_text(json_log: io.StringIO) -> None:
    warnings.warn(f"Invalid value for VR LO: {PATIENT_ID!r}", UserWarning, stacklevel=1)
    entry = orjson.loads(json_log.getvalue())
    assert PATIENT_ID not in json_log.getvalue()
    assert (entry["logger"], entry["category"]) == ("py.warnings", "UserWarning")
    assert entry["origin"].startswith("test_describe.py:")
