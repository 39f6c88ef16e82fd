"""Association negotiation as modalities and PACS do it: several transfer syntaxes per context, every storage
SOP Class (retired and private ones too), and User Identity Negotiation; with dcmtk and pynetdicom as peers."""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import jwt
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGLSLossless,
    generate_uid,
)
from pynetdicom import AE, build_context
from pynetdicom.pdu_primitives import UserIdentityNegotiation

from gateway.ingest.cstore import storage_sop_classes
from gateway.settings import AllowedAE, UserIdentitySettings
from tests.component.conftest import RunningGateway, StartGateway
from tests.conftest import dcmtk
from tests.helpers import run

CT = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
JPEG_LS = Path(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))  # type: ignore[arg-type]
US_RETIRED = "1.2.840.10008.5.1.4.1.1.6"
HANGING_PROTOCOL = "1.2.840.10008.5.1.4.38.1"
PRIVATE_CLASS = "1.2.246.999.1.1"
VERIFICATION = "1.2.840.10008.1.1"


def accepted_syntax(port: int, proposed: Sequence[str], calling_ae: str = "PYNETDICOM") -> str | None:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(pydicom.uid.CTImageStorage, proposed)
    association = ae.associate("127.0.0.1", port, ae_title="DICOMGW")
    try:
        if not association.is_established or not association.accepted_contexts:
            return None
        return str(association.accepted_contexts[0].transfer_syntax[0])
    finally:
        if association.is_established:
            association.release()


@pytest.mark.parametrize(("proposed", "expected"), [
    ([JPEGLosslessSV1, ExplicitVRLittleEndian, ImplicitVRLittleEndian], JPEGLosslessSV1),
    ([ExplicitVRLittleEndian, ImplicitVRLittleEndian], ExplicitVRLittleEndian),
    ([ImplicitVRLittleEndian, ExplicitVRLittleEndian], ExplicitVRLittleEndian),
    ([ImplicitVRLittleEndian], ImplicitVRLittleEndian),
    ([ImplicitVRLittleEndian, JPEGLSLossless, ExplicitVRLittleEndian], JPEGLSLossless),
])
async def test_the_senders_encoding_is_kept_and_explicit_comes_before_implicit(
    gateway: RunningGateway, proposed: list[str], expected: str
) -> None:
    assert await asyncio.to_thread(accepted_syntax, gateway.port, proposed) == expected


