"""ITI-57 metadata deprecating a manifest: the SubmitObjectsRequest is valid against the XDS schemas (the project's
validator and the reference snapshot's), passes the metadata rules, carries the RAD-68 SubmissionSet, and the
rules refuse malformed UpdateAvailabilityStatus associations."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from gateway.settings import XdsSettings
from gateway.xds import rules, soap, xsd
from gateway.xds.client import XdsClient, XdsPermanent
from gateway.xds.metadata import AffinityDomain, MetadataError, StatusUpdate, build_status_update
from tests.unit.test_xds_manifest import ORGANIZATION_OID
from tests.unit.test_xds_metadata import ENTRY_UUID, SET_UUID, SUBMITTED, package, submit

VALIDATOR = Path(__file__).resolve().parents[3] / "shared" / "ref" / "xds" / "validate_samples.py"
RIM = "{%s}" % soap.NS["rim"]
PATIENT_CX = "131052-308T^^^&1.2.246.21&ISO"


def update(**overrides: Any) -> StatusUpdate:
    arguments: dict[str, Any] = {
        "domain": AffinityDomain.load(), "source_id": ORGANIZATION_OID, "organization_oid": ORGANIZATION_OID,
        "organization_name": "Turun kaupunki", "now": SUBMITTED, "submission_set_uuid": SET_UUID,
        "submission_set_unique_id": "2.25.2002",
    }
    return build_status_update(ENTRY_UUID, PATIENT_CX, **(arguments | overrides))


def association(request: etree._Element) -> etree._Element:
    found = request.find(f"{RIM}RegistryObjectList/{RIM}Association")
    assert found is not None
    return found


def shape(obj: etree._Element) -> list[tuple[str, str, str]]:
    """Tag, scheme and slot name of every part of a SubmissionSet, ids and times left out."""
    return [(etree.QName(node).localname, node.get("classificationScheme") or node.get("identificationScheme") or "",
             node.get("name", "")) for node in obj.iter(etree.Element)]


def test_update_is_schema_valid_and_passes_the_metadata_rules() -> None:
    request = update().request
    assert xsd.validate(request) == []
    assert rules.check_update(request, patient_id_domain="1.2.246.21") == []
    env, _ = soap.envelope(soap.ACTIONS["ITI-57"], copy.deepcopy(request))
    assert xsd.validate(env) == []


@pytest.mark.skipif(not VALIDATOR.exists(), reason="the reference snapshot (shared/ref) is not beside the checkout")
def test_reference_validator_accepts_the_update(tmp_path: Path) -> None:
    request = update().request
    bare = tmp_path / "iti57-SubmitObjectsRequest.xml"
    bare.write_bytes(etree.tostring(request, xml_declaration=True, encoding="UTF-8"))
    envelope = tmp_path / "iti57_SOAP.xml"
    envelope.write_bytes(soap.serialize(soap.envelope(soap.ACTIONS["ITI-57"], copy.deepcopy(request))[0]))
    result = subprocess.run([sys.executable, str(VALIDATOR), str(bare), str(envelope)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout
    assert "2 passed, 0 failed" in result.stdout


def test_submission_set_is_the_one_rad68_builds() -> None:
    status_update = update()
    objects = status_update.request.find(f"{RIM}RegistryObjectList")
    assert objects is not None
    (ss,) = objects.iterfind(f"{RIM}RegistryPackage")
    rad68 = package(submit(submission_set_unique_id="2.25.2002"))
    assert shape(ss) == shape(rad68)
    for section, attribute in (("submission_set", "patientId"), ("submission_set", "sourceId"),
                               ("submission_set", "uniqueId")):
        assert rules.external_identifier(ss, rules.scheme(section, attribute)) == rules.external_identifier(
            rad68, rules.scheme(section, attribute))
    assert rules.slot_values(ss, "submissionTime") == ["20240115100005"]
    assert [c.get("classificationNode") for c in objects.iterfind(f"{RIM}Classification")] == [
        "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"]
    assert (status_update.submission_set_uuid, status_update.submission_set_unique_id) == (SET_UUID, "2.25.2002")
    assert (status_update.entry_uuid, status_update.patient_id) == (ENTRY_UUID, PATIENT_CX)


def test_update_availability_status_association_deprecates_the_entry() -> None:
    found = association(update().request)
    assert found.get("associationType") == "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"
    assert (found.get("sourceObject"), found.get("targetObject")) == (SET_UUID, ENTRY_UUID)
    assert rules.slot_values(found, "OriginalStatus") == [rules.STATUS_APPROVED]
    assert rules.slot_values(found, "NewStatus") == [rules.STATUS_DEPRECATED]


def test_an_entry_can_be_approved_again() -> None:
    found = association(update(original_status=rules.STATUS_DEPRECATED, new_status=rules.STATUS_APPROVED).request)
    assert rules.slot_values(found, "OriginalStatus") == [rules.STATUS_DEPRECATED]
    assert rules.slot_values(found, "NewStatus") == [rules.STATUS_APPROVED]


def test_new_identifiers_when_none_are_given() -> None:
    first, second = update(submission_set_uuid=None, submission_set_unique_id=None), update(
        submission_set_uuid=None, submission_set_unique_id=None)
    assert first.submission_set_uuid != second.submission_set_uuid
    assert first.submission_set_unique_id != second.submission_set_unique_id
    assert rules.is_uuid_ref(first.submission_set_uuid) and rules.is_oid(first.submission_set_unique_id)


@pytest.mark.parametrize(("entry_uuid", "patient_id", "changes", "message"), [
    ("Document01", PATIENT_CX, {}, "entryUUID"),
    ("urn:uuid:not-a-uuid", PATIENT_CX, {}, "entryUUID"),
    (ENTRY_UUID, "131052-308T", {}, "CX"),
    (ENTRY_UUID, PATIENT_CX, {"new_status": rules.STATUS_APPROVED}, "between Approved and Deprecated"),
    (ENTRY_UUID, PATIENT_CX, {"new_status": rules.STATUS_SUBMITTED}, "between Approved and Deprecated"),
    (ENTRY_UUID, PATIENT_CX, {"new_status": "Deprecated"}, "between Approved and Deprecated"),
    (ENTRY_UUID, PATIENT_CX, {"source_id": "Turku"}, "sourceId"),
    (ENTRY_UUID, PATIENT_CX, {"organization_oid": "Turku"}, "organisation OID"),
])
def test_refuses_what_the_registry_would(entry_uuid: str, patient_id: str, changes: dict[str, Any],
                                         message: str) -> None:
    arguments: dict[str, Any] = {"domain": AffinityDomain.load(), "source_id": ORGANIZATION_OID,
                                 "organization_oid": ORGANIZATION_OID, "organization_name": "Turun kaupunki",
                                 "now": SUBMITTED}
    with pytest.raises(MetadataError, match=message):
        build_status_update(entry_uuid, patient_id, **(arguments | changes))


def test_refuses_a_naive_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        update(now=SUBMITTED.replace(tzinfo=None))


# --- the rules on ITI-57 ----------------------------------------------------------------------------------------


def _set_slot(name: str, values: list[str]) -> Callable[[etree._Element], None]:
    def mutate(request: etree._Element) -> None:
        slot = next(s for s in association(request).iterfind(f"{RIM}Slot") if s.get("name") == name)
        value_list = slot.find(f"{RIM}ValueList")
        assert value_list is not None
        for value in list(value_list):
            value_list.remove(value)
        for text in values:
            etree.SubElement(value_list, f"{RIM}Value").text = text
    return mutate


def _drop_slot(name: str) -> Callable[[etree._Element], None]:
    def mutate(request: etree._Element) -> None:
        found = association(request)
        found.remove(next(s for s in found.iterfind(f"{RIM}Slot") if s.get("name") == name))
    return mutate


def _source(request: etree._Element) -> None:
    association(request).set("sourceObject", "urn:uuid:0b7e3d6c-5a36-4c9b-9f0e-6f2f1b1a2c09")


def _target_in_submission(request: etree._Element) -> None:
    association(request).set("targetObject", SET_UUID)


def _twice(request: etree._Element) -> None:
    second = copy.deepcopy(association(request))
    second.set("id", "urn:uuid:0b7e3d6c-5a36-4c9b-9f0e-6f2f1b1a2c0a")
    association(request).addnext(second)


def _no_patient(request: etree._Element) -> None:
    ss = request.find(f"{RIM}RegistryObjectList/{RIM}RegistryPackage")
    assert ss is not None
    scheme = rules.scheme("submission_set", "patientId")
    ss.remove(next(e for e in ss.iterfind(f"{RIM}ExternalIdentifier") if e.get("identificationScheme") == scheme))


def _outside_the_domain(request: etree._Element) -> None:
    scheme = rules.scheme("submission_set", "patientId")
    next(e for e in request.iter(f"{RIM}ExternalIdentifier") if e.get("identificationScheme") == scheme).set(
        "value", "IDS-AD001-a^^^&1.3.6.1.4.1.21367.2005.13.20.1000&ISO")


@pytest.mark.parametrize(("mutate", "code"), [
    (_set_slot("NewStatus", ["urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"]), "XDSMetadataUpdateError"),
    (_set_slot("NewStatus", ["Deprecated"]), "XDSMetadataUpdateError"),
    (_set_slot("NewStatus", [rules.STATUS_DEPRECATED, rules.STATUS_APPROVED]), "XDSMetadataUpdateError"),
    (_set_slot("OriginalStatus", [rules.STATUS_SUBMITTED]), "XDSMetadataUpdateError"),
    (_drop_slot("OriginalStatus"), "XDSMetadataUpdateError"),
    (_source, "XDSMetadataUpdateError"),
    (_target_in_submission, "XDSMetadataUpdateError"),
    (_twice, "XDSMetadataUpdateError"),
    (_no_patient, "XDSRegistryMetadataError"),
    (_outside_the_domain, "XDSUnknownPatientId"),
], ids=["same-status", "short-status", "two-values", "submitted", "no-original-status", "source-not-the-set",
        "target-in-submission", "same-target-twice", "no-submission-set-patient", "patient-outside-the-domain"])
def test_rules_refuse_a_malformed_update(mutate: Callable[[etree._Element], None], code: str) -> None:
    request = update().request
    mutate(request)
    assert code in [e.code for e in rules.check_update(request, patient_id_domain="1.2.246.21")]


async def test_no_registry_configured_is_permanent() -> None:
    async with XdsClient(XdsSettings(repository_url="https://repository.invalid/xds")) as client:
        with pytest.raises(XdsPermanent, match="registry_url is not configured"):
            await client.update_document_set(update())
