"""CPU cost of the store stage's header work per instance: read the header, digest its attributes, validate it
with the fi-kanta profile, as ``workers/store.py`` does, against the same with every element converted by
pydicom first (what walking the header through pydicom's Dataset costs, as validation did before).

    python -m benchmarks.header_check [--repeats 300]

Headers: pydicom's test files of real modalities (a CT, an MR, an RT plan with nested sequences) and the
benchmark's synthetic CT and tiny instances, each in implicit and explicit VR little endian. We report
CPU-milliseconds per header, the median of 5 interleaved rounds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from benchmarks.datasets import KANTA_PROFILE, dataset
from gateway.dicom.dataset import IMPLICIT_LITTLE, PIXEL_DATA, attributes_digest, encode, read_prefix
from workers.validation.engine import validate
from workers.validation.model import SourceContext
from workers.validation.profiles import Profile, ProfileRegistry

EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
REAL = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")
SOURCE = SourceContext("BENCHSCU", "Test", "1.2.246.10.12345678")


def headers(work: Path) -> dict[str, Dataset]:
    found = {name.removesuffix(".dcm"): pydicom.dcmread(get_testdata_file(name), stop_before_pixels=True)
             for name in REAL}
    for kind in ("ct", "tiny"):
        [path] = dataset(kind, 1, work)
        found[f"synthetic {kind}"] = pydicom.dcmread(path, stop_before_pixels=True)
    return found


def header_work(data: bytes, transfer_syntax: str, profile: Profile, convert_all: bool) -> None:
    read = read_prefix(data, transfer_syntax, PIXEL_DATA, complete=True)
    assert read is not None
    header = read[0]
    attributes_digest(header)
    if convert_all:
        for _ in header.iterall():
            pass
    validate(header, profile, SOURCE)


def cpu_ms(work: Callable[[], None], repeats: int) -> float:
    started = time.process_time()
    for _ in range(repeats):
        work()
    return (time.process_time() - started) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=300)
    options = parser.parse_args()
    warnings.simplefilter("ignore")  # as in the store stage
    with tempfile.TemporaryDirectory() as work:
        site = Path(work) / "fi-kanta-bench.yaml"
        site.write_text(KANTA_PROFILE)
        profile = ProfileRegistry.load([site]).get("fi-kanta")
        found = headers(Path(work))
    print("| header | elements | encoding | bytes | store stage, ms | every element converted, ms | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, ds in found.items():
        elements = sum(1 for _ in ds.iterall())
        for encoding, transfer_syntax in (("implicit", IMPLICIT_LITTLE), ("explicit", EXPLICIT_LITTLE)):
            data = encode(ds, transfer_syntax)
            rounds: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(5):
                for convert_all in (False, True):
                    work = partial(header_work, data, transfer_syntax, profile, convert_all)
                    rounds[convert_all].append(cpu_ms(work, options.repeats // 5))
            ours, converted = statistics.median(rounds[False]), statistics.median(rounds[True])
            print(f"| {name} | {elements} | {encoding} | {len(data)} | {ours:.3f} | {converted:.3f} "
                  f"| {ours / converted:.2f} |")


if __name__ == "__main__":
    main()
