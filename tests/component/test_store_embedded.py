"""Receiver and store pool on the embedded default: objects under the data dir, SQLite index."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pydicom
import pynetdicom
import pytest
from pydicom.data import get_testdata_file

import workers.store
from gateway import dead_letter
from gateway.app import open_index, store_pool
from gateway.bus.embedded import EmbeddedBus, partition_for
from gateway.core import envelope
from gateway.core.audit import NoAudit
from gateway.index import InstanceRow, InstanceStatus
from gateway.ingest.receiver import Receiver
from gateway.metrics import Metrics
from gateway.settings import (
    DicomSettings,
    EmbeddedBusSettings,
    RuntimeSettings,
    Settings,
    StoreSettings,
    ValidationSettings,
)
from tests.component.test_receiver_pynetdicom import corpus, send_all
from tests.conftest import dcmtk
from tests.helpers import api_headers, dataset_bytes, free_port, run

CT = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
DEFLATED = Path(get_testdata_file("image_dfl.dcm"))  # type: ignore[arg-type]


class Gateway:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics

    async def store(self, *paths: Path) -> None:
        code, out = await run(dcmtk("storescu"), "-aec", "DICOMGW", "127.0.0.1", str(self.settings.dicom.port),
                              *map(str, paths))
        assert code == 0, out

    async def until_stored(self, count: int, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while sum(c._value.get() for c in self.metrics.instances_stored._metrics.values()) < count:
                await asyncio.sleep(0.05)

QUICK: dict[str, Any] = {"store": StoreSettings(retry_max_seconds=5),
                         "runtime": RuntimeSettings(drain_timeout_seconds=5)}
"""Short back-offs and drains, so that tests of outages and shutdown take seconds."""


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    settings = Settings(data_dir=tmp_path / "data", dicom=DicomSettings(host="127.0.0.1", port=free_port()),
                        embedded_bus=EmbeddedBusSettings(poll_interval_seconds=0.01), **QUICK)
    metrics = Metrics()
    bus = EmbeddedBus(settings.data_dir / "bus", settings.embedded_bus, metrics)
    async with Receiver(settings.dicom, settings.topics, bus, metrics, 5), \
            store_pool(settings, bus, metrics, NoAudit()):
        yield Gateway(settings, metrics)


def stored_file(settings: Settings, key: str) -> Path:
    return settings.data_dir / "objects" / key


async def test_instances_are_stored_as_part10_files_and_indexed(gateway: Gateway, tmp_path: Path) -> None:
    await gateway.store(CT)
    await gateway.until_stored(1)
    source = pydicom.dcmread(CT)
    async with await open_index(gateway.settings) as index:
        row = await index.current_instance(source.SOPInstanceUID)
    assert row is not None and row.status is InstanceStatus.STORED
    assert (row.study_instance_uid, row.series_instance_uid, row.modality) == (
        source.StudyInstanceUID, source.SeriesInstanceUID, "CT")
    assert row.source_ae == "STORESCU" and row.received_at.tzinfo is not None
    path = stored_file(gateway.settings, row.storage_key)
    stored = pydicom.dcmread(path)
    assert stored.file_meta.MediaStorageSOPInstanceUID == source.SOPInstanceUID
    assert stored.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
    assert stored.file_meta.SourceApplicationEntityTitle == "STORESCU"
    assert stored.PixelData == source.PixelData
    assert hashlib.sha256(dataset_bytes(path)).hexdigest() == row.sha256


async def test_same_instance_twice_is_stored_once(gateway: Gateway) -> None:
    await gateway.store(CT)
    await gateway.store(CT)
    await gateway.until_stored(2)
    source = pydicom.dcmread(CT)
    async with await open_index(gateway.settings) as index:
        versions = await index.instance_versions(source.SOPInstanceUID)
    assert len(versions) == 1
    files = list((gateway.settings.data_dir / "objects").rglob("*.dcm"))
    assert len(files) == 1, files


async def test_correction_replaces_and_keeps_the_prior_version(gateway: Gateway, tmp_path: Path) -> None:
    await gateway.store(CT)
    corrected = pydicom.dcmread(CT)
    corrected.StudyDescription = "Corrected description"
    del corrected[0xFFFCFFFC]
    path = tmp_path / "corrected.dcm"
    corrected.save_as(path)
    await gateway.store(path)
    await gateway.until_stored(2)
    async with await open_index(gateway.settings) as index:
        versions = await index.instance_versions(corrected.SOPInstanceUID)
        current = await index.current_instance(corrected.SOPInstanceUID)
    assert [v.status for v in versions] == [InstanceStatus.REPLACED, InstanceStatus.STORED]
    assert current is not None and current.version == 2 and current.study_description == "Corrected description"
    assert stored_file(gateway.settings, versions[0].storage_key).exists(), "the prior version must stay"


async def test_invalid_instance_is_quarantined_with_its_reasons(gateway: Gateway, tmp_path: Path) -> None:
    """A leading zero in a UID component: let through by the receiver (devices write them), reported here. A UID
    that cannot name an object is refused before Success (tests/component/test_identifying_uids.py)."""
    series_uid, rule = "1.2.03.4", "DICOM-UID-SYNTAX"
    bad = pydicom.dcmread(CT)
    path = tmp_path / "bad.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom notices the bad UID too
        bad.SeriesInstanceUID = series_uid
        bad.save_as(path)
    await gateway.store(path)
    await gateway.until_stored(1)
    async with await open_index(gateway.settings) as index:
        row = await index.current_instance(bad.SOPInstanceUID)
    assert row is not None and row.status is InstanceStatus.QUARANTINED
    assert row.storage_key.startswith("quarantine/")
    assert rule in {f["code"] for f in row.findings}
    assert stored_file(gateway.settings, row.storage_key).exists()


async def test_corrupted_instance_is_dead_lettered_and_can_be_redriven(gateway: Gateway) -> None:
    """An instance whose bytes disagree with its envelope is never stored; an operator sees it and re-drives it."""
    bus = EmbeddedBus(gateway.settings.data_dir / "bus", gateway.settings.embedded_bus, Metrics())
    await gateway.store(CT)
    await gateway.until_stored(1)
    [record] = await bus.read(gateway.settings.topics.instances, _partition_of(gateway, CT), [0])
    tampered = [(name, orjson.dumps({**orjson.loads(value), "sha256": "0" * 64, "instance_id": "tampered"})
                 if name == envelope.ENVELOPE else b"tampered" if name == envelope.INSTANCE else value)
                for name, value in record.headers]
    async with bus.producer() as producer:
        await producer.publish(gateway.settings.topics.instances, record.key, record.value, tampered)
    async with asyncio.timeout(30):
        while not (entries := await dead_letter.entries(bus, gateway.settings.topics)):
            await asyncio.sleep(0.2)
    [entry] = entries
    assert entry.entry_id == "tampered" and "does not match the envelope" in entry.reason
    assert gateway.metrics.dead_letters.labels("store")._value.get() == 1

    await dead_letter.redrive(bus, gateway.settings.topics, entry)
    async with asyncio.timeout(30):
        while gateway.metrics.dead_letters.labels("store")._value.get() < 2:
            await asyncio.sleep(0.2)  # still corrupt: it comes back to the dead letters, nothing is stored
    [again] = await dead_letter.entries(bus, gateway.settings.topics)
    assert again.entry_id != "tampered" and again.reason == entry.reason


def _partition_of(gateway: Gateway, path: Path) -> int:
    study = pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID
    return partition_for(study.encode(), gateway.settings.embedded_bus.partitions)


async def test_pydicom_corpus_round_trips_through_the_store(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every valid storage file of pydicom's corpus ends up as an object whose data set is the file's, byte for
    byte (several encodings of one image share a SOP Instance UID: they become variants of one version, or
    versions where the attributes differ)."""
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    samples = [sample for sample in corpus() if sample.valid]
    statuses = await asyncio.to_thread(send_all, gateway.settings.dicom.port, samples)
    assert all(status is not None and status.Status == 0 for status in statuses.values())
    await gateway.until_stored(len(samples), timeout=120)
    async with await open_index(gateway.settings) as index:
        for sample in samples:
            versions = await index.instance_versions(sample.sop_instance)
            variants = [v for row in versions for v in await index.study_variants(row.study_instance_uid)
                        if v.sop_instance_uid == sample.sop_instance]
            stored = {dataset_bytes(stored_file(gateway.settings, v.storage_key)) for v in [*versions, *variants]}
            assert dataset_bytes(sample.path) in stored, sample.path


