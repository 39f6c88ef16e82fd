"""A match as the requestor sees it: a C-FIND identifier, or a QIDO-RS result in the DICOM JSON model, built
from the index's values for the keys asked (PS3.4 C.4.1.1.3.2: the keys of the request, each with its value or
zero-length) and nothing else; text as UTF-8 (ISO_IR 192), whatever the instances' own character sets were."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from gateway.core.query import Level, Query
from gateway.dicom.dataset import IMPLICIT_LITTLE


def identifier(query: Query, values: Mapping[str, Any], keys: Iterable[str], ae_title: str,
               level: Level | None = None) -> Dataset:
    """The data set of one match: ``keys`` with their values (zero-length when the index has none), the
    level, the character set, and the Retrieve AE Title and availability when asked for."""
    dataset = Dataset()
    dataset.SpecificCharacterSet = "ISO_IR 192"
    dataset.QueryRetrieveLevel = str(level or query.level)
    if query.retrieve_ae_title:
        dataset.RetrieveAETitle = ae_title
    if query.instance_availability:
        dataset.InstanceAvailability = "ONLINE"
    for keyword in keys:
        tag = tag_for_keyword(keyword)
        if tag is None:
            continue
        vr = dictionary_VR(tag)
        value = values.get(keyword)
        if vr == "SQ":
            dataset.add_new(tag, vr, DicomSequence())
        elif value is None or value == "" or value == []:
            dataset.add_new(tag, vr, None)
        elif vr == "IS":
            dataset.add_new(tag, vr, str(value))
        else:
            dataset.add_new(tag, vr, value)
    return dataset


_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_ELEMENT = struct.Struct("<HH")


def encode_match(query: Query, values: Mapping[str, Any], keys: Iterable[str], ae_title: str,
                 transfer_syntax: str, level: Level | None = None) -> bytes:
    """``identifier`` encoded directly in little endian (implicit or explicit VR): a C-FIND answers with one per
    match, and pydicom's Dataset and writer cost more than the query that found it. The bytes are those pydicom
    writes for ``identifier`` (a unit test holds them together)."""
    explicit = transfer_syntax != IMPLICIT_LITTLE
    elements: dict[int, tuple[str, bytes]] = {
        0x00080005: ("CS", b"ISO_IR 192"),
        0x00080052: ("CS", str(level or query.level).encode()),
    }
    if query.retrieve_ae_title:
        elements[0x00080054] = ("AE", ae_title.encode())
    if query.instance_availability:
        elements[0x00080056] = ("CS", b"ONLINE")
    for keyword in keys:
        tag = tag_for_keyword(keyword)
        if tag is None:
            continue
        vr = dictionary_VR(tag)
        value = values.get(keyword)
        if vr == "SQ" or value is None or value == "" or value == []:
            elements[tag] = (vr, b"")
        elif isinstance(value, list):
            elements[tag] = (vr, "\\".join(str(item) for item in value).encode())
        else:
            elements[tag] = (vr, str(value).encode())
    out = bytearray()
    for tag in sorted(elements):
        vr, data = elements[tag]
        if len(data) % 2:
            data += b"\x00" if vr == "UI" else b" "
        out += _ELEMENT.pack(tag >> 16, tag & 0xFFFF)
        if not explicit:
            out += struct.pack("<I", len(data))
        elif vr in _LONG_VRS:
            out += vr.encode() + struct.pack("<HI", 0, len(data))
        else:
            out += vr.encode() + struct.pack("<H", len(data))
        out += data
    return bytes(out)
