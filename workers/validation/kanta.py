"""The rules of the ``fi-kanta`` profile: what the national imaging archive needs beyond DICOM conformance.

Patient identity follows shared/ref/finland.md: Patient ID is a personal identity code (hetu) issued under
1.2.246.21, or an organisation's temporary identifier (hetu-shaped, individual number 900-999) issued under
that organisation's namespace 1.2.246.10.<organisation>[.10.<unit>].22.<year>. Messages name attributes and
what is wrong with them, never their values (findings are logged and listed to operators).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator

from pydicom.dataset import Dataset

from gateway import hetu
from workers.validation import vr
from workers.validation.header import patient_id_issuer, study_code, text, universal_issuer
from workers.validation.model import Rule, RuleContext, Severity, Violation, rule

TEMPORARY_NAMESPACE = re.compile(r"1\.2\.246\.10\.([1-9]\d*)(?:\.10\.(?:0|[1-9]\d*))?\.22\.(\d{4})")
"""Group 1 is the organisation's business-ID arc."""
ORGANIZATION_OID = re.compile(r"1\.2\.246\.10\.([1-9]\d*)(?:\.(?:0|[1-9]\d*))*")
"""An organisation (or one of its units) identified by business ID; group 1 is the business-ID arc."""


class IssuerKind(enum.Enum):
    NATIONAL = "national"
    TEMPORARY = "temporary"
    MISSING = "missing"
    OTHER = "other"


def issuer_kind(issuer: str) -> IssuerKind:
    if not issuer:
        return IssuerKind.MISSING
    if issuer == hetu.HETU_OID:
        return IssuerKind.NATIONAL
    if TEMPORARY_NAMESPACE.fullmatch(issuer):
        return IssuerKind.TEMPORARY
    return IssuerKind.OTHER


def _hetu_shaped_id(ds: Dataset) -> str:
    """Patient ID when its issuer says it should be hetu-shaped (national, temporary or not yet known)."""
    if issuer_kind(patient_id_issuer(ds)) is IssuerKind.OTHER:
        return ""
    return text(ds, "PatientID")


def _valid_hetu(ds: Dataset, kind: IssuerKind) -> hetu.Hetu | None:
    patient_id = text(ds, "PatientID")
    if not patient_id or issuer_kind(patient_id_issuer(ds)) is not kind:
        return None
    try:
        return hetu.parse(patient_id)
    except hetu.InvalidHetu:
        return None


@rule("FI-PATIENT-ID-MISSING", Severity.ERROR, "PatientID")
def patient_id_present(ds: Dataset, context: RuleContext) -> Iterator[Violation]:
    """The archive files every study under a patient identity."""
    if not text(ds, "PatientID"):
        yield Violation("PatientID", "Patient ID is missing or empty; the archive needs the patient's identity code")


@rule("FI-ISSUER-MISSING", Severity.ERROR, "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence")
def issuer_present(ds: Dataset, context: RuleContext) -> Iterator[Violation]:
    """Without an issuer, the archive cannot tell a personal identity code from a temporary identifier."""
    if not patient_id_issuer(ds):
        yield Violation(
            "IssuerOfPatientID",
            "Issuer of Patient ID is missing: set IssuerOfPatientID or IssuerOfPatientIDQualifiersSequence > "
            "UniversalEntityID (type ISO) to 1.2.246.21, or to the organisation's temporary-ID namespace; "
            "the profile's coercion can set it for a calling AE",
        )


@rule("FI-ISSUER-UNKNOWN", Severity.ERROR, "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence")
def issuer_known(ds: Dataset, context: RuleContext) -> Iterator[Violation]:
    """Only the national hetu OID and temporary-ID namespaces identify patients in the archive."""
    issuer = patient_id_issuer(ds)
    if issuer_kind(issuer) is IssuerKind.OTHER:
        yield Violation(
            "IssuerOfPatientID",
            "Issuer of Patient ID is neither 1.2.246.21 (personal identity code) nor a temporary-ID "
            "namespace 1.2.246.10.<organisation>.22.<year>",
        )


