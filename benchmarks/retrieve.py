"""Query/retrieve: the gateway's C-FIND, C-MOVE, C-GET and WADO-RS against Orthanc's, on the same data, in one run.

    python -m benchmarks.retrieve [--quick] [--instances N] [--ct N] [--queries N] [--repeats N]
        [--log-level DEBUG|INFO|WARNING] [--out DIR] [--work DIR]

Gateway side: ``python -m gateway.cli run --role receiver --role store --role api`` (embedded bus, filesystem
objects, SQLite, in a temporary data dir; ``benchmarks.forward.Gateway``). The loader's AE (``BENCHSCU``) may
store, the benchmark's AE (``BENCH``) may query and retrieve (``GATEWAY_DICOM__ALLOWED_AES``), the C-MOVE
destination is in ``GATEWAY_DICOM__REMOTE_AES``, and ``GATEWAY_QUERY__MAX_RESULTS`` is raised above the number of
studies so that the check below can list them all (the queries timed match far fewer). Orthanc side: Orthanc 1.10
(Debian) as ``benchmarks.forward.Orthanc`` starts it (16 DICOM threads, no compression, SQLite index, default
``LimitFindResults`` 0: no limit, default ``StorageAccessOnFind`` Always), with DICOM modalities for the sink and
for ``BENCH`` (which lets it query, get and move). Both are loaded with the same sender and the same instances, one
after the other.

1. **Load.** The index: ``--instances`` (100 000; ``--quick`` 20 000) tiny instances (Secondary Capture, no pixel
   data: 750-byte files, 410-byte data sets), 100 per study in two series of 50, four studies per patient (Patient
   ID ``RQnnnnnn``, Patient's Name ``RETRIEVE^Pnnnnnn``), generated once with fixed UIDs (so that both hold the same
   UIDs) under ``data/index/`` beside the work dir, where the other benchmarks keep their generated files.
   ``benchmarks.scu`` sends each file once over four associations. Then one study of ``--ct`` (200; ``--quick``
   100) CT instances (0.5 MB, ``benchmarks.datasets`` ``ct``, fresh UIDs per target, via
   ``benchmarks.forward.send``). Timed: the sender (C-STORE answered) and, for the gateway, until its store stage
   has stored and indexed everything (``dicomgw_instances_stored_total``); Orthanc's Success already means stored
   and indexed. Checked before anything is timed: a study-level C-FIND of every study on each returns every study,
   and their Number of Study Related Instances add up to everything sent.
2. **C-FIND latency.** ``--queries`` (50; ``--quick`` 20) of each kind per target, timed in this process from the
   first byte of the C-FIND-RQ to the final response, on one association per target kept open (Study Root,
   Explicit VR LE), interleaved (query n of a kind goes to both, alternating which first), random but the same for
   both: ``patient``, a study-level query by Patient ID (one patient's four studies); ``name``, study level by
   Patient's Name with a trailing wildcard (``RETRIEVE^P00012*``: ten patients, 40 studies); ``series``, an
   IMAGE-level query within one series (Study and Series Instance UID: 50 instances). Study-level queries ask for
   the usual study keys with Modalities in Study and the numbers of related series and instances; the IMAGE query
   for SOP Instance UID, SOP Class UID and Instance Number. The requestor is ``benchmarks.scu``'s association with
   C-FIND added (``FindAssociation``): it counts pending responses without decoding their identifiers, since
   pynetdicom spends about 1.3 ms on each response it decodes, which would hide the servers' difference (a first
   version timed with pynetdicom: 11-13 ms for 4 matches, 54-66 ms for 40, on both). Every answer's number of
   matches is checked. Median and p95 per kind.
3. **Retrieve throughput** of the CT study, ``--repeats`` (10; ``--quick`` 5) runs per method and target,
   interleaved: C-MOVE to dcmtk ``storescp --fork --ignore`` (requested with pynetdicom, timed to the final
   response); C-GET to a pynetdicom requestor whose C-STORE handler discards the data set (128 KiB PDUs,
   TCP_NODELAY set on its socket, which pynetdicom leaves off); C-GET to
   dcmtk ``getscu --ignore`` (128 KiB PDUs; the whole process timed, a few ms of it start-up); over HTTP, the gateway's
   WADO-RS study retrieve (``transfer-syntax=*``: as stored) and, Orthanc having no DICOMweb plugin here, its own
   REST API: ``/studies/{id}/archive`` (a ZIP, streamed) and ``/instances/{id}/file`` for every instance of
   ``/studies/{id}/instances`` one after the other on one keep-alive connection. Bodies are read with http.client
   in 1 MiB reads and thrown away. Figures: instances/s and MB/s (data-set bytes of the study as sent), CPU-seconds
   per GB of the serving process (``benchmarks.proc``), and the ratio gateway/Orthanc.

Everything shares two cores: this process (pynetdicom, the HTTP client), the server and the sink; read the ratios.
``results.json`` and ``results.md`` go to ``benchmarks/results/<UTC time>-retrieve[-quick]/`` after each phase;
the gateway's and Orthanc's logs stay in the work dir (``/tmp/dicom-gateway-bench/retrieve/``).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import math
import random
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any, cast

import uvloop
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dsutils import encode
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # made at import time
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from benchmarks.datasets import SECONDARY_CAPTURE, dataset, test_patient_id
from benchmarks.forward import FILES_ON_DISK, GATEWAY_AE, STUDIES, Gateway, Orthanc, _level, _tail, send, storescp
from benchmarks.proc import cpu_and_rss
from benchmarks.report import reported
from benchmarks.run import machine, percentile
from benchmarks.scu import _PDV, AssociationFailed, command_set, response_status
from benchmarks.scu import Association as StoreAssociation
from benchmarks.targets import DCMTK_ENV, Target, free_port

ROOT = Path(__file__).resolve().parent.parent
INSTANCES, QUICK_INSTANCES = 100_000, 20_000
CT, QUICK_CT = 200, 100
QUERIES, QUICK_QUERIES = 50, 20
REPEATS, QUICK_REPEATS = 10, 5
STUDY_SIZE = 100
SERIES_PER_STUDY = 2
STUDIES_PER_PATIENT = 4
NAME_GROUP = 10
"""A Patient's Name wildcard matches this many patients (``RETRIEVE^P00012*``: P000120 to P000129)."""
INDEX_FORMAT = "v1"
"""Bumped when the generated index instances change, so that older files on disk are not reused."""
LOADER_AE = "BENCHSCU"
"""``benchmarks.scu``'s calling AE title: allowed to store."""
BENCH_AE = "BENCH"
"""This process's calling AE title: allowed to query and retrieve."""
ORTHANC_AE = "ORTHANC"
MAX_PDU = 131_072
"""What the requestors here accept, as dcmtk's peers in the other benchmarks (its maximum)."""
GETSCU = "/usr/bin/getscu"
TIMEOUT = 120.0
"""pynetdicom's ACSE, DIMSE and network timeouts (a wait for one message), getscu's and the HTTP reads'."""
PENDING = (0xFF00, 0xFF01)
FIND_MODEL = str(StudyRootQueryRetrieveInformationModelFind)
STUDY_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
              "StudyTime", "AccessionNumber", "StudyID", "StudyDescription", "ModalitiesInStudy",
              "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
