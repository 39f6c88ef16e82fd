"""A data set's Patient Module brought up to the index's current patient, on the way out.

Stored objects are never rewritten: an ADT update or merge changes the index, and every object served or sent
later (C-MOVE, C-GET, WADO-RS, forwarding) gets the current Patient ID, issuer, name, birth date and sex
written over its header, as dcm4chee merges the database's patient attributes into what it exports.

The character set must still describe every text value: a name that the data set's Specific Character Set can
encode is written in it; a data set in the default repertoire takes the character set the name came in (the
ADT's MSH-18: ISO_IR 100 for 8859/1, ISO_IR 192 for UTF-8), since ASCII text reads the same in both; any other
data set is decoded whole and written as ISO_IR 192.
"""

from __future__ import annotations

import warnings

from pydicom.charset import convert_encodings, python_encoding
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from gateway.core.study import Patient
from gateway.core.uid import is_uid

_DEFAULT_REPERTOIRE = ("", "ISO_IR 6")
UTF8 = "ISO_IR 192"


def needs_whole_header(ds: Dataset, patient: Patient) -> bool:
    """Whether ``patient``'s values need another character set than ``ds`` declares, other than the default
    repertoire's: then every text value of the data set is converted, not only the Patient Module's."""
    text = _non_ascii(patient)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        current = _declared(ds)
    return bool(text and current) and not (len(current) == 1 and _encodes(current[0], text))


def apply_patient(ds: Dataset, patient: Patient) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's notes on odd values may quote patient data
        values = {"PatientName": patient.name, "PatientID": patient.patient_id,
                  "PatientBirthDate": patient.birth_date, "PatientSex": patient.sex}
        _character_set(ds, _non_ascii(patient), patient.charset)  # pydicom writes no (retired) group length
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        _issuer(ds, patient.issuer)


def _non_ascii(patient: Patient) -> list[str]:
    return [value for value in (patient.name, patient.patient_id, patient.issuer) if not value.isascii()]


def _declared(ds: Dataset) -> list[str]:
    """The data set's Specific Character Set terms other than the default repertoire's."""
    declared = ds.get("SpecificCharacterSet", "")
    terms = [str(term) for term in declared] if not isinstance(declared, str) else [declared]
    return [term for term in terms if term not in _DEFAULT_REPERTOIRE]


def _character_set(ds: Dataset, text: list[str], preferred: str) -> None:
    if not text:
        return
    current = _declared(ds)
    if not current:
        chosen = preferred if preferred and _encodes(preferred, text) else UTF8
        ds.SpecificCharacterSet = chosen
        # the text already there is ASCII, the same bytes in the new set: written as it is, not converted
        implicit, little = ds.original_encoding
        ds.set_original_encoding(implicit, little, convert_encodings(chosen))
        return
    if len(current) == 1 and _encodes(current[0], text):
        return
    ds.decode()  # every text value as str, read in the old character set, written in the new one
    ds.SpecificCharacterSet = UTF8


def _encodes(term: str, text: list[str]) -> bool:
    codec = python_encoding.get(term)
    if codec is None:
        return False
    try:
        for value in text:
            value.encode(codec)
    except UnicodeEncodeError:
        return False
    return True


def _issuer(ds: Dataset, issuer: str) -> None:
    """Written when the effective issuer (the qualifiers' Universal Entity ID first, as the index keys it)
    differs: Issuer of Patient ID and its qualifiers together, so the two never disagree."""
    qualifiers = ds.get("IssuerOfPatientIDQualifiersSequence")
    effective = (qualifiers[0].get("UniversalEntityID", "") if qualifiers else "") or ds.get("IssuerOfPatientID", "")
    if effective != issuer:
        set_issuer(ds, issuer)


def set_issuer(ds: Dataset, issuer: str) -> None:
    """Issuer of Patient ID, with its qualifiers (Universal Entity ID, type ISO) when it is an OID, and without
    qualifiers that would name another issuer when it is not."""
    ds.IssuerOfPatientID = issuer
    if is_uid(issuer):
        item = Dataset()
        item.UniversalEntityID = issuer
        item.UniversalEntityIDType = "ISO"
        ds.IssuerOfPatientIDQualifiersSequence = Sequence([item])
    elif "IssuerOfPatientIDQualifiersSequence" in ds:
        del ds.IssuerOfPatientIDQualifiersSequence
