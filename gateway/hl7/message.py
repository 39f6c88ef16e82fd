"""HL7 v2 messages as bytes in and out: decoded by the character set their MSH-18 names, split into segments,
fields, repetitions and components, and acknowledged in original mode.

The character set is read from the raw bytes before anything is decoded (the delimiters and MSH fields are
ASCII in every character set HL7 allows), because a message's names are only right when decoded the way its
sender encoded them; python-hl7 and hl7apy decode with one fixed encoding per connection. Error texts never
quote a value: they name the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

CHARSETS: dict[str, tuple[str, str]] = {
    "ASCII": ("ascii", ""),
    "8859/1": ("iso8859_1", "ISO_IR 100"),
    "8859/2": ("iso8859_2", "ISO_IR 101"),
    "8859/3": ("iso8859_3", "ISO_IR 109"),
    "8859/4": ("iso8859_4", "ISO_IR 110"),
    "8859/5": ("iso8859_5", "ISO_IR 144"),
    "8859/6": ("iso8859_6", "ISO_IR 127"),
    "8859/7": ("iso8859_7", "ISO_IR 126"),
    "8859/8": ("iso8859_8", "ISO_IR 138"),
    "8859/9": ("iso8859_9", "ISO_IR 148"),
    "8859/15": ("iso8859_15", "ISO_IR 203"),
    "UNICODE UTF-8": ("utf-8", "ISO_IR 192"),
}
"""HL7 table 0211 value -> (Python codec, DICOM Specific Character Set), after dcm4chee's mapping."""

ACCEPT, ERROR, REJECT = "AA", "AE", "AR"
_SEGMENT_BREAK = re.compile(r"\r\n|\r|\n")
_ESCAPE = re.compile(r"\\(F|S|T|R|E|X[0-9A-Fa-f]*|\.br|[^\\]*)\\")
_HEX = re.compile(r"X(?:[0-9A-Fa-f]{2})+")


class Hl7Error(Exception):
    """What cannot be accepted, as an ERR segment says it: HL7 table 0357 code, location, text (no values)."""

    def __init__(self, code: int, location: str, text: str, acknowledgment: str = ERROR) -> None:
        super().__init__(text)
        self.code = code
        self.location = location
        self.text = text
        self.acknowledgment = acknowledgment


_CODE_NAMES = {100: "Segment sequence error", 101: "Required field missing", 102: "Data type error",
               103: "Table value not found", 200: "Unsupported message type", 201: "Unsupported event code",
               202: "Unsupported processing id", 203: "Unsupported version id", 204: "Unknown key identifier",
               205: "Duplicate key identifier", 206: "Application record locked", 207: "Application internal error"}


@dataclass(frozen=True, slots=True)
class Segment:
    name: str
    fields: tuple[str, ...]
    """Raw field values; index n is field n (for MSH, index 1 is the field separator itself)."""
    delimiters: Delimiters

    def field(self, number: int) -> str:
        return self.fields[number] if number < len(self.fields) else ""

    def repetitions(self, number: int) -> list[str]:
        raw = self.field(number)
        return raw.split(self.delimiters.repetition) if raw else []

    def value(self, number: int, component: int = 1, subcomponent: int = 1, repetition: int = 0) -> str:
        """One leaf value, unescaped; ``""`` (the HL7 null) is returned as the two quote characters."""
        occurrences = self.repetitions(number)
        if repetition >= len(occurrences):
            return ""
        return self.delimiters.leaf(occurrences[repetition], component, subcomponent)


