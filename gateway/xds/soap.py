"""SOAP 1.2 + WS-Addressing 1.0 + MTOM/XOP framing for the XDS.b / XDS-I.b web services (ITI TF-2 Appendix V).

Knows envelopes, headers and MIME parts, never ebRIM: the payload is whatever element the caller puts in the Body.
Every XML parse goes through one hardened parser (no network, no entity expansion, no DTD, no huge trees).
"""

from __future__ import annotations

import base64
import binascii
import copy
import quopri
import re
import uuid
from dataclasses import dataclass
from urllib.parse import quote, unquote

from lxml import etree

NS: dict[str, str] = {
    "soap": "http://www.w3.org/2003/05/soap-envelope",
    "wsa": "http://www.w3.org/2005/08/addressing",
    "xop": "http://www.w3.org/2004/08/xop/include",
    "rim": "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0",
    "rs": "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0",
    "lcm": "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0",
    "query": "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0",
    "xds": "urn:ihe:iti:xds-b:2007",
    "xdsi": "urn:ihe:rad:xdsi-b:2009",
}

ACTIONS: dict[str, str] = {
    "ITI-41": "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b",
    "ITI-41-response": "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-bResponse",
    "ITI-42": "urn:ihe:iti:2007:RegisterDocumentSet-b",
    "ITI-42-response": "urn:ihe:iti:2007:RegisterDocumentSet-bResponse",
    "ITI-18": "urn:ihe:iti:2007:RegistryStoredQuery",
    "ITI-18-response": "urn:ihe:iti:2007:RegistryStoredQueryResponse",
    "ITI-57": "urn:ihe:iti:2010:UpdateDocumentSet",
    "ITI-57-response": "urn:ihe:iti:2010:UpdateDocumentSetResponse",
    "ITI-43": "urn:ihe:iti:2007:RetrieveDocumentSet",
    "ITI-43-response": "urn:ihe:iti:2007:RetrieveDocumentSetResponse",
    # RAD-68 is the ITI-41 message with XDS-I.b metadata (RAD TF-3 4.68.4.1.2)
    "RAD-68": "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b",
    "RAD-68-response": "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-bResponse",
    # RAD-69 answers with the ITI-43 response message and action (RAD TF-3 4.69.4.2)
    "RAD-69": "urn:ihe:rad:2009:RetrieveImagingDocumentSet",
    "RAD-69-response": "urn:ihe:iti:2007:RetrieveDocumentSetResponse",
}

ANONYMOUS = "http://www.w3.org/2005/08/addressing/anonymous"
FAULT_ACTION = "http://www.w3.org/2005/08/addressing/soap/fault"
SOAP_CONTENT_TYPE = "application/soap+xml; charset=UTF-8"
FAULT_CODES = frozenset({"Sender", "Receiver", "MustUnderstand", "VersionMismatch", "DataEncodingUnknown"})

_S = "{%s}" % NS["soap"]
_A = "{%s}" % NS["wsa"]
_XOP_INCLUDE = "{%s}Include" % NS["xop"]
_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False, dtd_validation=False,
    remove_comments=False,
)
_PARAM = re.compile(r';\s*([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')
BLANK_LINE = re.compile(rb"\r?\n\r?\n")
"""Between a MIME part's headers and its content."""
_CONTENT_ID = re.compile(r"[!#-;=?-~]+")  # printable ASCII without space, '"', '<', '>'