async def coerced_and_stored(tmp_path: Path, coercion: str, tool: str, calling_ae: str, path: Path,
                             **dicom: Any) -> tuple[Settings, InstanceRow]:
    """Send ``path`` with dcmtk's ``tool`` as ``calling_ae`` to a gateway whose profile coerces for that AE
    (``coercion``: the YAML lines under it); the instance's index row once stored."""
    profile = tmp_path / "site.yaml"
    profile.write_text(f"name: dicom-basic\nextends: dicom-basic\ncoercion:\n  by_calling_ae:\n"
                       f"    {calling_ae}:\n{coercion}")
    settings = Settings(
        data_dir=tmp_path / "data", dicom=DicomSettings(host="127.0.0.1", port=free_port(), **dicom),
        validation=ValidationSettings(profile_files=(profile,)), **QUICK,
    )
    metrics = Metrics()
    bus = EmbeddedBus(settings.data_dir / "bus", settings.embedded_bus, metrics)
    async with Receiver(settings.dicom, settings.topics, bus, metrics, 5), \
            store_pool(settings, bus, metrics, NoAudit()):
        code, out = await run(dcmtk(tool), "-aet", calling_ae, "-aec", "DICOMGW", "127.0.0.1",
                              str(settings.dicom.port), str(path))
        assert code == 0, out
        await Gateway(settings, metrics).until_stored(1)
    async with await open_index(settings) as index:
        row = await index.current_instance(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    assert row is not None
    return settings, row


async def test_coerced_header_is_stored_and_both_hashes_recorded(tmp_path: Path) -> None:
    settings, row = await coerced_and_stored(
        tmp_path, "      issuer_of_patient_id: always\n      institution_name: true\n", "storescu", "OLD_CT", CT,
        allowed_aes=[{"ae_title": "OLD_CT", "organization": "Example Hospital",
                      "organization_oid": "1.2.246.10.1234567.10"}])
    source = pydicom.dcmread(CT)
    assert row.sha256 != row.received_sha256
    stored = pydicom.dcmread(stored_file(settings, row.storage_key))
    assert stored.IssuerOfPatientID == row.issuer_of_patient_id == "1.2.246.21"
    assert stored.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityIDType == "ISO"
    assert stored.InstitutionName == "Example Hospital"
    assert stored.PixelData == source.PixelData and stored.PatientID == source.PatientID
    assert hashlib.sha256(dataset_bytes(stored_file(settings, row.storage_key))).hexdigest() == row.sha256


async def test_coercion_rewrites_deflated_instances_too_and_the_index_agrees(tmp_path: Path) -> None:
    """One rule for every transfer syntax: the stored object carries the coerced header (a deflated one is
    inflated and deflated again), the index holds what the object holds, both hashes are recorded."""
    source = pydicom.dcmread(DEFLATED)
    source.PatientID = " PAD123"
    source.AccessionNumber = "ACC9 "
    path = tmp_path / "padded-deflated.dcm"
    source.save_as(path)
    settings, row = await coerced_and_stored(
        tmp_path, "      issuer_of_patient_id: always\n      strip_id_padding: true\n", "dcmsend", "OLD_US", path)
    assert row.transfer_syntax_uid == pydicom.uid.DeflatedExplicitVRLittleEndian
    assert row.sha256 != row.received_sha256
    stored_path = stored_file(settings, row.storage_key)
    stored = pydicom.dcmread(stored_path)
    assert stored.file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    assert (stored.PatientID, stored.AccessionNumber, stored.IssuerOfPatientID) == ("PAD123", "ACC9", "1.2.246.21")
    assert (row.patient_id, row.accession_number, row.issuer_of_patient_id) == ("PAD123", "ACC9", "1.2.246.21")
    assert stored.PixelData == source.PixelData
    assert hashlib.sha256(dataset_bytes(stored_path)).hexdigest() == row.sha256


async def test_a_resend_in_another_transfer_syntax_is_a_variant_not_a_new_version(
    gateway: Gateway, tmp_path: Path
) -> None:
    """Same attributes, other encoding: kept as a variant beside the version (no new generation, so no new
    manifest); a changed attribute is still a correction."""
    await gateway.store(CT)  # explicit VR little endian: the gateway keeps the sender's encoding
    code, out = await run(dcmtk("storescu"), "-xi", "-aec", "DICOMGW", "127.0.0.1",
                          str(gateway.settings.dicom.port), str(CT))  # proposes implicit VR only
    assert code == 0, out
    await gateway.until_stored(2)
    await gateway.store(CT)  # the same explicit bytes again: a duplicate, as before
    await gateway.until_stored(3)
    source = pydicom.dcmread(CT)
    async with await open_index(gateway.settings) as index:
        versions = await index.instance_versions(source.SOPInstanceUID)
        variants = await index.study_variants(source.StudyInstanceUID)
    assert [(v.version, v.transfer_syntax_uid) for v in versions] == [(1, pydicom.uid.ExplicitVRLittleEndian)]
    assert [(v.version, v.transfer_syntax_uid) for v in variants] == [(1, pydicom.uid.ImplicitVRLittleEndian)]
    assert stored_file(gateway.settings, variants[0].storage_key).exists()
    assert len(list((gateway.settings.data_dir / "objects").rglob("*.dcm"))) == 2
    assert gateway.metrics.instances_stored.labels("instance.duplicate")._value.get() == 2

    corrected = pydicom.dcmread(CT)
    corrected.StudyDescription = "Corrected description"
    path = tmp_path / "corrected.dcm"
    corrected.save_as(path)
    code, out = await run(dcmtk("storescu"), "-xi", "-aec", "DICOMGW", "127.0.0.1",
                          str(gateway.settings.dicom.port), str(path))
    assert code == 0, out
    await gateway.until_stored(4)
    async with await open_index(gateway.settings) as index:
        versions = await index.instance_versions(source.SOPInstanceUID)
    assert [v.status for v in versions] == [InstanceStatus.REPLACED, InstanceStatus.STORED]


async def test_instance_hitting_a_defect_is_dead_lettered_and_redriven_once_fixed(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    def defect(header: object) -> bytes:
        raise RuntimeError("a defect in file meta writing")

    working = workers.store.file_meta
    monkeypatch.setattr(workers.store, "file_meta", defect)
    await gateway.store(CT)
    bus = EmbeddedBus(gateway.settings.data_dir / "bus", gateway.settings.embedded_bus, Metrics())
    async with asyncio.timeout(30):
        while not (entries := await dead_letter.entries(bus, gateway.settings.topics)):
            await asyncio.sleep(0.2)
    [entry] = entries
    assert "unexpected RuntimeError at test_store_embedded.py" in entry.reason  # no exception text: it may quote data
    async with await open_index(gateway.settings) as index:
        assert await index.current_instance(pydicom.dcmread(CT).SOPInstanceUID) is None

    monkeypatch.setattr(workers.store, "file_meta", working)  # the fix is deployed
    await dead_letter.redrive(bus, gateway.settings.topics, entry)
    await gateway.until_stored(1)
    async with await open_index(gateway.settings) as index:
        row = await index.current_instance(pydicom.dcmread(CT).SOPInstanceUID)
    assert row is not None and row.status is InstanceStatus.STORED
    assert await dead_letter.entries(bus, gateway.settings.topics) == []


async def test_instance_of_another_patient_in_a_study_is_quarantined(gateway: Gateway, tmp_path: Path) -> None:
    first = pydicom.dcmread(CT)
    del first[0xFFFCFFFC]
    other = copy.deepcopy(first)
    other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.9.7433.3.1"
    other.PatientName, other.PatientSex = "Someone^Else", "F"
    paths = [tmp_path / "first.dcm", tmp_path / "other.dcm"]
    first.save_as(paths[0])
    other.save_as(paths[1])
    await gateway.store(paths[0])
    await gateway.until_stored(1)
    await gateway.store(paths[1])
    await gateway.until_stored(2)
    async with await open_index(gateway.settings) as index:
        accepted = await index.current_instance(first.SOPInstanceUID)
        conflicting = await index.current_instance(other.SOPInstanceUID)
    assert accepted is not None and accepted.status is InstanceStatus.STORED
    assert conflicting is not None and conflicting.status is InstanceStatus.QUARANTINED
    conflicts = [f for f in conflicting.findings if f["code"] == "DICOM-PATIENT-CONFLICT"]
    assert {f["keyword"] for f in conflicts} == {"PatientName", "PatientSex"}
    assert all("Else" not in f["message"] for f in conflicts)


async def test_operators_api_lists_and_details_studies(tmp_path: Path) -> None:
    """The api role on the HTTP port: find a study, see its instances with hashes, versions and findings."""
    from aiohttp import ClientSession

    from gateway.cli import _serve

    settings = Settings(data_dir=tmp_path / "data", dicom=DicomSettings(host="127.0.0.1", port=free_port()),
                        http={"host": "127.0.0.1", "port": free_port()})
    server = asyncio.create_task(_serve(settings, ["receiver", "store", "api"], None, None))
    try:
        async with ClientSession() as http:
            base = f"http://127.0.0.1:{settings.http.port}"
            async with asyncio.timeout(30):
                while True:
                    try:
                        async with http.get(f"{base}/readyz") as response:
                            if response.status == 200:
                                break
                    except OSError:
                        pass
                    await asyncio.sleep(0.1)
            code, out = await run(dcmtk("storescu"), "-aec", "DICOMGW", "127.0.0.1", str(settings.dicom.port),
                                  str(CT))
            assert code == 0, out
            source = pydicom.dcmread(CT)
            http.headers.update(api_headers(settings.data_dir))
            async with asyncio.timeout(30):
                while True:
                    async with http.get(f"{base}/api/studies", params={"patient_id": source.PatientID}) as response:
                        studies = await response.json()
                    if studies:
                        break
                    await asyncio.sleep(0.1)
            [study] = studies
            assert study["study_instance_uid"] == source.StudyInstanceUID and study["instances"] == 1
            async with http.get(f"{base}/api/studies/{source.StudyInstanceUID}") as response:
                detail = await response.json()
            [series] = detail["series"]
            [instance] = series["instances"]
            assert instance["sop_instance_uid"] == source.SOPInstanceUID and instance["status"] == "stored"
            assert instance["version"] == 1 and len(instance["sha256"]) == 64 and instance["storage_key"]
            async with http.get(f"{base}/api/studies/1.2.3.404") as response:
                assert response.status == 404
            async with http.get(f"{base}/api/dlq") as response:
                assert await response.json() == []
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