IMAGE_KEYS = ("SOPInstanceUID", "SOPClassUID", "InstanceNumber")
QUERY_KINDS = {
    "patient": "study level, Patient ID = one patient (4 studies)",
    "name": f"study level, Patient's Name RETRIEVE^Pnnnnn* ({NAME_GROUP} patients, {NAME_GROUP * STUDIES_PER_PATIENT}"
            " studies)",
    "series": f"IMAGE level, one series ({STUDY_SIZE // SERIES_PER_STUDY} instances)",
}
METHODS = {
    "c-move": "C-MOVE to dcmtk storescp --ignore (pynetdicom requestor)",
    "c-get": "C-GET, pynetdicom requestor discarding",
    "getscu": "C-GET, dcmtk getscu --ignore",
    "wado-rs": "gateway WADO-RS study (multipart/related, transfer-syntax=*)",
    "rest-archive": "Orthanc REST GET /studies/{id}/archive (ZIP)",
    "rest-files": "Orthanc REST GET /instances/{id}/file, each instance in turn (keep-alive)",
}
COMPARED = (
    ("C-MOVE → storescp --ignore", "c-move", "c-move"),
    ("C-GET → pynetdicom (discards)", "c-get", "c-get"),
    ("C-GET → getscu --ignore", "getscu", "getscu"),
    ("HTTP: gateway WADO-RS / Orthanc REST archive (ZIP)", "wado-rs", "rest-archive"),
    ("HTTP: gateway WADO-RS / Orthanc REST file per instance", "wado-rs", "rest-files"),
)
"""(row, gateway method, Orthanc method): Orthanc here has no DICOMweb plugin, so WADO-RS meets its own REST API."""


# --- the index: tiny instances with fixed UIDs -------------------------------------------------------------


