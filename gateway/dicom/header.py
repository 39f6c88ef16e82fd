"""The few header values the envelope needs, read straight from the first bytes of a data set.

The receiver does this for every instance while its fragments are still arriving, and a general data set
reader (pydicom builds and validates an element object per attribute) cost more CPU than everything else
on the receive path for small instances. This walker only steps over elements, reads the values of the
tags asked for, and looks inside one sequence (Issuer of Patient ID Qualifiers) for its Universal Entity ID.
"""

from __future__ import annotations

import struct

IMPLICIT_LITTLE = "1.2.840.10008.1.2"
EXPLICIT_BIG = "1.2.840.10008.1.2.2"

ISSUER_QUALIFIERS = 0x00100024
UNIVERSAL_ENTITY_ID = 0x00400032
UNIVERSAL_ENTITY_ID_TYPE = 0x00400033
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"))


class NeedMore(Exception):
    """The bytes end inside the header."""


class Malformed(ValueError):
    pass


class _Walker:
    def __init__(self, data: bytes, transfer_syntax: str) -> None:
        self.data = data
        self.explicit = transfer_syntax != IMPLICIT_LITTLE
        order = ">" if transfer_syntax == EXPLICIT_BIG else "<"
        self.tag = struct.Struct(order + "HH")
        self.u16 = struct.Struct(order + "H")
        self.u32 = struct.Struct(order + "I")

    def element(self, offset: int) -> tuple[int, bytes, int, int]:
        """(tag, VR or b'', value length, value offset) of the element at ``offset``."""
        data = self.data
        if offset + 8 > len(data):
            raise NeedMore
        group, number = self.tag.unpack_from(data, offset)
        tag = group << 16 | number
        if group == 0xFFFE or not self.explicit:
            return tag, b"", self.u32.unpack_from(data, offset + 4)[0], offset + 8
        vr = data[offset + 4 : offset + 6]
        if vr in _LONG_VRS:
            if offset + 12 > len(data):
                raise NeedMore
            return tag, vr, self.u32.unpack_from(data, offset + 8)[0], offset + 12
        if not vr.isalpha():
            raise Malformed(f"element ({group:04X},{number:04X}) has no valid VR")
        return tag, vr, self.u16.unpack_from(data, offset + 6)[0], offset + 8

    def skip_undefined(self, offset: int) -> int:
        """Past the end of an undefined-length sequence (or item) starting its content at ``offset``."""
        depth = 1
        while depth:
            tag, _, length, offset = self.element(offset)
            if tag in (SEQUENCE_END, ITEM_END):
                depth -= 1
            elif length == UNDEFINED:
                depth += 1
            else:
                offset += length
        return offset

    def issuer(self, offset: int, length: int) -> tuple[str, int]:
        """The ISO Universal Entity ID of the first item of the qualifiers sequence, and the offset after it."""
        end = None if length == UNDEFINED else offset + length
        found, entity, entity_type, first = "", "", "", True
        while end is None or offset < end:
            tag, _, item_length, offset = self.element(offset)
            if tag == SEQUENCE_END:
                break
            if tag != ITEM:
                raise Malformed("sequence content is not an item")
            item_end = None if item_length == UNDEFINED else offset + item_length
            while item_end is None or offset < item_end:
                tag, _, value_length, start = self.element(offset)
                if tag == ITEM_END:
                    offset = start
                    break
                if value_length == UNDEFINED:
                    offset = self.skip_undefined(start)
                    continue
                offset = start + value_length
                if offset > len(self.data):
                    raise NeedMore
                if first and tag == UNIVERSAL_ENTITY_ID:
                    entity = _text(self.data[start:offset])
                elif first and tag == UNIVERSAL_ENTITY_ID_TYPE:
                    entity_type = _text(self.data[start:offset])
            if first and entity and entity_type in ("", "ISO"):
                found = entity
            first = False
        return found, offset


def _text(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("latin-1").strip()


def read_values(data: bytes, transfer_syntax: str, wanted: frozenset[int], last: int,
                complete: bool) -> dict[int, str] | None:
    """Values of the ``wanted`` top-level tags up to tag ``last`` (and the qualifiers' Universal Entity ID
    under ISSUER_QUALIFIERS); None if the bytes end before ``last`` is passed and more are coming."""
    walker = _Walker(data, transfer_syntax)
    values: dict[int, str] = {}
    offset = 0
    try:
        while offset < len(data):
            tag, _, length, start = walker.element(offset)
            if tag > last:
                return values
            if tag == ISSUER_QUALIFIERS:
                values[tag], offset = walker.issuer(start, length)
                continue
            if length == UNDEFINED:
                offset = walker.skip_undefined(start)
                continue
            offset = start + length
            if offset > len(data):
                raise NeedMore
            if tag in wanted:
                values[tag] = _text(data[start:offset])
    except (NeedMore, struct.error):
        if not complete:
            return None
    return values
