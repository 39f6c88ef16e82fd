"""Our command set codec agrees with pydicom's reading and writing of the same command sets."""

from __future__ import annotations

import io
import struct

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode, encode

from gateway.dicom import dimse


def pydicom_command(**elements: object) -> bytes:
    command = Dataset()
    for keyword, value in elements.items():
        setattr(command, keyword, value)
    body = encode(command, True, True)
    assert body is not None
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def test_c_store_request_decodes() -> None:
    data = pydicom_command(AffectedSOPClassUID="1.2.840.10008.5.1.4.1.1.2", CommandField=1, MessageID=7,
                           Priority=0, CommandDataSetType=0, AffectedSOPInstanceUID="1.2.3.4.5")
    command = dimse.decode_command(data)
    assert (command.command_field, command.message_id, command.has_data_set) == (1, 7, True)
    assert command.affected_sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert command.affected_sop_instance_uid == "1.2.3.4.5"


def test_response_reads_back_in_pydicom() -> None:
    request = dimse.decode_command(pydicom_command(
        AffectedSOPClassUID="1.2.840.10008.5.1.4.1.1.2", CommandField=1, MessageID=9, Priority=0,
        CommandDataSetType=0, AffectedSOPInstanceUID="1.2.3.45"))
    data = dimse.response(request, dimse.C_STORE_RSP, 0xA700, "bus unavailable")
    rsp = decode(io.BytesIO(data), True, True)
    assert rsp.CommandGroupLength == len(data) - 12
    assert (rsp.CommandField, rsp.MessageIDBeingRespondedTo, rsp.Status) == (0x8001, 9, 0xA700)
    assert rsp.CommandDataSetType == 0x0101 and rsp.ErrorComment == "bus unavailable"
    assert rsp.AffectedSOPInstanceUID == "1.2.3.45" and rsp.AffectedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert [int(tag) for tag in rsp.keys()] == sorted(int(tag) for tag in rsp.keys())


@pytest.mark.parametrize("data", [b"\x00\x00\x00", b"\x08\x00\x16\x00\x04\x00\x00\x00abcd",
                                  b"\x00\x00\x00\x01\xff\xff\x00\x00", pydicom_command(MessageID=1)])
def test_malformed_command_sets_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        dimse.decode_command(data)
