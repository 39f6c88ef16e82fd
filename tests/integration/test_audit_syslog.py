"""Audit messages to a real rsyslog as the audit record repository (IHE ITI-20): the RFC 5424 header, RFC 5425
octet counting over TLS, RFC 5426 datagrams, and what a repository outage does to delivery."""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from gateway.audit.syslog import (
    MSGID,
    MessageTooLarge,
    RepositoryUnavailable,
    TlsRepository,
    UdpRepository,
    octet_frame,
    repository,
    syslog_message,
    tls_context,
)
from tests.rsyslog import BOM, ReceivedMessage, Rsyslog, make_pki

AT = datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
XML = b'<?xml version="1.0" encoding="UTF-8"?>\n<AuditMessage><EventIdentification EventActionCode="R"/></AuditMessage>'


def audit(xml: bytes = XML, *, failure: bool = False, bom: bool = True, at: datetime = AT) -> bytes:
    return syslog_message(xml, at=at, hostname="gw1.example.fi", app_name="dicom-gateway", procid="4242",
                          failure=failure, bom=bom)


def numbered(number: int, padding: int = 0) -> bytes:
    return audit(b"<AuditMessage n='%d'>%s</AuditMessage>" % (number, b"x" * padding))


def numbers(received: list[ReceivedMessage]) -> list[int]:
    return [int(message.msg.removeprefix(BOM).split(b"'")[1]) for message in received]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("audit-pki"))


@pytest.fixture
def rsyslog(tmp_path: Path, pki: Path) -> Iterator[Rsyslog]:
    server = Rsyslog(tmp_path, pki)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def tls(rsyslog: Rsyslog) -> AsyncIterator[TlsRepository]:
    repo = TlsRepository("127.0.0.1", rsyslog.tls_port, tls_context(rsyslog.ca_file, None, None))
    yield repo
    await repo.close()


# the message itself, without a repository


def test_header_fields_are_made_legal() -> None:
    """Spaces and non-ASCII would shift or break the space-separated header; empty fields are the nil value."""
    message = syslog_message(b"<a/>", at=AT, hostname="", app_name="dicom gateway\tä", procid="x" * 200,
                             failure=False)
    header = message.split(b" ")
    assert header[2] == b"-"
    assert header[3] == b"dicom_gateway__"
    assert header[4] == b"x" * 128
    assert header[5:7] == [b"IHE+RFC-3881", b"-"]
    assert syslog_message(b"<a/>", at=AT, hostname="h" * 300, app_name="a" * 60, procid="", failure=True,
                          bom=False) == b"<84>1 2025-03-04T05:06:07.890123Z " + b"h" * 255 + b" " + b"a" * 48 + \
        b" - IHE+RFC-3881 - <a/>"


def test_timestamp_is_utc_and_needs_a_timezone() -> None:
    helsinki = AT.astimezone(timezone(timedelta(hours=2)))
    assert audit(at=helsinki) == audit(at=AT)
    assert audit(at=AT).startswith(b"<85>1 2025-03-04T05:06:07.890123Z gw1.example.fi dicom-gateway 4242 ")
    with pytest.raises(ValueError, match="timezone"):
        audit(at=AT.replace(tzinfo=None))


def test_bom_is_written_once() -> None:
    assert audit().endswith(b" - " + BOM + XML)
    assert audit(BOM + XML) == audit()
    assert audit(bom=False).endswith(b" - " + XML)


def test_octet_frame() -> None:
    assert octet_frame("<85>1 - - - - - - ä\n".encode()) == b"21 <85>1 - - - - - - \xc3\xa4\n"


def test_repository_urls() -> None:
    context = tls_context(None, None, None)
    assert isinstance(repository("tls://[::1]:6514", context), TlsRepository)
    assert isinstance(repository("udp://audit.example.fi:514", None), UdpRepository)
    for bad in ("tcp://host:514", "tls://host", "udp://:514", "tls://host:6514/path", "udp://host:port", "host:514"):
        with pytest.raises(ValueError, match=re.escape("tls://host:port or udp://host:port")):
            repository(bad, context)
    with pytest.raises(ValueError, match="TLS context"):
        repository("tls://host:6514", None)


def test_tls_context_verifies_the_server_with_tls_12_or_later(pki: Path) -> None:
    context = tls_context(pki / "ca.pem", pki / "client.pem", pki / "client.key")
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    with pytest.raises(ValueError, match="certificate file"):
        tls_context(pki / "ca.pem", None, pki / "client.key")


# against rsyslog


