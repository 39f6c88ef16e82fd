"""HAPI HL7v2 (Java, from Maven Central) as an independent HL7 v2 client peer: it sends over MLLP the way
hospital systems built on it do, so the gateway's listener is not only tested against the tests' own framing.

    acks = hapi_send("127.0.0.1", port, [adt_a08, adt_a40], charset="ISO-8859-1")
    assert acks[0].split("\\r")[1].startswith("MSA|AA|")

tests/java/HapiSend.java sends every message verbatim on one connection, in order, encoded in the charset its
MSH-18 names, and waits for each ACK (matched by MSA-2). Its jars (tests/java/hapi-pom.xml) come from Maven
Central into $GATEWAY_TOOLS_DIR/hapi-hl7v2-<version> (default ~/.cache/dicom-gateway), beside the Kafka jars
that scripts/services keeps there, and it is compiled there once (a compiled run starts in ~0.3 s, the
single-file launcher's in ~1.2 s). A missing java, javac or mvn fails the test loudly; nothing is skipped.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.helpers import build_into, tools_dir

JAVA_DIR = Path(__file__).resolve().parent / "java"
HAPI_POM = JAVA_DIR / "hapi-pom.xml"
HAPI_SEND = JAVA_DIR / "HapiSend.java"
JVM_START = 30.0
"""Seconds allowed on top of the ACK timeouts for the JVM's start and the connect."""


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"{tool} is not on PATH: the HAPI HL7v2 peer needs a JDK 17+ and Maven "
                           "(apt-get install openjdk-17-jdk-headless maven)")
    return path


def _build(target: Path, command: Callable[[Path], list[str]]) -> None:
    """Run the command made for a staging directory, which becomes ``target`` once it succeeded."""

    def run(staging: Path) -> None:
        argv = command(staging)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:4])} failed ({result.returncode}):\n"
                               f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")

    build_into(target, run, Path.is_dir)


def hapi_jars() -> Path:
    """The directory of HAPI's jars and their dependencies, fetched with Maven the first time."""
    version = next(line for line in HAPI_POM.read_text().splitlines() if "<hapi.version>" in line)
    version = version.split(">")[1].split("<")[0]
    libs = tools_dir() / f"hapi-hl7v2-{version}" / "libs"
    if not (libs / f"hapi-base-{version}.jar").is_file():
        mvn = _require("mvn")
        _build(libs, lambda out: [mvn, "-q", "-B", "-f", str(HAPI_POM), "dependency:copy-dependencies",
                                  f"-DoutputDirectory={out}", "-DincludeScope=runtime"])
    return libs


def _hapi_send_classes() -> Path:
    """HapiSend compiled once per version of its source, since the single-file launcher compiles on every run."""
    libs = hapi_jars()
    classes = libs.parent / f"classes-{hashlib.sha256(HAPI_SEND.read_bytes()).hexdigest()[:16]}"
    if not (classes / "HapiSend.class").is_file():
        javac = _require("javac")
        _build(classes, lambda out: [javac, "-nowarn", "-d", str(out), "-cp", str(libs / "*"), str(HAPI_SEND)])
    return classes


def hapi_send(host: str, port: int, messages: list[bytes | str], charset: str = "UTF-8", timeout: float = 60,
              *, tls_ca: Path | None = None) -> list[str]:
    """Send the messages in order on one MLLP connection (TLS, trusting the PEM ``tls_ca``, when given) and
    return each ACK as received, segments joined by "\\r".

    ``charset`` is that of the messages given as bytes (str ones are encoded in it) and the wire's when MSH-18
    is empty; ``timeout`` is the wait for each ACK. Raises RuntimeError with HapiSend's stderr when it fails.
    """
    classes = _hapi_send_classes()
    java = _require("java")
    with tempfile.TemporaryDirectory(prefix="hapi-send-") as work:
        files = []
        for number, message in enumerate(messages):
            path = Path(work) / f"{number:04d}.hl7"
            path.write_bytes(message.encode(charset) if isinstance(message, str) else message)
            files.append(str(path))
        command = [java, "-cp", f"{classes}{os.pathsep}{classes.parent / 'libs' / '*'}", "HapiSend", host, str(port),
                   "--charset", charset, "--timeout", str(timeout),
                   *(["--tls", str(tls_ca)] if tls_ca else []), *files]
        try:
            result = subprocess.run(command, capture_output=True, timeout=timeout * len(messages) + JVM_START)
        except subprocess.TimeoutExpired as error:
            stderr = (error.stderr or b"").decode(errors="replace")
            raise RuntimeError(f"HapiSend to {host}:{port} did not finish:\n{stderr[-4000:]}") from error
    stderr = result.stderr.decode(errors="replace")
    if result.returncode != 0:
        raise RuntimeError(f"HapiSend to {host}:{port} failed ({result.returncode}):\n{stderr[-4000:]}")
    acks: list[str] = []
    segments: list[str] = []
    for line in result.stdout.decode().split("\n"):
        if line == "----":
            acks.append("\r".join(segments))
            segments = []
        elif line:
            segments.append(line)
    if len(acks) != len(messages):
        raise RuntimeError(f"HapiSend printed {len(acks)} ACKs for {len(messages)} messages:\n"
                           f"{result.stdout.decode(errors='replace')}\n{stderr[-4000:]}")
    return acks