@dataclass(frozen=True, slots=True)
class Delimiters:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    codec: str = "ascii"
    """The message's character set: what a hex escape (``\\Xhh..\\``) is bytes in."""

    def leaf(self, raw: str, component: int = 1, subcomponent: int = 1) -> str:
        components = raw.split(self.component)
        if component > len(components):
            return ""
        parts = components[component - 1].split(self.subcomponent)
        return self.unescape(parts[subcomponent - 1]) if subcomponent <= len(parts) else ""

    def unescape(self, value: str) -> str:
        if self.escape not in value:
            return value
        pattern = _ESCAPE if self.escape == "\\" else re.compile(
            re.escape(self.escape) + r"(F|S|T|R|E|X[0-9A-Fa-f]*|\.br|[^" + re.escape(self.escape) + r"]*)"
            + re.escape(self.escape))
        replacements = {"F": self.field, "S": self.component, "T": self.subcomponent, "R": self.repetition,
                        "E": self.escape, ".br": "\n"}

        def replace(match: re.Match[str]) -> str:
            code = match.group(1)
            if code in replacements:
                return replacements[code]
            if _HEX.fullmatch(code):
                try:
                    return bytes.fromhex(code[1:]).decode(self.codec)
                except UnicodeDecodeError:
                    raise Hl7Error(102, "", "a hex escape is not text in the message's character set") from None
            return ""  # an escape this parser does not know (highlighting, .sp, ...) is dropped

        return pattern.sub(replace, value)

    def escape_text(self, value: str) -> str:
        for char, code in ((self.escape, "E"), (self.field, "F"), (self.component, "S"),
                           (self.subcomponent, "T"), (self.repetition, "R")):
            value = value.replace(char, f"{self.escape}{code}{self.escape}")
        return value.replace("\r", " ").replace("\n", " ")


@dataclass(frozen=True, slots=True)
class Message:
    segments: tuple[Segment, ...]
    charset: str
    """The HL7 name of the character set the message was decoded with (MSH-18, or the configured default)."""
    delimiters: Delimiters

    @property
    def header(self) -> Segment:
        return self.segments[0]

    def segment(self, name: str) -> Segment | None:
        return next((segment for segment in self.segments if segment.name == name), None)

    @property
    def control_id(self) -> str:
        return self.header.value(10)

    @property
    def type(self) -> tuple[str, str]:
        """MSH-9 message type and trigger event."""
        return self.header.value(9, 1).upper(), self.header.value(9, 2).upper()

    @property
    def sender(self) -> tuple[str, str]:
        """MSH-3 sending application and MSH-4 sending facility, first components (namespace IDs)."""
        return self.header.value(3), self.header.value(4)

    @property
    def dicom_charset(self) -> str:
        return CHARSETS[self.charset][1]


def _first_line(raw: bytes) -> str:
    """The MSH segment as ISO 8859-1, which decodes any byte: its delimiters and fields are ASCII in every set."""
    return _SEGMENT_BREAK.split(raw[:4096].decode("latin-1"), maxsplit=1)[0]


def charset_of(raw: bytes, default: str) -> str:
    """MSH-18's first repetition (HL7 table 0211) read from the raw bytes, or ``default`` when it is empty."""
    header = _first_line(raw)
    if not header.startswith("MSH") or len(header) < 8:
        raise Hl7Error(100, "MSH^1", "the message does not start with an MSH segment", REJECT)
    separator, repetition = header[3], header[5]
    fields = header.split(separator)
    named = fields[17].split(repetition)[0].strip() if len(fields) > 17 else ""
    name = named.upper() or default
    if name not in CHARSETS:
        raise Hl7Error(103, "MSH^1^18^1^1", "character set (MSH-18) is not one this gateway decodes", REJECT)
    return name


def parse(raw: bytes, default_charset: str = "ASCII") -> Message:
    """The message in ``raw``; raises Hl7Error when it is not an HL7 v2 message this parser can read."""
    charset = charset_of(raw, default_charset)
    try:
        text = raw.decode(CHARSETS[charset][0])
    except UnicodeDecodeError:
        raise Hl7Error(102, "MSH^1^18^1^1", f"the message has bytes that are not {charset} "
                       "(MSH-18 names the character set; without it the configured default applies)") from None
    lines = [line for line in _SEGMENT_BREAK.split(text.strip("\r\n\x00 ")) if line.strip()]
    header = lines[0]
    encoding = header[4:].split(header[3], 1)[0]
    if not 3 <= len(encoding) <= 5 or len({header[3], *encoding}) != len(encoding) + 1:
        raise Hl7Error(102, "MSH^1^2^1^1", "MSH-2 does not give distinct encoding characters")
    delimiters = Delimiters(header[3], encoding[0], encoding[1], encoding[2],
                            encoding[3] if len(encoding) > 3 else "&", CHARSETS[charset][0])
    segments = []
    for line in lines:
        name = line[:3]
        if not re.fullmatch(r"[A-Z][A-Z0-9]{2}", name):
            raise Hl7Error(100, "", "a segment does not start with a segment ID (three letters or digits)")
        if name == "MSH":
            fields = ("MSH", delimiters.field, *line[4:].split(delimiters.field))
        else:
            fields = tuple(line.split(delimiters.field))
        segments.append(Segment(name, fields, delimiters))
    if segments[0].name != "MSH":
        raise Hl7Error(100, "MSH^1", "the message does not start with an MSH segment", REJECT)
    return Message(tuple(segments), charset, delimiters)


