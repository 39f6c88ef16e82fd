"""Malformed and out-of-order input over raw sockets: answered with A-ABORT or a close, never a crash or wedge."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pynetdicom.presentation import build_context

from gateway.bus.embedded import EmbeddedBus
from gateway.ingest.receiver import Receiver
from gateway.metrics import Metrics
from gateway.settings import DicomSettings, EmbeddedBusSettings, TopicSettings
from tests.conftest import dcmtk
from tests.helpers import associate_rq_pdu, free_port


def associate_rq(called: str = "DICOMGW") -> bytes:
    verification = build_context("1.2.840.10008.1.1", ["1.2.840.10008.1.2"])
    verification.context_id = 1
    ct = build_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"])
    ct.context_id = 3
    commitment = build_context("1.2.840.10008.1.20.1", ["1.2.840.10008.1.2"])
    commitment.context_id = 5
    return associate_rq_pdu("RAW", called, [verification, ct, commitment])


def p_data(context_id: int, control: int, payload: bytes, pdv_length: int | None = None) -> bytes:
    pdv = struct.pack(">IBB", pdv_length if pdv_length is not None else len(payload) + 2, context_id, control)
    return struct.pack(">BBI", 0x04, 0, len(pdv) + len(payload)) + pdv + payload


class ThreadedGateway:
    """A receiver on its own event loop thread, so that blocking sockets and hypothesis can drive it."""

    def __init__(self, directory: Path) -> None:
        self.settings = DicomSettings(host="127.0.0.1", port=free_port(), acse_timeout_seconds=1,
                                      network_timeout_seconds=2, dimse_timeout_seconds=2, max_pdu_length=65536,
                                      remote_aes=[{"ae_title": "RAW", "host": "127.0.0.1", "port": 1}])
        self.metrics = Metrics()
        self._bus = EmbeddedBus(directory, EmbeddedBusSettings(), self.metrics)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with Receiver(self.settings, TopicSettings(), self._bus, self.metrics, drain_timeout=2):
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> ThreadedGateway:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()

    def exchange(self, *messages: bytes, wait: float = 3.0) -> bytes:
        """Send messages, then read until the gateway closes (or ``wait`` passes); returns what it sent."""
        with socket.create_connection(("127.0.0.1", self.settings.port), timeout=wait) as sock:
            for message in messages:
                try:
                    sock.sendall(message)
                except OSError:
                    break
            received = b""
            try:
                while chunk := sock.recv(65536):
                    received += chunk
            except (TimeoutError, OSError):
                pass
            return received

    def echo_works(self) -> bool:
        result = subprocess.run([dcmtk("echoscu"), "-to", "5", "-aec", "DICOMGW", "127.0.0.1",
                                 str(self.settings.port)], capture_output=True, timeout=30)
        return result.returncode == 0


@pytest.fixture(scope="module")
def threaded_gateway() -> Iterator[ThreadedGateway]:
    with tempfile.TemporaryDirectory() as directory, ThreadedGateway(Path(directory)) as gateway:
        yield gateway


def abort_reason(reply: bytes) -> int | None:
    """The provider reason of an A-ABORT at the end of a reply, if that is how it ends."""
    if len(reply) >= 10 and reply[-10] == 0x07:
        return reply[-1]
    return None


ACCEPT = 0x02
RELEASE_RQ = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
RELEASE_RP = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"


@pytest.mark.parametrize(
    ("name", "messages", "reason"),
    [
        ("P-DATA before association", [p_data(1, 0x03, b"\x00" * 8)], 2),
        ("unknown PDU type", [b"\x09\x00\x00\x00\x00\x04abcd"], 1),
        ("A-ASSOCIATE-RQ that does not decode", [b"\x01\x00\x00\x00\x00\x08" + b"\xff" * 8], 6),
        ("oversized A-ASSOCIATE-RQ", [b"\x01\x00\x7f\xff\xff\xff"], 6),
    ],
)
def test_bad_first_pdu_is_aborted(threaded_gateway: ThreadedGateway, name: str, messages: list[bytes],
                                  reason: int) -> None:
    reply = threaded_gateway.exchange(*messages)
    assert abort_reason(reply) == reason, (name, reply)
    assert threaded_gateway.echo_works()


@pytest.mark.parametrize(
    ("name", "message", "reason"),
    [
        ("PDV longer than its PDU", p_data(1, 0x03, b"\x00" * 8, pdv_length=400), 6),
        ("PDV on a context never accepted", p_data(9, 0x03, b"\x00" * 8), 6),
        ("command set that does not decode", p_data(1, 0x03, b"\xde\xad\xbe\xef" * 5), 6),
        ("data set without a command", p_data(3, 0x02, b"\x08\x00\x16\x00UI\x02\x001\x00"), 2),
        ("P-DATA larger than the negotiated maximum", struct.pack(">BBI", 0x04, 0, 70000) + b"\x00" * 70000, 6),
        ("second A-ASSOCIATE-RQ", associate_rq(), 2),
    ],
)
def test_bad_pdu_inside_association_is_aborted(threaded_gateway: ThreadedGateway, name: str, message: bytes,
                                               reason: int) -> None:
    reply = threaded_gateway.exchange(associate_rq(), message)
    assert reply[0] == ACCEPT, name
    assert abort_reason(reply) == reason, (name, reply[-10:])
    assert threaded_gateway.echo_works()


def test_truncated_pdu_then_close_does_not_wedge(threaded_gateway: ThreadedGateway) -> None:
    threaded_gateway.exchange(b"\x01\x00\x00\x00\x01\x00" + b"\x00" * 10, wait=0.2)
    threaded_gateway.exchange(associate_rq(), struct.pack(">BBI", 0x04, 0, 5000) + b"\x00" * 100, wait=0.2)
    assert threaded_gateway.echo_works()


def test_silent_peer_is_dropped_after_the_artim_timeout(threaded_gateway: ThreadedGateway) -> None:
    with socket.create_connection(("127.0.0.1", threaded_gateway.settings.port), timeout=10) as sock:
        assert sock.recv(100) == b""  # closed by the gateway, before our 10 s timeout


def test_unknown_called_ae_is_rejected_with_its_reason(threaded_gateway: ThreadedGateway) -> None:
    reply = threaded_gateway.exchange(associate_rq(called="NOTUS"))
    assert reply[:1] == b"\x03" and reply[7:10] == b"\x01\x01\x07"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(min_size=1, max_size=300), after_association=st.booleans())
def test_fuzzed_bytes_never_crash_the_receiver(
    threaded_gateway: ThreadedGateway, garbage: bytes, after_association: bool, caplog: pytest.LogCaptureFixture
) -> None:
    messages = [associate_rq(), garbage] if after_association else [garbage]
    with caplog.at_level(logging.ERROR, logger="gateway"):
        threaded_gateway.exchange(*messages, wait=0.3)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "an unexpected error escaped"


def test_receiver_still_serves_after_the_fuzzing(threaded_gateway: ThreadedGateway) -> None:
    assert threaded_gateway.echo_works()


def request_command(command_field: int, sop_class: str, message_id: int, with_data_set: bool) -> bytes:
    """A request command set (implicit VR little endian), as a requestor would send it."""
    def element(tag: int, value: bytes) -> bytes:
        value += b"\x00" * (len(value) % 2)
        return struct.pack("<HHI", 0, tag, len(value)) + value

    body = (element(0x0002, sop_class.encode()) + element(0x0100, struct.pack("<H", command_field))
            + element(0x0110, struct.pack("<H", message_id)) + element(0x0700, struct.pack("<H", 0))
            + element(0x0800, struct.pack("<H", 0x0000 if with_data_set else 0x0101)))
    return element(0x0000, struct.pack("<I", len(body))) + body


def response_statuses(reply: bytes) -> list[tuple[int, int]]:
    """(Command Field, Status) of every response command set in a reply, read element by element."""
    found, offset = [], 0
    while offset + 6 <= len(reply):
        pdu_type, _, length = struct.unpack_from(">BBI", reply, offset)
        body, offset = reply[offset + 6 : offset + 6 + length], offset + 6 + length
        if pdu_type != 0x04 or body[5] & 0x01 == 0:
            continue
        command, position, elements = body[6:], 0, {}
        while position + 8 <= len(command):
            _, tag, size = struct.unpack_from("<HHI", command, position)
            elements[tag] = command[position + 8 : position + 8 + size]
            position += 8 + size
        found.append((struct.unpack("<H", elements[0x0100])[0], struct.unpack("<H", elements[0x0900])[0]))
    return found


def test_unsupported_request_with_a_data_set_is_answered_0211_and_the_association_goes_on(
    threaded_gateway: ThreadedGateway,
) -> None:
    c_find = request_command(0x0020, "1.2.840.10008.5.1.4.1.1.2", 7, with_data_set=True)
    query = b"\x10\x00\x20\x00\x00\x00\x00\x00"  # (0010,0020) Patient ID, empty: a data set, implicit VR
    echo = request_command(0x0030, "1.2.840.10008.1.1", 8, with_data_set=False)
    reply = threaded_gateway.exchange(associate_rq(), p_data(3, 0x03, c_find), p_data(3, 0x02, query),
                                      p_data(1, 0x03, echo), RELEASE_RQ)
    assert reply[0] == ACCEPT
    assert response_statuses(reply) == [(0x8020, 0x0211), (0x8030, 0x0000)]
    assert reply.endswith(RELEASE_RP), "released, not aborted"


def test_storage_commitment_from_an_ae_that_may_not_request_it_is_refused_before_its_data_set(
    threaded_gateway: ThreadedGateway,
) -> None:
    """0x0124 at once: its Action Information is let go by, never gathered (it could be 32 MiB per association)."""
    n_action = request_command(0x0130, "1.2.840.10008.1.20.1", 9, with_data_set=True)
    stranger = associate_rq().replace(b"RAW             ", b"STRANGER        ", 1)
    reply = threaded_gateway.exchange(stranger, p_data(5, 0x03, n_action), p_data(5, 0x02, b"\x00" * 1000),
                                      RELEASE_RQ)
    assert reply[0] == ACCEPT
    assert response_statuses(reply) == [(0x8130, 0x0124)]


def test_an_oversized_storage_commitment_request_is_refused_0213_and_the_association_goes_on(
    threaded_gateway: ThreadedGateway,
) -> None:
    n_action = request_command(0x0130, "1.2.840.10008.1.20.1", 9, with_data_set=True)
    size, piece = 33 * 1024 * 1024, b"\x00" * 60_000
    pieces = [piece] * (size // len(piece))
    action_information = [p_data(5, 0x00, chunk) for chunk in pieces[:-1]] + [p_data(5, 0x02, pieces[-1])]
    reply = threaded_gateway.exchange(associate_rq(), p_data(5, 0x03, n_action), *action_information, RELEASE_RQ,
                                      wait=20)
    assert reply[0] == ACCEPT
    assert response_statuses(reply) == [(0x8130, 0x0213)], "Resource Limitation, after the data set went by"
    assert reply.endswith(RELEASE_RP), "released, not aborted"
