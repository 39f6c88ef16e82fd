"""A real rsyslog as the audit record repository: RFC 5425 (TLS, gtls driver) and RFC 5426 (UDP) inputs on free
ports, every message received written to a file as rsyslog parsed it (JSON lines), read back by ``received``.

rsyslog is configured to keep messages as they arrive: no escaping of control characters (the XML's newlines
and tabs would become ``#012``), no dropping of a trailing newline, messages up to 256 KiB. It keeps the UTF-8
BOM at the start of MSG (in ``msg`` and ``rawmsg`` alike).

If rsyslogd cannot start, the test fails with rsyslog's own output; nothing is skipped.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import free_port

RSYSLOGD = "/usr/sbin/rsyslogd"
BOM = b"\xef\xbb\xbf"


def openssl(*arguments: str) -> None:
    subprocess.run(["openssl", *arguments], check=True, capture_output=True)


def make_pki(directory: Path) -> Path:
    """A CA with a server certificate for 127.0.0.1/localhost and a client certificate, and a stranger: a
    self-signed certificate no one trusts. EC keys: quick to make."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for name in ("ca", "stranger"):
        openssl("req", "-x509", *key, "-days", "2", "-subj", f"/CN=Test audit {name}",
                "-keyout", str(directory / f"{name}.key"), "-out", str(directory / f"{name}.pem"))
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                            ("client", "basicConstraints=CA:FALSE")):
        openssl("req", *key, "-subj", f"/CN={name}", "-keyout", str(directory / f"{name}.key"),
                "-out", str(directory / f"{name}.csr"))
        (directory / f"{name}.ext").write_text(extension + "\n")
        openssl("x509", "-req", "-in", str(directory / f"{name}.csr"), "-CA", str(directory / "ca.pem"),
                "-CAkey", str(directory / "ca.key"), "-CAcreateserial", "-days", "2",
                "-extfile", str(directory / f"{name}.ext"), "-out", str(directory / f"{name}.pem"))
    return directory


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One message as rsyslog parsed it (its RFC 5424 parser), and the bytes it received (without the frame)."""

    pri: int
    version: str
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    structured_data: str
    msg: bytes
    raw: bytes
    input: str
    """imtcp (TLS) or imudp."""


def _free_udp_port() -> int:
    """A port free for TCP (``free_port``) and for UDP as well."""
    while True:
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def _bound(pid: int, port: int, table: str, state: str) -> bool:
    """Whether process ``pid`` has a socket on 127.0.0.1:port in /proc/net/<table> in ``state`` (0A: listening;
    07: a bound UDP socket). Read rather than probed: a probe connection would be a TLS session rsyslog logs as
    failed; and matched by socket inode, so that another process on the port does not pass for rsyslog."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        inodes = {target.removeprefix("socket:[").removesuffix("]") for target in (str(link.readlink())
                  for link in fds.iterdir()) if target.startswith("socket:[")}
    except FileNotFoundError:  # it exited, or closed a descriptor while we looked
        return False
    local = f"0100007F:{port:04X}"
    for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[3] == state and fields[9] in inodes:
            return True
    return False


