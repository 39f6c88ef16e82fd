"""SOAP 1.2 / WS-Addressing / MTOM framing, including real MTOM captures from NIST's toolkit and an OpenHIM mock."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from lxml import etree

from gateway.xds import soap
from gateway.xds.soap import NS, Attachment, SoapError
from gateway.xds.xsd import validate

DATA = Path(__file__).resolve().parent.parent / "data" / "xds" / "samples"


def _http_capture(path: Path) -> tuple[bytes, str]:
    """(body, Content-Type) of a captured HTTP request."""
    raw = path.read_bytes()
    head, _, body = raw.partition(b"\n\n")
    headers = dict(line.split(":", 1) for line in head.decode().splitlines()[1:])
    return body, headers["Content-Type"].strip()


def _registry_response() -> etree._Element:
    return etree.Element(f"{{{NS['rs']}}}RegistryResponse",
                         status="urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success")


def _pnr_with_document(content: etree._Element | None = None) -> tuple[etree._Element, etree._Element]:
    request = etree.Element(f"{{{NS['xds']}}}ProvideAndRegisterDocumentSetRequest", nsmap={"xds": NS["xds"]})
    sor = etree.SubElement(request, f"{{{NS['lcm']}}}SubmitObjectsRequest")
    etree.SubElement(sor, f"{{{NS['rim']}}}RegistryObjectList")
    document = etree.SubElement(request, f"{{{NS['xds']}}}Document", id="Document01")
    return request, document


def test_request_envelope_carries_the_ws_addressing_headers_ihe_requires() -> None:
    env, message_id = soap.envelope(soap.ACTIONS["ITI-41"], _pnr_with_document()[0], to="http://x/xds/repository")
    header = env.find(f"{{{NS['soap']}}}Header")
    action = header.find(f"{{{NS['wsa']}}}Action")
    assert action.text == "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
    assert action.get(f"{{{NS['soap']}}}mustUnderstand") == "1"
    assert message_id.startswith("urn:uuid:") and header.findtext(f"{{{NS['wsa']}}}MessageID") == message_id
    assert header.findtext(f"{{{NS['wsa']}}}ReplyTo/{{{NS['wsa']}}}Address") == soap.ANONYMOUS
    assert header.findtext(f"{{{NS['wsa']}}}To") == "http://x/xds/repository"
    assert header.find(f"{{{NS['wsa']}}}RelatesTo") is None


def test_response_envelope_relates_to_the_request_and_is_schema_valid() -> None:
    env, message_id = soap.envelope(soap.ACTIONS["ITI-41-response"], _registry_response(),
                                    message_id="urn:uuid:1", relates_to="urn:uuid:0")
    header = env.find(f"{{{NS['soap']}}}Header")
    assert message_id == "urn:uuid:1"
    assert header.findtext(f"{{{NS['wsa']}}}RelatesTo") == "urn:uuid:0"
    assert header.find(f"{{{NS['wsa']}}}ReplyTo") is None
    assert validate(env) == []


def test_rad69_is_answered_with_the_iti43_response_action() -> None:
    assert soap.ACTIONS["RAD-69"] == "urn:ihe:rad:2009:RetrieveImagingDocumentSet"
    assert soap.ACTIONS["RAD-69-response"] == soap.ACTIONS["ITI-43-response"]
    assert soap.ACTIONS["RAD-68"] == soap.ACTIONS["ITI-41"]


def test_plain_round_trip() -> None:
    env, message_id = soap.envelope(soap.ACTIONS["ITI-41-response"], _registry_response(), relates_to="urn:uuid:9")
    body, content_type = soap.plain(env)
    assert content_type == "application/soap+xml; charset=UTF-8"
    message = soap.parse(body, content_type)
    assert (message.action, message.message_id, message.relates_to) == (
        soap.ACTIONS["ITI-41-response"], message_id, "urn:uuid:9")
    assert message.body().tag == f"{{{NS['rs']}}}RegistryResponse"
    assert message.attachments == {}


def test_mtom_round_trip_keeps_binary_documents_byte_exact() -> None:
    data = bytes(range(256)) * 4 + b"\r\n--MIMEBoundary_x\r\n\n--"
    request, document = _pnr_with_document()
    soap.include(document, "doc/1@example.org")
    env, message_id = soap.envelope(soap.ACTIONS["ITI-41"], request)
    body, content_type = soap.mtom(env, [Attachment("doc/1@example.org", "application/dicom", data)])
    kind, params = soap.media_type(content_type)
    assert kind == "multipart/related"
    assert params["type"] == "application/xop+xml" and params["start-info"] == "application/soap+xml"
    assert params["start"].startswith("<") and params["boundary"]
    assert b"cid:doc%2F1@example.org" in body

    message = soap.parse(body, content_type)
    assert message.message_id == message_id
    assert message.document(message.body().find(f"{{{NS['xds']}}}Document")) == data
    resolved = message.resolved().find(f".//{{{NS['xds']}}}Document")
    assert base64.b64decode(resolved.text) == data and len(resolved) == 0
    assert message.envelope.find(f".//{{{NS['xop']}}}Include") is not None  # the original is left untouched


def test_content_ids_must_be_header_safe() -> None:
    env, _ = soap.envelope(soap.ACTIONS["ITI-41"], _pnr_with_document()[0])
    with pytest.raises(ValueError, match="Content-ID"):
        soap.mtom(env, [Attachment("dokumentti ä", "application/dicom", b"")])


def test_nist_axis2_mtom_capture() -> None:
    body, content_type = _http_capture(DATA / "nist" / "http-mtom-pnr.txt")
    message = soap.parse(body, content_type)
    assert message.action == "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
    assert message.message_id == "urn:uuid:3D4B161591CD1DEC0C1286850962146"
    assert list(message.attachments) == ["1.urn:uuid:3D4B161591CD1DEC0C1286850962319@apache.org"]
    attachment = message.attachments["1.urn:uuid:3D4B161591CD1DEC0C1286850962319@apache.org"]
    assert attachment.content_type == "text/plain"
    assert attachment.data.startswith(b"Four score and seven years ago")
    assert attachment.data.endswith(b"shall not perish from the earth.")
    document = message.body().find(f"{{{NS['xds']}}}Document")
    assert message.document(document) == attachment.data
    assert validate(message.resolved()) == []


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
@pytest.mark.parametrize("quote_boundary", [False, True])
def test_nist_capture_with_crlf_and_quoted_boundary(newline: bytes, quote_boundary: bool) -> None:
    body, content_type = _http_capture(DATA / "nist" / "http-mtom-pnr.txt")
    body = body.replace(b"\n", newline)
    if quote_boundary:
        content_type = content_type.replace("boundary=MIMEBoundaryurn_uuid_3D4B161591CD1DEC0C1286850962202",
                                            'boundary="MIMEBoundaryurn_uuid_3D4B161591CD1DEC0C1286850962202"')
    message = soap.parse(body, content_type)
    data = next(iter(message.attachments.values())).data
    assert data.endswith(b"earth.") and data.startswith(b"Four score")


def test_cxf_mtom_response_capture() -> None:
    body = (DATA / "jembi" / "pnrResponse_wSOAP.mtom-multipart.txt").read_bytes()
    content_type = ('multipart/related; type="application/xop+xml"; boundary="uuid:9d70af7a-1e95-4187-8860-'
                    'de7c7662ce3c"; start="<root.message@cxf.apache.org>"; start-info="application/soap+xml"')
    message = soap.parse(body, content_type)
    assert message.action == "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-bResponse"
    assert message.relates_to == "uuid:569bff90-7fca-422f-aa91-d4b4a092241c"
    assert message.body().get("status") == "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
    assert message.attachments["49ca80e2-b85e-47d7-96fd-9210ae46d86f"].data == b""
    assert message.fault() is None


def test_content_id_without_angle_brackets_and_no_start_parameter() -> None:
    request, document = _pnr_with_document()
    soap.include(document, "a@b")
    env, _ = soap.envelope(soap.ACTIONS["ITI-41"], request)
    body, content_type = soap.mtom(env, [Attachment("a@b", "application/dicom", b"DICM")])
    body = body.replace(b"Content-ID: <a@b>", b"Content-ID: a@b")
    content_type = ";".join(p for p in content_type.split(";") if "start=" not in p)
    message = soap.parse(body, content_type)
    assert message.document(message.body().find(f"{{{NS['xds']}}}Document")) == b"DICM"


def test_inline_base64_document() -> None:
    request, document = _pnr_with_document()
    document.text = "\n  " + base64.b64encode(b"payload").decode() + "\n"
    message = soap.parse(*soap.plain(soap.envelope(soap.ACTIONS["ITI-41"], request)[0]))
    assert message.document(message.body().find(f"{{{NS['xds']}}}Document")) == b"payload"
    document = message.body().find(f"{{{NS['xds']}}}Document")
    document.text = "not base64!"
    with pytest.raises(SoapError):
        message.document(document)


def test_fault_envelope() -> None:
    env = soap.fault("Sender", "no such action", relates_to="urn:uuid:7")
    assert validate(env) == []
    message = soap.parse(*soap.plain(env))
    assert message.fault() == ("Sender", "no such action")
    assert message.relates_to == "urn:uuid:7"
    with pytest.raises(ValueError):
        soap.fault("Client", "SOAP 1.1 code")


def _mtom_pnr() -> tuple[bytes, str]:
    request, document = _pnr_with_document()
    soap.include(document, "doc@x")
    env, _ = soap.envelope(soap.ACTIONS["ITI-41"], request)
    return soap.mtom(env, [Attachment("doc@x", "application/dicom", b"DICM")])


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda b, c: (b, "text/xml"), "Content-Type"),
    (lambda b, c: (b, "multipart/related; type=\"application/xop+xml\""), "boundary"),
    (lambda b, c: (b.replace(b"cid:doc@x", b"cid:other@x"), c), "missing MIME part"),
    (lambda b, c: (b.rsplit(b"--", 2)[0], c), "final boundary"),
    (lambda b, c: (b, c.replace('start="<', 'start="<nope')), "start"),
    (lambda b, c: (b"<a/>", "application/soap+xml"), "Envelope"),
    (lambda b, c: (b"<not xml", "application/soap+xml"), "well-formed"),
    (lambda b, c: (b.replace(b"<wsa:Action", b"<wsa:Other").replace(b"</wsa:Action", b"</wsa:Other"), c),
     "Action"),
])
def test_malformed_messages_raise_soap_error(mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    body, content_type = mutate(*_mtom_pnr())
    with pytest.raises(SoapError, match=reason):
        soap.parse(body, content_type)


def test_entities_and_dtds_are_refused() -> None:
    bomb = (b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
            b'<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body><x>&b;</x></e:Body></e:Envelope>')
    with pytest.raises(SoapError, match="document type declaration"):
        soap.parse(bomb, "application/soap+xml")
    external = (b'<?xml version="1.0"?><!DOCTYPE e SYSTEM "http://example.invalid/x.dtd">'
                b'<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"/>')
    with pytest.raises(SoapError):
        soap.parse(external, "application/soap+xml")
