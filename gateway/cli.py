"""The ``dicom-gateway`` command."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import errno
import logging
import os
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import uvloop
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from gateway import dead_letter, logs
from gateway.app import build_bus, build_roles, default_roles, open_index
from gateway.audit.report import FORMATS, report
from gateway.audit.trail import KEY as AUDIT_KEY
from gateway.bus import Bus, BusError
from gateway.core import audit
from gateway.core.audit import AuditRecord, instant
from gateway.core.errors import CannotUnderstand, DicomStatusError, describe, retriable
from gateway.core.iocm import NoteRefused, Title
from gateway.disk import DiskSpace
from gateway.http import Endpoints
from gateway.index import IndexFailure
from gateway.index.audit_log import AuditEntry
from gateway.listen import PortUnavailable, server_tls_context
from gateway.metrics import Metrics
from gateway.objects import ObjectStoreError
from gateway.processes import MergedMetrics, ReceiverProcesses
from gateway.reject import NoteTooLarge, NotHeld, reject
from gateway.runtime import Role, RoleCrashed, run_roles
from gateway.selftest import command as selftest
from gateway.settings import ROLES, Settings, SettingsError, load_settings, unknown_variables
from gateway.xds import cli as xds_cli
from gateway.xds import simulator as xds_simulator
from workers.validation import cli as validation_cli

log = logging.getLogger("gateway")

_AUDIT_EXPORT_LIMIT = 100_000


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicom-gateway",
        description="DICOM ingestion gateway: receive studies, keep them durable, forward them to the archive.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the gateway (every role, or those named with --role)")
    run.add_argument("--role", action="append", choices=ROLES, dest="roles",
                     help="run only this role (repeatable); default: every role")
    run.add_argument("--config", type=Path, help="YAML settings file (environment variables override it)")
    run.add_argument("--workers", type=int, metavar="N",
                     help="receiver processes sharing the DICOM port (overrides GATEWAY_DICOM__PROCESSES)")
    run.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)  # a receiver process tells its parent
    run.set_defaults(func=_run)

    show = commands.add_parser("settings", help="print the effective settings as JSON, secrets masked")
    show.add_argument("--config", type=Path, help="YAML settings file")
    show.set_defaults(func=_show_settings)

    dead = commands.add_parser("dead-letter", help="list or re-drive what the workers could not process")
    dead.add_argument("action", choices=["list", "redrive"])
    dead.add_argument("entry_ids", nargs="*", metavar="ENTRY_ID", help="entries to re-drive")
    dead.add_argument("--all", action="store_true", help="re-drive every open entry")
    dead.add_argument("--config", type=Path, help="YAML settings file")
    dead.set_defaults(func=_dead_letter)

    withdraw = commands.add_parser("reject", help="withdraw a study, a series or instances with an IOCM rejection "
                                                  "note (applied by the store stage)")
    withdraw.add_argument("study", metavar="STUDY_UID", help="the study's Study Instance UID")
    withdraw.add_argument("--series", metavar="SERIES_UID", help="only this series of the study")
    withdraw.add_argument("--instance", action="append", default=[], dest="instances", metavar="SOP_UID",
                          help="only this instance (repeatable)")
    withdraw.add_argument("--reason", required=True, type=Title, choices=list(Title), metavar="TITLE",
                          help="113001 quality, 113037 patient safety, 113038 incorrect worklist entry, "
                               "113039 retention expired")
    withdraw.add_argument("--config", type=Path, help="YAML settings file")
    withdraw.set_defaults(func=_reject)

    trail = commands.add_parser("audit", help="the audit log: a patient's report (who processed their data, to whom "
                                              "it was disclosed)")
    trail_commands = trail.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    exported = trail_commands.add_parser("export", help="print a patient's entries (the report an information "
                                                        "request needs); the export is audited")
    exported.add_argument("--patient", required=True, metavar="PATIENT_ID", help="the patient's ID (a HETU)")
    exported.add_argument("--from", dest="since", metavar="DATE", help="ISO 8601 date or time (default: all)")
    exported.add_argument("--to", dest="until", metavar="DATE", help="ISO 8601 date or time, exclusive "
                                                                      "(default: now)")
    exported.add_argument("--format", choices=FORMATS, default="text")
    exported.add_argument("--operator", default=os.environ.get("USER") or "operator",
                          help="who asks, as the audit trail records it (default: $USER)")
    exported.add_argument("--config", type=Path, help="YAML settings file")
    exported.set_defaults(func=_audit_export)

    validation_cli.add_parser(commands)
    xds_cli.add_parser(commands)
    xds_simulator.add_parser(commands)
    selftest.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"dicom-gateway: {exc}", file=sys.stderr)
        return 2


def _unknown_variables() -> list[tuple[str, str]]:
    """Misspelt variables (``GATEWAY_DICOM_PORT``) would be ignored without a word: each gets one line."""
    return [(name, f"{name} is not a setting and is ignored" + (f" (did you mean {intended}?)" if intended else ""))
            for name, intended in unknown_variables().items()]


def _warn_unknown_variables() -> None:
    for _, line in _unknown_variables():
        print(f"dicom-gateway: warning: {line}", file=sys.stderr)


def _check_data_dir(data_dir: Path) -> None:
    """Everything local (embedded bus, objects, SQLite, generated secrets) lives here: say so at once if it
    cannot, rather than in a traceback from whichever role writes first. A full disk is not this: the process
    waits for room (gateway.disk)."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=data_dir):
            pass
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return
        raise SettingsError(f"GATEWAY_DATA_DIR {data_dir} is not writable ({exc.strerror or exc})") from None