def header_of(raw: bytes) -> Message | None:
    """Just the MSH of a message that did not parse (or did not fit), read as ISO 8859-1 (which decodes any byte)
    whatever its MSH-18 says, so that its refusal still names its control ID and goes back to its sender; None
    when there is no MSH to read."""
    first = _first_line(raw)
    if not first.startswith("MSH") or len(first) < 8:
        return None
    fields = first[4:].split(first[3])
    if len(fields) > 16:
        fields[16] = ""  # MSH-18: the acknowledgment is written in ASCII
    try:
        parsed = parse((first[:4] + first[3].join(fields)).encode("latin-1"), "8859/1")
        parsed.header.value(10)
    except Hl7Error:
        return None
    return Message(parsed.segments, "ASCII", parsed.delimiters)


def acknowledgment(request: Message | None, code: str, error: Hl7Error | None = None, *, control_id: str,
                   application: str = "", facility: str = "", now: datetime | None = None) -> bytes:
    """An original-mode ACK (MSH, MSA, and ERR when ``error``), in the request's character set and delimiters.

    Without a request (the frame was not a message) the ACK has our own MSH and an empty MSA-2."""
    d = request.delimiters if request is not None else Delimiters()
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    if request is not None:
        header = request.header
        sender = (header.field(5), header.field(6))
        receiver = (header.field(3), header.field(4))
        trigger = request.type[1]
        version = header.field(12) or "2.5"
        processing = header.field(11) or "P"
        charset = request.charset if request.charset != "ASCII" else ""
    else:
        sender, receiver, trigger, version, processing, charset = ("", ""), ("", ""), "", "2.5", "P", ""
    sender = (sender[0] or d.escape_text(application), sender[1] or d.escape_text(facility))
    message_type = d.component.join(("ACK", trigger, "ACK")) if trigger else "ACK"
    encoding = d.component + d.repetition + d.escape + d.subcomponent
    msh = ["MSH", encoding, *sender, *receiver, stamp, "", message_type, d.escape_text(control_id), processing,
           version, "", "", "", "", "", charset]
    fields = [d.field.join(msh).rstrip(d.field)]
    msa = ["MSA", code, d.escape_text(request.control_id) if request is not None else ""]
    if error is not None:
        msa.append(d.escape_text(error.text))
    fields.append(d.field.join(msa))
    if error is not None:
        location = d.component.join(error.location.split("^"))
        name = _CODE_NAMES.get(error.code, "")
        err_code = d.component.join((str(error.code), name, "HL70357"))
        if version.startswith(("2.1", "2.2", "2.3", "2.4")):  # before 2.5 ERR has only ERR-1 (ELD)
            segment, _, rest = error.location.partition("^")
            sequence, _, position = rest.partition("^")
            eld = d.component.join((segment, sequence, position.split("^")[0],
                                    d.subcomponent.join((str(error.code), name, "HL70357"))))
            fields.append(d.field.join(("ERR", eld)))
        else:
            fields.append(d.field.join(("ERR", "", location, err_code, "E", "", "", "", d.escape_text(error.text))))
    text = "\r".join(fields) + "\r"
    codec = CHARSETS.get(request.charset if request is not None else "ASCII", ("ascii", ""))[0]
    return text.encode(codec, "replace")
