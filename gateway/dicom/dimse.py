"""DIMSE command sets (PS3.7 section 9/10): decoded and encoded with pydicom through pynetdicom's dsutils."""

from __future__ import annotations

import io
import struct

from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode, encode

C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
NO_DATA_SET = 0x0101

SUCCESS = 0x0000
UNRECOGNIZED_OPERATION = 0x0211


def decode_command(data: bytes) -> Dataset:
    """Raises ValueError when the bytes are not an implicit VR little endian command set."""
    try:
        command = decode(io.BytesIO(data), True, True)
        if command is None or "CommandField" not in command:
            raise ValueError("command set has no Command Field")
        return command
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"command set does not decode: {exc}") from exc


def encode_command(command: Dataset) -> bytes:
    """Encode with the Command Group Length (0000,0000) that PS3.7 requires first."""
    body = encode(command, True, True)
    if body is None:
        raise ValueError("command set does not encode")
    return struct.pack("<HHII", 0x0000, 0x0000, 4, len(body)) + body


def response(request: Dataset, command_field: int, status: int, comment: str | None = None) -> bytes:
    rsp = Dataset()
    rsp.AffectedSOPClassUID = request.get("AffectedSOPClassUID", "")
    rsp.CommandField = command_field
    rsp.MessageIDBeingRespondedTo = request.MessageID
    rsp.CommandDataSetType = NO_DATA_SET
    rsp.Status = status
    if "AffectedSOPInstanceUID" in request:
        rsp.AffectedSOPInstanceUID = request.AffectedSOPInstanceUID
    if comment and status != SUCCESS:
        rsp.ErrorComment = comment[:64]
    return encode_command(rsp)