def _configured_files(section: BaseModel, prefix: str = "GATEWAY") -> list[tuple[str, Path]]:
    """Every file a setting names (certificates, keys, CA bundles, tokens, profiles), with its variable."""
    found: list[tuple[str, Path]] = []
    for name in type(section).model_fields:
        value = getattr(section, name)
        variable = f"{prefix}{'__' if prefix != 'GATEWAY' else '_'}{name.upper()}"
        if isinstance(value, BaseModel):
            found += _configured_files(value, variable)
        elif isinstance(value, Path) and name != "data_dir":
            found.append((variable, value))
        elif isinstance(value, tuple) and value and all(isinstance(item, Path) for item in value):
            found += [(variable, item) for item in value]
    return found


def _check_files(settings: Settings) -> None:
    """A certificate, key or list that is missing or unreadable stops the start naming its variable, as do a
    listener's certificate and key that do not load (rather than a traceback from the role that loads them)."""
    for variable, path in _configured_files(settings):
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise SettingsError(f"{variable} {path}: cannot be read ({exc.strerror or exc})") from None
    for variable, tls in (("GATEWAY_DICOM__TLS", settings.dicom.tls), ("GATEWAY_HTTP__TLS", settings.http.tls)):
        try:
            server_tls_context(tls)
        except ssl.SSLError as exc:
            raise SettingsError(f"{variable}__CERT_FILE, __KEY_FILE, __CA_FILE: do not load as a PEM certificate "
                                f"with its key and CA certificates ({exc.reason or exc})") from None


def _unavailable(settings: Settings, exc: PortUnavailable) -> str:
    """A port that could not be bound, as the setting that asked for it and why, in one line."""
    listeners = [("DICOM", settings.dicom.host, settings.dicom.port),
                 ("DICOM__TLS", settings.dicom.host, settings.dicom.tls.port),
                 ("HTTP", settings.http.host, settings.http.port),
                 ("INTERNAL", settings.internal.host, settings.internal.port)]
    sections = [section for section, host, port in listeners if (host, port) == (exc.host, exc.port)]
    host_section = sections[0].removesuffix("__TLS") if sections else ""
    port_variable = " and ".join(f"GATEWAY_{section}__PORT" for section in sections) or "port"
    host_variable = f"GATEWAY_{host_section}__HOST" if sections else "host"
    if isinstance(exc.__cause__, socket.gaierror):
        return f"{host_variable} {exc.host} cannot be resolved ({exc.strerror})"
    if exc.errno == errno.EADDRINUSE and len(sections) > 1:
        return f"{port_variable} are both {exc.port}: each listener needs a port of its own"
    if exc.errno == errno.EADDRINUSE:
        return f"{port_variable} {exc.port} is in use"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host_variable} {exc.host} is not an address of this host"
    if exc.errno == errno.EACCES:
        return f"{port_variable} {exc.port} needs privileges to bind (ports below 1024)"
    return f"{port_variable} {exc.port} cannot be bound on {exc.host} ({exc.strerror})"


