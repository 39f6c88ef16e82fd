"""DIMSE command sets (PS3.7 sections 9.3 and E): implicit VR little endian, group 0000 only.

A command set is a flat list of a few fixed elements, so it is decoded and encoded here directly with
``struct`` rather than through a general data set codec: on the receive path that cost is paid twice per
instance, and pydicom's Dataset machinery made it a large share of the receiver's CPU for small instances.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
N_ACTION_RQ, N_ACTION_RSP = 0x0130, 0x8130
N_EVENT_REPORT_RQ, N_EVENT_REPORT_RSP = 0x0100, 0x8100
C_FIND_RQ, C_FIND_RSP = 0x0020, 0x8020
C_GET_RQ, C_GET_RSP = 0x0010, 0x8010
C_MOVE_RQ, C_MOVE_RSP = 0x0021, 0x8021
C_CANCEL_RQ = 0x0FFF
DATA_SET_PRESENT = 0x0000
NO_DATA_SET = 0x0101

SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
NO_SUCH_SOP_INSTANCE = 0x0112
NO_SUCH_SOP_CLASS = 0x0118
NO_SUCH_ACTION = 0x0123
NOT_AUTHORIZED = 0x0124
UNRECOGNIZED_OPERATION = 0x0211
RESOURCE_LIMITATION = 0x0213
STORED_WITH_WARNING = frozenset({0xB000, 0xB006, 0xB007})
"""C-STORE warnings that still mean stored: coercion, elements discarded, data set not matching the SOP Class."""
PENDING = 0xFF00
PENDING_WARNING = 0xFF01
"""Pending, one or more optional keys not supported (C-FIND, PS3.4 C.4.1.1.4)."""
CANCELLED = 0xFE00
SUB_OPERATIONS_WITH_FAILURES = 0xB000
OUT_OF_RESOURCES = 0xA700
CANNOT_CALCULATE_MATCHES = 0xA701
CANNOT_PERFORM_SUB_OPERATIONS = 0xA702
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000

GROUP_LENGTH = 0x00000000
AFFECTED_SOP_CLASS_UID = 0x00000002
REQUESTED_SOP_CLASS_UID = 0x00000003
COMMAND_FIELD = 0x00000100
MESSAGE_ID = 0x00000110
MESSAGE_ID_BEING_RESPONDED_TO = 0x00000120
MOVE_DESTINATION = 0x00000600
PRIORITY = 0x00000700
COMMAND_DATA_SET_TYPE = 0x00000800
STATUS = 0x00000900
ERROR_COMMENT = 0x00000902
AFFECTED_SOP_INSTANCE_UID = 0x00001000
REQUESTED_SOP_INSTANCE_UID = 0x00001001
EVENT_TYPE_ID = 0x00001002
ACTION_TYPE_ID = 0x00001008
NUMBER_OF_REMAINING = 0x00001020
NUMBER_OF_COMPLETED = 0x00001021
NUMBER_OF_FAILED = 0x00001022
NUMBER_OF_WARNING = 0x00001023
MOVE_ORIGINATOR_AE_TITLE = 0x00001030
MOVE_ORIGINATOR_MESSAGE_ID = 0x00001031

_ELEMENT = struct.Struct("<HHI")
_US = struct.Struct("<H")
_UL = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class Command:
    """A decoded request (or response: ``message_id`` is then the one responded to), the fields the receiver
    dispatches on, and every element by tag."""

    command_field: int
    message_id: int
    data_set_type: int
    affected_sop_class_uid: str = ""
    affected_sop_instance_uid: str = ""
    elements: dict[int, bytes] = field(default_factory=dict, repr=False)

    @property
    def has_data_set(self) -> bool:
        return self.data_set_type != NO_DATA_SET

    def text(self, tag: int) -> str:
        return _text(self.elements.get(tag, b""))

    def unsigned(self, tag: int) -> int | None:
        value = self.elements.get(tag)
        return int(_US.unpack(value)[0]) if value is not None and len(value) == 2 else None


def _text(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii", errors="replace")


def _unsigned(elements: dict[int, bytes], tag: int, name: str) -> int:
    value = elements.get(tag)
    if value is None or len(value) != 2:
        raise ValueError(f"command set has no valid {name}")
    return int(_US.unpack(value)[0])


def decode_command(data: bytes) -> Command:
    """Raises ValueError when the bytes are not a well-formed command set."""
    elements: dict[int, bytes] = {}
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < _ELEMENT.size:
            raise ValueError("command set element header truncated")
        group, element, length = _ELEMENT.unpack_from(data, offset)
        offset += _ELEMENT.size
        if group != 0x0000:
            raise ValueError(f"element ({group:04X},{element:04X}) in a command set")
        if length > end - offset:
            raise ValueError(f"element (0000,{element:04X}) longer than the command set")
        elements[element] = data[offset : offset + length]
        offset += length
    command_field = _unsigned(elements, COMMAND_FIELD, "Command Field")
    responding = bool(command_field & 0x8000) or command_field == C_CANCEL_RQ  # a C-CANCEL names its request
    return Command(
        command_field=command_field,
        message_id=_unsigned(elements, MESSAGE_ID_BEING_RESPONDED_TO if responding else MESSAGE_ID,
                             "Message ID Being Responded To" if responding else "Message ID"),
        data_set_type=_unsigned(elements, COMMAND_DATA_SET_TYPE, "Command Data Set Type"),
        affected_sop_class_uid=_text(elements.get(AFFECTED_SOP_CLASS_UID, b"")),
        affected_sop_instance_uid=_text(elements.get(AFFECTED_SOP_INSTANCE_UID, b"")),
        elements=elements,
    )


def _element(tag: int, value: bytes, pad: bytes = b"\x00") -> bytes:
    if len(value) % 2:
        value += pad
    return _ELEMENT.pack(0x0000, tag, len(value)) + value


def _command_set(*elements: bytes) -> bytes:
    """Command Group Length, then the encoded ``elements`` (given in tag order, PS3.7 E.1)."""
    body = b"".join(elements)
    return _element(GROUP_LENGTH, _UL.pack(len(body))) + body


def event_report(message_id: int, sop_class_uid: str, sop_instance_uid: str, event_type: int) -> bytes:
    """An N-EVENT-REPORT-RQ command set with an Event Information data set following (PS3.7 10.3.1)."""
    return _command_set(
        _element(AFFECTED_SOP_CLASS_UID, sop_class_uid.encode()),
        _element(COMMAND_FIELD, _US.pack(N_EVENT_REPORT_RQ)),
        _element(MESSAGE_ID, _US.pack(message_id)),
        _element(COMMAND_DATA_SET_TYPE, _US.pack(DATA_SET_PRESENT)),
        _element(AFFECTED_SOP_INSTANCE_UID, sop_instance_uid.encode()),
        _element(EVENT_TYPE_ID, _US.pack(event_type)),
    )


def c_store_rq(message_id: int, sop_class_uid: str, sop_instance_uid: str, priority: int,
               move_originator: tuple[str, int] | None = None) -> bytes:
    """A C-STORE-RQ command set, its data set following (PS3.7 9.3.1.1); a C-MOVE's sub-operation names the
    AE title and Message ID of the C-MOVE it serves (``move_originator``)."""
    return _command_set(
        _element(AFFECTED_SOP_CLASS_UID, sop_class_uid.encode("ascii")),
        _element(COMMAND_FIELD, _US.pack(C_STORE_RQ)),
        _element(MESSAGE_ID, _US.pack(message_id)),
        _element(PRIORITY, _US.pack(priority)),
        _element(COMMAND_DATA_SET_TYPE, _US.pack(DATA_SET_PRESENT)),
        _element(AFFECTED_SOP_INSTANCE_UID, sop_instance_uid.encode("ascii")),
        _element(MOVE_ORIGINATOR_AE_TITLE, move_originator[0].encode("ascii"), b" ") if move_originator else b"",
        _element(MOVE_ORIGINATOR_MESSAGE_ID, _US.pack(move_originator[1])) if move_originator else b"",
    )


def n_action_rq(message_id: int, sop_class_uid: str, sop_instance_uid: str, action_type: int,
                with_data_set: bool) -> bytes:
    """An N-ACTION-RQ command set (PS3.7 10.3.4.1); its Action Information follows ``with_data_set``."""
    return _command_set(
        _element(REQUESTED_SOP_CLASS_UID, sop_class_uid.encode("ascii")),
        _element(COMMAND_FIELD, _US.pack(N_ACTION_RQ)),
        _element(MESSAGE_ID, _US.pack(message_id)),
        _element(COMMAND_DATA_SET_TYPE, _US.pack(DATA_SET_PRESENT if with_data_set else NO_DATA_SET)),
        _element(REQUESTED_SOP_INSTANCE_UID, sop_instance_uid.encode("ascii")),
        _element(ACTION_TYPE_ID, _US.pack(action_type)),
    )


@dataclass(frozen=True, slots=True)
class SubOperations:
    """The counts a C-MOVE or C-GET response carries (PS3.7 9.3.3.2, 9.3.4.2)."""

    remaining: int | None
    """None in a final response (the element is then absent)."""
    completed: int
    failed: int
    warning: int


def response(request: Command, command_field: int, status: int, comment: str | None = None,
             data_set: bool = False, counts: SubOperations | None = None) -> bytes:
    """The response command set, Command Group Length first, elements in tag order (PS3.7 E.1); ``data_set``
    says an identifier follows (a C-FIND match, a C-MOVE's Failed SOP Instance UID List).

    An N-ACTION names its SOP Class and Instance as Requested; its response returns them as Affected, with
    the Action Type ID (PS3.7 10.1.4.1)."""
    sop_class = request.affected_sop_class_uid or request.text(REQUESTED_SOP_CLASS_UID)
    sop_instance = request.affected_sop_instance_uid or request.text(REQUESTED_SOP_INSTANCE_UID)
    action = request.elements.get(ACTION_TYPE_ID) if request.command_field == N_ACTION_RQ else None
    return _command_set(
        _element(AFFECTED_SOP_CLASS_UID, sop_class.encode()),
        _element(COMMAND_FIELD, _US.pack(command_field)),
        _element(MESSAGE_ID_BEING_RESPONDED_TO, _US.pack(request.message_id)),
        _element(COMMAND_DATA_SET_TYPE, _US.pack(DATA_SET_PRESENT if data_set else NO_DATA_SET)),
        _element(STATUS, _US.pack(status)),
        _element(ERROR_COMMENT, comment[:64].encode("ascii", errors="replace"), b" ")
        if comment and status != SUCCESS else b"",
        _element(AFFECTED_SOP_INSTANCE_UID, sop_instance.encode()) if sop_instance else b"",
        _element(ACTION_TYPE_ID, action) if action is not None and len(action) == 2 else b"",
        *_counts(counts),
    )


def _counts(counts: SubOperations | None) -> list[bytes]:
    if counts is None:
        return []
    values = [(NUMBER_OF_REMAINING, counts.remaining), (NUMBER_OF_COMPLETED, counts.completed),
              (NUMBER_OF_FAILED, counts.failed), (NUMBER_OF_WARNING, counts.warning)]
    return [_element(tag, _US.pack(min(value, 0xFFFF))) for tag, value in values if value is not None]
