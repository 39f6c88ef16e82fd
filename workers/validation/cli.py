"""``dicom-gateway validate``: run a validation profile on DICOM files offline, as the gateway would.

Exit status: 0 no error findings, 1 some file has error findings, 2 usage error, bad profile or unreadable file.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import orjson
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from workers.validation.engine import ValidationResult, validate
from workers.validation.model import Severity, SourceContext
from workers.validation.profiles import Profile, ProfileError, ProfileRegistry

OK, FINDINGS, UNUSABLE = 0, 1, 2


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="DICOM Part 10 files")
    parser.add_argument("--profile", default="dicom-basic", help="profile name (default: dicom-basic)")
    parser.add_argument("--profile-file", action="append", type=Path, default=[], dest="profile_files",
                        metavar="PATH", help="YAML profile layered over the bundled ones (repeatable)")
    parser.add_argument("--calling-ae", default="", metavar="AE", help="calling AE title the files came from")
    parser.add_argument("--organization", default="", help="organisation name configured for the calling AE")
    parser.add_argument("--organization-oid", default="", metavar="OID",
                        help="organisation OID configured for the calling AE (1.2.246.10....)")
    parser.add_argument("--json", action="store_true", help="one JSON object per file instead of a table")
    parser.set_defaults(func=run)


def add_parser(subparsers: Any) -> None:
    """Register ``validate`` on the main command's subparsers."""
    configure(subparsers.add_parser("validate", help="validate DICOM files with a validation profile"))


def _table(path: Path, result: ValidationResult) -> str:
    error_count = sum(f.severity is Severity.ERROR for f in result.findings)
    summary = f"{error_count} error(s), {len(result.findings) - error_count} warning(s)" if result.findings else "OK"
    lines = [f"{path}: {summary}"]
    for f in result.findings:
        tag = f"({f.tag >> 16:04X},{f.tag & 0xFFFF:04X})"
        lines.append(f"  {f.severity.value:<7}  {f.code:<28} {tag} {f.keyword:<32} {f.message}")
    lines += [f"  coerced  {change.keyword} ({change.reason})" for change in result.changes]
    return "\n".join(lines)


def _check(path: Path, profile: Profile, source: SourceContext, as_json: bool) -> int:
    """Validate one file and print its report; returns the file's exit status."""
    with warnings.catch_warnings():
        # pydicom warns about the very value problems the findings report (and its warnings quote the values)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\.")
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
            reason = f"cannot read: {getattr(exc, 'strerror', None) or exc}"
            if as_json:
                print(orjson.dumps({"file": str(path), "error": reason}).decode())
            else:
                print(f"{path}: {reason}", file=sys.stderr)
            return UNUSABLE
        result = validate(ds, profile, source)
    print(orjson.dumps({"file": str(path), **result.to_dict()}).decode() if as_json else _table(path, result))
    return FINDINGS if result.has_errors else OK


def run(args: argparse.Namespace) -> int:
    try:
        profile = ProfileRegistry.load(args.profile_files).get(args.profile)
    except ProfileError as exc:
        print(f"dicom-gateway validate: {exc}", file=sys.stderr)
        return UNUSABLE
    source = SourceContext(args.calling_ae.strip(), args.organization, args.organization_oid)
    return max([_check(path, profile, source, args.json) for path in args.files], default=OK)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.validation", description=__doc__)
    configure(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))