async def test_header_as_the_repository_reads_it(rsyslog: Rsyslog, tls: TlsRepository) -> None:
    await tls.send([audit(), audit(failure=True), audit(bom=False)])
    received = await rsyslog.wait_for(3)
    assert [message.pri for message in received] == [85, 84, 85]
    for message in received:
        assert (message.version, message.hostname, message.app_name, message.procid) == \
            ("1", "gw1.example.fi", "dicom-gateway", "4242")
        assert message.msgid == MSGID == "IHE+RFC-3881"
        assert message.structured_data == "-"
        assert datetime.fromisoformat(message.timestamp) == AT
        assert re.fullmatch(rb"<8[45]>1 2025-03-04T05:06:07\.890123(Z|\+00:00) .*", message.raw, re.DOTALL)
        assert message.msg.removeprefix(BOM) == XML
    # rsyslog keeps the BOM as the start of MSG: a repository that does not strip it sees it before the XML
    assert [message.msg.startswith(BOM) for message in received] == [True, True, False]


async def test_octet_counting_keeps_messages_whole(rsyslog: Rsyslog, tls: TlsRepository) -> None:
    """Newlines (and a trailing one), tabs, non-ASCII and a 30 KB message: each arrives as one message, in order."""
    bodies = [b"<a>one</a>", b"<a>\n  two\n</a>\n", "<a>ääkköset\t€</a>".encode(),
              b"<a>" + b"0123456789\n" * 3000 + b"</a>", b"<a>\r\nlast</a>"]
    sent = [audit(body) for body in bodies]
    await tls.send(sent[:2])
    await tls.send(sent[2:])
    received = await rsyslog.wait_for(len(sent))
    assert [message.raw for message in received] == sent
    assert [message.msg for message in received] == [BOM + body for body in bodies]
    assert len(received[3].msg) > 30_000
    await asyncio.sleep(0.3)
    assert len(rsyslog.received()) == len(sent)


async def test_udp_one_message_per_datagram(rsyslog: Rsyslog) -> None:
    udp = UdpRepository("127.0.0.1", rsyslog.udp_port)
    try:
        sent = [numbered(1), audit(b"<a>\nlines\n</a>", failure=True), audit(b"<a>" + b"x" * 60_000 + b"</a>")]
        await udp.send(sent)
        received = await rsyslog.wait_for(len(sent))
        assert [message.raw for message in received] == sent
        assert {message.input for message in received} == {"imudp"}
        with pytest.raises(MessageTooLarge) as raised:
            await udp.send([numbered(2), audit(b"<a>" + b"x" * 65_000 + b"</a>")])
        assert str(raised.value) == f"audit message of {len(audit(b'<a>' + b'x' * 65_000 + b'</a>'))} bytes exceeds" \
                                    " the 65000-byte datagram limit"
        assert raised.value.retriable is False
        await asyncio.sleep(0.3)
        assert len(rsyslog.received()) == len(sent), "nothing of a batch with a message too large is sent"
    finally:
        await udp.close()


async def test_udp_errors_are_unavailable(rsyslog: Rsyslog) -> None:
    """Nothing listens: the ICMP port unreachable the first datagram brings back fails the next send."""
    udp = UdpRepository("127.0.0.1", rsyslog.udp_port)
    try:
        rsyslog.stop()
        with pytest.raises(RepositoryUnavailable, match="Connection refused"):
            for _ in range(10):
                await udp.send([numbered(1)])
                await asyncio.sleep(0.05)
        rsyslog.start()
        await udp.send([numbered(2)])
        assert [message.raw for message in await rsyslog.wait_for(1)] == [numbered(2)]
    finally:
        await udp.close()


async def test_outage_is_unavailable_and_a_restart_is_used(rsyslog: Rsyslog, tls: TlsRepository) -> None:
    """The repository stops while the connection is idle. The event loop does not run in between, so the next
    batch is written into the dead connection, and that write succeeds: only the settle time shows the loss."""
    await tls.send([numbered(1)])
    rsyslog.stop()
    started = time.monotonic()
    with pytest.raises(RepositoryUnavailable, match="closed the connection during a send"):
        await tls.send([numbered(2)])
    with pytest.raises(RepositoryUnavailable, match="Connection refused"):
        await tls.send([numbered(2)])
    assert time.monotonic() - started < 2
    rsyslog.start()
    await tls.send([numbered(2)])
    assert [message.raw for message in await rsyslog.wait_for(2)] == [numbered(1), numbered(2)]


