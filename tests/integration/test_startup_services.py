"""A service down when the gateway starts: the process stays up and unready, says once per attempt which service
and why, and becomes ready by itself when the service comes (as the stages do once running); no traceback."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tests.conftest import fresh_database, start_services
from tests.helpers import free_port
from tests.process import GatewayProcess


@contextmanager
def relay(listen_port: int, target: tuple[str, int]) -> Iterator[None]:
    """A TCP relay to the real database, opened only now: until then the database's address refuses."""

    class Pipe(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with socket.create_connection(target) as upstream:
                def pump(source: socket.socket, sink: socket.socket) -> None:
                    try:
                        while data := source.recv(65536):
                            sink.sendall(data)
                    except OSError:
                        pass
                    finally:
                        with suppress(OSError):  # the other side closed first
                            sink.shutdown(socket.SHUT_WR)

                back = threading.Thread(target=pump, args=(upstream, self.request), daemon=True)
                back.start()
                pump(self.request, upstream)
                back.join()

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    server = socketserver.ThreadingTCPServer(("127.0.0.1", listen_port), Pipe)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


async def test_the_database_down_at_start_keeps_the_process_unready_until_it_comes(tmp_path: Path) -> None:
    url = urlsplit(await fresh_database(start_services("postgres")["GATEWAY_DATABASE__URL"]))
    port = free_port()
    unreachable = urlunsplit(url._replace(netloc=f"{url.username}:{url.password}@127.0.0.1:{port}"))
    gateway = GatewayProcess(tmp_path / "data", GATEWAY_DATABASE__URL=unreachable,
                             GATEWAY_INTERNAL__PORT=str(free_port()))
    try:
        deadline = time.monotonic() + 30
        while "role waits for a service to start" not in gateway.output() and time.monotonic() < deadline:
            assert gateway.process.poll() is None, gateway.output()
            time.sleep(0.2)
        time.sleep(2)
        assert gateway.process.poll() is None, gateway.output()
        assert gateway.http("/readyz")[0] == 503
        waiting = [line for line in gateway.output().splitlines() if "role waits for a service to start" in line]
        assert waiting and all('"role":"api"' in line and "PostgreSQL unreachable" in line for line in waiting)
        with relay(port, (url.hostname or "127.0.0.1", url.port or 5432)):
            gateway.wait_ready(timeout=60)
            assert gateway.http("/api/studies")[0] == 200
            assert gateway.stop() == 0
    finally:
        gateway.stop()
    assert "Traceback" not in gateway.log.read_text()


async def test_kafka_down_at_start_is_waited_for_naming_the_setting(tmp_path: Path) -> None:
    bootstrap = start_services("kafka")["GATEWAY_KAFKA__BOOTSTRAP_SERVERS"]
    host, _, real_port = bootstrap.rpartition(":")
    port, suffix = free_port(), uuid.uuid4().hex[:8]
    gateway = GatewayProcess(tmp_path / "data", GATEWAY_KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{port}",
                             GATEWAY_INTERNAL__PORT=str(free_port()), **{
                                 f"GATEWAY_TOPICS__{topic.upper().replace('-', '_')}": f"{topic}-{suffix}"
                                 for topic in ("instances", "events", "dead-letter", "hl7", "audit")})
    try:
        deadline = time.monotonic() + 30
        while gateway.output().count("waiting for the bus") < 2 and time.monotonic() < deadline:
            assert gateway.process.poll() is None, gateway.output()
            time.sleep(0.2)
        waiting = [line for line in gateway.output().splitlines() if "waiting for the bus" in line]
        assert len(waiting) >= 2 and all("GATEWAY_KAFKA__BOOTSTRAP_SERVERS" in line for line in waiting)
        with relay(port, (host, int(real_port))):  # bootstrap through the relay; the broker then answers itself
            gateway.wait_ready(timeout=90)
            assert gateway.stop() == 0
    finally:
        gateway.stop()
    assert "Traceback" not in gateway.log.read_text()


def test_a_database_that_refuses_the_credentials_stops_the_start_in_one_line(tmp_path: Path) -> None:
    url = urlsplit(start_services("postgres")["GATEWAY_DATABASE__URL"])
    wrong = urlunsplit(url._replace(netloc=f"{url.username}:not-the-password@{url.hostname}:{url.port}"))
    gateway = GatewayProcess(tmp_path / "data", GATEWAY_DATABASE__URL=wrong, GATEWAY_INTERNAL__PORT=str(free_port()))
    assert gateway.process.wait(60) == 2
    output = gateway.output()
    assert "dicom-gateway: GATEWAY_DATABASE__URL: PostgreSQL InvalidPasswordError (SQLSTATE 28P01)" in output
    assert "Traceback" not in output and "not-the-password" not in output
    gateway.stop()