@dataclass(frozen=True)
class Index:
    """Where each index instance belongs: ``STUDY_SIZE`` instances per study in ``SERIES_PER_STUDY`` series,
    ``STUDIES_PER_PATIENT`` studies per patient, UIDs under ``base``."""

    base: str
    studies: int

    @property
    def instances(self) -> int:
        return self.studies * STUDY_SIZE

    @property
    def patients(self) -> int:
        return math.ceil(self.studies / STUDIES_PER_PATIENT)

    def study_uid(self, study: int) -> str:
        return f"{self.base}.{study + 1}"

    def series_uid(self, study: int, series: int) -> str:
        return f"{self.base}.{study + 1}.{series + 1}"

    def sop_uid(self, study: int, series: int, n: int) -> str:
        return f"{self.base}.{study + 1}.{series + 1}.{n + 1}"

    def studies_of_patients(self, first: int, last: int) -> int:
        """Studies of the patients numbered ``first`` to ``last`` (included)."""
        return sum(1 for study in range(self.studies) if first <= study // STUDIES_PER_PATIENT <= last)


def patient_id(patient: int) -> str:
    return f"RQ{patient:06d}"


def patient_name(patient: int) -> str:
    return f"RETRIEVE^P{patient:06d}"


def _series_of(n: int) -> int:
    return n * SERIES_PER_STUDY // STUDY_SIZE


def _study_path(directory: Path, study: int, n: int) -> Path:
    return directory / f"{study // 100:04d}" / f"{study:06d}-{n:03d}.dcm"


def _write_study(index: Index, study: int, directory: Path) -> None:
    patient = study // STUDIES_PER_PATIENT
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(SECONDARY_CAPTURE)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.StudyInstanceUID = index.study_uid(study)
    ds.PatientID, ds.PatientName = patient_id(patient), patient_name(patient)
    ds.PatientBirthDate, ds.PatientSex = f"{1940 + patient % 60}{1 + patient % 12:02d}15", "FMO"[patient % 3]
    ds.StudyDate = (date(2020, 1, 1) + timedelta(days=study % 2000)).strftime("%Y%m%d")
    ds.StudyTime = f"{8 + study % 10:02d}{study % 60:02d}00"
    ds.AccessionNumber, ds.StudyID = f"RQ{study:08d}", str(1 + study % STUDIES_PER_PATIENT)
    ds.StudyDescription, ds.ReferringPhysicianName = "Retrieve benchmark", ""
    ds.Modality, ds.ConversionType = "OT", "WSD"
    (directory / f"{study // 100:04d}").mkdir(parents=True, exist_ok=True)
    for n in range(STUDY_SIZE):
        series = _series_of(n)
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = index.series_uid(study, series), series + 1, n + 1
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID = UID(index.sop_uid(study, series, n))
        buffer = BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        _study_path(directory, study, n).write_bytes(buffer.getvalue())


def index_files(studies: int, root: Path) -> tuple[Index, list[Path]]:
    """The first ``studies`` studies of the index, generated once under ``root`` (more added when asked for)."""
    directory = root / "index" / INDEX_FORMAT
    manifest = directory / "manifest.json"
    have: dict[str, Any] = json.loads(manifest.read_text()) if manifest.exists() else {}
    base = str(have.get("base") or f"2.25.{random.SystemRandom().randrange(10 ** 37, 10 ** 38)}")
    done = int(have.get("studies", 0))
    if done < studies:
        directory.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        for study in range(done, studies):
            _write_study(Index(base, studies), study, directory)
            if study % 100 == 99 or study == studies - 1:
                manifest.write_text(json.dumps({"base": base, "studies": study + 1}))
        print(f"generated {(studies - done) * STUDY_SIZE} index instances in {time.monotonic() - started:.0f} s",
              flush=True)
    return Index(base, studies), [_study_path(directory, study, n) for study in range(studies)
                                  for n in range(STUDY_SIZE)]


# --- the two sides ----------------------------------------------------------------------------------------


@dataclass
class Side:
    """A server under test, as the requestors here see it."""

    name: str
    ae_title: str
    dicom_port: int
    http_port: int
    pid: int
    load: dict[str, Any] = field(default_factory=dict)
    study_uid: str = ""
    """The CT study's."""
    ct_bytes: int = 0
    """Data-set bytes of the CT study as sent."""

    def cpu(self) -> float:
        return cpu_and_rss(self.pid)[0]


def start_gateway(work: Path, sink: Target, studies: int, log_level: str) -> Gateway:
    data_dir = work / "gateway" / "data"
    shutil.rmtree(data_dir.parent, ignore_errors=True)
    data_dir.mkdir(parents=True)
    env = {"GATEWAY_DICOM__ALLOWED_AES": json.dumps([
               {"ae_title": LOADER_AE}, {"ae_title": BENCH_AE, "permissions": ["query", "retrieve"]}]),
           "GATEWAY_DICOM__REMOTE_AES": json.dumps([{"ae_title": sink.ae_title, "host": "127.0.0.1",
                                                    "port": sink.port}]),
           "GATEWAY_QUERY__MAX_RESULTS": str(max(1000, studies + 100)),
           "GATEWAY_LOG__LEVEL": log_level}
    gateway = Gateway(data_dir, data_dir.parent / "gateway.log", ["receiver", "store", "api"], env)
    gateway.wait_ready()
    return gateway


def start_orthanc(work: Path, sink: Target) -> Orthanc:
    directory = work / "orthanc"
    shutil.rmtree(directory, ignore_errors=True)
    return Orthanc(directory, ORTHANC_AE, {"sink": (sink.ae_title, "127.0.0.1", sink.port),
                                           "bench": (BENCH_AE, "127.0.0.1", free_port())})


def _stored(gateway: Gateway) -> tuple[int, float]:
    """Instances the store stage stored, and all it is through with (stored, quarantined, rejected...)."""
    through = {key: value for key, value in gateway.metrics().items()
               if key.startswith("dicomgw_instances_stored_total{")}
    return int(sum(v for k, v in through.items() if 'event="instance.stored"' in k)), sum(through.values())


def wait_stored(gateway: Gateway, count: int, timeout: float) -> float:
    """The wall time the store stage had stored ``count`` instances (polled every 0.25 s)."""
    deadline = time.monotonic() + timeout
    while True:
        stored, through = _stored(gateway)
        if stored >= count:
            return time.time()
        if through >= count:
            raise RuntimeError(f"the gateway stored {stored} of {count} instances ({through} through the store "
                               f"stage): see {gateway.log}")
        if time.monotonic() > deadline or gateway.process.poll() is not None:
            raise RuntimeError(f"the gateway stored {stored} of {count} instances in {timeout:.0f} s: see "
                               f"{gateway.log}\n{_tail(gateway.log)}")
        time.sleep(0.25)


def store(port: int, ae_title: str, files: Path, out: Path) -> dict[str, Any]:
    """Every file once, as it is (the same UIDs into both), over four associations."""
    subprocess.run([sys.executable, "-m", "benchmarks.scu", "--port", str(port), "--aec", ae_title,
                    "--calling-ae", LOADER_AE, "--concurrency", "4", "--files", str(files), "--out", str(out)],
                   check=True, timeout=7200, cwd=ROOT)
    result: dict[str, Any] = json.loads(out.read_text())
    failed = {status: n for status, n in result["statuses"].items() if status != "0x0000"}
    if result["errors"] or failed:
        raise RuntimeError(f"loading {ae_title}: {result['instances']} sent, {result['errors'][:1]} statuses {failed}")
    return result


def _loaded(sent: dict[str, Any], stored_at: float, cpu_seconds: float) -> dict[str, Any]:
    """The sender's figures, and the time from its first C-STORE until stored and indexed (``stored_at``, the
    gateway's store stage; 0: Success already meant it, as with Orthanc)."""
    stored = stored_at - sent["started_wall"] if stored_at else sent["elapsed"]
    return {"instances": sent["instances"], "bytes": sent["bytes"], "send_seconds": sent["elapsed"],
            "send_per_s": sent["instances"] / sent["elapsed"], "stored_seconds": stored,
            "stored_per_s": sent["instances"] / stored, "cpu_seconds": cpu_seconds}


def load(side: Side, index: Index, index_list: Path, ct_list: Path, ct: int, work: Path,
         gateway: Gateway | None) -> None:
    """The index, then the CT study; timed at the sender and (gateway) until stored and indexed."""
    cpu = side.cpu()
    result = store(side.dicom_port, side.ae_title, index_list, work / f"{side.name}-index-sender.json")
    side.load["index"] = _loaded(result, wait_stored(gateway, index.instances, 3600) if gateway else 0.0,
                                 side.cpu() - cpu)
    cpu = side.cpu()
    sent = send(side.dicom_port, side.ae_title, ct_list, ct, work / f"{side.name}-ct-sender.json")
    side.load["ct"] = _loaded(sent, wait_stored(gateway, index.instances + ct, 600) if gateway else 0.0,
                              side.cpu() - cpu)
    side.ct_bytes = int(sent["bytes"])
    index_load = side.load["index"]
    print(f"{side.name}: index {index.instances} instances sent in {index_load['send_seconds']:.1f} s "
          f"({index_load['send_per_s']:.0f}/s), stored and indexed in {index_load['stored_seconds']:.1f} s "
          f"({index_load['stored_per_s']:.0f}/s); CT {ct} instances ({sent['bytes'] / 1e6:.0f} MB) in "
          f"{side.load['ct']['stored_seconds']:.1f} s", flush=True)


# --- DIMSE requestors ---------------------------------------------------------------------------------------


def _ae(get: bool = False) -> AE:
    ae = AE(BENCH_AE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    ae.maximum_pdu_size = MAX_PDU
    if get:
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet, [ExplicitVRLittleEndian])
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    else:
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind, [ExplicitVRLittleEndian])
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove, [ExplicitVRLittleEndian])
    return ae


