"""``dicom-gateway xds find|get``: ask the XDS registry (ITI-18) what it holds, with the gateway's XDS settings.

``find --patient`` takes a personal identity code (sent as ``HETU^^^&1.2.246.21&ISO``) or a complete CX.
Registry times are UTC, as the registry returns them. Exit status: 0 answered, 1 the registry refused or could
not be reached, 2 usage or settings error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from gateway.settings import SettingsError, load_settings
from gateway.xds.client import APPROVED, DocumentEntrySummary, XdsClient, XdsError
from gateway.xds.metadata import Code, patient_cx

OK, FAILED, UNUSABLE = 0, 1, 2
STATUSES = {
    "approved": APPROVED,
    "deprecated": "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated",
}


def add_parser(subparsers: Any) -> None:
    """Register ``xds`` (with ``find`` and ``get``) on the main command's subparsers."""
    xds = subparsers.add_parser("xds", help="query the XDS registry (ITI-18 FindDocuments / GetDocuments)")
    commands = xds.add_subparsers(dest="xds_command", required=True, metavar="COMMAND")

    find = commands.add_parser("find", help="the patient's DocumentEntries (FindDocuments)")
    find.add_argument("--patient", required=True, metavar="HETU|CX",
                      help="personal identity code, or a patient id as ID^^^&OID&ISO")
    find.add_argument("--status", action="append", choices=sorted(STATUSES), dest="statuses",
                      help="availability status (repeatable; default approved)")
    find.add_argument("--class-code", action="append", default=[], dest="class_codes", metavar="CODE^^SCHEME",
                      help="only entries with this classCode (repeatable), e.g. IMAGES^^1.3.6.1.4.1.19376.1.2.6.1")
    find.set_defaults(func=_run_find)

    get = commands.add_parser("get", help="DocumentEntries by uniqueId (GetDocuments)")
    get.add_argument("--unique-id", required=True, nargs="+", dest="unique_ids", metavar="UID",
                     help="DocumentEntry uniqueIds (the KOS SOP Instance UIDs)")
    get.set_defaults(func=_run_get)

    for parser in (find, get):
        parser.add_argument("--config", type=Path, metavar="PATH",
                            help="YAML settings file of the gateway (environment variables override it)")
        parser.add_argument("--json", action="store_true", help="a JSON array of entries instead of a table")


def _patient(value: str) -> str:
    """A CX as given, or a bare personal identity code (test codes included) under the hetu OID."""
    return value if "^" in value else patient_cx(value, test_environment=True)


def _class_code(value: str) -> Code:
    code, separator, scheme = value.partition("^^")
    if not separator or not code or not scheme:
        raise ValueError(f"--class-code {value!r}: expected CODE^^CODING-SCHEME")
    return Code(code=code, coding_scheme=scheme, display_name=code)


def table(entries: Sequence[DocumentEntrySummary]) -> str:
    """One line per entry; patient ids are left out (the caller typed the one they asked about)."""
    header = ("uniqueId", "status", "creationTime", "serviceStartTime", "classCode", "mimeType", "repositoryUniqueId")
    rows = [header] + [(e.unique_id, e.status.rpartition(":")[2], e.creation_time, e.service_start_time,
                        e.class_code.code if e.class_code else "", e.mime_type, e.repository_unique_id)
                       for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join([*lines, f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}"])


def _print(entries: Sequence[DocumentEntrySummary], as_json: bool) -> None:
    if as_json:
        print(orjson.dumps([e.to_dict() for e in entries], option=orjson.OPT_INDENT_2).decode())
    else:
        print(table(entries))


async def _find(args: argparse.Namespace) -> list[DocumentEntrySummary]:
    settings = load_settings(args.config).xds
    statuses = [STATUSES[s] for s in args.statuses or ["approved"]]
    async with XdsClient(settings) as client:
        return await client.find_documents(_patient(args.patient), status=statuses,
                                           class_codes=[_class_code(c) for c in args.class_codes])


async def _get(args: argparse.Namespace) -> list[DocumentEntrySummary]:
    async with XdsClient(load_settings(args.config).xds) as client:
        return await client.get_documents(unique_ids=args.unique_ids)


def _run(args: argparse.Namespace, query: Any) -> int:
    try:
        entries = asyncio.run(query(args))
    except (SettingsError, ValueError) as exc:  # ValueError: bad --patient or --class-code
        print(f"dicom-gateway xds: {exc}", file=sys.stderr)
        return UNUSABLE
    except XdsError as exc:
        print(f"dicom-gateway xds: {exc}", file=sys.stderr)
        return FAILED
    _print(entries, args.json)
    return OK


def _run_find(args: argparse.Namespace) -> int:
    return _run(args, _find)


def _run_get(args: argparse.Namespace) -> int:
    return _run(args, _get)
