"""HL7 v2 messages read in their own character set, MLLP frames, and ADT messages read as patient changes: the
reference samples (IPF, CRLF and CR segment ends) and hostile input."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.core.events import UndecodableEvent
from gateway.hl7 import adt, mllp
from gateway.hl7.message import Hl7Error, acknowledgment, header_of, parse

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "ref" / "hl7"
IPF_AUTHORITY = "2.16.840.1.113883.3.37.4.1.1.2.1.1"


def message(*segments: str, charset: str = "") -> bytes:
    header = f"MSH|^~\\&|HIS|HOSP|GW|D|20261130||ADT^A08^ADT_A01|C1|P|2.5|||||FIN|{charset}".rstrip("|")
    return "\r".join((header, *segments)).encode("latin-1" if charset == "8859/1" else "utf-8")


def test_msh_18_decides_how_the_bytes_are_read() -> None:
    name = "PID|1||010594Y9032^^^&1.2.246.21&ISO||Mäkelä^Jyrki"
    latin = parse(message(name, charset="8859/1"))
    utf8 = parse(message(name, charset="UNICODE UTF-8"))
    assert latin.segment("PID").value(5) == utf8.segment("PID").value(5) == "Mäkelä"  # type: ignore[union-attr]
    assert (latin.dicom_charset, utf8.dicom_charset) == ("ISO_IR 100", "ISO_IR 192")
    with pytest.raises(Hl7Error) as refused:
        parse(message(name))  # no MSH-18: ASCII by default, and ä is not ASCII
    assert refused.value.code == 102
    assert parse(message(name), "8859/1").segment("PID").value(5, 2) == "Jyrki"  # type: ignore[union-attr]
    with pytest.raises(Hl7Error) as unknown:
        parse(message(name, charset="EBCDIC"))
    assert (unknown.value.code, unknown.value.acknowledgment) == (103, "AR")


def test_a_message_that_does_not_decode_is_still_answered_to_its_sender_with_its_control_id() -> None:
    raw = message("PID|1||1^^^H||Mäkelä", charset="8859/1").replace(b"8859/1", b"")  # latin-1 bytes, no MSH-18
    with pytest.raises(Hl7Error) as refused:
        parse(raw)
    header = header_of(raw)
    assert header is not None and header.control_id == "C1" and header.sender == ("HIS", "HOSP")
    ack = acknowledgment(header, "AE", refused.value, control_id="A3").split(b"\r")
    assert ack[1].startswith(b"MSA|AE|C1|") and ack[0].split(b"|")[4] == b"HIS"
    assert header_of(b"garbage") is None


def test_escapes_repetitions_components_and_the_hl7_null() -> None:
    parsed = parse(message("PID|1||A\\F\\B^^^X&1.2.3&ISO~C^^^Y||\"\"||\\X41\\\\E\\x"))
    pid = parsed.segment("PID")
    assert pid is not None
    assert pid.value(3) == "A|B" and pid.value(3, 4, 2) == "1.2.3" and pid.value(3, repetition=1) == "C"
    assert pid.value(5) == '""' and pid.value(7) == "A\\x" and pid.value(9) == ""


@pytest.mark.parametrize("path", sorted((SAMPLES / "samples" / "ipf").glob("*.hl7")), ids=lambda p: p.name)
def test_every_reference_sample_parses(path: Path) -> None:
    parsed = parse(path.read_bytes(), "8859/1")
    assert parsed.header.name == "MSH" and parsed.control_id and parsed.type[0] == "ADT"


def test_the_reference_a40_reads_as_a_merge_into_pid_3() -> None:
    parsed = parse((SAMPLES / "samples" / "ipf" / "A40.hl7").read_bytes())
    change = adt.change_of(parsed, {IPF_AUTHORITY})
    assert change.trigger == "A40"
    assert change.patient == adt.PatientKey("142025", IPF_AUTHORITY)
    assert change.prior == adt.PatientKey("704686", IPF_AUTHORITY)
    assert change.attributes == {"PatientName": "LENNON^JOHN", "PatientBirthDate": "19730811", "PatientSex": "M"}
    assert change.message_key == "ICW_MPI|ICW|00000000000396814"
    assert adt.PatientChange.from_json(change.to_json()) == change


def test_person_names_dates_and_sex_follow_dicom_and_the_null_clears() -> None:
    def change(pid: str) -> adt.PatientChange:
        return adt.change_of(parse(message(pid)), {"H"})

    assert change("PID|1||1^^^H||Family^Given^Middle^Jr^Dr").attributes["PatientName"] == "Family^Given^Middle^Dr^Jr"
    legal = change("PID|1||1^^^H||Alias^A^^^^^A~Legal^L^^^^^L").attributes
    assert legal["PatientName"] == "Legal^L"
    assert change("PID|1||1^^^H||||").attributes == {}  # empty fields leave the stored values alone
    assert change('PID|1||1^^^H||""||""|""').attributes == {"PatientName": "", "PatientBirthDate": "",
                                                              "PatientSex": ""}
    assert change("PID|1||1^^^H||X||197001011230|U").attributes == {
        "PatientName": "X", "PatientBirthDate": "19700101", "PatientSex": ""}


def test_the_hetu_identifier_is_preferred_and_checked() -> None:
    both = "PID|1||L1^^^H~010594Y9032^^^&1.2.246.21&ISO^NNFIN"
    change = adt.change_of(parse(message(both)), {"H", "1.2.246.21"}, test_identities=True)
    assert change.patient == adt.PatientKey("010594Y9032", "1.2.246.21")
    with pytest.raises(Hl7Error, match="test identity"):
        adt.change_of(parse(message(both)), {"H", "1.2.246.21"})
    with pytest.raises(Hl7Error) as wrong:
        adt.change_of(parse(message("PID|1||010594Y9033^^^&1.2.246.21&ISO")), {"1.2.246.21"}, True)
    assert (wrong.value.code, wrong.value.location) == (102, "PID^1^3^1^1")


def test_acknowledgment_shape() -> None:
    request = parse(message("PID|1||1^^^H", charset="8859/1"))
    ack = acknowledgment(request, "AE", Hl7Error(205, "MRG^1^1", "prior | matches"), control_id="A1").decode("latin-1")
    msh, msa, err = ack.rstrip("\r").split("\r")
    fields = msh.split("|")
    assert (fields[2], fields[3], fields[4], fields[5]) == ("GW", "D", "HIS", "HOSP")
    assert fields[8] == "ACK^A08^ACK" and fields[9] == "A1" and fields[11] == "2.5" and fields[17] == "8859/1"
    assert msa == "MSA|AE|C1|prior \\F\\ matches"
    assert err == "ERR||MRG^1^1|205^Duplicate key identifier^HL70357|E||||prior \\F\\ matches"
    bare = acknowledgment(None, "AR", Hl7Error(100, "MSH^1", "no MSH"), control_id="A2", application="DICOMGW")
    assert bare.split(b"\r")[1] == b"MSA|AR||no MSH"


@pytest.mark.parametrize("garbage", [
    b"", b"MSH", b"XYZ|^~\\&|", b"MSH|^^^^|", b"MSH|^~\\&|A\rbad segment", b"\x00" * 100,
    b"MSH|^~\\&|" + bytes(range(256)),
])
def test_garbage_is_refused_with_an_hl7_error_not_a_crash(garbage: bytes) -> None:
    try:
        parsed = parse(garbage)
    except Hl7Error:
        return
    with pytest.raises(Hl7Error):
        adt.change_of(parsed, {"H"})


def test_a_record_that_is_not_an_adt_record_is_undecodable() -> None:
    with pytest.raises(UndecodableEvent):
        adt.AdtRecord.decode(b"MSH|", [("gw-adt", b"{not json")])
    with pytest.raises(UndecodableEvent):
        adt.AdtRecord.decode(b"MSH|", [])


async def frames(data: list[bytes], limit: int = 100) -> list[mllp.Frame]:
    reader = asyncio.StreamReader()
    for piece in data:
        reader.feed_data(piece)
    reader.feed_eof()
    frames = mllp.FrameReader(reader, limit)
    found = []
    while (frame := await frames.next()) is not None:
        found.append(frame)
    return found


async def test_frames_across_writes_garbage_between_and_an_oversized_one_dropped() -> None:
    got = await frames([b"junk\x0bone", b"\x1c", b"\r\x0btwo\x1c\r", b"x\x0b" + b"y" * 500 + b"\x1c\r\x0bthree\x1c\r",
                        b"\x0bcut off"])
    assert [(f.message, f.oversized, f.skipped) for f in got] == [
        (b"one", 0, 4), (b"two", 0, 0), (b"", 500, 1), (b"three", 0, 0)]
    one_byte_writes = [bytes([b]) for b in b"\x0babc\x1c\r"]
    assert [f.message for f in await frames(one_byte_writes)] == [b"abc"]


@pytest.mark.parametrize(("pid", "code"), [
    ("PID|1||1^^^H||Doe\\Xzz\\^John", None),  # an escape this parser does not know is dropped, never a crash
    ("PID|1||1^^^H||Do\\E\\e^Jo", 102),  # a backslash would split the DICOM name into two values
    ("PID|1||1^^^H||Do\\S\\e^Jo", 102),  # an escaped ^ would add a component
    ("PID|1||1^^^H||" + "A" * 65, 102),  # a DICOM person name group holds 64 characters
    ("PID|1||1^^^H||X||20241399", 102),  # not a date
    ("PID|1||1^^^H||X||198001", 102),  # not a whole date
    ("PID|1||1^^^H||X\rPID|2||2^^^H", 100),  # two patients in one A08
    ("PID|1||١٣١٠٥٢-٣٠٨T^^^&1.2.246.21&ISO", 102),  # Arabic-Indic digits are not a personal identity code
])
def test_values_a_dicom_header_cannot_hold_are_refused(pid: str, code: int | None) -> None:
    raw = f"MSH|^~\\&|HIS|H|GW|D|2026||ADT^A08|C1|P|2.5|||||FIN|UNICODE UTF-8\r{pid}".encode()
    if code is None:
        assert adt.change_of(parse(raw), {"H"}).attributes["PatientName"] == "Doe^John"
        return
    with pytest.raises(Hl7Error) as refused:
        adt.change_of(parse(raw), {"H", "1.2.246.21"}, test_identities=True)
    assert refused.value.code == code


def test_hex_escapes_are_bytes_in_the_message_character_set() -> None:
    raw = "MSH|^~\\&|HIS|H|GW|D|2026||ADT^A08|C1|P|2.5|||||FIN|UNICODE UTF-8\rPID|1||1^^^H||M\\XC3A4\\kel"
    assert parse(raw.encode()).segment("PID").value(5) == "Mäkel"  # type: ignore[union-attr]


def test_an_unknown_character_set_or_an_old_version_still_gets_a_fitting_answer() -> None:
    raw = b"MSH|^~\\&|HIS|H|GW|D|2026||ADT^A08|C9|P|2.3.1|||||FIN|UNICODE UTF-16\rPID|1||1^^^H"
    with pytest.raises(Hl7Error) as refused:
        parse(raw)
    header = header_of(raw)
    assert header is not None and header.control_id == "C9"
    ack = acknowledgment(header, "AR", refused.value, control_id="A").decode().split("\r")
    assert ack[1].startswith("MSA|AR|C9|")
    assert ack[2] == "ERR|MSH^1^18^103&Table value not found&HL70357"  # before v2.5: ERR-1 only


@pytest.mark.parametrize("trigger", ["A01", "A04", "A05", "A28"])
def test_admissions_and_registrations_update_the_patient_too(trigger: str) -> None:
    raw = f"MSH|^~\\&|HIS|H|GW|D|2026||ADT^{trigger}|C1|P|2.5\rPID|1||1^^^H||Name^Given".encode()
    change = adt.change_of(parse(raw), {"H"})
    assert (change.trigger, change.prior, change.attributes) == (trigger, None, {"PatientName": "Name^Given"})