@contextmanager
def associate(side: Side, ae: AE | None = None, **kwargs: Any) -> Iterator[Association]:
    association = (ae or _ae()).associate("127.0.0.1", side.dicom_port, ae_title=side.ae_title, **kwargs)
    if not association.is_established:
        raise RuntimeError(f"{side.name} did not accept {BENCH_AE}'s association")
    # pynetdicom leaves Nagle on: a request's command and identifier PDUs would wait for a delayed ACK (40 ms).
    transport = association.dul.socket
    assert transport is not None and transport.socket is not None
    transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        yield association
    finally:
        if association.is_established:
            association.release()


FINDS_SENT: Counter[str] = Counter()
"""C-FIND requests sent, by called AE title: set against the gateway's own counters when a response never comes."""


def find(association: Association, query: Dataset,
         answers: list[Dataset] | None = None) -> tuple[float, int, int]:
    """One C-FIND: milliseconds from the request to the final response, matches, final status."""
    matches, final = 0, -1
    FINDS_SENT[association.acceptor.ae_title] += 1
    started = time.perf_counter()
    for status, identifier in association.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        if not status:
            raise RuntimeError("C-FIND: no response (the association was aborted or timed out)")
        code = int(status.Status)
        if code in PENDING:
            matches += 1
            if answers is not None and identifier is not None:
                answers.append(identifier)
        else:
            final = code
    return (time.perf_counter() - started) * 1000, matches, final


