"""``dicom-gateway selftest``: run the national deployment test against the running configuration, or, with
``--simulator``, against a gateway it starts itself with the bundled XDS simulator and a local archive; write the
report (JSON and HTML). Exit 0 when every case that ran passed (and the archiving cases a deployment needs ran),
1 when one failed, 2 when the configuration does not allow the test (production: no test identities)."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from gateway.dicom.scu import ClientTls, client_tls_context
from gateway.listen import server_tls_context
from gateway.selftest.cases import Hl7Endpoint, Selftest, Target
from gateway.selftest.peer import Api, DicomPeer, Endpoint
from gateway.settings import Settings, SettingsError, load_settings

UNUSABLE = 2
WILDCARDS = ("0.0.0.0", "::", "")
ARCHIVE_AE, SIMULATED_ARCHIVE = "SELFTESTARC", "local-archive"
"""The called AE and destination name of the archive the simulator's gateway forwards to (the self-test's own
listener)."""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "selftest", help="the national deployment test: a test study archived, read back and corrected, with a "
                         "report (HTML and JSON) for the deployment report")
    parser.add_argument("--config", type=Path, help="YAML settings file of the gateway under test")
    parser.add_argument("--simulator", action="store_true",
                        help="start a gateway of its own (embedded backends) with the bundled XDS simulator and a "
                             "local archive, instead of testing the running configuration")
    parser.add_argument("--out", type=Path, default=Path("selftest-report"), metavar="DIR",
                        help="where selftest-report.json and selftest-report.html go (default ./selftest-report)")
    parser.add_argument("--ae-title", default="SELFTEST", help="the self-test's AE title (default SELFTEST): "
                        "on the allow-list with query and retrieve, in remote_aes and among the IAN subscribers")
    parser.add_argument("--host", help="the gateway's host (default: its configured listening address, or "
                                       "127.0.0.1 when that is a wildcard)")
    parser.add_argument("--listen-host", default="0.0.0.0",
                        help="where the self-test listens for reports and IANs (its port: remote_aes)")
    parser.add_argument("--api-url", help="the operators' API (default: from GATEWAY_HTTP__*)")
    parser.add_argument("--api-ca-file", type=Path, help="CAs the API's HTTPS certificate chains to")
    parser.add_argument("--token-file", type=Path, help="an API token with the reader role or above "
                                                        "(default: {data_dir}/api-token)")
    parser.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                        help="how long each step waits for the gateway (default 120)")
    parser.add_argument("--procedure-code", type=_code, metavar="CODE^SCHEME",
                        help="the study code the test study carries (Procedure Code Sequence), e.g. one from the "
                             "site's list where fi-kanta requires a known code")
    parser.add_argument("--work", type=Path, help="--simulator: where its gateway and simulator keep their data "
                                                  "(default: a temporary directory, removed afterwards)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        if args.simulator:
            with _simulated(args) as settings:
                return _test(settings, args, {"mode": "simulator"}, "127.0.0.1", SIMULATED_ARCHIVE)
        settings = load_settings(args.config)
        return _test(settings, args, {"mode": "running configuration"}, args.listen_host)
    except SettingsError as exc:
        print(f"dicom-gateway selftest: {exc}", file=sys.stderr)
        return UNUSABLE


def _test(settings: Settings, args: argparse.Namespace, description: dict[str, Any], listen_host: str,
          local_archive: str = "") -> int:
    if not settings.validation.test_environment:
        raise SettingsError("GATEWAY_VALIDATION__TEST_ENVIRONMENT is false: this is a production configuration, "
                            "which refuses test identities (900-999); the self-test sends only test identities "
                            "and runs only where they are allowed")
    target = _target(settings, args, description, listen_host, local_archive)
    with target.dicom:
        report = Selftest(target, procedure_code=args.procedure_code).run()
    report.finished = time.time()
    try:
        json_path, html_path = report.write(args.out)
    except OSError as exc:
        raise SettingsError(f"--out {args.out}: the report cannot be written ({exc.strerror or exc})") from None
    for case in report.cases:
        print(f"{case.verdict.value:8} {case.id:18} {case.seconds:7.2f} s  {case.reason}".rstrip())
    print(f"selftest {'passed' if report.passed else 'FAILED'}: {html_path} {json_path}")
    return 0 if report.passed else 1


def _code(value: str) -> tuple[str, str]:
    code, _, scheme = value.partition("^")
    if not code or not scheme or len(code) > 16 or len(scheme) > 16:
        raise argparse.ArgumentTypeError(f"{value!r}: expected CODE^CODING-SCHEME-DESIGNATOR (each up to 16 "
                                         "characters)")
    return code, scheme


def _local(host: str, override: str | None) -> str:
    return override or ("127.0.0.1" if host in WILDCARDS else host)


def _tls(where: str, build: Callable[[], ssl.SSLContext | None]) -> ssl.SSLContext | None:
    """A TLS context from the files ``where`` names, or one line saying why not (the self-test may run as a user
    who cannot read the gateway's key)."""
    try:
        return build()
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(f"{where}: cannot be loaded ({getattr(exc, 'strerror', None) or exc})") from None


def _target(settings: Settings, args: argparse.Namespace, description: dict[str, Any], listen_host: str,
            local_archive: str) -> Target:
    """What to reach and how, from the gateway's settings: every case the deployment does not offer is named
    with the setting that would offer it. The listener is opened last, once nothing else can fail."""
    ae = args.ae_title
    dicom, tls = settings.dicom, settings.dicom.tls
    client_tls = ClientTls(tls.cert_file, tls.key_file, tls.ca_file)
    uses_tls = not dicom.plain_port_open
    endpoint = Endpoint(_local(dicom.host, args.host), tls.port if uses_tls else dicom.port, dicom.ae_title,
                        _tls("GATEWAY_DICOM__TLS__CERT_FILE, __KEY_FILE, __CA_FILE",
                             lambda: client_tls_context(client_tls)) if uses_tls else None)
    peer = DicomPeer(ae, endpoint, args.timeout)

    remote = dicom.remote_ae(ae)
    reports_to_us = "" if remote is not None else (
        f"the self-test's AE {ae} is not in GATEWAY_DICOM__REMOTE_AES (where the gateway sends commitment reports "
        "and IANs)")
    listener_tls = _tls("GATEWAY_DICOM__TLS__CERT_FILE, __KEY_FILE (the self-test's listener)",
                        lambda: server_tls_context(tls)) if remote is not None and remote.tls else None
    allowed = next((entry for entry in dicom.allowed_aes if entry.ae_title == ae), None)
    query = "" if settings.query.enabled and allowed is not None and {"query", "retrieve"} <= allowed.permissions \
        else f"{ae} may not query and retrieve (GATEWAY_DICOM__ALLOWED_AES permissions, GATEWAY_QUERY__ENABLED)"
    subscribers = {*settings.notify.ian_subscribers, *settings.notify.ian_subscribers_by_calling_ae.get(ae, ())}
    ian = "" if ae in subscribers else f"{ae} is not an IAN subscriber (GATEWAY_NOTIFY__IAN_SUBSCRIBERS)"

    http = settings.http
    scheme = "https" if http.tls.enabled else "http"
    api_url = args.api_url or f"{scheme}://{_local(http.host, args.host)}:{http.port}"
    token_file = args.token_file or settings.data_dir / "api-token"
    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        raise SettingsError(f"--token-file {token_file}: cannot be read ({exc.strerror or exc})") from None
    api_tls = _tls(f"--api-ca-file {args.api_ca_file}", lambda: ssl.create_default_context(cafile=args.api_ca_file)) \
        if api_url.startswith("https") else None

    hl7 = None
    if settings.hl7.enabled and settings.hl7.allowed_senders:
        sender = settings.hl7.allowed_senders[0]
        assert settings.hl7.port is not None
        hl7_tls = None
        if settings.hl7.tls.enabled:  # the CAs that sign the site's certificates sign the HL7 port's too
            hl7_client = ClientTls(tls.cert_file, tls.key_file, settings.hl7.tls.ca_file or tls.ca_file)
            hl7_tls = _tls("GATEWAY_HL7__TLS__CA_FILE", lambda: client_tls_context(hl7_client))
        hl7 = Hl7Endpoint(_local(settings.hl7.host, args.host), settings.hl7.port, sender.application,
                          sender.facility or "SELFTEST", settings.hl7.application, hl7_tls)
    description = {**description, "selftest_version": version("dicom-gateway"), "gateway_ae": dicom.ae_title,
                   "dicom": f"{endpoint.host}:{endpoint.port}",
                   "dicom_tls": uses_tls, "selftest_ae": ae, "api": api_url,
                   "xds_repository": settings.xds.repository_url, "xds_registry": settings.xds.registry_url,
                   "forward_destinations": [d.name for d in settings.forward.destinations],
                   "hl7": None if hl7 is None else f"{hl7.host}:{hl7.port}"}
    if remote is not None:
        try:
            peer.listen(listen_host, remote.port, listener_tls)
        except OSError as exc:
            raise SettingsError(f"GATEWAY_DICOM__REMOTE_AES {ae}: the self-test cannot listen on "
                                f"{listen_host}:{remote.port} ({exc.strerror or exc})") from None
    return Target(peer, Api(api_url, token, api_tls, args.timeout), args.timeout, reports_to_us=reports_to_us,
                  ian=ian, query=query, xds=settings.xds if settings.xds.enabled else None,
                  forward=tuple(d.name for d in settings.forward.destinations), local_archive=local_archive,
                  hl7=hl7, description=description)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def _simulated(args: argparse.Namespace) -> Iterator[Settings]:
    """A gateway of its own (every role, embedded backends) configured for the self-test, beside the bundled
    XDS simulator, both stopped (and their data removed unless ``--work`` was given) at the end."""
    work = args.work or Path(tempfile.mkdtemp(prefix="dicom-gateway-selftest."))
    work.mkdir(parents=True, exist_ok=True)
    xds_port, listen_port = _free_port(), _free_port()
    ae = args.ae_title
    config: dict[str, Any] = {
        "data_dir": str(work / "data"),
        "dicom": {"host": "127.0.0.1", "port": _free_port(), "ae_title": "DICOMGW",
                  "allowed_aes": [{"ae_title": ae, "permissions": ["store", "query", "retrieve"]},
                                  {"ae_title": ARCHIVE_AE}],
                  "remote_aes": [{"ae_title": ae, "host": "127.0.0.1", "port": listen_port}]},
        "http": {"host": "127.0.0.1", "port": _free_port()},
        "internal": {"host": "127.0.0.1", "port": _free_port()},
        "validation": {"test_environment": True},
        "notify": {"ian_subscribers": [ae], "retry_initial_seconds": 1, "retry_max_seconds": 5},
        "xds": {"repository_url": f"http://127.0.0.1:{xds_port}/xds/repository",
                "registry_url": f"http://127.0.0.1:{xds_port}/xds/registry",
                "repository_unique_id": "2.25.160028644777287174929918114221999412990",
                "organization_oid": "1.2.246.10.99999999", "organization_name": "Self-test",
                "retrieve_location_uid": "1.2.246.10.99999999.1",
                "stable_after_seconds": 5, "stability_check_seconds": 1},
        "forward": {"destinations": [{"name": SIMULATED_ARCHIVE, "ae_title": ARCHIVE_AE, "host": "127.0.0.1",
                                      "port": listen_port, "storage_commitment": False}]},
        "hl7": {"host": "127.0.0.1", "port": _free_port(), "allowed_senders": [{"application": "SELFTEST"}]},
        "log": {"level": "WARNING"},
    }
    config_file = work / "gateway.yaml"
    config_file.write_text(yaml.safe_dump(config))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    environment["GATEWAY_SECRETS_DIR"] = str(work / "no-secrets")
    log = (work / "processes.log").open("ab")
    simulator = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "xds-simulator", "--port", str(xds_port), "--data", str(work / "xds")],
        env=environment, stdout=log, stderr=subprocess.STDOUT)
    gateway = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", str(config_file)],
                               env=environment, stdout=log, stderr=subprocess.STDOUT)
    try:
        with _environment(environment):  # the settings as the gateway started reads them
            settings = load_settings(config_file)
        _wait_ready(gateway, f"http://127.0.0.1:{config['http']['port']}/readyz", work / "processes.log")
        yield settings
    finally:
        for process in (gateway, simulator):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (gateway, simulator):
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


@contextmanager
def _environment(environment: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environment)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _wait_ready(gateway: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gateway.poll() is not None:
            raise SettingsError(f"the self-test's gateway exited with {gateway.returncode}: "
                                f"{log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SettingsError(f"the self-test's gateway was not ready within {timeout:.0f} s")