def _show_settings(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    _warn_unknown_variables()
    print(orjson.dumps(settings.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode())
    return 0


def _say_where(settings: Settings, index: bool = True) -> None:
    """The embedded bus and index live under the data dir, which is relative to where a command runs: say which
    ones a command reads (a command run elsewhere would otherwise read an empty store without a word)."""
    if settings.embedded_bus_enabled:
        print(f"dicom-gateway: embedded bus under {(settings.data_dir / 'bus').resolve()}", file=sys.stderr)
    if index and settings.database.url is None:
        print(f"dicom-gateway: index {(settings.data_dir / 'index.sqlite3').resolve()}", file=sys.stderr)


def _dead_letter(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    _warn_unknown_variables()
    _check_data_dir(settings.data_dir)
    logs.configure("WARNING", settings.log.json_format)
    return uvloop.run(_dead_letter_async(settings, args))


async def _dead_letter_async(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "redrive" and not (args.all or args.entry_ids):
        print("dicom-gateway: dead-letter redrive needs entry ids (from dead-letter list) or --all", file=sys.stderr)
        return 2
    _say_where(settings, index=False)
    bus = build_bus(settings, Metrics())
    await bus.ensure_topics()
    open_entries = await dead_letter.entries(bus, settings.topics)
    if args.action == "list":
        for entry in open_entries:
            print(orjson.dumps(entry.summary()).decode())
        return 0
    chosen = open_entries if args.all else [e for e in open_entries if e.entry_id in set(args.entry_ids)]
    missing = set(args.entry_ids) - {e.entry_id for e in chosen}
    for entry_id in sorted(missing):
        print(f"dicom-gateway: no open dead-letter entry {entry_id}", file=sys.stderr)
    failed = bool(missing)
    for entry in chosen:
        try:
            new_id = await dead_letter.redrive(bus, settings.topics, entry)
        except LookupError as exc:
            print(f"dicom-gateway: {entry.entry_id}: {exc}", file=sys.stderr)
            failed = True
        else:
            print(orjson.dumps({"redriven": entry.entry_id, "as": new_id}).decode())
    return 1 if failed else 0


def _audit_export(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    _warn_unknown_variables()
    _check_data_dir(settings.data_dir)
    logs.configure("WARNING", settings.log.json_format)
    try:
        since = instant(args.since, 0.0)
        until = instant(args.until, time.time() + 1)
    except ValueError as exc:
        print(f"dicom-gateway: {exc}", file=sys.stderr)
        return 2
    if not args.patient.strip():
        print("dicom-gateway: --patient needs a patient ID", file=sys.stderr)
        return 2
    _say_where(settings)
    entries = uvloop.run(_audit_entries(settings, args.patient, since, until, args.operator))
    sys.stdout.write(report(entries, args.patient, since, until, args.format))
    return 0


async def _audit_entries(settings: Settings, patient_id: str, since: float, until: float,
                         operator: str) -> list[AuditEntry]:
    """The patient's entries, once the export itself is on the audit trail (Audit Log Used)."""
    bus = build_bus(settings, Metrics())
    await bus.ensure_topics()
    async with bus.producer() as producer:
        record = AuditRecord(
            audit.Event.AUDIT_LOG_USED, audit.Outcome.SUCCESS,
            (audit.Participant(operator, True, None, alternative_user_id="dicom-gateway audit export"),),
            audit.Interface.API, audit.Action.READ, patient=audit.Patient(patient_id))
        await producer.publish(settings.topics.audit, AUDIT_KEY, audit.encode(record))
    index = await open_index(settings)
    try:
        await index.migrate()
        return await index.audit_entries(patient_id, since, until, _AUDIT_EXPORT_LIMIT)
    finally:
        await index.close()


def _reject(args: argparse.Namespace) -> int:
    """Exit 0 once the note is durable on the bus, 1 when it is refused (nothing published), 2 when what is
    named is not held."""
    settings = load_settings(args.config)
    _warn_unknown_variables()
    _check_data_dir(settings.data_dir)
    logs.configure("WARNING", settings.log.json_format)
    _say_where(settings)
    try:
        rejected = uvloop.run(reject(settings, args.study, args.series, args.instances, args.reason))
    except NotHeld as exc:
        print(f"dicom-gateway: {exc}", file=sys.stderr)
        return 2
    except NoteTooLarge as exc:
        print(f"dicom-gateway: {exc}", file=sys.stderr)
        return 1
    except (NoteRefused, CannotUnderstand) as exc:  # as the receiver would answer a note sent to it
        print(f"dicom-gateway: refused 0x{exc.status:04X}: {exc}", file=sys.stderr)
        return 1
    except DicomStatusError as exc:  # the bus did not take it (unavailable, too slow)
        print(f"dicom-gateway: not published (0x{exc.status:04X}): {exc}", file=sys.stderr)
        return 1
    print(orjson.dumps(rejected.summary()).decode())
    return 0


MMAP_THRESHOLD_BYTES = 768 * 1024
"""Below the bus records and object chunks (just under and at 1 MiB), above a CT slice read whole (0.5 MB):
those come from the heap, which is cheaper per allocation (at 256 KiB, C-MOVE of CT slices ran 30 % slower)."""
_M_MMAP_THRESHOLD = -3
"""mallopt's parameter number (malloc.h)."""


def _bound_allocator() -> None:
    """Fix glibc's mmap threshold, so that every record or chunk buffer (about 1 MiB) is its own mapping, returned
    to the system when freed. By default glibc raises the threshold once such a buffer is freed and serves the
    next ones from its heaps, which keep what they grew to: a 2 GiB instance streamed in 1 MiB pieces then left
    270-830 MiB resident from run to run (290-330 MiB with the threshold fixed); memory bounded by design should
    not depend on that."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: its allocator has no such threshold to fix
        return
    libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def _run(args: argparse.Namespace) -> int:
    _bound_allocator()
    settings = load_settings(args.config)
    if args.workers is not None:
        if args.workers < 1:
            raise SettingsError("--workers must be at least 1")
        settings = settings.model_copy(update={"dicom": settings.dicom.model_copy(update={"processes": args.workers})})
    _check_data_dir(settings.data_dir)
    _check_files(settings)
    logs.configure(settings.log.level, settings.log.json_format)
    for name, line in _unknown_variables():
        log.warning(line, extra={"variable": name})
    roles = args.roles or default_roles(settings)
    try:
        uvloop.run(_serve(settings, roles, args.config, args.ready_fd))
    except RoleCrashed:
        return 1
    except PortUnavailable as exc:
        raise SettingsError(_unavailable(settings, exc)) from None
    except (IndexFailure, ObjectStoreError, BusError) as exc:  # refused, not down: waiting would not help
        log.error("start-up failed", extra={"error": describe(exc)})
        raise SettingsError(f"{_service_variable(settings, exc)}: {exc}") from None
    return 0


def _service_variable(settings: Settings, exc: Exception) -> str:
    """The settings to check when a service refuses the gateway at start-up (credentials, a database or bucket
    that does not exist, a topic it may not create); the data dir for the embedded ones."""
    if isinstance(exc, IndexFailure) and settings.database.url is not None:
        return "GATEWAY_DATABASE__URL"
    if isinstance(exc, ObjectStoreError) and settings.s3.endpoint is not None:
        return "GATEWAY_S3__ENDPOINT, __BUCKET, __ACCESS_KEY, __SECRET_KEY"
    if isinstance(exc, BusError) and not settings.embedded_bus_enabled:
        return "GATEWAY_KAFKA__BOOTSTRAP_SERVERS and its security settings"
    return f"GATEWAY_DATA_DIR {settings.data_dir}"


async def _serve(settings: Settings, roles: list[str], config: Path | None, ready_fd: int | None) -> None:
    metrics = Metrics()
    extra: list[Role] = []
    if settings.dicom.processes > 1 and "receiver" in roles:
        settings = settings.model_copy(update={"dicom": settings.dicom.model_copy(update={"reuse_port": True})})
        processes = ReceiverProcesses(settings.dicom.processes - 1, config, settings.runtime.drain_timeout_seconds,
                                      settings.http.tls.enabled)
        metrics.exposition = CollectorRegistry(auto_describe=False)
        merged = MergedMetrics(metrics.registry, processes)
        metrics.exposition.register(merged)
        metrics.refresh = merged.refresh
        extra.append(processes)
    bus = build_bus(settings, metrics)
    if bus.kind == "embedded":
        log.info("no Kafka configured: using the embedded bus", extra={"data_dir": str(settings.data_dir)})
    await _bus_reachable(bus)
    endpoints, space = Endpoints(), DiskSpace.for_settings(settings)
    await run_roles(settings, [*extra, *build_roles(roles, settings, bus, metrics, endpoints, space)], metrics,
                    on_ready=None if ready_fd is None else _tell_parent(ready_fd), endpoints=endpoints, space=space)


BUS_RETRY_MAX_SECONDS = 30.0


async def _bus_reachable(bus: Bus) -> None:
    """Wait for the bus (its topics made sure of) before anything opens a port: a broker down at start-up is
    waited for with a back-off, one line per attempt naming what to check, as a running role waits for it."""
    delay = 1.0
    while True:
        try:
            await bus.ensure_topics()
            return
        except Exception as exc:
            if retriable(exc) is not True:
                raise
            log.warning("waiting for the bus", extra={
                "bus": bus.kind, "error": describe(exc), "retry_in": delay,
                "check": "GATEWAY_KAFKA__BOOTSTRAP_SERVERS" if bus.kind == "kafka" else "GATEWAY_DATA_DIR"})
        await asyncio.sleep(delay)
        delay = min(delay * 2, BUS_RETRY_MAX_SECONDS)


def _tell_parent(ready_fd: int) -> Callable[[int], None]:
    """A receiver process reports its HTTP port to the process that started it (gateway/processes.py)."""

    def ready(port: int) -> None:
        os.write(ready_fd, f"{port}\n".encode())
        os.close(ready_fd)

    return ready


if __name__ == "__main__":
    sys.exit(main())