def study_query(**match: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    for keyword in STUDY_KEYS:
        setattr(query, keyword, match.get(keyword, ""))
    return query


def image_query(study_uid: str, series_uid: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID, query.SeriesInstanceUID = study_uid, series_uid
    for keyword in IMAGE_KEYS:
        setattr(query, keyword, "")
    return query


def study_identifier(study_uid: str) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    return identifier


def check(side: Side, index: Index, ct: int) -> dict[str, Any]:
    """Every study listed with the right number of instances, and the CT study found (its UID kept)."""
    answers: list[Dataset] = []
    with associate(side) as association:
        ms, matches, final = find(association, study_query(), answers)
        counts = {str(a.StudyInstanceUID): int(a.NumberOfStudyRelatedInstances or 0) for a in answers}
        ct_answers: list[Dataset] = []
        _, ct_matches, ct_final = find(association, study_query(PatientID=test_patient_id(0)), ct_answers)
    result = {"studies": matches, "instances": sum(counts.values()), "status": f"0x{final:04X}",
              "all_studies_ms": ms}
    expected = {"studies": index.studies + 1, "instances": index.instances + ct, "status": "0x0000"}
    if any(result[key] != value for key, value in expected.items()) or ct_matches != 1 or ct_final != 0:
        raise RuntimeError(f"{side.name}: C-FIND of every study found {result}, expected {expected}; "
                           f"the CT study: {ct_matches} match(es), status 0x{ct_final:04X}")
    side.study_uid = str(ct_answers[0].StudyInstanceUID)
    if counts.get(side.study_uid) != ct:
        raise RuntimeError(f"{side.name}: the CT study holds {counts.get(side.study_uid)} instances, {ct} sent")
    print(f"{side.name}: C-FIND of every study: {matches} studies, {result['instances']} instances "
          f"({ms:.0f} ms)", flush=True)
    return result


# --- C-FIND latency -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    kind: str
    query: Dataset
    expected: int


def plan_queries(index: Index, count: int, seed: int = 8) -> list[Planned]:
    """``count`` queries of each kind, interleaved by kind, the same for both sides."""
    rng = random.Random(seed)
    groups = max(1, index.patients // NAME_GROUP)
    per_series = sum(1 for n in range(STUDY_SIZE) if _series_of(n) == 0)
    planned = []
    for _ in range(count):
        patient = rng.randrange(index.patients)
        planned.append(Planned("patient", study_query(PatientID=patient_id(patient)),
                               index.studies_of_patients(patient, patient)))
        group = rng.randrange(groups)
        planned.append(Planned("name", study_query(PatientName=f"RETRIEVE^P{group:05d}*"),
                               index.studies_of_patients(group * NAME_GROUP, group * NAME_GROUP + NAME_GROUP - 1)))
        study, series = rng.randrange(index.studies), rng.randrange(SERIES_PER_STUDY)
        planned.append(Planned("series", image_query(index.study_uid(study), index.series_uid(study, series)),
                               per_series))
    return planned


class FindAssociation(StoreAssociation):
    """``benchmarks.scu``'s association (asyncio, PDUs framed with ``struct``) with C-FIND added: it counts the
    pending responses and skips their identifiers undecoded, so that the time measured is the server's and not
    the requestor's (pynetdicom spends about a millisecond on each response it decodes)."""

    async def c_find(self, identifier: bytes) -> tuple[float, int, int]:
        """Milliseconds from the first byte of the C-FIND-RQ to the final response, matches, final status."""
        us = struct.Struct("<H").pack
        self._message_id = (self._message_id + 1) & 0xFFFF
        context_id = self._contexts[(FIND_MODEL, ExplicitVRLittleEndian)]
        command = command_set((0x0002, FIND_MODEL.encode()), (0x0100, us(0x0020)), (0x0110, us(self._message_id)),
                              (0x0700, us(0)), (0x0800, us(0x0000)))
        matches = 0
        received = bytearray()
        started = time.perf_counter()
        await self._send_message(context_id, command, identifier)
        while True:
            pdu_type, body = await self._read_pdu()
            if pdu_type != 0x04:
                raise AssociationFailed(f"PDU type 0x{pdu_type:02X} instead of a C-FIND response")
            offset = 0
            while offset < len(body):
                length, _, control = _PDV.unpack_from(body, offset)
                if control & 0x01:  # a command fragment; identifiers (data set fragments) are skipped
                    received += body[offset + 6:offset + 4 + length]
                    if control & 0x02:
                        status = response_status(bytes(received))
                        received.clear()
                        if status not in PENDING:
                            return (time.perf_counter() - started) * 1000, matches, status
                        matches += 1
                offset += 4 + length


def _encoded(identifier: Dataset) -> bytes:
    """Explicit VR Little Endian."""
    data = encode(identifier, False, True)
    if data is None:
        raise ValueError("the identifier does not encode")
    return data


def find_latency(sides: list[Side], planned: list[Planned]) -> dict[str, dict[str, list[float]]]:
    return uvloop.run(_find_latency(sides, planned))


async def _find_latency(sides: list[Side], planned: list[Planned]) -> dict[str, dict[str, list[float]]]:
    """Each planned query on each side (alternating which goes first), on one association per side."""
    timings: dict[str, dict[str, list[float]]] = {side.name: {kind: [] for kind in QUERY_KINDS} for side in sides}
    identifiers = [_encoded(query.query) for query in planned]
    wrong: list[str] = []
    associations = {side.name: cast(FindAssociation, await FindAssociation.open(  # ``open`` makes a ``cls``
        "127.0.0.1", side.dicom_port, BENCH_AE, side.ae_title, [(FIND_MODEL, ExplicitVRLittleEndian)])) for side in sides}
    try:
        for side in sides:  # warm-up, not counted
            for identifier in identifiers[:3]:
                await associations[side.name].c_find(identifier)
        for n, (query, identifier) in enumerate(zip(planned, identifiers, strict=True)):
            order = sides if (n // len(QUERY_KINDS)) % 2 == 0 else sides[::-1]
            for side in order:
                FINDS_SENT[side.ae_title] += 1
                async with asyncio.timeout(TIMEOUT):
                    ms, matches, final = await associations[side.name].c_find(identifier)
                if matches != query.expected or final != 0:
                    wrong.append(f"{side.name} {query.kind}: {matches} matches (expected {query.expected}), "
                                 f"status 0x{final:04X}")
                timings[side.name][query.kind].append(ms)
    finally:
        for association in associations.values():
            await association.release()
    if wrong:
        raise RuntimeError(f"{len(wrong)} C-FIND answers were wrong, first: {wrong[:3]}")
    return timings


def find_summary(timings: dict[str, dict[str, list[float]]], planned: list[Planned]) -> list[dict[str, Any]]:
    expected: dict[str, set[int]] = {}
    for query in planned:
        expected.setdefault(query.kind, set()).add(query.expected)
    rows = []
    for kind in QUERY_KINDS:
        row: dict[str, Any] = {"kind": kind, "what": QUERY_KINDS[kind], "matches": sorted(expected[kind])}
        for name, by_kind in timings.items():
            values = by_kind[kind]
            row[name] = {"n": len(values), "median_ms": statistics.median(values),
                         "p95_ms": percentile(values, 0.95), "min_ms": min(values), "max_ms": max(values)}
        if "gateway" in row and "orthanc" in row:
            row["ratio_median"] = row["orthanc"]["median_ms"] / row["gateway"]["median_ms"]
            row["ratio_p95"] = row["orthanc"]["p95_ms"] / row["gateway"]["p95_ms"]
        rows.append(row)
    return rows


# --- retrieve throughput ------------------------------------------------------------------------------------


@dataclass
class Retrieval:
    target: str
    method: str
    repeat: int
    expected: int
    instances: int
    """Instances the requestor saw arrive (or the C-MOVE's completed sub-operations)."""
    seconds: float
    megabytes: float
    """Data-set MB of the study (as sent to the server), when every instance came."""
    cpu_seconds: float
    """The serving process tree during the run."""
    body_bytes: int = 0
    """HTTP: bytes of the response bodies read."""
    status: str = ""

    @property
    def complete(self) -> bool:
        return self.instances == self.expected

    @property
    def per_second(self) -> float:
        return self.instances / self.seconds if self.seconds else 0.0

    @property
    def mb_per_second(self) -> float:
        return self.megabytes / self.seconds if self.seconds else 0.0

    @property
    def cpu_s_per_gb(self) -> float:
        return self.cpu_seconds / (self.megabytes / 1000) if self.megabytes else 0.0


def _final_counts(status: Dataset) -> tuple[int, int, int]:
    return (int(status.get("NumberOfCompletedSuboperations", 0) or 0),
            int(status.get("NumberOfFailedSuboperations", 0) or 0),
            int(status.get("NumberOfWarningSuboperations", 0) or 0))


def c_move(side: Side, destination: str) -> tuple[float, int, str]:
    with associate(side) as association:
        final: Dataset | None = None
        started = time.perf_counter()
        for status, _ in association.send_c_move(study_identifier(side.study_uid), destination,
                                                 StudyRootQueryRetrieveInformationModelMove):
            if not status:
                raise RuntimeError(f"{side.name}: C-MOVE without a response")
            if int(status.Status) not in PENDING:
                final = status
        seconds = time.perf_counter() - started
    assert final is not None
    completed, failed, warning = _final_counts(final)
    return seconds, completed + warning, f"0x{int(final.Status):04X} completed {completed} failed {failed}"


def c_get(side: Side) -> tuple[float, int, str]:
    received = [0]
    lock = threading.Lock()

    def handle(event: Event) -> int:
        with lock:
            received[0] += 1
        return 0x0000

    ae = _ae(get=True)
    with associate(side, ae, ext_neg=[build_role(CTImageStorage, scp_role=True)],
                   evt_handlers=[(evt.EVT_C_STORE, handle)]) as association:
        final: Dataset | None = None
        started = time.perf_counter()
        for status, _ in association.send_c_get(study_identifier(side.study_uid),
                                                StudyRootQueryRetrieveInformationModelGet):
            if not status:
                raise RuntimeError(f"{side.name}: C-GET without a response")
            if int(status.Status) not in PENDING:
                final = status
        seconds = time.perf_counter() - started
    assert final is not None
    completed, failed, _ = _final_counts(final)
    return seconds, received[0], f"0x{int(final.Status):04X} completed {completed} failed {failed}"


def getscu(side: Side) -> tuple[float, int, str]:
    argv = [GETSCU, "-v", "-aet", BENCH_AE, "-aec", side.ae_title, "-S", "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={side.study_uid}", "--ignore", "-pdu", str(MAX_PDU), "-to", str(int(TIMEOUT)),
            "127.0.0.1", str(side.dicom_port)]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env={**DCMTK_ENV, "PATH": "/usr/bin:/bin"},
                          timeout=TIMEOUT)
    seconds = time.perf_counter() - started
    output = done.stdout + done.stderr
    received = output.count("Received C-STORE Request")
    if done.returncode != 0:
        raise RuntimeError(f"{side.name}: getscu exited {done.returncode}: {output[-2000:]}")
    return seconds, received, f"exit {done.returncode}"


class _Counter:
    """Bytes and occurrences of a marker in a stream read in pieces."""

    def __init__(self, marker: bytes) -> None:
        self.marker = marker
        self.bytes = 0
        self.found = 0
        self._tail = b""

    def feed(self, piece: bytes | memoryview) -> None:
        data = bytes(piece)
        self.bytes += len(data)
        seam = self._tail + data[:len(self.marker) - 1]
        self.found += seam.count(self.marker) + data.count(self.marker)
        self._tail = data[-(len(self.marker) - 1):]


def _read(connection: http.client.HTTPConnection, path: str, headers: dict[str, str],
          counter: _Counter) -> None:
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status} {response.read()[:300]!r}")
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    while read := response.readinto(buffer):
        counter.feed(view[:read])


def wado_rs(side: Side, token: str) -> tuple[float, int, int, str]:
    counter = _Counter(b"Content-Type: application/dicom")
    connection = http.client.HTTPConnection("127.0.0.1", side.http_port, timeout=TIMEOUT)
    try:
        started = time.perf_counter()
        _read(connection, f"/dicomweb/studies/{side.study_uid}", {
            "Authorization": f"Bearer {token}",
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}, counter)
        seconds = time.perf_counter() - started
    finally:
        connection.close()
    return seconds, counter.found, counter.bytes, "200"


def orthanc_study(orthanc: Orthanc, study_uid: str) -> str:
    found: list[str] = orthanc.post("/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})
    if len(found) != 1:
        raise RuntimeError(f"Orthanc finds {len(found)} studies {study_uid}")
    return found[0]


def rest_archive(side: Side, study_id: str) -> tuple[float, int, int, str]:
    counter = _Counter(b"PK\x03\x04")  # ZIP local file headers (and, rarely, the same bytes in pixel data)
    connection = http.client.HTTPConnection("127.0.0.1", side.http_port, timeout=TIMEOUT)
    try:
        started = time.perf_counter()
        _read(connection, f"/studies/{study_id}/archive", {}, counter)
        seconds = time.perf_counter() - started
    finally:
        connection.close()
    return seconds, counter.found, counter.bytes, "200"


def rest_files(side: Side, study_id: str) -> tuple[float, int, int, str]:
    counter = _Counter(b"DICM")
    connection = http.client.HTTPConnection("127.0.0.1", side.http_port, timeout=TIMEOUT)
    try:
        started = time.perf_counter()
        connection.request("GET", f"/studies/{study_id}/instances")
        response = connection.getresponse()
        instances = [entry["ID"] for entry in json.loads(response.read())]
        for instance in instances:
            _read(connection, f"/instances/{instance}/file", {}, counter)
        seconds = time.perf_counter() - started
    finally:
        connection.close()
    return seconds, counter.found, counter.bytes, "200"


def retrieve(side: Side, method: str, repeat: int, ct: int, sink: Target, token: str, study_id: str) -> Retrieval:
    cpu = side.cpu()
    body = 0
    if method == "c-move":
        seconds, instances, status = c_move(side, sink.ae_title)
    elif method == "c-get":
        seconds, instances, status = c_get(side)
    elif method == "getscu":
        seconds, instances, status = getscu(side)
    elif method == "wado-rs":
        seconds, instances, body, status = wado_rs(side, token)
    elif method == "rest-archive":
        seconds, instances, body, status = rest_archive(side, study_id)
    elif method == "rest-files":
        seconds, instances, body, status = rest_files(side, study_id)
    else:
        raise ValueError(method)
    cpu = side.cpu() - cpu
    megabytes = side.ct_bytes / 1e6 if instances == ct else side.ct_bytes / 1e6 * instances / ct
    return Retrieval(side.name, method, repeat, ct, instances, seconds, megabytes, cpu, body, status)


def retrieve_summary(runs: list[Retrieval]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[Retrieval]] = {}
    for run in runs:
        groups.setdefault((run.method, run.target), []).append(run)
    rows = []
    for (method, target), group in groups.items():
        complete = [r for r in group if r.complete] or group
        rates = [r.per_second for r in complete]
        rows.append({"method": method, "target": target, "what": METHODS[method], "runs": len(group),
                     "complete": sum(1 for r in group if r.complete), "instances": group[0].expected,
                     "seconds": statistics.median(r.seconds for r in complete),
                     "instances_per_s": statistics.median(rates), "min": min(rates), "max": max(rates),
                     "mb_per_s": statistics.median(r.mb_per_second for r in complete),
                     "cpu_s_per_gb": statistics.median(r.cpu_s_per_gb for r in complete),
                     "body_mb": statistics.median(r.body_bytes for r in complete) / 1e6})
    return rows


def retrieve_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_key = {(r["method"], r["target"]): r for r in rows}
    result = []
    for label, gateway_method, orthanc_method in COMPARED:
        gateway, orthanc = by_key.get((gateway_method, "gateway")), by_key.get((orthanc_method, "orthanc"))
        if gateway is None or orthanc is None or not orthanc["instances_per_s"]:
            continue
        result.append({"comparison": label, "gateway_method": gateway_method, "orthanc_method": orthanc_method,
                       "gateway_per_s": gateway["instances_per_s"], "orthanc_per_s": orthanc["instances_per_s"],
                       "gateway_mb_per_s": gateway["mb_per_s"], "orthanc_mb_per_s": orthanc["mb_per_s"],
                       "ratio": gateway["instances_per_s"] / orthanc["instances_per_s"],
                       "gateway_cpu_s_per_gb": gateway["cpu_s_per_gb"], "orthanc_cpu_s_per_gb": orthanc["cpu_s_per_gb"]})
    return result


# --- report -------------------------------------------------------------------------------------------------


def log_summary(path: Path, orthanc: bool = False) -> dict[str, Any]:
    """Lines by level and the first few warnings and errors of a log."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return {}
    if orthanc:  # glog: E1130 12:00:00.000000 ...
        levels = Counter({"E": "ERROR", "W": "WARNING", "I": "INFO"}.get(line[:1], "other") for line in lines)
    else:
        levels = Counter(_level(line) for line in lines)
    if orthanc:  # its start-up speaks at W level: only errors are notable
        notable = [line[:400] for line in lines if line[:1] == "E" and line[1:2].isdigit()]
    else:
        notable = [line[:400] for line in lines if _level(line) in ("ERROR", "WARNING", "CRITICAL")]
    return {"log": str(path), "levels": dict(levels), "notable": list(dict.fromkeys(notable))[:12]}


def markdown(state: dict[str, Any]) -> str:
    lines = [state["header"], ""]
    loads = state.get("load", {})
    if loads:
        lines += ["## Load", "",
                  "| target | what | instances | MB | sent in s | sent/s | stored and indexed in s | stored/s | "
                  "CPU s of the server |", "|---|---|---|---|---|---|---|---|---|"]
        for name, parts in loads.items():
            for part, r in parts.items():
                lines.append(f"| {name} | {part} | {r['instances']} | {r['bytes'] / 1e6:.0f} | {r['send_seconds']:.1f} | "
                             f"{r['send_per_s']:.0f} | {r['stored_seconds']:.1f} | {r['stored_per_s']:.0f} | "
                             f"{r['cpu_seconds']:.1f} |")
        lines += ["", "Gateway: *stored and indexed* is until `dicomgw_instances_stored_total` reached the count "
                      "(C-STORE Success means durable in the bus); Orthanc's Success means stored and indexed."]
    checks = state.get("checks", {})
    if checks:
        lines += ["", "Checked before timing (study-level C-FIND of every study): " + "; ".join(
            f"{name} {c['studies']} studies, {c['instances']} instances, {c['status']}, {c['all_studies_ms']:.0f} ms"
            for name, c in checks.items())]
    find_rows = state.get("find", [])
    if find_rows:
        lines += ["", "## C-FIND latency", "",
                  "From the C-FIND-RQ to the final response, one association per target kept open; the requestor "
                  "(benchmarks.scu's association with C-FIND) counts responses without decoding them.",
                  "", "| query | matches | n | gateway median ms | gateway p95 ms | Orthanc median ms | "
                  "Orthanc p95 ms | Orthanc/gateway median | Orthanc/gateway p95 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in find_rows:
            g, o = r["gateway"], r["orthanc"]
            lines.append(f"| {r['what']} | {'/'.join(map(str, r['matches']))} | {g['n']} | {g['median_ms']:.1f} | "
                         f"{g['p95_ms']:.1f} | {o['median_ms']:.1f} | {o['p95_ms']:.1f} | {r['ratio_median']:.2f} | "
                         f"{r['ratio_p95']:.2f} |")
        lines += ["", "Above 1: the gateway answers faster."]
    rows = state.get("retrieve", [])
    if rows:
        lines += ["", "## Retrieve throughput", "",
                  f"One CT study, {state['options']['ct']} instances "
                  f"(gateway {state.get('ct_mb', {}).get('gateway', 0):.0f} MB, Orthanc "
                  f"{state.get('ct_mb', {}).get('orthanc', 0):.0f} MB of data sets); MB/s of data sets.", "",
                  "| method | target | complete | s (median) | instances/s | min–max | MB/s | CPU s/GB | body MB |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['what']} | {r['target']} | {r['complete']}/{r['runs']} | {r['seconds']:.2f} | "
                         f"{r['instances_per_s']:.0f} | {r['min']:.0f}–{r['max']:.0f} | {r['mb_per_s']:.0f} | "
                         f"{r['cpu_s_per_gb']:.1f} | {r['body_mb']:.0f} |")
        ratio_rows = state.get("retrieve_ratios", [])
        if ratio_rows:
            lines += ["", "Gateway / Orthanc (instances/s medians; above 1: the gateway is faster):", "",
                      "| retrieve | gateway inst/s | Orthanc inst/s | gateway MB/s | Orthanc MB/s | gateway/Orthanc | "
                      "CPU s/GB gateway | CPU s/GB Orthanc |", "|---|---|---|---|---|---|---|---|"]
            lines += [f"| {r['comparison']} | {r['gateway_per_s']:.0f} | {r['orthanc_per_s']:.0f} | "
                      f"{r['gateway_mb_per_s']:.0f} | {r['orthanc_mb_per_s']:.0f} | {r['ratio']:.2f} | "
                      f"{r['gateway_cpu_s_per_gb']:.1f} | {r['orthanc_cpu_s_per_gb']:.1f} |" for r in ratio_rows]
    logs = state.get("logs", {})
    if logs:
        lines += ["", "## Logs", ""]
        for name, summary in logs.items():
            lines.append(f"- {name}: lines by level {summary.get('levels')} ({summary.get('log')})")
            lines += [f"  - `{line}`" for line in summary.get("notable", [])[:5]]
    if state.get("error"):
        lines += ["", f"**Stopped by an error:** {state['error']}"]
        if state.get("at_error"):
            lines += ["", f"At the error: {json.dumps(state['at_error'])}"]
    return "\n".join(lines) + "\n"


# --- the run ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    instances: int
    ct: int
    queries: int
    repeats: int
    log_level: str


def measure(options: Options, work: Path, state: dict[str, Any], report: Callable[[], None]) -> None:
    index, paths = index_files(math.ceil(options.instances / STUDY_SIZE), work.parent / "data")
    state["index"] = {"studies": index.studies, "instances": index.instances, "patients": index.patients,
                      "bytes_per_instance": statistics.median(p.stat().st_size for p in paths[:: max(1, len(paths) // 100)])}
    index_list = work / "index.files"
    index_list.write_text("\n".join(str(path) for path in paths))
    ct_paths = dataset("ct", FILES_ON_DISK["ct"], work.parent / "data")
    ct_list = work / "ct.files"
    ct_list.write_text("\n".join(str(path) for n, path in enumerate(ct_paths) if n % STUDIES == 0))
    sink = storescp(work)
    gateway: Gateway | None = None
    orthanc: Orthanc | None = None
    try:
        gateway = start_gateway(work, sink, index.studies + 1, options.log_level)
        orthanc = start_orthanc(work, sink)
        sides = [Side("gateway", GATEWAY_AE, gateway.dicom_port, gateway.http_port, gateway.process.pid),
                 Side("orthanc", ORTHANC_AE, orthanc.dicom_port, orthanc.http_port, orthanc.process.pid)]
        token = (gateway.data_dir / "api-token").read_text().strip()
        state["load"] = {}
        for side in sides:
            load(side, index, index_list, ct_list, options.ct, work, gateway if side.name == "gateway" else None)
            state["load"][side.name] = side.load
            report()
        state["checks"] = {side.name: check(side, index, options.ct) for side in sides}
        state["ct_mb"] = {side.name: side.ct_bytes / 1e6 for side in sides}
        report()

        planned = plan_queries(index, options.queries)
        started = time.monotonic()
        timings = find_latency(sides, planned)
        state["find_timings_ms"] = timings
        state["find"] = find_summary(timings, planned)
        print(f"C-FIND: {len(planned) * 2} queries in {time.monotonic() - started:.0f} s", flush=True)
        report()

        study_id = orthanc_study(orthanc, sides[1].study_uid)
        runs: list[Retrieval] = []
        for repeat in range(1, options.repeats + 1):
            for _, gateway_method, orthanc_method in COMPARED:
                order = sides if repeat % 2 else sides[::-1]
                for side in order:
                    method = gateway_method if side.name == "gateway" else orthanc_method
                    if side.name == "gateway" and any(r.target == "gateway" and r.method == method
                                                      and r.repeat == repeat for r in runs):
                        continue  # WADO-RS once a repeat, against both of Orthanc's REST ways
                    run = retrieve(side, method, repeat, options.ct, sink, token, study_id)
                    runs.append(run)
                    print(f"[{repeat}/{options.repeats}] {side.name:8} {method:12} {run.instances}/{run.expected} "
                          f"in {run.seconds:6.2f} s: {run.per_second:6.0f} inst/s {run.mb_per_second:6.0f} MB/s, "
                          f"CPU {run.cpu_s_per_gb:5.1f} s/GB {run.status}", flush=True)
            state["retrieve_runs"] = [asdict(r) for r in runs]
            state["retrieve"] = retrieve_summary(runs)
            state["retrieve_ratios"] = retrieve_ratios(state["retrieve"])
            report()
        incomplete = [f"{r.target} {r.method} r{r.repeat}: {r.instances}/{r.expected} {r.status}" for r in runs
                      if not r.complete]
        if incomplete:
            raise RuntimeError(f"incomplete retrieves: {incomplete}")
    except BaseException:
        if gateway is not None and gateway.process.poll() is None:
            state["at_error"] = at_error(gateway)
        raise
    finally:
        for stop in (gateway.stop if gateway else None, orthanc.stop if orthanc else None, sink.stop):
            if stop is not None:
                try:
                    stop()
                except Exception as exc:  # keep stopping the others
                    print(f"stopping: {exc}", file=sys.stderr)
        state["logs"] = {}
        if gateway is not None:
            state["logs"]["gateway"] = log_summary(gateway.log)
            shutil.rmtree(gateway.data_dir, ignore_errors=True)
        if orthanc is not None:
            state["logs"]["orthanc"] = log_summary(orthanc.log, orthanc=True)
            orthanc.clear()


def at_error(gateway: Gateway) -> dict[str, Any]:
    """What the gateway says it answered, beside what was asked of it: a C-FIND counted ``answered`` whose final
    response (``dicomgw_dimse_responses_total{command="0x8020",status="0x0000"}``) was never counted is stuck in
    the gateway; counted on both sides but never received, lost after it."""
    try:
        metrics: dict[str, Any] = {key: value for key, value in gateway.metrics().items()
                   if key.startswith(("dicomgw_dimse_responses_total", "dicomgw_queries_total",
                                      "dicomgw_retrieved_instances_total"))}
    except OSError as exc:
        metrics = {"unavailable": str(exc)}
    return {"c_find_requests_sent": dict(FINDS_SENT), "gateway_metrics": metrics}



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_INSTANCES} index instances, {QUICK_CT} CT, {QUICK_QUERIES} queries of each "
                             f"kind, {QUICK_REPEATS} repeats")
    parser.add_argument("--instances", type=int, default=0,
                        help=f"index instances, rounded up to studies of {STUDY_SIZE} (default {INSTANCES})")
    parser.add_argument("--ct", type=int, default=0, help=f"CT instances in the retrieved study (default {CT})")
    parser.add_argument("--queries", type=int, default=0, help=f"C-FIND queries of each kind (default {QUERIES})")
    parser.add_argument("--repeats", type=int, default=0, help=f"runs of each retrieve (default {REPEATS})")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING"], default="WARNING",
                        help="the gateway's log level (its log is in the work dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dicom-gateway-bench" / "retrieve")
    args = parser.parse_args()
    quick = args.quick
    options = Options(args.instances or (QUICK_INSTANCES if quick else INSTANCES), args.ct or (QUICK_CT if quick else CT),
                      args.queries or (QUICK_QUERIES if quick else QUERIES),
                      args.repeats or (QUICK_REPEATS if quick else REPEATS), args.log_level)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out / f"{stamp}-retrieve{'-quick' if quick else ''}"
    out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    studies = math.ceil(options.instances / STUDY_SIZE)
    state: dict[str, Any] = {
        "options": asdict(options), "machine": machine(),
        "header": (f"# Query/retrieve: gateway against Orthanc, {stamp}\n\nMachine: {machine()}. Gateway: receiver, "
                   "store and api roles in one process, embedded bus, filesystem objects, SQLite. Orthanc 1.10 "
                   "(Debian), SQLite index, no DICOMweb plugin. Index: "
                   f"{studies * STUDY_SIZE} tiny instances (no pixel data), {studies} studies of {STUDY_SIZE} in "
                   f"{SERIES_PER_STUDY} series, {STUDIES_PER_PATIENT} studies per patient; plus one CT study of "
                   f"{options.ct} instances (0.5 MB). {options.queries} C-FIND queries of each kind per target, "
                   f"{options.repeats} runs of each retrieve.")}

    reported(out, state, markdown, lambda report: measure(options, args.work, state, report))


if __name__ == "__main__":
    main()
