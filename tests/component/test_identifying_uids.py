"""UIDs that name an instance's bus key, object and index row are checked before Success: a bad one is refused
at once with a status the modality sees, and the association goes on (pynetdicom as the sender)."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from tests.component.conftest import RunningGateway

CT = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]


def instance(**uids: str) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(CT)
        dataset.SOPInstanceUID = generate_uid()
        for keyword, value in uids.items():
            setattr(dataset, keyword, value)
    return dataset


def send(port: int, datasets: list[Dataset]) -> list[tuple[int, str]]:
    """Each data set on one association: (status, Error Comment)."""
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(pydicom.uid.CTImageStorage, [ExplicitVRLittleEndian])
    association = ae.associate("127.0.0.1", port, ae_title="DICOMGW")
    assert association.is_established
    answers = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom notes the bad UIDs it is asked to encode
            for dataset in datasets:
                status = association.send_c_store(dataset)
                answers.append((int(status.Status), str(status.get("ErrorComment", ""))))
    finally:
        association.release()
    return answers


@pytest.mark.parametrize(("keyword", "value"), [
    ("StudyInstanceUID", "1." + "2" * 300),  # a path component no file system takes
    ("StudyInstanceUID", "1.2.3/../../etc"),
    ("StudyInstanceUID", "1.2.3.abc"),
    ("StudyInstanceUID", "1.2..3"),
    ("StudyInstanceUID", "1.2.3" + "\x00" + "4"),
    ("StudyInstanceUID", "1." + "2" * 70),  # over 64 characters
    ("SeriesInstanceUID", ""),
    ("SeriesInstanceUID", "1.2.3 4"),
], ids=["302-chars", "dot-dot-slash", "letters", "empty-component", "nul", "65-chars", "empty-series", "space"])
async def test_a_bad_identifying_uid_is_refused_before_success(
    gateway: RunningGateway, keyword: str, value: str
) -> None:
    good = instance()
    answers = await asyncio.to_thread(send, gateway.port, [instance(**{keyword: value}), good])
    (status, comment), (after, _) = answers
    assert status == 0xC000 and comment.endswith("Instance UID is missing or not a UID"), answers
    assert after == 0x0000, "the association goes on"
    contents = await gateway.instances()
    assert list(contents.complete) == [good.SOPInstanceUID]


async def test_leading_zeros_are_let_through_for_validation_to_report(gateway: RunningGateway) -> None:
    """Some devices write them; refusing would lose the image, the store stage quarantines it with its finding."""
    dataset = instance(SeriesInstanceUID="1.2.03.4")
    assert await asyncio.to_thread(send, gateway.port, [dataset]) == [(0x0000, "")]
