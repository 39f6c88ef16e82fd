"""A stored Part 10 object as the data set a C-STORE sends: its file meta read off the front, the patient's
current attributes written over its header when an ADT message changed them, and the data set converted
losslessly to another uncompressed little endian transfer syntax when the peer accepts no other.

Both work on an object's chunks as they are read from the store. A conversion decodes and re-encodes only the
elements before the Pixel Data (and the few after it) with pydicom; the pixel data, which is the same bytes in
every uncompressed little endian syntax, passes through in the chunks it came in, so an instance is never held
whole. Compressed and big endian syntaxes are not converted: that would mean decoding the pixel data.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pydicom.dataset import Dataset

from gateway.core.study import Patient
from gateway.dicom.acse import EXPLICIT_LITTLE, IMPLICIT_LITTLE
from gateway.dicom.dataset import DEFLATED, PIXEL_DATA, encode, read_prefix
from gateway.dicom.patient import apply_patient, needs_whole_header

META_LIMIT = 64 * 1024
"""A File Meta Information group is a few hundred bytes; one claiming more is not one of ours."""
_PREFIX_LENGTH = 132
_GROUP_LENGTH_ELEMENT = struct.Struct("<HH2sHI")
_TARGETS = (EXPLICIT_LITTLE, IMPLICIT_LITTLE)
_SOURCES = (EXPLICIT_LITTLE, IMPLICIT_LITTLE, DEFLATED)
_FIRST_ATTEMPT = 64 * 1024
"""Bytes parsed for the elements at first; each further attempt parses twice as many, so a large header
arriving in small chunks is parsed a few times, not once a chunk."""
_INFLATED_PIECE = 1024 * 1024
"""Inflated bytes produced per step: a small deflated chunk may inflate to gigabytes."""
_UNDEFINED_LENGTH = 0xFFFFFFFF
_AFTER_PATIENT = 0x00110000
"""The first tag after the Patient Module's group 0010: what a patient rewrite re-encodes stops before it."""
_END = 0xFFFFFFFF
"""A tag no top-level element reaches: parse to the end."""
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
"""Explicit VRs with a 4-byte value length (PS3.5 7.1.2)."""


class NotPart10(ValueError):
    """The object does not start with a PS3.10 preamble, "DICM" and a File Meta Information group."""


class CannotTranscode(ValueError):
    """The data set cannot be converted to the transfer syntax asked for without decoding its pixel data, or it
    does not parse."""


@dataclass(frozen=True, slots=True)
class FileMeta:
    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str


async def open_part10(chunks: AsyncIterator[bytes]) -> tuple[FileMeta, AsyncIterator[bytes]]:
    """The file meta of a stored object and its data set's bytes: the rest of the chunk the meta ended in, then
    the remaining chunks unchanged. Raises NotPart10 naming what is wrong."""
    buffer = bytearray()
    while len(buffer) < _PREFIX_LENGTH + _GROUP_LENGTH_ELEMENT.size:
        chunk = await anext(chunks, None)
        if chunk is None:
            break
        buffer += chunk
    if len(buffer) < _PREFIX_LENGTH + _GROUP_LENGTH_ELEMENT.size or buffer[128:132] != b"DICM":
        raise NotPart10("no PS3.10 preamble followed by 'DICM'")
    group, element, vr, length, meta_length = _GROUP_LENGTH_ELEMENT.unpack_from(buffer, _PREFIX_LENGTH)
    if (group, element, vr, length) != (0x0002, 0x0000, b"UL", 4):
        raise NotPart10("the file meta does not start with its group length (0002,0000)")
    if meta_length > META_LIMIT:
        raise NotPart10(f"a file meta group of {meta_length} bytes (more than {META_LIMIT})")
    end = _PREFIX_LENGTH + _GROUP_LENGTH_ELEMENT.size + meta_length
    while len(buffer) < end:
        chunk = await anext(chunks, None)
        if chunk is None:
            break
        buffer += chunk
    if len(buffer) < end:
        raise NotPart10("the object ends inside its file meta group")
    meta = _meta_elements(bytes(buffer[_PREFIX_LENGTH + _GROUP_LENGTH_ELEMENT.size : end]))
    missing = [name for name, tag in (("Transfer Syntax UID", 0x0010), ("Media Storage SOP Class UID", 0x0002),
                                      ("Media Storage SOP Instance UID", 0x0003)) if not meta.get(tag)]
    if missing:
        raise NotPart10(f"the file meta has no {', '.join(missing)}")
    return FileMeta(meta[0x0010], meta[0x0002], meta[0x0003]), _rest(bytes(buffer[end:]), chunks)


