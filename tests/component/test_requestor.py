"""Our requestor association against real peers: dcmtk's storescp, and pynetdicom as SCP for the faults."""

from __future__ import annotations

import asyncio
import io
import struct
import threading
import time
import tracemalloc
import warnings
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from gateway.dicom import acse, commitment, dimse
from gateway.dicom.acse import EXPLICIT_LITTLE, IMPLICIT_LITTLE
from gateway.dicom.association import abort_pdu
from gateway.dicom.dataset import encode
from gateway.dicom.dimse import Command
from gateway.dicom.requestor import (
    AssociationAborted,
    AssociationRejected,
    Peer,
    RequestorAssociation,
    open_association,
)
from gateway.dicom.transcode import open_part10, transcode
from gateway.objects import ChunkStream
from tests.conftest import dcmtk
from tests.helpers import dataset_bytes, free_port, run

CT = Path(pydicom.data.__file__).parent / "test_files" / "CT_small.dcm"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def file_chunks(path: Path, size: int) -> ChunkStream:
    """The file as the object store hands an object out."""
    source = path.open("rb")
    return ChunkStream(partial(asyncio.to_thread, source.read, size), source.close)


def public_values(dataset: Dataset) -> dict[int, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {int(tag): dataset[tag].value for tag in dataset.keys() if not BaseTag(tag).is_private}


@asynccontextmanager
async def storescp(tmp_path: Path, *options: str) -> AsyncIterator[tuple[Peer, Path]]:
    """dcmtk's storescp writing what it receives bit for bit (the reference for what went on the wire)."""
    port, directory = free_port(), tmp_path / "storescp"
    directory.mkdir()
    process = await asyncio.create_subprocess_exec(
        dcmtk("storescp"), "--bit-preserving", *options, "-aet", "STORESCP", "-od", str(directory), str(port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if (await run(dcmtk("echoscu"), "-aec", "STORESCP", "127.0.0.1", str(port)))[0] == 0:
                break
            await asyncio.sleep(0.1)
        yield Peer("127.0.0.1", port, "STORESCP"), directory
    finally:
        process.terminate()
        await process.wait()


async def store_file(association: RequestorAssociation, path: Path, transfer_syntax: str) -> int:
    meta, data_set = await open_part10(file_chunks(path, 4096))
    context = association.context_for(meta.sop_class_uid, transfer_syntax)
    assert context is not None
    result = await association.c_store(
        context, meta.sop_class_uid, meta.sop_instance_uid,
        transcode(data_set, meta.transfer_syntax_uid, transfer_syntax), timeout=30)
    return result.status


async def test_an_instance_streamed_to_storescp_arrives_intact(tmp_path: Path) -> None:
    async with storescp(tmp_path) as (peer, received):
        async with await open_association(peer, "DICOMGW", [(CT_IMAGE_STORAGE, [EXPLICIT_LITTLE, IMPLICIT_LITTLE])],
                                          timeout=10) as association:
            assert association.accepted_syntaxes(CT_IMAGE_STORAGE) == [EXPLICIT_LITTLE]
            assert await store_file(association, CT, EXPLICIT_LITTLE) == 0x0000
        [path] = received.iterdir()
    assert dataset_bytes(path) == dataset_bytes(CT)


async def test_an_implicit_only_peer_gets_the_instance_transcoded(tmp_path: Path) -> None:
    async with storescp(tmp_path, "+xi") as (peer, received):
        contexts = [(CT_IMAGE_STORAGE, [EXPLICIT_LITTLE]), (CT_IMAGE_STORAGE, [IMPLICIT_LITTLE])]
        async with await open_association(peer, "DICOMGW", contexts, timeout=10) as association:
            assert association.accepted() == {3: (CT_IMAGE_STORAGE, IMPLICIT_LITTLE)}
            assert association.accepted_syntaxes(CT_IMAGE_STORAGE) == [IMPLICIT_LITTLE]
            assert association.context_for(CT_IMAGE_STORAGE, EXPLICIT_LITTLE) is None
            assert await store_file(association, CT, IMPLICIT_LITTLE) == 0x0000
        [path] = received.iterdir()
    meta, data_set = await open_part10(file_chunks(CT, 1024 * 1024))
    sent = b"".join([chunk async for chunk in transcode(data_set, meta.transfer_syntax_uid, IMPLICIT_LITTLE)])
    assert dataset_bytes(path) == sent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stored = pydicom.dcmread(path)
        source = pydicom.dcmread(CT)
    assert stored.file_meta.TransferSyntaxUID == IMPLICIT_LITTLE
    del source.file_meta, stored.file_meta
    assert public_values(stored) == public_values(source)


async def test_a_large_data_set_streams_in_bounded_memory(tmp_path: Path) -> None:
    """50 MiB of pixel data generated chunk by chunk; what our process allocates stays a few chunks."""
    size = 50 * 1024 * 1024
    header = Dataset()
    header.SOPClassUID = SECONDARY_CAPTURE
    header.SOPInstanceUID = generate_uid()
    header.Rows = header.Columns = 5120
    header.BitsAllocated = header.BitsStored = 16
    header.SamplesPerPixel = 1
    header.PhotometricInterpretation = "MONOCHROME2"
    prefix = encode(header, EXPLICIT_LITTLE) + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, size)

    async def generated() -> AsyncIterator[bytes]:
        yield prefix
        for n in range(size // (1024 * 1024)):
            yield bytes([n % 256]) * (1024 * 1024)

    async with storescp(tmp_path) as (peer, received):
        async with await open_association(peer, "DICOMGW", [(SECONDARY_CAPTURE, [EXPLICIT_LITTLE])],
                                          timeout=10) as association:
            tracemalloc.start()
            try:
                result = await association.c_store(1, SECONDARY_CAPTURE, header.SOPInstanceUID, generated(),
                                                   timeout=60)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        [path] = received.iterdir()
    assert result.status == 0x0000
    assert peak < 8 * 1024 * 1024
    assert path.stat().st_size > size
    with path.open("rb") as stored:
        stored.seek(-1024 * 1024, io.SEEK_END)
        assert stored.read() == bytes([49]) * (1024 * 1024)
    assert len(dataset_bytes(path)) == len(prefix) + size


@contextmanager
def pynetdicom_scp(handlers: list[Any], *, max_pdu: int = 16382, require_called_aet: bool = False,
                   ae_title: str = "ARCHIVE") -> Iterator[Peer]:
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = max_pdu
    ae.require_called_aet = require_called_aet
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = 10
    for sop_class in (CT_IMAGE_STORAGE, SECONDARY_CAPTURE, StorageCommitmentPushModel):
        ae.add_supported_context(sop_class, [EXPLICIT_LITTLE, IMPLICIT_LITTLE])
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    assert server is not None
    try:
        yield Peer("127.0.0.1", port, ae_title)
    finally:
        server.shutdown()


async def ct_data_set() -> tuple[str, str, AsyncIterator[bytes]]:
    meta, data_set = await open_part10(file_chunks(CT, 4096))
    return meta.sop_class_uid, meta.sop_instance_uid, data_set


@pytest.mark.parametrize("max_pdu", [0, 4096, 16382])
async def test_the_peer_gets_the_data_set_bytes_whatever_its_maximum_pdu(max_pdu: int) -> None:
    received: list[bytes] = []

    def handle_store(event: Any) -> int:
        received.append(event.request.DataSet.getvalue())
        return 0x0000

    with pynetdicom_scp([(evt.EVT_C_STORE, handle_store)], max_pdu=max_pdu) as peer:
        async with await open_association(peer, "DICOMGW", [(CT_IMAGE_STORAGE, [EXPLICIT_LITTLE])],
                                          timeout=10) as association:
            assert association.peer_max_pdu == max_pdu
            for _ in range(2):
                sop_class, sop_instance, data_set = await ct_data_set()
                result = await association.c_store(1, sop_class, sop_instance, data_set, timeout=10)
                assert (result.status, result.command is not None) == (0x0000, True)
    assert received == [dataset_bytes(CT)] * 2


async def test_a_failure_status_and_its_comment_are_returned() -> None:
    def handle_store(event: Any) -> Dataset:
        status = Dataset()
        status.Status = 0xA700
        status.ErrorComment = "out of resources"
        return status

    with pynetdicom_scp([(evt.EVT_C_STORE, handle_store)]) as peer:
        async with await open_association(peer, "DICOMGW", [(CT_IMAGE_STORAGE, [EXPLICIT_LITTLE])],
                                          timeout=10) as association:
            sop_class, sop_instance, data_set = await ct_data_set()
            result = await association.c_store(1, sop_class, sop_instance, data_set, timeout=10)
    assert (result.status, result.comment) == (0xA700, "out of resources")


async def test_a_peer_aborting_mid_store_fails_the_store_at_once() -> None:
    def handle_store(event: Any) -> int:
        event.assoc.abort()
        return 0x0000

    with pynetdicom_scp([(evt.EVT_C_STORE, handle_store)]) as peer:
        association = await open_association(peer, "DICOMGW", [(CT_IMAGE_STORAGE, [EXPLICIT_LITTLE])], timeout=10)
        sop_class, sop_instance, data_set = await ct_data_set()
        started = time.monotonic()
        with pytest.raises(AssociationAborted, match="aborted"):
            await association.c_store(1, sop_class, sop_instance, data_set, timeout=60)
        assert time.monotonic() - started < 5
        with pytest.raises(AssociationAborted):
            await association.c_store(1, sop_class, sop_instance, (await ct_data_set())[2], timeout=60)
        await association.release(5)


async def test_a_response_overdue_raises_timeout_and_aborts_the_association() -> None:
    def handle_store(event: Any) -> int:
        time.sleep(2)
        return 0x0000

    with pynetdicom_scp([(evt.EVT_C_STORE, handle_store)]) as peer:
        association = await open_association(peer, "DICOMGW", [(CT_IMAGE_STORAGE, [EXPLICIT_LITTLE])], timeout=10)
        sop_class, sop_instance, data_set = await ct_data_set()
        with pytest.raises(TimeoutError):
            await association.c_store(1, sop_class, sop_instance, data_set, timeout=0.5)
        with pytest.raises(AssociationAborted):
            await association.c_store(1, sop_class, sop_instance, (await ct_data_set())[2], timeout=10)


@asynccontextmanager
async def stalling_acceptor(read_before_abort: int) -> AsyncIterator[Peer]:
    """Accepts Secondary Capture, reads ``read_before_abort`` bytes of P-DATA, stops reading for a moment (our
    writes back up) and aborts the association."""

    def secondary_capture(_: Sequence[str]) -> list[PresentationContext]:
        context = PresentationContext()
        context.abstract_syntax = SECONDARY_CAPTURE
        context.transfer_syntax = [EXPLICIT_LITTLE]
        return [context]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        header = await reader.readexactly(6)
        request = header + await reader.readexactly(struct.unpack(">I", header[2:])[0])
        policy = acse.AcceptorPolicy(ae_title="STALLER", max_associations=1, max_pdu_length=16384)
        outcome = acse.negotiate(request, policy, secondary_capture, "127.0.0.1", acse.Occupancy())
        writer.write(outcome.pdu)
        received = 0
        while received < read_before_abort:
            received += len(await reader.read(65536))
        await asyncio.sleep(0.5)
        writer.write(abort_pdu(0, 0))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield Peer("127.0.0.1", server.sockets[0].getsockname()[1], "STALLER")


async def test_a_peer_aborting_in_the_middle_of_the_data_set_fails_the_store_at_once() -> None:
    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield bytes(1024 * 1024)

    async with stalling_acceptor(read_before_abort=2 * 1024 * 1024) as peer:
        association = await open_association(peer, "DICOMGW", [(SECONDARY_CAPTURE, [EXPLICIT_LITTLE])], timeout=10)
        started = time.monotonic()
        with pytest.raises(AssociationAborted, match="aborted"):
            await association.c_store(1, SECONDARY_CAPTURE, "1.2.3.4", endless(), timeout=60)
        assert time.monotonic() - started < 5
        await association.abort()


async def test_a_wrong_called_ae_title_is_rejected_for_good() -> None:
    with pynetdicom_scp([], require_called_aet=True) as peer:
        wrong = Peer(peer.host, peer.port, "SOMEONE")
        with pytest.raises(AssociationRejected) as rejected:
            await open_association(wrong, "DICOMGW", [(CT_IMAGE_STORAGE, [EXPLICIT_LITTLE])], timeout=10)
    assert rejected.value.permanent
    assert rejected.value.reason == "called AE title not recognised"


async def test_nothing_listening_is_refused_promptly() -> None:
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        await open_association(Peer("127.0.0.1", free_port(), "NOBODY"), "DICOMGW",
                               [(CT_IMAGE_STORAGE, [EXPLICIT_LITTLE])], timeout=10)
    assert time.monotonic() - started < 2


async def test_contexts_beyond_128_or_none_are_refused() -> None:
    for contexts in ([(CT_IMAGE_STORAGE, [EXPLICIT_LITTLE])] * 129, []):
        with pytest.raises(ValueError, match="presentation contexts"):
            await open_association(Peer("127.0.0.1", 1, "X"), "DICOMGW", contexts, timeout=1)


async def test_storage_commitment_reported_on_the_same_association() -> None:
    """N-ACTION answered at once, then the peer reports on the same association and releases it."""
    transaction = generate_uid()
    reported: list[tuple[str, int]] = []
    answered: list[int] = []

    def report(assoc: Any, information: Dataset) -> None:
        time.sleep(0.2)
        status, _ = assoc.send_n_event_report(information, commitment.EVENT_ALL_COMMITTED,
                                              StorageCommitmentPushModel, commitment.STORAGE_COMMITMENT_INSTANCE)
        answered.append(int(status.Status) if status else -1)
        assoc.release()

    def handle_action(event: Any) -> tuple[int, None]:
        request = event.action_information
        decisions = [commitment.Decision(item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID)
                     for item in request.ReferencedSOPSequence]
        _, information = commitment.report(request.TransactionUID, decisions, "ARCHIVE")
        threading.Thread(target=report, args=(event.assoc, information)).start()
        return 0x0000, None

    async def on_event_report(command: Command, data: bytes) -> int:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            information = read_dataset(io.BytesIO(data), True, True)
            reported.append((str(information.TransactionUID), command.unsigned(dimse.EVENT_TYPE_ID) or 0))
        return 0x0000

    action = Dataset()
    action.TransactionUID = transaction
    reference = Dataset()
    reference.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    reference.ReferencedSOPInstanceUID = "1.2.3.4"
    action.ReferencedSOPSequence = [reference]

    with pynetdicom_scp([(evt.EVT_N_ACTION, handle_action)]) as peer:
        association = await open_association(
            peer, "DICOMGW", [(StorageCommitmentPushModel, [IMPLICIT_LITTLE])], timeout=10,
            scp_roles=[StorageCommitmentPushModel], on_event_report=on_event_report)
        result = await association.n_action(1, StorageCommitmentPushModel, commitment.STORAGE_COMMITMENT_INSTANCE,
                                            commitment.REQUEST_STORAGE_COMMITMENT, encode(action, IMPLICIT_LITTLE),
                                            timeout=10)
        assert result.status == 0x0000
        started = time.monotonic()
        await association.wait_for_event_reports(30)
        assert time.monotonic() - started < 10
        await association.release(5)
    assert reported == [(transaction, commitment.EVENT_ALL_COMMITTED)]
    assert answered == [0x0000]


async def test_an_event_report_the_handler_cannot_take_aborts_the_association() -> None:
    """So that the peer sends the report again rather than taking a failure status as final."""
    outcome: list[Any] = []

    def report(assoc: Any) -> None:
        information = Dataset()
        information.TransactionUID = generate_uid()
        status, _ = assoc.send_n_event_report(information, commitment.EVENT_ALL_COMMITTED,
                                              StorageCommitmentPushModel, commitment.STORAGE_COMMITMENT_INSTANCE)
        outcome.append(status)

    def handle_action(event: Any) -> tuple[int, None]:
        threading.Thread(target=report, args=(event.assoc,)).start()
        return 0x0000, None

    async def failing(command: Command, data: bytes) -> int:
        raise RuntimeError("the bus is down")

    with pynetdicom_scp([(evt.EVT_N_ACTION, handle_action)]) as peer:
        association = await open_association(
            peer, "DICOMGW", [(StorageCommitmentPushModel, [EXPLICIT_LITTLE])], timeout=10,
            scp_roles=[StorageCommitmentPushModel], on_event_report=failing)
        action = Dataset()
        action.TransactionUID = generate_uid()
        result = await association.n_action(1, StorageCommitmentPushModel, commitment.STORAGE_COMMITMENT_INSTANCE,
                                            commitment.REQUEST_STORAGE_COMMITMENT, encode(action, EXPLICIT_LITTLE),
                                            timeout=10)
        assert result.status == 0x0000
        await association.wait_for_event_reports(10)
        with pytest.raises(AssociationAborted):
            await association.n_action(1, StorageCommitmentPushModel, commitment.STORAGE_COMMITMENT_INSTANCE,
                                       commitment.REQUEST_STORAGE_COMMITMENT, b"", timeout=10)
        await association.release(5)
        for _ in range(50):
            if outcome:
                break
            await asyncio.sleep(0.1)
    assert outcome and (outcome[0] is None or "Status" not in outcome[0])