class SoapError(Exception):
    """A message that is not well-formed SOAP 1.2 / WS-Addressing / MTOM; the reason is safe to send back."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Attachment:
    content_id: str  # without the angle brackets of the Content-ID header
    content_type: str
    data: bytes


def parse_xml(data: bytes) -> etree._Element:
    """Parse untrusted XML: entities unexpanded, no network, no DTD at all (SOAP 1.2 Part 1 §5 forbids one)."""
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise SoapError(f"XML not well-formed: {exc}") from None
    if root.getroottree().docinfo.doctype:  # type: ignore[union-attr]  # lxml-stubs lack DocInfo.doctype
        raise SoapError("a SOAP message must not contain a document type declaration")
    return root


def envelope(
    action: str,
    body: etree._Element,
    *,
    to: str | None = None,
    message_id: str | None = None,
    relates_to: str | None = None,
) -> tuple[etree._Element, str]:
    """A SOAP 1.2 envelope with the WS-A headers IHE requires; ``relates_to`` makes it a response.

    ``body`` is moved (not copied) into the envelope's Body.
    """
    return _envelope(action, body, to=to, message_id=message_id, relates_to=relates_to,
                     reply_to=relates_to is None)


def fault(code: str, reason: str, *, relates_to: str | None = None) -> etree._Element:
    """A SOAP 1.2 Fault envelope, for what cannot be answered with a RegistryResponse (not SOAP, unknown action)."""
    if code not in FAULT_CODES:
        raise ValueError(f"not a SOAP 1.2 fault code: {code}")
    body = etree.Element(_S + "Fault", nsmap={"soap": NS["soap"]})
    etree.SubElement(etree.SubElement(body, _S + "Code"), _S + "Value").text = f"soap:{code}"
    text = etree.SubElement(etree.SubElement(body, _S + "Reason"), _S + "Text")
    text.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
    text.text = reason
    return _envelope(FAULT_ACTION, body, to=None, message_id=None, relates_to=relates_to, reply_to=False)[0]


def _envelope(action: str, body: etree._Element, *, to: str | None, message_id: str | None,
              relates_to: str | None, reply_to: bool) -> tuple[etree._Element, str]:
    message_id = message_id or f"urn:uuid:{uuid.uuid4()}"
    env = etree.Element(_S + "Envelope", nsmap={"soap": NS["soap"], "wsa": NS["wsa"]})
    header = etree.SubElement(env, _S + "Header")
    etree.SubElement(header, _A + "Action", {_S + "mustUnderstand": "1"}).text = action
    etree.SubElement(header, _A + "MessageID").text = message_id
    if reply_to:
        etree.SubElement(etree.SubElement(header, _A + "ReplyTo"), _A + "Address").text = ANONYMOUS
    if relates_to is not None:
        etree.SubElement(header, _A + "RelatesTo").text = relates_to
    if to is not None:
        etree.SubElement(header, _A + "To", {_S + "mustUnderstand": "1"}).text = to
    etree.SubElement(env, _S + "Body").append(body)
    return env, message_id


def include(parent: etree._Element, content_id: str) -> None:
    """Make ``parent`` refer to the MIME part ``content_id`` (XOP: the Include is the element's only content)."""
    parent.text = None
    for child in list(parent):
        parent.remove(child)
    etree.SubElement(parent, _XOP_INCLUDE, {"href": "cid:" + quote(content_id, safe="@.-_~!$&'()*+,;=:")},
                     nsmap={"xop": NS["xop"]})


def serialize(env: etree._Element) -> bytes:
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def plain(env: etree._Element) -> tuple[bytes, str]:
    """A SOAP message without attachments (documents inline as base64)."""
    return serialize(env), SOAP_CONTENT_TYPE


def mtom(env: etree._Element, attachments: list[Attachment]) -> tuple[bytes, str]:
    """An MTOM/XOP multipart/related package: the envelope as root part, then one binary part per attachment."""
    for a in attachments:
        if not _CONTENT_ID.fullmatch(a.content_id):
            raise ValueError(f"Content-ID must be printable ASCII without <>, spaces or quotes: {a.content_id!r}")
    root_id = f"root.{uuid.uuid4()}@dicom-gateway"
    xml = serialize(env)
    boundary = f"MIMEBoundary_{uuid.uuid4().hex}"
    while any(boundary.encode() in part for part in [xml, *(a.data for a in attachments)]):
        boundary = f"MIMEBoundary_{uuid.uuid4().hex}"
    parts = [_part('application/xop+xml; charset=UTF-8; type="application/soap+xml"', root_id, xml)]
    parts += [_part(a.content_type, a.content_id, a.data) for a in attachments]
    delimiter = b"--" + boundary.encode()
    body = b"".join(delimiter + b"\r\n" + part + b"\r\n" for part in parts) + delimiter + b"--\r\n"
    content_type = (f'multipart/related; boundary="{boundary}"; type="application/xop+xml"; '
                    f'start="<{root_id}>"; start-info="application/soap+xml"')
    return body, content_type


def _part(content_type: str, content_id: str, data: bytes) -> bytes:
    headers = (f"Content-Type: {content_type}\r\nContent-Transfer-Encoding: binary\r\n"
               f"Content-ID: <{content_id}>\r\n\r\n")
    return headers.encode("ascii") + data


@dataclass(frozen=True)
class SoapMessage:
    envelope: etree._Element
    attachments: dict[str, Attachment]
    action: str
    message_id: str
    relates_to: str

    def body(self) -> etree._Element:
        """The payload: first element child of soap:Body."""
        return _payload(self.envelope)

    def fault(self) -> tuple[str, str] | None:
        """(code, reason) when the payload is a SOAP Fault, else None."""
        payload = self.body()
        if payload.tag != _S + "Fault":
            return None
        code = (payload.findtext(f"{_S}Code/{_S}Value") or "").strip()
        return code.rpartition(":")[2], (payload.findtext(f"{_S}Reason/{_S}Text") or "").strip()

    def resolved(self) -> etree._Element:
        """A deep copy of the envelope with every xop:Include replaced by its attachment as base64 text."""
        env = copy.deepcopy(self.envelope)
        for inc in list(env.iter(_XOP_INCLUDE)):
            parent = inc.getparent()
            if parent is None:
                raise SoapError("xop:Include must be inside the element it stands for, not the message root")
            data = self._attachment(inc).data
            parent.remove(inc)
            parent.text = base64.b64encode(data).decode("ascii")
        return env

    def document(self, element: etree._Element) -> bytes:
        """The bytes of an xds:Document (or any base64Binary element), inline or by xop:Include."""
        inc = element.find(_XOP_INCLUDE)
        if inc is not None:
            return self._attachment(inc).data
        text = "".join((element.text or "").split())
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise SoapError("document content is neither xop:Include nor valid base64") from None

    def _attachment(self, inc: etree._Element) -> Attachment:
        href = inc.get("href", "")
        if not href.startswith("cid:"):
            raise SoapError(f"xop:Include href is not a cid: URL: {href!r}")
        found = self.attachments.get(unquote(href[4:])) or self.attachments.get(href[4:])
        if found is None:
            raise SoapError(f"xop:Include refers to a missing MIME part: {href}")
        return found


def _payload(env: etree._Element) -> etree._Element:
    body = env.find(_S + "Body")
    payload = None if body is None else next((c for c in body if isinstance(c.tag, str)), None)
    if payload is None:
        raise SoapError("SOAP Body has no payload element")
    return payload


def media_type(content_type: str) -> tuple[str, dict[str, str]]:
    """(lower-case type/subtype, parameters with lower-case names and unquoted values) of a Content-Type value."""
    head, _, rest = content_type.partition(";")
    params = {}
    for name, value in _PARAM.findall(";" + rest):
        if value.startswith('"'):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[name.lower()] = value
    return head.strip().lower(), params


def parse(body: bytes, content_type: str) -> SoapMessage:
    """Read a plain SOAP 1.2 message or an MTOM/XOP package; SoapError says what is wrong with it."""
    kind, params = media_type(content_type)
    attachments: dict[str, Attachment] = {}
    if kind == "multipart/related":
        boundary = params.get("boundary")
        if not boundary:
            raise SoapError("multipart/related without a boundary parameter")
        parts = _split(body, boundary.encode("latin-1"))
        start = params.get("start", "").strip().strip("<>")
        root_index = next((i for i, p in enumerate(parts) if p.content_id == start), None) if start else 0
        if root_index is None:
            raise SoapError(f"no MIME part has the start Content-ID <{start}>")
        root = parts.pop(root_index)
        root_kind, _ = media_type(root.content_type)
        if root_kind not in ("application/xop+xml", "application/soap+xml"):
            raise SoapError(f"root MIME part is {root_kind or 'untyped'}, expected application/xop+xml")
        xml = root.data
        for p in parts:
            if p.content_id in attachments:
                raise SoapError(f"two MIME parts with Content-ID <{p.content_id}>")
            attachments[p.content_id] = p
    elif kind == "application/soap+xml":
        xml = body
    else:
        raise SoapError(f"Content-Type {kind or 'missing'}: expected application/soap+xml or multipart/related")
    env = parse_xml(xml)
    if env.tag != _S + "Envelope":
        raise SoapError(f"root element is {env.tag}, expected a SOAP 1.2 Envelope")
    message = SoapMessage(
        envelope=env,
        attachments=attachments,
        action=(env.findtext(f"{_S}Header/{_A}Action") or "").strip(),
        message_id=(env.findtext(f"{_S}Header/{_A}MessageID") or "").strip(),
        relates_to=(env.findtext(f"{_S}Header/{_A}RelatesTo") or "").strip(),
    )
    if message.fault() is None and not message.action:
        raise SoapError("WS-Addressing Action header missing")
    for inc in env.iter(_XOP_INCLUDE):
        message._attachment(inc)
    return message


def _split(body: bytes, boundary: bytes) -> list[Attachment]:
    """MIME parts of a multipart body (RFC 2046 §5.1.1), tolerating LF line ends and transport padding."""
    delimiter = b"--" + boundary
    if body.startswith(delimiter):
        pos = 0
    else:
        pos = body.find(b"\n" + delimiter)
        if pos < 0:
            raise SoapError("multipart body does not contain its boundary")
        pos += 1
    parts = []
    while True:
        pos += len(delimiter)
        if body[pos:pos + 2] == b"--":
            break
        line_end = body.find(b"\n", pos)
        if line_end < 0 or body[pos:line_end].strip():
            raise SoapError("malformed MIME boundary line")
        start = line_end + 1
        end = body.find(b"\n" + delimiter, start)
        if end < 0:
            raise SoapError("multipart body is not closed by its final boundary")
        content = body[start:end - 1 if end > start and body[end - 1:end] == b"\r" else end]
        parts.append(_read_part(content))
        pos = end + 1
    if not parts:
        raise SoapError("multipart body has no parts")
    return parts


def part_headers(head: bytes, strict: bool = True) -> dict[str, str]:
    """A MIME part's headers by lower-case name (folded lines joined); ``strict`` refuses a line that is
    neither a header nor a continuation, which a reader that passes the part on to ``parse`` need not."""
    headers: dict[str, str] = {}
    name = ""
    for line in head.decode("latin-1").replace("\r\n", "\n").split("\n"):
        if line[:1] in (" ", "\t") and name:
            headers[name] += " " + line.strip()
        elif ":" in line:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            headers[name] = value.strip()
        elif strict and line.strip():
            raise SoapError(f"malformed MIME part header line: {line[:80]!r}")
    return headers


def _read_part(raw: bytes) -> Attachment:
    if raw.startswith((b"\r\n", b"\n")):
        head, data = b"", raw[raw.index(b"\n") + 1:]
    else:
        blank = BLANK_LINE.search(raw)
        if blank is None:
            raise SoapError("MIME part without a blank line after its headers")
        head, data = raw[:blank.start()], raw[blank.end():]
    headers = part_headers(head)
    encoding = headers.get("content-transfer-encoding", "binary").lower()
    if encoding == "base64":
        try:
            data = base64.b64decode(b"".join(data.split()), validate=True)
        except (binascii.Error, ValueError):
            raise SoapError("MIME part declared base64 is not valid base64") from None
    elif encoding == "quoted-printable":
        data = quopri.decodestring(data)
    elif encoding not in ("binary", "8bit", "7bit"):
        raise SoapError(f"unsupported Content-Transfer-Encoding {encoding}")
    content_id = headers.get("content-id", "").strip().strip("<>").strip()
    return Attachment(content_id=content_id, content_type=headers.get("content-type", "application/octet-stream"),
                      data=data)
