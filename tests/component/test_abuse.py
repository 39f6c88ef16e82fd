"""What an unauthenticated peer on the hospital network can do to the DICOM port, and what it cannot: idle
connections do not fill the association cap, a large A-ASSOCIATE-RQ from a caller that may not associate is
refused before it is decoded, and a request too large for any real one is not read whole."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import struct
from contextlib import AsyncExitStack

from pydicom.data import get_testdata_file
from pynetdicom.presentation import build_context

from gateway import logs
from gateway.settings import AllowedAE
from tests.component.conftest import StartGateway
from tests.conftest import dcmtk
from tests.helpers import associate_rq_pdu, run

VERIFICATION = "1.2.840.10008.1.1"
CT = str(get_testdata_file("CT_small.dcm"))


def associate_rq(calling: str, contexts: int) -> bytes:
    """An A-ASSOCIATE-RQ with ``contexts`` presentation contexts of 40 transfer syntaxes each."""
    syntaxes = [f"1.2.840.10008.1.2.4.{n}" for n in range(40)]
    listed = []
    for n in range(contexts):
        context = build_context(VERIFICATION, syntaxes)
        context.context_id = 2 * n + 1
        listed.append(context)
    return associate_rq_pdu(calling, "DICOMGW", listed)


async def exchange(port: int, pdu: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(pdu)
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read(65536)
    finally:
        writer.close()


async def test_idle_connections_do_not_fill_the_association_cap(start_gateway: StartGateway) -> None:
    async with start_gateway(max_associations=2) as gateway, AsyncExitStack() as idle:
        for _ in range(6):
            _, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            idle.callback(writer.close)
        await asyncio.sleep(0.2)
        code, out = await run(dcmtk("echoscu"), "-aec", "DICOMGW", "127.0.0.1", str(gateway.port))
        assert code == 0, out


async def test_associations_over_the_cap_are_refused_as_too_many(start_gateway: StartGateway) -> None:
    async with start_gateway(max_associations=1) as gateway:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        try:
            writer.write(associate_rq("FIRST", 1))
            await writer.drain()
            assert (await reader.read(6))[:1] == b"\x02"  # A-ASSOCIATE-AC: it holds the only place
            reply = await exchange(gateway.port, associate_rq("SECOND", 1))
            assert reply[:1] == b"\x03" and reply[7:10] == b"\x02\x03\x02"  # transient, local limit exceeded
        finally:
            writer.close()


async def test_a_large_request_from_an_unlisted_caller_is_refused_unread(start_gateway: StartGateway) -> None:
    """Refused on the calling AE title from its fixed place in the PDU, without decoding the 120 contexts."""
    async with start_gateway(allowed_aes=(AllowedAE(ae_title="MODALITY"),)) as gateway:
        large = associate_rq("STRANGER", 120)
        assert 100_000 < len(large) < 256 * 1024
        reply = await exchange(gateway.port, large)
        assert reply[:1] == b"\x03" and reply[7:10] == b"\x01\x01\x03"  # calling AE not recognised
        listed = await exchange(gateway.port, associate_rq("MODALITY", 120))
        assert listed[:1] == b"\x02"


async def test_a_request_larger_than_any_real_one_is_aborted(start_gateway: StartGateway) -> None:
    async with start_gateway() as gateway:
        header = struct.pack(">BBI", 0x01, 0, 300 * 1024)  # announces 300 KiB, never sends them
        reply = await exchange(gateway.port, header)
        assert reply[:1] == b"\x07"  # A-ABORT


async def test_one_calling_ae_cannot_hold_every_association(start_gateway: StartGateway) -> None:
    """A sender (or one spoofing its title) at its own cap leaves room for the others; an AE's own cap wins."""
    allowed = (AllowedAE(ae_title="BUSY"), AllowedAE(ae_title="QUIET"), AllowedAE(ae_title="PACS", max_associations=3))
    async with start_gateway(max_associations=8, max_associations_per_ae=2, allowed_aes=allowed) as gateway, \
            AsyncExitStack() as held:
        async def hold(calling: str) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            held.callback(writer.close)
            writer.write(associate_rq(calling, 1))
            await writer.drain()
            async with asyncio.timeout(10):
                return await reader.read(6)

        assert [(await hold("BUSY"))[:1] for _ in range(2)] == [b"\x02", b"\x02"]
        refused = await hold("BUSY")
        assert refused[:1] == b"\x03"
        assert [(await hold("PACS"))[:1] for _ in range(3)] == [b"\x02"] * 3
        assert (await hold("PACS"))[:1] == b"\x03"
        code, out = await run(dcmtk("echoscu"), "-aet", "QUIET", "-aec", "DICOMGW", "127.0.0.1", str(gateway.port))
        assert code == 0, out
        assert gateway.metrics.associations.labels("rejected")._value.get() == 2


