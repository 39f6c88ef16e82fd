"""XML Schema validation of XDS.b / XDS-I.b messages against the official schemas shipped in ``schema/``.

The SOAP Body is a lax wildcard in soap-envelope.xsd, so an envelope's payload is validated again on its own:
a misspelt payload element would otherwise pass. Validate the XOP-resolved infoset (``SoapMessage.resolved()``):
an ``xop:Include`` inside ``xds:Document`` is not valid against XDS.b_DocumentRepository.xsd.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

from lxml import etree

SCHEMA = Path(__file__).resolve().parent / "schema" / "xds-all.xsd"
_ENVELOPE = "{http://www.w3.org/2003/05/soap-envelope}Envelope"
_BODY = "{http://www.w3.org/2003/05/soap-envelope}Body"
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False)
_MAX_ERRORS = 20


@functools.cache
def _schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(SCHEMA), _PARSER))


def validate(element: etree._Element) -> list[str]:
    """Schema errors of ``element`` (and of the first Body child of a SOAP envelope); empty when valid."""
    targets = [("message", element)]
    if element.tag == _ENVELOPE:
        body = element.find(_BODY)
        payload = None if body is None else next((c for c in body if isinstance(c.tag, str)), None)
        if payload is None:
            return ["message: SOAP envelope without a Body payload"]
        targets.append(("body payload", payload))
    errors: list[str] = []
    schema = _schema()
    for label, target in targets:
        # a standalone copy, so that the schema validates it as a document root (with its in-scope namespaces);
        # copied, not re-parsed: an XOP-resolved document may exceed libxml2's text limit for parsing
        if not schema.validate(copy.deepcopy(target)):
            entries = list(schema.error_log)  # type: ignore[call-overload]  # lxml-stubs: _ErrorLog is iterable
            errors += [f"{label}: line {e.line}: {e.message}" for e in entries[:_MAX_ERRORS]]
    return errors
