"""What an unauthenticated peer on the hospital network can do to the DICOM port, and what it cannot: idle
connections do not fill the association cap, a large A-ASSOCIATE-RQ from a caller that may not associate is
refused before it is decoded, and a request too large for any real one is not read whole."""

from __future__ import annotations

import asyncio
import struct
from contextlib import AsyncExitStack

from pynetdicom.presentation import build_context

from gateway.settings import AllowedAE
from tests.component.conftest import StartGateway
from tests.conftest import dcmtk
from tests.helpers import associate_rq_pdu, run

VERIFICATION = "1.2.840.10008.1.1"


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