class Rsyslog:
    """rsyslogd run in the foreground with its configuration, output, pid file and log in ``directory``."""

    def __init__(self, directory: Path, pki: Path, *, client_auth: bool = False) -> None:
        self.directory = directory
        self.ca_file = pki / "ca.pem"
        self.tls_port = free_port()
        self.udp_port = _free_udp_port()
        self.output = directory / "received.jsonl"
        self.log = directory / "rsyslogd.log"
        self.config = directory / "rsyslog.conf"
        self.config.write_text(self._config(pki, "x509/certvalid" if client_auth else "anon"))
        self._process: subprocess.Popen[bytes] | None = None
        # rsyslogd runs on with what it could make of a configuration with errors: check it first
        check = subprocess.run([RSYSLOGD, "-N1", "-f", str(self.config)], capture_output=True, text=True)
        if check.returncode != 0:
            pytest.fail(f"rsyslogd refuses its configuration:\n{check.stdout}{check.stderr}", pytrace=False)

    def _config(self, pki: Path, auth_mode: str) -> str:
        # maxMessageSize must be set before the inputs are (it is a global); imtcp's own maxFrameSize (200000) is
        # larger than any message here.
        return f"""
global(
  workDirectory="{self.directory}"
  maxMessageSize="256k"
  net.enableDNS="off"
  parser.escapeControlCharactersOnReceive="off"
  parser.dropTrailingLFOnReception="off"
  defaultNetstreamDriverCAFile="{pki / 'ca.pem'}"
  defaultNetstreamDriverCertFile="{pki / 'server.pem'}"
  defaultNetstreamDriverKeyFile="{pki / 'server.key'}"
)
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="{auth_mode}")
input(type="imtcp" address="127.0.0.1" port="{self.tls_port}")
module(load="imudp")
input(type="imudp" address="127.0.0.1" port="{self.udp_port}")

template(name="received" type="list" option.jsonf="on") {{
  property(outname="pri" name="pri" format="jsonf")
  property(outname="version" name="protocol-version" format="jsonf")
  property(outname="timestamp" name="timestamp" dateFormat="rfc3339" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app_name" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="structured_data" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
  property(outname="raw" name="rawmsg" format="jsonf")
  property(outname="input" name="inputname" format="jsonf")
}}
# only what the inputs received: rsyslog's own messages go to its stderr (run with -n)
if $inputname == "imtcp" or $inputname == "imudp" then {{
  action(type="omfile" file="{self.output}" template="received")
}}
"""

    def start(self, timeout: float = 15.0) -> None:
        """Start rsyslogd and return once both inputs listen; fail the test with its output if they do not."""
        assert self._process is None, "rsyslogd is already running"
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [RSYSLOGD, "-n", "-C", "-f", str(self.config), "-i", str(self.directory / "rsyslogd.pid")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.directory,
            )
        deadline = time.monotonic() + timeout
        pid = self._process.pid
        while not (_bound(pid, self.tls_port, "tcp", "0A") and _bound(pid, self.udp_port, "udp", "07")):
            if self._process.poll() is not None or time.monotonic() > deadline:
                code = self._process.poll()
                self.stop()
                pytest.fail(f"rsyslogd did not start listening on TLS {self.tls_port} and UDP {self.udp_port}"
                            f" (exit status {code}):\n{self.log.read_text(errors='replace')[-4000:]}",
                            pytrace=False)
            time.sleep(0.02)

    def pause(self) -> None:
        """SIGSTOP: a repository that stops reading, its connections open, its kernel still acknowledging
        whatever fits its receive buffers."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, and SIGKILL if it has not exited within ``timeout`` seconds."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGCONT)  # in case it was paused
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def received(self) -> list[ReceivedMessage]:
        """Every message received so far, in the order rsyslog wrote them (its order of arrival per input)."""
        if not self.output.exists():
            return []
        messages = []
        for line in self.output.read_bytes().split(b"\n")[:-1]:  # a last line without its end is still being written
            value = json.loads(line)
            messages.append(ReceivedMessage(
                pri=int(value["pri"]), version=value["version"], timestamp=value["timestamp"],
                hostname=value["hostname"], app_name=value["app_name"], procid=value["procid"],
                msgid=value["msgid"], structured_data=value["structured_data"], msg=value["msg"].encode(),
                raw=value["raw"].encode(), input=value["input"],
            ))
        return messages

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        """The messages received once there are at least ``count`` (failing after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while len(messages := self.received()) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"rsyslog received {len(messages)} messages, not {count}, within {timeout} s;"
                            f" its log:\n{self.log.read_text(errors='replace')[-4000:]}", pytrace=False)
            await asyncio.sleep(0.02)
        return messages
