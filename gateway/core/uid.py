"""UID syntax (PS3.5 9.1), checked where a UID becomes a key: of a bus record, an object, an index row."""

from __future__ import annotations

import re

MAX_LENGTH = 64
_STRICT = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")
_LENIENT = re.compile(r"[0-9]+(\.[0-9]+)*")


def is_uid(value: str) -> bool:
    """A UID as PS3.5 9.1 writes it: dot-separated numbers without leading zeros, at most 64 characters."""
    return len(value) <= MAX_LENGTH and _STRICT.fullmatch(value) is not None


def is_identifier(value: str) -> bool:
    """Safe to identify an instance by: digits and dots, no empty component, at most 64 characters. Leading zeros,
    which some devices write, are let through here and reported by validation instead of refusing the image."""
    return len(value) <= MAX_LENGTH and _LENIENT.fullmatch(value) is not None