async def test_worker_loop_over_an_outage_loses_nothing(rsyslog: Rsyslog, tls: TlsRepository) -> None:
    """The audit worker's way: re-send a failed batch until it goes through. Every number arrives, first
    occurrences in order; duplicates only of a batch that failed (it may have arrived before the failure
    showed)."""
    batches = [[number * 4 + i for i in range(4)] for number in range(25)]
    failed: set[int] = set()
    failures = 0

    async def worker() -> None:
        nonlocal failures
        for batch in batches:
            while True:
                try:
                    async with asyncio.timeout(5):
                        await tls.send([numbered(number) for number in batch])
                    break
                except RepositoryUnavailable:
                    failures += 1
                    failed.update(batch)
                    await asyncio.sleep(0.1)
            await asyncio.sleep(0.01)

    async def outage() -> None:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(rsyslog.stop)
        await asyncio.sleep(3)
        await asyncio.to_thread(rsyslog.start)

    await asyncio.gather(worker(), outage())
    expected = [number for batch in batches for number in batch]
    received = await rsyslog.wait_for(len(expected))
    arrived = numbers(received)
    first = list(dict.fromkeys(arrived))
    assert first == expected
    duplicated = {number for number in arrived if arrived.count(number) > 1}
    duplicates = len(arrived) - len(first)
    print(f"outage: {failures} failed sends, {duplicates} duplicates {sorted(duplicated)}")
    assert failures > 0
    assert duplicated <= failed
    assert duplicates <= 4


async def test_a_repository_that_stops_reading_is_unavailable(rsyslog: Rsyslog) -> None:
    """Its kernel acknowledges what fits its receive buffer and then nothing: ``send`` raises after the write
    timeout rather than hanging, or counting the batch delivered while it sits in this host's buffers."""
    repo = TlsRepository("127.0.0.1", rsyslog.tls_port, tls_context(rsyslog.ca_file, None, None), write_timeout=1)
    try:
        await repo.send([numbered(0)])
        rsyslog.pause()
        delivered = [0]
        started = time.monotonic()
        with pytest.raises(RepositoryUnavailable, match="timed out"):
            for first in range(1, 100_000, 32):
                batch = list(range(first, first + 32))
                await repo.send([numbered(number, padding=30_000) for number in batch])
                delivered += batch
        assert time.monotonic() - started < 1 + 0.3 * len(delivered) / 32 + 2
        rsyslog.resume()
        await repo.send([numbered(number, padding=30_000) for number in batch])
        received = numbers(await rsyslog.wait_for(len(delivered) + len(batch)))
        assert set(received) >= set(delivered + batch)
        print(f"stopped reading: {len(delivered) - 1} messages delivered, {len(received)} received")
    finally:
        rsyslog.resume()
        await repo.close()


async def test_untrusted_server_certificate_is_unavailable(rsyslog: Rsyslog, pki: Path) -> None:
    for repo in (TlsRepository("127.0.0.1", rsyslog.tls_port, tls_context(pki / "stranger.pem", None, None)),
                 TlsRepository("127.0.0.1", rsyslog.tls_port, tls_context(rsyslog.ca_file, None, None),
                               server_hostname="audit.example.fi")):
        try:
            with pytest.raises(RepositoryUnavailable, match="certificate verification failed"):
                await repo.send([numbered(1)])
        finally:
            await repo.close()
    await asyncio.sleep(0.3)
    assert rsyslog.received() == []


async def test_mutual_tls_refusal_after_the_handshake_is_noticed(tmp_path: Path, pki: Path) -> None:
    """With TLS 1.3 the client's handshake is done before the server has checked the client's certificate: a
    repository refusing it closes the connection only after the batch was written, which is what the settle
    time is there to notice."""
    server = Rsyslog(tmp_path, pki, client_auth=True)
    server.start()
    try:
        for identity in (None, "stranger"):
            cert, key = (pki / f"{identity}.pem", pki / f"{identity}.key") if identity else (None, None)
            repo = TlsRepository("127.0.0.1", server.tls_port, tls_context(server.ca_file, cert, key))
            try:
                with pytest.raises(RepositoryUnavailable, match="closed the connection during a send"):
                    await repo.send([numbered(1)])
            finally:
                await repo.close()
        repo = TlsRepository("127.0.0.1", server.tls_port, tls_context(server.ca_file, pki / "client.pem",
                                                                       pki / "client.key"))
        try:
            await repo.send([numbered(2)])
        finally:
            await repo.close()
        assert [message.raw for message in await server.wait_for(1)] == [numbered(2)]
    finally:
        server.stop()