def _meta_elements(group: bytes) -> dict[int, str]:
    """The UI values of a File Meta Information group (explicit VR little endian), by element number."""
    values: dict[int, str] = {}
    offset = 0
    while offset < len(group):
        if len(group) - offset < 8:
            raise NotPart10("an element of the file meta group is truncated")
        tag_group, element, vr = struct.unpack_from("<HH2s", group, offset)
        if tag_group != 0x0002:
            raise NotPart10(f"element ({tag_group:04X},{element:04X}) inside the file meta group")
        if vr in _LONG_VRS:
            if len(group) - offset < 12:
                raise NotPart10("an element of the file meta group is truncated")
            length, start = struct.unpack_from("<I", group, offset + 8)[0], offset + 12
        else:
            length, start = struct.unpack_from("<H", group, offset + 6)[0], offset + 8
        if start + length > len(group):
            raise NotPart10(f"element (0002,{element:04X}) is longer than the file meta group")
        if vr == b"UI":
            values[element] = group[start : start + length].rstrip(b"\x00 ").decode("ascii", "replace")
        offset = start + length
    return values


async def _rest(head: bytes, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if head:
        yield head
    async for chunk in chunks:
        yield chunk


def can_transcode(source: str, target: str) -> bool:
    return source == target or (source in _SOURCES and target in _TARGETS)


def transcode(data_set: AsyncIterator[bytes], source: str, target: str, *,
              header_limit: int = 64 * 1024 * 1024) -> AsyncIterator[bytes]:
    """The data set's bytes in ``target``; raises CannotTranscode at once when that needs decoding the pixel
    data, and while iterating when the data set does not parse or its elements other than the pixel data
    exceed ``header_limit`` bytes (they are held in memory)."""
    if not can_transcode(source, target):
        raise CannotTranscode(f"no lossless streaming conversion from {source} to {target}")
    if source == target:
        return data_set
    if source == DEFLATED:
        inflated = _inflate(data_set)
        return inflated if target == EXPLICIT_LITTLE else _convert(inflated, EXPLICIT_LITTLE, target, header_limit)
    return _convert(data_set, source, target, header_limit)


async def _inflate(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A deflated data set (PS3.5 A.5: raw deflate, no zlib header) inflated piece by bounded piece."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    async for chunk in chunks:
        data = chunk
        while data and not inflater.eof:
            try:
                piece = inflater.decompress(data, _INFLATED_PIECE)
            except zlib.error as exc:
                raise CannotTranscode(f"the deflated data set does not inflate: {exc}") from exc
            if piece:
                yield piece
            data = inflater.unconsumed_tail
    tail = inflater.flush()
    if tail:
        yield tail
    if not inflater.eof:
        raise CannotTranscode("the deflated data set ends before its deflate stream does")


async def _header(chunks: AsyncIterator[bytes], syntax: str, header_limit: int,
                  stop_before: int = PIXEL_DATA) -> tuple[Dataset, int, bytearray]:
    """The elements before ``stop_before`` (the pixel data), where they end, and the bytes read so far (which go
    on past them)."""
    buffer = bytearray()
    window = _FIRST_ATTEMPT
    ended = False
    while True:
        while len(buffer) < window and not ended:
            chunk = await anext(chunks, None)
            if chunk is None:
                ended = True
            else:
                buffer += chunk
        # only the window is parsed (and copied): a chunk of a megabyte or more holds far more than the header
        found = _parse(bytes(memoryview(buffer)[:window]), syntax, stop_before,
                       complete=ended and window >= len(buffer))
        if found is not None:
            break
        if window > header_limit:
            raise CannotTranscode(f"the elements before the pixel data exceed {header_limit} bytes")
        window *= 2
    prefix, offset = found
    if offset > header_limit:
        raise CannotTranscode(f"the elements before the pixel data exceed {header_limit} bytes")
    return prefix, offset, buffer


async def _convert(chunks: AsyncIterator[bytes], source: str, target: str, header_limit: int) -> AsyncIterator[bytes]:
    """Between explicit and implicit VR little endian: the elements before the pixel data re-encoded, the pixel
    data value streamed as it is, the elements after it re-encoded."""
    prefix, offset, buffer = await _header(chunks, source, header_limit)
    encoded = _encode(prefix, target)
    if offset == len(buffer):
        yield encoded
        return
    group, element = struct.unpack_from("<HH", buffer, offset)
    if (group << 16 | element) != PIXEL_DATA:
        yield encoded
        after = bytes(memoryview(buffer)[offset:])
    else:
        header_size, length = _element_header(buffer, offset, source == IMPLICIT_LITTLE)
        if length == _UNDEFINED_LENGTH:
            raise CannotTranscode("Pixel Data of undefined length (encapsulated) in an uncompressed transfer syntax")
        yield encoded + _pixel_data_header(prefix, target, length)
        piece = bytes(memoryview(buffer)[offset + header_size :])
        del buffer  # the header's bytes are not needed while the pixel data streams
        remaining = length
        while len(piece) < remaining:
            if piece:
                yield piece
            remaining -= len(piece)
            chunk = await anext(chunks, None)
            if chunk is None:
                raise CannotTranscode("the data set ends inside its Pixel Data")
            piece = chunk
        if remaining:
            yield piece if len(piece) == remaining else piece[:remaining]
        after = piece[remaining:]
    trailing = bytearray(after)
    async for chunk in chunks:
        trailing += chunk
        if len(trailing) > header_limit:
            raise CannotTranscode(f"the elements after the pixel data exceed {header_limit} bytes")
    if trailing:
        yield _encode_after(prefix, bytes(trailing), source, target, len(encoded))


def with_patient(data_set: AsyncIterator[bytes], transfer_syntax: str, patient: Patient, *,
                 header_limit: int = 64 * 1024 * 1024) -> AsyncIterator[bytes]:
    """The data set with ``patient``'s attributes written over its Patient Module (``gateway.dicom.patient``),
    in its own transfer syntax: groups 0008 and 0010 re-encoded (every element before the pixel data when the
    character set changes), the rest passed through as it comes (a deflated data set is inflated and deflated
    again): re-encoding the whole header cost ten times what sending the object did. Raises CannotTranscode
    while iterating when the header does not parse or exceeds ``header_limit``."""
    if transfer_syntax == DEFLATED:
        return _deflate(_overlay(_inflate(data_set), EXPLICIT_LITTLE, patient, header_limit))
    return _overlay(data_set, transfer_syntax, patient, header_limit)


async def _overlay(chunks: AsyncIterator[bytes], syntax: str, patient: Patient,
                   header_limit: int) -> AsyncIterator[bytes]:
    prefix, offset, buffer = await _header(chunks, syntax, header_limit, _AFTER_PATIENT)
    if needs_whole_header(prefix, patient):  # rare: every text value goes to another character set
        prefix, offset, buffer = await _header(_rest(bytes(buffer), chunks), syntax, header_limit)
    try:
        apply_patient(prefix, patient)
    except Exception as exc:
        raise CannotTranscode(f"the patient attributes cannot be written ({type(exc).__name__})") from exc
    yield _encode(prefix, syntax)
    if offset < len(buffer):
        yield bytes(memoryview(buffer)[offset:])
    del buffer
    async for chunk in chunks:
        yield chunk


async def _deflate(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    async for chunk in chunks:
        if piece := deflater.compress(chunk):
            yield piece
    yield deflater.flush()


def _element_header(data: bytearray, offset: int, implicit: bool) -> tuple[int, int]:
    """Size of the element header at ``offset`` and the value length it gives."""
    if implicit:
        return 8, int(struct.unpack_from("<I", data, offset + 4)[0])
    if bytes(data[offset + 4 : offset + 6]) in _LONG_VRS:
        return 12, int(struct.unpack_from("<I", data, offset + 8)[0])
    return 8, int(struct.unpack_from("<H", data, offset + 6)[0])


def _parse(data: bytes, source: str, stop_before: int, complete: bool) -> tuple[Dataset, int] | None:
    try:
        return read_prefix(data, source, stop_before, complete)
    except Exception as exc:
        raise CannotTranscode(f"the data set does not parse ({type(exc).__name__})") from exc


def _encode(dataset: Dataset, target: str) -> bytes:
    """pydicom's writer resolves the VRs an implicit data set lacks (ambiguous ones from the data set, private
    unknown ones as UN) and writes as UN a value too long for its VR's 2-byte length; its warnings may quote
    values, so they are silenced."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return encode(dataset, target)
    except Exception as exc:
        raise CannotTranscode(f"the data set cannot be encoded in {target} ({type(exc).__name__})") from exc


def _pixel_data_header(prefix: Dataset, target: str, length: int) -> bytes:
    if target == IMPLICIT_LITTLE:
        return struct.pack("<HHI", 0x7FE0, 0x0010, length)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bits_allocated = prefix.get("BitsAllocated")
    vr = b"OB" if isinstance(bits_allocated, int) and bits_allocated <= 8 else b"OW"
    return struct.pack("<HH2sHI", 0x7FE0, 0x0010, vr, 0, length)


def _encode_after(prefix: Dataset, trailing: bytes, source: str, target: str, prefix_length: int) -> bytes:
    """Elements after the pixel data (trailing padding, signatures), encoded beside the prefix, whose Pixel
    Representation or Specific Character Set they may depend on: elements are written in tag order, so theirs
    are the bytes after the prefix's."""
    found = _parse(trailing, source, _END, complete=True)
    assert found is not None, "a complete parse returns or raises"
    after, offset = found
    if offset != len(trailing):
        raise CannotTranscode("the elements after the pixel data do not parse to the end")
    merged = Dataset()
    merged._dict.update(prefix._dict)
    merged._dict.update(after._dict)
    return _encode(merged, target)[prefix_length:]
