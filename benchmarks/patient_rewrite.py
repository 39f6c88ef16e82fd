"""What an ADT change costs a retrieve: C-GET of a study before and after its patient was renamed, in one run.

    python -m benchmarks.patient_rewrite [--quick] [--instances N] [--repeats N] [--out DIR] [--work DIR]

The gateway (``python -m gateway.cli run --role receiver --role store --role api --role hl7 --role patient``,
embedded bus, SQLite, filesystem objects; ``benchmarks.forward.Gateway``) is loaded with two studies of
``--instances`` (200; ``--quick`` 50) CT instances each, both with an ASCII Patient's Name: ``small``, pydicom's
CT_small (128×128, 39 kB files) and ``large`` (the same at 512×512, 0.5 MB), both in the default character set
(no Specific Character Set). Each is fetched ``--repeats`` (5; ``--quick`` 3) times with dcmtk's ``getscu``
(``TCP_NODELAY=1``, writing the files to a temporary directory, removed after each run), timed from its start
to its exit, each run checked to carry the name: as stored. Then an ADT^A08 (MSH-18 8859/1) renames both
patients to ``Mäkelä^Jyrki``, and once the patient role has applied it (``GET /api/patients``) each study is
fetched the same number of times again: every object now goes out with groups 0008 and 0010 re-encoded with the
new name and Specific Character Set ISO_IR 100 (``gateway.dicom.transcode.with_patient``), and every run is
checked to carry the new name.
Reported: the median seconds and instances/s of each, and the ratio rewritten / as stored (instances/s).
Results go to ``benchmarks/results/<UTC time>-patient-rewrite[-quick]/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from benchmarks.forward import Gateway, _get
from benchmarks.run import machine
from benchmarks.targets import DCMTK_ENV, free_port

ROOT = Path(__file__).resolve().parent.parent
VIEWER = "BENCHQR"
HOSP = "HOSP"
GETSCU, STORESCU = "/usr/bin/getscu", "/usr/bin/storescu"


def make_study(directory: Path, patient_id: str, count: int, size: int) -> tuple[str, list[Path]]:
    directory.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    paths = []
    for n in range(count):
        ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID, ds.IssuerOfPatientID, ds.PatientName = patient_id, HOSP, "MAKELA^JYRKI"
        del ds.SpecificCharacterSet
        if size != 128:
            ds.Rows = ds.Columns = size
            ds.PixelData = bytes(size * size * 2)
        path = directory / f"{n:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study, paths


def get_study(gateway: Gateway, study: str, work: Path) -> tuple[float, str]:
    """Seconds dcmtk's getscu took for the study, and the Patient's Name of one file it got."""
    out = Path(tempfile.mkdtemp(dir=work))
    try:
        started = time.perf_counter()
        subprocess.run([GETSCU, "-S", "-aet", VIEWER, "-aec", "DICOMGW", "-od", str(out),
                        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                        "127.0.0.1", str(gateway.dicom_port)], check=True, capture_output=True,
                       env={**os.environ, **DCMTK_ENV})
        elapsed = time.perf_counter() - started
        return elapsed, str(pydicom.dcmread(next(out.iterdir()), stop_before_pixels=True).PatientName)
    finally:
        shutil.rmtree(out)


def timed(gateway: Gateway, study: str, work: Path, repeats: int, name: str) -> list[float]:
    runs = [get_study(gateway, study, work) for _ in range(repeats)]
    assert {got for _, got in runs} == {name}, runs
    return [seconds for seconds, _ in runs]


def rename(port: int, patient_id: str, control_id: str) -> None:
    message = (f"MSH|^~\\&|HIS|HOSP|DICOMGW|D|20261130||ADT^A08^ADT_A01|{control_id}|P|2.5|||||FIN|8859/1\r"
               f"PID|1||{patient_id}^^^{HOSP}&{HOSP}&ISO^PI||Mäkelä^Jyrki").encode("latin-1")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(b"\x0b" + message + b"\x1c\r")
        answer = b""
        while not answer.endswith(b"\x1c\r"):
            answer += connection.recv(65536)
    assert b"MSA|AA|" in answer, answer


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.patient_rewrite", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--instances", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dicom-gateway-bench/patient-rewrite"))
    args = parser.parse_args()
    count = args.instances or (50 if args.quick else 200)
    repeats = args.repeats or (3 if args.quick else 5)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    hl7_port = free_port()
    gateway = Gateway(args.work / "data", args.work / "gateway.log",
                      ["receiver", "store", "api", "hl7", "patient"], {
                          "GATEWAY_DICOM__ALLOWED_AES": json.dumps([
                              {"ae_title": "STORESCU"}, {"ae_title": VIEWER, "permissions": ["query", "retrieve"]}]),
                          "GATEWAY_HL7__HOST": "127.0.0.1", "GATEWAY_HL7__PORT": str(hl7_port),
                          "GATEWAY_HL7__ALLOWED_SENDERS": '[{"application": "HIS"}]',
                          "GATEWAY_HL7__LOCAL_AUTHORITIES": f'["{HOSP}"]'})
    results: dict[str, Any] = {"machine": machine(), "instances": count, "repeats": repeats, "kinds": {}}
    try:
        gateway.wait_ready()
        token = (args.work / "data" / "api-token").read_text().strip()
        studies = {kind: make_study(args.work / kind, f"RW-{kind}", count, size)
                   for kind, size in (("small", 128), ("large", 512))}
        for _, paths in studies.values():
            subprocess.run([STORESCU, "-aet", "STORESCU", "-aec", "DICOMGW", "127.0.0.1", str(gateway.dicom_port),
                            *map(str, paths)], check=True, capture_output=True, env={**os.environ, **DCMTK_ENV})
        deadline = time.monotonic() + 600
        while sum(s["instances"] for s in _get(f"http://127.0.0.1:{gateway.http_port}/api/studies?limit=1000",
                                                token)) < 2 * count:
            assert time.monotonic() < deadline, "the studies were not stored in time"
            time.sleep(0.5)
        before = {kind: timed(gateway, study, args.work, repeats, "MAKELA^JYRKI")
                  for kind, (study, _) in studies.items()}
        for number, kind in enumerate(studies):
            rename(hl7_port, f"RW-{kind}", f"RW-{number}")
        for kind in studies:
            url = f"http://127.0.0.1:{gateway.http_port}/api/patients/RW-{kind}?issuer={HOSP}"
            while _get(url, token)["PatientName"] != "Mäkelä^Jyrki":
                time.sleep(0.2)
        after = {kind: timed(gateway, study, args.work, repeats, "Mäkelä^Jyrki")
                 for kind, (study, _) in studies.items()}
        for kind in studies:
            stored, rewritten = statistics.median(before[kind]), statistics.median(after[kind])
            results["kinds"][kind] = {
                "as_stored_seconds": before[kind], "rewritten_seconds": after[kind],
                "as_stored_per_second": count / stored, "rewritten_per_second": count / rewritten,
                "ratio": stored / rewritten, "mb": sum(p.stat().st_size for p in studies[kind][1]) / 1e6}
    finally:
        gateway.stop()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out / f"{stamp}-patient-rewrite{'-quick' if args.quick else ''}"
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"C-GET of {count} CT instances, median of {repeats} ({results['machine']})", "",
             "| study | MB | as stored inst/s | rewritten inst/s | rewritten / as stored |", "|---|---|---|---|---|"]
    for kind, figures in results["kinds"].items():
        lines.append(f"| {kind} | {figures['mb']:.0f} | {figures['as_stored_per_second']:.0f} | "
                     f"{figures['rewritten_per_second']:.0f} | {figures['ratio']:.2f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print("\n".join(lines))
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
