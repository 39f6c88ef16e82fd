"""pydicom's bundled corpus sent through pynetdicom's SCU, which sends each file's data set bytes as they are."""

from __future__ import annotations

import asyncio
import warnings
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pynetdicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts

from tests.component.conftest import RunningGateway
from tests.helpers import dataset_bytes

CORPUS = Path(pydicom.data.__file__).parent / "test_files"
STORAGE = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}


@dataclass(frozen=True)
class Sample:
    path: Path
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    valid: bool
    """A storage instance whose data set agrees with its file meta and has a Study Instance UID."""


def corpus() -> list[Sample]:
    samples = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(CORPUS.rglob("*.dcm")):
            try:
                dataset = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:
                continue
            meta = getattr(dataset, "file_meta", None)
            if meta is None or meta.get("MediaStorageSOPClassUID") not in STORAGE:
                continue
            valid = (
                dataset.get("SOPClassUID") == meta.MediaStorageSOPClassUID
                and dataset.get("SOPInstanceUID") == meta.get("MediaStorageSOPInstanceUID")
                and bool(dataset.get("StudyInstanceUID"))
            )
            samples.append(Sample(path, str(meta.MediaStorageSOPClassUID),
                                  str(meta.get("MediaStorageSOPInstanceUID", "")),
                                  str(meta.TransferSyntaxUID), valid))
    return samples


@pytest.fixture(autouse=True)
def send_files_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom's documented switch to send a file's data set bytes unchanged instead of re-encoding them."""
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)


def send_all(port: int, samples: list[Sample]) -> dict[Path, Dataset | None]:
    ae = AE(ae_title="PYNETDICOM")
    for pair in sorted({(s.sop_class, s.transfer_syntax) for s in samples}):
        ae.add_requested_context(pair[0], [pair[1]])
    statuses: dict[Path, Dataset | None] = {}
    association = ae.associate("127.0.0.1", port, ae_title="DICOMGW")
    assert association.is_established
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's notes on the corpus's odd files, read by the sender
            for sample in samples:
                statuses[sample.path] = association.send_c_store(sample.path)
    finally:
        association.release()
    return statuses


async def test_corpus_arrives_byte_identical(gateway: RunningGateway) -> None:
    samples = corpus()
    assert sum(s.valid for s in samples) >= 40, "the corpus shrank: check pydicom's bundled test files"
    statuses = await asyncio.to_thread(send_all, gateway.port, samples)
    contents = await gateway.instances()
    received = {(meta.sop_instance_uid, data) for meta, data in contents.received}
    for sample in samples:
        status = statuses[sample.path]
        assert status is not None, sample.path
        if sample.valid:
            assert status.Status == 0x0000, (sample.path, hex(status.Status), status.get("ErrorComment"))
            # the corpus has several encodings of one image under one SOP Instance UID
            assert (sample.sop_instance, dataset_bytes(sample.path)) in received, sample.path
        else:
            assert status.Status in (0xA900, 0xC000), (sample.path, hex(status.Status))
            assert status.ErrorComment
    assert not contents.partial


@pytest.mark.parametrize("mismatch", ["instance", "class"])
async def test_request_and_data_set_disagree(gateway: RunningGateway, mismatch: str, tmp_path: Path) -> None:
    source = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    if mismatch == "instance":
        source.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    else:
        source.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR, data set says CT
    path = tmp_path / "mismatch.dcm"
    source.save_as(path)
    sample = Sample(path, str(source.file_meta.MediaStorageSOPClassUID),
                    str(source.file_meta.MediaStorageSOPInstanceUID), str(source.file_meta.TransferSyntaxUID), False)
    status = (await asyncio.to_thread(send_all, gateway.port, [sample]))[path]
    assert status is not None and status.Status == 0xA900
    assert "differs from the C-STORE request" in status.ErrorComment
    contents = await gateway.instances()
    assert not contents.complete and not contents.partial


def associate_with_roles(port: int, scu_role: bool, scp_role: bool) -> tuple[bool, bool, int]:
    """(we may send C-STORE requests, the gateway may send us C-STORE requests, status of one C-STORE)."""
    from pynetdicom import build_role
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title="ROLES")
    ae.add_requested_context(CTImageStorage)
    association = ae.associate("127.0.0.1", port, ae_title="DICOMGW",
                               ext_neg=[build_role(CTImageStorage, scu_role=scu_role, scp_role=scp_role)])
    assert association.is_established
    try:
        [context] = association.accepted_contexts
        status = association.send_c_store(pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm")))
        return context.as_scu, context.as_scp, int(status.Status)
    finally:
        association.release()


async def test_scp_scu_role_selection_is_negotiated(gateway: RunningGateway) -> None:
    # proposing to be SCU: accepted as asked, and storing works
    assert await asyncio.to_thread(associate_with_roles, gateway.port, True, False) == (True, False, 0x0000)
    # asking the gateway to act as a storage SCU (C-GET style) is declined; we remain the SCU
    assert await asyncio.to_thread(associate_with_roles, gateway.port, True, True) == (True, False, 0x0000)