async def test_one_address_cannot_hold_every_connection(start_gateway: StartGateway) -> None:
    """Connections over the per-address cap are closed before a byte is read; freed places come back."""
    async with start_gateway(max_connections_per_peer=4) as gateway:
        async with AsyncExitStack() as idle:
            for _ in range(4):
                _, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
                idle.callback(writer.close)
            await asyncio.sleep(0.1)
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            async with asyncio.timeout(5):
                assert await reader.read(1) == b"", "the fifth connection is closed at once"
            writer.close()
            assert gateway.metrics.associations.labels("refused_peer_limit")._value.get() == 1
        await asyncio.sleep(0.2)
        code, out = await run(dcmtk("echoscu"), "-aec", "DICOMGW", "127.0.0.1", str(gateway.port))
        assert code == 0, out


async def test_a_flood_of_refused_associations_writes_a_bounded_log(start_gateway: StartGateway) -> None:
    """Through the production handler's per-peer throttle: 60 refused associations, at most 20 warnings."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.PeerThrottle())
    logging.getLogger().addHandler(handler)
    try:
        async with start_gateway(allowed_aes=(AllowedAE(ae_title="MODALITY"),)) as gateway:
            for _ in range(60):
                assert (await exchange(gateway.port, associate_rq("STRANGER", 1)))[:1] == b"\x03"
            code, out = await run(dcmtk("echoscu"), "-aet", "MODALITY", "-aec", "DICOMGW", "127.0.0.1",
                                  str(gateway.port))
            assert code == 0, out
            assert gateway.metrics.associations.labels("rejected")._value.get() == 60
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    rejected = [line for line in lines if line["msg"] == "association rejected"]
    assert len(rejected) == 20 and all(line["calling_ae"] == "STRANGER" for line in rejected)


async def test_an_allow_listed_modality_is_served_throughout_an_attack(start_gateway: StartGateway) -> None:
    """From three other addresses at once: connections held idle up to the per-address cap (and more tried),
    slow senders trickling an A-ASSOCIATE-RQ or a P-DATA-TF, garbage and oversized PDUs; meanwhile the
    modality, on its own address, stores instance after instance, each acknowledged."""
    allowed = (AllowedAE(ae_title="MODALITY", networks=("127.0.0.1/32",)), AllowedAE(ae_title="SLOW"))
    async with start_gateway(allowed_aes=allowed, max_connections_per_peer=8, acse_timeout_seconds=2,
                             dimse_timeout_seconds=2) as gateway:
        stop = asyncio.Event()

        async def connect(source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await asyncio.open_connection("127.0.0.1", gateway.port, local_addr=(source, 0))

        async def hold_idle() -> None:
            async with AsyncExitStack() as held:
                while not stop.is_set():
                    _, writer = await connect("127.0.0.2")
                    held.callback(writer.close)
                    await asyncio.sleep(0.05)

        async def trickle(pdu: bytes) -> None:
            while not stop.is_set():
                _, writer = await connect("127.0.0.3")
                try:
                    for byte in pdu:
                        writer.write(bytes([byte]))
                        await writer.drain()
                        await asyncio.sleep(0.2)
                        if stop.is_set():
                            break
                except ConnectionError:
                    pass
                finally:
                    writer.close()

        async def garbage() -> None:
            pdus = [bytes(range(256)) * 4, struct.pack(">BBI", 0x01, 0, 300 * 1024), b"\x04\x00\x00\x00\xff\xff",
                    associate_rq("SLOW", 1)[:40], struct.pack(">BBI", 0x07, 0, 4) + b"\x00\x00\x02\x00"]
            while not stop.is_set():
                for pdu in pdus:
                    reader, writer = await connect("127.0.0.4")
                    try:
                        writer.write(pdu)
                        await writer.drain()
                        async with asyncio.timeout(5):
                            await reader.read(65536)
                    except (ConnectionError, TimeoutError):
                        pass
                    finally:
                        writer.close()

        slow_data = associate_rq("SLOW", 1) + struct.pack(">BBI", 0x04, 0, 1000) + b"\x00" * 1000
        attacks = [asyncio.create_task(attack) for attack in
                   (hold_idle(), trickle(associate_rq("SLOW", 1)), trickle(slow_data), garbage(), garbage())]
        try:
            await asyncio.sleep(1)
            for attempt in range(5):
                code, out = await run(dcmtk("storescu"), "-aet", "MODALITY", "-aec", "DICOMGW", "127.0.0.1",
                                      str(gateway.port), CT)
                assert code == 0, (attempt, out)
            assert not any(task.done() for task in attacks), [t.exception() for t in attacks if t.done()]
        finally:
            stop.set()
            await asyncio.gather(*attacks, return_exceptions=True)
        assert gateway.metrics.instances_received._value.get() == 5
        assert len((await gateway.instances()).complete) == 1  # the same instance, five times
        assert gateway.metrics.associations.labels("refused_peer_limit")._value.get() > 0
        assert sum(c._value.get() for c in gateway.metrics.protocol_errors._metrics.values()) > 0
