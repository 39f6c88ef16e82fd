"""The tables of the DICOM Conformance Statement (docs/conformance-statement.md) that the code knows, so they
cannot drift from it: the storage SOP Classes and transfer syntaxes the receiver accepts, the other SOP Classes
(query/retrieve among them) and the query keys.

``python -m gateway.ingest.conformance`` rewrites the generated sections of the statement in place (each between
``<!-- generated:NAME -->`` and ``<!-- end:NAME -->``); ``--check`` exits 1 when the file is out of date, which
a test runs.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from pydicom._uid_dict import UID_dictionary
from pydicom.datadict import dictionary_VR, tag_for_keyword

from gateway.core import query
from gateway.dicom import commitment, identity
from gateway.dicom.acse import LAST_RESORT, UNCOMPRESSED
from gateway.dicom.service import VERIFICATION
from gateway.ingest.cstore import all_transfer_syntaxes, storage_sop_classes
from gateway.retrieve.find import QUERY_SYNTAXES

STATEMENT = Path(__file__).resolve().parents[2] / "docs" / "conformance-statement.md"
INSTANCE_AVAILABILITY_NOTIFICATION = "1.2.840.10008.5.1.4.33"


def _name(uid: str) -> str:
    name, _, _, retired, _ = UID_dictionary[uid]
    return f"{name} (retired)" if retired else name


def storage_classes() -> str:
    rows = [f"| {_name(uid)} | `{uid}` | SCP |" for uid in sorted(storage_sop_classes(), key=_name)]
    return "\n".join(["| SOP Class | UID | Role |", "|---|---|---|", *rows])


def other_classes() -> str:
    rows = [
        (VERIFICATION, "SCP", "C-ECHO"),
        (commitment.STORAGE_COMMITMENT_PUSH_MODEL, "SCP",
         "N-ACTION received; N-EVENT-REPORT sent on the same association or a new one"),
        (commitment.STORAGE_COMMITMENT_PUSH_MODEL, "SCU",
         "N-ACTION sent to forwarding destinations; N-EVENT-REPORT received on a new association or the same one"),
        (INSTANCE_AVAILABILITY_NOTIFICATION, "SCU", "N-CREATE sent to configured subscribers"),
        *((uid, "SCP", "C-FIND received (C-CANCEL honoured)")
          for uid in (query.FIND_PATIENT_ROOT, query.FIND_STUDY_ROOT)),
        *((uid, "SCP", "C-MOVE received (C-CANCEL honoured); C-STORE sub-operations on a new association to the Move "
                      "Destination")
          for uid in (query.MOVE_PATIENT_ROOT, query.MOVE_STUDY_ROOT)),
        *((uid, "SCP", "C-GET received (C-CANCEL honoured); C-STORE sub-operations on the requestor's association")
          for uid in (query.GET_PATIENT_ROOT, query.GET_STUDY_ROOT)),
    ]
    lines = [f"| {_name(uid)} | `{uid}` | {role} | {how} |" for uid, role, how in rows]
    return "\n".join(["| SOP Class | UID | Role | DIMSE |", "|---|---|---|---|", *lines])


def transfer_syntaxes() -> str:
    def rank(uid: str) -> str:
        return "last resort" if uid in LAST_RESORT else "in the requestor's order"

    rows = [f"| {_name(uid)} | `{uid}` | {rank(uid)} |" for uid in all_transfer_syntaxes()]
    return "\n".join(["| Transfer Syntax | UID | When several are proposed |", "|---|---|---|", *rows])


def commitment_syntaxes() -> str:
    return ", ".join(f"{_name(uid)} (`{uid}`)" for uid in UNCOMPRESSED)


def query_syntaxes() -> str:
    return ", ".join(f"{_name(uid)} (`{uid}`)" for uid in QUERY_SYNTAXES)


def query_keys() -> str:
    def tag(keyword: str) -> str:
        number = tag_for_keyword(keyword)
        assert number is not None, keyword
        return f"({number >> 16:04X},{number & 0xFFFF:04X})"

    def takes(keyword: str, value: str, match: query.Match) -> bool:
        try:
            found = query.condition(keyword, value, fold_names=False)
        except query.InvalidQuery:
            return False
        return found is not None and found.match is match

    def matching(key: query.Key) -> str:
        if not key.matching:
            return "returned only"
        kinds = ["single value", "list"]
        if takes(key.keyword, "A*", query.Match.WILDCARD):
            kinds.append("wildcard")
        if takes(key.keyword, "1-2", query.Match.RANGE):
            kinds.append("range")
        if dictionary_VR(key.keyword) == "PN":
            kinds.append("case-insensitive by default")
        return ", ".join(kinds)

    rows = [f"| {key.level.value} | {query.level_of(key, query.Model.STUDY_ROOT).value} | {key.keyword} | "
            f"{tag(key.keyword)} | {dictionary_VR(key.keyword)} | {matching(key)} |" for key in query.KEYS.values()]
    return "\n".join(["| Level (Patient Root) | Level (Study Root) | Key | Tag | VR | Matching |",
                      "|---|---|---|---|---|---|", *rows])


def user_identity_types() -> str:
    rows = [
        (identity.USERNAME, "Username", "accepted; checked against the configured users when any is set "
                                        "(a user with an empty passcode)", "zero length"),
        (identity.USERNAME_AND_PASSCODE, "Username and passcode", "checked against the configured users "
                                                                  "when any is set", "zero length"),
        (identity.KERBEROS, "Kerberos Service ticket", "not supported: treated as no identity", "none"),
        (identity.SAML, "SAML Assertion", "not supported: treated as no identity", "none"),
        (identity.JWT, "JSON Web Token", "verified (signature, `exp`, and `aud`/`iss` when configured) when "
                                         "token keys are set", "the token received"),
    ]
    lines = [f"| {kind} | {name} | {check} | {response} |" for kind, name, check, response in rows]
    return "\n".join(["| Type | Identity | Checked | Positive response, when requested |", "|---|---|---|---|",
                      *lines])


SECTIONS: dict[str, Callable[[], str]] = {
    "storage-sop-classes": storage_classes,
    "other-sop-classes": other_classes,
    "transfer-syntaxes": transfer_syntaxes,
    "commitment-transfer-syntaxes": commitment_syntaxes,
    "query-transfer-syntaxes": query_syntaxes,
    "query-keys": query_keys,
    "user-identity-types": user_identity_types,
}


def render(text: str) -> str:
    """The statement with every generated section as the code says now. Raises ValueError for a section the
    document lacks."""
    for name, build in SECTIONS.items():
        match = re.search(rf"<!-- generated:{name} -->(.*?)<!-- end:{name} -->", text, re.DOTALL)
        if match is None:
            raise ValueError(f"the statement has no generated section {name!r}")
        text = f"{text[:match.start(1)]}\n{build()}\n{text[match.end(1):]}"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.ingest.conformance", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the statement is out of date")
    parser.add_argument("path", nargs="?", type=Path, default=STATEMENT)
    args = parser.parse_args(argv)
    current = args.path.read_text(encoding="utf-8")
    wanted = render(current)
    if args.check:
        if wanted != current:
            print(f"{args.path} is out of date: run python -m gateway.ingest.conformance", file=sys.stderr)
            return 1
        return 0
    args.path.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