async def test_a_configured_preference_and_a_per_ae_one_come_first(start_gateway: StartGateway) -> None:
    proposed = [JPEGLosslessSV1, ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    allowed = (AllowedAE(ae_title="LEGACY", transfer_syntax_preference=(ImplicitVRLittleEndian,)),
               AllowedAE(ae_title="MODALITY"))
    async with start_gateway(allowed_aes=allowed, transfer_syntax_preference=(ExplicitVRLittleEndian,)) as gateway:
        assert await asyncio.to_thread(accepted_syntax, gateway.port, proposed, "MODALITY") == ExplicitVRLittleEndian
        assert await asyncio.to_thread(accepted_syntax, gateway.port, proposed, "LEGACY") == ImplicitVRLittleEndian


async def test_dcmsend_stores_what_it_sent_without_decompressing(gateway: RunningGateway) -> None:
    """dcmsend proposes the file's own syntax with the uncompressed ones as fallbacks (the default
    --decompress-lossless): the gateway keeps JPEG-LS compressed and an explicit file explicit."""
    for path in (JPEG_LS, CT):
        code, out = await run(dcmtk("dcmsend"), "-aec", "DICOMGW", "127.0.0.1", str(gateway.port), str(path))
        assert code == 0, out
    contents = await gateway.instances()
    stored = {envelope.sop_instance_uid: envelope.transfer_syntax_uid for envelope, _ in contents.complete.values()}
    for path in (JPEG_LS, CT):
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        assert stored[dataset.SOPInstanceUID] == dataset.file_meta.TransferSyntaxUID


def accepted_classes(port: int, sop_classes: list[str]) -> set[str]:
    """Propose each class (at most 128 contexts per association, PS3.8 9.3.2.2), return those accepted."""
    accepted: set[str] = set()
    for start in range(0, len(sop_classes), 120):
        ae = AE(ae_title="PYNETDICOM")
        for uid in sop_classes[start:start + 120]:
            ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.add_requested_context(VERIFICATION)
        association = ae.associate("127.0.0.1", port, ae_title="DICOMGW")
        assert association.is_established
        accepted |= {str(cx.abstract_syntax) for cx in association.accepted_contexts} - {VERIFICATION}
        association.release()
    return accepted


async def test_every_storage_class_in_pydicoms_dictionary_is_accepted(gateway: RunningGateway) -> None:
    wanted = list(storage_sop_classes())
    assert US_RETIRED in wanted and HANGING_PROTOCOL in wanted and len(wanted) > 200
    assert await asyncio.to_thread(accepted_classes, gateway.port, wanted) == set(wanted)


def instance_of(sop_class: str, directory: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(CT)
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = directory / f"{sop_class}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


async def test_storescu_sends_a_retired_ultrasound_image(gateway: RunningGateway, tmp_path: Path) -> None:
    """-R proposes exactly the files' classes, as a modality does; a refusal would fail the batch."""
    path = instance_of(US_RETIRED, tmp_path)
    code, out = await run(dcmtk("storescu"), "-R", "-aec", "DICOMGW", "127.0.0.1", str(gateway.port), str(path))
    assert code == 0, out
    contents = await gateway.instances()
    assert [envelope.sop_class_uid for envelope, _ in contents.complete.values()] == [US_RETIRED]


def send(port: int, path: Path) -> int | None:
    """pynetdicom sends any SOP Class proposed (storescu refuses classes it does not know): the status, or
    None when no context was accepted for it."""
    dataset = pydicom.dcmread(path)
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(dataset.SOPClassUID, [ExplicitVRLittleEndian])
    ae.add_requested_context(VERIFICATION)
    association = ae.associate("127.0.0.1", port, ae_title="DICOMGW")
    assert association.is_established
    try:
        if str(dataset.SOPClassUID) not in {str(cx.abstract_syntax) for cx in association.accepted_contexts}:
            return None
        return int(association.send_c_store(dataset).Status)
    finally:
        association.release()


async def test_private_classes_are_refused_unless_configured(start_gateway: StartGateway, tmp_path: Path) -> None:
    path = instance_of(PRIVATE_CLASS, tmp_path)
    async with start_gateway() as gateway:
        assert await asyncio.to_thread(send, gateway.port, path) is None
    async with start_gateway(extra_storage_sop_classes=(PRIVATE_CLASS,)) as gateway:
        assert await asyncio.to_thread(send, gateway.port, path) == 0
    async with start_gateway(accept_any_storage_class=True) as gateway:
        assert await asyncio.to_thread(send, gateway.port, path) == 0
        contents = await gateway.instances()
        assert [envelope.sop_class_uid for envelope, _ in contents.complete.values()] == [PRIVATE_CLASS]
        # a known class of another kind is still not taken for storage
        assert await asyncio.to_thread(accepted_classes, gateway.port, ["1.2.840.10008.5.1.4.1.2.2.1"]) == set()


IDENTITY = UserIdentitySettings(users={"ctscanner": "s3cret", "legacy": ""},
                                token_keys=("hmac-key-of-the-district-0123456789",),
                                token_audience="DICOMGW")


async def storescu(port: int, *arguments: str) -> tuple[int, str]:
    return await run(dcmtk("storescu"), "-aec", "DICOMGW", *arguments, "127.0.0.1", str(port), str(CT))


async def test_username_and_passcode_are_checked_and_answered(start_gateway: StartGateway) -> None:
    async with start_gateway(user_identity=IDENTITY) as gateway:
        code, out = await storescu(gateway.port, "--user", "ctscanner", "--password", "s3cret", "--pos-response")
        assert code == 0, out
        code, out = await storescu(gateway.port, "--user", "legacy", "--pos-response")
        assert code == 0, out
        code, out = await storescu(gateway.port, "--user", "ctscanner", "--password", "wrong")
        assert code != 0 and "Association Rejected" in out
        code, out = await storescu(gateway.port, "--user", "nobody", "--password", "s3cret")
        assert code != 0 and "Association Rejected" in out
        code, out = await storescu(gateway.port)  # not required: no identity is fine
        assert code == 0, out
    async with start_gateway(user_identity=IDENTITY.model_copy(update={"required": True})) as gateway:
        code, out = await storescu(gateway.port)
        assert code != 0 and "Association Rejected" in out


async def test_a_json_web_token_is_verified_and_answered(start_gateway: StartGateway, tmp_path: Path) -> None:
    def token(key: str, **claims: object) -> Path:
        path = tmp_path / f"token-{len(list(tmp_path.iterdir()))}"
        path.write_text(jwt.encode({"sub": "ris", "aud": "DICOMGW", "exp": int(time.time()) + 300, **claims}, key))
        return path

    key = "hmac-key-of-the-district-0123456789"
    async with start_gateway(user_identity=IDENTITY) as gateway:
        code, out = await storescu(gateway.port, "--jwt", str(token(key)), "--pos-response")
        assert code == 0, out
        for bad in (token("another-key-of-somebody-else-0000"), token(key, exp=int(time.time()) - 10),
                    token(key, aud="OTHER")):
            code, out = await storescu(gateway.port, "--jwt", str(bad))
            assert code != 0 and "Association Rejected" in out


async def test_pynetdicom_gets_the_positive_response_it_asks_for(start_gateway: StartGateway) -> None:
    def associate(port: int) -> bytes | None:
        ae = AE(ae_title="PYNETDICOM")
        ae.requested_contexts = [build_context(VERIFICATION)]
        identity = UserIdentityNegotiation()
        identity.user_identity_type = 2
        identity.primary_field = b"ctscanner"
        identity.secondary_field = b"s3cret"
        identity.positive_response_requested = True
        association = ae.associate("127.0.0.1", port, ae_title="DICOMGW", ext_neg=[identity])
        assert association.is_established
        responses = [item.server_response for item in association.acceptor.user_information
                     if isinstance(item, UserIdentityNegotiation)]
        association.release()
        return responses[0] if responses else None

    async with start_gateway(user_identity=IDENTITY) as gateway:
        assert await asyncio.to_thread(associate, gateway.port) == b""
