"""The fast header walker reads what pydicom reads, and never fails on garbage with anything but Malformed."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.dicom.header import Malformed, read_values
from gateway.ingest.publish import _parse_header_with_pydicom, parse_header
from tests.helpers import dataset_bytes


def readable(path: Path) -> tuple[bytes, str] | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            return None
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if not ts or ts == "1.2.840.10008.1.2.1.99" or "StudyInstanceUID" not in ds:
        return None
    return dataset_bytes(path), ts


SAMPLES = {path.name: sample for path in sorted((Path(pydicom.data.__file__).parent / "test_files").rglob("*.dcm"))
           if (sample := readable(path)) is not None}


def test_the_corpus_has_headers_to_compare() -> None:
    assert len(SAMPLES) >= 50


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_walker_agrees_with_pydicom_on_the_corpus(name: str) -> None:
    data, ts = SAMPLES[name]
    assert parse_header(data, ts, complete=True) == _parse_header_with_pydicom(data, ts, complete=True)


def test_walker_waits_for_more_bytes_and_then_answers() -> None:
    data, ts = readable(Path(pydicom.data.get_testdata_file("CT_small.dcm")))  # type: ignore[misc, arg-type]
    assert parse_header(data[:200], ts, complete=False) is None
    header = parse_header(data[:20000], ts, complete=False)
    assert header is not None and header.modality == "CT"


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), implicit=st.booleans(), complete=st.booleans())
def test_garbage_is_malformed_or_partial_never_a_crash(data: bytes, implicit: bool, complete: bool) -> None:
    ts = "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"
    try:
        result = read_values(data, ts, frozenset({0x0020000D}), 0x0020000E, complete)
    except Malformed:
        return
    assert result is None or isinstance(result, dict)
