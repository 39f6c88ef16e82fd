"""The ``dicom-gateway`` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import uvloop
from prometheus_client import CollectorRegistry

from gateway import dead_letter, logs
from gateway.app import build_bus, build_roles
from gateway.disk import DiskSpace
from gateway.http import Endpoints
from gateway.metrics import Metrics
from gateway.processes import MergedMetrics, ReceiverProcesses
from gateway.runtime import Role, RoleCrashed, run_roles
from gateway.settings import ROLES, Settings, SettingsError, load_settings
from gateway.xds import cli as xds_cli
from gateway.xds import simulator as xds_simulator
from workers.validation import cli as validation_cli

log = logging.getLogger("gateway")


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

    validation_cli.add_parser(commands)
    xds_cli.add_parser(commands)
    xds_simulator.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"dicom-gateway: {exc}", file=sys.stderr)
        return 2


def _show_settings(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    print(orjson.dumps(settings.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode())
    return 0


def _dead_letter(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    logs.configure("WARNING", settings.log.json_format)
    return uvloop.run(_dead_letter_async(settings, args))


async def _dead_letter_async(settings: Settings, args: argparse.Namespace) -> int:
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


def _run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if args.workers is not None:
        if args.workers < 1:
            raise SettingsError("--workers must be at least 1")
        settings = settings.model_copy(update={"dicom": settings.dicom.model_copy(update={"processes": args.workers})})
    logs.configure(settings.log.level, settings.log.json_format)
    roles = args.roles or [role for role in ROLES if (role != "register" or settings.xds.enabled)
                           and (role != "forward" or settings.forward.destinations)]
    try:
        uvloop.run(_serve(settings, roles, args.config, args.ready_fd))
    except RoleCrashed:
        return 1
    return 0


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
    await bus.ensure_topics()
    endpoints, space = Endpoints(), DiskSpace.for_settings(settings)
    await run_roles(settings, [*extra, *build_roles(roles, settings, bus, metrics, endpoints, space)], metrics,
                    on_ready=None if ready_fd is None else _tell_parent(ready_fd), endpoints=endpoints, space=space)


def _tell_parent(ready_fd: int) -> Callable[[int], None]:
    """A receiver process reports its HTTP port to the process that started it (gateway/processes.py)."""

    def ready(port: int) -> None:
        os.write(ready_fd, f"{port}\n".encode())
        os.close(ready_fd)

    return ready


if __name__ == "__main__":
    sys.exit(main())
