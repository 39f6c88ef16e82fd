"""Stored Part 10 objects opened and converted chunk by chunk read back, in pydicom, as the same data set."""

from __future__ import annotations

import io
import struct
import tracemalloc
import warnings
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from gateway.dicom.acse import EXPLICIT_LITTLE, IMPLICIT_LITTLE
from gateway.dicom.dataset import DEFLATED, encode, part10_header
from gateway.dicom.transcode import CannotTranscode, NotPart10, can_transcode, open_part10, transcode
from tests.helpers import dataset_bytes

CORPUS = Path(pydicom.data.__file__).parent / "test_files"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
EXPLICIT_BIG = "1.2.840.10008.1.2.2"
SOURCES = [
    "CT_small.dcm",  # explicit, trailing padding after the pixel data
    "MR_small_implicit.dcm",
    "rtplan.dcm",  # implicit, nested sequences, no pixel data
    "rtdose.dcm",  # implicit, 32-bit pixel data
    "reportsi.dcm",  # explicit structured report
    "waveform_ecg.dcm",  # explicit, private elements, a 290 kB waveform in a sequence
    "image_dfl.dcm",  # deflated
]
CHUNK_SIZES = [7, 4096, 1024 * 1024]


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def joined(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


def read(data: bytes, transfer_syntax: str) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_dataset(io.BytesIO(data), transfer_syntax == IMPLICIT_LITTLE, True)


def source_data_set(name: str) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(CORPUS / name)
    del dataset.file_meta
    return dataset


def assert_same(expected: Dataset, actual: Dataset, path: str = "") -> None:
    """Element by element: values (pixel data included) of public elements, value bytes of private ones (their
    VR is lost in implicit VR, so one side may read them as UN)."""
    assert sorted(expected.keys()) == sorted(actual.keys()), path
    for tag in expected.keys():
        where = f"{path}{BaseTag(tag)}"
        if BaseTag(tag).is_private and not BaseTag(tag).is_private_creator:
            assert _raw(expected, tag) == _raw(actual, tag), where
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            left, right = expected[tag], actual[tag]
        if isinstance(left.value, Sequence):
            assert len(left.value) == len(right.value), where
            for number, (one, other) in enumerate(zip(left.value, right.value, strict=True)):
                assert_same(one, other, f"{where}[{number}]")
        else:
            assert left.value == right.value, where


def _raw(dataset: Dataset, tag: int) -> bytes:
    element = dataset.get_item(BaseTag(tag))
    assert element is not None
    value = element.value
    if isinstance(value, str):
        value = value.encode("latin-1")
    return bytes(value or b"").rstrip(b"\x00 ")


async def opened_bytes_from(chunks: AsyncIterator[bytes]) -> tuple[str, AsyncIterator[bytes]]:
    meta, data_set = await open_part10(chunks)
    return meta.transfer_syntax_uid, data_set


async def opened_bytes(data: bytes, chunk_size: int = 4096) -> tuple[str, AsyncIterator[bytes]]:
    return await opened_bytes_from(chunks_of(data, chunk_size))


async def opened(name: str, chunk_size: int) -> tuple[str, AsyncIterator[bytes]]:
    return await opened_bytes((CORPUS / name).read_bytes(), chunk_size)


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
async def test_open_part10_gives_the_meta_and_the_data_set_bytes(chunk_size: int) -> None:
    data = (CORPUS / "CT_small.dcm").read_bytes()
    meta, data_set = await open_part10(chunks_of(data, chunk_size))
    source = pydicom.dcmread(CORPUS / "CT_small.dcm")
    assert meta.transfer_syntax_uid == EXPLICIT_LITTLE
    assert meta.sop_class_uid == source.file_meta.MediaStorageSOPClassUID
    assert meta.sop_instance_uid == source.file_meta.MediaStorageSOPInstanceUID
    body = await joined(data_set)
    assert body == dataset_bytes(CORPUS / "CT_small.dcm")
    assert_same(source_data_set("CT_small.dcm"), read(body, EXPLICIT_LITTLE))


@pytest.mark.parametrize("name", SOURCES)
@pytest.mark.parametrize("target", [EXPLICIT_LITTLE, IMPLICIT_LITTLE])
@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
async def test_transcoded_data_set_equals_the_source(name: str, target: str, chunk_size: int) -> None:
    source, data_set = await opened(name, chunk_size)
    assert can_transcode(source, target)
    result = await joined(transcode(data_set, source, target))
    assert_same(source_data_set(name), read(result, target))


@pytest.mark.parametrize("name", [name for name in SOURCES if name != "image_dfl.dcm"])
async def test_round_trip_is_lossless(name: str) -> None:
    source, data_set = await opened(name, 4096)
    other = IMPLICIT_LITTLE if source == EXPLICIT_LITTLE else EXPLICIT_LITTLE
    there = await joined(transcode(data_set, source, other))
    back = await joined(transcode(chunks_of(there, 1000), other, source))
    assert_same(source_data_set(name), read(back, source))
    again = await joined(transcode(chunks_of(back, 333), source, other))
    assert again == there


async def test_same_syntax_passes_through_unchanged() -> None:
    data_set = chunks_of(b"anything at all", 4)
    assert transcode(data_set, JPEG_2000, JPEG_2000) is data_set


@pytest.mark.parametrize(("source", "target"), [
    (JPEG_BASELINE, EXPLICIT_LITTLE), (JPEG_2000, IMPLICIT_LITTLE), (EXPLICIT_LITTLE, JPEG_BASELINE),
    (EXPLICIT_BIG, EXPLICIT_LITTLE), (EXPLICIT_LITTLE, EXPLICIT_BIG), (EXPLICIT_LITTLE, DEFLATED),
])
async def test_compressed_and_big_endian_cannot_be_transcoded(source: str, target: str) -> None:
    assert not can_transcode(source, target)
    with pytest.raises(CannotTranscode):
        transcode(chunks_of(b"", 1), source, target)


async def test_a_jpeg_object_cannot_be_sent_as_uncompressed() -> None:
    source, data_set = await opened("SC_rgb_jpeg_dcmtk.dcm", 4096)
    assert source == JPEG_BASELINE
    with pytest.raises(CannotTranscode):
        transcode(data_set, source, EXPLICIT_LITTLE)


def part10(data_set: Dataset, transfer_syntax: str) -> bytes:
    return part10_header("1.2.840.10008.5.1.4.1.1.7", "1.2.3.4", transfer_syntax, "1.2.3", "TEST") + \
        encode(data_set, transfer_syntax)


def image(pixel_bytes: int) -> Dataset:
    dataset = Dataset()
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    dataset.SOPInstanceUID = "1.2.3.4"
    dataset.PatientName = "Test^Patient"
    dataset.BitsAllocated = 16
    dataset.PixelRepresentation = 1
    dataset.SmallestImagePixelValue = -5
    dataset.PixelData = bytes(range(256)) * (pixel_bytes // 256)
    return dataset


async def test_implicit_ambiguous_and_long_values_get_explicit_vrs_that_read_back() -> None:
    dataset = image(4096)
    dataset.add_new(0x00091010, "LO", "private value")
    dataset.add_new(0x00090010, "LO", "ACME")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the value too long for its VR
        dataset.StudyDescription = "x" * 70_000  # and writes it as UN in explicit VR (2-byte lengths)
        source, data_set = await opened_bytes(part10(dataset, IMPLICIT_LITTLE))
        result = read(await joined(transcode(data_set, source, EXPLICIT_LITTLE)), EXPLICIT_LITTLE)
        assert result["SmallestImagePixelValue"].VR == "SS" and result.SmallestImagePixelValue == -5
    assert result["StudyDescription"].VR == "UN" and _raw(result, 0x00081030) == b"x" * 70_000
    assert result.PixelData == dataset.PixelData
    assert _raw(result, 0x00091010) == b"private value"


@pytest.mark.parametrize("source", [EXPLICIT_LITTLE, IMPLICIT_LITTLE])
async def test_elements_after_where_pixel_data_would_be_are_kept_without_pixel_data(source: str) -> None:
    dataset = image(256)
    del dataset.PixelData
    dataset.DataSetTrailingPadding = b"\x00" * 16
    data_set_source, data_set = await opened_bytes(part10(dataset, source), 7)
    target = IMPLICIT_LITTLE if source == EXPLICIT_LITTLE else EXPLICIT_LITTLE
    result = read(await joined(transcode(data_set, data_set_source, target)), target)
    assert_same(read(encode(dataset, source), source), result)


async def test_pixel_data_is_streamed_not_held() -> None:
    size = 32 * 1024 * 1024
    header = part10(image(256), EXPLICIT_LITTLE)
    header = header[: -(256 + 12)] + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, size)

    async def stored() -> AsyncIterator[bytes]:
        yield header
        for _ in range(size // (1024 * 1024)):
            yield b"\x01" * (1024 * 1024)

    tracemalloc.start()
    try:
        source, data_set = await opened_bytes_from(stored())
        total = 0
        async for chunk in transcode(data_set, source, IMPLICIT_LITTLE):
            total += len(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total > size and peak < 8 * 1024 * 1024


async def test_elements_before_the_pixel_data_beyond_the_limit_are_refused() -> None:
    source, data_set = await opened("CT_small.dcm", 4096)
    with pytest.raises(CannotTranscode, match="before the pixel data"):
        await joined(transcode(data_set, source, IMPLICIT_LITTLE, header_limit=1024))


async def test_a_data_set_ending_inside_its_pixel_data_is_refused() -> None:
    data = part10(image(4096), EXPLICIT_LITTLE)[:-100]
    source, data_set = await opened_bytes(data)
    with pytest.raises(CannotTranscode, match="inside its Pixel Data"):
        await joined(transcode(data_set, source, IMPLICIT_LITTLE))


async def test_encapsulated_pixel_data_in_an_uncompressed_syntax_is_refused() -> None:
    data = part10(image(256), EXPLICIT_LITTLE)
    data = data[: -(256 + 12)] + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF) + b"\xfe\xff\x00\xe0"
    source, data_set = await opened_bytes(data)
    with pytest.raises(CannotTranscode, match="undefined length"):
        await joined(transcode(data_set, source, IMPLICIT_LITTLE))


async def test_a_deflated_data_set_that_does_not_inflate_is_refused() -> None:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    deflated = compressor.compress(encode(image(4096), EXPLICIT_LITTLE)) + compressor.flush()
    header = part10_header("1.2.840.10008.5.1.4.1.1.7", "1.2.3.4", DEFLATED, "1.2.3", "TEST")
    for broken in (deflated[: len(deflated) // 2], b"\xff" * 100):
        source, data_set = await opened_bytes(header + broken)
        with pytest.raises(CannotTranscode):
            await joined(transcode(data_set, source, IMPLICIT_LITTLE))


def meta_group(*elements: bytes) -> bytes:
    group = b"".join(elements)
    return b"\x00" * 128 + b"DICM" + struct.pack("<HH2sHI", 2, 0, b"UL", 4, len(group)) + group


def ui(element: int, value: str) -> bytes:
    data = value.encode() + (b"\x00" if len(value) % 2 else b"")
    return struct.pack("<HH2sH", 2, element, b"UI", len(data)) + data


@pytest.mark.parametrize(("data", "reason"), [
    ((CORPUS / "ExplVR_LitEndNoMeta.dcm").read_bytes(), "DICM"),
    ((CORPUS / "meta_missing_tsyntax.dcm").read_bytes(), "Transfer Syntax UID"),
    ((CORPUS / "no_meta_group_length.dcm").read_bytes(), "group length"),
    ((CORPUS / "CT_small.dcm").read_bytes()[:100], "DICM"),
    ((CORPUS / "CT_small.dcm").read_bytes()[:150], "ends inside"),
    (b"\x00" * 128 + b"DICM" + struct.pack("<HH2sHI", 2, 0, b"UL", 4, 100_000), "more than"),
    (meta_group(ui(0x0002, "1.2.3"), ui(0x0010, EXPLICIT_LITTLE)), "Media Storage SOP Instance UID"),
    (meta_group(ui(0x0002, "1.2.3"), struct.pack("<HH2sH", 8, 0x16, b"UI", 0)), "inside the file meta"),
    (meta_group(ui(0x0002, "1.2.3"), struct.pack("<HH2sH", 2, 0x03, b"UI", 200)), "longer than"),
    (b"", "DICM"),
], ids=["no-preamble", "no-transfer-syntax", "no-group-length", "short", "truncated-meta", "huge-meta",
        "no-instance", "foreign-element", "overlong-element", "empty"])
async def test_what_is_not_part10_is_refused(data: bytes, reason: str) -> None:
    with pytest.raises(NotPart10, match=reason):
        await open_part10(chunks_of(data, 64))