@rule("FI-ISSUER-CONFLICT", Severity.ERROR, "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence")
def issuer_consistent(ds: Dataset, context: RuleContext) -> Iterator[Violation]:
    """Issuer of Patient ID given as an OID must agree with the qualifiers' Universal Entity ID."""
    local, universal = text(ds, "IssuerOfPatientID"), universal_issuer(ds)
    if local and universal and vr.ui(local) is None and local != universal:
        yield Violation(
            "IssuerOfPatientID",
            "IssuerOfPatientID differs from IssuerOfPatientIDQualifiersSequence > UniversalEntityID; "
            "make them the same OID",
        )


def _hetu_rule(code: str, fault: hetu.HetuFault, message: str) -> Rule:
    def check(ds: Dataset, context: RuleContext) -> Iterator[Violation]:
        patient_id = _hetu_shaped_id(ds)
        if patient_id and hetu.fault(patient_id) is fault:
            yield Violation("PatientID", message)

    return rule(code, Severity.ERROR, "PatientID")(check)


HETU_RULES = (
    _hetu_rule(
        "FI-HETU-FORMAT",
        hetu.HetuFault.FORMAT,
        "Patient ID is not a personal identity code of the form DDMMYYCZZZQ "
        "(11 characters, upper case, century sign + - A-F or U-Y)",
    ),
    _hetu_rule(
        "FI-HETU-DATE",
        hetu.HetuFault.DATE,
        "Patient ID has a birth date that does not exist in the century its century sign gives",
    ),
    _hetu_rule(
        "FI-HETU-INDIVIDUAL-NUMBER",
        hetu.HetuFault.INDIVIDUAL_NUMBER,
        "Patient ID has individual number 000 or 001, which are never issued",
    ),
    _hetu_rule(
        "FI-HETU-CHECKSUM",
        hetu.HetuFault.CHECK_CHARACTER,
        "Patient ID check character is wrong (it is DDMMYYZZZ mod 31); check for a typing error",
    ),
)


@rule("FI-HETU-TEST-ID", Severity.ERROR, "PatientID")
def no_test_identity(ds: Dataset, context: RuleContext) -> Iterator[Violation]:
    """900-series codes under the national OID are test identities: real data must not use them."""
    code = _valid_hetu(ds, IssuerKind.NATIONAL)
    if code is not None and code.is_temporary and not context.parameters.test_environment:
        yield Violation(
            "PatientID",
            "Patient ID is a test identity code (individual number 900-999) under 1.2.246.21; only a profile "
            "with test_environment: true accepts it, and a temporary ID needs the organisation's namespace",
        )


@rule("FI-TEMP-ID-RANGE", Severity.ERROR, "PatientID")
def temporary_id_range(ds: Dataset, context: RuleContext) -> Iterator[Violation]:
    """A temporary identifier uses individual numbers 900-999, so it cannot collide with a real person's code."""
    code = _valid_hetu(ds, IssuerKind.TEMPORARY)
    if code is not None and not code.is_temporary:
        yield Violation(
            "PatientID",
            "Patient ID under a temporary-ID namespace has an individual number below 900; a temporary ID uses "
            "900-999, and a real personal identity code goes with issuer 1.2.246.21",
        )


@rule("FI-TEMP-ID-ORG", Severity.ERROR, "IssuerOfPatientID", needs_source=True)
def temporary_id_organisation(ds: Dataset, context: RuleContext) -> Iterator[Violation]:
    """A temporary identifier is unique only within the organisation that made it: the sender's own namespace."""
    issuer = patient_id_issuer(ds)
    namespace = TEMPORARY_NAMESPACE.fullmatch(issuer)
    organization = ORGANIZATION_OID.fullmatch(context.source.organization_oid)
    if namespace and organization and namespace.group(1) != organization.group(1):
        yield Violation(
            "IssuerOfPatientID",
            "Issuer of Patient ID is the temporary-ID namespace of another organisation than "
            f"{context.source.organization_oid}, configured for calling AE {context.source.calling_ae_title}",
        )


