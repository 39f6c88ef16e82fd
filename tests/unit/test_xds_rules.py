"""XSD validation of public XDS samples and the metadata rules that catch what the XSD lets through."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
from lxml import etree

from gateway.xds import rules, soap, xsd
from gateway.xds.rules import RuleError

DATA = Path(__file__).resolve().parent.parent / "data" / "xds"
SAMPLES = sorted(DATA.rglob("*.xml"))
RAD68 = DATA / "kos" / "DERIVED-rad68-pnr-request_SOAP.xml"
R = "{urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0}"


def _payload(path: Path) -> etree._Element:
    root = soap.parse_xml(path.read_bytes())
    body = root.find(f"{{{soap.NS['soap']}}}Body")
    return root if body is None else body[0]


def _codes(errors: list[RuleError]) -> set[str]:
    return {e.code for e in errors}


def _rad68() -> etree._Element:
    return copy.deepcopy(_payload(RAD68))


def _entry(pnr: etree._Element) -> etree._Element:
    return pnr.find(f".//{R}ExtrinsicObject")


def _external_id(obj: etree._Element, attribute: str, section: str = "document_entry") -> etree._Element:
    wanted = rules.scheme(section, attribute)
    return next(e for e in obj.iter(f"{R}ExternalIdentifier") if e.get("identificationScheme") == wanted)


def _classification(obj: etree._Element, attribute: str) -> etree._Element:
    return rules.classifications(obj, rules.scheme("document_entry", attribute))[0]


def _slot(obj: etree._Element, name: str) -> etree._Element:
    return next(s for s in obj.iterfind(f"{R}Slot") if s.get("name") == name)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: str(p.relative_to(DATA)))
def test_every_sample_is_schema_valid(path: Path) -> None:
    assert xsd.validate(soap.parse_xml(path.read_bytes())) == []


def test_schema_rejects_an_unknown_payload_hidden_in_the_lax_soap_body() -> None:
    env = soap.parse_xml(RAD68.read_bytes())
    body = env.find(f"{{{soap.NS['soap']}}}Body")
    body[0].tag = f"{{{soap.NS['xds']}}}ProvideAndRegisterDocumentSetRequestt"
    assert any("body payload" in e for e in xsd.validate(env))


def test_schema_rejects_an_unresolved_xop_include() -> None:
    pnr = _rad68()
    soap.include(pnr.find(f"{{{soap.NS['xds']}}}Document"), "a@b")
    assert xsd.validate(pnr)


def test_derived_rad68_request_passes_the_rules() -> None:
    assert rules.check_submission(_payload(RAD68), transaction="RAD-68") == []
    assert rules.check_submission(_payload(RAD68)) == []  # XDS-I.b recognised by its mimeType/formatCode


def test_nist_pnr_without_documents_only_misses_its_documents() -> None:
    errors = rules.check_submission(_payload(DATA / "samples" / "nist" / "pnr.xml"))
    assert _codes(errors) == {"XDSMissingDocument"} and len(errors) == 2


def test_known_deviation_short_association_type() -> None:
    sample = DATA / "samples" / "ihe-iti-info" / "ProvideAndRegisterDocumentSet-bRequest.xml"
    errors = rules.check_submission(_payload(sample))
    assert any(e.code == "XDSRegistryMetadataError" and "'HasMember'" in e.message
               and "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember" in e.message for e in errors)


def test_known_deviation_iti_info_query() -> None:
    errors = rules.check_query(_payload(DATA / "samples" / "ihe-iti-info" / "RegistryStoredQueryRequest.xml"))
    messages = {e.location: (e.code, e.message) for e in errors}
    assert messages[" urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d "][0] == "XDSUnknownStoredQuery"
    assert "ResponseStatusType:Approved" in messages["$XDSDocumentEntryStatus"][1]
    assert "typographic quotes" in messages["$XDSDocumentEntryHealthcareFacilityTypeCode"][1]


def test_known_deviation_short_response_status() -> None:
    errors = rules.check_response(_payload(DATA / "samples" / "ihe-iti-info" / "RegistryStoredQueryResponse.xml"))
    assert [e.message for e in errors] == ["'Success' is not a ResponseStatusType URN"]
    assert rules.check_response(_payload(DATA / "samples" / "nist" / "sq-resp-lc.xml")) == []
    failure = DATA / "samples" / "nist" / "pnr-response-failure-metadata-error_SOAP.xml"
    assert rules.check_response(_payload(failure)) == []


def test_ipf_sample_scheme_uuids_broken_by_a_space_are_reported() -> None:
    errors = rules.check_submission(_payload(DATA / "samples" / "ipf" / "SubmitObjectsRequest_ebrs30.xml"))
    assert any("'urn:uuid:58a6f841-87b3-4a3e-92fd- a8ffeff98427' is not a urn:uuid" in e.message for e in errors)


def test_iti42_requires_what_the_repository_adds() -> None:
    errors = rules.check_submission(_payload(DATA / "kos" / "nist-ids_4801-rad68-SubmitObjectsRequest.xml"))
    assert {e.message for e in errors} == {"Slot 'hash' is required", "Slot 'size' is required",
                                           "Slot 'repositoryUniqueId' is required"}


def _set_patient(pnr: etree._Element, value: str) -> None:
    _external_id(pnr, "patientId").set("value", value)
    _external_id(pnr, "patientId", "submission_set").set("value", value)


def test_finnish_patient_id_and_affinity_domain() -> None:
    pnr = _rad68()
    _set_patient(pnr, "010190-9981^^^&1.2.246.21&ISO")
    assert rules.check_submission(pnr, patient_id_domain="1.2.246.21") == []
    errors = rules.check_submission(_rad68(), patient_id_domain="1.2.246.21")
    assert _codes(errors) == {"XDSUnknownPatientId"}


Mutation = Callable[[etree._Element], None]


def _mutations() -> list[tuple[str, Mutation, str, str]]:
    def remove(path: str) -> Mutation:
        return lambda pnr: pnr.find(path).getparent().remove(pnr.find(path))

    return [
        ("patient mismatch", lambda p: _external_id(p, "patientId").set("value", "X^^^&1.2.3&ISO"),
         "XDSPatientIdDoesNotMatch", "patientId differs"),
        ("patientId not CX", lambda p: _set_patient(p, "X^^^1.2.3"), "XDSRegistryMetadataError", "not CX"),
        ("short association type", lambda p: p.find(f".//{R}Association").set("associationType", "HasMember"),
         "XDSRegistryMetadataError", "full URN"),
        ("no Document", remove(f"{{{soap.NS['xds']}}}Document"), "XDSMissingDocument", "without its Document"),
        ("Document without entry", lambda p: p.find(f"{{{soap.NS['xds']}}}Document").set("id", "Other"),
         "XDSMissingDocumentMetadata", "Document without a DocumentEntry"),
        ("mimeType", lambda p: _entry(p).set("mimeType", "text/xml"), "XDSRegistryMetadataError",
         "application/dicom"),
        ("formatCode scheme", lambda p: _slot(_classification(_entry(p), "formatCode"), "codingScheme")
         .find(f".//{R}Value").__setattr__("text", "1.2.3"), "XDSRegistryMetadataError", "formatCode"),
        ("creationTime format", lambda p: _slot(_entry(p), "creationTime").find(f".//{R}Value")
         .__setattr__("text", "2016-10-31"), "XDSRegistryMetadataError", "not DTM"),
        ("impossible date", lambda p: _slot(_entry(p), "serviceStartTime").find(f".//{R}Value")
         .__setattr__("text", "20150230"), "XDSRegistryMetadataError", "not DTM"),
        ("missing classCode", lambda p: _entry(p).remove(_classification(_entry(p), "classCode")),
         "XDSRegistryMetadataError", "classCode is required"),
        ("two typeCodes", lambda p: _entry(p).append(copy.deepcopy(_classification(_entry(p), "typeCode"))),
         "XDSRegistryMetadataError", "at most 1"),
        ("code without scheme", lambda p: _classification(_entry(p), "typeCode").remove(
            _slot(_classification(_entry(p), "typeCode"), "codingScheme")), "XDSRegistryMetadataError",
         "codingScheme"),
        ("uniqueId with extension", lambda p: _external_id(p, "uniqueId").set("value", "1.2.3^abc"),
         "XDSRegistryMetadataError", "KOS SOP Instance UID"),
        ("accession without issuer", lambda p: _slot(_entry(p), "urn:ihe:iti:xds:2013:referenceIdList")
         .find(f".//{R}Value").__setattr__("text", "A1^^^^urn:ihe:iti:xds:2013:accession"),
         "XDSRegistryMetadataError", "issuer"),
        ("no HasMember", remove(f".//{R}Association"), "XDSRegistryMetadataError", "not the target of a HasMember"),
        ("no SubmissionSet", lambda p: p.find(f".//{R}RegistryObjectList").remove(
            p.find(f".//{R}RegistryObjectList/{R}Classification")), "XDSRegistryMetadataError",
         "exactly one SubmissionSet"),
        ("sourceId", lambda p: _external_id(p, "sourceId", "submission_set").set("value", "3670984664"),
         "XDSRegistryMetadataError", "sourceId"),
        ("status sent", lambda p: _entry(p).set("status", rules.STATUS_APPROVED), "XDSRegistryMetadataError",
         "assigned by the Registry"),
        ("RPLC inside the submission", lambda p: p.find(f".//{R}RegistryObjectList").append(etree.Element(
            f"{R}Association", id="rplc", associationType=rules.RPLC, sourceObject="Document01",
            targetObject="Document01")), "XDSRegistryMetadataError", "point to itself"),
    ]


@pytest.mark.parametrize(("name", "mutate", "code", "text"), _mutations(), ids=[m[0] for m in _mutations()])
def test_rad68_mutations_are_reported(name: str, mutate: Mutation, code: str, text: str) -> None:
    pnr = _rad68()
    mutate(pnr)
    errors = rules.check_submission(pnr, transaction="RAD-68")
    assert any(e.code == code and text in e.message for e in errors), errors


def test_query_samples_pass_and_bad_queries_fail() -> None:
    assert rules.check_query(_payload(DATA / "samples" / "nist" / "sq-req.xml")) == []
    assert rules.check_query(_payload(DATA / "samples" / "nist" / "getdocuments-by-uuid.TEMPLATE.xml")) == []
    query = _payload(DATA / "samples" / "nist" / "sq-req.xml")
    adhoc = query.find(f"{R}AdhocQuery")
    adhoc.remove(next(s for s in adhoc.iterfind(f"{R}Slot") if s.get("name") == "$XDSDocumentEntryPatientId"))
    assert _codes(rules.check_query(query)) == {"XDSStoredQueryMissingParam"}
    adhoc.set("id", "urn:uuid:00000000-0000-0000-0000-000000000000")
    assert _codes(rules.check_query(query)) == {"XDSUnknownStoredQuery"}


def test_jembi_query_with_unquoted_strings_is_reported() -> None:
    errors = rules.check_query(_payload(DATA / "samples" / "jembi" / "adhocQueryRequest_wSOAP.xml"))
    assert {e.location for e in errors} == {"$XDSDocumentEntryPatientId", "$XDSDocumentEntryStatus"}


def test_query_values() -> None:
    assert rules.query_values("('a', 'b')") == ["a", "b"]
    assert rules.query_values("'it''s'") == ["it's"]
    assert rules.query_values("(1, 2)") == ["1", "2"]
    for bad in ("(‘Emergency Department’)", "abc", "('a'", "('a' 'b')"):
        with pytest.raises(rules.QueryValueError):
            rules.query_values(bad)


@pytest.mark.parametrize(("value", "ok"), [("2015", True), ("20150201", True), ("20150201235959", True),
                                           ("201502012", False), ("20150230", False), ("2015-02-01", False),
                                           ("20150201T1200", False)])
def test_dtm(value: str, ok: bool) -> None:
    assert rules.is_dtm(value) is ok
