"""Reading the start of a data set while the rest is still arriving."""

from __future__ import annotations

import hashlib
import io
import struct
import warnings

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

IMPLICIT_LITTLE = "1.2.840.10008.1.2"
EXPLICIT_BIG = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
PIXEL_DATA = 0x7FE00010


def read_prefix(prefix: bytes, transfer_syntax: str, stop_before: int, complete: bool) -> tuple[Dataset, int] | None:
    """The top-level elements before tag ``stop_before`` and where they end in ``prefix``; None while more
    bytes are needed to reach it.

    With ``complete`` the prefix is all there is, and whatever parses is returned. Raises only then.
    pydicom converts values lazily, on access: callers read the values they need under
    ``warnings.catch_warnings`` too, since pydicom's warnings may quote patient data.
    """
    stream = io.BytesIO(prefix)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = read_dataset(
                stream,
                is_implicit_VR=transfer_syntax == IMPLICIT_LITTLE,
                is_little_endian=transfer_syntax != EXPLICIT_BIG,
                stop_when=lambda tag, vr, length: tag.real >= stop_before,  # int's compare, not BaseTag's
            )
            if stream.tell() >= len(prefix) and not complete:
                return None
            return dataset, stream.tell()
    except Exception:
        if not complete:
            return None
        raise


ENCODING_DEPENDENT = frozenset({
    0x00082111,  # Derivation Description (transcoders note the compression here)
    0x00280004,  # Photometric Interpretation (YBR_FULL_422 once JPEG-compressed)
    0x00280006,  # Planar Configuration
    0x00282110, 0x00282112, 0x00282114,  # Lossy Image Compression, its Ratio and Method
})


def attributes_digest(dataset: Dataset) -> str:
    """SHA-256 of the public attributes before the pixel data, the same whatever the transfer syntax (implicit,
    explicit or compressed, all little endian): the tag and raw value bytes of each element, sequences item by
    item, trailing padding ignored. Left out: file meta, private groups (their VR is lost in implicit VR), pixel
    data and ``ENCODING_DEPENDENT``. Raw values are read before anything converts them, so call it first."""
    digest = hashlib.sha256()
    _digest(digest, dataset)
    return digest.hexdigest()


def _digest(digest: hashlib._Hash, dataset: Dataset) -> None:
    for tag, element in dataset._dict.items():
        if tag.group & 1 or tag.group in (0x0002, 0x7FE0, 0xFFFC) or tag in ENCODING_DEPENDENT:
            continue
        digest.update(int(tag).to_bytes(4, "little"))
        if isinstance(element, RawDataElement):
            vr = element.VR or _dictionary_vr(tag)
            value = element.value
        else:
            vr, value = element.VR, None
        if vr == "SQ":
            for item in dataset[tag].value:
                digest.update(b"\xfe\xff\x00\xe0")
                _digest(digest, item)
            digest.update(b"\xfe\xff\xdd\xe0")
            continue
        if value is None and not isinstance(element, RawDataElement):
            value = str(element.value).encode("utf-8", "surrogateescape")
        data = bytes(value or b"").rstrip(b" \x00")
        digest.update(len(data).to_bytes(4, "little"))
        digest.update(data)


def _dictionary_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def encode(dataset: Dataset, transfer_syntax: str) -> bytes:
    """Top-level elements encoded as the transfer syntax says (not for deflated data sets)."""
    out = DicomBytesIO()
    out.is_little_endian = transfer_syntax != EXPLICIT_BIG
    out.is_implicit_VR = transfer_syntax == IMPLICIT_LITTLE
    write_dataset(out, dataset)
    return out.getvalue()


def part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, implementation_class_uid: str,
              implementation_version: str, source_ae: str = "") -> bytes:
    """The PS3.10 preamble, prefix and File Meta Information group (explicit VR little endian, group length
    first), encoded directly: it goes in front of every stored instance, and pydicom's writer costs more per
    instance than the rest of storing a small one."""
    elements = [
        _explicit(0x0001, b"OB", b"\x00\x01"),
        _explicit(0x0002, b"UI", _padded(sop_class_uid, b"\x00")),
        _explicit(0x0003, b"UI", _padded(sop_instance_uid, b"\x00")),
        _explicit(0x0010, b"UI", _padded(transfer_syntax_uid, b"\x00")),
        _explicit(0x0012, b"UI", _padded(implementation_class_uid, b"\x00")),
        _explicit(0x0013, b"SH", _padded(implementation_version, b" ")),
    ]
    if source_ae:
        elements.append(_explicit(0x0016, b"AE", _padded(source_ae, b" ")))
    group = b"".join(elements)
    return b"\x00" * 128 + b"DICM" + _explicit(0x0000, b"UL", struct.pack("<I", len(group))) + group


def _padded(value: str, pad: bytes) -> bytes:
    data = value.encode("latin-1", "replace")  # what arrives is checked by validation, not here
    return data + pad if len(data) % 2 else data


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value

