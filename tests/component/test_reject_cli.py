"""``dicom-gateway reject`` against a running gateway (receiver, store, notify and api roles in-process, embedded
bus and SQLite index): the command, run as an operator runs it, publishes a rejection note the store stage applies,
is refused as the receiver would refuse the note, and names what is not held."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pydicom
from pydicom.uid import generate_uid

from gateway.app import build_bus
from gateway.metrics import Metrics
from tests.component.test_notify_embedded import CT, Gateway, running
from tests.helpers import read_instances, run


def two_series(tmp_path: Path) -> tuple[str, dict[str, list[str]], list[Path]]:
    """A new study of two series of two CT instances each: (study, SOP Instance UIDs by series, files)."""
    study = generate_uid()
    by_series: dict[str, list[str]] = {}
    paths = []
    for series_number in (1, 2):
        series = generate_uid()
        for n in range(2):
            dataset = pydicom.dcmread(CT)
            dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, series
            dataset.SeriesNumber, dataset.InstanceNumber = series_number, n + 1
            dataset.SOPInstanceUID = generate_uid()
            dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
            path = tmp_path / f"ct-{series_number}-{n}.dcm"
            dataset.save_as(path)
            by_series.setdefault(series, []).append(str(dataset.SOPInstanceUID))
            paths.append(path)
    return study, by_series, paths


async def reject(gateway: Gateway, test_env: dict[str, str], *args: str) -> tuple[int, str]:
    """The command as an operator runs it on the gateway's host: a process of its own, the same data directory."""
    env = test_env | {"GATEWAY_DATA_DIR": str(gateway.settings.data_dir)}
    return await run(sys.executable, "-m", "gateway.cli", "reject", *args, timeout=60, env=env)


def statuses(study: dict[str, Any]) -> dict[str, str]:
    return {instance["sop_instance_uid"]: instance["status"]
            for series in study["series"] for instance in series["instances"]}


async def notes_published(gateway: Gateway) -> int:
    """Instances on the instances topic that came from the command (read by a group of its own)."""
    bus = build_bus(gateway.settings, Metrics())
    contents = await read_instances(bus, gateway.settings.topics.instances, f"count-{uuid.uuid4().hex}", idle=0.5)
    return sum(1 for envelope, _ in contents.received if envelope.calling_ae == "DICOMGW-CLI")


async def test_reject_withdraws_a_series_and_is_refused_when_it_cannot_be_applied(
        tmp_path: Path, test_env: dict[str, str]) -> None:
    study, by_series, paths = two_series(tmp_path)
    rejected_series, kept_series = by_series
    async with running(tmp_path) as gateway:
        await gateway.store(*paths)
        await gateway.until(f"/api/studies/{study}", lambda body: len(statuses(body)) == 4)

        code, out = await reject(gateway, test_env, study, "--series", rejected_series, "--reason", "113001")
        assert code == 0, out
        [line] = [line for line in out.splitlines() if line.startswith("{")]
        answer = orjson.loads(line)
        note = answer["note_sop_instance_uid"]
        assert answer == {"note_sop_instance_uid": note, "study_instance_uid": study, "title": "113001",
                          "instances": 2}

        _, body = await gateway.until(f"/api/studies/{study}", lambda body: all(
            statuses(body).get(uid) == "rejected" for uid in by_series[rejected_series]))
        assert {uid: statuses(body)[uid] for uid in by_series[kept_series]} == {
            uid: "stored" for uid in by_series[kept_series]}
        _, rejections = await gateway.until(f"/api/studies/{study}/rejections", lambda body: bool(body["notes"]))
        [applied] = rejections["notes"]
        assert (applied["sop_instance_uid"], applied["title"], applied["source_ae"], applied["instances"]) == (
            note, "113001", "DICOMGW-CLI", 2)
        assert {(i["sop_instance_uid"], i["note_sop_instance_uid"], i["held"]) for i in rejections["instances"]} == {
            (uid, note, True) for uid in by_series[rejected_series]}

        # rejected already for quality: a second quality note would change nothing, and is not made
        code, out = await reject(gateway, test_env, study, "--series", rejected_series, "--reason", "113001")
        assert code == 2, out
        assert "already" in out
        assert not any(line.startswith("{") for line in out.splitlines())

        code, out = await reject(gateway, test_env, study, "--series", generate_uid(), "--reason", "113001")
        assert code == 2, out
        assert "holds no series" in out

        code, out = await reject(gateway, test_env, study, "--series", kept_series, "--instance",
                                 by_series[rejected_series][0], "--reason", "113001")
        assert code == 2, out
        assert "holds no instance" in out

        assert await notes_published(gateway) == 1
        _, rejections = await gateway.get(f"/api/studies/{study}/rejections")
        assert [n["sop_instance_uid"] for n in rejections["notes"]] == [note]

        # a weightier reason may replace the lighter one: rejected instances are selected too
        code, out = await reject(gateway, test_env, study, "--instance", by_series[rejected_series][1],
                                 "--reason", "113037")
        assert code == 0, out
        _, rejections = await gateway.until(f"/api/studies/{study}/rejections",
                                            lambda body: len(body["notes"]) == 2)
        assert {i["sop_instance_uid"]: i["title"] for i in rejections["instances"]} == {
            by_series[rejected_series][0]: "113001", by_series[rejected_series][1]: "113037"}

        # a lighter reason may not replace a weightier one: refused as the receiver would (0xA774), nothing published
        code, out = await reject(gateway, test_env, study, "--instance", by_series[rejected_series][1],
                                 "--reason", "113001")
        assert code == 1, out
        assert "0xA774" in out
        assert await notes_published(gateway) == 2