@rule("FI-ACCESSION-NUMBER-MISSING", Severity.ERROR, "AccessionNumber")
def accession_number_present(ds: Dataset, context: RuleContext) -> Iterator[Violation]:
    """The archive links the study to its request and report by Accession Number."""
    if not text(ds, "AccessionNumber"):
        yield Violation("AccessionNumber", "Accession Number is missing or empty; the RIS order number belongs here")


@rule("FI-STUDY-DESCRIPTION-MISSING", Severity.ERROR, "StudyDescription")
def study_description_present(ds: Dataset, context: RuleContext) -> Iterator[Violation]:
    """Users find studies in the archive by their description."""
    if not text(ds, "StudyDescription"):
        yield Violation("StudyDescription", "Study Description is missing or empty")


@rule("FI-STUDY-CODE-MISSING", Severity.ERROR, "RequestedProcedureCodeSequence", "ProcedureCodeSequence")
def study_code_present(ds: Dataset, context: RuleContext) -> Iterator[Violation]:
    """The archive classifies every study by its national procedure code."""
    if study_code(ds) is None:
        yield Violation(
            "RequestedProcedureCodeSequence",
            "No study code: neither RequestedProcedureCodeSequence nor ProcedureCodeSequence has a CodeValue",
        )


@rule(
    "FI-STUDY-CODE-UNKNOWN",
    Severity.ERROR,
    "RequestedProcedureCodeSequence",
    "ProcedureCodeSequence",
    requires=("procedure_codes",),
)
def study_code_known(ds: Dataset, context: RuleContext) -> Iterator[Violation]:
    """The archive validates the study code on its first five characters against the national nomenclature."""
    found, codes = study_code(ds), context.parameters.procedure_codes
    if found is not None and codes is not None and found[1][:5] not in codes:
        yield Violation(found[0], f"{found[0]} > CodeValue is not in the procedure code list (compared on 5 characters)")


@rule("FI-STUDY-DATE-TIME", Severity.ERROR, "StudyDate", "StudyTime")
def study_date_time(ds: Dataset, context: RuleContext) -> Iterator[Violation]:
    """The archive registers the study under its date and time."""
    for keyword, check in (("StudyDate", vr.da), ("StudyTime", vr.tm)):
        value = text(ds, keyword)
        problem = check(value) if value else "is missing or empty"
        if problem:
            yield Violation(keyword, f"{keyword} {problem}")


@rule("FI-SOURCE-UNKNOWN", Severity.ERROR, "InstitutionName", needs_source=True)
def source_known(ds: Dataset, context: RuleContext) -> Iterator[Violation]:
    """The archive attributes the study to the sending organisation, so the calling AE must map to one."""
    source = context.source
    if not source.organization or not source.organization_oid:
        yield Violation(
            "InstitutionName",
            f"Calling AE {source.calling_ae_title or '(none)'} has no organisation name and OID configured; "
            "add them to the gateway's AE settings",
        )
    elif ORGANIZATION_OID.fullmatch(source.organization_oid) is None:
        yield Violation(
            "InstitutionName",
            f"Organisation OID {source.organization_oid} configured for calling AE {source.calling_ae_title} "
            "is not an organisation OID under 1.2.246.10",
        )


KANTA_RULES = (
    patient_id_present,
    issuer_present,
    issuer_known,
    issuer_consistent,
    *HETU_RULES,
    no_test_identity,
    temporary_id_range,
    temporary_id_organisation,
    accession_number_present,
    study_description_present,
    study_code_present,
    study_code_known,
    study_date_time,
    source_known,
)
