"""``dicom-gateway validate``: run a validation profile on DICOM files offline, as the gateway would.

A file whose SOP Class is Key Object Selection Document Storage is also checked against the KOS IOD
(``gateway.dicom.kos_check``, codes ``KOS-...``) in the same report; ``--xds-manifest`` checks it as an XDS-I.b
manifest as well (title (113030, DCM, "Manifest"), evidence in its own study, Retrieve Location UIDs), as the
register role checks the manifests it builds. KOS error findings count for the exit status like the profile's.

Exit status: 0 no error findings, 1 some file has error findings, 2 usage error, bad settings or profile, or
unreadable file.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from pathlib import Path
from typing import Any

import orjson
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from gateway.dicom.kos_check import KEY_OBJECT_SELECTION_DOCUMENT_STORAGE, check_kos
from gateway.settings import SettingsError, load_settings
from workers.validation.engine import ValidationResult, validate
from workers.validation.header import text
from workers.validation.model import Finding, Severity, SourceContext
from workers.validation.profiles import Profile, ProfileError, ProfileRegistry

OK, FINDINGS, UNUSABLE = 0, 1, 2


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="DICOM Part 10 files")
    parser.add_argument("--profile", help="profile name (default: the gateway's GATEWAY_VALIDATION__DEFAULT_PROFILE,"
                                          " dicom-basic unless set)")
    parser.add_argument("--profile-file", action="append", type=Path, default=[], dest="profile_files",
                        metavar="PATH", help="YAML profile layered over the bundled ones and those of the gateway "
                                             "settings (repeatable)")
    parser.add_argument("--calling-ae", default="", metavar="AE", help="calling AE title the files came from")
    parser.add_argument("--organization", default="", help="organisation name configured for the calling AE")
    parser.add_argument("--organization-oid", default="", metavar="OID",
                        help="organisation OID configured for the calling AE (1.2.246.10....); without any of "
                             "--calling-ae, --organization and --organization-oid the rules that judge the "
                             "sender are skipped")
    parser.add_argument("--test-environment", action="store_true",
                        help="accept test identity codes (900-series), as GATEWAY_VALIDATION__TEST_ENVIRONMENT=true "
                             "does")
    parser.add_argument("--config", type=Path, metavar="PATH",
                        help="YAML settings file of the gateway (environment variables override it)")
    parser.add_argument("--xds-manifest", action="store_true",
                        help="check Key Object Selection Documents as XDS-I.b manifests too, not only against the "
                             "KOS IOD")
    parser.add_argument("--json", action="store_true", help="one JSON array, an object per file, instead of a table")
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
    if result.skipped:
        lines.append(f"  skipped: {', '.join(result.skipped)}")
    return "\n".join(lines)


def _kos_findings(ds: Dataset, xds_manifest: bool) -> tuple[Finding, ...]:
    """The KOS IOD check's findings as the profile's are reported; the message starts with the path."""
    if text(ds, "SOPClassUID") != KEY_OBJECT_SELECTION_DOCUMENT_STORAGE:
        return ()
    return tuple(Finding(f.code, Severity(f.severity), f.keyword, f.tag, f"{f.path} {f.message}")
                 for f in check_kos(ds, manifest=xds_manifest))


def _check(path: Path, profile: Profile, source: SourceContext,
           xds_manifest: bool = False) -> dict[str, Any] | ValidationResult:
    """The file's result, or its JSON report with the reason when it cannot be read (also said on stderr)."""
    with warnings.catch_warnings():
        # pydicom warns about the very value problems the findings report (and its warnings quote the values)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\.")
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
            reason = f"cannot read: {getattr(exc, 'strerror', None) or exc}"
            print(f"{path}: {reason}", file=sys.stderr)
            return {"file": str(path), "error": reason, "findings": []}
        result = validate(ds, profile, source)
        kos = _kos_findings(ds, xds_manifest)
        return dataclasses.replace(result, findings=result.findings + kos) if kos else result


def _profile(args: argparse.Namespace) -> Profile:
    """The profile to run: named or the gateway's default, from the settings' profile files and the given ones."""
    settings = load_settings(args.config).validation
    profile = ProfileRegistry.load([*settings.profile_files, *args.profile_files]).get(
        args.profile or settings.default_profile
    )
    return profile.for_test_environment() if args.test_environment or settings.test_environment else profile


def run(args: argparse.Namespace) -> int:
    try:
        profile = _profile(args)
    except (SettingsError, ProfileError) as exc:
        print(f"dicom-gateway validate: {exc}", file=sys.stderr)
        return UNUSABLE
    source = SourceContext(args.calling_ae.strip(), args.organization, args.organization_oid)
    if not (source.calling_ae_title or source.organization or source.organization_oid):
        source = SourceContext.unknown()
    status, reports = OK, []
    for path in args.files:
        result = _check(path, profile, source, args.xds_manifest)
        if isinstance(result, ValidationResult):
            status = max(status, FINDINGS if result.has_errors else OK)
            reports.append({"file": str(path), **result.to_dict()})
            if not args.json:
                print(_table(path, result))
        else:
            status = UNUSABLE
            reports.append(result)
    if args.json:
        print(orjson.dumps(reports, option=orjson.OPT_INDENT_2).decode())
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.validation", description=__doc__)
    configure(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))
